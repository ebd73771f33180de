//! Native unit tests: build a request from fixtures, call `reconcile`, look at the output.

use rekon_sdk::k8s_openapi::api::core::v1::ConfigMap;
use rekon_sdk::testing::{self, Obj};
use serde_json::json;

use super::*;

fn primary(spec: serde_json::Value) -> Obj {
    testing::object::<{{kind}}>("hello")
        .ns("default")
        .uid("u-1")
        .generation(1)
        .spec(spec)
}

#[test]
fn the_config_map_holds_the_message_and_the_primary_is_ready() {
    let req = testing::request(primary(json!({ "message": "hi" })));
    let out = {{kind}}Plugin::reconcile(req).expect("reconcile succeeds");
    let config_map = out.applied_named::<ConfigMap>("hello");
    assert_eq!(config_map.metadata.namespace.as_deref(), Some("default"));
    assert_eq!(config_map.data.unwrap()["message"], "hi");
    testing::assert_condition(&out, "Ready", true, "ConfigMapApplied");
}

#[test]
fn a_primary_without_a_message_is_refused_permanently_naming_the_field() {
    let req = testing::request(primary(json!({})));
    let err = {{kind}}Plugin::reconcile(req).unwrap_err();
    assert!(!err.is_transient());
    assert!(err.message().contains("missing field `message`"), "{err}");
}

#[test]
fn metadata_declares_the_primary_and_the_owned_config_maps() {
    let m = {{kind}}Plugin::metadata();
    assert_eq!((m.name.as_str(), m.primary.to_string().as_str()), ("{{name}}", "{{api_version}} {{kind}}"));
    assert_eq!(m.writes, [rekon_sdk::Gvk::of::<ConfigMap>()]);
}
