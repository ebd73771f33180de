//! Write safety on the real API server: consent before taking over an object, no loop on
//! a persistent 409, several `generateName` creates in one output, relabelled objects
//! mapped on both sides, and (through the fault proxy) read-your-writes under a lagging
//! watch.

use crate::controller::{WAIT, count, idle, install_crds, plugin, setup, webapp, webapps};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use rekon_host::contract::Gvk;
use rekon_host::controller::{Controller, Host, PluginOptions};
use rekon_tests::controlplane::wait_until;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A host running one plugin with `options`, scoped to `ns`.
pub(crate) async fn start_with(
    client: &kube::Client,
    ns: &str,
    crate_name: &str,
    options: PluginOptions,
) -> (Host, Arc<Controller>) {
    crate::logs();
    let host = Host::new(client.clone(), crate::controller::config(ns));
    let running = host
        .start_with(plugin(crate_name), options)
        .await
        .expect("plugin starts");
    (host, running)
}

/// The Warning Events with `reason` regarding the object named `name`.
pub(crate) async fn warnings(events: &Api<Event>, reason: &str, name: &str) -> Vec<Event> {
    events
        .list(&ListParams::default())
        .await
        .expect("events list")
        .items
        .into_iter()
        .filter(|e| {
            e.reason.as_deref() == Some(reason)
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
        })
        .collect()
}

/// A user's Service: selector `app: user-shop`, one port `port` → `target`.
fn user_service(name: &str, port: i32, target: i32) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"owner": "user"}},
        "spec": {"selector": {"app": "user-shop"},
                 "ports": [{"port": port, "targetPort": target}]},
    }))
    .unwrap()
}

/// The user's Service as the assertions compare it: selector, ports, owners.
fn shape(s: &Service) -> serde_json::Value {
    let spec = s.spec.clone().unwrap_or_default();
    json!({
        "selector": spec.selector,
        "ports": spec.ports.unwrap_or_default().iter()
            .map(|p| json!([p.port, p.target_port])).collect::<Vec<_>>(),
        "owners": s.metadata.owner_references.clone().unwrap_or_default().len(),
        "resourceVersion": s.metadata.resource_version,
    })
}

