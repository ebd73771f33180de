//! The controller core against the real API server: children, status, conflicts,
//! read-your-writes, watch expiry, resync, multi-source mapping, shared watches.
//!
//! Each test runs its own in-process [`Host`] scoped to its own namespace, so tests run in
//! parallel on one control plane without seeing each other's objects.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use rekon_host::controller::{self, Controller, Host, Stats};
use rekon_host::plugin::{Artifacts, Loaded, Loader};
use rekon_host::sandbox::{self, Sandbox};
use rekon_tests::controlplane::{
    ControlPlane, ControlPlaneOptions, TestNamespace, install_crd, wait_until,
};
use rekon_tests::plugins;
use serde_json::json;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

pub(crate) const WAIT: Duration = Duration::from_secs(60);

pub(crate) fn loader() -> &'static Loader {
    static LOADER: OnceLock<Loader> = OnceLock::new();
    LOADER.get_or_init(|| {
        let sandbox = Sandbox::new(sandbox::Config::default()).expect("sandbox starts");
        let dir = plugins::target_dir().join("rekon-test-artifacts");
        Loader::new(sandbox, Artifacts::in_dir(dir), sandbox::Limits::default())
    })
}

pub(crate) fn plugin(crate_name: &str) -> Loaded {
    loader()
        .load_file(&plugins::path(crate_name))
        .unwrap_or_else(|e| panic!("{crate_name} loads: {e}"))
}

pub(crate) fn config(ns: &str) -> controller::Config {
    controller::Config {
        namespace: Some(ns.to_owned()),
        instance: format!("test-{ns}"),
        ..Default::default()
    }
}

pub(crate) async fn start(
    client: &kube::Client,
    config: controller::Config,
    names: &[&str],
) -> (Host, Vec<Arc<Controller>>) {
    crate::logs();
    let host = Host::new(client.clone(), config);
    let mut running = Vec::new();
    for name in names {
        running.push(host.start(plugin(name)).await.expect("plugin starts"));
    }
    (host, running)
}

fn yaml_docs(path: &str) -> Vec<String> {
    let text = std::fs::read_to_string(plugins::workspace().join(path)).unwrap();
    text.split("\n---")
        .map(str::to_owned)
        .filter(|d| d.trim().len() > 3)
        .collect()
}

pub(crate) async fn install_crds(client: &kube::Client, path: &str) {
    for doc in yaml_docs(path) {
        install_crd(client, doc).await.expect("CRD installs");
    }
}

pub(crate) fn dynamic(
    client: &kube::Client,
    ns: &str,
    group: &str,
    version: &str,
    kind: &str,
) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
    Api::namespaced_with(client.clone(), ns, &ar)
}

pub(crate) fn webapps(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    dynamic(client, ns, "rekon.dev", "v1alpha1", "WebApp")
}

pub(crate) fn webapp(name: &str, replicas: i64) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "rekon.dev/v1alpha1", "kind": "WebApp",
        "metadata": {"name": name},
        "spec": {"image": "nginx:1.27", "replicas": replicas, "port": 8080},
    }))
    .unwrap()
}

pub(crate) fn count(c: &std::sync::atomic::AtomicU64) -> u64 {
    Stats::read(c)
}

/// Waits until a controller has nothing waiting, delayed or running: later changes are
/// then handled by whatever the test provokes, not by leftover work.
pub(crate) async fn idle(r: &Controller) {
    wait_until("the controller is idle", WAIT, || async {
        let q = r.queue();
        (q.depth() == 0 && q.delayed() == 0 && q.in_flight() == 0).then_some(())
    })
    .await
    .unwrap();
}

pub(crate) async fn setup(prefix: &str) -> (kube::Client, TestNamespace) {
    let cp = ControlPlane::shared().await.expect("control plane");
    let client = cp.client().await.expect("client");
    let ns = TestNamespace::create(&client, prefix)
        .await
        .expect("namespace");
    (client, ns)
}

