//! Stale views on the real API server (issue 13, "Stale-view runs"; issue 18 item 3): the
//! host reaches the API server through the fault proxy, whose watch events of one kind
//! are delayed or held, while the test reads the API server directly, sampling every
//! 100 ms. The host must never decide on a view older than its own writes: no duplicate
//! creates, no repeated deletes, no reconcile before the cache shows the key's writes.

use crate::controller::{WAIT, count, idle, install_crds, plugin, setup, webapp, webapps};
use crate::write_safety::{children, replicas_primary, scale, warnings};
use http::Method;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, Patch, PatchParams, PostParams};
use rekon_host::controller::{self, Controller, Host, PluginOptions};
use rekon_tests::controlplane::wait_until;
use rekon_tests::proxy::{Action, FaultProxy, Rule};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A proxy in front of the API server and a host running `crate_name` through it, scoped
/// to `ns`, with this read-your-writes deadline (and resync period, if set).
async fn start_through_proxy(
    client: &kube::Client,
    ns: &str,
    crate_name: &str,
    read_your_writes_timeout: Duration,
    resync: Option<Duration>,
) -> (FaultProxy, Host, Arc<Controller>) {
    let config = controller::Config {
        read_your_writes_timeout,
        resync_override: resync,
        ..crate::controller::config(ns)
    };
    crate::write_safety::through_proxy_with(client, config, crate_name, PluginOptions::default())
        .await
}

/// The children of the owner `uid` as the host's (lagging) cache shows them.
fn cached_children(host: &Host, uid: &str) -> usize {
    host.stores()
        .store(&rekon_host::contract::Gvk::new("", "v1", "ConfigMap"))
        .map_or(0, |s| s.owned_by(uid).len())
}

/// The default read-your-writes deadline (the one a 12 s delay must pass).
const RYW: Duration = Duration::from_secs(10);

/// Delays the host's ConfigMap watch events by `delay`.
fn delay_config_maps(proxy: &FaultProxy, delay: Duration) {
    proxy.add(
        Rule::new(Action::DelayEvents(delay))
            .path("/configmaps")
            .watches(),
    );
}

/// Creates the `replicas` primary `rs` with `size` and waits (reading the API server)
/// until it has that many children and the controller is idle; returns its uid.
async fn replica_set(cms: &Api<ConfigMap>, running: &Controller, size: usize) -> String {
    let rs = cms
        .create(
            &PostParams::default(),
            &replicas_primary("rs", "generate", json!({"size": size.to_string()})),
        )
        .await
        .unwrap();
    let uid = rs.metadata.uid.unwrap();
    wait_until("the first children", WAIT, || async {
        (children(cms, &uid).await.len() == size).then_some(())
    })
    .await
    .unwrap();
    idle(running).await;
    uid
}

#[tokio::test]
async fn scaling_generate_name_children_under_a_2s_watch_delay_takes_one_delay_not_one_per_object()
{
    let (client, ns) = setup("stale-scale").await;
    let (proxy, _host, running) =
        start_through_proxy(&client, ns.name(), "replicas-plugin", RYW, None).await;
    let delay = Duration::from_secs(2);
    delay_config_maps(&proxy, delay);
    let cms: Api<ConfigMap> = ns.api();
    let uid = replica_set(&cms, &running, 3).await;

    // The scale itself reaches the host one delay late (the primary is a ConfigMap too);
    // then one reconcile writes the five creates. One delay per object would be 5 × 2 s
    // = 10 s; the margin (4 s) is half of that excess, room for a loaded 2-core machine
    // (a reconcile with five creates takes well under a second there) that still tells
    // the two apart.
    let limit = delay + Duration::from_secs(4);
    let (most, took) = scale(&cms, &uid, 3, 8, Duration::from_secs(30)).await;
    println!("generateName scaling 3 → 8 under a {delay:?} watch delay: {took:?}");
    assert!(most <= 8, "{most} children at once (a duplicate create)");
    assert!(took <= limit, "3 → 8 took {took:?}, more than {limit:?}");
    idle(&running).await;
    assert_eq!(children(&cms, &uid).await.len(), 8);
    assert_eq!(
        count(&running.stats().apply_errors),
        0,
        "{:?}",
        running.stats().write_errors()
    );
}

