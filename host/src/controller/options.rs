//! Per-plugin settings an operator gives a controller (from `NAME.yaml`).

use crate::contract::{Gvk, ObjectKey};
use std::time::Duration;

/// How one plugin's controller runs, beyond the host-wide [`super::Config`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginOptions {
    /// Reconcile primaries in these namespaces only; cluster-scoped primaries are always
    /// reconciled. `None`: all.
    pub namespaces: Option<Vec<String>>,
    /// Resync period, overriding the plugin's declaration and the host-wide override.
    pub resync: Option<Duration>,
    /// Concurrent reconciles, overriding the host-wide setting.
    pub concurrency: Option<usize>,
    /// The most sandbox slots its calls hold at once ([`super::slots::Slots::limit`]).
    /// `None`: the host's default ([`super::Config::sandbox_share`]).
    pub sandbox_share: Option<usize>,
    /// JSON handed to the plugin with every call.
    pub settings: String,
    /// Kinds whose existing objects, not controlled by the primary, an apply may take
    /// over (the operator's consent; docs/design.md, invariant 9). Empty: none.
    pub adopt: Vec<Gvk>,
}

impl Default for PluginOptions {
    fn default() -> Self {
        Self {
            namespaces: None,
            resync: None,
            concurrency: None,
            sandbox_share: None,
            settings: "{}".to_owned(),
            adopt: Vec::new(),
        }
    }
}

impl PluginOptions {
    /// Whether the controller reconciles `key`.
    pub fn admits(&self, key: &ObjectKey) -> bool {
        match (&self.namespaces, &key.namespace) {
            (Some(list), Some(ns)) => list.iter().any(|n| n == ns),
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_list_admits_its_namespaces_and_cluster_scoped_keys() {
        let key = |ns: Option<&str>| ObjectKey {
            namespace: ns.map(str::to_owned),
            name: "x".into(),
        };
        let all = PluginOptions::default();
        assert!(all.admits(&key(Some("a"))));
        let some = PluginOptions {
            namespaces: Some(vec!["a".into()]),
            ..Default::default()
        };
        assert!(some.admits(&key(Some("a"))));
        assert!(!some.admits(&key(Some("b"))));
        assert!(some.admits(&key(None)));
    }
}
