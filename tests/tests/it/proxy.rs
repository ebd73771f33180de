//! The fault proxy (`rekon_tests::proxy`) against the real API server: forwarding,
//! injected answers, delayed, held and cut watches, black holes, partitions, write counts.
//!
//! Real time is used sparingly: "not before" checks wait about a second, "eventually"
//! checks have generous upper bounds (the test machine is loaded).

use crate::controller::{WAIT, setup};
use futures::{Stream, StreamExt};
use http::{Method, StatusCode};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::ResourceExt;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::watcher;
use rekon_tests::controlplane::{TestNamespace, wait_until};
use rekon_tests::proxy::{Action, FaultProxy, Rule};
use serde_json::json;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

fn config_map(name: &str) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "data": {"key": name},
    }))
    .unwrap()
}

fn secret(name: &str) -> Secret {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "stringData": {"key": name},
    }))
    .unwrap()
}

async fn proxied(prefix: &str) -> (kube::Client, TestNamespace, FaultProxy, kube::Client) {
    crate::logs();
    let (client, ns) = setup(prefix).await;
    let proxy = FaultProxy::start(client.clone())
        .await
        .expect("the proxy starts");
    let through = proxy.client().expect("a client for the proxy");
    (client, ns, proxy, through)
}

/// The current resourceVersion of ConfigMaps in the namespace (read directly).
async fn list_version(api: &Api<ConfigMap>) -> String {
    api.list_metadata(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap()
}

/// Forwards the names of ADDED ConfigMaps from a watch, with when they arrived.
fn added_names(
    stream: impl Stream<Item = kube::Result<WatchEvent<ConfigMap>>> + Send + 'static,
) -> mpsc::UnboundedReceiver<(String, Instant)> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            if let Ok(WatchEvent::Added(cm)) = event
                && tx.send((cm.name_any(), Instant::now())).is_err()
            {
                return;
            }
        }
    });
    rx
}

/// Receives `n` names, each within `WAIT`.
async fn receive(
    rx: &mut mpsc::UnboundedReceiver<(String, Instant)>,
    n: usize,
) -> Vec<(String, Instant)> {
    let mut got = Vec::new();
    for _ in 0..n {
        let next = tokio::time::timeout(WAIT, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("only {got:?} arrived within {WAIT:?}"))
            .expect("the watch stays open");
        got.push(next);
    }
    got
}

fn names(got: &[(String, Instant)]) -> Vec<&str> {
    got.iter().map(|(n, _)| n.as_str()).collect()
}

#[tokio::test]
async fn a_client_through_the_proxy_reads_and_writes_like_a_direct_one() {
    let (client, ns, proxy, through) = proxied("proxy-rw").await;
    let direct: Api<ConfigMap> = Api::namespaced(client, ns.name());
    let via: Api<ConfigMap> = Api::namespaced(through, ns.name());

    via.create(&PostParams::default(), &config_map("a"))
        .await
        .unwrap();
    assert_eq!(direct.get("a").await.unwrap().data, config_map("a").data);
    direct
        .create(&PostParams::default(), &config_map("b"))
        .await
        .unwrap();
    let listed: BTreeSet<String> = via
        .list(&ListParams::default())
        .await
        .unwrap()
        .into_iter()
        .map(|cm| cm.name_any())
        .collect();
    assert_eq!(listed, BTreeSet::from(["a".to_owned(), "b".to_owned()]));
    via.patch(
        "b",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"key": "patched"}})),
    )
    .await
    .unwrap();
    assert_eq!(
        direct.get("b").await.unwrap().data.unwrap()["key"],
        "patched"
    );
    // The API server's own errors come through as they are.
    let missing = via.get("absent").await.unwrap_err();
    assert!(
        matches!(&missing, kube::Error::Api(s) if s.code == 404 && s.reason == "NotFound"),
        "{missing:?}"
    );
    via.delete("a", &DeleteParams::default()).await.unwrap();
    assert!(direct.get_opt("a").await.unwrap().is_none());

    let seen = proxy.requests();
    let post = seen
        .iter()
        .find(|s| s.method == Method::POST)
        .expect("the create is logged");
    assert!(
        post.path
            .contains(&format!("/namespaces/{}/configmaps", ns.name()))
    );
    assert_eq!(
        (post.status, post.rule, post.forwarded),
        (Some(201), None, true)
    );
    assert!(seen.iter().all(|s| s.rule.is_none() && s.forwarded));
    assert_eq!(seen.len(), 5, "{seen:#?}");
}