#[tokio::test]
async fn webapp_children_follow_the_spec_and_are_collected_with_it() {
    let (client, ns) = setup("webapp").await;
    install_crds(&client, "plugins/webapp/crd.yaml").await;
    let (_host, running) = start(&client, config(ns.name()), &["webapp"]).await;
    let apps = webapps(&client, ns.name());
    let created = apps
        .create(&PostParams::default(), &webapp("web", 2))
        .await
        .unwrap();
    let uid = created.metadata.uid.clone().unwrap();

    let deployments: Api<Deployment> = ns.api();
    let services: Api<Service> = ns.api();
    let d = wait_until("the Deployment exists", WAIT, || async {
        deployments.get_opt("web").await.ok().flatten()
    })
    .await
    .unwrap();
    let owner = &d.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.uid.as_str(), owner.controller),
        (uid.as_str(), Some(true))
    );
    assert_eq!(d.spec.replicas, Some(2));
    // One field manager per plugin: the applied fields, `spec.replicas` among them, are
    // held by `rekon-webapp`, the only manager that applied.
    let applied: Vec<_> = d
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|f| f.operation.as_deref() == Some("Apply"))
        .collect();
    assert_eq!(
        applied
            .iter()
            .map(|f| f.manager.as_deref())
            .collect::<Vec<_>>(),
        [Some("rekon-webapp")],
        "{applied:?}"
    );
    let fields = serde_json::to_string(&applied[0].fields_v1).unwrap();
    assert!(fields.contains("f:replicas"), "{fields}");
    let s = wait_until("the Service exists", WAIT, || async {
        services.get_opt("web").await.ok().flatten()
    })
    .await
    .unwrap();
    assert_eq!(s.metadata.owner_references.unwrap()[0].uid, uid);

    apps.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 5}})),
    )
    .await
    .unwrap();
    wait_until("the Deployment follows the new replicas", WAIT, || async {
        let d = deployments.get("web").await.ok()?;
        (d.spec.replicas == Some(5)).then_some(())
    })
    .await
    .unwrap();
    let status = wait_until(
        "Ready's observedGeneration equals the generation",
        WAIT,
        || async {
            let app = apps.get("web").await.ok()?;
            let generation = app.metadata.generation?;
            let ready = app.data["status"]["conditions"]
                .as_array()?
                .iter()
                .find(|c| c["type"] == "Ready")?
                .clone();
            (ready["observedGeneration"] == json!(generation)).then_some(app.data["status"].clone())
        },
    )
    .await
    .unwrap();
    // No kube-controller-manager runs Deployments here, so nothing becomes ready.
    assert_eq!(status["readyReplicas"], 0);
    assert_eq!(status["conditions"][0]["status"], "False");

    apps.delete("web", &DeleteParams::default()).await.unwrap();
    wait_until(
        "the garbage collector removes the children",
        WAIT,
        || async {
            let d = deployments.get_opt("web").await.ok()?;
            let s = services.get_opt("web").await.ok()?;
            (d.is_none() && s.is_none()).then_some(())
        },
    )
    .await
    .unwrap();
    let stats = running[0].stats();
    assert_eq!(
        count(&stats.apply_errors),
        0,
        "faults: {:?}",
        stats.faults()
    );
    assert!(stats.faults().is_empty(), "{:?}", stats.faults());
}

