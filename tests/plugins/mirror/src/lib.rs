//! A rekon test plugin for the live controller tests: every ConfigMap labelled
//! `rekon.dev/mirror=true` gets a mirror ConfigMap `<name>-mirror` (applied, so owned by
//! it) holding the same `data`, minus the control key `delay-ms`.
//!
//! The mirrors are owned ConfigMaps, so the plugin watches its own primary kind by owner
//! reference: a mirror is in the snapshot of its source's reconcile, and a write to it
//! carries the resourceVersion the plugin saw.
//!
//! `data.delay-ms` makes the reconcile busy-wait that long (by the host clock) after the
//! snapshot was taken, so a test can change the mirror while the plugin is deciding and
//! provoke a 409 conflict. ConfigMaps without the label are left alone.

use std::collections::BTreeMap;
use std::time::Duration;

use rekon_sdk::k8s_openapi::api::core::v1::ConfigMap;
use rekon_sdk::{Error, Metadata, Output, Plugin, Request};

/// The label that opts a ConfigMap in.
pub const LABEL: &str = "rekon.dev/mirror";

/// The plugin.
pub struct Mirror;

impl Plugin for Mirror {
    fn metadata() -> Metadata {
        Metadata::new::<ConfigMap>("mirror", env!("CARGO_PKG_VERSION"))
            .owns::<ConfigMap>()
            .resync(Duration::from_secs(600))
    }

    fn reconcile(req: Request) -> Result<Output, Error> {
        let source: ConfigMap = req.primary()?;
        let labels = source.metadata.labels.unwrap_or_default();
        if labels.get(LABEL).map(String::as_str) != Some("true") {
            return Ok(Output::new());
        }
        let mut data: BTreeMap<String, String> = source.data.unwrap_or_default();
        if let Some(ms) = data.remove("delay-ms").and_then(|v| v.parse::<i64>().ok()) {
            let start = rekon_sdk::clock::now();
            while rekon_sdk::clock::now() - start < ms {}
        }
        let mirror = ConfigMap {
            metadata: req.child_meta(format!("{}-mirror", req.name())),
            data: Some(data),
            ..ConfigMap::default()
        };
        Ok(Output::new().apply(&mirror))
    }
}

rekon_sdk::export_plugin!(Mirror);
