//! rekon as an operator, against the real API server: the hot-reloaded plugin directory
//! (in process), and the `rekon run` binary — leader election between two processes,
//! SIGTERM during a burst, `/metrics` and `/readyz`.

use crate::controller::setup;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, PostParams};
use rekon_host::apply::events::Recorder;
use rekon_host::controller::{self, Host};
use rekon_host::metrics::Format;
use rekon_host::operator::{self, Change, Follow, PluginSet, Reporter};
use rekon_host::plugin::{Artifacts, Loader};
use rekon_host::sandbox::{self, Sandbox};
use rekon_tests::controlplane::{ControlPlane, wait_until};
use rekon_tests::{binary, plugins};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

/// Publishes `bytes` as `dir/name` the safe way: write a hidden file, rename it in place.
fn publish(dir: &Path, name: &str, bytes: &[u8]) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

fn stamped(name: &str) -> ConfigMap {
    slow_stamped(name, 0)
}

/// A primary whose reconcile takes `delay_ms`.
fn slow_stamped(name: &str, delay_ms: u64) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": { "name": name, "labels": { "rekon.dev/stamp": "true" } },
        "data": { "delay-ms": delay_ms.to_string() },
    }))
    .unwrap()
}

/// The `data.version` of `name`'s stamp child, once it exists.
async fn stamp_version(api: &Api<ConfigMap>, name: &str) -> Option<String> {
    let cm = api.get_opt(&format!("{name}-stamp")).await.ok()??;
    cm.data?.get("version").cloned()
}

async fn wait_stamp(api: &Api<ConfigMap>, name: &str, version: &str) {
    wait_until(
        &format!("{name}-stamp at version {version}"),
        WAIT,
        || async { (stamp_version(api, name).await.as_deref() == Some(version)).then_some(()) },
    )
    .await
    .unwrap();
}

/// The stamp plugins' versions: the workspace's, and stamp-next's own.
const V1: &str = env!("CARGO_PKG_VERSION");
const V2: &str = "0.2.0";

