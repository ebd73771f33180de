//! The rekon example of a finalizer with pending external cleanup: a `Bucket`
//! (`rekon.dev/v1alpha1`) stands for storage in an external system that must be emptied
//! before the Bucket may go.
//!
//! - Reconcile: the Bucket gets a `Ready` condition (`True`, reason `Provisioned`).
//!   Provisioning itself is out of scope for the example.
//! - The plugin declares the finalizer `rekon.dev/teardown`, so the host adds it to
//!   every Bucket and calls `finalize` when one is deleted.
//! - Finalize: the external system is simulated by a ConfigMap `<name>-cleanup` the
//!   plugin owns. Until that ConfigMap carries `data.done: "true"`, finalize applies it
//!   (the cleanup request: `data.bucket`, `data.location`), records a Normal Event
//!   `CleanupPending`, and asks to be called again after [`POLL`]; the host keeps the
//!   finalizer meanwhile. Whoever does the cleanup sets `done` (a field the plugin never
//!   applies, so it is left alone). Once done, finalize returns an empty output: the host
//!   removes the finalizer, the Bucket goes, and the garbage collector removes the
//!   ConfigMap it owned.
//!
//! Every call states the same request again, so repeated calls change nothing. A change
//! to the ConfigMap reaches the Bucket at once through its owner reference; the requeue
//! is the fallback poll a real external system would need.
//!
//! The CRD is `crd.yaml` beside this crate; `cases/` holds `rekon test` cases.

use std::time::Duration;

use rekon_sdk::k8s_openapi::api::core::v1::ConfigMap;
use rekon_sdk::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use rekon_sdk::{Condition, Error, EventType, Kind, Metadata, Output, Plugin, Request};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// The finalizer the plugin declares.
pub const FINALIZER: &str = "rekon.dev/teardown";

/// How long finalize waits before looking at a pending cleanup again.
pub const POLL: Duration = Duration::from_secs(5);

/// A storage bucket in an external system.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    /// Standard object metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// What the user wants.
    #[serde(default)]
    pub spec: BucketSpec,
}

impl Kind for Bucket {
    const GROUP: &'static str = "rekon.dev";
    const VERSION: &'static str = "v1alpha1";
    const KIND: &'static str = "Bucket";
}

/// `Bucket.spec`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BucketSpec {
    /// Where the external system keeps the bucket (default `local`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
}

/// The name of the cleanup request ConfigMap of the Bucket `bucket`.
pub fn cleanup_name(bucket: &str) -> String {
    format!("{bucket}-cleanup")
}

/// The plugin.
pub struct Teardown;

impl Plugin for Teardown {
    fn metadata() -> Metadata {
        Metadata::new::<Bucket>("teardown", env!("CARGO_PKG_VERSION"))
            .owns::<ConfigMap>()
            .finalizer(FINALIZER)
    }

    fn reconcile(req: Request) -> Result<Output, Error> {
        let bucket: Bucket = req.primary()?;
        let message = format!("bucket {} in {}", req.name(), location(&bucket));
        Ok(Output::new().condition(Condition::new("Ready", true, "Provisioned", message)))
    }

    fn finalize(req: Request) -> Result<Output, Error> {
        let bucket: Bucket = req.primary()?;
        let name = cleanup_name(req.name());
        let request = req.related_named::<ConfigMap>(&name)?;
        let done = request.and_then(|cm| cm.data?.remove("done"));
        if done.as_deref() == Some("true") {
            return Ok(Output::new());
        }
        Ok(Output::new()
            .apply(json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": { "name": name, "namespace": req.namespace() },
                "data": { "bucket": req.name(), "location": location(&bucket) },
            }))
            .event(
                EventType::Normal,
                "CleanupPending",
                format!("waiting for data.done=\"true\" on ConfigMap {name}"),
            )
            .requeue_after(POLL))
    }
}

fn location(bucket: &Bucket) -> &str {
    bucket.spec.location.as_deref().unwrap_or("local")
}

rekon_sdk::export_plugin!(Teardown);

#[cfg(test)]
mod tests;
