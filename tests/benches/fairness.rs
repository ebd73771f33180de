//! Fairness between plugins: webapp's event→reconcile latency alone, then beside a plugin
//! that loops to its time budget on many primaries, with the sandbox slots handed out
//! first come, first served (a plain semaphore, as before) and fairly
//! (`controller::slots`), and with calls sharing CPU turns (`sandbox::Cpu`, the default):
//! without a per-plugin cap, and with `rekon run`'s default cap of twice the turns.
//!
//! Each phase runs an in-process `Host` scoped to a fresh namespace of one local control
//! plane, with `FAIRNESS_SLOTS` sandbox slots (default 64, `rekon run`'s: the sandbox
//! pool's size) and the default 64 concurrent reconciles per plugin:
//!
//! 1. webapp with `FAIRNESS_APPS` (default 20) WebApps, converged;
//! 2. beside the loop: the hostile test plugin too, with `FAIRNESS_LOOPS` (default 200)
//!    ConfigMaps in mode `loop` and a time budget of `FAIRNESS_BUDGET_MS` (default 200)
//!    ms. Its keys back off after each timeout, as they should; to keep it with work
//!    throughout (as at a resync, or with primaries that change), the driver touches each
//!    looping ConfigMap about once a second, and an event runs a key at once whatever its
//!    backoff.
//!
//! Then `FAIRNESS_SAMPLES` (default 200) changes of a WebApp's replicas, one every 100 ms,
//! each timed from sending the patch to a Deployment watch showing the new replicas
//! (the event, the queue, a sandbox slot, the reconcile, the apply, and the watch back).
//!
//! `REKON_SLOTS=shared` runs only the first-come phase beside the loop, `REKON_SLOTS=fair`
//! only the fair ones; unset, all. `FAIRNESS_CPUS=N` sets the CPU turns (default: the
//! cores, as `rekon run`'s `--sandbox-cpus`). `FAIRNESS_SHARE=N` adds a fair phase with the hostile
//! plugin capped at N slots (`sandboxShare: N` in its `NAME.yaml`).
//!
//! Run: `cargo bench -p rekon-tests --bench fairness` (about 3 minutes). Prints a table;
//! asserts nothing about speed, fails only when the setup fails or a change is never
//! reconciled.

#[path = "shared/figures.rs"]
#[allow(dead_code)] // `median` serves the sustain bench
mod figures;

use figures::percentile;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::watcher;
use rekon_host::controller::{self, Host, PluginOptions, slots};
use rekon_host::plugin::{Artifacts, Loaded, Loader};
use rekon_host::sandbox::{self, Sandbox};
use rekon_tests::controlplane::{
    ControlPlane, ControlPlaneOptions, TestNamespace, install_crd, wait_until,
};
use rekon_tests::plugins;
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(120);
const PACE: Duration = Duration::from_millis(100);

struct Settings {
    slots: usize,
    apps: usize,
    loops: usize,
    budget: Duration,
    samples: usize,
    which: Option<String>,
    share: Option<usize>,
    cpus: usize,
}

impl Settings {
    fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let num = |k: &str, default: usize| var(k).and_then(|v| v.parse().ok()).unwrap_or(default);
        Self {
            slots: num("FAIRNESS_SLOTS", 64).max(1),
            apps: num("FAIRNESS_APPS", 20).max(1),
            loops: num("FAIRNESS_LOOPS", 200),
            budget: Duration::from_millis(num("FAIRNESS_BUDGET_MS", 200) as u64),
            samples: num("FAIRNESS_SAMPLES", 200).max(1),
            which: var("REKON_SLOTS"),
            share: var("FAIRNESS_SHARE").and_then(|v| v.parse().ok()),
            cpus: num("FAIRNESS_CPUS", sandbox::Config::default().cpus).max(1),
        }
    }
}

/// One phase: whether the looping plugin runs, how slots are handed out, its cap, and
/// whether calls share CPU turns (`sandbox::Config::cpus`, on by default in `rekon run`).
struct Phase {
    name: String,
    looping: bool,
    policy: slots::Policy,
    share: Option<usize>,
    cpu_turns: bool,
    /// The host's default cap per plugin (`rekon run`: twice the CPU turns).
    default_share: Option<usize>,
}

/// What a phase measured.
struct Figures {
    latencies_ms: Vec<f64>,
    loop_calls: u64,
}

