//! A rekon test plugin for finalizers and pruning, on ConfigMaps labelled
//! `rekon.dev/cleanup=true` (others are left alone, though the host puts the finalizer on
//! every primary).
//!
//! - Reconcile: applies one child ConfigMap `<name>-<child>` for each name in
//!   `data.children` (comma-separated) and asks the host to prune the owned children it
//!   did not apply.
//! - Finalize: reports cleanup in progress (requeue after 200 ms) until
//!   `data.cleanup-ms` milliseconds have passed since the deletion timestamp, then
//!   succeeds, and the host removes the finalizer.

use std::time::Duration;

use rekon_sdk::k8s_openapi::api::core::v1::ConfigMap;
use rekon_sdk::{Error, EventType, Metadata, Output, Plugin, Request};

/// The label that opts a ConfigMap in.
pub const LABEL: &str = "rekon.dev/cleanup";

/// The finalizer the plugin declares.
pub const FINALIZER: &str = "rekon.dev/cleanup";

/// The plugin.
pub struct Cleanup;

fn opted_in(cm: &ConfigMap) -> bool {
    cm.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL))
        .map(String::as_str)
        == Some("true")
}

impl Plugin for Cleanup {
    fn metadata() -> Metadata {
        Metadata::new::<ConfigMap>("cleanup", env!("CARGO_PKG_VERSION"))
            .owns::<ConfigMap>()
            .finalizer(FINALIZER)
    }

    fn reconcile(req: Request) -> Result<Output, Error> {
        let cm: ConfigMap = req.primary()?;
        if !opted_in(&cm) {
            return Ok(Output::new());
        }
        let data = cm.data.unwrap_or_default();
        let mut out = Output::new().prune();
        for child in data
            .get("children")
            .into_iter()
            .flat_map(|c| c.split(','))
            .filter(|c| !c.is_empty())
        {
            out = out.apply(&ConfigMap {
                metadata: req.child_meta(format!("{}-{child}", req.name())),
                ..ConfigMap::default()
            });
        }
        Ok(out)
    }

    fn finalize(req: Request) -> Result<Output, Error> {
        let cm: ConfigMap = req.primary()?;
        let wait: i64 = cm
            .data
            .as_ref()
            .and_then(|d| d.get("cleanup-ms"))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let deleted = cm
            .metadata
            .deletion_timestamp
            .as_ref()
            .map_or(0, |t| t.0.as_millisecond());
        if opted_in(&cm) && rekon_sdk::clock::now() < deleted + wait {
            return Ok(Output::new()
                .event(
                    EventType::Normal,
                    "CleanupPending",
                    "external cleanup still running",
                )
                .requeue_after(Duration::from_millis(200)));
        }
        Ok(Output::new())
    }
}

rekon_sdk::export_plugin!(Cleanup);
