//! The chaos test (bounded, runs in CI): 200 WebApps reconciled by a `rekon run` process
//! with a hostile plugin beside the good one, while foreign writers keep labelling their
//! Deployments; meanwhile etcd is compacted and the control plane restarted on the same
//! data (every watch breaks and its resume expires: 410 Gone), and the host is SIGKILLed
//! and restarted. At the end every WebApp has converged, there are no duplicate or orphan
//! children, no foreign change was lost, and the host's memory is back to its baseline.
//!
//! "No foreign change lost" is proven twice. The foreign label lies outside the fields
//! webapp applies, so its survival shows applies keep fields they do not own. That alone
//! would hold even for a blind write, so the host also talks to the API server through
//! the fault proxy (no faults injected), which records what each write was conditioned
//! on: every write the API server accepted to an existing Deployment must have carried a
//! resourceVersion — a foreign write in between would have made it a 409 — and some of
//! them must have met exactly that (a 409), or the foreign writers never raced the host.

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use rekon_tests::controlplane::{
    ControlPlane, ControlPlaneOptions, TestNamespace, install_crd, wait_until,
};
use rekon_tests::plugins;
use rekon_tests::process::{MetricError, RekonProcess, RunOptions};
use rekon_tests::proxy::FaultProxy;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const N: usize = 200;
const WAIT: Duration = Duration::from_secs(180);
const FOREIGN_LABEL: &str = "chaos.rekon.dev/writer";

fn webapps(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk("rekon.dev", "v1alpha1", "WebApp"));
    Api::namespaced_with(client.clone(), ns, &ar)
}

fn name(i: usize) -> String {
    format!("app-{i:03}")
}

/// What the end state must look like, and what it looks like now.
#[derive(Debug, Default)]
struct Census {
    converged: usize,
    deployments: usize,
    services: usize,
    orphans_or_duplicates: usize,
}