fn main() {
    let settings = Settings::from_env();
    let mut phases = vec![Phase {
        name: "webapp alone".into(),
        looping: false,
        policy: slots::Policy::Fair,
        share: None,
        cpu_turns: true,
        default_share: None,
    }];
    let which = settings.which.as_deref();
    if which != Some("fair") {
        phases.push(Phase {
            name: "beside the loop, first-come slots, no CPU turns".into(),
            looping: true,
            policy: slots::Policy::Fifo,
            share: None,
            cpu_turns: false,
            default_share: None,
        });
    }
    if which != Some("shared") {
        phases.push(Phase {
            name: "beside the loop, fair slots, no CPU turns".into(),
            looping: true,
            policy: slots::Policy::Fair,
            share: None,
            cpu_turns: false,
            default_share: None,
        });
        phases.push(Phase {
            name: "beside the loop, fair slots, CPU turns, no cap".into(),
            looping: true,
            policy: slots::Policy::Fair,
            share: None,
            cpu_turns: true,
            default_share: None,
        });
        phases.push(Phase {
            name: "beside the loop, rekon run's default".into(),
            looping: true,
            policy: slots::Policy::Fair,
            share: None,
            cpu_turns: true,
            default_share: Some(2 * settings.cpus),
        });
        if let Some(n) = settings.share {
            phases.push(Phase {
                name: format!("beside the loop, fair, CPU turns, sandboxShare {n}"),
                looping: true,
                policy: slots::Policy::Fair,
                share: Some(n),
                cpu_turns: true,
                default_share: None,
            });
        }
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    // webapp and the hostile plugin loaded into a sandbox with CPU turns, and one without.
    let with_turns = load(
        sandbox::Config {
            cpus: settings.cpus,
            ..Default::default()
        },
        &settings,
    );
    let without_turns = load(
        sandbox::Config {
            cpus: 0,
            ..Default::default()
        },
        &settings,
    );

    println!(
        "fairness: {} slots, {} WebApps, {} looping primaries at a {:?} budget, {} samples a phase, {} cores",
        settings.slots,
        settings.apps,
        settings.loops,
        settings.budget,
        settings.samples,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    runtime.block_on(async {
        let cp = ControlPlane::start(ControlPlaneOptions::default())
            .await
            .expect("the control plane starts");
        let client = cp.client().await.expect("a client");
        for doc in std::fs::read_to_string(plugins::workspace().join("plugins/webapp/crd.yaml"))
            .expect("the CRD reads")
            .split("\n---")
            .filter(|d| d.trim().len() > 3)
        {
            install_crd(&client, doc).await.expect("the CRD installs");
        }
        let mut rows = Vec::new();
        for (i, phase) in phases.iter().enumerate() {
            let (webapp, hostile) = if phase.cpu_turns {
                &with_turns
            } else {
                &without_turns
            };
            let figures = run_phase(&client, &settings, phase, i, webapp, hostile).await;
            rows.push((phase, figures));
        }
        print_table(&rows);
        cp.stop().await.expect("the control plane stops");
    });
}

/// webapp and the hostile plugin (at the settings' budget) in a sandbox of `config`.
fn load(config: sandbox::Config, settings: &Settings) -> (Loaded, Loaded) {
    let sandbox = Sandbox::new(config).expect("the sandbox starts");
    let dir = plugins::target_dir().join("rekon-test-artifacts");
    let loader = Loader::new(sandbox, Artifacts::in_dir(dir), sandbox::Limits::default());
    let webapp = loader
        .load_file(&plugins::path("webapp"))
        .expect("webapp loads");
    let mut hostile = loader
        .load_file(&plugins::path("hostile-plugin"))
        .expect("the hostile plugin loads");
    hostile.limits.time_budget = settings.budget;
    (webapp, hostile)
}

fn webapps(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk("rekon.dev", "v1alpha1", "WebApp"));
    Api::namespaced_with(client.clone(), ns, &ar)
}

fn app_name(i: usize) -> String {
    format!("web-{i:03}")
}

/// Deployment replicas as the watch reports them: (name, replicas, when seen).
type Seen = Arc<Mutex<Vec<(String, i32, Instant)>>>;

async fn run_phase(
    client: &kube::Client,
    settings: &Settings,
    phase: &Phase,
    index: usize,
    webapp: &Loaded,
    hostile: &Loaded,
) -> Figures {
    let ns = TestNamespace::create(client, &format!("fair-{index}"))
        .await
        .expect("a namespace");
    let host = Host::new(
        client.clone(),
        controller::Config {
            namespace: Some(ns.name().to_owned()),
            instance: format!("bench-{}", ns.name()),
            sandbox_slots: settings.slots,
            sandbox_policy: phase.policy,
            sandbox_share: phase.default_share,
            ..Default::default()
        },
    );
    host.start(webapp.clone()).await.expect("webapp starts");

    let seen: Seen = Arc::default();
    let log = seen.clone();
    let watch = tokio::spawn(
        watcher(
            Api::<Deployment>::namespaced(client.clone(), ns.name()),
            watcher::Config::default(),
        )
        .for_each(move |event| {
            if let Ok(watcher::Event::Apply(d) | watcher::Event::InitApply(d)) = event {
                let replicas = d.spec.replicas.unwrap_or(-1);
                log.lock().unwrap_or_else(|e| e.into_inner()).push((
                    d.metadata.name.unwrap_or_default(),
                    replicas,
                    Instant::now(),
                ));
            }
            std::future::ready(())
        }),
    );

    let apps = webapps(client, ns.name());
    for i in 0..settings.apps {
        let app: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "rekon.dev/v1alpha1", "kind": "WebApp",
            "metadata": {"name": app_name(i)},
            "spec": {"image": "nginx:1.27", "replicas": 10, "port": 8080},
        }))
        .expect("a WebApp");
        apps.create(&PostParams::default(), &app)
            .await
            .expect("the WebApp is created");
    }
    let deployments: Api<Deployment> = ns.api();
    wait_until("every Deployment exists", WAIT, || async {
        let list = deployments.list(&Default::default()).await.ok()?;
        (list.items.len() == settings.apps).then_some(())
    })
    .await
    .expect("webapp converges");

    let mut toucher = None;
    if phase.looping {
        let cms: Api<ConfigMap> = ns.api();
        for i in 0..settings.loops {
            let cm: ConfigMap = serde_json::from_value(json!({
                "metadata": {"name": format!("loop-{i:03}")},
                "data": {"mode": "loop"},
            }))
            .expect("a ConfigMap");
            cms.create(&PostParams::default(), &cm)
                .await
                .expect("the looping ConfigMap is created");
        }
        let options = PluginOptions {
            sandbox_share: phase.share,
            ..Default::default()
        };
        host.start_with(hostile.clone(), options)
            .await
            .expect("the hostile plugin starts");
        toucher = Some(tokio::spawn(touch(cms, settings.loops)));
        // Let it fill the slots and reach its steady state.
        tokio::time::sleep(Duration::from_secs(3)).await;
    }

    // The changes: app i % apps gets 1..=9 replicas in turn (never its current value).
    let patch_params = PatchParams::default();
    let mut sent = Vec::with_capacity(settings.samples);
    let mut next = tokio::time::interval(PACE);
    for k in 0..settings.samples {
        next.tick().await;
        let (name, replicas) = (app_name(k % settings.apps), (k / settings.apps) % 9 + 1);
        let at = Instant::now();
        apps.patch(
            &name,
            &patch_params,
            &Patch::Merge(json!({"spec": {"replicas": replicas}})),
        )
        .await
        .expect("the WebApp is patched");
        sent.push((name, replicas as i32, at));
    }
    let latency = |(name, replicas, at): &(String, i32, Instant)| {
        seen.lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|(n, r, t)| n == name && r == replicas && t >= at)
            .map(|(_, _, t)| (*t - *at).as_secs_f64() * 1e3)
    };
    let latencies_ms = wait_until("every change is reconciled", WAIT, || async {
        sent.iter().map(latency).collect::<Option<Vec<f64>>>()
    })
    .await
    .expect("every change reaches its Deployment");

    let loop_calls = host
        .stats()
        .iter()
        .find(|(name, _)| name == hostile.name())
        .map_or(0, |(_, s)| controller::Stats::read(&s.reconciles));
    if let Some(t) = toucher {
        t.abort();
    }
    watch.abort();
    host.shutdown(Duration::from_secs(5)).await;
    let _ = ns.delete().await;
    Figures {
        latencies_ms,
        loop_calls,
    }
}

