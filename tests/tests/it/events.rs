//! Events against the real API server: a repeated identical event shows as one
//! events.k8s.io Event whose `series` counts the repeats, and a fenced recorder writes
//! neither the Event nor its series.

use crate::controller::setup;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::events::v1::Event as KubeEvent;
use kube::api::{Api, ListParams, PostParams};
use rekon_host::contract::{Event, EventType};
use rekon_host::fence::Fence;
use rekon_host::write::events::{self, Recorder};
use rekon_tests::controlplane::wait_until;
use serde_json::json;
use std::time::Duration;
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(30);

fn warning(note: &str) -> Event {
    Event {
        event_type: EventType::Warning,
        reason: "QuotaReapplied".into(),
        note: note.into(),
    }
}

/// The Events in `namespace` regarding `name`, by note.
async fn events_about(api: &Api<KubeEvent>, name: &str) -> Vec<KubeEvent> {
    let mut all = api
        .list(&ListParams::default())
        .await
        .expect("listing events")
        .items;
    all.retain(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name));
    all.sort_by(|a, b| a.note.cmp(&b.note));
    all
}

fn series_count(e: &KubeEvent) -> Option<i32> {
    e.series.as_ref().map(|s| s.count)
}

#[tokio::test]
async fn a_repeated_event_is_one_event_whose_series_counts_the_repeats() {
    crate::logs();
    let (client, ns) = setup("events").await;
    let cm: ConfigMap = serde_json::from_value(json!({ "metadata": { "name": "quota" } })).unwrap();
    let cm = ns
        .api::<ConfigMap>()
        .create(&PostParams::default(), &cm)
        .await
        .unwrap();
    let regarding = serde_json::to_value(&cm).unwrap();
    let regarding = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": regarding["metadata"].clone(),
    });
    let fence = Fence::leased(Duration::from_secs(600));
    fence.renewed(Instant::now());
    let recorder = Recorder::new(client.clone(), "test").guarded(fence.clone(), WAIT);
    let again = warning("the quota was deleted by hand; applied it again");
    for _ in 0..3 {
        recorder
            .record("quota-guard", &regarding, &again)
            .await
            .unwrap();
    }
    recorder
        .record("quota-guard", &regarding, &warning("another note"))
        .await
        .unwrap();

    let api: Api<KubeEvent> = Api::namespaced(client.clone(), ns.name());
    let seen = wait_until("two Events, one with a series", WAIT, || async {
        let evs = events_about(&api, "quota").await;
        (evs.len() == 2 && evs.iter().any(|e| series_count(e).is_some())).then_some(evs)
    })
    .await
    .unwrap();
    let [other, repeated] = seen.as_slice() else {
        unreachable!()
    };
    assert_eq!(other.note.as_deref(), Some("another note"));
    assert_eq!(
        series_count(other),
        None,
        "a single occurrence has no series"
    );
    assert_eq!(repeated.note.as_deref(), Some(again.note.as_str()));
    let series = repeated.series.as_ref().unwrap();
    // The first repeat writes count 2 at once; the third occurrence, within
    // SERIES_INTERVAL of it, is counted for the next write.
    assert_eq!(series.count, 2, "{repeated:?}");
    assert!(series.last_observed_time.0 >= repeated.event_time.as_ref().unwrap().0);
    assert!(events::SERIES_INTERVAL > Duration::from_secs(1));

    // Fenced: the next repeat writes nothing and says why.
    fence.revoke();
    let err = recorder
        .record("quota-guard", &regarding, &warning("another note"))
        .await
        .unwrap_err();
    assert_eq!(err.metric_label(), "fenced");
    let after = events_about(&api, "quota").await;
    assert_eq!(after.len(), 2);
    assert_eq!(series_count(&after[0]), None, "{after:?}");
}

#[tokio::test]
async fn events_of_a_cluster_scoped_primary_go_to_default_and_repeat_as_a_series() {
    let (client, ns) = setup("events-ns").await;
    let regarding = json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": { "name": ns.name(), "uid": format!("uid-{}", ns.name()) },
    });
    let recorder = Recorder::new(client.clone(), "test");
    let note = warning(&format!("namespace {} relabelled", ns.name()));
    for _ in 0..2 {
        recorder
            .record("quota-guard", &regarding, &note)
            .await
            .unwrap();
    }
    let api: Api<KubeEvent> = Api::namespaced(client.clone(), "default");
    let evs = wait_until("one Event with a series in default", WAIT, || async {
        let evs = events_about(&api, ns.name()).await;
        (evs.len() == 1 && series_count(&evs[0]).is_some()).then_some(evs)
    })
    .await
    .unwrap();
    let regarding = evs[0].regarding.as_ref().unwrap();
    assert_eq!(regarding.kind.as_deref(), Some("Namespace"));
    assert_eq!(regarding.namespace, None);
    assert_eq!(series_count(&evs[0]), Some(2));
}
