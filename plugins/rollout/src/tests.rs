//! Native unit tests of the config rollout.

use rekon_sdk::output::Mutation;
use rekon_sdk::testing::{self, FakeHost, Obj};
use rekon_sdk::{Gvk, Mapping, Output, Plugin};
use serde_json::{Value, json};

use super::*;

/// The hash of `settings` = {level: info} and `env` = {MODE: prod}. Pinned: a change of
/// the encoding would roll every opted-in Deployment once when the plugin is upgraded.
const GOLDEN: &str = "b893e527a1942afc1cccab5d4054da2b1703b6a681ba0b6a9156795f3878b070";

/// A Deployment `name` in `shop` whose pod template spec is `pod`.
fn deployment(name: &str, pod: Value) -> Obj {
    testing::object::<Deployment>(name)
        .ns("shop")
        .uid(&format!("uid-{name}"))
        .rv("50")
        .spec(json!({
            "selector": { "matchLabels": { "app": name } },
            "template": { "metadata": { "labels": { "app": name } }, "spec": pod },
        }))
}

/// An opted-in Deployment `web` using `settings` as a volume and `env` through `envFrom`.
fn web() -> Obj {
    deployment(
        "web",
        json!({
            "volumes": [{ "name": "settings", "configMap": { "name": "settings" } }],
            "containers": [{ "name": "web", "image": "nginx", "envFrom": [{ "configMapRef": { "name": "env" } }] }],
        }),
    )
    .annotation(OPT_IN, "true")
}

/// `web` whose template already carries `hash`.
fn web_hashed(hash: &str) -> Obj {
    let mut spec = web().json()["spec"].clone();
    spec["template"]["metadata"]["annotations"] = json!({ HASH: hash });
    web().spec(spec)
}

fn config_map(name: &str, data: Value) -> Obj {
    testing::object::<ConfigMap>(name).ns("shop").data(data)
}

fn host() -> FakeHost {
    FakeHost::for_plugin::<Rollout>()
        .with(config_map("settings", json!({ "level": "info" })))
        .with(config_map("env", json!({ "MODE": "prod" })))
}

fn reconcile(host: &FakeHost, deployment: impl rekon_sdk::IntoObject) -> Output {
    host.run(|| Rollout::reconcile(testing::request(deployment)))
        .expect("reconcile succeeds")
}

/// The hash an output applies to `web`.
fn applied_hash(out: &Output) -> String {
    let d = out.applied_named::<Deployment>("web");
    let template = d.spec.template.metadata.unwrap();
    template.annotations.unwrap()[HASH].clone()
}

#[test]
fn an_opted_in_deployment_gets_only_the_hash_annotation_applied() {
    let out = reconcile(&host(), web());
    let [Mutation::Apply(applied)] = out.mutations() else {
        panic!("one apply expected:\n{}", testing::summary(&out))
    };
    assert_eq!(
        applied,
        &json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": { "name": "web", "namespace": "shop" },
            "spec": { "template": { "metadata": { "annotations": { HASH: GOLDEN } } } },
        }),
        "only the annotation: server-side apply leaves every other field to its owner"
    );
    assert!(out.requeue().is_none() && !out.prunes() && out.conditions().is_empty());
}

