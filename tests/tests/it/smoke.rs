//! Smoke tests of the local control plane through kube-rs: the Kubernetes behaviour rekon
//! relies on is really there (CRDs, watches, conflicts, 410 Gone, garbage collection,
//! namespace deletion, RBAC).

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, PostParams, WatchEvent,
    WatchParams,
};
use rekon_tests::controlplane::{
    ControlPlane, ControlPlaneOptions, TestNamespace, install_crd, random_name, wait_until,
};
use serde_json::json;

/// How long the controllers get to act (garbage collection, namespace deletion).
const CONTROLLER_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a watch gets to deliver an event.
const EVENT_TIMEOUT: Duration = Duration::from_secs(20);

fn config_map(name: &str, data: serde_json::Value) -> Result<ConfigMap> {
    Ok(serde_json::from_value(
        json!({ "metadata": { "name": name }, "data": data }),
    )?)
}

fn status_code(err: &kube::Error) -> Option<u16> {
    match err {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

#[tokio::test]
async fn a_crd_and_a_custom_resource_can_be_created() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    let client = cp.client().await?;
    let ns = TestNamespace::create(&client, "smoke-crd").await?;

    // A group per test run keeps this independent of other tests installing CRDs.
    let group = format!("{}.smoke.rekon.dev", random_name("g"));
    let crd = json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": { "name": format!("widgets.{group}") },
        "spec": {
            "group": group,
            "names": { "kind": "Widget", "plural": "widgets", "singular": "widget", "listKind": "WidgetList" },
            "scope": "Namespaced",
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": { "openAPIV3Schema": {
                    "type": "object",
                    "properties": { "spec": {
                        "type": "object",
                        "properties": { "size": { "type": "integer", "minimum": 1 } },
                        "required": ["size"]
                    }}
                }},
                "subresources": { "status": {} }
            }]
        }
    });
    install_crd(&client, crd).await?;

    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(&group, "v1", "Widget"),
        "widgets",
    );
    let widgets: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns.name(), &resource);
    let widget: DynamicObject = serde_json::from_value(json!({
        "apiVersion": format!("{group}/v1"),
        "kind": "Widget",
        "metadata": { "name": "w1" },
        "spec": { "size": 3 }
    }))?;
    let created = widgets
        .create(&PostParams::default(), &widget)
        .await
        .context("creating Widget w1")?;
    assert_eq!(created.data["spec"]["size"], 3);
    assert!(
        created.metadata.uid.is_some(),
        "the created Widget has a uid"
    );

    let got = widgets.get("w1").await.context("getting Widget w1 back")?;
    assert_eq!(got.data["spec"]["size"], 3);

    // The schema is enforced: the API server validates custom resources.
    let invalid: DynamicObject = serde_json::from_value(json!({
        "apiVersion": format!("{group}/v1"), "kind": "Widget",
        "metadata": { "name": "w2" }, "spec": { "size": 0 }
    }))?;
    let err = widgets
        .create(&PostParams::default(), &invalid)
        .await
        .expect_err("size 0 violates minimum 1");
    assert_eq!(
        status_code(&err),
        Some(422),
        "an invalid Widget is refused as Invalid: {err}"
    );
    Ok(())
}

#[tokio::test]
async fn a_watch_sees_added_modified_and_deleted() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    let client = cp.client().await?;
    let ns = TestNamespace::create(&client, "smoke-watch").await?;
    let api: Api<ConfigMap> = ns.api();

    // Start the watch at the list's resourceVersion so no event can be missed.
    let list = api.list_metadata(&Default::default()).await?;
    let rv = list
        .metadata
        .resource_version
        .context("list has a resourceVersion")?;
    let mut events = api
        .watch(&WatchParams::default().timeout(60), &rv)
        .await?
        .boxed();

    api.create(
        &PostParams::default(),
        &config_map("watched", json!({ "k": "1" }))?,
    )
    .await?;
    let mut changed = api.get("watched").await?;
    changed.data = Some([("k".to_string(), "2".to_string())].into());
    api.replace("watched", &PostParams::default(), &changed)
        .await?;
    api.delete("watched", &DeleteParams::default()).await?;

    let mut seen = Vec::new();
    while seen.len() < 3 {
        let event = tokio::time::timeout(EVENT_TIMEOUT, events.try_next())
            .await
            .with_context(|| format!("no watch event within {EVENT_TIMEOUT:?}; saw {seen:?}"))??
            .with_context(|| format!("the watch ended early; saw {seen:?}"))?;
        let (kind, cm) = match event {
            WatchEvent::Added(cm) => ("ADDED", cm),
            WatchEvent::Modified(cm) => ("MODIFIED", cm),
            WatchEvent::Deleted(cm) => ("DELETED", cm),
            WatchEvent::Bookmark(_) => continue,
            WatchEvent::Error(status) => bail!("watch error: {status:?}"),
        };
        if cm.metadata.name.as_deref() == Some("watched") {
            let value = cm
                .data
                .as_ref()
                .and_then(|d| d.get("k"))
                .cloned()
                .unwrap_or_default();
            seen.push((kind, value));
        }
    }
    assert_eq!(
        seen,
        [
            ("ADDED", "1".to_string()),
            ("MODIFIED", "2".to_string()),
            ("DELETED", "2".to_string())
        ]
    );
    Ok(())
}

