//! A plugin's life on the real API server: a swap whose new controller cannot start keeps
//! the old one running, a finalizer a new version drops is released, a removed plugin's
//! finalizer is reported, and a kind's watch is released when its last plugin stops.

use crate::controller::{WAIT, plugin, setup};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use rekon_host::contract::Gvk;
use rekon_host::controller::{Host, PluginOptions};
use rekon_host::operator::{PluginSet, Reporter, Transition};
use rekon_host::write::events::Recorder;
use rekon_tests::controlplane::wait_until;
use rekon_tests::plugins;
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};

fn host(client: &kube::Client, ns: &str) -> Host {
    crate::logs();
    Host::new(client.clone(), crate::controller::config(ns))
}

fn publish(dir: &Path, name: &str, bytes: &[u8]) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

/// Runs passes of `set` until one reports changes.
async fn next_changes(set: &mut PluginSet) -> Vec<Transition> {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok((changes, _)) = set.sync().await
            && !changes.is_empty()
        {
            return changes;
        }
        assert!(Instant::now() < deadline, "no change within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn stamped(name: &str) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": { "name": name, "labels": { "rekon.dev/stamp": "true" } },
    }))
    .unwrap()
}

async fn wait_stamp(api: &Api<ConfigMap>, name: &str, version: &str) {
    wait_until(&format!("{name}-stamp at {version}"), WAIT, || async {
        let cm = api.get_opt(&format!("{name}-stamp")).await.ok()??;
        (cm.data?.get("version")? == version).then_some(())
    })
    .await
    .unwrap();
}

async fn event_with(events: &Api<Event>, reason: &str, regarding: &str) -> Option<Event> {
    events
        .list(&ListParams::default())
        .await
        .ok()?
        .items
        .into_iter()
        .find(|e| {
            e.reason.as_deref() == Some(reason)
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(regarding)
        })
}

#[tokio::test]
async fn a_swap_whose_new_controller_cannot_start_keeps_the_old_one_running() {
    let (client, ns) = setup("swap").await;
    let dir = tempfile::tempdir().unwrap();
    let loader = crate::controller::loader().clone();
    let host = host(&client, ns.name());
    let reporter = Reporter {
        recorder: Recorder::new(client.clone(), "test"),
        regarding: json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "rekon-host", "namespace": ns.name()}}),
    };
    let metrics = rekon_host::metrics::Metrics::for_host(&host);
    let mut set = PluginSet::new(
        host.clone(),
        loader,
        dir.path().to_owned(),
        Some(reporter),
        metrics,
    );
    publish(dir.path(), "stamp.wasm", &plugins::bytes("stamp-plugin"));
    assert_eq!(
        next_changes(&mut set).await,
        [Transition::Started {
            plugin: "stamp".into()
        }]
    );
    let api: Api<ConfigMap> = ns.api();
    api.create(&PostParams::default(), &stamped("a"))
        .await
        .unwrap();
    let v1 = env!("CARGO_PKG_VERSION");
    wait_stamp(&api, "a", v1).await;

    // The new version also watches a kind whose CRD is missing: refused, old one kept.
    publish(
        dir.path(),
        "stamp.wasm",
        &plugins::bytes("stamp-wide-plugin"),
    );
    let refused = next_changes(&mut set).await;
    assert!(
        matches!(&refused[..], [Transition::Refused { reason, .. }] if reason.contains("Widget")),
        "{refused:?}"
    );
    let running = host.get("stamp").expect("the old controller still runs");
    assert_eq!(running.plugin().metadata.version, v1);
    api.create(&PostParams::default(), &stamped("b"))
        .await
        .unwrap();
    wait_stamp(&api, "b", v1).await;
    let events: Api<Event> = ns.api();
    let refusal = wait_until("a PluginRefused event", WAIT, || async {
        event_with(&events, "PluginRefused", "rekon-host").await
    })
    .await
    .unwrap();
    let note = refusal.note.unwrap_or_default();
    assert!(note.contains("kept"), "{note}");
}

