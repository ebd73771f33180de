//! [`Stores`] against a scripted in-process API (a `tower` service behind a real
//! `kube::Client`): discovery, one watch per kind, and kube-runtime's watcher recovering
//! from `410 Gone` by relisting.

use super::*;
use bytes::Bytes;
use http_body::Frame;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::AtomicUsize;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::mpsc;

/// A response body: some chunks, then either the end or nothing ever again (an open
/// watch with no events).
struct Script {
    chunks: VecDeque<Bytes>,
    hang: bool,
}

impl http_body::Body for Script {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.chunks.pop_front() {
            Some(chunk) => Poll::Ready(Some(Ok(Frame::data(chunk)))),
            None if self.hang => Poll::Pending,
            None => Poll::Ready(None),
        }
    }
}

/// The scripted API: serves core/v1 discovery (ConfigMap, Namespace), ConfigMap lists
/// and watches from queues, and 404 for every other group.
#[derive(Default)]
struct FakeApi {
    discovery_calls: AtomicUsize,
    lists: Mutex<VecDeque<String>>,
    watches: Mutex<VecDeque<Vec<String>>>,
}

impl FakeApi {
    fn respond(&self, req: &http::Request<kube::client::Body>) -> http::Response<Script> {
        let path = req.uri().path();
        let query = req.uri().query().unwrap_or_default();
        let ok = |chunks: Vec<String>, hang| {
            http::Response::builder()
                .status(200)
                .header("content-type", "application/json")
                .body(Script {
                    chunks: chunks.into_iter().map(Bytes::from).collect(),
                    hang,
                })
                .unwrap()
        };
        match path {
            "/api/v1" => {
                self.discovery_calls.fetch_add(1, Ordering::SeqCst);
                ok(vec![DISCOVERY.to_owned()], false)
            }
            "/api/v1/configmaps" if query.contains("watch=true") => {
                match self.watches.lock().unwrap().pop_front() {
                    Some(events) => ok(events, false),
                    None => ok(Vec::new(), true),
                }
            }
            "/api/v1/configmaps" => {
                let mut lists = self.lists.lock().unwrap();
                let body = if lists.len() > 1 {
                    lists.pop_front()
                } else {
                    lists.front().cloned()
                };
                ok(vec![body.unwrap_or_else(|| list("1", &[]))], false)
            }
            _ => {
                self.discovery_calls.fetch_add(1, Ordering::SeqCst);
                let status = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"the server could not find the requested resource","reason":"NotFound","code":404}"#;
                http::Response::builder()
                    .status(404)
                    .header("content-type", "application/json")
                    .body(Script {
                        chunks: VecDeque::from([Bytes::from(status)]),
                        hang: false,
                    })
                    .unwrap()
            }
        }
    }

    fn client(self: &Arc<Self>) -> kube::Client {
        let api = self.clone();
        let service = tower::service_fn(move |req: http::Request<kube::client::Body>| {
            let response = api.respond(&req);
            async move { Ok::<_, Infallible>(response) }
        });
        kube::Client::new(service, "default")
    }
}

const DISCOVERY: &str = r#"{"kind":"APIResourceList","groupVersion":"v1","resources":[
  {"name":"configmaps","singularName":"configmap","namespaced":true,"kind":"ConfigMap","verbs":["get","list","watch"]},
  {"name":"namespaces","singularName":"namespace","namespaced":false,"kind":"Namespace","verbs":["get","list","watch"]}
]}"#;

fn object(name: &str, rv: u64) -> String {
    format!(
        r#"{{"metadata":{{"name":"{name}","namespace":"n","uid":"uid-{name}","resourceVersion":"{rv}","managedFields":[{{"manager":"m"}}]}},"data":{{"rv":"{rv}"}}}}"#
    )
}

fn list(rv: &str, items: &[String]) -> String {
    format!(
        r#"{{"apiVersion":"v1","kind":"ConfigMapList","metadata":{{"resourceVersion":"{rv}"}},"items":[{}]}}"#,
        items.join(",")
    )
}