#[tokio::test]
async fn the_plugin_directory_is_followed_swap_refuse_and_stop() {
    let (client, ns) = setup("hot").await;
    let dir = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::new(sandbox::Config::default()).unwrap();
    let loader = Loader::new(
        sandbox,
        Artifacts::in_dir(plugins::target_dir().join("rekon-test-artifacts")),
        sandbox::Limits::default(),
    );
    let host = Host::new(
        client.clone(),
        controller::Config {
            namespace: Some(ns.name().to_owned()),
            instance: format!("test-{}", ns.name()),
            ..Default::default()
        },
    );
    let regarding = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": { "name": "rekon-host", "namespace": ns.name() },
    });
    let reporter = Reporter {
        recorder: Recorder::new(client.clone(), "test"),
        regarding,
    };
    let mut set = PluginSet::new(host.clone(), loader, dir.path().to_owned(), Some(reporter));
    let (changes_tx, mut changes) = tokio::sync::mpsc::unbounded_channel::<Vec<Change>>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    // Drive passes by hand in a task: `follow` would too, but the test wants the changes.
    let driver = tokio::spawn(async move {
        let mut stop = stop_rx;
        loop {
            if let Ok((c, _)) = set.sync().await
                && !c.is_empty()
            {
                let _ = changes_tx.send(c);
            }
            tokio::select! {
                _ = &mut stop => return set,
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    });
    let mut next_change = async || {
        tokio::time::timeout(WAIT, changes.recv())
            .await
            .expect("a change within the wait")
            .expect("the driver runs")
    };
    let api: Api<ConfigMap> = ns.api();
    let (v1, v2) = (V1, V2);
    assert_ne!(v1, v2);

    // A new file: its controller starts, no restart.
    publish(dir.path(), "stamp.wasm", &plugins::bytes("stamp-plugin"));
    assert_eq!(
        next_change().await,
        vec![Change::Started {
            plugin: "stamp".into()
        }]
    );
    api.create(&PostParams::default(), &stamped("a"))
        .await
        .unwrap();
    wait_stamp(&api, "a", v1).await;

    // A new version with different output: swapped in place, every primary redone by it.
    publish(
        dir.path(),
        "stamp.wasm",
        &plugins::bytes("stamp-next-plugin"),
    );
    assert_eq!(
        next_change().await,
        vec![Change::Replaced {
            plugin: "stamp".into(),
            restarted: false
        }]
    );
    wait_stamp(&api, "a", v2).await;

    // A broken file: refused, visible, and the running version keeps reconciling.
    publish(
        dir.path(),
        "stamp.wasm",
        b"\0asm\x0d\0\x01\0 truncated while copying",
    );
    let refused = next_change().await;
    assert!(
        matches!(&refused[..], [Change::Refused { file, reason }] if file == "stamp" && reason.contains("does not compile")),
        "{refused:?}"
    );
    api.create(&PostParams::default(), &stamped("b"))
        .await
        .unwrap();
    wait_stamp(&api, "b", v2).await;
    let events: Api<Event> = ns.api();
    wait_until("a PluginRefused event", WAIT, || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("PluginRefused"))
            .filter(|e| {
                e.note
                    .as_deref()
                    .is_some_and(|n| n.contains("stamp.wasm") && n.contains("kept"))
            })
    })
    .await
    .unwrap();
    let metrics = host.metrics().encode(Format::Prometheus).unwrap();
    assert!(
        metrics.contains("rekon_plugin_loads_total{result=\"refused\"} 1"),
        "{metrics}"
    );

    // A config file with an unknown key: refused by key and file; still the old version.
    std::fs::write(dir.path().join("stamp.yaml"), "resync: 1m\nreplicas: 2\n").unwrap();
    let refused = next_change().await;
    assert!(
        matches!(&refused[..], [Change::Refused { reason, .. }] if reason.contains("stamp.yaml") && reason.contains("unknown field `replicas`")),
        "{refused:?}"
    );
    // Fixed config plus the good file: the controller restarts with the settings.
    std::fs::write(dir.path().join("stamp.yaml"), "settings:\n  team: blue\n").unwrap();
    publish(
        dir.path(),
        "stamp.wasm",
        &plugins::bytes("stamp-next-plugin"),
    );
    let replaced = next_change().await;
    assert_eq!(
        replaced,
        vec![Change::Replaced {
            plugin: "stamp".into(),
            restarted: true
        }]
    );
    wait_until("the settings reach the plugin", WAIT, || async {
        let cm = api.get_opt("a-stamp").await.ok()??;
        (cm.data?.get("settings")? == r#"{"team":"blue"}"#).then_some(())
    })
    .await
    .unwrap();

    // Removed: the controller stops; new primaries get no child.
    std::fs::remove_file(dir.path().join("stamp.wasm")).unwrap();
    assert_eq!(
        next_change().await,
        vec![Change::Stopped {
            plugin: "stamp".into()
        }]
    );
    assert!(host.get("stamp").is_none());
    api.create(&PostParams::default(), &stamped("c"))
        .await
        .unwrap();
    let absent = wait_until("no child for c", Duration::from_secs(2), || async {
        api.get_opt("c-stamp").await.ok()?.map(|_| ())
    })
    .await;
    assert!(absent.is_err(), "a stopped plugin reconciled");

    let _ = stop_tx.send(());
    let _set = driver.await.unwrap();
    host.shutdown(Duration::from_secs(5)).await;
}

/// `follow` marks a directory settled only after every file was acted on.
#[tokio::test]
async fn follow_reports_settled_after_the_first_plugins_start() {
    let (client, ns) = setup("follow").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(plugins::path("stamp-plugin"), dir.path().join("stamp.wasm")).unwrap();
    let loader = Loader::new(
        Sandbox::new(sandbox::Config::default()).unwrap(),
        Artifacts::in_dir(plugins::target_dir().join("rekon-test-artifacts")),
        sandbox::Limits::default(),
    );
    let host = Host::new(
        client,
        controller::Config {
            namespace: Some(ns.name().to_owned()),
            ..Default::default()
        },
    );
    let mut set = PluginSet::new(host.clone(), loader, dir.path().to_owned(), None);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let mut tx = Some(tx);
    let timing = Follow {
        settle: Duration::from_millis(50),
        rescan: Duration::from_millis(200),
    };
    let watched = host.clone();
    let run = operator::follow(
        &mut set,
        &timing,
        async {
            let _ = rx.await;
        },
        move |settled| {
            if settled
                && watched.all_synced()
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(());
            }
        },
    );
    tokio::time::timeout(WAIT, run).await.expect("settles");
    assert_eq!(host.plugins(), ["stamp"]);
    host.shutdown(Duration::from_secs(5)).await;
}

// ---------------------------------------------------------------------------------------
// The `rekon run` binary.

/// A `rekon run` process; killed when dropped.
struct Rekon {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
}