#[tokio::test]
async fn an_update_with_a_stale_resource_version_gets_409_conflict() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    let client = cp.client().await?;
    let ns = TestNamespace::create(&client, "smoke-conflict").await?;
    let api: Api<ConfigMap> = ns.api();

    let stale = api
        .create(
            &PostParams::default(),
            &config_map("contested", json!({ "v": "0" }))?,
        )
        .await?;
    let mut first = stale.clone();
    first.data = Some([("v".to_string(), "first".to_string())].into());
    api.replace("contested", &PostParams::default(), &first)
        .await
        .context("the first update succeeds")?;

    let mut second = stale;
    second.data = Some([("v".to_string(), "second".to_string())].into());
    let err = api
        .replace("contested", &PostParams::default(), &second)
        .await
        .expect_err("an update carrying the old resourceVersion must be refused");
    assert_eq!(
        status_code(&err),
        Some(409),
        "expected 409 Conflict, got {err}"
    );

    let current = api.get("contested").await?;
    assert_eq!(
        current
            .data
            .unwrap_or_default()
            .get("v")
            .map(String::as_str),
        Some("first")
    );
    Ok(())
}

/// This test uses its own control plane with the watch cache off: with the cache on, the
/// API server serves a watch from its in-memory event window regardless of etcd
/// compaction, so 410 would depend on cache sizing and timing. Compacting the shared
/// control plane would also expire other tests' watches in the middle of their run.
#[tokio::test]
async fn after_a_forced_compaction_a_watch_from_an_old_resource_version_gets_410_gone() -> Result<()>
{
    let cp = ControlPlane::start(ControlPlaneOptions {
        watch_cache: false,
        ..Default::default()
    })
    .await?;
    let client = cp.client().await?;
    let ns = TestNamespace::create(&client, "smoke-gone").await?;
    let api: Api<ConfigMap> = ns.api();

    let created = api
        .create(
            &PostParams::default(),
            &config_map("old", json!({ "v": "0" }))?,
        )
        .await?;
    let old_rv = created
        .metadata
        .resource_version
        .clone()
        .context("created object has a resourceVersion")?;
    for i in 1..=3 {
        let mut next = api.get("old").await?;
        next.data = Some([("v".to_string(), i.to_string())].into());
        api.replace("old", &PostParams::default(), &next).await?;
    }

    let revision = cp.compact_etcd().await?;
    ensure!(
        revision > old_rv.parse::<i64>()?,
        "compacted at revision {revision}, not past resourceVersion {old_rv}"
    );

    let gone = match api
        .watch(&WatchParams::default().timeout(30), &old_rv)
        .await
    {
        Err(err) => status_code(&err),
        Ok(stream) => {
            let mut stream = stream.boxed();
            loop {
                let next = tokio::time::timeout(EVENT_TIMEOUT, stream.next())
                    .await
                    .context("the watch from a compacted resourceVersion said nothing")?;
                match next {
                    Some(Ok(WatchEvent::Error(status))) => break Some(status.code),
                    Some(Err(err)) => break status_code(&err),
                    Some(Ok(WatchEvent::Bookmark(_))) => continue,
                    Some(Ok(event)) => bail!("expected 410 Gone, the watch delivered {event:?}"),
                    None => bail!("expected 410 Gone, the watch ended without an error"),
                }
            }
        }
    };
    assert_eq!(
        gone,
        Some(410),
        "a watch from compacted resourceVersion {old_rv} must get 410 Gone"
    );

    // A watch from the current state still works after the compaction.
    let rv = api
        .get("old")
        .await?
        .metadata
        .resource_version
        .context("resourceVersion")?;
    let mut stream = api
        .watch(&WatchParams::default().timeout(30), &rv)
        .await?
        .boxed();
    let mut next = api.get("old").await?;
    next.data = Some([("v".to_string(), "after".to_string())].into());
    api.replace("old", &PostParams::default(), &next).await?;
    loop {
        let event = tokio::time::timeout(EVENT_TIMEOUT, stream.next())
            .await
            .context("the watch from the current resourceVersion said nothing")?;
        match event {
            Some(Ok(WatchEvent::Bookmark(_))) => continue,
            Some(Ok(WatchEvent::Modified(cm))) => {
                let v = cm
                    .data
                    .as_ref()
                    .and_then(|d| d.get("v"))
                    .map(String::as_str);
                ensure!(
                    v == Some("after"),
                    "the watch delivered another change: {cm:?}"
                );
                break;
            }
            other => bail!("expected the change made after the compaction, got {other:?}"),
        }
    }
    // Closed before the stop: the API server waits for open watches when asked to stop.
    drop(stream);

    cp.stop().await?;
    Ok(())
}