#[tokio::test]
async fn under_a_12s_watch_delay_no_duplicate_child_is_ever_created() {
    let (client, ns) = setup("stale-12s").await;
    // All ConfigMap events come in order, so a key's own echoes arrive before the next
    // change of its primary: nothing would look at the key while its writes are unseen,
    // and no deadline could pass. A resync every half second does look (as a resync or
    // any other watched kind's event would in production), within a second of each
    // write, so the 12 s wait passes the 10 s deadline: the case where deciding on the
    // stale view creates duplicates.
    let resync = Duration::from_millis(500);
    let (proxy, host, running) =
        start_through_proxy(&client, ns.name(), "replicas-plugin", RYW, Some(resync)).await;
    let delay = Duration::from_secs(12);
    assert!(
        delay > RYW,
        "the delay passes the read-your-writes deadline"
    );
    delay_config_maps(&proxy, delay);
    let cms: Api<ConfigMap> = ns.api();
    let uid = replica_set(&cms, &running, 3).await;

    let mut from = 3;
    let mut steps = Vec::new();
    for size in [8, 2, 5] {
        let (most, took) = scale(&cms, &uid, from, size, WAIT).await;
        assert!(
            most <= from.max(size),
            "scaling {from} → {size}: {most} children at once (a duplicate create)"
        );
        steps.push(format!("{from}->{size}: {took:?}"));
        from = size;
    }
    // Settled: whatever the lagging cache shows later must not add or remove a child.
    // Checked until the cache itself shows the 5 (every delayed echo arrived), then idle.
    wait_until("the lagging cache shows the 5 children", WAIT, || async {
        let n = children(&cms, &uid).await.len();
        assert_eq!(
            n, 5,
            "after settling at 5 the API server holds {n} children"
        );
        (cached_children(&host, &uid) == 5).then_some(())
    })
    .await
    .unwrap();
    idle(&running).await;
    assert_eq!(children(&cms, &uid).await.len(), 5);
    println!("generateName scaling under a {delay:?} watch delay: {steps:?}");

    let stats = running.stats();
    let timeouts = count(&stats.own_write_overdue);
    let events: Api<Event> = ns.api();
    let lagging = warnings(&events, "CacheLagging", "rs").await;
    println!(
        "own_write_waits {}, own_write_overdue {timeouts}, CacheLagging events {}",
        count(&stats.own_write_waits),
        lagging.len()
    );
    assert!(
        timeouts > 0,
        "the wait passed the deadline and was reported"
    );
    assert!(
        !lagging.is_empty(),
        "a CacheLagging Warning Event on the primary"
    );
    assert_eq!(lagging[0].type_.as_deref(), Some("Warning"));
}

#[tokio::test]
async fn deletes_under_a_watch_delay_are_not_repeated() {
    let (client, ns) = setup("stale-delete").await;
    let (proxy, host, running) =
        start_through_proxy(&client, ns.name(), "replicas-plugin", RYW, None).await;
    let cms: Api<ConfigMap> = ns.api();
    // Eight children made without a delay; the requests before it do not count.
    let uid = replica_set(&cms, &running, 8).await;
    let delay = Duration::from_secs(2);
    delay_config_maps(&proxy, delay);
    let before = proxy.requests().len();

    let (_, down) = scale(&cms, &uid, 8, 2, WAIT).await;
    let (most, up) = scale(&cms, &uid, 2, 7, WAIT).await;
    assert!(most <= 7, "{most} children at once scaling 2 → 7");
    // Let every delayed echo arrive (the cache shows the 7) and every reconcile they
    // cause finish.
    wait_until("the lagging cache shows the 7 children", WAIT, || async {
        (cached_children(&host, &uid) == 7).then_some(())
    })
    .await
    .unwrap();
    idle(&running).await;
    assert_eq!(children(&cms, &uid).await.len(), 7, "exactly 7 in the end");
    println!("under a {delay:?} watch delay: 8 → 2 in {down:?}, 2 → 7 in {up:?}");

    let deletes: Vec<_> = proxy.requests()[before..]
        .iter()
        .filter(|s| s.method == Method::DELETE && s.path.contains("/configmaps/"))
        .cloned()
        .collect();
    let not_found = deletes.iter().filter(|s| s.status == Some(404)).count();
    assert_eq!(not_found, 0, "DELETEs answered 404: {deletes:#?}");
    assert_eq!(
        deletes.len(),
        6,
        "one DELETE per child removed (8 → 2): {deletes:#?}"
    );
}

