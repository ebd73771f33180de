//! Per-reconcile cost in process, without an API server: the webapp plugin's logic as a
//! native Rust function against the same logic compiled to wasm and called through the
//! host's full call path — request → fresh sandbox instance → guest → output copied out →
//! the host's output checks (`Loaded::reconcile`) — for 1 / 4 / 64 KB primaries and 0 /
//! 10 / 100 related objects (owned Deployments, as the host's cache would pass them).
//!
//! Both sides do the same plugin work: parse the request JSON, decode the WebApp (and the
//! owned Deployment when there is one) into typed structs, build the children, serialise
//! the output. The native side calls `rekon_sdk::raw::reconcile` — exactly what the
//! component's export runs — on a copy of the same request.
//!
//! Sandbox strategies (each its own engine):
//! - `fresh`: the host's default — a fresh store and instance per call from the pooling
//!   allocator, 4 MiB of each slot kept resident, the pages the call wrote found with
//!   PAGEMAP_SCAN and reset to the pristine image when the slot is recycled;
//! - `inlining`: as `fresh`, the plugin compiled with Cranelift's inliner;
//! - `memset`: as `fresh` but resetting by `memset` of the whole resident prefix (how
//!   slots were reset before issue 7);
//! - `madvise`: pooling with nothing kept resident (reset by `madvise`, so every call
//!   page-faults its memory in again);
//! - `on-demand`: no pooling allocator (mmap per instance).
//!
//! Every strategy gives each call fresh, isolated state; none reuses an instance. For
//! reference, three columns marked `*` keep one instance for all calls (not isolated, no
//! host checks; see `floor.rs`): with epoch interruption, without it, and with inlining
//! (`CALL_REUSED=0` leaves them out).
//!
//! Run: `cargo bench -p rekon-tests --bench call` (prints figures; asserts nothing).
//! Environment: `CALL_SIZES` (KB, default `1,4,64`), `CALL_RELATED` (default `0,10,100`),
//! `CALL_STRATEGIES` (default all), `CALL_ROUNDS` (default 15), `CALL_TIME_MS` (target time
//! per round, default 40), `CALL_PROFILE=STRATEGY:KB:RELATED:SECONDS` (loop one cell — or `native`, `checks` — for
//! `perf record`, with a perf map of the guest's functions).

mod floor;

use rekon_host::contract::Request;
use rekon_host::plugin::{Artifacts, Loaded, Loader};
use rekon_host::sandbox::{self, Clock, NoCache, Phases, Sandbox};
use rekon_sdk::raw::wit;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Strategy {
    Fresh,
    Inline,
    Memset,
    Madvise,
    OnDemand,
}

impl Strategy {
    const ALL: [Strategy; 5] = [
        Strategy::Fresh,
        Strategy::Inline,
        Strategy::Memset,
        Strategy::Madvise,
        Strategy::OnDemand,
    ];

    fn name(self) -> &'static str {
        match self {
            Strategy::Fresh => "fresh",
            Strategy::Inline => "inlining",
            Strategy::Memset => "memset",
            Strategy::Madvise => "madvise",
            Strategy::OnDemand => "on-demand",
        }
    }

    fn config(self, perf_map: bool) -> sandbox::Config {
        let base = sandbox::Config {
            perf_map,
            ..Default::default()
        };
        match self {
            Strategy::Fresh => base,
            Strategy::Inline => sandbox::Config {
                inlining: true,
                ..base
            },
            Strategy::Memset => sandbox::Config {
                pagemap_scan: false,
                ..base
            },
            Strategy::Madvise => sandbox::Config {
                keep_resident: 0,
                ..base
            },
            Strategy::OnDemand => sandbox::Config {
                pooling: false,
                ..base
            },
        }
    }
}

/// A WebApp whose JSON is about `kb` KB (annotations pad it).
fn primary(kb: usize) -> String {
    let base = json!({
        "apiVersion": "rekon.dev/v1alpha1", "kind": "WebApp",
        "metadata": {
            "name": "web", "namespace": "shop", "uid": "0b6a5c1e-0000-4000-8000-000000000001",
            "resourceVersion": "100", "generation": 3,
            "labels": {"app": "web", "team": "storefront", "tier": "frontend"},
            "annotations": {},
        },
        "spec": {"image": "nginx:1.27", "replicas": 3, "port": 8080},
    });
    let mut value = base;
    let mut i = 0;
    while value.to_string().len() + 100 <= kb * 1024 {
        value["metadata"]["annotations"][format!("example.com/note-{i:04}")] =
            json!("x".repeat(70));
        i += 1;
    }
    value.to_string()
}