#[tokio::test]
async fn a_users_service_survives_a_webapp_of_the_same_name_which_gets_a_not_owned_warning() {
    let (client, ns) = setup("consent").await;
    install_crds(&client, "plugins/webapp/crd.yaml").await;
    let services: Api<Service> = ns.api();
    let before = services
        .create(&PostParams::default(), &user_service("shop", 80, 8080))
        .await
        .unwrap();
    let (_host, running) = start_with(&client, ns.name(), "webapp", PluginOptions::default()).await;
    let apps = webapps(&client, ns.name());
    apps.create(&PostParams::default(), &webapp("shop", 2))
        .await
        .unwrap();

    // The reconcile ran (its Deployment exists) and stopped at the Service.
    let deployments: Api<Deployment> = ns.api();
    wait_until("the Deployment exists", WAIT, || async {
        deployments.get_opt("shop").await.ok().flatten()
    })
    .await
    .unwrap();
    let events: Api<Event> = ns.api();
    let warning = wait_until("a NotOwned warning on the WebApp", WAIT, || async {
        warnings(&events, "NotOwned", "shop")
            .await
            .into_iter()
            .next()
    })
    .await
    .unwrap();
    let note = warning.note.unwrap_or_default();
    assert!(
        note.contains("Service") && note.contains("shop") && note.contains("field managers"),
        "the note names the object and who holds it: {note}"
    );
    assert_eq!(warning.type_.as_deref(), Some("Warning"));
    assert!(
        running.stats().write_errors().get("not_owned").copied() >= Some(1),
        "{:?}",
        running.stats().write_errors()
    );
    let after = services.get("shop").await.unwrap();
    assert_eq!(
        shape(&after),
        shape(&before),
        "the user's Service is untouched"
    );

    // Deleting the WebApp does not take the user's Service with it.
    apps.delete("shop", &DeleteParams::default()).await.unwrap();
    wait_until(
        "the garbage collector removes the Deployment",
        WAIT,
        || async {
            deployments
                .get_opt("shop")
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await
    .unwrap();
    let survived = services.get("shop").await.expect("the Service survives");
    assert_eq!(shape(&survived), shape(&before));
}

#[tokio::test]
async fn adoption_is_opt_in_per_kind_and_takes_the_object_over() {
    let (client, ns) = setup("adopt").await;
    install_crds(&client, "plugins/webapp/crd.yaml").await;
    let services: Api<Service> = ns.api();
    // The same port as the WebApp's Service (8080), so the merged object is valid; the
    // selector and the target port are contested and taken over.
    services
        .create(&PostParams::default(), &user_service("shop", 8080, 9090))
        .await
        .unwrap();
    let options = PluginOptions {
        adopt: vec![Gvk::new("", "v1", "Service")],
        ..Default::default()
    };
    let (_host, running) = start_with(&client, ns.name(), "webapp", options).await;
    let apps = webapps(&client, ns.name());
    let app = apps
        .create(&PostParams::default(), &webapp("shop", 2))
        .await
        .unwrap();
    let uid = app.metadata.uid.unwrap();
    let adopted = wait_until("the Service is adopted", WAIT, || async {
        let s = services.get("shop").await.ok()?;
        let controller = s
            .metadata
            .owner_references
            .clone()?
            .into_iter()
            .find(|r| r.controller == Some(true))?;
        (controller.uid == uid).then_some(s)
    })
    .await
    .unwrap();
    let spec = adopted.spec.unwrap();
    let selector = spec.selector.unwrap_or_default();
    assert_eq!(
        selector.get("app.kubernetes.io/name").map(String::as_str),
        Some("shop"),
        "{selector:?}"
    );
    let ports = spec.ports.unwrap_or_default();
    assert_eq!(ports.len(), 1, "{ports:?}");
    assert_eq!(
        ports[0].target_port,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(8080))
    );
    idle(&running).await;
    assert_eq!(running.stats().write_errors().get("not_owned"), None);
}

pub(crate) fn replicas_primary(name: &str, mode: &str, data: serde_json::Value) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"rekon.dev/replicas": mode}},
        "data": data,
    }))
    .unwrap()
}

#[tokio::test]
async fn a_plugin_that_always_creates_an_existing_object_backs_off() {
    let (client, ns) = setup("exists").await;
    let cms: Api<ConfigMap> = ns.api();
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "taken"}})).unwrap(),
    )
    .await
    .unwrap();
    let (_host, running) = start_with(
        &client,
        ns.name(),
        "replicas-plugin",
        PluginOptions::default(),
    )
    .await;
    cms.create(
        &PostParams::default(),
        &replicas_primary("creator", "create-existing", json!({"target": "taken"})),
    )
    .await
    .unwrap();
    // Six refused creates in a row; each must count as a failure, so the key backs off
    // 5 ms × 2^n (the queue's unit tests time that curve) instead of retrying every 5 ms.
    wait_until("six refused creates", WAIT, || async {
        let errors = running.stats().write_errors();
        (errors.get("already_exists").copied() >= Some(6)).then_some(())
    })
    .await
    .unwrap();
    let key = rekon_host::contract::ObjectKey {
        namespace: Some(ns.name().to_owned()),
        name: "creator".into(),
    };
    let errors = running.stats().write_errors()["already_exists"];
    let failures = u64::from(running.queue().failures(&key));
    // The lease of the latest attempt may not have ended yet when its error was counted.
    assert!(
        failures + 1 >= errors,
        "{errors} refused creates but {failures} failures counted: no backoff"
    );
    assert_eq!(count(&running.stats().conflicts), 0, "not a conflict loop");
}

