//! Resolving kinds to API resources through discovery, cached for the life of the host.

use crate::contract::Gvk;
use kube::api::ApiResource;
use kube::discovery::Scope;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A resolved kind: the resource to call and whether it is namespaced.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The API resource (plural, group, version).
    pub resource: ApiResource,
    /// Whether objects of the kind live in namespaces.
    pub namespaced: bool,
}

/// Why a kind could not be resolved.
#[derive(Debug, thiserror::Error)]
#[error("kind {kind} is not served by the API server (is its CRD installed?): {source}")]
pub struct Error {
    /// The kind.
    pub kind: Gvk,
    /// Discovery's error.
    #[source]
    pub source: kube::Error,
}

/// Whether a discovery error means the kind is not served (404, or missing from its
/// group/version), as opposed to discovery failing.
pub fn is_unknown(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => status.code == 404,
        kube::Error::Discovery(kube::error::DiscoveryError::MissingKind(_)) => true,
        _ => false,
    }
}

/// A discovery cache.
#[derive(Clone)]
pub struct Kinds {
    client: kube::Client,
    cache: Arc<Mutex<HashMap<Gvk, Resolved>>>,
}

impl Kinds {
    /// A cache resolving through `client`.
    pub fn new(client: kube::Client) -> Self {
        Self {
            client,
            cache: Arc::default(),
        }
    }

    /// Resolves `kind`, asking the API server the first time.
    ///
    /// # Errors
    /// [`Error`] when discovery fails or the kind is not served. Failures are not cached,
    /// so a CRD installed later resolves on the next call.
    pub async fn resolve(&self, kind: &Gvk) -> Result<Resolved, Error> {
        if let Some(r) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(kind)
        {
            return Ok(r.clone());
        }
        let gvk = kube::api::GroupVersionKind::gvk(&kind.group, &kind.version, &kind.kind);
        let (resource, caps) = kube::discovery::pinned_kind(&self.client, &gvk)
            .await
            .map_err(|source| Error {
                kind: kind.clone(),
                source,
            })?;
        let resolved = Resolved {
            resource,
            namespaced: caps.scope == Scope::Namespaced,
        };
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(kind.clone(), resolved.clone());
        Ok(resolved)
    }

    /// The client.
    pub fn client(&self) -> &kube::Client {
        &self.client
    }
}