/// Owned Deployment `name`, as the API server serves one (~1.6 KB).
fn deployment(name: &str, ready: i32) -> String {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {
            "name": name, "namespace": "shop", "uid": format!("d-{name}"), "resourceVersion": "120",
            "generation": 1, "creationTimestamp": "2026-11-30T10:00:00Z",
            "labels": {"app.kubernetes.io/name": name, "app.kubernetes.io/managed-by": "rekon"},
            "annotations": {"deployment.kubernetes.io/revision": "1"},
            "ownerReferences": [{"apiVersion": "rekon.dev/v1alpha1", "kind": "WebApp", "name": "web",
                "uid": "0b6a5c1e-0000-4000-8000-000000000001", "controller": true, "blockOwnerDeletion": true}],
        },
        "spec": {
            "replicas": 3, "revisionHistoryLimit": 10, "progressDeadlineSeconds": 600,
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/name": name, "app.kubernetes.io/managed-by": "rekon"}},
                "spec": {
                    "containers": [{"name": "web", "image": "nginx:1.27", "imagePullPolicy": "IfNotPresent",
                        "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                        "resources": {}, "terminationMessagePath": "/dev/termination-log",
                        "terminationMessagePolicy": "File"}],
                    "dnsPolicy": "ClusterFirst", "restartPolicy": "Always", "schedulerName": "default-scheduler",
                    "securityContext": {}, "terminationGracePeriodSeconds": 30,
                },
            },
        },
        "status": {
            "observedGeneration": 1, "replicas": 3, "updatedReplicas": 3, "readyReplicas": ready,
            "availableReplicas": ready,
            "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable",
                "message": "Deployment has minimum availability.", "lastUpdateTime": "2026-11-30T10:00:05Z",
                "lastTransitionTime": "2026-11-30T10:00:05Z"}],
        },
    })
    .to_string()
}

/// `n` related objects: the WebApp's own Deployment and `n - 1` others.
fn related(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| match i {
            0 => deployment("web", 2),
            i => deployment(&format!("web-{i:03}"), 3),
        })
        .collect()
}

struct Settings {
    sizes: Vec<usize>,
    related: Vec<usize>,
    strategies: Vec<Strategy>,
    rounds: usize,
    round_time: Duration,
    reused: bool,
}

fn list(var: &str, default: &str) -> Vec<String> {
    std::env::var(var)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| default.into())
        .split(',')
        .map(|s| s.trim().to_owned())
        .collect()
}

impl Settings {
    fn from_env() -> Self {
        let num = |k: &str, d: u64| {
            std::env::var(k)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(d)
        };
        Self {
            sizes: list("CALL_SIZES", "1,4,64")
                .iter()
                .filter_map(|s| s.parse().ok())
                .collect(),
            related: list("CALL_RELATED", "0,10,100")
                .iter()
                .filter_map(|s| s.parse().ok())
                .collect(),
            strategies: list("CALL_STRATEGIES", "fresh,inlining,memset,madvise,on-demand")
                .iter()
                .filter_map(|s| Strategy::ALL.into_iter().find(|x| x.name() == s))
                .collect(),
            rounds: num("CALL_ROUNDS", 15).max(3) as usize,
            reused: num("CALL_REUSED", 1) != 0,
            round_time: Duration::from_millis(num("CALL_TIME_MS", 40)),
        }
    }
}

/// The lowest mean time per call over the rounds; rounds are sized to take about
/// `round_time` each. On a shared 2-core machine the lowest round is the steadiest
/// figure (other processes only ever add time).
fn measure(settings: &Settings, mut f: impl FnMut()) -> Duration {
    let warm = Instant::now();
    let mut calls = 0u32;
    while warm.elapsed() < settings.round_time || calls < 20 {
        f();
        calls += 1;
    }
    let per_round = calls.max(10);
    (0..settings.rounds)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..per_round {
                f();
            }
            start.elapsed() / per_round
        })
        .min()
        .unwrap_or_default()
}

