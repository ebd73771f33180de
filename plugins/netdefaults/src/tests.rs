//! Native unit tests of the namespace defaults.

use rekon_sdk::k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use rekon_sdk::testing::{self, Obj};
use rekon_sdk::{Gvk, Mapping, Output, Plugin};

use super::*;

fn namespace(name: &str) -> Obj {
    testing::object::<Namespace>(name).uid("uid-ns").rv("12")
}

fn reconcile(ns: Obj) -> Output {
    NetDefaults::reconcile(testing::request(ns)).expect("reconcile succeeds")
}

#[test]
fn a_labelled_namespace_gets_a_policy_and_a_quota_inside_it_and_prunes_the_rest() {
    let out = reconcile(namespace("team-a").label(LABEL, ENABLED));
    assert_eq!(
        testing::summary(&out),
        "  apply networking.k8s.io/v1 NetworkPolicy team-a/default-deny-ingress\n  apply v1 ResourceQuota team-a/default\n"
    );
    assert!(out.prunes(), "children no longer applied are deleted");
    assert!(out.requeue().is_none() && out.events().is_empty() && out.conditions().is_empty());
}

#[test]
fn the_policy_selects_every_pod_and_denies_all_ingress() {
    let out = reconcile(namespace("team-a").label(LABEL, ENABLED));
    let policy = out.applied_named::<NetworkPolicy>(POLICY);
    assert_eq!(policy.metadata.namespace.as_deref(), Some("team-a"));
    assert_eq!(
        policy.metadata.owner_references, None,
        "the host adds owner references"
    );
    let spec = policy.spec.unwrap();
    assert_eq!(
        spec.pod_selector,
        Some(Default::default()),
        "podSelector: {{}}"
    );
    assert_eq!(spec.policy_types, Some(vec!["Ingress".to_owned()]));
    assert_eq!(spec.ingress, None, "no rule admits anything");
}

#[test]
fn the_quota_caps_pods_cpu_and_memory_requests() {
    let out = reconcile(namespace("team-a").label(LABEL, ENABLED));
    let quota = out.applied_named::<ResourceQuota>(QUOTA);
    assert_eq!(quota.metadata.namespace.as_deref(), Some("team-a"));
    let hard = quota.spec.unwrap().hard.unwrap();
    let q = |v: &str| Quantity(v.to_owned());
    assert_eq!(
        hard.into_iter().collect::<Vec<_>>(),
        [
            ("pods".to_owned(), q("50")),
            ("requests.cpu".to_owned(), q("8")),
            ("requests.memory".to_owned(), q("16Gi")),
        ]
    );
}

#[test]
fn children_are_labelled_as_managed_by_rekon() {
    let out = reconcile(namespace("team-a").label(LABEL, ENABLED));
    for labels in [
        out.applied_named::<NetworkPolicy>(POLICY).metadata.labels,
        out.applied_named::<ResourceQuota>(QUOTA).metadata.labels,
    ] {
        assert_eq!(labels.unwrap()["app.kubernetes.io/managed-by"], "rekon");
    }
}

#[test]
fn a_namespace_without_the_label_gets_nothing_and_loses_what_it_had() {
    let out = reconcile(namespace("team-b"));
    testing::assert_no_mutations(&out);
    assert!(out.prunes(), "the host deletes the owned children");
}

#[test]
fn another_label_value_does_not_opt_in() {
    let out = reconcile(namespace("team-b").label(LABEL, "disabled"));
    testing::assert_no_mutations(&out);
    assert!(out.prunes());
}

#[test]
fn metadata_reconciles_namespaces_and_owns_policies_and_quotas() {
    let m = NetDefaults::metadata();
    assert_eq!(
        (m.name.as_str(), m.primary.clone()),
        ("netdefaults", Gvk::new("", "v1", "Namespace"))
    );
    let watched: Vec<_> = m
        .watches
        .iter()
        .map(|w| (w.kind.to_string(), w.mapping.clone()))
        .collect();
    assert_eq!(
        watched,
        [
            (
                "networking.k8s.io/v1 NetworkPolicy".to_owned(),
                Mapping::OwnerReference
            ),
            ("v1 ResourceQuota".to_owned(), Mapping::OwnerReference),
        ]
    );
    assert_eq!((m.finalizer, m.resync), (None, None));
}