#[tokio::test]
async fn a_reconcile_waits_until_the_cache_shows_its_own_writes() {
    let (client, ns) = setup("stale-ryw").await;
    install_crds(&client, "plugins/webapp/crd.yaml").await;
    // A short deadline, so that the hold below also passes it: past the deadline the
    // key must still wait (and the lag be reported), not be decided on the stale view.
    let deadline = Duration::from_secs(2);
    let (proxy, _host, running) =
        start_through_proxy(&client, ns.name(), "webapp", deadline, None).await;
    // The WebApp's own events pass; its Deployment's are held, so the store never shows
    // the Deployment the first reconcile writes.
    let hold = proxy.add(Rule::new(Action::HoldEvents).path("/deployments").watches());
    let stats = running.stats();
    assert_eq!(count(&stats.own_write_waits), 0);

    let apps = webapps(&client, ns.name());
    apps.create(&PostParams::default(), &webapp("web", 2))
        .await
        .unwrap();
    let deployments: Api<Deployment> = ns.api();
    let replicas = |d: Deployment| d.spec.replicas;
    wait_until(
        "the first reconcile writes the Deployment",
        WAIT,
        || async { deployments.get_opt("web").await.ok().flatten() },
    )
    .await
    .unwrap();
    // Let the first reconcile finish (its status write and its echo included).
    wait_until("the first reconcile ends", WAIT, || async {
        (count(&stats.reconciles) >= 1 && running.queue().in_flight() == 0).then_some(())
    })
    .await
    .unwrap();
    let reconciles = count(&stats.reconciles);

    // The primary changes: the host sees that at once (WebApp events are not held), but
    // the key's own Deployment write is not in the cache yet.
    apps.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 3}})),
    )
    .await
    .unwrap();
    let held = Instant::now();
    // Held until three deadlines have passed (each one is counted), checking all along
    // that the plugin is not called and nothing is written on the stale view.
    wait_until("three read-your-writes deadlines pass", WAIT, || async {
        assert_eq!(
            count(&stats.reconciles),
            reconciles,
            "the plugin was called again before the cache showed the key's own Deployment"
        );
        let d = deployments.get("web").await.unwrap();
        assert_eq!(replicas(d), Some(2), "no write decided on the stale view");
        (count(&stats.own_write_overdue) >= 3).then_some(())
    })
    .await
    .unwrap();
    assert!(
        count(&stats.own_write_waits) >= 1,
        "the wait is counted as a deferral"
    );
    assert!(
        count(&stats.own_write_overdue) >= 1,
        "past the deadline the lag is reported"
    );
    println!(
        "held {:?}: reconciles {reconciles}, own_write_waits {}, own_write_overdue {}",
        held.elapsed(),
        count(&stats.own_write_waits),
        count(&stats.own_write_overdue)
    );

    // Released: the cache catches up and the change is reconciled.
    assert!(proxy.remove(hold));
    let released = Instant::now();
    wait_until("the Deployment follows the change", WAIT, || async {
        let d = deployments.get("web").await.ok()?;
        (replicas(d) == Some(3)).then_some(())
    })
    .await
    .unwrap();
    assert!(count(&stats.reconciles) > reconciles);
    println!("reconciled {:?} after the release", released.elapsed());
}

