//! Native unit tests: build a request from fixtures, call `reconcile`, look at the output.

use rekon_sdk::testing::{self, Obj};

use super::*;

fn primary() -> Obj {
    testing::object::<{{kind}}>("hello"){{ns_builder}}.uid("u-1").rv("1")
}

#[test]
fn a_labelled_{{singular}}_gets_a_config_map_and_prunes_the_rest() {
    let req = testing::request(primary().label(LABEL, ENABLED));
    let out = {{kind}}Decorator::reconcile(req).expect("reconcile succeeds");
    let config_map = out.applied_named::<ConfigMap>("hello-{{name}}");
    assert_eq!(config_map.metadata.namespace.as_deref(), Some("{{child_ns}}"));
    assert_eq!(config_map.data.unwrap()["{{singular}}"], "hello");
    assert!(out.prunes(), "children no longer applied are deleted");
}

#[test]
fn an_unlabelled_{{singular}}_gets_nothing_and_loses_what_it_had() {
    let out = {{kind}}Decorator::reconcile(testing::request(primary())).expect("reconcile succeeds");
    testing::assert_no_mutations(&out);
    assert!(out.prunes(), "the host deletes the owned children");
}

#[test]
fn metadata_declares_the_primary_and_the_owned_config_maps() {
    let m = {{kind}}Decorator::metadata();
    assert_eq!((m.name.as_str(), m.primary.to_string().as_str()), ("{{name}}", "{{api_version}} {{kind}}"));
    assert_eq!(m.writes, [rekon_sdk::Gvk::of::<ConfigMap>()]);
}