impl Drop for Rekon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Rekon {
    fn start(kubeconfig: &Path, dir: &Path, ns: &str, identity: &str, extra: &[&str]) -> Self {
        let port = free_port();
        let log = std::env::temp_dir().join(format!("rekon-{identity}-{port}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(binary::rekon())
            .arg("run")
            .arg(format!("--plugins={}", dir.display()))
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg(format!(
                "--artifact-dir={}",
                plugins::target_dir().join("rekon-test-artifacts").display()
            ))
            .arg(format!("--namespace={ns}"))
            .arg(format!("--http-addr=127.0.0.1:{port}"))
            .arg(format!("--lease-namespace={ns}"))
            .args([
                "--lease-duration=3s",
                "--renew-deadline=2s",
                "--retry-period=500ms",
            ])
            .arg(format!("--identity={identity}"))
            .args(extra)
            .env("REKON_LOG", "info,rekon_host=debug")
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .expect("rekon runs");
        Self { child, port, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.port, path)
    }

    /// The value of one sample on /metrics (0 when absent).
    fn metric(&self, sample: &str) -> f64 {
        self.get("/metrics")
            .and_then(|(_, body)| {
                body.lines()
                    .find(|l| l.starts_with(sample) && l[sample.len()..].starts_with(' '))
                    .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            })
            .unwrap_or(0.0)
    }

    fn reconciles(&self) -> f64 {
        self.metric("reconcile_total{plugin=\"stamp\",result=\"success\"}")
    }
}

async fn kubeconfig() -> std::path::PathBuf {
    let cp = ControlPlane::shared().await.expect("control plane");
    cp.kubeconfig_path().to_owned()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A minimal HTTP/1.1 GET; `None` when nothing listens yet.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

async fn lease_holder(client: &kube::Client, ns: &str) -> Option<String> {
    let lease = Api::<Lease>::namespaced(client.clone(), ns)
        .get_opt("rekon")
        .await
        .ok()??;
    lease.spec?.holder_identity.filter(|h| !h.is_empty())
}

/// Every labelled primary has exactly one stamp child, and nothing else has one.
async fn children_converged(api: &Api<ConfigMap>, primaries: usize, version: &str) -> bool {
    let Ok(list) = api.list(&ListParams::default()).await else {
        return false;
    };
    let mut per_owner: BTreeMap<String, usize> = BTreeMap::new();
    for cm in &list.items {
        let name = cm.metadata.name.clone().unwrap_or_default();
        if let Some(owner) = name.strip_suffix("-stamp") {
            if cm
                .data
                .as_ref()
                .and_then(|d| d.get("version"))
                .map(String::as_str)
                != Some(version)
            {
                return false;
            }
            *per_owner.entry(owner.to_owned()).or_default() += 1;
        }
    }
    per_owner.len() == primaries && per_owner.values().all(|n| *n == 1)
}

#[tokio::test]
async fn two_processes_one_leader_and_the_standby_takes_over_after_a_kill() {
    let (client, ns) = setup("leader").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(plugins::path("stamp-plugin"), dir.path().join("stamp.wasm")).unwrap();
    let version = V1;
    let api: Api<ConfigMap> = ns.api();
    let kc = kubeconfig().await;

    let mut a = Rekon::start(&kc, dir.path(), ns.name(), "rekon-a", &["--leader-elect"]);
    wait_until("rekon-a leads", WAIT, || async {
        (lease_holder(&client, ns.name()).await.as_deref() == Some("rekon-a")).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", a.log()));
    let b = Rekon::start(&kc, dir.path(), ns.name(), "rekon-b", &["--leader-elect"]);
    wait_until("both answer /readyz 200", WAIT, || async {
        (a.get("/readyz")?.0 == 200 && b.get("/readyz")?.0 == 200).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\nA:\n{}\nB:\n{}", a.log(), b.log()));

    let before = a.reconciles();
    for i in 0..10 {
        api.create(&PostParams::default(), &stamped(&format!("p{i}")))
            .await
            .unwrap();
    }
    wait_until("the leader converges 10 primaries", WAIT, || async {
        children_converged(&api, 10, version).await.then_some(())
    })
    .await
    .unwrap();
    let after = a.reconciles();
    println!("leader's reconcile_total{{result=\"success\"}}: {before} before, {after} after");
    assert!(
        after >= before + 10.0,
        "the counter moved: {before} → {after}"
    );
    assert_eq!(b.reconciles(), 0.0, "the standby reconciled nothing");
    assert_eq!(
        lease_holder(&client, ns.name()).await.as_deref(),
        Some("rekon-a")
    );

    // kill -9 the leader; work created meanwhile is converged by the standby.
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let killed = Instant::now();
    for i in 10..20 {
        api.create(&PostParams::default(), &stamped(&format!("p{i}")))
            .await
            .unwrap();
    }
    wait_until("rekon-b takes the lease", WAIT, || async {
        (lease_holder(&client, ns.name()).await.as_deref() == Some("rekon-b")).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\nB:\n{}", b.log()));
    let takeover = killed.elapsed();
    wait_until("the new leader converges 20 primaries", WAIT, || async {
        children_converged(&api, 20, version).await.then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\nB:\n{}", b.log()));
    println!("takeover after kill -9: {takeover:?} (lease duration 3s, retry 500ms)");
    assert!(
        takeover < Duration::from_secs(3) + Duration::from_secs(3),
        "took over within the lease duration plus a retry margin: {takeover:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_burst_exits_in_the_grace_period_and_the_next_leader_repairs() {
    let (client, ns) = setup("sigterm").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(plugins::path("stamp-plugin"), dir.path().join("stamp.wasm")).unwrap();
    let version = V1;
    let api: Api<ConfigMap> = ns.api();
    let kc = kubeconfig().await;

    let a = Rekon::start(
        &kc,
        dir.path(),
        ns.name(),
        "rekon-a",
        &["--leader-elect", "--grace=3s"],
    );
    wait_until("rekon-a is ready", WAIT, || async {
        (a.get("/readyz")?.0 == 200 && lease_holder(&client, ns.name()).await.is_some())
            .then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", a.log()));
    // 50 reconciles of 100 ms each, 4 at a time: about 1.3 s of work, cut short.
    for i in 0..50 {
        api.create(&PostParams::default(), &slow_stamped(&format!("p{i}"), 100))
            .await
            .unwrap();
    }
    wait_until("the burst has started", WAIT, || async {
        (a.reconciles() >= 1.0).then_some(())
    })
    .await
    .unwrap();
    let pid = a.child.id();
    let term = Instant::now();
    Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .unwrap();
    let mut a = a;
    let status = tokio::task::block_in_place(|| a.child.wait()).unwrap();
    let took = term.elapsed();
    println!("SIGTERM during a burst: exited {status} after {took:?} (grace 3s)");
    assert!(status.success(), "clean exit\n{}", a.log());
    assert!(
        took < Duration::from_secs(3) + Duration::from_secs(2),
        "{took:?}"
    );
    assert_eq!(
        lease_holder(&client, ns.name()).await,
        None,
        "the lease was released"
    );
    let done = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|c| {
            c.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.ends_with("-stamp"))
        })
        .count();
    println!("children when the first leader exited: {done} of 50");

    let b = Rekon::start(&kc, dir.path(), ns.name(), "rekon-b", &["--leader-elect"]);
    wait_until("the next leader converges all 50", WAIT, || async {
        children_converged(&api, 50, version).await.then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", b.log()));
    let metrics = b
        .get("/metrics")
        .unwrap_or_else(|| panic!("rekon-b serves /metrics\n{}", b.log()))
        .1;
    assert!(metrics.contains("workqueue_adds_total"), "{metrics}");
    assert!(metrics.contains("rekon_cache_objects"), "{metrics}");
}

#[tokio::test]
async fn readyz_turns_ready_once_the_plugins_run_and_their_stores_synced() {
    let (_client, ns) = setup("ready").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(plugins::path("stamp-plugin"), dir.path().join("stamp.wasm")).unwrap();
    let kc = kubeconfig().await;
    let r = Rekon::start(&kc, dir.path(), ns.name(), "rekon-ready", &[]);
    // The first answer comes before the plugin directory has settled (≥ 300 ms).
    let first = wait_until("/readyz answers", WAIT, || async { r.get("/readyz") })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", r.log()));
    assert_eq!(first.0, 503, "not ready before the plugins load: {first:?}");
    assert_eq!(
        r.get("/healthz").map(|(s, _)| s),
        Some(200),
        "alive meanwhile"
    );
    wait_until("/readyz turns 200", WAIT, || async {
        (r.get("/readyz")?.0 == 200).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", r.log()));
    let log = r.log();
    let started = log.find("plugin started").expect("the plugin started");
    let ready = log.find("ready: plugins loaded").expect("readiness logged");
    assert!(
        started < ready,
        "ready only after the plugin started\n{log}"
    );
    let metrics = r.get("/metrics").unwrap().1;
    assert!(
        metrics.contains("rekon_cache_synced{kind=\"v1 ConfigMap\"} 1"),
        "{metrics}"
    );
}