#[test]
fn the_hash_is_sha256_in_hex_and_stable() {
    let first = applied_hash(&reconcile(&host(), web()));
    assert_eq!(first.len(), 64);
    assert!(first.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(applied_hash(&reconcile(&host(), web())), first);
}

#[test]
fn a_changed_configmap_changes_the_hash() {
    let before = applied_hash(&reconcile(&host(), web()));
    let changed = host().with(config_map("settings", json!({ "level": "debug" })));
    assert_ne!(applied_hash(&reconcile(&changed, web())), before);
}

#[test]
fn a_template_already_carrying_the_hash_is_not_written_again() {
    let out = reconcile(&host(), web_hashed(GOLDEN));
    testing::assert_no_mutations(&out);
    let out = reconcile(&host(), web_hashed("stale"));
    assert_eq!(applied_hash(&out), GOLDEN);
}

#[test]
fn only_configmap_contents_count_not_their_metadata() {
    let relabelled = host().with(
        config_map("settings", json!({ "level": "info" }))
            .label("team", "a")
            .rv("99"),
    );
    assert_eq!(applied_hash(&reconcile(&relabelled, web())), GOLDEN);
}

#[test]
fn binary_data_counts_too() {
    let with_binary = host().with(
        config_map("settings", json!({ "level": "info" }))
            .field("binaryData", json!({ "k": "AAE=" })),
    );
    assert_ne!(applied_hash(&reconcile(&with_binary, web())), GOLDEN);
}

#[test]
fn a_deployment_without_the_annotation_is_left_alone() {
    let plain = deployment(
        "plain",
        json!({ "volumes": [{ "name": "s", "configMap": { "name": "settings" } }], "containers": [] }),
    );
    testing::assert_no_mutations(&reconcile(&host(), &plain));
    testing::assert_no_mutations(&reconcile(&host(), plain.annotation(OPT_IN, "false")));
}

#[test]
fn a_deployment_using_no_configmap_is_not_annotated() {
    let d = deployment(
        "web",
        json!({ "containers": [{ "name": "web", "image": "nginx" }] }),
    )
    .annotation(OPT_IN, "true");
    testing::assert_no_mutations(&reconcile(&host(), &d));
}

#[test]
fn a_missing_required_configmap_leaves_the_deployment_as_it_is() {
    let only_env =
        FakeHost::for_plugin::<Rollout>().with(config_map("env", json!({ "MODE": "prod" })));
    testing::assert_no_mutations(&reconcile(&only_env, web()));
}

#[test]
fn a_missing_optional_configmap_counts_as_absent() {
    let d = deployment(
        "web",
        json!({
            "volumes": [{ "name": "s", "configMap": { "name": "settings", "optional": true } }],
            "containers": [{ "name": "web", "image": "nginx" }],
        }),
    )
    .annotation(OPT_IN, "true");
    let absent = reconcile(&FakeHost::for_plugin::<Rollout>(), &d);
    let present = reconcile(&host(), &d);
    assert_ne!(applied_hash(&absent), applied_hash(&present));
}

#[test]
fn init_containers_and_repeated_uses_count_once() {
    let d = deployment(
        "web",
        json!({
            "volumes": [{ "name": "s", "configMap": { "name": "settings" } }],
            "initContainers": [{ "name": "init", "envFrom": [{ "configMapRef": { "name": "env" } }] }],
            "containers": [{ "name": "web", "envFrom": [{ "configMapRef": { "name": "settings" } }] }],
        }),
    )
    .annotation(OPT_IN, "true");
    assert_eq!(applied_hash(&reconcile(&host(), &d)), GOLDEN);
}

#[test]
fn a_configmap_maps_to_the_opted_in_deployments_of_its_namespace_that_use_it() {
    let other_ns = web().ns("other");
    let unused = deployment("api", json!({ "containers": [] })).annotation(OPT_IN, "true");
    let not_opted = deployment(
        "plain",
        json!({ "volumes": [{ "name": "s", "configMap": { "name": "settings" } }], "containers": [] }),
    );
    let host = host()
        .with(web())
        .with(other_ns)
        .with(unused)
        .with(not_opted);
    let settings: DynamicObject = config_map("settings", json!({})).into();
    let keys = host.run(|| Rollout::map_to_primaries(&Gvk::of::<ConfigMap>(), &settings));
    assert_eq!(keys, [ObjectKey::new(Some("shop"), "web")]);
}

#[test]
fn metadata_reconciles_deployments_and_maps_configmaps_itself() {
    let m = Rollout::metadata();
    assert_eq!(
        (m.name.as_str(), m.primary.clone()),
        ("rollout", Gvk::new("apps", "v1", "Deployment"))
    );
    assert_eq!(m.watches.len(), 1);
    assert_eq!(
        (m.watches[0].kind.to_string(), m.watches[0].mapping.clone()),
        ("v1 ConfigMap".to_owned(), Mapping::Custom)
    );
    assert!(
        m.writes.is_empty(),
        "the primary is writable without declaring it"
    );
    assert_eq!(m.finalizer, None);
}