#[tokio::test]
async fn an_injected_409_is_seen_by_the_client_and_the_next_request_passes() {
    let (client, ns, proxy, through) = proxied("proxy-409").await;
    let direct: Api<ConfigMap> = Api::namespaced(client, ns.name());
    let via: Api<ConfigMap> = Api::namespaced(through, ns.name());
    let rule = proxy.add(
        Rule::new(Action::status(StatusCode::CONFLICT))
            .writes()
            .path("/configmaps")
            .times(1),
    );
    // Reads do not match the rule and do not use it up.
    assert!(via.get_opt("c").await.unwrap().is_none());

    let err = via
        .create(&PostParams::default(), &config_map("c"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 409 && s.reason == "Conflict"),
        "{err:?}"
    );
    assert!(
        direct.get_opt("c").await.unwrap().is_none(),
        "the injected answer was not forwarded"
    );
    via.create(&PostParams::default(), &config_map("c"))
        .await
        .expect("the second create passes");
    assert!(direct.get_opt("c").await.unwrap().is_some());

    let posts: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|s| s.method == Method::POST)
        .map(|s| (s.status, s.rule, s.forwarded))
        .collect();
    assert_eq!(
        posts,
        [(Some(409), Some(rule), false), (Some(201), None, true)]
    );
    assert_eq!(proxy.writes_to("/configmaps"), 1);
}

#[tokio::test]
async fn an_injected_503_is_retried_away_by_a_default_kube_client() {
    let (_client, ns, proxy, through) = proxied("proxy-503").await;
    let via: Api<ConfigMap> = Api::namespaced(through, ns.name());
    let rule = proxy.add(
        Rule::new(Action::status(StatusCode::SERVICE_UNAVAILABLE))
            .path("/configmaps/absent")
            .times(1),
    );
    // kube's client retries 429, 503 and 504 itself (`Config::default_retry`).
    assert!(via.get_opt("absent").await.unwrap().is_none());
    let answers: Vec<_> = proxy
        .requests()
        .into_iter()
        .map(|s| (s.status, s.rule))
        .collect();
    assert_eq!(answers, [(Some(503), Some(rule)), (Some(404), None)]);
}

#[tokio::test]
async fn delayed_watch_events_arrive_after_the_delay_and_in_order() {
    const DELAY: Duration = Duration::from_secs(2);
    let (client, ns, proxy, through) = proxied("proxy-delay").await;
    let direct: Api<ConfigMap> = Api::namespaced(client, ns.name());
    let via: Api<ConfigMap> = Api::namespaced(through, ns.name());
    let version = list_version(&direct).await;
    let rule = proxy.add(
        Rule::new(Action::DelayEvents(DELAY))
            .watches()
            .path("/configmaps"),
    );
    let mut rx = added_names(via.watch(&WatchParams::default(), &version).await.unwrap());

    let began = Instant::now();
    for name in ["first", "second", "third"] {
        direct
            .create(&PostParams::default(), &config_map(name))
            .await
            .unwrap();
    }
    let early = tokio::time::timeout(Duration::from_secs(1), rx.recv()).await;
    assert!(early.is_err(), "an event arrived within 1 s: {early:?}");
    let got = receive(&mut rx, 3).await;
    assert_eq!(names(&got), ["first", "second", "third"]);
    // Each event reached the proxy after `began` and was held back DELAY from then.
    let first_after = got[0].1 - began;
    assert!(
        first_after >= DELAY,
        "the first event came after {first_after:?}"
    );
    let watch = proxy
        .requests()
        .into_iter()
        .find(|s| s.watch)
        .expect("the watch is logged");
    assert_eq!((watch.status, watch.rule), (Some(200), Some(rule)));

    // Without the rule, events flow at once again (well within the old delay).
    proxy.remove(rule);
    let before = Instant::now();
    direct
        .create(&PostParams::default(), &config_map("fourth"))
        .await
        .unwrap();
    let got = receive(&mut rx, 1).await;
    assert_eq!(names(&got), ["fourth"]);
    assert!(got[0].1 - before < Duration::from_secs(30));
}

#[tokio::test]
async fn held_watch_events_are_released_in_order_when_the_rule_is_removed() {
    let (client, ns, proxy, through) = proxied("proxy-hold").await;
    let direct: Api<ConfigMap> = Api::namespaced(client, ns.name());
    let via: Api<ConfigMap> = Api::namespaced(through, ns.name());
    let version = list_version(&direct).await;
    // The watch starts before the rule: holding applies to streams in flight.
    let mut rx = added_names(via.watch(&WatchParams::default(), &version).await.unwrap());
    let rule = proxy.add(Rule::new(Action::HoldEvents).watches().path("/configmaps"));
    for name in ["one", "two", "three", "four"] {
        direct
            .create(&PostParams::default(), &config_map(name))
            .await
            .unwrap();
    }
    let early = tokio::time::timeout(Duration::from_millis(1500), rx.recv()).await;
    assert!(early.is_err(), "a held event arrived: {early:?}");
    assert!(proxy.remove(rule));
    let got = receive(&mut rx, 4).await;
    assert_eq!(names(&got), ["one", "two", "three", "four"]);
}

