//! Fenced writes on the real API server: a leader cut off from the API server (through
//! the fault proxy) stops writing before a standby can take over, and exits.

use crate::controller::setup;
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use kube::runtime::watcher;
use rekon_tests::controlplane::{ControlPlane, wait_until};
use rekon_tests::plugins;
use rekon_tests::process::{RekonProcess, RunOptions};
use rekon_tests::proxy::FaultProxy;
use serde_json::json;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);
const LEASE: Duration = Duration::from_secs(8);
const RENEW_DEADLINE: Duration = Duration::from_secs(4);

/// A plugin directory with the stamp plugin, whose settings name `who`.
fn plugin_dir(who: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("stamp.yaml"),
        format!("settings:\n  who: {who}\n"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("stamp.wasm"),
        plugins::bytes("stamp-plugin"),
    )
    .unwrap();
    dir
}

fn start(kubeconfig: &Path, dir: &Path, ns: &str, identity: &str) -> RekonProcess {
    RekonProcess::start(RunOptions::new(kubeconfig, dir, identity).args([
        format!("--namespace={ns}"),
        format!("--lease-namespace={ns}"),
        format!("--lease-duration={}s", LEASE.as_secs()),
        format!("--renew-deadline={}s", RENEW_DEADLINE.as_secs()),
        "--retry-period=500ms".to_owned(),
        "--request-timeout=3s".to_owned(),
        "--leader-elect".to_owned(),
    ]))
}

async fn lease(client: &kube::Client, ns: &str) -> Option<Lease> {
    Api::<Lease>::namespaced(client.clone(), ns)
        .get_opt("rekon")
        .await
        .expect("the Lease can be read")
}

async fn holder(client: &kube::Client, ns: &str) -> Option<String> {
    lease(client, ns).await?.spec?.holder_identity
}

/// One version of the stamp child as the API server stored it.
#[derive(Debug, Clone)]
struct Stamp {
    who: String,
    resource_version: u64,
    /// When the server recorded rekon's write (managedFields, whole seconds).
    written: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
}

fn stamp_of(cm: &ConfigMap) -> Option<Stamp> {
    let settings = cm.data.as_ref()?.get("settings")?;
    let who = serde_json::from_str::<serde_json::Value>(settings).ok()?["who"]
        .as_str()?
        .to_owned();
    let written = cm
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|f| f.manager.as_deref() == Some("rekon-stamp"))
        .filter_map(|f| f.time.clone())
        .max_by_key(|t| t.0);
    Some(Stamp {
        who,
        resource_version: cm.metadata.resource_version.as_deref()?.parse().ok()?,
        written,
    })
}

