//! The example plugins (`plugins/netdefaults`, `plugins/teardown`, `plugins/rollout`):
//! their `rekon test` cases in the real sandbox, and their behaviour against the real
//! API server, each test with its own host.

use crate::controller::{WAIT, config, count, dynamic, idle, install_crds, setup, start};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ResourceQuota};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use rekon_host::controller;
use rekon_tests::controlplane::{TestNamespace, random_name, wait_until};
use rekon_tests::plugins;
use serde_json::json;
use std::time::Duration;

fn cases_pass(crate_name: &str) {
    let plugin = rekon_host::testing::load(&plugins::path(crate_name))
        .unwrap_or_else(|e| panic!("{crate_name} loads: {e}"));
    let cases = plugins::workspace()
        .join("plugins")
        .join(crate_name)
        .join("cases");
    let reports = rekon_host::testing::run_dir(&plugin, &cases).expect("cases are valid");
    assert!(reports.len() >= 2, "expected at least 2 {crate_name} cases");
    assert!(
        reports.iter().all(|r| r.passed()),
        "{}",
        rekon_host::testing::render(&reports)
    );
}

#[test]
fn netdefaults_cases_pass_in_the_real_sandbox() {
    cases_pass("netdefaults");
}

#[test]
fn teardown_cases_pass_in_the_real_sandbox() {
    cases_pass("teardown");
}

#[test]
fn rollout_cases_pass_in_the_real_sandbox() {
    cases_pass("rollout");
}

/// `rekon test` on rollout with a mapping case that expects a wrong primary, a right
/// one, and a file that is not a case: the wrong one fails with a diff of the keys, the
/// invalid file is a failed case naming the reason, the right one still runs and passes,
/// and the exit code is 1.
#[test]
fn a_wrong_mapping_case_fails_with_a_diff_and_an_invalid_file_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let cases = plugins::workspace().join("plugins/rollout/cases");
    let right = cases.join("06-maps-a-configmap-to-the-opted-in-deployments-using-it.yaml");
    let right = std::fs::read_to_string(right).expect("rollout's mapping case");
    assert!(
        right.contains("primaries: [shop/web, shop/worker]"),
        "{right}"
    );
    std::fs::write(dir.path().join("01-right.yaml"), &right).unwrap();
    let wrong = right
        .replace(
            "name: a ConfigMap maps",
            "name: wrongly expected, a ConfigMap maps",
        )
        .replace("[shop/web, shop/worker]", "[shop/web, shop/legacy]");
    std::fs::write(dir.path().join("02-wrong.yaml"), wrong).unwrap();
    std::fs::write(
        dir.path().join("03-invalid.yaml"),
        "call: mapToPrimaries\nexpect: { primaries: [] }\n",
    )
    .unwrap();
    let out = std::process::Command::new(rekon_tests::binary::rekon())
        .arg("test")
        .arg(plugins::path("rollout"))
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stdout.contains("ok   a ConfigMap maps to the opted-in Deployments"),
        "{stdout}"
    );
    assert!(
        stdout.contains("FAIL wrongly expected")
            && stdout.contains(
                "primaries: expected [shop/legacy, shop/web], got [shop/web, shop/worker]"
            )
            && stdout.contains("-- shop/legacy")
            && stdout.contains("+- shop/worker"),
        "{stdout}"
    );
    assert!(
        stdout.contains("FAIL 03-invalid.yaml")
            && stdout.contains("not a valid case")
            && stdout.contains("needs `object`"),
        "{stdout}"
    );
    assert!(stdout.contains("1 passed, 2 failed"), "{stdout}");
}

#[test]
fn nodepool_cases_pass_in_the_real_sandbox() {
    cases_pass("nodepool");
}

/// The one controller reference of an object, panicking if there is none.
fn controller_of(refs: Option<&Vec<OwnerReference>>) -> &OwnerReference {
    refs.into_iter()
        .flatten()
        .find(|r| r.controller == Some(true))
        .expect("a controller owner reference")
}

const DEFAULTS_LABEL: &str = "rekon.dev/defaults";

