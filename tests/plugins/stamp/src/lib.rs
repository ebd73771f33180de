//! A rekon test plugin for hot reload and leader election: every ConfigMap labelled
//! `rekon.dev/stamp=true` gets an owned ConfigMap `<name>-stamp` whose `data.version` is
//! the plugin's crate version and `data.settings` the settings it was given.
//!
//! `data.delay-ms` makes the reconcile busy-wait that long (by the host clock), so a
//! test can stop the host while reconciles are in flight; `data.round` is copied to the
//! child, so a test can tell which reconcile wrote it.
//!
//! Four crates build this source: `stamp-plugin` (the workspace version),
//! `stamp-next-plugin` (0.2.0), `stamp-wide-plugin` (0.3.0, feature `widget`: also
//! watches a kind whose CRD is missing, so its controller cannot start) and
//! `stamp-fin-plugin` (0.4.0, feature `finalizer`: declares the finalizer
//! `rekon.dev/stamp`). All are named `stamp`, so one can replace another in a plugin
//! directory and the children show which version reconciled them.

use rekon_sdk::k8s_openapi::api::core::v1::ConfigMap;
use rekon_sdk::{Error, Metadata, Output, Plugin, Request};
use std::collections::BTreeMap;

/// The label that opts a ConfigMap in.
pub const LABEL: &str = "rekon.dev/stamp";

/// The plugin.
pub struct Stamp;

impl Plugin for Stamp {
    fn metadata() -> Metadata {
        let m = Metadata::new::<ConfigMap>("stamp", env!("CARGO_PKG_VERSION")).owns::<ConfigMap>();
        // stamp-wide-plugin: also watches a kind whose CRD the tests never install.
        #[cfg(feature = "widget")]
        let m = m.watch_gvk(
            rekon_sdk::Gvk::new("rekon.dev", "v1alpha1", "Widget"),
            rekon_sdk::Mapping::OwnerReference,
        );
        // stamp-fin-plugin: declares a finalizer.
        #[cfg(feature = "finalizer")]
        let m = m.finalizer("rekon.dev/stamp");
        m
    }

    fn reconcile(req: Request) -> Result<Output, Error> {
        let source: ConfigMap = req.primary()?;
        let labels = source.metadata.labels.unwrap_or_default();
        if labels.get(LABEL).map(String::as_str) != Some("true") {
            return Ok(Output::new());
        }
        if let Some(ms) = source
            .data
            .as_ref()
            .and_then(|d| d.get("delay-ms"))
            .and_then(|v| v.parse::<i64>().ok())
        {
            let start = rekon_sdk::clock::now();
            while rekon_sdk::clock::now() - start < ms {}
        }
        let settings: rekon_sdk::serde_json::Value = req.settings()?;
        let mut data = BTreeMap::from([
            ("version".to_owned(), env!("CARGO_PKG_VERSION").to_owned()),
            ("settings".to_owned(), settings.to_string()),
        ]);
        if let Some(round) = source.data.as_ref().and_then(|d| d.get("round")) {
            data.insert("round".to_owned(), round.clone());
        }
        // `data.requeue-ms`: stamp again that often, with the time, so each stamp is a
        // real write (the fencing test watches who writes).
        let every = source
            .data
            .as_ref()
            .and_then(|d| d.get("requeue-ms"))
            .and_then(|v| v.parse::<u64>().ok());
        if every.is_some() {
            data.insert("at".to_owned(), rekon_sdk::clock::now().to_string());
        }
        let stamp = ConfigMap {
            metadata: req.child_meta(format!("{}-stamp", req.name())),
            data: Some(data),
            ..ConfigMap::default()
        };
        let out = Output::new().apply(&stamp);
        Ok(match every {
            Some(ms) => out.requeue_after(std::time::Duration::from_millis(ms)),
            None => out,
        })
    }
}

rekon_sdk::export_plugin!(Stamp);