#[tokio::test]
async fn a_finalizer_a_new_version_drops_is_released_and_reported() {
    let (client, ns) = setup("finrel").await;
    let host = host(&client, ns.name());
    host.start(plugin("stamp-fin-plugin")).await.unwrap();
    let api: Api<ConfigMap> = ns.api();
    api.create(&PostParams::default(), &stamped("x"))
        .await
        .unwrap();
    wait_until("the finalizer and its record", WAIT, || async {
        let cm = api.get("x").await.ok()?;
        let has = cm
            .metadata
            .finalizers?
            .contains(&"rekon.dev/stamp".to_owned());
        let recorded = cm.metadata.annotations?.get("finalizers.rekon.dev/stamp")
            == Some(&"rekon.dev/stamp".to_owned());
        (has && recorded).then_some(())
    })
    .await
    .unwrap();
    // A version without the finalizer: nothing would ever remove it.
    host.stop("stamp").await;
    host.start(plugin("stamp-plugin")).await.unwrap();
    wait_until("the finalizer is released", WAIT, || async {
        let cm = api.get("x").await.ok()?;
        cm.metadata
            .finalizers
            .unwrap_or_default()
            .is_empty()
            .then_some(())
    })
    .await
    .unwrap();
    let events: Api<Event> = ns.api();
    wait_until("a FinalizerReleased event", WAIT, || async {
        event_with(&events, "FinalizerReleased", "x").await
    })
    .await
    .unwrap();
    api.delete("x", &DeleteParams::default()).await.unwrap();
    wait_until("x is gone", WAIT, || async {
        api.get_opt("x").await.ok()?.is_none().then_some(())
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn removing_a_plugin_reports_the_objects_its_finalizer_holds() {
    let (client, ns) = setup("finorph").await;
    let host = host(&client, ns.name());
    let running = host.start(plugin("stamp-fin-plugin")).await.unwrap();
    let api: Api<ConfigMap> = ns.api();
    // A primary the plugin does not finish finalizing: labelled for stamping, and its
    // finalize applies the stamp again and succeeds — so block it with a foreign
    // finalizer too, delete it, then remove the plugin before it runs again.
    api.create(&PostParams::default(), &stamped("held"))
        .await
        .unwrap();
    wait_until("the finalizer", WAIT, || async {
        let cm = api.get("held").await.ok()?;
        cm.metadata
            .finalizers?
            .contains(&"rekon.dev/stamp".to_owned())
            .then_some(())
    })
    .await
    .unwrap();
    crate::controller::idle(&running).await;
    // Stop reconciling first, so the deletion is not finalized, then remove.
    running.queue().shutdown();
    api.delete("held", &DeleteParams::default()).await.unwrap();
    wait_until("the cache shows the deletion", WAIT, || async {
        let store = host.stores().store(&Gvk::new("", "v1", "ConfigMap"))?;
        store
            .get(Some(ns.name()), "held")?
            .is_deleting()
            .then_some(())
    })
    .await
    .unwrap();
    assert_eq!(host.remove("stamp").await, 1);
    let events: Api<Event> = ns.api();
    let orphaned = wait_until("a FinalizerOrphaned event", WAIT, || async {
        event_with(&events, "FinalizerOrphaned", "held").await
    })
    .await
    .unwrap();
    assert!(
        orphaned
            .note
            .unwrap_or_default()
            .contains("rekon.dev/stamp")
    );
}

#[tokio::test]
async fn the_watch_of_a_kind_is_released_when_its_last_plugin_stops() {
    let (client, ns) = setup("release").await;
    let host = host(&client, ns.name());
    host.start(plugin("stamp-plugin")).await.unwrap();
    host.start_with(plugin("replicas-plugin"), PluginOptions::default())
        .await
        .unwrap();
    let cm = Gvk::new("", "v1", "ConfigMap");
    assert_eq!(host.stores().kinds(), vec![cm.clone()]);
    host.stop("stamp").await;
    assert_eq!(
        host.stores().kinds(),
        vec![cm.clone()],
        "replicas still uses it"
    );
    host.stop("replicas").await;
    assert!(
        host.stores().kinds().is_empty(),
        "{:?}",
        host.stores().kinds()
    );
    // Starting again opens a new watch that lists afresh.
    let before = host.stores().watch_count();
    host.start(plugin("stamp-plugin")).await.unwrap();
    assert_eq!(host.stores().watch_count(), before + 1);
}