/// Touches every looping ConfigMap about once a second, round-robin, so the looping
/// plugin's keys run again whatever their backoff.
async fn touch(cms: Api<ConfigMap>, loops: usize) {
    if loops == 0 {
        return;
    }
    let mut next = tokio::time::interval(Duration::from_secs(1) / loops as u32);
    for tick in 0u64.. {
        next.tick().await;
        let name = format!("loop-{:03}", tick % loops as u64);
        let patch = Patch::Merge(json!({"data": {"tick": tick.to_string()}}));
        let _ = cms.patch(&name, &PatchParams::default(), &patch).await;
    }
}

fn print_table(rows: &[(&Phase, Figures)]) {
    let alone_p99 = rows
        .iter()
        .find(|(p, _)| !p.looping)
        .map(|(_, f)| {
            let mut v = f.latencies_ms.clone();
            v.sort_by(f64::total_cmp);
            percentile(&v, 99.0)
        })
        .unwrap_or(f64::NAN);
    println!();
    println!(
        "| {:<48} | {:>8} | {:>8} | {:>8} | {:>13} | {:>10} |",
        "phase", "p50 ms", "p99 ms", "max ms", "p99 / alone", "loop calls"
    );
    println!(
        "| {:-<48} | {:->8} | {:->8} | {:->8} | {:->13} | {:->10} |",
        "", "", "", "", "", ""
    );
    for (phase, f) in rows {
        let mut v = f.latencies_ms.clone();
        v.sort_by(f64::total_cmp);
        let p99 = percentile(&v, 99.0);
        println!(
            "| {:<48} | {:>8.1} | {:>8.1} | {:>8.1} | {:>12.1}× | {:>10} |",
            phase.name,
            percentile(&v, 50.0),
            p99,
            v.last().copied().unwrap_or(0.0),
            p99 / alone_p99,
            f.loop_calls
        );
    }
}