#[tokio::test]
async fn a_leader_cut_off_from_the_api_server_writes_nothing_after_the_standby_takes_over() {
    let (client, ns) = setup("fence").await;
    let cp = ControlPlane::shared().await.expect("control plane");
    let proxy_a = FaultProxy::start(cp.client().await.unwrap()).await.unwrap();
    let proxy_b = FaultProxy::start(cp.client().await.unwrap()).await.unwrap();
    let configs = tempfile::tempdir().unwrap();
    let (kc_a, kc_b) = (configs.path().join("a"), configs.path().join("b"));
    proxy_a.write_kubeconfig(&kc_a).unwrap();
    proxy_b.write_kubeconfig(&kc_b).unwrap();
    let (dir_a, dir_b) = (plugin_dir("a"), plugin_dir("b"));

    let mut a = start(&kc_a, dir_a.path(), ns.name(), "rekon-a");
    wait_until("rekon-a leads", WAIT, || async {
        (holder(&client, ns.name()).await.as_deref() == Some("rekon-a")).then_some(())
    })
    .await
    .unwrap();
    let b = start(&kc_b, dir_b.path(), ns.name(), "rekon-b");

    // Every version of the stamp child, in the order the API server stored them.
    let api: Api<ConfigMap> = ns.api();
    let seen: Arc<Mutex<Vec<Stamp>>> = Arc::default();
    let watch = tokio::spawn({
        let (api, seen) = (api.clone(), seen.clone());
        async move {
            let config = watcher::Config::default().fields("metadata.name=p-stamp");
            let mut events = std::pin::pin!(watcher(api, config));
            while let Some(event) = events.next().await {
                if let Ok(watcher::Event::Apply(cm) | watcher::Event::InitApply(cm)) = event
                    && let Some(stamp) = stamp_of(&cm)
                {
                    seen.lock().unwrap().push(stamp);
                }
            }
        }
    });
    let primary: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "p", "labels": {"rekon.dev/stamp": "true"}},
        "data": {"requeue-ms": "300"},
    }))
    .unwrap();
    api.create(&PostParams::default(), &primary).await.unwrap();
    wait_until("rekon-a stamps", WAIT, || async {
        seen.lock()
            .unwrap()
            .iter()
            .any(|s| s.who == "a")
            .then_some(())
    })
    .await
    .unwrap();

    // Cut rekon-a off: its renews and writes go nowhere.
    proxy_a.block_all(true);
    let cut = Instant::now();
    let status = wait_until("rekon-a exits", LEASE + Duration::from_secs(10), || {
        let exited = a.try_wait();
        async move { exited }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: rekon-a still runs after the cut"));
    let exited = (status, cut.elapsed());
    wait_until("rekon-b takes over", WAIT, || async {
        (holder(&client, ns.name()).await.as_deref() == Some("rekon-b")).then_some(())
    })
    .await
    .unwrap();
    let acquired = lease(&client, ns.name())
        .await
        .and_then(|l| l.spec?.acquire_time)
        .expect("an acquire time");
    wait_until("rekon-b stamps", WAIT, || async {
        seen.lock()
            .unwrap()
            .iter()
            .any(|s| s.who == "b")
            .then_some(())
    })
    .await
    .unwrap();
    // Heal the partition: whatever rekon-a still held back could land now. Then read
    // until the watch has caught up with the child as the API server has it now.
    proxy_a.block_all(false);
    let now: u64 = api
        .get("p-stamp")
        .await
        .unwrap()
        .metadata
        .resource_version
        .and_then(|rv| rv.parse().ok())
        .unwrap();
    wait_until("the watch catches up with the present", WAIT, || async {
        seen.lock()
            .unwrap()
            .iter()
            .any(|s| s.resource_version >= now)
            .then_some(())
    })
    .await
    .unwrap();
    watch.abort();

    let seen = seen.lock().unwrap().clone();
    let first_b = seen
        .iter()
        .filter(|s| s.who == "b")
        .map(|s| s.resource_version)
        .min()
        .unwrap();
    let late: Vec<&Stamp> = seen
        .iter()
        .filter(|s| s.who == "a")
        .filter(|s| {
            s.resource_version > first_b || s.written.as_ref().is_some_and(|w| w.0 > acquired.0)
        })
        .collect();
    assert!(
        late.is_empty(),
        "writes of the old leader after the takeover at {:?}: {late:?}",
        acquired.0
    );
    let (status, after) = exited;
    assert!(
        !status.success(),
        "a deposed leader exits non-zero: {status:?}"
    );
    assert!(
        after < LEASE,
        "rekon-a exited {after:?} after the cut, past the lease duration {LEASE:?}"
    );
    println!(
        "rekon-a exited {after:?} after the cut ({status:?}); {} stamp versions, first by b at {first_b}",
        seen.len()
    );
    drop(b);
}

/// A host whose writes to ConfigMaps the API server (through the proxy) never answers:
/// each write ends at the request deadline as a failure with backoff, stopping the host
/// is bounded by it, and once answers come back the plugin converges.
#[tokio::test]
async fn a_write_that_gets_no_answer_ends_at_the_deadline_and_stopping_is_bounded() {
    use rekon_host::controller::PluginOptions;
    use rekon_tests::proxy::{Action, Rule};
    let (client, ns) = setup("deadline").await;
    let deadline = Duration::from_secs(1);
    let config = rekon_host::controller::Config {
        request_timeout: deadline,
        ..crate::controller::config(ns.name())
    };
    let (proxy, host, running) = crate::write_safety::through_proxy_with(
        &client,
        config,
        "stamp-plugin",
        PluginOptions::default(),
    )
    .await;
    let hole = proxy.add(Rule::new(Action::BlackHole).writes().path("/configmaps"));
    let api: Api<ConfigMap> = ns.api();
    let primary: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "p", "labels": {"rekon.dev/stamp": "true"}},
    }))
    .unwrap();
    api.create(&PostParams::default(), &primary).await.unwrap();
    let stats = running.stats().clone();
    wait_until("a write times out", WAIT, || async {
        (stats.write_errors().get("timeout").copied() >= Some(2)).then_some(())
    })
    .await
    .unwrap();
    // Backoff between the attempts: not a loop of timeouts.
    assert!(
        stats.write_errors()["timeout"] < 10,
        "{:?}",
        stats.write_errors()
    );
    // With a write in flight and unanswered, stopping the plugin ends within the deadline.
    wait_until("a write in flight", WAIT, || async {
        (running.queue().in_flight() > 0).then_some(())
    })
    .await
    .unwrap();
    let stopping = Instant::now();
    tokio::time::timeout(deadline * 5, host.stop("stamp"))
        .await
        .expect("stopping is bounded by the request deadline");
    println!(
        "stopped {:?} after asking, with a write in flight",
        stopping.elapsed()
    );
    // Answers come back: a new controller converges.
    proxy.remove(hole);
    host.start_with(
        crate::controller::plugin("stamp-plugin"),
        PluginOptions::default(),
    )
    .await
    .unwrap();
    wait_until("the stamp child exists", WAIT, || async {
        api.get_opt("p-stamp").await.ok().flatten()
    })
    .await
    .unwrap();
}