#[tokio::test]
async fn deleting_an_owner_garbage_collects_its_owned_child() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    let client = cp.client().await?;
    let ns = TestNamespace::create(&client, "smoke-gc").await?;
    let api: Api<ConfigMap> = ns.api();

    let owner = api
        .create(&PostParams::default(), &config_map("owner", json!({}))?)
        .await?;
    let uid = owner.metadata.uid.clone().context("owner has a uid")?;
    let child: ConfigMap = serde_json::from_value(json!({
        "metadata": {
            "name": "child",
            "ownerReferences": [{
                "apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid,
                "controller": true, "blockOwnerDeletion": true
            }]
        }
    }))?;
    api.create(&PostParams::default(), &child).await?;
    // An unowned bystander must survive.
    api.create(&PostParams::default(), &config_map("bystander", json!({}))?)
        .await?;

    api.delete("owner", &DeleteParams::background()).await?;
    wait_until(
        "the owned child ConfigMap is garbage-collected",
        CONTROLLER_TIMEOUT,
        || async {
            match api.get_opt("child").await {
                Ok(None) => Some(()),
                _ => None,
            }
        },
    )
    .await
    .with_context(|| format!("control plane log tail:\n{}", cp.log_tail(20)))?;
    assert!(
        api.get_opt("bystander").await?.is_some(),
        "an unowned ConfigMap is left alone"
    );
    Ok(())
}

#[tokio::test]
async fn deleting_a_namespace_completes() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    let client = cp.client().await?;
    let ns = TestNamespace::create(&client, "smoke-nsdel").await?;
    let name = ns.name().to_string();
    // Content the namespace controller has to delete before the namespace can go.
    let api: Api<ConfigMap> = ns.api();
    for i in 0..3 {
        api.create(
            &PostParams::default(),
            &config_map(&format!("cm-{i}"), json!({}))?,
        )
        .await?;
    }
    let sa: ServiceAccount = serde_json::from_value(json!({ "metadata": { "name": "sa" } }))?;
    ns.api::<ServiceAccount>()
        .create(&PostParams::default(), &sa)
        .await?;

    ns.delete().await?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    wait_until(
        "the deleted namespace is gone",
        CONTROLLER_TIMEOUT,
        || async {
            match namespaces.get_opt(&name).await {
                Ok(None) => Some(()),
                _ => None,
            }
        },
    )
    .await
    .with_context(|| format!("control plane log tail:\n{}", cp.log_tail(20)))?;
    Ok(())
}

