//! Sustained load: a steady stream of watch events over a large cache, for minutes, and
//! what it does to event→reconcile latency and to the host's memory.
//!
//! 1. A local control plane gets `SUSTAIN_OBJECTS` (default 100,000) ConfigMaps in one
//!    namespace, each with a `payload` of `SUSTAIN_PAYLOAD` bytes (default 1024). The
//!    first `SUSTAIN_MIRRORED` (default 1,000) carry the label `rekon.dev/mirror=true`.
//! 2. rekon's `Host` runs in its own process (as in the converge bench) with the `mirror`
//!    test plugin, scoped to that namespace, with `SUSTAIN_CONCURRENCY` reconciles at once
//!    (default: rekon's default): every ConfigMap there is a cached primary;
//!    a labelled one gets a child `<name>-mirror` with the same data, the others
//!    reconcile to "nothing to do". The driver waits until the initial list has been
//!    reconciled and the controller is quiet.
//! 3. For `SUSTAIN_SECS` (default 300) the driver sends `SUSTAIN_RATE` (default 500)
//!    updates per second, paced evenly, each a merge patch of `data.seq` on a random
//!    ConfigMap; a share `SUSTAIN_WRITE_SHARE` (default 0.1) goes to labelled ones, whose
//!    reconcile then writes the mirror (a real apply, whose own watch event comes back
//!    too). Every update is one watch event the host must turn into a reconcile.
//! 4. event→reconcile: from the driver sending an update to the host starting the next
//!    reconcile of that key (its `reconcile` span, wall clock, same machine), also given
//!    from the update's response arriving and from the watch event arriving in the
//!    host's store (rekon's own share: store, fan-out, queue, worker). Every 10 s the
//!    host reports its RSS and CPU time, and the control plane's CPU is sampled.
//! 5. Memory: RSS after the initial list, the median of the first and of the last minute
//!    of load, and the growth over the second half of the load (after warm-up: the
//!    sandbox's pool slots and the allocator settling as updated objects replace the
//!    listed ones).
//!
//! Run: `cargo bench -p rekon-tests --bench sustain` (about 10 minutes with the
//! defaults; prints figures and writes `$CARGO_TARGET_DIR/rekon-bench/sustain.json`, or
//! `SUSTAIN_OUT`). Asserts nothing about speed: it fails only when the setup fails or an
//! update is never reconciled.

#[path = "shared/child.rs"]
mod child;
#[path = "shared/figures.rs"]
mod figures;
#[path = "shared/procfs.rs"]
mod procfs;

use child::{ChildProc, Env, Report, Side, wall_us};
use figures::{median, percentile};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use rekon_host::plugin::{Artifacts, Loader};
use rekon_host::sandbox::{self, Sandbox};
use rekon_tests::controlplane::{ControlPlane, ControlPlaneOptions, TestNamespace};
use rekon_tests::plugins;
use serde::Serialize;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(600);
/// How often the host is asked for its figures during the load.
const WINDOW: Duration = Duration::from_secs(10);

struct Settings {
    objects: usize,
    mirrored: usize,
    payload: usize,
    rate: f64,
    secs: u64,
    write_share: f64,
    concurrency: usize,
    out: PathBuf,
}

impl Settings {
    fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let num = |k: &str, default: usize| var(k).and_then(|v| v.parse().ok()).unwrap_or(default);
        let float = |k: &str, default: f64| var(k).and_then(|v| v.parse().ok()).unwrap_or(default);
        let objects = num("SUSTAIN_OBJECTS", 100_000).max(2);
        Self {
            objects,
            mirrored: num("SUSTAIN_MIRRORED", 1000).clamp(1, objects - 1),
            payload: num("SUSTAIN_PAYLOAD", 1024),
            rate: float("SUSTAIN_RATE", 500.0).max(1.0),
            secs: num("SUSTAIN_SECS", 300) as u64,
            write_share: float("SUSTAIN_WRITE_SHARE", 0.1).clamp(0.0, 1.0),
            concurrency: num(
                "SUSTAIN_CONCURRENCY",
                rekon_host::controller::Config::default().max_concurrent_reconciles,
            )
            .max(1),
            out: var("SUSTAIN_OUT").map(PathBuf::from).unwrap_or_else(|| {
                plugins::target_dir()
                    .join("rekon-bench")
                    .join("sustain.json")
            }),
        }
    }
}