/// The children of the `replicas` primary `owner` in the API server (not the cache).
pub(crate) async fn children(cms: &Api<ConfigMap>, owner_uid: &str) -> Vec<String> {
    cms.list(&ListParams::default())
        .await
        .expect("list")
        .items
        .into_iter()
        .filter(|c| {
            c.metadata.deletion_timestamp.is_none()
                && c.metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|r| r.uid == owner_uid)
        })
        .filter_map(|c| c.metadata.name)
        .collect()
}

/// Sets `size` and waits until the API server holds exactly that many children,
/// sampling every 100 ms: returns the most seen at once, and how long it took.
pub(crate) async fn scale(
    cms: &Api<ConfigMap>,
    owner_uid: &str,
    from: usize,
    size: usize,
    limit: Duration,
) -> (usize, Duration) {
    let started = Instant::now();
    cms.patch(
        "rs",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"size": size.to_string()}})),
    )
    .await
    .unwrap();
    // Every sample on the way counts towards the most seen at once.
    let most = std::cell::Cell::new(from);
    wait_until(&format!("scaling {from} → {size}"), limit, || async {
        let n = children(cms, owner_uid).await.len();
        most.set(most.get().max(n));
        (n == size).then_some(())
    })
    .await
    .unwrap();
    (most.get(), started.elapsed())
}

#[tokio::test]
async fn several_generate_name_creates_in_one_output_are_all_written_and_scaling_never_duplicates()
{
    let (client, ns) = setup("generate").await;
    let (_host, running) = start_with(
        &client,
        ns.name(),
        "replicas-plugin",
        PluginOptions::default(),
    )
    .await;
    let cms: Api<ConfigMap> = ns.api();
    let rs = cms
        .create(
            &PostParams::default(),
            &replicas_primary("rs", "generate", json!({"size": "3"})),
        )
        .await
        .unwrap();
    let uid = rs.metadata.uid.unwrap();
    wait_until("three children", WAIT, || async {
        (children(&cms, &uid).await.len() == 3).then_some(())
    })
    .await
    .unwrap();
    let mut from = 3;
    let mut steps = BTreeMap::new();
    for size in [8, 2, 7, 1, 5] {
        let (most, took) = scale(&cms, &uid, from, size, WAIT).await;
        assert!(
            most <= from.max(size),
            "scaling {from} → {size}: {most} children at once (a duplicate create)"
        );
        steps.insert(format!("{from}->{size}"), took);
        from = size;
    }
    idle(&running).await;
    assert_eq!(children(&cms, &uid).await.len(), 5);
    let stats = running.stats();
    assert_eq!(
        count(&stats.apply_errors),
        0,
        "no create failed: {:?}",
        stats.write_errors()
    );
    println!("generateName scaling, no delay: {steps:?}");
}

#[tokio::test]
async fn a_report_relabelled_to_another_pool_updates_both_pools_at_once() {
    let (client, ns) = setup("relabel").await;
    install_crds(&client, "plugins/nodepool/crd.yaml").await;
    let (_host, running) =
        start_with(&client, ns.name(), "nodepool", PluginOptions::default()).await;
    let pools = crate::controller::dynamic(&client, ns.name(), "rekon.dev", "v1alpha1", "NodePool");
    let reports =
        crate::controller::dynamic(&client, ns.name(), "rekon.dev", "v1alpha1", "NodeReport");
    for pool in ["a", "b"] {
        pools
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "apiVersion": "rekon.dev/v1alpha1", "kind": "NodePool",
                    "metadata": {"name": pool}, "spec": {"minHealthy": 1},
                }))
                .unwrap(),
            )
            .await
            .unwrap();
    }
    reports
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "rekon.dev/v1alpha1", "kind": "NodeReport",
                "metadata": {"name": "n1", "labels": {"rekon.dev/pool": "a"}},
                "spec": {"healthy": true},
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let total = |pool: &'static str| {
        let pools = pools.clone();
        async move {
            let p = pools.get(pool).await.ok()?;
            p.data["status"]["total"].as_u64()
        }
    };
    wait_until("pool a counts the report", WAIT, || async {
        (total("a").await == Some(1) && total("b").await == Some(0)).then_some(())
    })
    .await
    .unwrap();
    idle(&running).await;
    reports
        .patch(
            "n1",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"rekon.dev/pool": "b"}}})),
        )
        .await
        .unwrap();
    // The plugin's resync is minutes away: only mapping the old labels finds pool a.
    wait_until(
        "both pools follow the move",
        Duration::from_secs(20),
        || async { (total("a").await == Some(0) && total("b").await == Some(1)).then_some(()) },
    )
    .await
    .unwrap();
}