/// Issue 18, "read-your-writes kept across a controller restart": as above, the store
/// never shows the Deployment the first reconcile wrote (its watch events are held). The
/// controller is then restarted as a config change restarts it (a new controller with
/// other options replacing the running one): its first reconcile of the WebApp must still
/// wait for that write — no call, no write — and run once the cache shows it.
#[tokio::test]
async fn a_restarted_controller_still_waits_for_the_writes_of_the_one_it_replaced() {
    let (client, ns) = setup("stale-restart").await;
    install_crds(&client, "plugins/webapp/crd.yaml").await;
    let deadline = Duration::from_secs(2);
    let (proxy, host, running) =
        start_through_proxy(&client, ns.name(), "webapp", deadline, None).await;
    let hold = proxy.add(Rule::new(Action::HoldEvents).path("/deployments").watches());
    let apps = webapps(&client, ns.name());
    apps.create(&PostParams::default(), &webapp("web", 2))
        .await
        .unwrap();
    let deployments: Api<Deployment> = ns.api();
    let stats = running.stats().clone();
    wait_until(
        "the first reconcile wrote the Deployment and ended",
        WAIT,
        || async {
            deployments.get_opt("web").await.ok()??;
            (count(&stats.reconciles) >= 1 && running.queue().in_flight() == 0).then_some(())
        },
    )
    .await
    .unwrap();
    let reconciles = count(&stats.reconciles);
    let overdue = count(&stats.own_write_overdue);
    // Writes are counted at the proxy: a controller that forgot the expectation would
    // reconcile and apply the Deployment again (the reconcile counts alone can be equal
    // by chance when the restarted controller counts from zero).
    let written = proxy.writes_to("/deployments/web");

    // Restarted with other options, as a changed config file restarts it; the new
    // controller queues every primary at once.
    let options = PluginOptions {
        resync: Some(Duration::from_secs(3600)),
        ..PluginOptions::default()
    };
    let prepared = host
        .prepare(plugin("webapp"), options, Some("webapp"))
        .await
        .expect("the new controller gets ready");
    let restarted = host.launch(prepared).await;
    assert!(!Arc::ptr_eq(&restarted, &running), "a new controller");
    apps.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 3}})),
    )
    .await
    .unwrap();
    wait_until(
        "two read-your-writes deadlines pass after the restart",
        WAIT,
        || async {
            assert_eq!(
                count(&restarted.stats().reconciles),
                reconciles,
                "the restarted controller called the plugin before the cache showed the \
             Deployment its predecessor wrote"
            );
            assert_eq!(
                proxy.writes_to("/deployments/web"),
                written,
                "the restarted controller wrote the Deployment before the cache showed \
                 its predecessor's write"
            );
            let d = deployments.get("web").await.unwrap();
            assert_eq!(
                d.spec.replicas,
                Some(2),
                "no write decided on the stale view"
            );
            (count(&restarted.stats().own_write_overdue) >= overdue + 2).then_some(())
        },
    )
    .await
    .unwrap();

    assert!(proxy.remove(hold));
    wait_until("the Deployment follows the change", WAIT, || async {
        let d = deployments.get("web").await.ok()?;
        (d.spec.replicas == Some(3)).then_some(())
    })
    .await
    .unwrap();
    assert!(count(&restarted.stats().reconciles) > reconciles);
}