/// One update the driver sent.
struct Sent {
    key: String,
    /// Wall µs when it was sent, and when its response arrived.
    at: u64,
    answered: u64,
}

/// The host's figures at the end of one window of the load.
#[derive(Debug, Serialize)]
struct Window {
    /// Seconds since the load started.
    t_s: f64,
    updates: usize,
    reconciles: usize,
    latency_p50_ms: f64,
    latency_p99_ms: f64,
    /// From the watch event's arrival in the host.
    in_host_p99_ms: f64,
    rss_mib: f64,
    cpu_percent: f64,
    /// The control plane's (kube-apiserver + etcd) CPU over the window, % of one core.
    control_plane_cpu_percent: f64,
}

#[derive(Debug, Serialize)]
struct Results {
    objects: usize,
    mirrored: usize,
    payload_bytes: usize,
    rate: f64,
    secs: u64,
    write_share: f64,
    concurrency: usize,
    create_s: f64,
    initial_reconcile_s: f64,
    initial_reconciles: usize,
    rss_after_initial_mib: f64,
    updates: usize,
    achieved_rate: f64,
    unmatched: usize,
    reconciles: usize,
    update_rtt_p50_ms: f64,
    update_rtt_p99_ms: f64,
    latency_p50_ms: f64,
    latency_p99_ms: f64,
    latency_p999_ms: f64,
    latency_max_ms: f64,
    after_response_p50_ms: f64,
    after_response_p99_ms: f64,
    /// Live watch events the host's stores received during the load.
    events_received: usize,
    /// From the watch event arriving in the host to the reconcile starting: rekon's own
    /// share (store update, fan-out, queue, worker).
    in_host_p50_ms: f64,
    in_host_p99_ms: f64,
    in_host_p999_ms: f64,
    in_host_max_ms: f64,
    rss_first_minute_mib: f64,
    rss_last_minute_mib: f64,
    /// RSS at half time and at the end of the load: growth over the second half.
    rss_half_mib: f64,
    rss_end_mib: f64,
    rss_peak_mib: f64,
    requests: BTreeMap<String, u64>,
    windows: Vec<Window>,
}

/// A small deterministic generator (xorshift64*), so runs pick the same keys.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as usize % n.max(1)
    }

    fn chance(&mut self, p: f64) -> bool {
        (self.below(1 << 20) as f64) < p * (1 << 20) as f64
    }
}

fn name(i: usize) -> String {
    format!("cm-{i:06}")
}

fn main() {
    if child::run_if_child() {
        return;
    }
    let settings = Settings::from_env();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let results = runtime.block_on(run(&settings));
    if let Some(dir) = settings.out.parent() {
        std::fs::create_dir_all(dir).expect("the results directory");
    }
    std::fs::write(
        &settings.out,
        serde_json::to_vec_pretty(&results).expect("the results serialise"),
    )
    .expect("the results file writes");
    print_summary(&results);
    println!("results: {}", settings.out.display());
}