/// The plugin applies `<name>-a`, then `<name>-b`, and records an event; a 409 on the
/// first apply (the fault proxy) must drop the second apply and the event of that output:
/// both are sent only by the reconcile that decides again.
#[tokio::test]
async fn a_conflict_drops_the_rest_of_the_output_and_its_events() {
    use http::Method;
    use rekon_tests::proxy::{Action, Rule};
    let (client, ns) = setup("dropped").await;
    let (proxy, _host, running) = through_proxy(
        &client,
        ns.name(),
        "replicas-plugin",
        PluginOptions::default(),
    )
    .await;
    proxy.add(
        Rule::new(Action::status(http::StatusCode::CONFLICT))
            .methods([Method::PATCH])
            .path("/configmaps/probe-a")
            .times(1),
    );
    let cms: Api<ConfigMap> = ns.api();
    cms.create(
        &PostParams::default(),
        &replicas_primary("probe", "probe", json!({})),
    )
    .await
    .unwrap();
    wait_until("both children", WAIT, || async {
        let b = cms.get_opt("probe-b").await.ok()??;
        Some(b)
    })
    .await
    .unwrap();
    idle(&running).await;
    let seen = proxy.requests();
    let position = |pred: &dyn Fn(&rekon_tests::proxy::Seen) -> bool| seen.iter().position(pred);
    let conflict = position(&|s| s.path.contains("/probe-a") && s.status == Some(409))
        .expect("the injected conflict");
    let retried = position(&|s| {
        s.path.contains("/probe-a")
            && s.method == Method::PATCH
            && s.status.is_some_and(|c| (200..300).contains(&c))
    })
    .expect("the apply decided again");
    assert!(conflict < retried);
    let between = &seen[conflict..retried];
    assert!(
        !between.iter().any(|s| s.path.contains("/probe-b")),
        "the second apply of the conflicting output was sent: {between:?}"
    );
    assert!(
        !between
            .iter()
            .any(|s| s.method == Method::POST && s.path.contains("/events")),
        "an event of the conflicting output was recorded: {between:?}"
    );
    let events: Api<Event> = ns.api();
    let probed = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("Probed"))
        .count();
    // (Identical events are deduplicated, so the count cannot tell which output recorded
    // it; the order of requests above does.)
    assert!(probed >= 1, "the output that was written records its event");
    assert_eq!(count(&running.stats().conflicts), 1);
}

/// A fault proxy in front of the API server and a host running `crate_name` with
/// `options` through it, scoped to `ns`.
pub(crate) async fn through_proxy(
    client: &kube::Client,
    ns: &str,
    crate_name: &str,
    options: PluginOptions,
) -> (rekon_tests::proxy::FaultProxy, Host, Arc<Controller>) {
    through_proxy_with(client, crate::controller::config(ns), crate_name, options).await
}

/// [`through_proxy`] with the host's `config`.
pub(crate) async fn through_proxy_with(
    client: &kube::Client,
    config: rekon_host::controller::Config,
    crate_name: &str,
    options: PluginOptions,
) -> (rekon_tests::proxy::FaultProxy, Host, Arc<Controller>) {
    crate::logs();
    let proxy = rekon_tests::proxy::FaultProxy::start(client.clone())
        .await
        .expect("the proxy starts");
    let host = Host::new(proxy.client().expect("a client for the proxy"), config);
    let running = host
        .start_with(plugin(crate_name), options)
        .await
        .expect("plugin starts");
    (proxy, host, running)
}

