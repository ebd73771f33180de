//! rekon against a native kube-runtime controller, side by side, on one local
//! kube-apiserver: the same webapp reconcile logic (WebApp → Deployment + Service + status)
//! run (a) by rekon's `Host` with the compiled webapp component and (b) by a kube-runtime
//! `Controller` calling the webapp crate's `reconcile` natively.
//!
//! One round, for one side and one N:
//! 1. a fresh namespace gets N WebApps (no controller running yet);
//! 2. the controller starts in its own process (so RSS and CPU are its own), scoped to
//!    that namespace, with the same reconcile concurrency on both sides;
//! 3. **converged** = every WebApp has a Deployment and a Service with a controller owner
//!    reference, and a `Ready` condition whose `observedGeneration` is the WebApp's
//!    generation (no deployment controller runs, so the condition says `False` /
//!    `Progressing`: it is *written*, which is what both sides are timed on). The driver
//!    watches the namespace and times from spawning the process to convergence;
//! 4. latency: with the controller idle, `CONVERGE_UPDATES` WebApps get a spec change at
//!    `CONVERGE_RATE` per second; event→reconcile is the time from the driver sending the
//!    update to the controller starting that key's reconcile (rekon: its `reconcile` span;
//!    native: the reconcile function's first line), both stamped with the wall clock;
//! 5. the controller reports its API requests (a counting layer in its client's HTTP
//!    stack), RSS (VmRSS at convergence, VmHWM peak) and CPU time; the namespace is
//!    deleted and the driver waits until it is gone.
//!
//! Sides alternate which goes first in each repetition, to spread machine noise evenly.
//!
//! Run: `cargo bench -p rekon-tests --bench converge`. Environment:
//! `CONVERGE_N` (comma list, default `1000`), `CONVERGE_REPS` (default 3),
//! `CONVERGE_CONCURRENCY` (reconciles at once, default 4, the same on both sides),
//! `CONVERGE_UPDATES` (default 100), `CONVERGE_RATE` (updates/s, default 10: light load,
//! each update costs both sides about three reconciles and six requests),
//! `CONVERGE_OUT` (results JSON, default `$CARGO_TARGET_DIR/rekon-bench/converge.json`),
//! `CONVERGE_CHART` (PNG, default next to the JSON), `CONVERGE_FROM` (skip the runs:
//! summarise and chart an earlier results JSON).

mod chart;
#[path = "../shared/child.rs"]
#[allow(dead_code)] // `ChildProc::pid` serves the sustain bench
mod child;
#[path = "../shared/figures.rs"]
mod figures;
#[path = "../shared/procfs.rs"]
mod procfs;
mod stats;

use child::{ChildProc, Env, Report, Side, wall_us};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::PartialObjectMeta;
use kube::runtime::watcher;
use rekon_host::plugin::{Artifacts, Loader};
use rekon_host::sandbox::{self, Sandbox};
use rekon_tests::controlplane::{ControlPlane, ControlPlaneOptions, TestNamespace, install_crd};
use rekon_tests::plugins;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(300);

struct Settings {
    sizes: Vec<usize>,
    reps: usize,
    concurrency: usize,
    updates: usize,
    rate: f64,
    out: PathBuf,
    chart: PathBuf,
    from: Option<PathBuf>,
}

impl Settings {
    fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let num = |k: &str, default: usize| var(k).and_then(|v| v.parse().ok()).unwrap_or(default);
        let out = var("CONVERGE_OUT").map(PathBuf::from).unwrap_or_else(|| {
            plugins::target_dir()
                .join("rekon-bench")
                .join("converge.json")
        });
        Self {
            sizes: var("CONVERGE_N")
                .unwrap_or_else(|| "1000".into())
                .split(',')
                .filter_map(|n| n.trim().parse().ok())
                .collect(),
            reps: num("CONVERGE_REPS", 3).max(1),
            concurrency: num("CONVERGE_CONCURRENCY", 4).max(1),
            updates: num("CONVERGE_UPDATES", 100),
            rate: var("CONVERGE_RATE")
                .and_then(|v| v.parse().ok())
                .unwrap_or(10.0),
            chart: var("CONVERGE_CHART")
                .map(PathBuf::from)
                .unwrap_or_else(|| out.with_extension("png")),
            out,
            from: var("CONVERGE_FROM").map(PathBuf::from),
        }
    }
}