#[tokio::test]
async fn a_service_account_bound_to_a_narrow_role_is_forbidden_outside_it() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    let admin = cp.client().await?;
    let allowed = TestNamespace::create(&admin, "smoke-rbac-a").await?;
    let other = TestNamespace::create(&admin, "smoke-rbac-b").await?;

    let sa: ServiceAccount = serde_json::from_value(json!({ "metadata": { "name": "narrow" } }))?;
    allowed
        .api::<ServiceAccount>()
        .create(&PostParams::default(), &sa)
        .await?;
    let role: Role = serde_json::from_value(json!({
        "metadata": { "name": "read-configmaps" },
        "rules": [{ "apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"] }]
    }))?;
    allowed
        .api::<Role>()
        .create(&PostParams::default(), &role)
        .await?;
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": { "name": "narrow-reads-configmaps" },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-configmaps" },
        "subjects": [{ "kind": "ServiceAccount", "name": "narrow", "namespace": allowed.name() }]
    }))?;
    allowed
        .api::<RoleBinding>()
        .create(&PostParams::default(), &binding)
        .await?;
    allowed
        .api::<ConfigMap>()
        .create(
            &PostParams::default(),
            &config_map("visible", json!({ "x": "1" }))?,
        )
        .await?;

    let as_sa = cp
        .service_account_client(&admin, allowed.name(), "narrow")
        .await?;

    // Inside its Role: get is allowed. RBAC is evaluated per request, so this holds as
    // soon as the binding exists.
    let in_allowed: Api<ConfigMap> = Api::namespaced(as_sa.clone(), allowed.name());
    let visible = in_allowed
        .get("visible")
        .await
        .context("get inside the Role's namespace")?;
    assert_eq!(
        visible
            .data
            .unwrap_or_default()
            .get("x")
            .map(String::as_str),
        Some("1")
    );

    // Outside its Role: forbidden.
    let in_other: Api<ConfigMap> = Api::namespaced(as_sa.clone(), other.name());
    let err = in_other
        .list(&Default::default())
        .await
        .expect_err("list in another namespace must be refused");
    assert_eq!(
        status_code(&err),
        Some(403),
        "expected 403 Forbidden, got {err}"
    );
    if let kube::Error::Api(status) = &err {
        assert!(
            status
                .message
                .contains(&format!("system:serviceaccount:{}:narrow", allowed.name())),
            "the refusal names the ServiceAccount: {}",
            status.message
        );
    }

    // A verb the Role does not grant is refused too, even in its namespace.
    let err = in_allowed
        .list(&Default::default())
        .await
        .expect_err("list is not granted, only get");
    assert_eq!(
        status_code(&err),
        Some(403),
        "expected 403 Forbidden, got {err}"
    );
    Ok(())
}

#[tokio::test]
async fn a_control_plane_restarted_on_its_data_dir_keeps_its_objects_and_address() -> Result<()> {
    let data = tempfile::tempdir()?;
    let options = ControlPlaneOptions {
        data_dir: Some(data.path().to_path_buf()),
        ..Default::default()
    };

    let first = ControlPlane::start(options.clone()).await?;
    let server = first.server_url().to_string();
    let client = first.client().await?;
    let ns = TestNamespace::create(&client, "smoke-restart").await?;
    let created = ns
        .api::<ConfigMap>()
        .create(
            &PostParams::default(),
            &config_map("kept", json!({ "k": "v" }))?,
        )
        .await?;
    first.stop().await?;

    let second = ControlPlane::start(options).await?;
    assert_eq!(
        second.server_url(),
        server,
        "the restart serves on the previous address while it is free"
    );
    let client = second.client().await?;
    let kept = Api::<ConfigMap>::namespaced(client, ns.name())
        .get("kept")
        .await
        .context("the object survives")?;
    assert_eq!(kept.metadata.uid, created.metadata.uid);
    second.stop().await?;
    Ok(())
}

/// The API server's side of a known hole (issue 13 sweep, `sweep.rs` header): a forced
/// server-side apply carrying the resourceVersion of an object deleted meanwhile is not
/// refused — the apply creates the object anew (create-on-update drops the precondition).
/// So a host's seen-version apply cannot by itself keep a deleted child deleted.
#[tokio::test]
async fn a_forced_apply_with_the_version_of_a_deleted_object_creates_it_anew() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    let client = cp.client().await?;
    let ns = TestNamespace::create(&client, "smoke-apply-gone").await?;
    let api: Api<ConfigMap> = ns.api();
    let seen = api
        .create(
            &PostParams::default(),
            &config_map("gone", json!({ "v": "0" }))?,
        )
        .await?;
    api.delete("gone", &Default::default()).await?;
    let rv = seen
        .metadata
        .resource_version
        .clone()
        .context("a resourceVersion")?;
    let apply = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": { "name": "gone", "resourceVersion": rv },
        "data": { "v": "1" },
    });
    let mut params = kube::api::PatchParams::apply("smoke");
    params.force = true;
    let created = api
        .patch("gone", &params, &kube::api::Patch::Apply(&apply))
        .await
        .context("the apply is not refused")?;
    ensure!(created.metadata.uid != seen.metadata.uid, "a new object");
    Ok(())
}