fn load(strategy: Strategy, perf_map: bool) -> Loaded {
    let sandbox = Sandbox::new(strategy.config(perf_map)).expect("the sandbox starts");
    // Precompiled artifacts, so loading (and perf profiles) skip compilation.
    let artifacts = rekon_tests::plugins::target_dir()
        .join("rekon-bench")
        .join("artifacts");
    Loader::new(
        sandbox,
        Artifacts::in_dir(artifacts),
        sandbox::Limits::default(),
    )
    .load_file(&rekon_tests::plugins::path("webapp"))
    .expect("webapp loads")
}

fn native(req: &wit::Request) {
    let out = rekon_sdk::raw::reconcile::<webapp::WebAppPlugin>(req.clone());
    assert!(out.is_ok());
}

fn wasm(plugin: &Loaded, req: &Request, cache: &Arc<dyn sandbox::CacheView>) -> Phases {
    let call = plugin.reconcile(req, Clock::System, cache.clone());
    assert!(call.result.is_ok(), "{:?}", call.result.err());
    call.phases
}

fn requests(kb: usize, n: usize) -> (wit::Request, Request) {
    let (primary, related) = (primary(kb), related(n));
    (
        wit::Request {
            primary: primary.clone(),
            related: related.clone(),
            settings: "{}".into(),
        },
        Request {
            primary,
            related,
            settings: "{}".into(),
        },
    )
}