/// A burst of spec changes is collapsed, not reconciled once per event. The fault proxy
/// holds the host's WebApp watch while the test patches the WebApp 20 times (replicas 2
/// to 21), then releases all 20 events at once: the key is queued once while it waits
/// or runs, so the burst costs a couple of reconciles (the first event's, one for the
/// rest) plus the echoes of the host's own writes, not 20.
#[tokio::test]
async fn a_burst_of_updates_is_collapsed_into_a_few_reconciles_on_the_latest_spec() {
    use rekon_tests::proxy::{Action, Rule};
    let (client, ns) = setup("burst").await;
    install_crds(&client, "plugins/webapp/crd.yaml").await;
    let (proxy, host, running) =
        crate::write_safety::through_proxy(&client, ns.name(), "webapp", Default::default()).await;
    let apps = webapps(&client, ns.name());
    apps.create(&PostParams::default(), &webapp("web", 1))
        .await
        .unwrap();
    let deployments: Api<Deployment> = ns.api();
    let replicas = |n: i32| {
        let deployments = deployments.clone();
        move || {
            let deployments = deployments.clone();
            async move {
                let d = deployments.get_opt("web").await.ok()??;
                (d.spec.replicas == Some(n)).then_some(())
            }
        }
    };
    wait_until("the Deployment is created", WAIT, replicas(1))
        .await
        .unwrap();
    idle(&running).await;
    let stats = running.stats();
    let (reconciles, writes, conflicts) = (
        count(&stats.reconciles),
        count(&stats.writes),
        count(&stats.conflicts),
    );
    let held = proxy.add(Rule::new(Action::HoldEvents).watches().path("/webapps"));
    for replicas in 2..=21 {
        apps.patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": replicas}})),
        )
        .await
        .unwrap();
    }
    assert_eq!(
        count(&stats.reconciles),
        reconciles,
        "no event reached the host while held"
    );
    assert!(proxy.remove(held));
    wait_until("the Deployment reaches the last spec", WAIT, replicas(21))
        .await
        .unwrap();
    idle(&running).await;
    let burst = count(&stats.reconciles) - reconciles;
    println!(
        "burst: 20 spec versions delivered at once → {burst} reconciles, {} writes, {} conflicts, {} read-your-writes waits, {} timed out",
        count(&stats.writes) - writes,
        count(&stats.conflicts) - conflicts,
        count(&stats.own_write_waits),
        count(&stats.own_write_overdue)
    );
    assert_eq!(count(&stats.apply_errors), 0);
    assert!(stats.faults().is_empty(), "{:?}", stats.faults());
    assert_eq!(count(&stats.own_write_overdue), 0);
    // The first event's reconcile, one for the other 19 queued while it ran, and one per
    // echo of their writes (the Deployment's change, the WebApp's status) that arrives
    // apart: at most 6, 8 with a margin; one reconcile per event would be 20 or more.
    assert!(
        burst <= 8,
        "{burst} reconciles for a burst of 20 events delivered at once"
    );
    host.shutdown(Duration::from_secs(5)).await;
}

fn mirror_source(name: &str, value: &str, delay_ms: u64) -> ConfigMap {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "labels": {"rekon.dev/mirror": "true"}},
        "data": {"value": value, "delay-ms": delay_ms.to_string()},
    }))
    .unwrap()
}

#[tokio::test]
async fn a_conflicting_foreign_write_is_not_overwritten_blindly_and_the_host_converges() {
    let (client, ns) = setup("conflict").await;
    let (_host, running) = start(&client, config(ns.name()), &["mirror-plugin"]).await;
    let stats = running[0].stats().clone();
    let cms: Api<ConfigMap> = ns.api();
    cms.create(&PostParams::default(), &mirror_source("src", "v1", 0))
        .await
        .unwrap();
    let value = |cm: &ConfigMap, k: &str| cm.data.as_ref().and_then(|d| d.get(k).cloned());
    wait_until("the mirror exists", WAIT, || async {
        let m = cms.get_opt("src-mirror").await.ok()??;
        (value(&m, "value").as_deref() == Some("v1")).then_some(())
    })
    .await
    .unwrap();

    // No leftover reconcile may account for a conflict below.
    idle(&running[0]).await;
    let conflicts_before = count(&stats.conflicts);
    // The next reconcile takes 1 s to decide; while it does, a foreign writer takes the
    // very field the plugin applies (`data.value`), so the plugin's write — conditioned on
    // the mirror it saw — must be refused with 409, not applied over the change.
    let before = count(&stats.reconciles);
    cms.patch(
        "src",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"value": "v2", "delay-ms": "1000"}})),
    )
    .await
    .unwrap();
    wait_until("the slow reconcile started", WAIT, || async {
        (count(&stats.reconciles) > before).then_some(())
    })
    .await
    .unwrap();
    cms.patch(
        "src-mirror",
        &PatchParams::apply("foreign-writer").force(),
        &Patch::Apply(
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "src-mirror"},
            "data": {"value": "theirs"}}),
        ),
    )
    .await
    .unwrap();

    let mirror = wait_until("the mirror converges on v2", WAIT, || async {
        let m = cms.get_opt("src-mirror").await.ok()??;
        (value(&m, "value").as_deref() == Some("v2")).then_some(m)
    })
    .await
    .unwrap();
    let conflicts = count(&stats.conflicts) - conflicts_before;
    println!(
        "conflict test: {conflicts} conflict(s), {} reconciles",
        count(&stats.reconciles)
    );
    // A blind (unconditioned) forced apply would have overwritten "theirs" without a 409.
    assert!(conflicts >= 1, "the stale write was refused with 409");
    // Decided again on the state that includes the foreign write, the plugin takes its
    // field back deliberately.
    assert_eq!(value(&mirror, "value").as_deref(), Some("v2"));
}

