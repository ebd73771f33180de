//! Before a plugin starts: may the host's identity do everything the plugin declared?
//!
//! Without this check a missing RBAC rule shows up as a watch retrying forever or a write
//! failing on every reconcile. With it, the plugin is refused at start with one message
//! naming each missing permission, and the other plugins run on.

use crate::contract::Metadata;
use crate::kinds::Kinds;
use crate::rbac::{Rule, rules_with};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};
use std::collections::HashMap;

/// One permission the host lacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    /// The verb.
    pub verb: String,
    /// `resource.group` (`configmaps` for core), with a subresource if any.
    pub resource: String,
}

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.verb, self.resource)
    }
}

/// The permissions among the plugin's needs that the API server denies to the host.
/// Kinds that do not resolve are skipped (starting the watch reports them better).
///
/// # Errors
/// The access reviews themselves failed.
pub async fn missing(
    kinds: &Kinds,
    meta: &Metadata,
    namespace: Option<&str>,
) -> Result<Vec<Missing>, kube::Error> {
    let mut resolved = HashMap::new();
    for k in meta.readable_kinds().iter().chain(&meta.writes) {
        if let Ok(r) = kinds.resolve(k).await {
            resolved.insert(k.clone(), r);
        }
    }
    let plural_of = |k: &crate::contract::Gvk| {
        resolved
            .get(k)
            .map_or_else(String::new, |r| r.resource.plural.clone())
    };
    let api: Api<SelfSubjectAccessReview> = Api::all(kinds.client().clone());
    let mut missing = Vec::new();
    for Rule {
        group,
        resource,
        verbs,
    } in rules_with(meta, plural_of)
    {
        if resource.is_empty() || resource.starts_with('/') {
            continue; // unresolved kind
        }
        let (plural, sub) = match resource.split_once('/') {
            Some((p, s)) => (p.to_owned(), Some(s.to_owned())),
            None => (resource.clone(), None),
        };
        let namespaced = resolved
            .values()
            .find(|r| r.resource.plural == plural && r.resource.group == group)
            .is_some_and(|r| r.namespaced);
        for verb in verbs {
            let review = SelfSubjectAccessReview {
                spec: SelfSubjectAccessReviewSpec {
                    resource_attributes: Some(ResourceAttributes {
                        group: Some(group.clone()),
                        resource: Some(plural.clone()),
                        subresource: sub.clone(),
                        verb: Some(verb.to_owned()),
                        namespace: namespace.filter(|_| namespaced).map(str::to_owned),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                ..Default::default()
            };
            let answer = api.create(&PostParams::default(), &review).await?;
            if !answer.status.is_some_and(|s| s.allowed) {
                let qualified = if group.is_empty() {
                    resource.clone()
                } else {
                    format!(
                        "{plural}.{group}{}",
                        sub.as_ref().map(|s| format!("/{s}")).unwrap_or_default()
                    )
                };
                missing.push(Missing {
                    verb: verb.to_owned(),
                    resource: qualified,
                });
            }
        }
    }
    Ok(missing)
}
