//! The rekon example of a config rollout: a Deployment annotated
//! `rekon.dev/rollout: "true"` rolls out again whenever the data of a ConfigMap it uses
//! changes. Deployments without that annotation are left alone.
//!
//! - Primary: `apps/v1` Deployment. Watched: ConfigMaps, with a custom mapping — a
//!   ConfigMap event maps to the opted-in Deployments in its namespace whose pod template
//!   uses it, found in the host's cache.
//! - A pod template uses a ConfigMap through a `configMap` volume or a container's (or
//!   init container's) `envFrom[].configMapRef`.
//! - Reconcile: a hash of those ConfigMaps' contents goes into the pod template's
//!   annotation `rekon.dev/config-hash` by server-side apply. The apply names nothing
//!   else, so the plugin's field manager owns that one annotation and every other field
//!   stays with its owner; a changed template is what makes Kubernetes roll the pods.
//! - The hash is SHA-256, as 64 hex digits, of the compact JSON `[name, data,
//!   binaryData]` of each ConfigMap in name order, concatenated (`[name]` for a missing
//!   optional one): labels, annotations and resourceVersions do not count.
//! - The hash depends only on the ConfigMaps, never on the Deployment, so the plugin's
//!   own write cannot feed back into it. A template that already carries the hash is
//!   not written again.
//! - A template using no ConfigMap is not annotated. One using a ConfigMap the cache
//!   does not hold is left as it is until the ConfigMap appears (its pods could not
//!   start anyway); an `optional` one that is missing counts as absent.
//!
//! The host writes the annotation onto the Deployment itself, so it adds no owner
//! reference (a Deployment does not own itself) and sends the resourceVersion the
//! plugin saw.
//!
//! `cases/` holds `rekon test` cases.

use std::collections::BTreeMap;

use rekon_sdk::k8s_openapi::api::apps::v1::Deployment;
use rekon_sdk::k8s_openapi::api::core::v1::ConfigMap;
use rekon_sdk::{
    DynamicObject, Error, Gvk, Mapping, Metadata, ObjectKey, Output, Plugin, Request, cache,
};
use serde_json::json;
use sha2::{Digest, Sha256};

/// The annotation that opts a Deployment in, with the value `"true"`.
pub const OPT_IN: &str = "rekon.dev/rollout";

/// The pod template annotation holding the hash of the ConfigMaps' contents.
pub const HASH: &str = "rekon.dev/config-hash";

/// The plugin.
pub struct Rollout;

impl Plugin for Rollout {
    fn metadata() -> Metadata {
        Metadata::new::<Deployment>("rollout", env!("CARGO_PKG_VERSION"))
            .watch::<ConfigMap>(Mapping::Custom)
    }

    fn reconcile(req: Request) -> Result<Output, Error> {
        let deployment: Deployment = req.primary()?;
        let used = config_maps(&deployment);
        if !opted_in(&deployment) || used.is_empty() {
            return Ok(Output::new());
        }
        let Some(hash) = content_hash(req.namespace(), &used)? else {
            return Ok(Output::new());
        };
        let template = deployment.spec.template.metadata;
        let current = template.and_then(|m| m.annotations?.remove(HASH));
        if current.as_deref() == Some(hash.as_str()) {
            return Ok(Output::new());
        }
        Ok(Output::new().apply(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": { "name": req.name(), "namespace": req.namespace() },
            "spec": { "template": { "metadata": { "annotations": { HASH: hash } } } },
        })))
    }

    fn map_to_primaries(_kind: &Gvk, config_map: &DynamicObject) -> Vec<ObjectKey> {
        let deployments = cache::list::<Deployment>(config_map.namespace(), None);
        deployments
            .unwrap_or_default()
            .iter()
            .filter(|d| opted_in(d) && config_maps(d).contains_key(config_map.name()))
            .map(|d| ObjectKey::of(&d.metadata))
            .collect()
    }
}

fn opted_in(deployment: &Deployment) -> bool {
    let annotations = deployment.metadata.annotations.as_ref();
    annotations.and_then(|a| a.get(OPT_IN)).map(String::as_str) == Some("true")
}

/// The ConfigMaps the pod template uses, by name, each `true` when every use of it is
/// optional.
fn config_maps(deployment: &Deployment) -> BTreeMap<String, bool> {
    let mut used = BTreeMap::new();
    let Some(pod) = &deployment.spec.template.spec else {
        return used;
    };
    let mut add = |name: &str, optional: Option<bool>| {
        *used.entry(name.to_owned()).or_insert(true) &= optional == Some(true);
    };
    for c in pod
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| v.config_map.as_ref())
    {
        add(&c.name, c.optional);
    }
    let containers = pod
        .containers
        .iter()
        .chain(pod.init_containers.iter().flatten());
    for env in containers.flat_map(|c| c.env_from.iter().flatten()) {
        if let Some(c) = &env.config_map_ref {
            add(&c.name, c.optional);
        }
    }
    used
}

/// The hash of the used ConfigMaps' contents, or `None` while a required one is missing
/// from the cache.
fn content_hash(
    namespace: Option<&str>,
    used: &BTreeMap<String, bool>,
) -> Result<Option<String>, Error> {
    let mut hasher = Sha256::new();
    for (name, optional) in used {
        let contents = match cache::get::<ConfigMap>(namespace, name)? {
            Some(cm) => json!([name, cm.data, cm.binary_data]),
            None if *optional => json!([name]),
            None => return Ok(None),
        };
        hasher.update(contents.to_string());
    }
    Ok(Some(format!("{:x}", hasher.finalize())))
}

rekon_sdk::export_plugin!(Rollout);

#[cfg(test)]
mod tests;