#[tokio::test]
async fn resync_reconciles_every_primary_again_and_an_orphaned_child_is_not_taken_back() {
    let (client, ns) = setup("resync").await;
    install_crds(&client, "plugins/webapp/crd.yaml").await;
    let mut cfg = config(ns.name());
    cfg.resync_override = Some(Duration::from_secs(3));
    let (_host, running) = start(&client, cfg, &["webapp"]).await;
    let apps = webapps(&client, ns.name());
    apps.create(&PostParams::default(), &webapp("web", 2))
        .await
        .unwrap();
    let deployments: Api<Deployment> = ns.api();
    wait_until("the Deployment exists", WAIT, || async {
        deployments.get_opt("web").await.ok().flatten()
    })
    .await
    .unwrap();
    idle(&running[0]).await;
    // Nothing changes; a resync pass still reconciles the WebApp again.
    let stats = running[0].stats().clone();
    let (resyncs, reconciles) = (count(&stats.resyncs), count(&stats.reconciles));
    wait_until(
        "a resync pass reconciles again",
        Duration::from_secs(30),
        || async {
            (count(&stats.resyncs) > resyncs && count(&stats.reconciles) > reconciles).then_some(())
        },
    )
    .await
    .unwrap();
    // Someone orphans the Deployment (drops its owner reference) and scales it: it is no
    // longer the WebApp's, so neither the event nor a resync takes it back (consent).
    deployments
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"ownerReferences": null}, "spec": {"replicas": 7}})),
        )
        .await
        .unwrap();
    let resyncs = count(&stats.resyncs);
    wait_until(
        "two more resync passes",
        Duration::from_secs(30),
        || async { (count(&stats.resyncs) >= resyncs + 2).then_some(()) },
    )
    .await
    .unwrap();
    // (Not idle: the WebApp's reconcile keeps failing with NotOwned, backing off.)
    let d = deployments.get("web").await.unwrap();
    assert_eq!(d.spec.replicas, Some(7), "the orphan's spec is left alone");
    assert!(d.metadata.owner_references.unwrap_or_default().is_empty());
    assert!(
        stats.write_errors().get("not_owned").copied() >= Some(1),
        "{:?}",
        stats.write_errors()
    );
}

#[tokio::test]
async fn nodepool_status_counts_healthy_reports_and_a_burst_collapses() {
    let (client, ns) = setup("nodepool").await;
    install_crds(&client, "plugins/nodepool/crd.yaml").await;
    let (_host, running) = start(&client, config(ns.name()), &["nodepool"]).await;
    let stats = running[0].stats().clone();
    let pools = dynamic(&client, ns.name(), "rekon.dev", "v1alpha1", "NodePool");
    let reports = dynamic(&client, ns.name(), "rekon.dev", "v1alpha1", "NodeReport");
    let pool: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "rekon.dev/v1alpha1", "kind": "NodePool",
        "metadata": {"name": "gpu"}, "spec": {"minHealthy": 2},
    }))
    .unwrap();
    pools.create(&PostParams::default(), &pool).await.unwrap();
    let status_is = |healthy: i64, total: i64| {
        let pools = pools.clone();
        async move {
            wait_until(
                &format!("status healthy={healthy} total={total}"),
                WAIT,
                || async {
                    let p = pools.get("gpu").await.ok()?;
                    (p.data["status"]["healthy"] == json!(healthy)
                        && p.data["status"]["total"] == json!(total))
                    .then_some(p.data["status"].clone())
                },
            )
            .await
            .unwrap()
        }
    };
    status_is(0, 0).await;
    let report = |name: &str, healthy: bool, pool: &str| -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "rekon.dev/v1alpha1", "kind": "NodeReport",
            "metadata": {"name": name, "labels": {"rekon.dev/pool": pool}},
            "spec": {"healthy": healthy},
        }))
        .unwrap()
    };
    for (name, healthy) in [("a", true), ("b", false), ("c", true)] {
        reports
            .create(&PostParams::default(), &report(name, healthy, "gpu"))
            .await
            .unwrap();
    }
    reports
        .create(&PostParams::default(), &report("other", true, "cpu"))
        .await
        .unwrap();
    let status = status_is(2, 3).await;
    assert_eq!(status["conditions"][0]["status"], "True");
    reports.delete("a", &DeleteParams::default()).await.unwrap();
    let status = status_is(1, 2).await;
    assert_eq!(status["conditions"][0]["status"], "False");

    // A burst: 100 new reports arrive at once (half of them healthy).
    idle(&running[0]).await;
    let before = count(&stats.reconciles);
    let creates = (0..100).map(|i| {
        let reports = reports.clone();
        let r = report(&format!("burst-{i:03}"), i % 2 == 0, "gpu");
        async move { reports.create(&PostParams::default(), &r).await }
    });
    for created in futures::future::join_all(creates).await {
        created.unwrap();
    }
    status_is(51, 102).await;
    idle(&running[0]).await;
    let burst = count(&stats.reconciles) - before;
    println!("nodepool: a burst of 100 report changes → {burst} reconciles");
    assert!(
        burst < 50,
        "the burst collapsed ({burst} reconciles for 100 changes)"
    );
}