/// One round's figures.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Round {
    side: Side,
    n: usize,
    rep: usize,
    /// Spawn → converged, s.
    converge_s: f64,
    /// Spawn → the controller runs (plugin loaded, watches started), s.
    startup_s: f64,
    /// Reconciles started before convergence.
    reconciles: usize,
    /// API requests until convergence, by verb.
    requests: BTreeMap<String, u64>,
    /// Spawn → the last reconcile start before the controller went quiet, s.
    settle_s: f64,
    /// Reconciles started until quiet.
    settle_reconciles: usize,
    /// API requests until quiet (all verbs).
    settle_requests: u64,
    /// API requests during the latency phase (all verbs).
    latency_phase_requests: u64,
    /// Event→reconcile latencies of the paced updates, from the update being sent, ms,
    /// sorted.
    latencies_ms: Vec<f64>,
    /// The same from the update's response arriving (0 when the reconcile started
    /// first), ms, sorted.
    #[serde(default)]
    after_response_ms: Vec<f64>,
    /// Round trip of the update requests themselves, ms (median).
    update_rtt_ms: f64,
    /// Child RSS at convergence, KiB.
    rss_kib: u64,
    /// Child peak RSS over the round, KiB.
    hwm_kib: u64,
    /// Child CPU time until convergence, ms.
    cpu_ms: u64,
}

impl Round {
    fn total_requests(&self) -> u64 {
        self.requests.values().sum()
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Results {
    concurrency: usize,
    updates: usize,
    rate: f64,
    rounds: Vec<Round>,
}

fn main() {
    if child::run_if_child() {
        return;
    }
    let settings = Settings::from_env();
    let results = match &settings.from {
        Some(path) => serde_json::from_slice(&std::fs::read(path).expect("the results file reads"))
            .expect("the results file parses"),
        None => run(&settings),
    };
    stats::print_summary(&results.rounds, results.concurrency);
    if let Some(dir) = settings.chart.parent() {
        std::fs::create_dir_all(dir).expect("the chart directory");
    }
    match chart::draw(&results.rounds, &settings.chart) {
        Ok(()) => println!("chart: {}", settings.chart.display()),
        Err(e) => println!("chart not drawn: {e}"),
    }
}

fn run(settings: &Settings) -> Results {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let wasm = plugins::path("webapp");
    let artifacts = plugins::target_dir().join("rekon-bench").join("artifacts");
    // Compile once here, so each rekon child loads the precompiled artifact (a warm start).
    let sandbox = Sandbox::new(sandbox::Config::default()).expect("the sandbox starts");
    Loader::new(
        sandbox,
        Artifacts::in_dir(&artifacts),
        sandbox::Limits::default(),
    )
    .load_file(&wasm)
    .expect("webapp loads");

    let mut rounds = Vec::new();
    runtime.block_on(async {
        // Every WebApp gets a Service, and the control plane's default service range
        // (a /24) runs out of cluster IPs after 253 of them.
        let cp = ControlPlane::start(ControlPlaneOptions {
            apiserver_args: vec!["--service-cluster-ip-range=10.96.0.0/16".into()],
            ..Default::default()
        })
        .await
        .expect("the control plane starts");
        let client = cp.client().await.expect("a client");
        let crd = std::fs::read_to_string(plugins::workspace().join("plugins/webapp/crd.yaml"))
            .expect("the CRD reads");
        install_crd(&client, crd).await.expect("the CRD installs");
        println!(
            "converge: N = {:?}, {} repetitions, concurrency {}, {} updates at {}/s; control plane pid {}",
            settings.sizes,
            settings.reps,
            settings.concurrency,
            settings.updates,
            settings.rate,
            cp.pid()
        );
        for &n in &settings.sizes {
            for rep in 0..settings.reps {
                let order = if rep % 2 == 0 {
                    [Side::Rekon, Side::Native]
                } else {
                    [Side::Native, Side::Rekon]
                };
                for side in order {
                    let env = Env {
                        kubeconfig: cp.kubeconfig_path().display().to_string(),
                        namespace: String::new(),
                        concurrency: settings.concurrency,
                        plugin: wasm.clone(),
                        artifacts: artifacts.clone(),
                    };
                    let round = round(&client, env, side, n, rep, settings).await;
                    println!(
                        "  N={n:<5} rep {rep} {:<6} converged in {:>6.2} s (startup {:.2} s), {} reconciles, {} requests, \
                         latency p50 {:.1} ms p99 {:.1} ms, RSS {:.1} MiB (peak {:.1}), CPU {:.2} s",
                        side.name(),
                        round.converge_s,
                        round.startup_s,
                        round.reconciles,
                        round.total_requests(),
                        stats::percentile(&round.latencies_ms, 50.0),
                        stats::percentile(&round.latencies_ms, 99.0),
                        round.rss_kib as f64 / 1024.0,
                        round.hwm_kib as f64 / 1024.0,
                        round.cpu_ms as f64 / 1000.0,
                    );
                    rounds.push(round);
                }
            }
        }
        cp.stop().await.expect("the control plane stops");
    });
    let results = Results {
        concurrency: settings.concurrency,
        updates: settings.updates,
        rate: settings.rate,
        rounds,
    };
    if let Some(dir) = settings.out.parent() {
        std::fs::create_dir_all(dir).expect("the results directory");
    }
    std::fs::write(
        &settings.out,
        serde_json::to_vec_pretty(&results).expect("results serialise"),
    )
    .expect("the results file writes");
    println!("results: {}", settings.out.display());
    results
}

/// What the driver's watches have seen of one namespace.
#[derive(Default)]
struct Seen {
    /// WebApp name → (generation, observedGeneration of its Ready condition).
    apps: HashMap<String, (i64, i64)>,
    deployments: HashSet<String>,
    services: HashSet<String>,
    synced: usize,
}

impl Seen {
    fn converged(&self, n: usize) -> bool {
        self.deployments.len() >= n
            && self.services.len() >= n
            && self.apps.len() >= n
            && self.apps.values().all(|(g, o)| g == o)
    }

    /// Every WebApp in `wanted` has its Ready condition observing at least the generation.
    fn caught_up(&self, wanted: &HashMap<String, i64>) -> bool {
        wanted
            .iter()
            .all(|(name, g)| self.apps.get(name).is_some_and(|(_, o)| o >= g))
    }
}

fn controlled<K>(o: &PartialObjectMeta<K>) -> bool {
    o.metadata
        .owner_references
        .as_ref()
        .is_some_and(|refs| refs.iter().any(|r| r.controller == Some(true)))
}

/// Spawns watches of the namespace's WebApps, Deployments and Services into `seen`.
fn observe(
    client: &kube::Client,
    ns: &str,
    seen: &Arc<Mutex<Seen>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let apps: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &child::webapp_resource());
    let state = seen.clone();
    let a = tokio::spawn(
        watcher(apps, watcher::Config::default()).for_each(move |event| {
            let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
            match event {
                Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => {
                    let generation = o.metadata.generation.unwrap_or(0);
                    let observed = o.data["status"]["conditions"]
                        .as_array()
                        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
                        .and_then(|c| c["observedGeneration"].as_i64())
                        .unwrap_or(-1);
                    s.apps
                        .insert(o.metadata.name.unwrap_or_default(), (generation, observed));
                }
                Ok(watcher::Event::InitDone) => s.synced += 1,
                _ => {}
            }
            std::future::ready(())
        }),
    );
    let state = seen.clone();
    let d = tokio::spawn(
        watcher(
            Api::<PartialObjectMeta<Deployment>>::namespaced(client.clone(), ns),
            watcher::Config::default(),
        )
        .for_each(move |event| {
            let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
            match event {
                Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) if controlled(&o) => {
                    s.deployments.insert(o.metadata.name.unwrap_or_default());
                }
                Ok(watcher::Event::InitDone) => s.synced += 1,
                _ => {}
            }
            std::future::ready(())
        }),
    );
    let state = seen.clone();
    let v = tokio::spawn(
        watcher(
            Api::<PartialObjectMeta<Service>>::namespaced(client.clone(), ns),
            watcher::Config::default(),
        )
        .for_each(move |event| {
            let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
            match event {
                Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) if controlled(&o) => {
                    s.services.insert(o.metadata.name.unwrap_or_default());
                }
                Ok(watcher::Event::InitDone) => s.synced += 1,
                _ => {}
            }
            std::future::ready(())
        }),
    );
    vec![a, d, v]
}