#[tokio::test]
async fn labelled_namespaces_get_a_deny_policy_and_a_quota_until_the_label_goes() {
    let (client, on) = setup("netdef-on").await;
    let off = TestNamespace::create(&client, "netdef-off")
        .await
        .expect("namespace");
    // Namespaces are cluster-scoped, so this host sees the namespaces of every test
    // running in parallel, and watches the children in all of them; it acts only on
    // labelled ones, and the assertions look only at this test's two namespaces.
    let cluster_wide = controller::Config {
        instance: random_name("test-netdefaults"),
        ..Default::default()
    };
    let (host, running) = start(&client, cluster_wide, &["netdefaults"]).await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let label = |value: serde_json::Value| {
        Patch::Merge(json!({"metadata": {"labels": {DEFAULTS_LABEL: value}}}))
    };
    namespaces
        .patch(on.name(), &PatchParams::default(), &label(json!("enabled")))
        .await
        .unwrap();

    let (policies, quotas): (Api<NetworkPolicy>, Api<ResourceQuota>) = (on.api(), on.api());
    let (policy, quota) = wait_until("the policy and the quota exist", WAIT, || async {
        let p = policies.get_opt("default-deny-ingress").await.ok()??;
        let q = quotas.get_opt("default").await.ok()??;
        Some((p, q))
    })
    .await
    .unwrap();
    let ns_uid = namespaces.get(on.name()).await.unwrap().metadata.uid;
    for owner in [
        controller_of(policy.metadata.owner_references.as_ref()),
        controller_of(quota.metadata.owner_references.as_ref()),
    ] {
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), Some(&owner.uid)),
            ("Namespace", on.name(), ns_uid.as_ref()),
            "owned by the cluster-scoped Namespace"
        );
    }
    let spec = policy.spec.unwrap();
    assert_eq!(spec.pod_selector, Some(LabelSelector::default()));
    assert_eq!(spec.policy_types, Some(vec!["Ingress".to_owned()]));
    let hard = quota.spec.unwrap().hard.unwrap();
    assert_eq!(
        (
            hard["pods"].0.as_str(),
            hard["requests.cpu"].0.as_str(),
            hard["requests.memory"].0.as_str()
        ),
        ("50", "8", "16Gi")
    );

    idle(&running[0]).await;
    let listed = ListParams::default();
    let off_policies: Api<NetworkPolicy> = off.api();
    let off_quotas: Api<ResourceQuota> = off.api();
    assert!(
        off_policies.list(&listed).await.unwrap().items.is_empty()
            && off_quotas.list(&listed).await.unwrap().items.is_empty(),
        "an unlabelled namespace gets nothing"
    );

    namespaces
        .patch(on.name(), &PatchParams::default(), &label(json!(null)))
        .await
        .unwrap();
    wait_until(
        "removing the label prunes the policy and the quota",
        WAIT,
        || async {
            let p = policies.get_opt("default-deny-ingress").await.ok()?;
            let q = quotas.get_opt("default").await.ok()?;
            (p.is_none() && q.is_none()).then_some(())
        },
    )
    .await
    .unwrap();
    host.shutdown(Duration::from_secs(5)).await;
    on.delete().await.unwrap();
    off.delete().await.unwrap();
}

fn bucket(name: &str) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "rekon.dev/v1alpha1", "kind": "Bucket",
        "metadata": {"name": name},
        "spec": {"location": "eu-west"},
    }))
    .unwrap()
}

#[tokio::test]
async fn a_bucket_goes_only_after_the_external_cleanup_reports_done() {
    let (client, ns) = setup("teardown").await;
    install_crds(&client, "plugins/teardown/crd.yaml").await;
    let (host, running) = start(&client, config(ns.name()), &["teardown"]).await;
    let buckets = dynamic(&client, ns.name(), "rekon.dev", "v1alpha1", "Bucket");
    let uid = buckets
        .create(&PostParams::default(), &bucket("photos"))
        .await
        .unwrap()
        .metadata
        .uid;
    wait_until(
        "the Bucket is Ready and holds the finalizer",
        WAIT,
        || async {
            let b = buckets.get("photos").await.ok()?;
            let held = b
                .metadata
                .finalizers?
                .contains(&"rekon.dev/teardown".to_owned());
            let ready = b.data["status"]["conditions"]
                .as_array()?
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            (held && ready).then_some(())
        },
    )
    .await
    .unwrap();

    let calls_before = count(&running[0].stats().reconciles);
    buckets
        .delete("photos", &DeleteParams::default())
        .await
        .unwrap();
    let cms: Api<ConfigMap> = ns.api();
    let request = wait_until("finalize requests the cleanup", WAIT, || async {
        cms.get_opt("photos-cleanup").await.ok()?
    })
    .await
    .unwrap();
    assert_eq!(
        Some(&controller_of(request.metadata.owner_references.as_ref()).uid),
        uid.as_ref()
    );
    assert_eq!(request.data.unwrap()["bucket"], "photos");
    let events: Api<Event> = ns.api();
    wait_until("a CleanupPending event is recorded", WAIT, || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("CleanupPending")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("photos")
            })
            .then_some(())
    })
    .await
    .unwrap();
    wait_until("finalize is called again while pending", WAIT, || async {
        (count(&running[0].stats().reconciles) >= calls_before + 2).then_some(())
    })
    .await
    .unwrap();
    let pending = buckets.get("photos").await.expect("held while pending");
    assert!(pending.metadata.deletion_timestamp.is_some());

    // The external system finishes.
    cms.patch(
        "photos-cleanup",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"done": "true"}})),
    )
    .await
    .unwrap();
    wait_until("deletion completes once cleanup is done", WAIT, || async {
        buckets
            .get_opt("photos")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await
    .unwrap();
    wait_until(
        "the garbage collector removes the cleanup request",
        WAIT,
        || async {
            cms.get_opt("photos-cleanup")
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await
    .unwrap();
    host.shutdown(Duration::from_secs(5)).await;
    ns.delete().await.unwrap();
}

const HASH: &str = "rekon.dev/config-hash";

/// The hash of `settings` = {level: info} and `env` = {MODE: prod}, as the rollout
/// plugin's native unit tests compute it: the wasm build must agree.
const FIRST_HASH: &str = "b893e527a1942afc1cccab5d4054da2b1703b6a681ba0b6a9156795f3878b070";

fn config_map(name: &str, data: serde_json::Value) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}, "data": data})).unwrap()
}

