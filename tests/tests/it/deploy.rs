//! What a cluster admin installs: `rekon rbac` is enough under enforced RBAC (and one
//! missing rule is named, for that plugin only), and deploy/ passes the API server's
//! server-side dry run and matches what `rekon rbac` prints for the example plugins.

use crate::controller::setup;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::{Scope, pinned_kind};
use rekon_host::controller::{self, Error as StartError, Host};
use rekon_host::plugin::{Artifacts, Loaded, Loader};
use rekon_host::sandbox::{self, Sandbox};
use rekon_tests::controlplane::{ControlPlane, install_crd, wait_until};
use rekon_tests::{binary, plugins};
use serde_json::json;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

/// The example plugins deploy/ ships (their crates).
pub(crate) const EXAMPLES: &[&str] = &["webapp", "nodepool", "netdefaults", "teardown", "rollout"];

fn loaded(crate_name: &str) -> Loaded {
    let loader = Loader::new(
        Sandbox::new(sandbox::Config::default()).unwrap(),
        Artifacts::in_dir(plugins::target_dir().join("rekon-test-artifacts")),
        sandbox::Limits::default(),
    );
    loader.load_file(&plugins::path(crate_name)).unwrap()
}

/// Runs `rekon rbac` on a directory holding `crates`' plugins.
pub(crate) fn rekon_rbac(crates: &[&str], extra: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    for c in crates {
        std::fs::copy(plugins::path(c), dir.path().join(format!("{c}.wasm"))).unwrap();
    }
    let out = Command::new(binary::rekon())
        .arg("rbac")
        .arg(dir.path())
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub(crate) fn docs(yaml: &str) -> Vec<serde_json::Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &serde_json::Value| !v.is_null())
        .collect()
}

/// Installs the CRDs of the example plugins deploy/ ships.
pub(crate) async fn install_example_crds(client: &kube::Client) {
    for path in [
        "plugins/webapp/crd.yaml",
        "plugins/nodepool/crd.yaml",
        "plugins/teardown/crd.yaml",
    ] {
        let text = std::fs::read_to_string(plugins::workspace().join(path)).unwrap();
        for doc in text.split("\n---").filter(|d| d.trim().len() > 3) {
            install_crd(client, doc.to_owned()).await.unwrap();
        }
    }
}

/// Creates the ClusterRole and binding from `rekon rbac` output, minus the rules `drop`
/// says to drop, for the ServiceAccount `ns/sa`; answers a client authenticating as it.
async fn service_account_with(
    admin: &kube::Client,
    ns: &str,
    sa: &str,
    yaml: &str,
    drop: impl Fn(&serde_json::Value) -> bool,
) -> kube::Client {
    Api::<ServiceAccount>::namespaced(admin.clone(), ns)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({ "metadata": { "name": sa } })).unwrap(),
        )
        .await
        .unwrap();
    for mut doc in docs(yaml) {
        if let Some(rules) = doc.get_mut("rules").and_then(|r| r.as_array_mut()) {
            rules.retain(|r| !drop(r));
        }
        match doc["kind"].as_str() {
            Some("ClusterRole") => {
                let role: ClusterRole = serde_json::from_value(doc).unwrap();
                Api::<ClusterRole>::all(admin.clone())
                    .create(&PostParams::default(), &role)
                    .await
                    .unwrap();
            }
            Some("ClusterRoleBinding") => {
                let binding: ClusterRoleBinding = serde_json::from_value(doc).unwrap();
                Api::<ClusterRoleBinding>::all(admin.clone())
                    .create(&PostParams::default(), &binding)
                    .await
                    .unwrap();
            }
            other => panic!("unexpected kind {other:?} in rekon rbac output"),
        }
    }
    let cp = ControlPlane::shared().await.unwrap();
    cp.service_account_client(admin, ns, sa).await.unwrap()
}

fn host(client: &kube::Client, ns: &str) -> Host {
    Host::new(
        client.clone(),
        controller::Config {
            namespace: Some(ns.to_owned()),
            instance: format!("test-{ns}"),
            ..Default::default()
        },
    )
}

