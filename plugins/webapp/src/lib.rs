//! The rekon example plugin: a `WebApp` (`rekon.dev/v1alpha1`) becomes a Deployment and
//! a Service, and its status reports how many replicas are ready.
//!
//! - Children: a Deployment and a Service named after the WebApp, labelled
//!   `app.kubernetes.io/name=<name>` and `app.kubernetes.io/managed-by=rekon`; the
//!   Deployment runs one container `web` with the WebApp's image and port, the Service
//!   forwards the port to it. The host adds the owner references.
//! - Status: `readyReplicas` copied from the owned Deployment (0 while there is none),
//!   written through the status subresource; a `Ready` condition — `True` once
//!   `readyReplicas >= spec.replicas`, else `False` with reason `Progressing` — merged in
//!   by the host with `observedGeneration`.
//!
//! Objects are read typed (the WebApp, the owned Deployment's status) and the children
//! are written as JSON manifests: server-side apply wants exactly the fields the plugin
//! owns, and a manifest states them the way the YAML would.
//!
//! The CRD is `crd.yaml` beside this crate; `cases/` holds `rekon test` cases.

use std::time::Duration;

use rekon_sdk::k8s_openapi::api::{apps::v1::Deployment, core::v1::Service};
use rekon_sdk::k8s_openapi::apimachinery::pkg::apis::meta::v1::{self as meta, ObjectMeta};
use rekon_sdk::{Condition, Error, Kind, Metadata, Output, Plugin, Request};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// A web application: an image served on a port by some replicas.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WebApp {
    /// Standard object metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// What the user wants.
    pub spec: WebAppSpec,
    /// What the plugin observed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<WebAppStatus>,
}

impl Kind for WebApp {
    const GROUP: &'static str = "rekon.dev";
    const VERSION: &'static str = "v1alpha1";
    const KIND: &'static str = "WebApp";
}

/// `WebApp.spec`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebAppSpec {
    /// Container image.
    pub image: String,
    /// Desired replicas (default 1).
    #[serde(default = "default_replicas")]
    pub replicas: i32,
    /// Port the container listens on and the Service exposes (default 80).
    #[serde(default = "default_port")]
    pub port: i32,
}

/// `WebApp.status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebAppStatus {
    /// Ready replicas of the owned Deployment.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Conditions; written by the host from the plugin's output, never by the plugin.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<meta::Condition>,
}

fn default_replicas() -> i32 {
    1
}

fn default_port() -> i32 {
    80
}

/// The plugin.
pub struct WebAppPlugin;

impl Plugin for WebAppPlugin {
    fn metadata() -> Metadata {
        Metadata::new::<WebApp>("webapp", env!("CARGO_PKG_VERSION"))
            .owns::<Deployment>()
            .owns::<Service>()
            .resync(Duration::from_secs(300))
    }

    fn reconcile(req: Request) -> Result<Output, Error> {
        let app: WebApp = req.primary()?;
        let (name, spec) = (req.name(), &app.spec);
        let selector = json!({ "app.kubernetes.io/name": name });
        let labels =
            json!({ "app.kubernetes.io/name": name, "app.kubernetes.io/managed-by": "rekon" });
        let metadata = json!({ "name": name, "namespace": req.namespace(), "labels": labels });
        let deployment = json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata,
            "spec": {
                "replicas": spec.replicas,
                "selector": { "matchLabels": selector },
                "template": {
                    "metadata": { "labels": labels },
                    "spec": { "containers": [{ "name": "web", "image": spec.image, "ports": [{ "containerPort": spec.port }] }] },
                },
            },
        });
        let service = json!({
            "apiVersion": "v1", "kind": "Service", "metadata": metadata,
            "spec": { "selector": selector, "ports": [{ "port": spec.port, "targetPort": spec.port }] },
        });
        let deployed = req.related_named::<Deployment>(name)?;
        let ready = deployed.and_then(|d| d.status?.ready_replicas).unwrap_or(0);
        let is_ready = ready >= spec.replicas;
        let message = format!("{ready}/{} replicas ready", spec.replicas);
        let reason = if is_ready { "Available" } else { "Progressing" };
        Ok(Output::new()
            .apply(deployment)
            .apply(service)
            .update_status_of(&req, json!({ "readyReplicas": ready }))
            .condition(Condition::new("Ready", is_ready, reason, message)))
    }
}

rekon_sdk::export_plugin!(WebAppPlugin);

#[cfg(test)]
mod tests;