async fn census(client: &kube::Client, ns: &str) -> Option<Census> {
    let lp = ListParams::default();
    let apps = webapps(client, ns).list(&lp).await.ok()?.items;
    let deployments = Api::<Deployment>::namespaced(client.clone(), ns)
        .list(&lp)
        .await
        .ok()?
        .items;
    let services = Api::<Service>::namespaced(client.clone(), ns)
        .list(&lp)
        .await
        .ok()?
        .items;
    let by_name: HashMap<&str, &DynamicObject> = apps
        .iter()
        .filter_map(|a| Some((a.metadata.name.as_deref()?, a)))
        .collect();
    let mut c = Census {
        deployments: deployments.len(),
        services: services.len(),
        ..Census::default()
    };
    // Every child has exactly one controller reference, to the live WebApp of its name.
    let owned_right = |meta: &kube::api::ObjectMeta| {
        let controllers: Vec<_> = meta
            .owner_references
            .iter()
            .flatten()
            .filter(|r| r.controller == Some(true))
            .collect();
        let app = meta.name.as_deref().and_then(|n| by_name.get(n));
        controllers.len() == 1
            && app.is_some_and(|a| a.metadata.uid.as_deref() == Some(&controllers[0].uid))
    };
    c.orphans_or_duplicates = deployments
        .iter()
        .map(|d| &d.metadata)
        .chain(services.iter().map(|s| &s.metadata))
        .filter(|m| !owned_right(m))
        .count();
    let replicas: HashMap<&str, Option<i32>> = deployments
        .iter()
        .filter_map(|d| Some((d.metadata.name.as_deref()?, d.spec.replicas)))
        .collect();
    for a in &apps {
        let n = a.metadata.name.as_deref().unwrap_or_default();
        let want = a.data["spec"]["replicas"].as_i64().unwrap_or(1);
        let ready = a.data["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
            .is_some_and(|c| c["observedGeneration"].as_i64() == a.metadata.generation);
        let deployed = replicas.get(n) == Some(&Some(i32::try_from(want).unwrap_or(-1)));
        if ready && deployed {
            c.converged += 1;
        }
    }
    Some(c)
}

async fn wait_converged(client: &kube::Client, ns: &str, what: &str, host: &RekonProcess) {
    let started = Instant::now();
    wait_until(what, WAIT, || async {
        let c = census(client, ns).await?;
        (c.converged == N && c.deployments == N && c.services == N).then_some(())
    })
    .await
    .unwrap_or_else(|e| {
        let tail: String = host
            .log()
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .join("\n");
        panic!("{e}\nlast log lines (newest first):\n{tail}")
    });
    println!("chaos: {what} in {:.1}s", started.elapsed().as_secs_f64());
}

/// Scales `count` WebApps starting at `from` to `replicas`.
async fn scale(client: &kube::Client, ns: &str, from: usize, count: usize, replicas: i64) {
    let api = webapps(client, ns);
    futures::stream::iter(from..from + count)
        .for_each_concurrent(16, |i| {
            let api = api.clone();
            async move {
                let patch = json!({ "spec": { "replicas": replicas } });
                // During a control-plane restart some writes fail; retried until accepted.
                // One that never is fails the test: convergence would otherwise be checked
                // against the old spec.
                wait_until(
                    &format!("{} scaled to {replicas}", name(i)),
                    WAIT,
                    || async {
                        api.patch(&name(i), &PatchParams::default(), &Patch::Merge(&patch))
                            .await
                            .ok()
                            .map(|_| ())
                    },
                )
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            }
        })
        .await;
}

/// Labels random Deployments with an increasing counter until stopped; remembers the
/// last value each Deployment was given (the API server accepted).
fn foreign_writers(
    client: kube::Client,
    ns: String,
    stop: Arc<AtomicBool>,
) -> (
    tokio::task::JoinHandle<u64>,
    Arc<Mutex<BTreeMap<String, u64>>>,
) {
    let last = Arc::new(Mutex::new(BTreeMap::new()));
    let written = last.clone();
    let task = tokio::spawn(async move {
        let api: Api<Deployment> = Api::namespaced(client, &ns);
        let mut counter = 0u64;
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        while !stop.load(Ordering::Relaxed) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let target = name(usize::try_from(seed % N as u64).unwrap_or(0));
            counter += 1;
            let patch = json!({ "metadata": { "labels": { FOREIGN_LABEL: counter.to_string() } } });
            if api
                .patch(&target, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .is_ok()
            {
                written.lock().unwrap().insert(target, counter);
            } else {
                // Not created yet, or the control plane is restarting.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        counter
    });
    (task, last)
}

fn start_host(kubeconfig: &Path, dir: &Path, ns: &str, identity: &str) -> RekonProcess {
    let mut options = RunOptions::new(kubeconfig, dir, identity).args([
        format!("--namespace={ns}"),
        "--concurrency=8".to_owned(),
        "--grace=5s".to_owned(),
    ]);
    options.log_filter = "info";
    RekonProcess::start(options)
}

async fn ready(host: &RekonProcess) {
    wait_until("the host is ready", WAIT, || async {
        (host.get("/readyz")?.0 == 200).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", host.log()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_two_hundred_webapps_converge_through_restarts_kills_and_foreign_writers() {
    crate::logs();
    let data = tempfile::tempdir().unwrap();
    let options = ControlPlaneOptions {
        data_dir: Some(data.path().to_owned()),
        watch_cache: false,
        ..Default::default()
    };
    let cp = ControlPlane::start(options.clone()).await.unwrap();
    let kubeconfig = cp.kubeconfig_path().to_owned();
    let client = cp.client().await.unwrap();
    let crd =
        std::fs::read_to_string(plugins::workspace().join("plugins/webapp/crd.yaml")).unwrap();
    install_crd(&client, crd).await.unwrap();
    let ns = TestNamespace::create(&client, "chaos").await.unwrap();
    let ns = ns.name().to_owned();

    let dir = tempfile::tempdir().unwrap();
    for (file, krate) in [
        ("webapp.wasm", "webapp"),
        ("hostile.wasm", "hostile-plugin"),
    ] {
        std::fs::copy(plugins::path(krate), dir.path().join(file)).unwrap();
    }
    // The host's requests go through the fault proxy, which records what each write was
    // conditioned on (no rules: nothing is injected).
    let proxy = FaultProxy::start(client.clone()).await.unwrap();
    let kubeconfig_dir = tempfile::tempdir().unwrap();
    let proxied = kubeconfig_dir.path().join("kubeconfig");
    proxy.write_kubeconfig(&proxied).unwrap();
    let mut host = start_host(&proxied, dir.path(), &ns, "chaos-1");
    ready(&host).await;

    // The hostile plugin's primaries fail in every way, with backoff, beside the WebApps.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    for mode in [
        "loop",
        "alloc",
        "panic",
        "recurse",
        "bad-json",
        "giant-output",
    ] {
        let cm: ConfigMap = serde_json::from_value(json!({
            "metadata": { "name": format!("hostile-{mode}") }, "data": { "mode": mode },
        }))
        .unwrap();
        cms.create(&PostParams::default(), &cm).await.unwrap();
    }

    let apps = webapps(&client, &ns);
    let started = Instant::now();
    futures::stream::iter(0..N)
        .for_each_concurrent(16, |i| {
            let apps = apps.clone();
            async move {
                let app: DynamicObject = serde_json::from_value(json!({
                    "apiVersion": "rekon.dev/v1alpha1", "kind": "WebApp",
                    "metadata": { "name": name(i) },
                    "spec": { "image": "nginx:1.27", "replicas": 1 },
                }))
                .unwrap();
                apps.create(&PostParams::default(), &app).await.unwrap();
            }
        })
        .await;
    println!(
        "chaos: created {N} WebApps in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let (writers, last_written) = foreign_writers(client.clone(), ns.clone(), stop.clone());
    wait_converged(&client, &ns, "initial convergence", &host).await;

    // Forced watch expiry and an API server restart on the same etcd data.
    scale(&client, &ns, 0, 50, 2).await;
    // A write of a kind the host does not watch moves etcd's revision past everything the
    // host's watches have seen; compacting there makes every resume a 410 Gone.
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), &ns)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({ "metadata": { "name": "bump" } })).unwrap(),
        )
        .await
        .unwrap();
    let revision = cp.compact_etcd().await.unwrap();
    let port: u16 = cp.server_url().rsplit(':').next().unwrap().parse().unwrap();
    // A crash, not a graceful stop: the API server would wait for the host's watches.
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &cp.pid().to_string()])
        .status();
    let _ = cp.stop().await; // reaps it; reports the kill
    println!("chaos: etcd compacted at revision {revision}; control plane killed");
    let cp = ControlPlane::start(ControlPlaneOptions {
        port: Some(port),
        ..options.clone()
    })
    .await
    .unwrap();
    assert_eq!(
        cp.kubeconfig_path(),
        kubeconfig,
        "same data dir, same kubeconfig"
    );
    println!(
        "chaos: control plane restarted on the same etcd data and port in {:.1}s",
        cp.startup_time().as_secs_f64()
    );
    scale(&client, &ns, 50, 50, 3).await;
    wait_converged(&client, &ns, "convergence after the restart", &host).await;
    let sum = |name: &str| -> f64 {
        host.metrics()
            .unwrap_or_else(|e| panic!("{e}\n{}", host.log()))
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let (restarts, relists) = (
        sum("rekon_watch_restarts_total{"),
        sum("rekon_watch_relists_total{"),
    );
    println!("chaos: watch restarts {restarts}, relists after 410 Gone {relists} (all kinds)");
    assert!(
        relists >= 1.0,
        "the watches' resume expired and they relisted"
    );

    // SIGKILL the host mid-work; a new one picks everything up.
    scale(&client, &ns, 100, 50, 2).await;
    host.kill();
    println!("chaos: host SIGKILLed");
    let mut host = start_host(&proxied, dir.path(), &ns, "chaos-2");
    ready(&host).await;
    wait_converged(&client, &ns, "convergence after the host restart", &host).await;

    // Churn with the new host warms it up (sandbox pool slots, store and queue capacity);
    // the baseline is taken after that, and the same churn again must not grow it.
    scale(&client, &ns, 0, 200, 1).await;
    wait_converged(&client, &ns, "convergence after more churn", &host).await;
    let baseline = host.rss_bytes().unwrap();
    scale(&client, &ns, 0, 200, 2).await;
    wait_converged(
        &client,
        &ns,
        "convergence after the same churn again",
        &host,
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let foreign_writes = writers.await.unwrap();
    wait_converged(&client, &ns, "final convergence", &host).await;
    let end = host.rss_bytes().unwrap();

    // Every foreign label write survived: nothing was overwritten blindly.
    let last = last_written.lock().unwrap().clone();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let mut lost = 0;
    for (target, value) in &last {
        let d = deployments.get(target).await.unwrap();
        let label = d
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(FOREIGN_LABEL))
            .cloned();
        if label != Some(value.to_string()) {
            lost += 1;
        }
    }
    // No blind write: every write to an existing Deployment was conditioned on the
    // version the host had seen, so none could land over a foreign write it had not.
    let deployment_writes: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|s| s.is_write() && s.forwarded && s.path.contains("/deployments/"))
        .collect();
    let blind: Vec<String> = deployment_writes
        .iter()
        .filter(|s| {
            s.status
                .is_some_and(|c| (200..300).contains(&c) && c != 201)
        })
        .filter(|s| s.precondition.is_none())
        .map(|s| format!("{} {} → {:?}", s.method, s.path, s.status))
        .collect();
    let refused = deployment_writes
        .iter()
        .filter(|s| s.status == Some(409))
        .count();
    println!(
        "chaos: the host's writes to Deployments: {}, without a resourceVersion and \
         accepted over an existing object {}, refused 409 (a foreign write came first) {refused}",
        deployment_writes.len(),
        blind.len()
    );
    let c = census(&client, &ns).await.unwrap();
    let conflicts = match host.metric("rekon_apply_conflicts_total{plugin=\"webapp\"}") {
        Ok(n) => n.to_string(),
        Err(MetricError::Absent { .. }) => "none".to_owned(),
        Err(e) => panic!("{e}\n{}", host.log()),
    };
    let faults: f64 = host
        .get("/metrics")
        .unwrap()
        .1
        .lines()
        .filter(|l| l.starts_with("rekon_plugin_faults_total{plugin=\"hostile\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    let drift = (end as f64 - baseline as f64) / baseline as f64;
    println!(
        "chaos: converged {}/{N}, deployments {}, services {}, orphans or duplicates {}, \
         foreign writes {foreign_writes} on {} deployments, lost {lost}, webapp conflicts \
         (second host) {conflicts}, hostile faults (second host) {faults}, RSS baseline \
         {:.1} MiB, end {:.1} MiB ({:+.1} %)",
        c.converged,
        c.deployments,
        c.services,
        c.orphans_or_duplicates,
        last.len(),
        baseline as f64 / 1048576.0,
        end as f64 / 1048576.0,
        drift * 100.0
    );
    assert_eq!(c.converged, N);
    assert_eq!((c.deployments, c.services), (N, N), "no duplicates");
    assert_eq!(c.orphans_or_duplicates, 0);
    assert_eq!(lost, 0, "foreign changes were overwritten");
    assert!(blind.is_empty(), "blind writes: {blind:#?}");
    assert!(
        refused > 0,
        "no host write met a foreign one: the no-blind-write check proved nothing"
    );
    assert!(foreign_writes > 0 && !last.is_empty());
    assert!(
        faults > 0.0,
        "the hostile plugin ran and failed in isolation"
    );
    assert!(
        drift.abs() <= 0.10,
        "host memory drifted {:+.1} %",
        drift * 100.0
    );
    host.terminate();
    let status = tokio::task::block_in_place(|| host.wait());
    assert!(status.success(), "{status}\n{}", host.log());
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &cp.pid().to_string()])
        .status();
    let _ = cp.stop().await;
}
