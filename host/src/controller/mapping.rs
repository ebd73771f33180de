//! Turning an event on a watched object into the primary keys to reconcile.

use crate::contract::{Gvk, KeyMapping, ObjectKey};
use serde_json::Value;

/// The primaries `object` (of a watched kind) maps to under `mapping`, for a plugin whose
/// primary kind is `primary`. [`KeyMapping::Custom`] returns nothing here: the plugin's
/// `map-to-primaries` export decides.
///
/// # Guarantees
/// - Owner reference: only references with `controller: true` whose kind and API group
///   are the primary's count (any version of the group).
/// - Label: the label's value names a primary in the object's namespace.
pub fn keys_for(mapping: &KeyMapping, primary: &Gvk, object: &Value) -> Vec<ObjectKey> {
    let namespace = object
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .map(str::to_owned);
    match mapping {
        KeyMapping::OwnerReference => object
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|r| r.get("controller").and_then(Value::as_bool) == Some(true))
            .filter(|r| {
                let s = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or_default();
                s("kind") == primary.kind
                    && Gvk::from_api_version(s("apiVersion"), "").group == primary.group
            })
            .filter_map(|r| r.get("name").and_then(Value::as_str))
            .map(|name| ObjectKey {
                namespace: namespace.clone(),
                name: name.to_owned(),
            })
            .collect(),
        KeyMapping::Label(label) => object
            .pointer("/metadata/labels")
            .and_then(|l| l.get(label))
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty())
            .map(|name| ObjectKey {
                namespace,
                name: name.to_owned(),
            })
            .into_iter()
            .collect(),
        KeyMapping::Custom => Vec::new(),
    }
}

/// The key of a primary object.
pub fn key_of(object: &Value) -> Option<ObjectKey> {
    Some(ObjectKey {
        namespace: object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .map(str::to_owned),
        name: object.pointer("/metadata/name")?.as_str()?.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn webapp() -> Gvk {
        Gvk::new("rekon.dev", "v1alpha1", "WebApp")
    }

    #[test]
    fn only_the_controller_reference_of_the_primary_kind_maps() {
        let child = json!({"metadata": {"namespace": "a", "ownerReferences": [
            {"apiVersion": "rekon.dev/v1alpha1", "kind": "WebApp", "name": "web", "controller": true},
            {"apiVersion": "rekon.dev/v1alpha1", "kind": "WebApp", "name": "other"},
            {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "controller": true},
        ]}});
        let keys = keys_for(&KeyMapping::OwnerReference, &webapp(), &child);
        assert_eq!(
            keys,
            [ObjectKey {
                namespace: Some("a".into()),
                name: "web".into()
            }]
        );
    }

    #[test]
    fn a_label_names_the_primary_in_the_same_namespace() {
        let report = json!({"metadata": {"namespace": "n", "labels": {"pool": "p1"}}});
        let keys = keys_for(&KeyMapping::Label("pool".into()), &webapp(), &report);
        assert_eq!(keys[0].name, "p1");
        assert_eq!(keys[0].namespace.as_deref(), Some("n"));
        assert!(keys_for(&KeyMapping::Label("other".into()), &webapp(), &report).is_empty());
    }
}