/// Polls `done` every 5 ms until it holds; answers when it first held.
async fn wait_for(what: &str, seen: &Arc<Mutex<Seen>>, done: impl Fn(&Seen) -> bool) -> Instant {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if done(&seen.lock().unwrap_or_else(|e| e.into_inner())) {
            return Instant::now();
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn webapp(name: &str) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "rekon.dev/v1alpha1", "kind": "WebApp",
        "metadata": {"name": name},
        "spec": {"image": "nginx:1.27", "replicas": 2, "port": 8080},
    }))
    .expect("a literal WebApp")
}

async fn round(
    client: &kube::Client,
    mut env: Env,
    side: Side,
    n: usize,
    rep: usize,
    settings: &Settings,
) -> Round {
    let ns = TestNamespace::create(client, &format!("bench-{}-{n}", side.name()))
        .await
        .expect("a namespace");
    env.namespace = ns.name().to_owned();
    let apps: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns.name(), &child::webapp_resource());
    futures::stream::iter(0..n)
        .map(|i| {
            let apps = apps.clone();
            async move {
                apps.create(&PostParams::default(), &webapp(&format!("web-{i:05}")))
                    .await
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await
        .expect("the WebApps are created");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let watches = observe(client, ns.name(), &seen);
    wait_for("the driver's watches", &seen, |s| {
        s.synced >= 3 && s.apps.len() >= n
    })
    .await;

    // Phase 1: convergence from a cold start.
    let spawn_wall = wall_us();
    let spawned = Instant::now();
    let mut proc = ChildProc::spawn(&env, side, TIMEOUT);
    let started_wall: u64 = proc
        .line()
        .strip_prefix("started ")
        .and_then(|t| t.parse().ok())
        .expect("the controller reports its start");
    let converged = wait_for("convergence", &seen, |s| s.converged(n)).await;
    let converge_s = (converged - spawned).as_secs_f64();
    let first = proc.report();

    // The controller keeps working after convergence (its own writes come back as watch
    // events); wait until no reconcile has started for a second.
    let mut settle_reconciles = first.reconciles.len();
    let mut last_start = first.reconciles.iter().map(|(_, t)| *t).max().unwrap_or(0);
    let mut quiet_since = Instant::now();
    let settled_report = loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let report = proc.report();
        if let Some(latest) = report.reconciles.iter().map(|(_, t)| *t).max() {
            settle_reconciles += report.reconciles.len();
            last_start = last_start.max(latest);
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= Duration::from_secs(1) {
            break report;
        }
        assert!(
            quiet_since.elapsed() < TIMEOUT,
            "the controller never settles"
        );
    };
    let settle_s = last_start.saturating_sub(spawn_wall) as f64 / 1e6;

    // Phase 2: paced updates against an idle controller.
    let before_latency = settled_report;
    let k = settings.updates.min(n);
    // Key → (wall µs when the update was sent, when its response arrived).
    let mut sent: HashMap<String, (u64, u64)> = HashMap::new();
    let mut wanted: HashMap<String, i64> = HashMap::new();
    let mut rtts = Vec::new();
    let period = Duration::from_secs_f64(1.0 / settings.rate.max(0.1));
    let mut tick = tokio::time::interval(period);
    for i in 0..k {
        tick.tick().await;
        let name = format!("web-{i:05}");
        let at = wall_us();
        let began = Instant::now();
        let patched = apps
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"replicas": 3}})),
            )
            .await
            .expect("the update is accepted");
        rtts.push(began.elapsed().as_secs_f64() * 1e3);
        sent.insert(format!("{}/{name}", ns.name()), (at, wall_us()));
        wanted.insert(name, patched.metadata.generation.unwrap_or(0));
    }
    wait_for("the updates to be reconciled", &seen, |s| {
        s.caught_up(&wanted)
    })
    .await;
    let after_latency = proc.report();
    proc.quit();
    for w in watches {
        w.abort();
    }

    let converged_wall = spawn_wall + (converge_s * 1e6) as u64;
    let reconciles = first
        .reconciles
        .iter()
        .filter(|(_, t)| *t <= converged_wall)
        .count();
    // The first reconcile of each updated key after its update was sent.
    let firsts: Vec<(u64, u64, u64)> = sent
        .iter()
        .filter_map(|(key, &(at, answered))| {
            after_latency
                .reconciles
                .iter()
                .filter(|(k, t)| k == key && *t >= at)
                .map(|(_, t)| *t)
                .min()
                .map(|t| (at, answered, t))
        })
        .collect();
    let sorted = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v
    };
    let latencies_ms = sorted(
        firsts
            .iter()
            .map(|(at, _, t)| (t - at) as f64 / 1e3)
            .collect(),
    );
    let after_response_ms = sorted(
        firsts
            .iter()
            .map(|(_, answered, t)| t.saturating_sub(*answered) as f64 / 1e3)
            .collect(),
    );
    let sum = |r: &Report| r.requests.values().sum::<u64>();
    let round = Round {
        side,
        n,
        rep,
        converge_s,
        startup_s: started_wall.saturating_sub(spawn_wall) as f64 / 1e6,
        reconciles,
        requests: first.requests.clone(),
        settle_s,
        settle_reconciles,
        settle_requests: sum(&before_latency),
        latency_phase_requests: sum(&after_latency) - sum(&before_latency),
        latencies_ms,
        after_response_ms,
        update_rtt_ms: stats::median(&mut rtts),
        rss_kib: first.rss_kib,
        hwm_kib: after_latency.hwm_kib,
        cpu_ms: first.cpu_ms,
    };
    delete_namespace(client, ns).await;
    round
}

/// Deletes the namespace and waits until it is gone, so the next round starts on an API
/// server that is not busy collecting this one.
async fn delete_namespace(client: &kube::Client, ns: TestNamespace) {
    let name = ns.name().to_owned();
    ns.delete().await.expect("the namespace deletes");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let deadline = Instant::now() + TIMEOUT;
    while namespaces.get_opt(&name).await.ok().flatten().is_some() {
        assert!(
            Instant::now() < deadline,
            "namespace {name} was not deleted"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