/// Issue 18, "fencing covers Events": the Recorder a fenced host records with refuses
/// with `Fenced` while its Lease is not held — before the first acquire and after the
/// loss — and records while it is; on the API server only the admitted Event exists.
#[tokio::test]
async fn events_are_fenced_like_every_other_write() {
    use rekon_host::contract::{Event as PluginEvent, EventType};
    use rekon_host::fence::Fence;
    use rekon_host::write::events::{self, Recorder};
    let (client, ns) = setup("fence-events").await;
    let fence = Fence::leased(Duration::from_secs(60));
    let recorder =
        Recorder::new(client.clone(), "test").guarded(fence.clone(), Duration::from_secs(30));
    let subject = Api::<ConfigMap>::namespaced(client.clone(), ns.name())
        .create(
            &kube::api::PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": "subject"}})).unwrap(),
        )
        .await
        .unwrap();
    let regarding = serde_json::to_value(&subject).unwrap();
    let event = |note: &str| PluginEvent {
        event_type: EventType::Warning,
        reason: "Probe".into(),
        note: note.into(),
    };
    let never_held = recorder.record("p", &regarding, &event("never held")).await;
    assert!(
        matches!(never_held, Err(events::Error::Fenced(_))),
        "{never_held:?}"
    );
    fence.renewed(tokio::time::Instant::now());
    recorder
        .record("p", &regarding, &event("held"))
        .await
        .expect("recorded while the Lease is held");
    fence.revoke();
    let lost = recorder.record("p", &regarding, &event("lost")).await;
    assert!(matches!(lost, Err(events::Error::Fenced(_))), "{lost:?}");
    let notes: Vec<_> = Api::<k8s_openapi::api::events::v1::Event>::namespaced(client, ns.name())
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|e| e.note)
        .collect();
    assert_eq!(notes, ["held"]);
}

/// A leader renewing every 20 ms releases its Lease (as `rekon run` does on SIGTERM):
/// the renewals stop before the release, so none of them takes the freed Lease again or
/// makes the release meet a conflict; the Lease stays free for a standby. Found by the
/// SIGTERM test, which once saw a clean exit with the Lease still held: the release ran
/// beside the renewals.
#[tokio::test]
async fn a_released_lease_stays_free_though_the_leader_renewed_until_then() {
    use rekon_host::operator::leader::{Elector, Timing};
    let (client, ns) = setup("release").await;
    let retry = Duration::from_millis(20);
    let timing = Timing {
        lease_duration: Duration::from_secs(30),
        renew_deadline: Duration::from_secs(10),
        retry,
    };
    let leases: Api<Lease> = ns.api();
    let holder = || async {
        leases
            .get("rekon")
            .await
            .unwrap()
            .spec
            .and_then(|s| s.holder_identity)
    };
    for round in 0..5 {
        let mut elector =
            Elector::new(client.clone(), ns.name(), "rekon", "leader", timing.clone());
        elector.acquire().await;
        let renewed = leases.get("rekon").await.unwrap().metadata.resource_version;
        let holding = elector.hold_in_background();
        wait_until("the leader renews", WAIT, || async {
            let now = leases.get("rekon").await.ok()?.metadata.resource_version;
            (now != renewed).then_some(())
        })
        .await
        .unwrap();
        holding.release().await.expect("the lease is released");
        // Twenty-five renew periods: a renewal still running would have taken it back.
        for _ in 0..25 {
            assert_eq!(
                holder().await,
                None,
                "round {round}: the released lease is held again"
            );
            tokio::time::sleep(retry).await;
        }
    }
}
