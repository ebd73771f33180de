//! rekon as an operator, against the real API server: the hot-reloaded plugin directory
//! (in process), and the `rekon run` binary — leader election between two processes,
//! SIGTERM during a burst, `/metrics` and `/readyz`.

use crate::controller::{count, setup};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, PostParams};
use rekon_host::controller::{self, Host};
use rekon_host::metrics::Format;
use rekon_host::operator::{self, Follow, PluginSet, Reporter, Transition};
use rekon_host::plugin::{Artifacts, Loader};
use rekon_host::sandbox::{self, Sandbox};
use rekon_host::write::events::Recorder;
use rekon_tests::controlplane::{ControlPlane, wait_until};
use rekon_tests::plugins;
use rekon_tests::process::{MetricError, RekonProcess, RunOptions};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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
    let metrics = rekon_host::metrics::Metrics::for_host(&host);
    let mut set = PluginSet::new(
        host.clone(),
        loader,
        dir.path().to_owned(),
        Some(reporter),
        metrics.clone(),
    );
    let (changes_tx, mut changes) = tokio::sync::mpsc::unbounded_channel::<Vec<Transition>>();
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
        vec![Transition::Started {
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
        vec![Transition::Replaced {
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
        matches!(&refused[..], [Transition::Refused { file, reason }] if file == "stamp" && reason.contains("does not compile")),
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
    let metrics = metrics.encode(Format::Prometheus).unwrap();
    assert!(
        metrics.contains("rekon_plugin_loads_total{result=\"refused\"} 1"),
        "{metrics}"
    );

    // A config file with an unknown key: refused by key and file; still the old version.
    std::fs::write(dir.path().join("stamp.yaml"), "resync: 1m\nreplicas: 2\n").unwrap();
    let refused = next_change().await;
    assert!(
        matches!(&refused[..], [Transition::Refused { reason, .. }] if reason.contains("stamp.yaml") && reason.contains("unknown field `replicas`")),
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
        vec![Transition::Replaced {
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
        vec![Transition::Stopped {
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

/// The states of `name`'s stamp child in the order the API server stored them.
fn record_stamps(
    api: &Api<ConfigMap>,
    name: &str,
) -> (
    Arc<std::sync::Mutex<Vec<ConfigMap>>>,
    tokio::task::JoinHandle<()>,
) {
    use futures::StreamExt;
    use kube::runtime::watcher;
    let seen = Arc::new(std::sync::Mutex::new(Vec::<ConfigMap>::new()));
    let task = tokio::spawn({
        let (api, seen) = (api.clone(), seen.clone());
        let config = watcher::Config::default().fields(&format!("metadata.name={name}-stamp"));
        async move {
            let mut events = std::pin::pin!(watcher(api, config));
            while let Some(event) = events.next().await {
                if let Ok(watcher::Event::Apply(cm) | watcher::Event::InitApply(cm)) = event {
                    let mut seen = seen.lock().unwrap();
                    if seen.last().map(|l| &l.metadata.resource_version)
                        != Some(&cm.metadata.resource_version)
                    {
                        seen.push(cm);
                    }
                }
            }
        }
    });
    (seen, task)
}

/// Waits until the stamp controller runs nothing and has nothing waiting.
async fn running_nothing(host: &Host) {
    let running = host.get("stamp").expect("stamp runs");
    wait_until("no stamp reconcile runs or waits", WAIT, || async {
        let q = running.queue();
        (q.in_flight() == 0 && q.depth() == 0).then_some(())
    })
    .await
    .unwrap();
}

/// `data.<key>` of a ConfigMap.
fn data_of<'a>(cm: &'a ConfigMap, key: &str) -> Option<&'a str> {
    cm.data.as_ref()?.get(key).map(String::as_str)
}

/// Issue 18, "in-flight reconciles finishing on a hot swap and on removal": a stamp
/// primary whose reconcile takes `DELAY`, each reconcile a distinct write (the primary's
/// `data.round`, copied to the child). While one runs, the plugin file is (1) swapped for the next version
/// in place, (2) swapped with a changed config, which restarts the controller, and (3)
/// removed. Each time the running reconcile's write must land, from the version that
/// started it, before the next version writes — on removal before the controller is
/// reported stopped, and nothing after it.
#[tokio::test]
async fn in_flight_reconciles_finish_on_the_old_version_on_a_swap_and_before_a_removal() {
    const DELAY: Duration = Duration::from_secs(4);
    let (client, ns) = setup("inflight").await;
    let dir = tempfile::tempdir().unwrap();
    let loader = crate::controller::loader().clone();
    let host = Host::new(client.clone(), crate::controller::config(ns.name()));
    let mut set = PluginSet::new(
        host.clone(),
        loader,
        dir.path().to_owned(),
        None,
        rekon_host::metrics::Metrics::for_host(&host),
    );
    let (changes_tx, mut changes) = tokio::sync::mpsc::unbounded_channel::<Vec<Transition>>();
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let driver = tokio::spawn(async move {
        loop {
            if let Ok((c, _)) = set.sync().await
                && !c.is_empty()
            {
                let _ = changes_tx.send(c);
            }
            tokio::select! {
                _ = &mut stop_rx => return,
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
    // A time budget well past the delay, written before the plugin so it never changes
    // by itself.
    let config = |round: u32| format!("limits:\n  timeBudget: 60s\nsettings:\n  round: {round}\n");
    std::fs::write(dir.path().join("stamp.yaml"), config(1)).unwrap();
    publish(dir.path(), "stamp.wasm", &plugins::bytes("stamp-plugin"));
    assert_eq!(
        next_change().await,
        vec![Transition::Started {
            plugin: "stamp".into()
        }]
    );
    let stats = host.get("stamp").unwrap().stats().clone();
    let api: Api<ConfigMap> = ns.api();
    let (stamps, watch) = record_stamps(&api, "a");
    let primary = |round: u32| -> ConfigMap {
        serde_json::from_value(json!({
            "metadata": { "name": "a", "labels": { "rekon.dev/stamp": "true" } },
            "data": { "delay-ms": DELAY.as_millis().to_string(), "round": round.to_string() },
        }))
        .unwrap()
    };
    // Starts a reconcile of `a` (round `round`) and returns once the plugin runs it, with
    // the child as it was then.
    let in_flight = async |round: u32| {
        let calls = count(&stats.reconciles);
        if round == 1 {
            api.create(&PostParams::default(), &primary(round))
                .await
                .unwrap();
        } else {
            api.replace(
                "a",
                &PostParams::default(),
                &ConfigMap {
                    metadata: kube::api::ObjectMeta {
                        resource_version: None,
                        ..primary(round).metadata
                    },
                    ..primary(round)
                },
            )
            .await
            .unwrap();
        }
        wait_until("the plugin runs a's reconcile", WAIT, || async {
            (count(&stats.reconciles) > calls).then_some(())
        })
        .await
        .unwrap();
        api.get_opt("a-stamp").await.unwrap()
    };

    // (1) Swapped in place: the running reconcile writes v1, the next one v2.
    let before = in_flight(1).await;
    assert!(
        before.is_none(),
        "the first reconcile was still running: {before:?}"
    );
    publish(
        dir.path(),
        "stamp.wasm",
        &plugins::bytes("stamp-next-plugin"),
    );
    assert_eq!(
        next_change().await,
        vec![Transition::Replaced {
            plugin: "stamp".into(),
            restarted: false
        }]
    );
    wait_stamp(&api, "a", V2).await;
    let versions: Vec<_> = stamps
        .lock()
        .unwrap()
        .iter()
        .map(|c| data_of(c, "version").map(str::to_owned))
        .collect();
    assert_eq!(
        versions.first().cloned().flatten().as_deref(),
        Some(V1),
        "the reconcile running at the swap finished on the old version: {versions:?}"
    );

    // (2) A changed config restarts the controller: the running reconcile's write (old
    // settings) lands before the restarted controller's (new settings).
    running_nothing(&host).await;
    let before = in_flight(2).await.expect("the child exists");
    std::fs::write(dir.path().join("stamp.yaml"), config(2)).unwrap();
    publish(
        dir.path(),
        "stamp.wasm",
        &plugins::bytes("stamp-next-plugin"),
    );
    assert_eq!(
        next_change().await,
        vec![Transition::Replaced {
            plugin: "stamp".into(),
            restarted: true
        }]
    );
    let at_restart = api.get("a-stamp").await.unwrap();
    assert_ne!(
        at_restart.metadata.resource_version, before.metadata.resource_version,
        "the reconcile running at the restart wrote before the old controller stopped"
    );
    assert_eq!(data_of(&at_restart, "round"), Some("2"), "{at_restart:?}");
    assert_eq!(
        data_of(&at_restart, "settings"),
        Some(r#"{"round":1}"#),
        "{at_restart:?}"
    );
    wait_until("the restarted controller stamps", WAIT, || async {
        let cm = api.get_opt("a-stamp").await.ok()??;
        (data_of(&cm, "settings") == Some(r#"{"round":2}"#)).then_some(())
    })
    .await
    .unwrap();

    // (3) Removed: the running reconcile's write lands before the controller is reported
    // stopped; nothing after it.
    running_nothing(&host).await;
    let before = in_flight(3).await.expect("the child exists");
    std::fs::remove_file(dir.path().join("stamp.wasm")).unwrap();
    assert_eq!(
        next_change().await,
        vec![Transition::Stopped {
            plugin: "stamp".into()
        }]
    );
    let at_stop = api.get("a-stamp").await.unwrap();
    assert_ne!(
        at_stop.metadata.resource_version, before.metadata.resource_version,
        "the reconcile running at the removal wrote before the controller stopped"
    );
    assert_eq!(data_of(&at_stop, "round"), Some("3"), "{at_stop:?}");
    let calls = count(&stats.reconciles);
    api.create(&PostParams::default(), &stamped("c"))
        .await
        .unwrap();
    let absent = wait_until("no child for c", Duration::from_secs(2), || async {
        api.get_opt("c-stamp").await.ok()?.map(|_| ())
    })
    .await;
    assert!(absent.is_err(), "a stopped plugin reconciled");
    assert_eq!(count(&stats.reconciles), calls, "no call after the stop");
    let last = stamps.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        last.metadata.resource_version, at_stop.metadata.resource_version,
        "nothing written after the stop"
    );

    watch.abort();
    let _ = stop_tx.send(());
    driver.await.unwrap();
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
    let mut set = PluginSet::new(
        host.clone(),
        loader,
        dir.path().to_owned(),
        None,
        rekon_host::metrics::Metrics::for_host(&host),
    );
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

/// The lease timings `rekon run` gets in these tests.
// A leader that cannot renew within the renew deadline stops writing and exits (fencing),
// so the deadline must outlast the API server's slowest answers while the whole suite
// loads two cores (a renew of 0.8 s was seen with a 2 s deadline).
const LEASE_DURATION: Duration = Duration::from_secs(6);
const RENEW_DEADLINE: Duration = Duration::from_secs(4);
const RETRY: Duration = Duration::from_millis(500);
/// Time for the few API round trips of a takeover on a loaded machine.
const TAKEOVER_SLACK: Duration = Duration::from_secs(2);

/// `rekon run` scoped to the test namespace, with short lease timings (used when
/// `extra` has `--leader-elect`).
fn start_rekon(kc: &Path, dir: &Path, ns: &str, identity: &str, extra: &[&str]) -> RekonProcess {
    RekonProcess::start(
        RunOptions::new(kc, dir, identity).args(
            [
                format!("--namespace={ns}"),
                format!("--lease-namespace={ns}"),
                format!("--lease-duration={}ms", LEASE_DURATION.as_millis()),
                format!("--renew-deadline={}ms", RENEW_DEADLINE.as_millis()),
                format!("--retry-period={}ms", RETRY.as_millis()),
            ]
            .into_iter()
            .chain(extra.iter().map(|s| (*s).to_owned())),
        ),
    )
}

const STAMP_SUCCESSES: &str = "reconcile_total{plugin=\"stamp\",result=\"success\"}";

/// The stamp plugin's successful reconciles so far: 0 only when `/metrics` answered
/// without the series (no reconcile yet); unreachable is a failure.
fn successes_so_far(r: &RekonProcess) -> f64 {
    match reconciles(r) {
        Ok(n) => n,
        Err(MetricError::Absent { .. }) => 0.0,
        Err(e) => panic!("{e}\n{}", r.log()),
    }
}

/// The stamp plugin's successful reconciles: the sample must be on `/metrics`.
fn reconciles(r: &RekonProcess) -> Result<f64, MetricError> {
    r.metric(STAMP_SUCCESSES)
}

pub(crate) async fn kubeconfig() -> std::path::PathBuf {
    let cp = ControlPlane::shared().await.expect("control plane");
    cp.kubeconfig_path().to_owned()
}

/// The lease `rekon` in `ns`, or `None` when there is none; an API error is an error.
pub(crate) async fn lease(client: &kube::Client, ns: &str) -> Result<Option<Lease>, kube::Error> {
    Api::<Lease>::namespaced(client.clone(), ns)
        .get_opt("rekon")
        .await
}

/// Who holds the lease: `None` when there is no lease or it names no holder (released);
/// an API error is an error, never "nobody".
pub(crate) async fn lease_holder(
    client: &kube::Client,
    ns: &str,
) -> Result<Option<String>, kube::Error> {
    Ok(lease(client, ns)
        .await?
        .and_then(|l| l.spec?.holder_identity)
        .filter(|h| !h.is_empty()))
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

    let mut a = start_rekon(&kc, dir.path(), ns.name(), "rekon-a", &["--leader-elect"]);
    wait_until("rekon-a leads", WAIT, || async {
        (lease_holder(&client, ns.name()).await.ok()?.as_deref() == Some("rekon-a")).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", a.log()));
    let b = start_rekon(&kc, dir.path(), ns.name(), "rekon-b", &["--leader-elect"]);
    wait_until("both answer /readyz 200", WAIT, || async {
        (a.get("/readyz")?.0 == 200 && b.get("/readyz")?.0 == 200).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\nA:\n{}\nB:\n{}", a.log(), b.log()));

    let before = successes_so_far(&a);
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
    let after = reconciles(&a).expect("the leader counts its reconciles");
    println!("leader's reconcile_total{{result=\"success\"}}: {before} before, {after} after");
    assert!(
        after >= before + 10.0,
        "the counter moved: {before} → {after}"
    );
    // The standby answers /metrics but runs no controller: no stamp series at all (the
    // same sample is asserted present on it after the takeover, so the name is right).
    match reconciles(&b) {
        Err(MetricError::Absent { .. }) => {}
        Ok(n) => assert_eq!(n, 0.0, "the standby reconciled"),
        Err(e) => panic!("the standby's /metrics: {e}\n{}", b.log()),
    }
    assert_eq!(
        lease_holder(&client, ns.name()).await.unwrap().as_deref(),
        Some("rekon-a")
    );

    // kill -9 the leader; work created meanwhile is converged by the standby.
    a.kill();
    let last = lease(&client, ns.name())
        .await
        .unwrap()
        .and_then(|l| l.spec)
        .expect("the lease outlives its holder");
    assert_eq!(
        last.holder_identity.as_deref(),
        Some("rekon-a"),
        "nobody took over while the leader was alive"
    );
    let last_renewal = last.renew_time.expect("the leader renewed").0;
    for i in 10..20 {
        api.create(&PostParams::default(), &stamped(&format!("p{i}")))
            .await
            .unwrap();
    }
    let taken = wait_until("rekon-b takes the lease", WAIT, || async {
        let spec = lease(&client, ns.name()).await.ok()??.spec?;
        (spec.holder_identity.as_deref() == Some("rekon-b")).then_some(spec)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\nB:\n{}", b.log()));
    wait_until("the new leader converges 20 primaries", WAIT, || async {
        children_converged(&api, 20, version).await.then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\nB:\n{}", b.log()));
    let b_reconciles = reconciles(&b).expect("the new leader counts its reconciles");
    assert!(
        b_reconciles >= 20.0,
        "the new leader reconciled every primary once: {b_reconciles}"
    );
    // Both timestamps were written by the processes on this machine's clock, so the
    // takeover is measured without the test's own delays (creates, polling). The standby
    // may take over only once the lease it saw last renewed has run its full duration; it
    // then does so at its next retry after noticing, each step one API round trip.
    let acquired = taken
        .acquire_time
        .expect("the new holder stamps its acquisition")
        .0;
    let takeover = Duration::try_from(acquired.duration_since(last_renewal))
        .expect("acquired after the last renewal");
    println!(
        "takeover after kill -9: {takeover:?} after the last renewal \
         (lease duration {LEASE_DURATION:?}, retry {RETRY:?})"
    );
    assert!(
        takeover >= LEASE_DURATION,
        "the standby took over before the lease expired: {takeover:?}"
    );
    let bound = LEASE_DURATION + 2 * RETRY + TAKEOVER_SLACK;
    assert!(
        takeover <= bound,
        "took over within the lease duration, a retry to notice the last renewal, a retry \
         to act, and {TAKEOVER_SLACK:?} for the API round trips: {takeover:?} > {bound:?}"
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

    // Two at a time, 500 ms each: 50 primaries are 12.5 s of work, far longer than the
    // grace period plus the lease release, so SIGTERM after the first reconcile lands
    // mid-burst however slow the machine, and a host that drained its queue instead of
    // stopping would miss the bound below by seconds.
    const PRIMARIES: usize = 50;
    const DELAY_MS: u64 = 500;
    const CONCURRENCY: u64 = 2;
    const GRACE: Duration = Duration::from_secs(3);
    let a = start_rekon(
        &kc,
        dir.path(),
        ns.name(),
        "rekon-a",
        &[
            "--leader-elect",
            &format!("--grace={}ms", GRACE.as_millis()),
            &format!("--concurrency={CONCURRENCY}"),
        ],
    );
    wait_until("rekon-a is ready", WAIT, || async {
        (a.get("/readyz")?.0 == 200 && lease_holder(&client, ns.name()).await.ok()?.is_some())
            .then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", a.log()));
    for i in 0..PRIMARIES {
        api.create(
            &PostParams::default(),
            &slow_stamped(&format!("p{i}"), DELAY_MS),
        )
        .await
        .unwrap();
    }
    wait_until("the burst has started", WAIT, || async {
        (reconciles(&a).ok()? >= 1.0).then_some(())
    })
    .await
    .unwrap();
    let term = Instant::now();
    a.terminate();
    let mut a = a;
    let status = tokio::task::block_in_place(|| a.wait());
    let took = term.elapsed();
    // In-flight reconciles get the grace period; then one lease round trip, bounded by the
    // renew deadline like every lease call of the elector.
    let bound = GRACE + RENEW_DEADLINE;
    println!("SIGTERM during a burst: exited {status} after {took:?} (bound {bound:?})");
    assert!(status.success(), "clean exit\n{}", a.log());
    assert!(took < bound, "{took:?} ≥ {bound:?}\n{}", a.log());
    assert_eq!(
        lease_holder(&client, ns.name()).await.unwrap(),
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
    println!("children when the first leader exited: {done} of {PRIMARIES}");
    assert!(
        done < PRIMARIES,
        "SIGTERM came after the burst, not during it: nothing left to repair"
    );

    let b = start_rekon(&kc, dir.path(), ns.name(), "rekon-b", &["--leader-elect"]);
    wait_until("the next leader converges all of them", WAIT, || async {
        children_converged(&api, PRIMARIES, version)
            .await
            .then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", b.log()));
    // The new leader's counts, by value: its store holds the primaries and their children
    // (nothing else is in the namespace), and every primary it found was queued.
    let listed = api.list(&ListParams::default()).await.unwrap().items.len();
    assert_eq!(listed, 2 * PRIMARIES);
    let metrics = wait_until("rekon-b's store holds every ConfigMap", WAIT, || async {
        let metrics = b.get("/metrics")?.1;
        let cached = rekon_tests::process::sample_value(
            &metrics,
            r#"rekon_cache_objects{kind="v1 ConfigMap"}"#,
        )
        .ok()??;
        (cached == listed as f64).then_some(metrics)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", b.log()));
    let adds =
        rekon_tests::process::sample_value(&metrics, r#"workqueue_adds_total{name="stamp"}"#)
            .unwrap()
            .unwrap_or_else(|| panic!("workqueue_adds_total for stamp\n{metrics}"));
    assert!(
        adds >= PRIMARIES as f64,
        "{adds} adds for {PRIMARIES} primaries"
    );
}

/// Issue 18, "in-flight reconciles finishing on SIGTERM": a primary whose reconcile takes
/// `DELAY`, shorter than `--grace`; SIGTERM lands while it runs (the child does not exist
/// yet). The process must exit cleanly within the grace period and the lease release, with
/// the child written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_running_reconcile_finish_its_writes() {
    const DELAY: Duration = Duration::from_secs(4);
    const GRACE: Duration = Duration::from_secs(20);
    let (client, ns) = setup("sigterm-inflight").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(plugins::path("stamp-plugin"), dir.path().join("stamp.wasm")).unwrap();
    std::fs::write(
        dir.path().join("stamp.yaml"),
        "limits:\n  timeBudget: 60s\n",
    )
    .unwrap();
    let api: Api<ConfigMap> = ns.api();
    let kc = kubeconfig().await;
    let a = start_rekon(
        &kc,
        dir.path(),
        ns.name(),
        "rekon-a",
        &[
            "--leader-elect",
            &format!("--grace={}ms", GRACE.as_millis()),
        ],
    );
    wait_until("rekon-a is ready", WAIT, || async {
        (a.get("/readyz")?.0 == 200 && lease_holder(&client, ns.name()).await.ok()?.is_some())
            .then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", a.log()));
    api.create(
        &PostParams::default(),
        &slow_stamped("p", DELAY.as_millis() as u64),
    )
    .await
    .unwrap();
    wait_until("the reconcile runs", WAIT, || async {
        (a.metric(r#"active_workers{plugin="stamp"}"#).ok()? >= 1.0).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", a.log()));
    assert!(
        api.get_opt("p-stamp").await.unwrap().is_none(),
        "SIGTERM must land while the reconcile runs"
    );
    let term = Instant::now();
    a.terminate();
    let mut a = a;
    let status = tokio::task::block_in_place(|| a.wait());
    let took = term.elapsed();
    let bound = GRACE + RENEW_DEADLINE;
    println!("SIGTERM during a {DELAY:?} reconcile: exited {status} after {took:?}");
    assert!(status.success(), "clean exit\n{}", a.log());
    assert!(took < bound, "{took:?} ≥ {bound:?}\n{}", a.log());
    let child = api.get_opt("p-stamp").await.unwrap();
    assert!(
        child.is_some(),
        "the reconcile running at SIGTERM wrote its child\n{}",
        a.log()
    );
    assert_eq!(
        lease_holder(&client, ns.name()).await.unwrap(),
        None,
        "the lease was released"
    );
}

#[tokio::test]
async fn readyz_turns_ready_once_the_plugins_run_and_their_stores_synced() {
    let (_client, ns) = setup("ready").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(plugins::path("stamp-plugin"), dir.path().join("stamp.wasm")).unwrap();
    let kc = kubeconfig().await;
    let r = start_rekon(
        &kc,
        dir.path(),
        ns.name(),
        "rekon-ready",
        &["--log-format=json"],
    );
    // The plugin file's modification time changes more often than the directory's settle
    // interval (300 ms), so it cannot settle: the host must answer 503 meanwhile,
    // however long it took to start.
    let touching = Arc::new(AtomicBool::new(true));
    let toucher = std::thread::spawn({
        let touching = touching.clone();
        let file = dir.path().join("stamp.wasm");
        move || {
            let start = std::time::SystemTime::now();
            let mut n = 0u64;
            while touching.load(Ordering::Relaxed) {
                n += 1;
                std::fs::File::options()
                    .write(true)
                    .open(&file)
                    .and_then(|f| f.set_modified(start + Duration::from_secs(n)))
                    .expect("the plugin file's mtime can be set");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    });
    let first = wait_until("/readyz answers", WAIT, || async { r.get("/readyz") })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", r.log()));
    assert_eq!(first.0, 503, "not ready before the plugins load: {first:?}");
    assert_eq!(
        r.get("/healthz").map(|(s, _)| s),
        Some(200),
        "alive meanwhile"
    );
    touching.store(false, Ordering::Relaxed);
    toucher.join().unwrap();
    // From now on the file settles. Each answer is checked against the log read after it:
    // a 200 must come after the plugin started and readiness was logged.
    wait_until("/readyz turns 200", WAIT, || async {
        let (status, _) = r.get("/readyz")?;
        let log = r.log();
        match status {
            503 => None,
            200 => {
                let started = log.find("PluginStarted");
                let ready = log.find("ready: plugins loaded");
                assert!(
                    started.is_some() && ready.is_some() && started < ready,
                    "ready only after the plugin started\n{log}"
                );
                Some(())
            }
            other => panic!("/readyz answered {other}\n{log}"),
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", r.log()));
    let log = r.log();
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let entry: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("--log-format json: not JSON ({e}): {line}"));
        assert!(entry["fields"]["message"].is_string(), "{line}");
    }
    let metrics = r.get("/metrics").unwrap().1;
    assert!(
        metrics.contains("rekon_cache_synced{kind=\"v1 ConfigMap\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn rekon_run_records_a_refused_plugin_file_as_an_event_and_a_metric() {
    let (_client, ns) = setup("refused").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(plugins::path("stamp-plugin"), dir.path().join("stamp.wasm")).unwrap();
    std::fs::write(
        dir.path().join("broken.wasm"),
        b"\0asm\x0d\0\x01\0 truncated while copying",
    )
    .unwrap();
    let kc = kubeconfig().await;
    let r = start_rekon(&kc, dir.path(), ns.name(), "rekon-refuses", &[]);
    let events: Api<Event> = ns.api();
    let event = wait_until("a PluginRefused event", WAIT, || async {
        events
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("PluginRefused"))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", r.log()));
    let note = event.note.clone().unwrap_or_default();
    assert!(note.contains("broken.wasm"), "{event:?}");
    assert_eq!(event.type_.as_deref(), Some("Warning"), "{event:?}");
    assert_eq!(
        event.regarding.as_ref().and_then(|o| o.name.as_deref()),
        Some("rekon"),
        "about the host's lease: {event:?}"
    );
    // The good plugin beside it runs, and the refusal is counted.
    wait_until("/readyz turns 200", WAIT, || async {
        (r.get("/readyz")?.0 == 200).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", r.log()));
    assert_eq!(
        r.metric("rekon_plugin_loads_total{result=\"refused\"}")
            .unwrap_or_else(|e| panic!("{e}\n{}", r.log())),
        1.0
    );
    let api: Api<ConfigMap> = ns.api();
    api.create(&PostParams::default(), &stamped("a"))
        .await
        .unwrap();
    wait_stamp(&api, "a", V1).await;
}