async fn run(s: &Settings) -> Results {
    let wasm = plugins::path("mirror-plugin");
    let artifacts = plugins::target_dir().join("rekon-bench").join("artifacts");
    // Compile once here, so the host process loads the precompiled artifact.
    Loader::new(
        Sandbox::new(sandbox::Config::default()).expect("the sandbox starts"),
        Artifacts::in_dir(&artifacts),
        sandbox::Limits::default(),
    )
    .load_file(&wasm)
    .expect("the mirror plugin loads");

    let cp = ControlPlane::start(ControlPlaneOptions::default())
        .await
        .expect("the control plane starts");
    let client = cp.client().await.expect("a client");
    let ns = TestNamespace::create(&client, "sustain")
        .await
        .expect("a namespace");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns.name());
    println!(
        "sustain: {} ConfigMaps ({} mirrored, {} B payload), {}/s for {} s, {:.0} % of updates on mirrored ones, concurrency {}; control plane pid {}",
        s.objects,
        s.mirrored,
        s.payload,
        s.rate,
        s.secs,
        s.write_share * 100.0,
        s.concurrency,
        cp.pid()
    );

    // 1. The objects.
    let payload = "x".repeat(s.payload);
    let created = Instant::now();
    futures::stream::iter(0..s.objects)
        .map(|i| {
            let cms = cms.clone();
            let mut labels = BTreeMap::new();
            if i < s.mirrored {
                labels.insert("rekon.dev/mirror".to_owned(), "true".to_owned());
            }
            let cm = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(name(i)),
                    labels: Some(labels),
                    ..Default::default()
                },
                data: Some(BTreeMap::from([
                    ("payload".to_owned(), payload.clone()),
                    ("seq".to_owned(), "0".to_owned()),
                ])),
                ..Default::default()
            };
            async move { cms.create(&PostParams::default(), &cm).await }
        })
        .buffer_unordered(32)
        .try_for_each(|_| async { Ok(()) })
        .await
        .expect("the ConfigMaps are created");
    let create_s = created.elapsed().as_secs_f64();
    println!(
        "  created {} ConfigMaps in {create_s:.1} s ({:.0}/s)",
        s.objects,
        s.objects as f64 / create_s
    );

    // 2. The host: list, reconcile everything once (mirrors written), go quiet.
    let env = Env {
        kubeconfig: cp.kubeconfig_path().display().to_string(),
        namespace: ns.name().to_owned(),
        concurrency: s.concurrency,
        plugin: wasm.clone(),
        artifacts: artifacts.clone(),
    };
    let spawned = Instant::now();
    let mut host = ChildProc::spawn(&env, Side::Rekon, TIMEOUT);
    host.line(); // started
    let mut initial_reconciles = 0;
    let mut last = Instant::now();
    let mut poll = tokio::time::interval(Duration::from_millis(500));
    let initial_s = loop {
        poll.tick().await;
        let report = host.report();
        if !report.reconciles.is_empty() {
            initial_reconciles += report.reconciles.len();
            last = Instant::now();
        } else if initial_reconciles >= s.objects && last.elapsed() >= Duration::from_secs(2) {
            break (last - spawned).as_secs_f64();
        }
        assert!(
            spawned.elapsed() < TIMEOUT,
            "the host did not finish its initial reconciles ({initial_reconciles} of {})",
            s.objects
        );
    };
    let baseline = host.report();
    println!(
        "  host pid {}: initial list + {initial_reconciles} reconciles in {initial_s:.1} s, RSS {:.1} MiB",
        host.pid(),
        baseline.rss_kib as f64 / 1024.0
    );

    // 3. The load.
    let (sent_tx, mut sent_rx) = tokio::sync::mpsc::unbounded_channel::<(Sent, f64)>();
    let inflight = Arc::new(tokio::sync::Semaphore::new(512));
    let period = Duration::from_secs_f64(1.0 / s.rate);
    let total = (s.rate * s.secs as f64) as usize;
    let load_started = Instant::now();
    let load_wall = wall_us();
    let generator = {
        let cms = cms.clone();
        let (mirrored, objects, share, ns) =
            (s.mirrored, s.objects, s.write_share, ns.name().to_owned());
        tokio::spawn(async move {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            for seq in 1..=total {
                tick.tick().await;
                let i = if rng.chance(share) {
                    rng.below(mirrored)
                } else {
                    mirrored + rng.below(objects - mirrored)
                };
                let permit = inflight.clone().acquire_owned().await.expect("open");
                let (cms, tx, key) = (cms.clone(), sent_tx.clone(), name(i));
                let full_key = format!("{ns}/{key}");
                tokio::spawn(async move {
                    let at = wall_us();
                    let began = Instant::now();
                    cms.patch(
                        &key,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"data": {"seq": seq.to_string()}})),
                    )
                    .await
                    .expect("the update is accepted");
                    let rtt = began.elapsed().as_secs_f64() * 1e3;
                    let _ = tx.send((
                        Sent {
                            key: full_key,
                            at,
                            answered: wall_us(),
                        },
                        rtt,
                    ));
                    drop(permit);
                });
            }
        })
    };

    let mut sent: Vec<Sent> = Vec::with_capacity(total);
    let mut rtts: Vec<f64> = Vec::with_capacity(total);
    let mut starts: Vec<(String, u64)> = Vec::new();
    let mut events: Vec<(String, u64)> = Vec::new();
    let mut samples: Vec<(f64, Report)> = Vec::new();
    let mut prev_cpu = (baseline.cpu_ms, Instant::now());
    let cp_pid = cp.pid().to_string();
    let mut prev_cp_cpu = procfs::cpu_ms(&cp_pid);
    let mut windows_raw: Vec<(f64, usize, usize, f64, f64, f64)> = Vec::new();
    let mut windows = tokio::time::interval_at((load_started + WINDOW).into(), WINDOW);
    loop {
        windows.tick().await;
        let mut report = host.report();
        let before = sent.len();
        while let Ok((one, rtt)) = sent_rx.try_recv() {
            sent.push(one);
            rtts.push(rtt);
        }
        let t = load_started.elapsed().as_secs_f64();
        let window_s = prev_cpu.1.elapsed().as_secs_f64();
        let cpu = (report.cpu_ms - prev_cpu.0) as f64 / window_s / 10.0;
        prev_cpu = (report.cpu_ms, Instant::now());
        let cp_cpu_ms = procfs::cpu_ms(&cp_pid);
        let cp_cpu = cp_cpu_ms.saturating_sub(prev_cp_cpu) as f64 / window_s / 10.0;
        prev_cp_cpu = cp_cpu_ms;
        let reconciles = report.reconciles.len();
        starts.append(&mut report.reconciles);
        events.append(&mut report.events);
        println!(
            "  {t:>5.0} s: {:>6} updates, {:>6} reconciles, RSS {:>6.1} MiB, host CPU {cpu:>4.0} %, control plane CPU {cp_cpu:>4.0} %",
            sent.len() - before,
            reconciles,
            report.rss_kib as f64 / 1024.0
        );
        windows_raw.push((
            t,
            sent.len() - before,
            reconciles,
            report.rss_kib as f64,
            cpu,
            cp_cpu,
        ));
        samples.push((t, report));
        if generator.is_finished() && sent.len() >= total {
            break;
        }
        assert!(
            load_started.elapsed() < Duration::from_secs(s.secs) + TIMEOUT,
            "the updates did not finish"
        );
    }
    let load_s = load_started.elapsed().as_secs_f64();
    // Drain: until every update has a reconcile that started after it (or a minute).
    let drained = Instant::now();
    let last_report = loop {
        poll.tick().await;
        let mut report = host.report();
        starts.append(&mut report.reconciles);
        events.append(&mut report.events);
        let starts_by_key = by_key(&starts);
        let waiting = sent
            .iter()
            .filter(|u| first_at_or_after(&starts_by_key, &u.key, u.at).is_none())
            .count();
        if waiting == 0 || drained.elapsed() > Duration::from_secs(60) {
            break report;
        }
    };
    let final_requests = last_report.requests.clone();
    host.quit();

    // 4. Match each update with the first watch event of its key the host received after
    // it was sent, and the first reconcile of that key that started after that event.
    let starts_by_key = by_key(&starts);
    let events_by_key = by_key(&events);
    // (sent at, from sending, from the response, from the event's arrival), ms.
    let mut latencies: Vec<(u64, f64, f64, f64)> = Vec::with_capacity(sent.len());
    let mut unmatched = 0;
    for u in &sent {
        let arrived = first_at_or_after(&events_by_key, &u.key, u.at).unwrap_or(u.at);
        match first_at_or_after(&starts_by_key, &u.key, arrived) {
            Some(t) => latencies.push((
                u.at,
                (t - u.at) as f64 / 1e3,
                t.saturating_sub(u.answered) as f64 / 1e3,
                (t - arrived) as f64 / 1e3,
            )),
            None => unmatched += 1,
        }
    }
    let sorted = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v
    };
    let all = sorted(latencies.iter().map(|l| l.1).collect());
    let after = sorted(latencies.iter().map(|l| l.2).collect());
    let in_host = sorted(latencies.iter().map(|l| l.3).collect());
    let rtt_sorted = sorted(rtts.clone());
    let windows = windows_raw
        .iter()
        .map(|&(t, updates, reconciles, rss, cpu, cp_cpu)| {
            let lo = load_wall + ((t - WINDOW.as_secs_f64()) * 1e6) as u64;
            let hi = load_wall + (t * 1e6) as u64;
            let in_window = || latencies.iter().filter(|l| l.0 >= lo && l.0 < hi);
            let w = sorted(in_window().map(|l| l.1).collect());
            let h = sorted(in_window().map(|l| l.3).collect());
            Window {
                t_s: t,
                updates,
                reconciles,
                latency_p50_ms: percentile(&w, 50.0),
                latency_p99_ms: percentile(&w, 99.0),
                in_host_p99_ms: percentile(&h, 99.0),
                rss_mib: rss / 1024.0,
                cpu_percent: cpu,
                control_plane_cpu_percent: cp_cpu,
            }
        })
        .collect::<Vec<_>>();
    let minute = |from: f64, to: f64| {
        let mut v: Vec<f64> = samples
            .iter()
            .filter(|(t, _)| *t > from && *t <= to)
            .map(|(_, r)| r.rss_kib as f64 / 1024.0)
            .collect();
        median(&mut v)
    };
    let rss_first_minute_mib = minute(0.0, 60.0);
    let rss_last_minute_mib = minute(load_s - 60.0, load_s + 1.0);
    let rss_at = |at: f64| {
        samples
            .iter()
            .min_by(|a, b| (a.0 - at).abs().total_cmp(&(b.0 - at).abs()))
            .map_or(0.0, |(_, r)| r.rss_kib as f64 / 1024.0)
    };
    let rss_half_mib = rss_at(load_s / 2.0);
    let rss_end_mib = rss_at(load_s);
    let results = Results {
        objects: s.objects,
        mirrored: s.mirrored,
        payload_bytes: s.payload,
        rate: s.rate,
        secs: s.secs,
        write_share: s.write_share,
        concurrency: s.concurrency,
        create_s,
        initial_reconcile_s: initial_s,
        initial_reconciles,
        rss_after_initial_mib: baseline.rss_kib as f64 / 1024.0,
        updates: sent.len(),
        achieved_rate: {
            let (first, last) = sent
                .iter()
                .fold((u64::MAX, 0), |(lo, hi), u| (lo.min(u.at), hi.max(u.at)));
            sent.len().saturating_sub(1) as f64 / (last.saturating_sub(first).max(1) as f64 / 1e6)
        },
        unmatched,
        reconciles: starts.len(),
        update_rtt_p50_ms: percentile(&rtt_sorted, 50.0),
        update_rtt_p99_ms: percentile(&rtt_sorted, 99.0),
        latency_p50_ms: percentile(&all, 50.0),
        latency_p99_ms: percentile(&all, 99.0),
        latency_p999_ms: percentile(&all, 99.9),
        latency_max_ms: all.last().copied().unwrap_or(0.0),
        after_response_p50_ms: percentile(&after, 50.0),
        after_response_p99_ms: percentile(&after, 99.0),
        events_received: events.len(),
        in_host_p50_ms: percentile(&in_host, 50.0),
        in_host_p99_ms: percentile(&in_host, 99.0),
        in_host_p999_ms: percentile(&in_host, 99.9),
        in_host_max_ms: in_host.last().copied().unwrap_or(0.0),
        rss_first_minute_mib,
        rss_last_minute_mib,
        rss_half_mib,
        rss_end_mib,
        rss_peak_mib: last_report.hwm_kib as f64 / 1024.0,
        requests: final_requests,
        windows,
    };
    // Deleting 100k objects would take minutes: the control plane goes with its data.
    drop(ns);
    cp.stop().await.expect("the control plane stops");
    assert_eq!(unmatched, 0, "updates never reconciled");
    results
}

