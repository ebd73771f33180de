//! The rekon example of a decorator: a plugin with no custom resource of its own that
//! adds defaults to objects someone else created. Its primary kind is the core
//! `Namespace`.
//!
//! - A Namespace labelled `rekon.dev/defaults=enabled` gets, inside it, a NetworkPolicy
//!   `default-deny-ingress` (every pod selected, ingress policy, no rule: all ingress is
//!   denied) and a ResourceQuota `default` (50 pods, 8 CPUs and 16Gi of memory
//!   requested). Both are labelled `app.kubernetes.io/managed-by=rekon`; the host makes
//!   the Namespace their controller owner (a namespaced object may be owned by a
//!   cluster-scoped one).
//! - Every other Namespace — no label, another value, or the label removed — gets
//!   nothing, and what it had is deleted: every output asks the host to prune, so owned
//!   children the output does not apply go away.
//!
//! The host lets a Namespace primary write into the namespace it names and nowhere else.
//! No finalizer: when a Namespace is deleted its contents go with it.
//!
//! `cases/` holds `rekon test` cases.

use rekon_sdk::k8s_openapi::api::core::v1::{Namespace, ResourceQuota};
use rekon_sdk::k8s_openapi::api::networking::v1::NetworkPolicy;
use rekon_sdk::{Error, Metadata, Output, Plugin, Request};
use serde_json::json;

/// The label that opts a Namespace in, with the value [`ENABLED`].
pub const LABEL: &str = "rekon.dev/defaults";

/// The value of [`LABEL`] that opts a Namespace in.
pub const ENABLED: &str = "enabled";

/// The NetworkPolicy's name.
pub const POLICY: &str = "default-deny-ingress";

/// The ResourceQuota's name.
pub const QUOTA: &str = "default";

/// The plugin.
pub struct NetDefaults;

impl Plugin for NetDefaults {
    fn metadata() -> Metadata {
        Metadata::new::<Namespace>("netdefaults", env!("CARGO_PKG_VERSION"))
            .owns::<NetworkPolicy>()
            .owns::<ResourceQuota>()
    }

    fn reconcile(req: Request) -> Result<Output, Error> {
        let namespace: Namespace = req.primary()?;
        let labels = namespace.metadata.labels.unwrap_or_default();
        let out = Output::new().prune();
        if labels.get(LABEL).map(String::as_str) != Some(ENABLED) {
            return Ok(out);
        }
        let ns = req.name();
        let managed = json!({ "app.kubernetes.io/managed-by": "rekon" });
        let policy = json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": { "name": POLICY, "namespace": ns, "labels": managed },
            "spec": { "podSelector": {}, "policyTypes": ["Ingress"] },
        });
        let quota = json!({
            "apiVersion": "v1", "kind": "ResourceQuota",
            "metadata": { "name": QUOTA, "namespace": ns, "labels": managed },
            "spec": { "hard": { "pods": "50", "requests.cpu": "8", "requests.memory": "16Gi" } },
        });
        Ok(out.apply(policy).apply(quota))
    }
}

rekon_sdk::export_plugin!(NetDefaults);

#[cfg(test)]
mod tests;