#[tokio::test]
async fn events_held_when_a_watch_is_cut_come_again_on_the_reopened_watch() {
    let (client, ns, proxy, through) = proxied("proxy-cut-held").await;
    let direct: Api<ConfigMap> = Api::namespaced(client, ns.name());
    let via: Api<ConfigMap> = Api::namespaced(through, ns.name());
    let version = list_version(&direct).await;
    let mut rx = added_names(via.watch(&WatchParams::default(), &version).await.unwrap());
    direct
        .create(&PostParams::default(), &config_map("seen"))
        .await
        .unwrap();
    assert_eq!(names(&receive(&mut rx, 1).await), ["seen"]);

    let hold = proxy.add(Rule::new(Action::HoldEvents).watches());
    for name in ["held-1", "held-2"] {
        direct
            .create(&PostParams::default(), &config_map(name))
            .await
            .unwrap();
    }
    let early = tokio::time::timeout(Duration::from_secs(1), rx.recv()).await;
    assert!(early.is_err(), "a held event arrived: {early:?}");
    assert_eq!(proxy.cut_watches("/configmaps"), 1);
    proxy.remove(hold);
    // The cut stream ends without delivering what it held.
    let end = tokio::time::timeout(WAIT, rx.recv()).await.unwrap();
    assert!(end.is_none(), "the cut watch delivered {end:?}");

    // Re-watching from the last version seen brings them.
    let last = direct
        .get("seen")
        .await
        .unwrap()
        .resource_version()
        .unwrap();
    let mut rx = added_names(via.watch(&WatchParams::default(), &last).await.unwrap());
    assert_eq!(names(&receive(&mut rx, 2).await), ["held-1", "held-2"]);
}

#[tokio::test]
async fn a_cut_watch_is_reopened_by_the_watcher_and_misses_nothing() {
    let (client, ns, proxy, through) = proxied("proxy-cut").await;
    let direct: Api<ConfigMap> = Api::namespaced(client, ns.name());
    let via: Api<ConfigMap> = Api::namespaced(through, ns.name());
    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    let inits = Arc::new(Mutex::new(0));
    let watching = {
        let (seen, inits) = (seen.clone(), inits.clone());
        tokio::spawn(async move {
            let mut events = std::pin::pin!(watcher(via, watcher::Config::default()));
            while let Some(event) = events.next().await {
                match event {
                    Ok(watcher::Event::Apply(cm) | watcher::Event::InitApply(cm)) => {
                        seen.lock().unwrap().insert(cm.name_any());
                    }
                    Ok(watcher::Event::Init) => *inits.lock().unwrap() += 1,
                    _ => {}
                }
            }
        })
    };
    let has = |names: Vec<String>| {
        let seen = seen.clone();
        move || {
            let ok = names.iter().all(|n| seen.lock().unwrap().contains(n));
            async move { ok.then_some(()) }
        }
    };
    direct
        .create(&PostParams::default(), &config_map("before"))
        .await
        .unwrap();
    wait_until(
        "the watcher sees `before`",
        WAIT,
        has(vec!["before".into()]),
    )
    .await
    .unwrap();
    // The watcher has listed and is watching now.
    wait_until("the watch is open", WAIT, || async {
        (proxy.cut_watches("/configmaps") == 1).then_some(())
    })
    .await
    .unwrap();
    let during: Vec<String> = (0..5).map(|i| format!("during-{i}")).collect();
    for name in &during {
        direct
            .create(&PostParams::default(), &config_map(name))
            .await
            .unwrap();
    }
    wait_until(
        "the watcher sees every object made around the cut",
        WAIT,
        has(during),
    )
    .await
    .unwrap();

    let requests = proxy.requests();
    let watches = requests.iter().filter(|s| s.watch).count();
    let lists = requests.iter().filter(|s| !s.watch).count();
    assert!(watches >= 2, "the watch was reopened: {requests:#?}");
    // Reopened from its resourceVersion: no relist.
    assert_eq!((lists, *inits.lock().unwrap()), (1, 1), "{requests:#?}");
    watching.abort();
}