#[tokio::test]
async fn two_plugins_on_configmaps_share_one_watch() {
    let (client, ns) = setup("shared").await;
    let (host, running) = start(
        &client,
        config(ns.name()),
        &["mirror-plugin", "hostile-plugin"],
    )
    .await;
    assert_eq!(running.len(), 2);
    let configmap = rekon_host::contract::Gvk::new("", "v1", "ConfigMap");
    assert_eq!(host.stores().kinds(), vec![configmap]);
    assert_eq!(
        host.stores().watch_count(),
        1,
        "one watch for ConfigMaps, however many plugins"
    );
    // Both plugins see events through it.
    let cms: Api<ConfigMap> = ns.api();
    cms.create(&PostParams::default(), &mirror_source("both", "x", 0))
        .await
        .unwrap();
    wait_until("the mirror plugin reconciled", WAIT, || async {
        cms.get_opt("both-mirror").await.ok().flatten()
    })
    .await
    .unwrap();
    wait_until("the hostile plugin reconciled too", WAIT, || async {
        (count(&running[1].stats().reconciles) > 0).then_some(())
    })
    .await
    .unwrap();
}

/// A loopback TCP proxy to the API server that a test can cut, so the host's watch
/// breaks and cannot reconnect until the proxy is restored.
struct Proxy {
    port: u16,
    open: tokio::sync::watch::Sender<bool>,
}

impl Proxy {
    async fn start(upstream: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (open, _) = tokio::sync::watch::channel(true);
        let state = open.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !*state.borrow() {
                    continue; // refused while cut: the connection is dropped at once
                }
                let mut cut = state.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let copy = tokio::io::copy_bidirectional(&mut inbound, &mut outbound);
                    let closed = cut.wait_for(|open| !open);
                    tokio::select! { _ = copy => {}, _ = closed => {} }
                });
            }
        });
        Self { port, open }
    }

    fn cut(&self) {
        self.open.send_replace(false);
    }

    fn restore(&self) {
        self.open.send_replace(true);
    }
}