fn profile(spec: &str) {
    let parts: Vec<&str> = spec.split(':').collect();
    let [strategy, kb, n, seconds] = parts[..] else {
        panic!("CALL_PROFILE=STRATEGY:KB:RELATED:SECONDS, got {spec}")
    };
    let (native_req, req) = requests(kb.parse().expect("KB"), n.parse().expect("related count"));
    let cache: Arc<dyn sandbox::CacheView> = Arc::new(NoCache);
    let plugin = Strategy::ALL
        .into_iter()
        .find(|s| s.name() == strategy)
        .map(|s| load(s, true));
    println!("profiling {spec} (pid {})", std::process::id());
    if strategy == "checks" {
        let settings = Settings {
            round_time: Duration::from_secs(seconds.parse().expect("seconds")),
            rounds: 3,
            ..Settings::from_env()
        };
        let t = checks_alone(&settings, &load(Strategy::Fresh, false), &native_req);
        println!("checks alone: {:.2} µs", us(t));
        return;
    }
    let until = Instant::now() + Duration::from_secs(seconds.parse().expect("seconds"));
    let mut calls = 0u64;
    while Instant::now() < until {
        match &plugin {
            Some(p) => {
                wasm(p, &req, &cache);
            }
            None => native(&native_req),
        }
        calls += 1;
    }
    println!("{calls} calls");
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The host's output checks alone, on the output the webapp logic gives for `req`.
fn checks_alone(settings: &Settings, plugin: &Loaded, native_req: &wit::Request) -> Duration {
    let out = rekon_sdk::raw::reconcile::<webapp::WebAppPlugin>(native_req.clone())
        .expect("the webapp logic succeeds");
    let raw = sandbox::RawOutput {
        mutations: out
            .mutations
            .into_iter()
            .map(|m| match m {
                wit::Mutation::Apply(s) => sandbox::RawMutation::Apply(s),
                wit::Mutation::UpdateStatus(s) => sandbox::RawMutation::UpdateStatus(s),
                other => unreachable!("webapp does not emit {other:?}"),
            })
            .collect(),
        requeue_after_ms: out.requeue_after_ms,
        events: vec![],
        conditions: out
            .conditions
            .into_iter()
            .map(|c| rekon_host::contract::Condition {
                condition_type: c.condition_type,
                status: rekon_host::contract::ConditionStatus::False,
                reason: c.reason,
                message: c.message,
            })
            .collect(),
        prune: out.prune,
    };
    measure(settings, || {
        let checked = rekon_host::write::check::output(
            raw.clone(),
            &plugin.metadata,
            &native_req.primary,
            &plugin.limits,
        );
        assert!(checked.is_ok());
    })
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    if let Ok(spec) = std::env::var("CALL_PROFILE") {
        return profile(&spec);
    }
    let settings = Settings::from_env();
    let plugins: Vec<(Strategy, Loaded)> = settings
        .strategies
        .iter()
        .map(|&s| (s, load(s, false)))
        .collect();
    let wasm_bytes = rekon_tests::plugins::bytes("webapp");
    let mut reused: Vec<(&str, floor::Reused)> = if settings.reused {
        vec![
            ("reused", floor::Reused::new(&wasm_bytes, true, false)),
            (
                "reused, no epoch",
                floor::Reused::new(&wasm_bytes, false, false),
            ),
            (
                "reused, inlining",
                floor::Reused::new(&wasm_bytes, true, true),
            ),
        ]
    } else {
        Vec::new()
    };
    let cache: Arc<dyn sandbox::CacheView> = Arc::new(NoCache);
    println!(
        "reconcile call cost: webapp plugin, lowest of {} round means (µs per call; × = ratio to native); load average {}",
        settings.rounds,
        load_average()
    );
    print!("{:>7} {:>7} {:>9}", "primary", "related", "native");
    for (s, _) in &plugins {
        print!(" {:>17}", s.name());
    }
    for (name, _) in &reused {
        print!(" {:>17}", format!("{name}*"));
    }
    println!();
    let mut breakdown = Vec::new();
    for &kb in &settings.sizes {
        for &n in &settings.related {
            let (native_req, req) = requests(kb, n);
            let native_t = measure(&settings, || native(&native_req));
            print!(
                "{:>5.1}KB {:>7} {:>9.1}",
                req.primary.len() as f64 / 1024.0,
                n,
                us(native_t)
            );
            for (s, plugin) in &plugins {
                let t = measure(&settings, || {
                    wasm(plugin, &req, &cache);
                });
                print!(
                    " {:>9.1} {:>5.2}×",
                    us(t),
                    t.as_secs_f64() / native_t.as_secs_f64()
                );
                if *s == Strategy::Fresh {
                    let checks = checks_alone(&settings, plugin, &native_req);
                    breakdown.push((kb, n, t, phases(plugin, &req, &cache), checks));
                }
            }
            for (_, instance) in &mut reused {
                let t = measure(&settings, || instance.call(&req.primary, &req.related));
                print!(
                    " {:>9.1} {:>5.2}×",
                    us(t),
                    t.as_secs_f64() / native_t.as_secs_f64()
                );
            }
            println!();
        }
    }
    if !reused.is_empty() {
        println!(
            "* not isolated: one instance kept across calls (wasmtime directly, no host checks) — \
             the floor no per-call setup or reset would reach"
        );
    }
    if !breakdown.is_empty() {
        println!(
            "\nwhere a `fresh` call's time goes (µs; total as above, phases medians of 201 calls):"
        );
        println!(
            "{:>7} {:>7} {:>9} {:>12} {:>9} {:>9} {:>18} {:>14}",
            "primary",
            "related",
            "total",
            "instantiate",
            "run",
            "teardown",
            "convert + checks",
            "checks alone"
        );
        for (kb, n, total, (p, outside), checks) in breakdown {
            println!(
                "{:>5}KB {:>7} {:>9.1} {:>12.1} {:>9.1} {:>9.1} {:>18.1} {:>14.1}",
                kb,
                n,
                us(total),
                us(p.instantiate),
                us(p.run),
                us(p.teardown),
                us(outside),
                us(checks),
            );
        }
    }
}

/// Median phases over 201 calls, with the median time outside the sandbox (converting
/// the request, checking the output) as the last figure.
fn phases(
    plugin: &Loaded,
    req: &Request,
    cache: &Arc<dyn sandbox::CacheView>,
) -> (Phases, Duration) {
    let calls: Vec<(Phases, Duration, Duration)> = (0..201)
        .map(|_| {
            let began = Instant::now();
            let call = plugin.reconcile(req, Clock::System, cache.clone());
            let outer = began.elapsed();
            assert!(call.result.is_ok());
            (call.phases, call.elapsed, outer)
        })
        .collect();
    let median = |f: &dyn Fn(&(Phases, Duration, Duration)) -> Duration| {
        let mut v: Vec<Duration> = calls.iter().map(f).collect();
        v.sort();
        v[v.len() / 2]
    };
    (
        Phases {
            instantiate: median(&|c| c.0.instantiate),
            run: median(&|c| c.0.run),
            teardown: median(&|c| c.0.teardown),
        },
        median(&|c| c.2.saturating_sub(c.1)),
    )
}