/// A Deployment `name` using ConfigMap `settings` as a volume and `env` through
/// `envFrom`, annotated `rekon.dev/rollout` with `rollout` if given.
fn deployment(name: &str, rollout: Option<&str>) -> Deployment {
    let annotations = rollout.map(|v| json!({"rekon.dev/rollout": v}));
    serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": annotations},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "volumes": [{"name": "settings", "configMap": {"name": "settings"}}],
                    "containers": [{
                        "name": "app", "image": "nginx:1.27",
                        "envFrom": [{"configMapRef": {"name": "env"}}],
                    }],
                },
            },
        },
    }))
    .unwrap()
}

fn hash_of(d: &Deployment) -> Option<String> {
    let annotations = d.spec.template.metadata.as_ref()?.annotations.as_ref()?;
    annotations.get(HASH).cloned()
}

#[tokio::test]
async fn a_configmap_change_rolls_the_opted_in_deployments_that_use_it() {
    let (client, ns) = setup("rollout").await;
    let (host, running) = start(&client, config(ns.name()), &["rollout"]).await;
    let cms: Api<ConfigMap> = ns.api();
    let deployments: Api<Deployment> = ns.api();
    let pp = PostParams::default();
    cms.create(&pp, &config_map("settings", json!({"level": "info"})))
        .await
        .unwrap();
    cms.create(&pp, &config_map("env", json!({"MODE": "prod"})))
        .await
        .unwrap();
    deployments
        .create(&pp, &deployment("web", Some("true")))
        .await
        .unwrap();
    deployments
        .create(&pp, &deployment("plain", None))
        .await
        .unwrap();

    let web = wait_until("web's template gets the config hash", WAIT, || async {
        let d = deployments.get("web").await.ok()?;
        hash_of(&d).map(|_| d)
    })
    .await
    .unwrap();
    assert_eq!(hash_of(&web).as_deref(), Some(FIRST_HASH));
    assert_eq!(
        web.metadata.owner_references, None,
        "the host adds no owner reference from the Deployment to itself"
    );
    assert!(
        web.metadata
            .managed_fields
            .iter()
            .flatten()
            .any(|f| f.manager.as_deref() == Some("rekon-rollout")),
        "written by server-side apply with the plugin's field manager"
    );

    cms.patch(
        "settings",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"level": "debug"}})),
    )
    .await
    .unwrap();
    let second = wait_until("a changed ConfigMap changes the hash", WAIT, || async {
        let h = hash_of(&deployments.get("web").await.ok()?)?;
        (h != FIRST_HASH).then_some(h)
    })
    .await
    .unwrap();

    // A change that leaves the contents alone maps to web again, and writes nothing.
    idle(&running[0]).await;
    let before = deployments.get("web").await.unwrap();
    let calls = count(&running[0].stats().reconciles);
    cms.patch(
        "settings",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"touched": "yes"}}})),
    )
    .await
    .unwrap();
    wait_until("the relabelled ConfigMap is reconciled", WAIT, || async {
        (count(&running[0].stats().reconciles) > calls).then_some(())
    })
    .await
    .unwrap();
    idle(&running[0]).await;
    let after = deployments.get("web").await.unwrap();
    assert_eq!(hash_of(&after), Some(second));
    assert_eq!(
        after.metadata.resource_version, before.metadata.resource_version,
        "unchanged contents write nothing"
    );

    let plain = deployments.get("plain").await.unwrap();
    assert_eq!(
        hash_of(&plain),
        None,
        "a Deployment not opted in is untouched"
    );
    assert!(
        !plain
            .metadata
            .managed_fields
            .iter()
            .flatten()
            .any(|f| f.manager.as_deref() == Some("rekon-rollout"))
    );
    host.shutdown(Duration::from_secs(5)).await;
    ns.delete().await.unwrap();
}