#[tokio::test]
async fn rekon_rbac_is_enough_under_rbac_and_a_missing_rule_is_named_for_its_plugin() {
    let (admin, ns) = setup("rbac").await;
    install_example_crds(&admin).await;
    let name = format!("rekon-{}", ns.name());

    // Everything `rekon rbac` printed: both plugins start and reconcile.
    let full = rekon_rbac(
        &["webapp", "nodepool"],
        &[
            "--name",
            &name,
            "--namespace",
            ns.name(),
            "--service-account",
            "rekon",
        ],
    );
    let client = service_account_with(&admin, ns.name(), "rekon", &full, |_| false).await;
    let h = host(&client, ns.name());
    for plugin in ["webapp", "nodepool"] {
        // RBAC changes reach the authorizer through a watch: retry until they have.
        wait_until(
            &format!("{plugin} starts as the ServiceAccount"),
            WAIT,
            || async {
                match h.start(loaded(plugin)).await {
                    Ok(_) => Some(()),
                    Err(StartError::Forbidden { .. }) => None,
                    Err(e) => panic!("{plugin}: {e}"),
                }
            },
        )
        .await
        .unwrap();
    }
    let webapps = Api::<DynamicObject>::namespaced_with(
        admin.clone(),
        ns.name(),
        &kube::core::ApiResource::from_gvk(&GroupVersionKind::gvk(
            "rekon.dev",
            "v1alpha1",
            "WebApp",
        )),
    );
    webapps
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "rekon.dev/v1alpha1", "kind": "WebApp",
                "metadata": { "name": "web" },
                "spec": { "image": "nginx:1.27" },
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(admin.clone(), ns.name());
    wait_until(
        "the webapp's Deployment, written as the ServiceAccount",
        WAIT,
        || async { deployments.get_opt("web").await.ok()? },
    )
    .await
    .unwrap();
    wait_until(
        "the WebApp's status, written as the ServiceAccount",
        WAIT,
        || async {
            let w = webapps.get("web").await.ok()?;
            w.data.pointer("/status/conditions/0").map(|_| ())
        },
    )
    .await
    .unwrap();
    h.shutdown(Duration::from_secs(5)).await;

    // The same minus the rule for NodeReports: nodepool is refused by name, webapp runs.
    let partial_name = format!("{name}-partial");
    let partial = rekon_rbac(
        &["webapp", "nodepool"],
        &[
            "--name",
            &partial_name,
            "--namespace",
            ns.name(),
            "--service-account",
            "partial",
        ],
    );
    let client = service_account_with(&admin, ns.name(), "partial", &partial, |rule| {
        rule["resources"][0] == "nodereports"
    })
    .await;
    let h = host(&client, ns.name());
    wait_until("webapp starts with the partial role", WAIT, || async {
        h.start(loaded("webapp")).await.ok().map(|_| ())
    })
    .await
    .unwrap();
    let Err(err) = h.start(loaded("nodepool")).await else {
        panic!("nodepool started without permission to read NodeReports");
    };
    let message = err.to_string();
    println!("refused: {message}");
    assert!(matches!(err, StartError::Forbidden { .. }), "{message}");
    assert!(
        message.starts_with("plugin nodepool: forbidden"),
        "{message}"
    );
    assert!(message.contains("list nodereports.rekon.dev"), "{message}");
    assert!(message.contains("watch nodereports.rekon.dev"), "{message}");
    assert!(message.contains("rekon rbac"), "{message}");
    assert_eq!(h.plugins(), ["webapp"], "the other plugin runs on");
    h.shutdown(Duration::from_secs(5)).await;
}

pub(crate) fn deploy_dir() -> std::path::PathBuf {
    plugins::workspace().join("deploy")
}

#[test]
fn deploy_rbac_is_what_rekon_rbac_prints_for_the_example_plugins() {
    let expected = rekon_rbac(EXAMPLES, &[]);
    let path = deploy_dir().join("rbac.yaml");
    let actual = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        actual == expected,
        "{} is stale; regenerate it with scripts/gen-rbac. Expected:\n{expected}",
        path.display()
    );
}

/// The resources kustomization.yaml lists, in order, as JSON objects.
pub(crate) fn kustomized() -> Vec<serde_json::Value> {
    let dir = deploy_dir();
    let k: serde_json::Value =
        serde_yaml::from_str(&std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap())
            .unwrap();
    let mut out = Vec::new();
    for file in k["resources"].as_array().unwrap() {
        let path: &Path = Path::new(file.as_str().unwrap());
        out.extend(docs(&std::fs::read_to_string(dir.join(path)).unwrap()));
    }
    out
}

#[tokio::test]
async fn deploy_manifests_pass_a_server_side_dry_run() {
    let (admin, _ns) = setup("deploy").await;
    let objects = kustomized();
    let kinds: Vec<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
    for want in [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
    ] {
        assert!(kinds.contains(&want), "deploy/ lacks a {want}: {kinds:?}");
    }
    for object in objects {
        // The namespace is created for real (a dry-run object in a missing namespace is
        // refused); everything else only passes admission and validation.
        let dry_run = object["kind"] != "Namespace";
        apply(&admin, &object, dry_run)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
}

/// Server-side applies one object of deploy/ (any kind the API server serves), or only
/// dry-runs it; the error names the object.
pub(crate) async fn apply(
    admin: &kube::Client,
    object: &serde_json::Value,
    dry_run: bool,
) -> Result<(), String> {
    let (group, version) = match object["apiVersion"]
        .as_str()
        .unwrap_or_default()
        .split_once('/')
    {
        Some((g, v)) => (g.to_owned(), v.to_owned()),
        None => (
            String::new(),
            object["apiVersion"].as_str().unwrap_or_default().to_owned(),
        ),
    };
    let kind = object["kind"].as_str().unwrap_or_default().to_owned();
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let (resource, caps) = pinned_kind(admin, &GroupVersionKind::gvk(&group, &version, &kind))
        .await
        .map_err(|e| format!("{kind}: {e}"))?;
    let api: Api<DynamicObject> = match caps.scope {
        Scope::Namespaced => Api::namespaced_with(
            admin.clone(),
            object["metadata"]["namespace"]
                .as_str()
                .ok_or_else(|| format!("{kind} {name} does not name its namespace"))?,
            &resource,
        ),
        Scope::Cluster => Api::all_with(admin.clone(), &resource),
    };
    let mut params = PatchParams::apply("rekon-deploy-test").force();
    if dry_run {
        params = params.dry_run();
    }
    api.patch(&name, &params, &Patch::Apply(object))
        .await
        .map(|_| ())
        .map_err(|e| {
            let what = if dry_run {
                "the server-side dry run"
            } else {
                "server-side apply"
            };
            format!("{kind} {name} fails {what}: {e}")
        })
}
