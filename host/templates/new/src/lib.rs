//! {{name}}: a rekon controller plugin. Each `{{kind}}` (`{{api_version}}`) gets a
//! ConfigMap of the same name holding its `spec.message`, and a `Ready` condition.
//!
//! The host does the rest: it watches {{kind}}s and their ConfigMaps, calls `reconcile`
//! with current cached state, applies the ConfigMap with an owner reference to the
//! {{kind}} (so deleting the {{kind}} deletes it), and merges the condition into the
//! {{kind}}'s status.

use rekon_sdk::k8s_openapi::api::core::v1::ConfigMap;
use rekon_sdk::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use rekon_sdk::{Condition, Error, Kind, Metadata, Output, Plugin, Request};
use serde::{Deserialize, Serialize};

/// The custom resource this plugin reconciles (its CRD is `crd.yaml`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct {{kind}} {
    /// Standard object metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// What the user asks for.
    pub spec: {{kind}}Spec,
}

/// `{{kind}}.spec`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct {{kind}}Spec {
    /// The text to keep in the ConfigMap.
    pub message: String,
}

impl Kind for {{kind}} {
    const GROUP: &'static str = "{{group}}";
    const VERSION: &'static str = "{{version}}";
    const KIND: &'static str = "{{kind}}";
}

/// The plugin.
pub struct {{kind}}Plugin;

impl Plugin for {{kind}}Plugin {
    fn metadata() -> Metadata {
        // Reconcile {{kind}}s; own ConfigMaps (watch them by owner reference, write them).
        Metadata::new::<{{kind}}>("{{name}}", env!("CARGO_PKG_VERSION")).owns::<ConfigMap>()
    }

    fn reconcile(req: Request) -> Result<Output, Error> {
        // A {{kind}} without `spec.message` is a permanent error naming the field.
        let primary: {{kind}} = req.primary()?;
        let config_map = ConfigMap {
            metadata: req.child_meta(req.name()),
            data: Some([("message".to_owned(), primary.spec.message)].into()),
            ..ConfigMap::default()
        };
        // State the desired result every time: the host applies it only if it differs.
        Ok(Output::new().apply(&config_map).condition(Condition::new(
            "Ready",
            true,
            "ConfigMapApplied",
            "the ConfigMap holds the message",
        )))
    }
}

rekon_sdk::export_plugin!({{kind}}Plugin);

#[cfg(test)]
mod tests;
