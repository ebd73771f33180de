//! The Kubernetes permissions a plugin's declaration implies.
//!
//! Resource names are derived from kinds by the same rule as Kubernetes' default
//! pluralisation (lowercase; `s`, `es` after s/x/z/ch/sh, `ies` after a consonant + y),
//! which is what CRDs use unless they name their plural otherwise.

use crate::contract::{Gvk, Metadata};
use std::collections::BTreeMap;

/// One RBAC rule: verbs on a resource of an API group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// API group, empty for core.
    pub group: String,
    /// Resource (plural), possibly with a subresource: `webapps/status`.
    pub resource: String,
    /// Verbs, sorted.
    pub verbs: Vec<&'static str>,
}

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "update", "patch", "delete"];

/// The plural resource name Kubernetes derives from a kind.
pub fn plural(kind: &str) -> String {
    let lower = kind.to_ascii_lowercase();
    if let Some(stem) = lower.strip_suffix('y')
        && !stem.ends_with(['a', 'e', 'i', 'o', 'u'])
    {
        return format!("{stem}ies");
    }
    if ["s", "x", "z", "ch", "sh"]
        .iter()
        .any(|s| lower.ends_with(s))
    {
        return format!("{lower}es");
    }
    format!("{lower}s")
}

/// The rules a plugin needs: read on every readable kind; write on writable kinds; status
/// and patch on the primary (conditions, finalizers).
pub fn rules(meta: &Metadata) -> Vec<Rule> {
    let mut acc: BTreeMap<(String, String), Vec<&'static str>> = BTreeMap::new();
    let mut add = |k: &Gvk, sub: Option<&str>, verbs: &[&'static str]| {
        let resource = match sub {
            Some(s) => format!("{}/{s}", plural(&k.kind)),
            None => plural(&k.kind),
        };
        let entry = acc.entry((k.group.clone(), resource)).or_default();
        entry.extend(verbs);
        entry.sort();
        entry.dedup();
    };
    for k in meta.readable_kinds() {
        add(&k, None, READ);
    }
    for k in &meta.writes {
        add(k, None, WRITE);
    }
    add(&meta.primary, None, &["patch", "update"]);
    add(&meta.primary, Some("status"), &["get", "patch", "update"]);
    acc.into_iter()
        .map(|((group, resource), verbs)| Rule {
            group,
            resource,
            verbs,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plurals_follow_kubernetes_defaults() {
        for (k, p) in [
            ("WebApp", "webapps"),
            ("Policy", "policies"),
            ("Ingress", "ingresses"),
            ("Gateway", "gateways"),
        ] {
            assert_eq!(plural(k), p);
        }
    }
}