#[tokio::test]
async fn an_expired_watch_relists_and_reconciles_what_changed_meanwhile() {
    let cp = ControlPlane::start(ControlPlaneOptions {
        watch_cache: false,
        ..Default::default()
    })
    .await
    .expect("a control plane without watch cache");
    let admin = cp.client().await.unwrap();
    install_crds(&admin, "plugins/webapp/crd.yaml").await;
    let ns = TestNamespace::create(&admin, "gone").await.unwrap();

    // The host reaches the API server through a proxy the test can cut.
    let upstream: std::net::SocketAddr = cp
        .server_url()
        .trim_start_matches("https://")
        .parse()
        .unwrap();
    let proxy = Proxy::start(upstream).await;
    let mut host_config = cp.config().await.unwrap();
    host_config.cluster_url = format!("https://127.0.0.1:{}", proxy.port).parse().unwrap();
    let host_client = kube::Client::try_from(host_config).unwrap();
    let (host, _running) = start(&host_client, config(ns.name()), &["webapp"]).await;

    let apps = webapps(&admin, ns.name());
    apps.create(&PostParams::default(), &webapp("kept", 1))
        .await
        .unwrap();
    apps.create(&PostParams::default(), &webapp("gone", 1))
        .await
        .unwrap();
    let deployments: Api<Deployment> = ns.api();
    wait_until("both Deployments exist", WAIT, || async {
        let l = deployments.list(&Default::default()).await.ok()?;
        (l.items.len() == 2).then_some(())
    })
    .await
    .unwrap();
    let kinds = host.stores().kinds();
    let stores: Vec<_> = kinds
        .iter()
        .filter_map(|k| host.stores().store(k))
        .collect();
    let relists = || stores.iter().map(|s| s.relists()).sum::<u64>();
    let relists_before = relists();

    // Cut the host off, change things, and compact etcd past what its watch saw.
    proxy.cut();
    apps.patch(
        "kept",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 4}})),
    )
    .await
    .unwrap();
    apps.delete("gone", &DeleteParams::default()).await.unwrap();
    cp.compact_etcd().await.unwrap();
    proxy.restore();

    wait_until("the relisted change is reconciled", WAIT, || async {
        let d = deployments.get("kept").await.ok()?;
        (d.spec.replicas == Some(4)).then_some(())
    })
    .await
    .unwrap();
    let relisted = wait_until("a store relisted after 410 Gone", WAIT, || async {
        (relists() > relists_before).then_some(())
    })
    .await;
    let per_kind: Vec<String> = stores
        .iter()
        .map(|s| {
            format!(
                "{}: relists {}, watch restarts {}",
                s.gvk(),
                s.relists(),
                s.watch_restarts()
            )
        })
        .collect();
    println!("410: {}", per_kind.join("; "));
    assert!(relisted.is_ok(), "no relist: {per_kind:?}");
    let webapp_store = host
        .stores()
        .store(&rekon_host::contract::Gvk::new(
            "rekon.dev",
            "v1alpha1",
            "WebApp",
        ))
        .unwrap();
    assert!(
        webapp_store.get(Some(ns.name()), "gone").is_none(),
        "the deleted WebApp left the cache"
    );
    host.shutdown(Duration::from_secs(5)).await;
}

fn cleanup_source(name: &str, data: serde_json::Value) -> ConfigMap {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "labels": {"rekon.dev/cleanup": "true"}},
        "data": data,
    }))
    .unwrap()
}

#[tokio::test]
async fn a_finalizer_holds_deletion_until_the_plugin_finishes_cleanup() {
    let (client, ns) = setup("finalize").await;
    let (_host, running) = start(&client, config(ns.name()), &["cleanup-plugin"]).await;
    let cms: Api<ConfigMap> = ns.api();
    cms.create(
        &PostParams::default(),
        &cleanup_source("held", json!({"cleanup-ms": "1500"})),
    )
    .await
    .unwrap();
    wait_until("the host adds the plugin's finalizer", WAIT, || async {
        let cm = cms.get("held").await.ok()?;
        cm.metadata
            .finalizers?
            .contains(&"rekon.dev/cleanup".to_owned())
            .then_some(())
    })
    .await
    .unwrap();
    let calls_before = count(&running[0].stats().reconciles);
    cms.delete("held", &DeleteParams::default()).await.unwrap();
    let pending = cms
        .get("held")
        .await
        .expect("still there while cleanup runs");
    assert!(pending.metadata.deletion_timestamp.is_some());
    wait_until("deletion completes once cleanup is done", WAIT, || async {
        cms.get_opt("held").await.ok()?.is_none().then_some(())
    })
    .await
    .unwrap();
    let finalize_calls = count(&running[0].stats().reconciles) - calls_before;
    println!("finalizer: {finalize_calls} finalize calls before the finalizer was removed");
    assert!(
        finalize_calls >= 2,
        "finalize was asked again while cleanup was pending"
    );
}

#[tokio::test]
async fn owned_children_no_longer_applied_are_pruned() {
    let (client, ns) = setup("prune").await;
    let (_host, _running) = start(&client, config(ns.name()), &["cleanup-plugin"]).await;
    let cms: Api<ConfigMap> = ns.api();
    cms.create(
        &PostParams::default(),
        &cleanup_source("parent", json!({"children": "a,b"})),
    )
    .await
    .unwrap();
    wait_until("both children exist", WAIT, || async {
        let a = cms.get_opt("parent-a").await.ok()??;
        let b = cms.get_opt("parent-b").await.ok()??;
        Some((a, b))
    })
    .await
    .unwrap();
    cms.patch(
        "parent",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"children": "a"}})),
    )
    .await
    .unwrap();
    wait_until("child b is pruned", WAIT, || async {
        cms.get_opt("parent-b").await.ok()?.is_none().then_some(())
    })
    .await
    .unwrap();
    assert!(
        cms.get_opt("parent-a").await.unwrap().is_some(),
        "child a is kept"
    );
}
