//! Native unit tests of the Bucket teardown.

use rekon_sdk::testing::{self, Obj, assert_condition, assert_event};
use rekon_sdk::{EventType, Gvk, Mapping, Output, Plugin};
use serde_json::json;

use super::*;

fn bucket() -> Obj {
    testing::object::<Bucket>("photos")
        .ns("media")
        .uid("uid-photos")
        .rv("30")
        .generation(1)
        .spec(json!({ "location": "eu-west" }))
}

fn deleting() -> Obj {
    bucket().deleting("2026-01-01T00:00:00Z")
}

fn cleanup(owner: &Obj, data: serde_json::Value) -> Obj {
    testing::object::<ConfigMap>("photos-cleanup")
        .ns("media")
        .rv("31")
        .owned_by(owner)
        .data(data)
}

fn finalize(req: Request) -> Output {
    Teardown::finalize(req).expect("finalize succeeds")
}

#[test]
fn a_live_bucket_is_ready_and_nothing_is_written() {
    let out = Teardown::reconcile(testing::request(bucket())).unwrap();
    testing::assert_no_mutations(&out);
    let ready = assert_condition(&out, "Ready", true, "Provisioned");
    assert_eq!(ready.message, "bucket photos in eu-west");
    assert!(out.requeue().is_none() && !out.prunes());
}

#[test]
fn the_location_defaults_to_local() {
    let b = testing::object::<Bucket>("scratch").ns("media");
    let out = Teardown::reconcile(testing::request(&b)).unwrap();
    assert_eq!(
        out.condition_of("Ready").unwrap().message,
        "bucket scratch in local"
    );
}

#[test]
fn deleting_requests_cleanup_and_holds_the_finalizer() {
    let out = finalize(testing::request(deleting()));
    assert_eq!(
        testing::summary(&out),
        "  apply v1 ConfigMap media/photos-cleanup\n"
    );
    let request = out.applied_named::<ConfigMap>("photos-cleanup");
    assert_eq!(
        request.data.unwrap().into_iter().collect::<Vec<_>>(),
        [
            ("bucket".to_owned(), "photos".to_owned()),
            ("location".to_owned(), "eu-west".to_owned())
        ]
    );
    assert_eq!(out.requeue(), Some(POLL), "called again while pending");
    assert_event(&out, EventType::Normal, "CleanupPending");
}

#[test]
fn a_pending_cleanup_is_requested_again_unchanged() {
    let b = deleting();
    let first = finalize(testing::request(&b));
    let pending = cleanup(&b, json!({ "bucket": "photos", "location": "eu-west" }));
    let again = finalize(testing::request(&b).with_related(pending));
    assert_eq!(
        again, first,
        "idempotent: the same request, event and requeue"
    );
}

#[test]
fn a_done_other_than_true_is_still_pending() {
    let b = deleting();
    let out = finalize(testing::request(&b).with_related(cleanup(&b, json!({ "done": "false" }))));
    assert_eq!(out.requeue(), Some(POLL));
}

#[test]
fn once_the_cleanup_is_done_finalize_lets_the_bucket_go() {
    let b = deleting();
    let done = cleanup(&b, json!({ "bucket": "photos", "done": "true" }));
    let out = finalize(testing::request(&b).with_related(done));
    assert_eq!(
        out,
        Output::new(),
        "no write, no requeue: the host removes the finalizer"
    );
}

#[test]
fn the_plugin_never_applies_done_so_it_cannot_undo_the_cleanup() {
    let out = finalize(testing::request(deleting()));
    let data = out
        .applied_named::<ConfigMap>("photos-cleanup")
        .data
        .unwrap();
    assert!(!data.contains_key("done"));
}

#[test]
fn metadata_declares_the_finalizer_and_owns_configmaps() {
    let m = Teardown::metadata();
    assert_eq!(
        (m.name.as_str(), m.primary.clone()),
        ("teardown", Gvk::new("rekon.dev", "v1alpha1", "Bucket"))
    );
    assert_eq!(m.finalizer.as_deref(), Some(FINALIZER));
    assert_eq!(m.watches.len(), 1);
    assert_eq!(
        (m.watches[0].kind.to_string(), m.watches[0].mapping.clone()),
        ("v1 ConfigMap".to_owned(), Mapping::OwnerReference)
    );
    assert_eq!(m.writes, [Gvk::new("", "v1", "ConfigMap")]);
}
