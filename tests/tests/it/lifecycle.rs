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
    let note = orphaned.note.unwrap_or_default();
    assert!(note.contains("rekon.dev/stamp"), "{note}");
    assert!(note.contains("rekon release-finalizer stamp"), "{note}");
}

/// Runs `rekon release-finalizer ARGS` against the test API server: (success, stdout,
/// stderr).
async fn release_finalizer(args: &[&str]) -> (bool, String, String) {
    let kc = crate::operator::kubeconfig().await;
    let out = std::process::Command::new(rekon_tests::binary::rekon())
        .arg("release-finalizer")
        .arg(format!("--kubeconfig={}", kc.display()))
        .args(args)
        .output()
        .expect("rekon runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn release_finalizer_lets_go_of_a_removed_plugins_finalizer_and_nothing_else() {
    let (client, ns) = setup("relfin").await;
    let host = host(&client, ns.name());
    let running = host.start(plugin("stamp-fin-plugin")).await.unwrap();
    let api: Api<ConfigMap> = ns.api();
    for name in ["held", "kept"] {
        api.create(&PostParams::default(), &stamped(name))
            .await
            .unwrap();
    }
    // Another plugin's recorded finalizer on a third object: not stamp's to release.
    let other: ConfigMap = serde_json::from_value(json!({"metadata": {
        "name": "other", "finalizers": ["rekon.dev/other"],
        "annotations": {"finalizers.rekon.dev/other": "rekon.dev/other"},
    }}))
    .unwrap();
    api.create(&PostParams::default(), &other).await.unwrap();
    for name in ["held", "kept"] {
        wait_until(&format!("the finalizer on {name}"), WAIT, || async {
            let cm = api.get(name).await.ok()?;
            let recorded = cm
                .metadata
                .annotations?
                .get("finalizers.rekon.dev/stamp")?
                .clone();
            (recorded == "rekon.dev/stamp" && cm.metadata.finalizers?.contains(&recorded))
                .then_some(())
        })
        .await
        .unwrap();
    }
    crate::controller::idle(&running).await;
    running.queue().shutdown();
    api.delete("held", &DeleteParams::default()).await.unwrap();
    api.delete("other", &DeleteParams::default()).await.unwrap();
    host.remove("stamp").await;

    // A bad plugin name and an unknown kind are refused, naming them.
    let (ok, _, err) = release_finalizer(&["a/b"]).await;
    assert!(!ok && err.contains("invalid plugin name \"a/b\""), "{err}");
    let (ok, _, err) = release_finalizer(&["stamp", "--kind=NoSuchKind"]).await;
    assert!(!ok && err.contains("--kind \"NoSuchKind\""), "{err}");

    let ns_arg = format!("--namespace={}", ns.name());
    let (ok, out, err) = release_finalizer(&["stamp", &ns_arg, "--dry-run"]).await;
    assert!(ok, "{err}");
    let held = format!(
        "\"rekon.dev/stamp\" of ConfigMap {}/held (being deleted)",
        ns.name()
    );
    let kept = format!("\"rekon.dev/stamp\" of ConfigMap {}/kept\n", ns.name());
    assert!(out.contains(&format!("would release {held}")), "{out}");
    assert!(out.contains(&format!("would release {kept}")), "{out}");
    // The plugin's primaries are every ConfigMap: its children and `other` carry its
    // finalizer too.
    assert!(out.contains("would release 5 finalizer(s)"), "{out}");
    assert!(
        api.get("held")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_some(),
        "a dry run writes nothing"
    );

    let (ok, out, err) = release_finalizer(&["stamp", &ns_arg, "--kind=ConfigMap"]).await;
    assert!(ok, "{err}");
    assert!(out.contains(&format!("released {held}")), "{out}");
    assert!(out.contains(&format!("released {kept}")), "{out}");
    wait_until("held is gone", WAIT, || async {
        api.get_opt("held").await.ok()?.is_none().then_some(())
    })
    .await
    .unwrap();
    let kept = api.get("kept").await.unwrap();
    assert_eq!(
        kept.metadata.finalizers.unwrap_or_default(),
        Vec::<String>::new()
    );
    assert!(
        !kept
            .metadata
            .annotations
            .unwrap_or_default()
            .contains_key("finalizers.rekon.dev/stamp")
    );
    let other = api.get("other").await.unwrap();
    assert_eq!(other.metadata.finalizers.unwrap(), ["rekon.dev/other"]);
    assert!(
        other
            .metadata
            .annotations
            .unwrap()
            .contains_key("finalizers.rekon.dev/other")
    );
    // Run again: nothing left to release.
    let (ok, out, err) = release_finalizer(&["stamp", &ns_arg]).await;
    assert!(ok && out.contains("released 0 finalizer(s)"), "{out}{err}");
    // Let the namespace go.
    let (ok, out, err) = release_finalizer(&["other", &ns_arg]).await;
    assert!(ok && out.contains("released 1 finalizer(s)"), "{out}{err}");
}

/// `rekon release-finalizer` patches with the resourceVersion it read: the fault proxy
/// holds its patch while another controller adds a finalizer of its own, so the API
/// server answers the held patch 409 (a blind patch would write the finalizer list it
/// read and drop the other one). The command reads the object again and releases only
/// its plugin's finalizer.
#[tokio::test]
async fn release_finalizer_meets_a_conflict_reads_again_and_keeps_a_finalizer_added_meanwhile() {
    use rekon_tests::proxy::{Action, FaultProxy, Rule};
    let (client, ns) = setup("relfin-409").await;
    let api: Api<ConfigMap> = ns.api();
    let held: ConfigMap = serde_json::from_value(json!({"metadata": {
        "name": "held", "finalizers": ["rekon.dev/stamp"],
        "annotations": {"finalizers.rekon.dev/stamp": "rekon.dev/stamp"},
    }}))
    .unwrap();
    api.create(&PostParams::default(), &held).await.unwrap();
    let proxy = FaultProxy::start(client.clone()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    proxy.write_kubeconfig(&kubeconfig).unwrap();
    let hold = proxy.add(
        Rule::new(Action::Hold)
            .methods([http::Method::PATCH])
            .path("/configmaps/held")
            .times(1),
    );
    let ns_arg = format!("--namespace={}", ns.name());
    let command = tokio::task::spawn_blocking(move || {
        std::process::Command::new(rekon_tests::binary::rekon())
            .arg("release-finalizer")
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .args(["stamp", &ns_arg, "--kind=ConfigMap"])
            .output()
            .expect("rekon runs")
    });
    wait_until("the command's patch is held", WAIT, || async {
        proxy
            .requests()
            .iter()
            .any(|s| s.rule == Some(hold))
            .then_some(())
    })
    .await
    .unwrap();
    let mut current = api.get("held").await.unwrap();
    current
        .metadata
        .finalizers
        .get_or_insert_default()
        .push("example.com/other".into());
    api.replace("held", &PostParams::default(), &current)
        .await
        .unwrap();
    assert!(proxy.remove(hold));
    let out = command.await.unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("released 1 finalizer(s)"), "{stdout}");
    let patches: Vec<Option<u16>> = proxy
        .requests()
        .iter()
        .filter(|s| s.method == http::Method::PATCH && s.path.contains("/configmaps/held"))
        .map(|s| s.status)
        .collect();
    assert_eq!(
        patches,
        [Some(409), Some(200)],
        "the held patch met the change"
    );
    let after = api.get("held").await.unwrap();
    assert_eq!(
        after.metadata.finalizers.unwrap_or_default(),
        ["example.com/other"],
        "only the plugin's finalizer was released"
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