/// Times by key, each list sorted.
fn by_key(times: &[(String, u64)]) -> HashMap<&str, Vec<u64>> {
    let mut map: HashMap<&str, Vec<u64>> = HashMap::new();
    for (key, t) in times {
        map.entry(key.as_str()).or_default().push(*t);
    }
    for v in map.values_mut() {
        v.sort_unstable();
    }
    map
}

/// The first time of `key` at or after `at`.
fn first_at_or_after(map: &HashMap<&str, Vec<u64>>, key: &str, at: u64) -> Option<u64> {
    let ts = map.get(key)?;
    ts.get(ts.partition_point(|t| *t < at)).copied()
}

fn print_summary(r: &Results) {
    let flat = (r.rss_last_minute_mib - r.rss_first_minute_mib) / r.rss_first_minute_mib * 100.0;
    println!(
        "\nsustained load: {} cached ConfigMaps ({} B payload), {:.0} updates/s for {} s ({} updates, {:.1}/s achieved), concurrency {}",
        r.objects, r.payload_bytes, r.rate, r.secs, r.updates, r.achieved_rate, r.concurrency
    );
    println!(
        "initial: created in {:.1} s; host listed and reconciled {} objects in {:.1} s; RSS then {:.1} MiB",
        r.create_s, r.initial_reconciles, r.initial_reconcile_s, r.rss_after_initial_mib
    );
    println!(
        "event→reconcile from sending: p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms, max {:.1} ms   target p99 ≤ 50 ms: {}",
        r.latency_p50_ms,
        r.latency_p99_ms,
        r.latency_p999_ms,
        r.latency_max_ms,
        if r.latency_p99_ms <= 50.0 {
            "met"
        } else {
            "missed"
        }
    );
    println!(
        "  from the update's response: p50 {:.1} ms, p99 {:.1} ms; update round trip p50 {:.1} ms, p99 {:.1} ms; never reconciled: {}",
        r.after_response_p50_ms,
        r.after_response_p99_ms,
        r.update_rtt_p50_ms,
        r.update_rtt_p99_ms,
        r.unmatched
    );
    println!(
        "  from the watch event arriving in the host (rekon's own share): p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.1} ms ({} events received)",
        r.in_host_p50_ms, r.in_host_p99_ms, r.in_host_p999_ms, r.in_host_max_ms, r.events_received
    );
    println!(
        "reconciles during the load: {} ({:.2} per update); host API requests in total: {:?}",
        r.reconciles,
        r.reconciles as f64 / r.updates.max(1) as f64,
        r.requests
    );
    let second_half = (r.rss_end_mib - r.rss_half_mib) / r.rss_half_mib * 100.0;
    println!(
        "memory: RSS after the initial list {:.1} MiB; median first minute {:.1} MiB, last minute {:.1} MiB ({flat:+.1} %); second half of the load {:.1} → {:.1} MiB ({second_half:+.1} %); peak {:.1} MiB",
        r.rss_after_initial_mib,
        r.rss_first_minute_mib,
        r.rss_last_minute_mib,
        r.rss_half_mib,
        r.rss_end_mib,
        r.rss_peak_mib,
    );
    println!(
        "  flat over the whole load (first → last minute within ±5 %): {}; flat after warm-up (second half within ±2 %): {}",
        if flat.abs() <= 5.0 { "yes" } else { "no" },
        if second_half.abs() <= 2.0 {
            "yes"
        } else {
            "no"
        }
    );
}