fn event(kind: &str, object: &str) -> String {
    format!(r#"{{"type":"{kind}","object":{object}}}"#) + "\n"
}

const GONE: &str = r#"{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"too old resource version: 12 (14)","reason":"Expired","code":410}}
"#;

fn config_map() -> Gvk {
    Gvk::new("", "v1", "ConfigMap")
}

/// The next change, described; fails the test if none comes within a minute of (paused)
/// time.
async fn next(rx: &mut mpsc::UnboundedReceiver<Change>) -> String {
    let change = tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .expect("a change within the timeout")
        .expect("the store is alive");
    super::testing::describe(change)
}

#[tokio::test(start_paused = true)]
async fn concurrent_ensures_of_one_kind_open_one_watch() {
    let api = Arc::new(FakeApi::default());
    let stores = Stores::new(api.client());
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let stores = stores.clone();
            tokio::spawn(async move { stores.ensure(&config_map()).await.unwrap() })
        })
        .collect();
    let mut ensured = Vec::new();
    for call in calls {
        ensured.push(call.await.unwrap());
    }
    assert!(ensured.iter().all(|s| Arc::ptr_eq(s, &ensured[0])));
    assert_eq!(stores.watch_count(), 1);
    assert_eq!(api.discovery_calls.load(Ordering::SeqCst), 1);
    let namespaces = stores
        .ensure(&Gvk::new("", "v1", "Namespace"))
        .await
        .unwrap();
    assert!(!namespaces.is_namespaced());
    assert!(ensured[0].is_namespaced());
    assert_eq!(ensured[0].api_resource().plural, "configmaps");
    assert_eq!(stores.watch_count(), 2);
    assert_eq!(
        stores.kinds(),
        [config_map(), Gvk::new("", "v1", "Namespace")]
    );
    stores.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_kind_the_server_does_not_serve_is_an_unknown_kind_error() {
    let api = Arc::new(FakeApi::default());
    let stores = Stores::new(api.client());
    for kind in [
        Gvk::new("example.dev", "v1", "App"),
        Gvk::new("", "v1", "Nope"),
    ] {
        let err = stores.ensure(&kind).await.unwrap_err();
        assert!(matches!(err, Error::UnknownKind { .. }), "{err:?}");
        assert_eq!(err.metric_label(), "unknown_kind");
        assert!(
            err.to_string().contains("CustomResourceDefinition"),
            "{err}"
        );
        assert!(std::error::Error::source(&err).is_some());
    }
    assert_eq!(stores.watch_count(), 0);
    assert!(stores.kinds().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_watch_that_expires_with_410_relists_and_drops_what_vanished() {
    let api = Arc::new(FakeApi::default());
    *api.lists.lock().unwrap() = VecDeque::from([
        list("12", &[object("a", 10), object("b", 11)]),
        list("16", &[object("a", 15), object("c", 14)]),
    ]);
    api.watches
        .lock()
        .unwrap()
        .push_back(vec![event("MODIFIED", &object("a", 13)), GONE.to_owned()]);
    let stores = Stores::new(api.client());
    let store = stores.ensure(&config_map()).await.unwrap();
    let mut rx = store.subscribe();
    let mut seen = Vec::new();
    while seen.iter().filter(|c| *c == "relisted").count() < 2 {
        seen.push(next(&mut rx).await);
    }
    assert_eq!(
        seen,
        [
            "applied a@10",
            "applied b@11",
            "relisted",
            "applied a@13",
            "applied a@15",
            "applied c@14",
            "deleted b",
            "relisted",
        ]
    );
    assert_eq!(store.relists(), 1);
    assert_eq!(store.watch_restarts(), 1);
    assert_eq!(stores.watch_count(), 1);
    let a = store.get(Some("n"), "a").unwrap();
    assert_eq!(a.to_value()["data"]["rv"], "15");
    assert!(a.to_value()["metadata"].get("managedFields").is_none());
    assert!(store.get(Some("n"), "b").is_none());
    stores.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn the_cache_view_answers_for_ensured_kinds_only() {
    let api = Arc::new(FakeApi::default());
    *api.lists.lock().unwrap() = VecDeque::from([list("5", &[object("a", 4)])]);
    let stores = Stores::new(api.client());
    let view: &dyn CacheView = &stores;
    assert_eq!(view.get(&config_map(), Some("n"), "a"), None);
    let store = stores.ensure(&config_map()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(60), store.synced())
        .await
        .expect("synced");
    let json = view.get(&config_map(), Some("n"), "a").unwrap();
    assert!(
        json.starts_with(r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":"#),
        "{json}"
    );
    assert_eq!(view.list(&config_map(), None, &Selector::default()), [json]);
    assert!(
        view.list(&Gvk::new("", "v1", "Secret"), None, &Selector::default())
            .is_empty()
    );
    stores.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_stops_the_watches_and_refuses_new_kinds() {
    let api = Arc::new(FakeApi::default());
    let stores = Stores::new(api.client());
    let store = stores.ensure(&config_map()).await.unwrap();
    stores.shutdown().await;
    let err = stores
        .ensure(&Gvk::new("", "v1", "Namespace"))
        .await
        .unwrap_err();
    assert_eq!(err.metric_label(), "shut_down");
    // The store stays readable; the task holding it is gone.
    assert_eq!(
        Arc::strong_count(&store),
        2,
        "the map and this test hold it"
    );
}