/// Holds the host's next write whose path contains `path` at the fault proxy, runs
/// `change` (a foreign writer, straight to the API server) while it is held, releases it
/// and returns the status the API server answered it with, and the write's position in
/// the proxy's requests.
pub(crate) async fn hold_next_write<F, Fut>(
    proxy: &rekon_tests::proxy::FaultProxy,
    methods: &[http::Method],
    path: &str,
    provoke: impl std::future::Future<Output = ()>,
    change: F,
) -> (u16, usize)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    use rekon_tests::proxy::{Action, Rule};
    let held = proxy.add(
        Rule::new(Action::Hold)
            .methods(methods.iter().cloned())
            .path(path)
            .times(1),
    );
    provoke.await;
    let index = wait_until(
        &format!("the host's write to {path} is held"),
        WAIT,
        || async { proxy.requests().iter().position(|s| s.rule == Some(held)) },
    )
    .await
    .unwrap();
    change().await;
    assert!(proxy.remove(held));
    let status = wait_until("the held write is answered", WAIT, || async {
        proxy.requests().get(index)?.status
    })
    .await
    .unwrap();
    (status, index)
}

/// Issue 18, "update, merge-patch and delete with a stale resourceVersion or uid get 409":
/// the replicas plugin claims the related ConfigMap `t` (mode `claim-update`,
/// `claim-patch` or `claim-delete`) while nobody has; the fault proxy holds that write
/// while a foreign writer claims `t` first — for a delete by deleting `t` and creating it
/// anew, so its resourceVersion and uid both change. The API server must refuse the held
/// write with 409, the host count a conflict and decide again on the fresh state, which
/// leaves the foreign claim alone: no second write, the foreign change kept.
async fn a_stale_write_gets_409_and_is_decided_again(mode: &str) {
    use http::Method;
    let (client, ns) = setup(mode).await;
    let (proxy, _host, running) = through_proxy(
        &client,
        ns.name(),
        "replicas-plugin",
        PluginOptions::default(),
    )
    .await;
    let stats = running.stats().clone();
    let cms: Api<ConfigMap> = ns.api();
    let primary = cms
        .create(
            &PostParams::default(),
            &replicas_primary("p", mode, json!({"target": "t"})),
        )
        .await
        .unwrap();
    idle(&running).await;
    let owner = json!({"apiVersion": "v1", "kind": "ConfigMap", "name": "p",
                       "uid": primary.metadata.uid, "controller": true});
    let target = |data: serde_json::Value| -> ConfigMap {
        serde_json::from_value(json!({
            "metadata": {"name": "t", "ownerReferences": [owner]}, "data": data,
        }))
        .unwrap()
    };
    let conflicts = count(&stats.conflicts);
    let theirs = std::sync::Mutex::new(None);
    // Reconciles so far, the one whose write is held included.
    let reconciles = std::sync::atomic::AtomicU64::new(0);
    let (status, index) = hold_next_write(
        &proxy,
        &[Method::PUT, Method::PATCH, Method::DELETE],
        "/configmaps/t",
        async {
            // `t` appears unclaimed: the plugin claims it.
            cms.create(&PostParams::default(), &target(json!({"value": "old"})))
                .await
                .unwrap();
        },
        || async {
            reconciles.store(
                count(&stats.reconciles),
                std::sync::atomic::Ordering::SeqCst,
            );
            let claimed = if mode == "claim-delete" {
                cms.delete("t", &DeleteParams::default()).await.unwrap();
                cms.create(
                    &PostParams::default(),
                    &target(json!({"value": "old", "claimed-by": "foreign"})),
                )
                .await
                .unwrap()
            } else {
                let mut t = cms.get("t").await.unwrap();
                let data = t.data.get_or_insert_default();
                data.insert("claimed-by".into(), "foreign".into());
                data.insert("foreign".into(), "kept".into());
                cms.replace("t", &PostParams::default(), &t).await.unwrap()
            };
            *theirs.lock().unwrap() = Some(claimed);
        },
    )
    .await;
    assert_eq!(status, 409, "{mode}: the stale write was refused");
    wait_until("the conflict is counted", WAIT, || async {
        (count(&stats.conflicts) > conflicts).then_some(())
    })
    .await
    .unwrap();
    let reconciles = reconciles.into_inner();
    wait_until("the key is decided again", WAIT, || async {
        (count(&stats.reconciles) > reconciles).then_some(())
    })
    .await
    .unwrap();
    idle(&running).await;
    let theirs = theirs.into_inner().unwrap().expect("the foreign claim");
    let now = cms.get("t").await.expect("t exists");
    assert_eq!(
        now.metadata.uid, theirs.metadata.uid,
        "{mode}: t was not deleted"
    );
    assert_eq!(now.data, theirs.data, "{mode}: the foreign claim is kept");
    let again: Vec<_> = proxy.requests()[index + 1..]
        .iter()
        .filter(|s| s.is_write() && s.path.contains("/configmaps/t"))
        .cloned()
        .collect();
    assert!(again.is_empty(), "{mode}: written again blindly: {again:?}");
}