#[tokio::test]
async fn a_black_holed_request_is_ended_by_the_client_timeout() {
    const TIMEOUT: Duration = Duration::from_secs(2);
    let (_client, ns, proxy, _) = proxied("proxy-hole").await;
    let mut config = proxy.config().unwrap();
    config.read_timeout = Some(TIMEOUT);
    let short = kube::Client::try_from(config).unwrap();
    let via: Api<ConfigMap> = Api::namespaced(short, ns.name());
    let rule = proxy.add(Rule::new(Action::BlackHole).path("/configmaps/absent"));

    let began = Instant::now();
    let result = tokio::time::timeout(WAIT, via.get_opt("absent"))
        .await
        .expect("the client's timeout, not the test's, ends the request");
    let took = began.elapsed();
    assert!(result.is_err(), "{result:?}");
    assert!(
        took >= TIMEOUT - Duration::from_millis(100),
        "ended after {took:?}"
    );
    let seen = proxy.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        (seen[0].status, seen[0].rule, seen[0].forwarded),
        (None, Some(rule), false)
    );

    assert!(proxy.remove(rule));
    // A client without the short timeout: a loaded API server must not fail the test.
    let via: Api<ConfigMap> = Api::namespaced(proxy.client().unwrap(), ns.name());
    assert!(via.get_opt("absent").await.unwrap().is_none());
    assert_eq!(proxy.requests()[1].status, Some(404));
}

#[tokio::test]
async fn a_blocked_proxy_stalls_watches_and_black_holes_requests_until_lifted() {
    let (client, ns, proxy, through) = proxied("proxy-block").await;
    let direct: Api<ConfigMap> = Api::namespaced(client, ns.name());
    let via: Api<ConfigMap> = Api::namespaced(through, ns.name());
    let mut config = proxy.config().unwrap();
    config.read_timeout = Some(Duration::from_secs(1));
    let short: Api<ConfigMap> = Api::namespaced(kube::Client::try_from(config).unwrap(), ns.name());
    let version = list_version(&direct).await;
    let mut rx = added_names(via.watch(&WatchParams::default(), &version).await.unwrap());

    proxy.block_all(true);
    direct
        .create(&PostParams::default(), &config_map("partitioned"))
        .await
        .unwrap();
    assert!(short.get_opt("partitioned").await.is_err());
    let early = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await;
    assert!(early.is_err(), "an event crossed the partition: {early:?}");

    proxy.block_all(false);
    let got = receive(&mut rx, 1).await;
    assert_eq!(names(&got), ["partitioned"]);
    assert!(via.get_opt("partitioned").await.unwrap().is_some());
    let statuses: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|s| !s.watch)
        .map(|s| s.status)
        .collect();
    assert_eq!(statuses, [None, Some(200)]);
}

#[tokio::test]
async fn writes_are_counted_per_path() {
    let (_client, ns, proxy, through) = proxied("proxy-count").await;
    let maps: Api<ConfigMap> = Api::namespaced(through.clone(), ns.name());
    let secrets: Api<Secret> = Api::namespaced(through, ns.name());
    let pp = PostParams::default();
    for name in ["m1", "m2", "m3"] {
        maps.create(&pp, &config_map(name)).await.unwrap();
    }
    maps.patch(
        "m1",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"key": "x"}})),
    )
    .await
    .unwrap();
    for name in ["s1", "s2"] {
        secrets.create(&pp, &secret(name)).await.unwrap();
    }
    secrets
        .delete("s1", &DeleteParams::default())
        .await
        .unwrap();
    // Not counted: reads, a write the API server refused, an injected failure.
    maps.list(&ListParams::default()).await.unwrap();
    maps.get("m2").await.unwrap();
    assert!(maps.create(&pp, &config_map("m1")).await.is_err());
    let rule = proxy.add(
        Rule::new(Action::status(StatusCode::INTERNAL_SERVER_ERROR))
            .writes()
            .times(1),
    );
    let err = maps.create(&pp, &config_map("m4")).await.unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 500),
        "{err:?}"
    );
    let last = proxy.requests().pop().unwrap();
    assert_eq!(
        (last.status, last.rule, last.forwarded),
        (Some(500), Some(rule), false)
    );

    assert_eq!(proxy.writes_to("/configmaps"), 4);
    assert_eq!(proxy.writes_to("/secrets"), 3);
    assert_eq!(proxy.writes_to(&format!("/namespaces/{}/", ns.name())), 7);
    assert_eq!(proxy.writes_to("/secrets/s1"), 1);
    assert_eq!(proxy.writes_to("/deployments"), 0);
}

#[tokio::test]
async fn a_kubeconfig_written_by_the_proxy_reaches_the_api_server() {
    let (_client, ns, proxy, _) = proxied("proxy-kubeconfig").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    proxy.write_kubeconfig(&path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&path).unwrap(),
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(config.cluster_url.to_string(), format!("{}/", proxy.url()));
    let api: Api<ConfigMap> = Api::namespaced(kube::Client::try_from(config).unwrap(), ns.name());
    api.create(&PostParams::default(), &config_map("k"))
        .await
        .unwrap();
    assert_eq!(proxy.writes_to("/configmaps"), 1);
    proxy.stop().await;
    // Stopped: nothing listens any more.
    let err = tokio::time::timeout(WAIT, api.get("k")).await.unwrap();
    assert!(err.is_err(), "{err:?}");
}