/// Issue 13 hole 3 on the real API server: a relist (after a `410 Gone` on the re-watch)
/// replaces the host's ConfigMap cache in one step. While the host's ConfigMap watch is
/// held, child `a` of the `census` primary is deleted and `c` created; the watch is cut
/// and its re-watch answered 410, so the host relists, and the relist's second page
/// (500 filler ConfigMaps make two) comes 3 s late. A store applying the first page
/// piece by piece would show `{a, b, c}` meanwhile — a state that never existed — and
/// the reconcile the new `c` triggers would see it. Neither the census plugin
/// (`replicas`, mode `census`, an Event per reconcile naming the children it saw) nor
/// the test sampling the store ever may.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relist_on_the_real_api_server_replaces_the_cache_at_once() {
    use futures::StreamExt as _;
    let (client, ns) = setup("relist").await;
    let cms: Api<ConfigMap> = ns.api();
    let pp = PostParams::default();
    futures::stream::iter(0..500)
        .map(|i| {
            let cms = cms.clone();
            async move {
                let filler =
                    serde_json::from_value(json!({"metadata": {"name": format!("z-{i:03}")}}));
                cms.create(&PostParams::default(), &filler.unwrap())
                    .await
                    .expect("a filler ConfigMap")
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let (proxy, host, running) =
        start_through_proxy(&client, ns.name(), "replicas-plugin", RYW, None).await;
    let census = cms
        .create(&pp, &replicas_primary("census", "census", json!({})))
        .await
        .unwrap();
    let uid = census.metadata.uid.clone().unwrap();
    let child = |name: &str| -> ConfigMap {
        serde_json::from_value(json!({"metadata": {
            "name": name,
            "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "census",
                "uid": uid, "controller": true}],
        }}))
        .unwrap()
    };
    for name in ["census-a", "census-b"] {
        cms.create(&pp, &child(name)).await.unwrap();
    }
    let events: Api<Event> = ns.api();
    let notes = || async {
        crate::write_safety::warnings(&events, "Census", "census")
            .await
            .into_iter()
            .filter_map(|e| e.note)
            .collect::<Vec<_>>()
    };
    wait_until("a census of a and b", WAIT, || async {
        notes()
            .await
            .iter()
            .any(|n| n == "children: census-a,census-b")
            .then_some(())
    })
    .await
    .unwrap();
    idle(&running).await;
    let store = host
        .stores()
        .store(&rekon_host::contract::Gvk::new("", "v1", "ConfigMap"))
        .expect("the ConfigMap store");
    let relists = store.relists();

    let hold = proxy.add(Rule::new(Action::HoldEvents).path("/configmaps").watches());
    cms.delete("census-a", &Default::default()).await.unwrap();
    cms.create(&pp, &child("census-c")).await.unwrap();
    proxy.add(
        Rule::new(Action::Delay(Duration::from_secs(3)))
            .path("continue=")
            .not_watches(),
    );
    proxy.add(
        Rule::new(Action::WatchGone)
            .path("/configmaps")
            .watches()
            .times(1),
    );
    assert_eq!(
        proxy.cut_watches("/configmaps"),
        1,
        "the host's ConfigMap watch"
    );
    proxy.remove(hold);

    // Sample the host's view until the relist completed: never a mix.
    let cached = || {
        let mut names: Vec<String> = store
            .owned_by(&uid)
            .iter()
            .map(|o| o.name().to_owned())
            .collect();
        names.sort();
        names
    };
    let started = Instant::now();
    let mut samples = 0;
    let mut mixes = Vec::new();
    while store.relists() == relists {
        let view = cached();
        if view != ["census-a", "census-b"] && view != ["census-b", "census-c"] {
            mixes.push(view);
        }
        samples += 1;
        assert!(started.elapsed() < WAIT, "no relist within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    wait_until("a census of b and c", WAIT, || async {
        notes()
            .await
            .iter()
            .any(|n| n == "children: census-b,census-c")
            .then_some(())
    })
    .await
    .unwrap();
    idle(&running).await;
    let seen = notes().await;
    let mixed: Vec<&String> = seen
        .iter()
        .filter(|n| n.contains("census-a") && n.contains("census-c"))
        .collect();
    assert!(
        mixes.is_empty() && mixed.is_empty(),
        "states that never existed: the cache showed {:?} during the relist ({samples} \
         samples); reconciles saw {mixed:?}",
        mixes.first()
    );
    assert_eq!(cached(), ["census-b", "census-c"]);
    // The fault happened as planned: a relist in two pages, the second one late.
    let requests = proxy.requests();
    assert!(
        requests
            .iter()
            .any(|s| s.path.contains("continue=") && s.rule.is_some()),
        "the relist had no second page: {requests:?}"
    );
    println!("{samples} samples of the cache during the relist; census notes: {seen:?}");
}