#[tokio::test]
async fn an_update_with_a_stale_resource_version_gets_409_and_is_decided_again() {
    a_stale_write_gets_409_and_is_decided_again("claim-update").await;
}

#[tokio::test]
async fn a_merge_patch_with_a_stale_resource_version_gets_409_and_is_decided_again() {
    a_stale_write_gets_409_and_is_decided_again("claim-patch").await;
}

#[tokio::test]
async fn a_delete_with_a_stale_resource_version_and_uid_gets_409_and_is_decided_again() {
    a_stale_write_gets_409_and_is_decided_again("claim-delete").await;
}

/// Holds the host's next apply whose path contains `held`, provoked by merge-patching
/// the data of the primary `p` with `touch`; while it is held, deletes `p` (background
/// propagation) and waits until every ConfigMap in `gone` is gone (the garbage collector
/// takes the children). Asserts the released apply was accepted — the API server
/// created its object anew — and returns its index in the proxy's requests.
async fn hold_apply_while_the_primary_is_deleted(
    proxy: &rekon_tests::proxy::FaultProxy,
    cms: &Api<ConfigMap>,
    held: &str,
    touch: serde_json::Value,
    gone: &[&str],
) -> usize {
    let (status, index) = hold_next_write(
        proxy,
        &[http::Method::PATCH],
        held,
        async {
            let patch = Patch::Merge(json!({ "data": touch }));
            cms.patch("p", &PatchParams::default(), &patch)
                .await
                .unwrap();
        },
        || async {
            cms.delete("p", &DeleteParams::background()).await.unwrap();
            wait_until(&format!("{gone:?} are gone"), WAIT, || async {
                for name in gone {
                    cms.get_opt(name).await.ok()?.is_none().then_some(())?;
                }
                Some(())
            })
            .await
            .unwrap();
        },
    )
    .await;
    assert!(
        (200..300).contains(&status),
        "the held apply was answered {status}, not a creation"
    );
    index
}

