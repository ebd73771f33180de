//! The thrash guard on the real API server: the mirror plugin and a foreign writer keep
//! setting the same field of the mirror ConfigMap; the host notices, says so in a
//! Warning Event naming the other field manager, and holds the plugin off for a while —
//! then converges again.

use crate::controller::setup;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use rekon_host::controller::thrash::ThrashConfig;
use rekon_host::controller::{self, Host, Stats};
use rekon_host::plugin::{Artifacts, Loader};
use rekon_host::sandbox::{self, Sandbox};
use rekon_tests::controlplane::wait_until;
use rekon_tests::plugins;
use serde_json::json;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

async fn mirror_value(api: &Api<ConfigMap>) -> Option<String> {
    api.get_opt("src-mirror")
        .await
        .ok()??
        .data?
        .get("k")
        .cloned()
}

#[tokio::test]
async fn a_plugin_fighting_another_writer_is_detected_reported_and_slowed() {
    let (client, ns) = setup("thrash").await;
    let hold = Duration::from_secs(4);
    let host = Host::new(
        client.clone(),
        controller::Config {
            namespace: Some(ns.name().to_owned()),
            instance: format!("test-{}", ns.name()),
            thrash: ThrashConfig {
                threshold: 3,
                window: Duration::from_secs(60),
                hold,
                max_hold: Duration::from_secs(60),
            },
            ..Default::default()
        },
    );
    let loader = Loader::new(
        Sandbox::new(sandbox::Config::default()).unwrap(),
        Artifacts::in_dir(plugins::target_dir().join("rekon-test-artifacts")),
        sandbox::Limits::default(),
    );
    let mirror = host
        .start(loader.load_file(&plugins::path("mirror-plugin")).unwrap())
        .await
        .unwrap();
    let api: Api<ConfigMap> = ns.api();
    api.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "metadata": { "name": "src", "labels": { "rekon.dev/mirror": "true" } },
            "data": { "k": "ours" },
        }))
        .unwrap(),
    )
    .await
    .unwrap();

    // The fighter owns data.k by server-side apply, forced, whenever the plugin took it
    // back; it also owns a label, so it stays among the object's field managers (a
    // writer left owning nothing cannot be named).
    let fighter = PatchParams::apply("fighter").force();
    let theirs = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": { "name": "src-mirror", "labels": { "fighter": "yes" } },
        "data": { "k": "theirs" },
    });
    let events: Api<Event> = ns.api();
    let thrashing = || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("Thrashing"))
    };
    let mut rounds = 0;
    let event = loop {
        wait_until("the plugin takes data.k back", WAIT, || async {
            (mirror_value(&api).await.as_deref() == Some("ours")).then_some(())
        })
        .await
        .unwrap();
        if let Some(e) = thrashing().await {
            break e;
        }
        assert!(rounds < 10, "no Thrashing event after {rounds} rounds");
        api.patch("src-mirror", &fighter, &Patch::Apply(&theirs))
            .await
            .unwrap();
        rounds += 1;
        // The event is recorded right after the contested write; give it a moment.
        if let Ok(e) = wait_until("a Thrashing event", Duration::from_millis(500), || {
            thrashing()
        })
        .await
        {
            break e;
        }
    };
    let note = event.note.clone().unwrap_or_default();
    println!("Thrashing after {rounds} foreign writes: {note}");
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert!(note.contains("ConfigMap"), "{note}");
    assert!(note.contains("src-mirror"), "{note}");
    assert!(
        note.contains("\"fighter\""),
        "names the other writer: {note}"
    );
    assert_eq!(
        event.regarding.as_ref().and_then(|r| r.name.as_deref()),
        Some("src"),
        "on the primary"
    );
    assert!(Stats::read(&mirror.stats().thrash_fights) >= 1);
    assert!(
        rekon_host::metrics::Metrics::for_host(&host)
            .encode(rekon_host::metrics::Format::Prometheus)
            .unwrap()
            .contains("rekon_thrash_fights_total{plugin=\"mirror\"} 1"),
        "counted"
    );

    // Held: the fighter's next write stands for a while...
    api.patch("src-mirror", &fighter, &Patch::Apply(&theirs))
        .await
        .unwrap();
    let written = Instant::now();
    let early = wait_until("the plugin rewrites during the hold", hold / 2, || async {
        (mirror_value(&api).await.as_deref() == Some("ours")).then_some(())
    })
    .await;
    assert!(early.is_err(), "the plugin was not held");
    // ...and the plugin converges again once the hold is over.
    wait_until("the plugin converges after the hold", WAIT, || async {
        (mirror_value(&api).await.as_deref() == Some("ours")).then_some(())
    })
    .await
    .unwrap();
    println!(
        "the fighter's write stood for {:?} (hold {hold:?})",
        written.elapsed()
    );
    host.shutdown(Duration::from_secs(5)).await;
}