/// Issue 13, the hole the sweep found: an apply carries the resourceVersion of the object
/// the plugin saw, but the API server creates a missing object on apply whatever the
/// resourceVersion (`smoke::a_forced_apply_with_the_version_of_a_deleted_object_creates_
/// it_anew`). The plugin `seal` applies its own primary; the fault proxy holds that apply
/// while a user deletes the primary. Released, the apply re-creates it: the host must
/// delete it again at once and decide again on the cache that shows it gone, so a
/// deleted primary never comes back.
#[tokio::test]
async fn an_apply_racing_the_deletion_of_its_primary_does_not_bring_the_primary_back() {
    use http::Method;
    let (client, ns) = setup("no-resurrect").await;
    let (proxy, _host, running) = through_proxy(
        &client,
        ns.name(),
        "replicas-plugin",
        PluginOptions::default(),
    )
    .await;
    let stats = running.stats().clone();
    let cms: Api<ConfigMap> = ns.api();
    cms.create(
        &PostParams::default(),
        &replicas_primary("p", "seal", json!({"round": "1"})),
    )
    .await
    .unwrap();
    wait_until("the primary is sealed", WAIT, || async {
        let p = cms.get("p").await.ok()?;
        (p.data?.get("sealed")? == "1").then_some(())
    })
    .await
    .unwrap();
    idle(&running).await;
    let index = hold_apply_while_the_primary_is_deleted(
        &proxy,
        &cms,
        "/configmaps/p",
        json!({"round": "2"}),
        &["p"],
    )
    .await;
    idle(&running).await;
    let now = cms.get_opt("p").await.unwrap();
    assert!(
        now.is_none(),
        "the deleted primary came back: {:?}",
        now.map(|p| (p.metadata.uid, p.data))
    );
    let undo: Vec<_> = proxy.requests()[index + 1..]
        .iter()
        .filter(|s| s.method == Method::DELETE && s.path.contains("/configmaps/p"))
        .cloned()
        .collect();
    assert_eq!(
        undo.len(),
        1,
        "the re-created primary is deleted once: {undo:?}"
    );
    assert!(stats.write_errors().get("gone").copied() >= Some(1));
}

/// The same race on a child: the plugin `probe` applies `p-a` and `p-b`; the fault proxy
/// holds the apply of `p-a` while a user deletes the primary and the garbage collector
/// deletes its children. Released, the apply re-creates `p-a` owned by a primary that is
/// gone: the host deletes it again itself (the garbage collector would only get to it
/// later), writes nothing after it, and does not decide on the deleted primary again.
#[tokio::test]
async fn an_apply_racing_the_deletion_of_its_primary_leaves_no_child_behind() {
    let (client, ns) = setup("no-orphan").await;
    let (proxy, _host, running) = through_proxy(
        &client,
        ns.name(),
        "replicas-plugin",
        PluginOptions::default(),
    )
    .await;
    let cms: Api<ConfigMap> = ns.api();
    cms.create(
        &PostParams::default(),
        &replicas_primary("p", "probe", json!({})),
    )
    .await
    .unwrap();
    let both = || async {
        let a = cms.get_opt("p-a").await.ok()??;
        cms.get_opt("p-b").await.ok()??;
        Some(a)
    };
    let first = wait_until("both children exist", WAIT, both).await.unwrap();
    idle(&running).await;
    let index = hold_apply_while_the_primary_is_deleted(
        &proxy,
        &cms,
        "/configmaps/p-a",
        json!({"touched": "yes"}),
        &["p", "p-a", "p-b"],
    )
    .await;
    idle(&running).await;
    let after: Vec<_> = proxy.requests()[index + 1..]
        .iter()
        .filter(|s| s.is_write() && s.path.contains("/configmaps/p"))
        .map(|s| {
            format!(
                "{} {}",
                s.method,
                s.path.split('?').next().unwrap_or_default()
            )
        })
        .collect();
    assert_eq!(
        after,
        vec![format!(
            "DELETE /api/v1/namespaces/{}/configmaps/p-a",
            ns.name()
        )],
        "after the re-creating apply: only its undo (p-b is not applied)"
    );
    let now = cms.get_opt("p-a").await.unwrap();
    assert!(
        now.as_ref()
            .is_none_or(|a| a.metadata.uid == first.metadata.uid),
        "p-a was re-created"
    );
}

/// Issue 18, "the adopting write carries the resourceVersion read": the Service the
/// WebApp adopts is not in its snapshot, so the host reads it, then applies with the
/// resourceVersion it read. The fault proxy holds that apply while a foreign writer
/// changes the Service: the API server must answer 409, not let the apply overwrite;
/// decided again, the host adopts the Service as it now is.
#[tokio::test]
async fn an_adopting_apply_carries_the_resource_version_it_read_and_gets_409_after_a_change() {
    use http::Method;
    let (client, ns) = setup("adopt-rv").await;
    install_crds(&client, "plugins/webapp/crd.yaml").await;
    let services: Api<Service> = ns.api();
    services
        .create(&PostParams::default(), &user_service("shop", 8080, 9090))
        .await
        .unwrap();
    let options = PluginOptions {
        adopt: vec![Gvk::new("", "v1", "Service")],
        ..Default::default()
    };
    let (proxy, _host, running) = through_proxy(&client, ns.name(), "webapp", options).await;
    let apps = webapps(&client, ns.name());
    let (status, _) = hold_next_write(
        &proxy,
        &[Method::PATCH],
        "/services/shop",
        async {
            apps.create(&PostParams::default(), &webapp("shop", 2))
                .await
                .unwrap();
        },
        || async {
            services
                .patch(
                    "shop",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"labels": {"changed": "meanwhile"}}})),
                )
                .await
                .unwrap();
        },
    )
    .await;
    assert_eq!(
        status, 409,
        "the adopting apply was conditioned on what it read"
    );
    let adopted = wait_until("the Service is adopted", WAIT, || async {
        let s = services.get("shop").await.ok()?;
        let owners = s.metadata.owner_references.clone()?;
        owners
            .iter()
            .any(|r| r.controller == Some(true))
            .then_some(s)
    })
    .await
    .unwrap();
    assert_eq!(
        adopted
            .metadata
            .labels
            .unwrap_or_default()
            .get("changed")
            .map(String::as_str),
        Some("meanwhile"),
        "the foreign change is kept"
    );
    assert!(count(&running.stats().conflicts) >= 1);
}

/// Issue 18, "finalizer removal racing a foreign finalizer": once `finalize` succeeded the
/// host removes its finalizer with a merge patch (the whole `finalizers` list, without its
/// own) conditioned on the primary it saw. The API server forbids adding a finalizer to an
/// object being deleted, so the race is with a foreign controller removing its own: the
/// fault proxy holds the host's patch while the foreign finalizer goes. The stale list
/// (which still names it) must get 409, not be written; decided again, the host removes
/// its own from the list as it now is and the object goes.
#[tokio::test]
async fn removing_the_finalizer_races_a_foreign_one_going_with_a_conditioned_patch() {
    use http::Method;
    const FOREIGN: &str = "example.com/foreign";
    let (client, ns) = setup("fin-race").await;
    let (proxy, _host, running) = through_proxy(
        &client,
        ns.name(),
        "stamp-fin-plugin",
        PluginOptions::default(),
    )
    .await;
    let cms: Api<ConfigMap> = ns.api();
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "metadata": {"name": "fin", "labels": {"rekon.dev/stamp": "true"},
                         "finalizers": [FOREIGN]},
        }))
        .unwrap(),
    )
    .await
    .unwrap();
    let finalizers = async || {
        cms.get_opt("fin")
            .await
            .unwrap()
            .map(|c| c.metadata.finalizers.unwrap_or_default())
    };
    wait_until(
        "the host's finalizer is on beside the foreign one",
        WAIT,
        || async { (finalizers().await? == [FOREIGN, "rekon.dev/stamp"]).then_some(()) },
    )
    .await
    .unwrap();
    idle(&running).await;
    // While the primary is deleted, the host's only PATCH of it removes its finalizer.
    let (status, _) = hold_next_write(
        &proxy,
        &[Method::PATCH],
        "/configmaps/fin",
        async {
            cms.delete("fin", &DeleteParams::default()).await.unwrap();
        },
        || async {
            let mut fin = cms.get("fin").await.unwrap();
            fin.metadata
                .finalizers
                .get_or_insert_default()
                .retain(|f| f != FOREIGN);
            cms.replace("fin", &PostParams::default(), &fin)
                .await
                .unwrap();
        },
    )
    .await;
    assert_eq!(
        status, 409,
        "the removal was conditioned on what the host saw"
    );
    wait_until("the primary is gone", WAIT, || async {
        finalizers().await.is_none().then_some(())
    })
    .await
    .unwrap();
    assert!(count(&running.stats().conflicts) >= 1);
}
