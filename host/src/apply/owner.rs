//! Ownership: the controller owner reference the host puts on applied children, and the
//! namespace defaulting that goes with it.

use serde_json::{Value, json};

/// Adds a controller owner reference to `primary` on `child`, unless `child` already
/// has a reference with the primary's uid. Existing references are kept.
pub fn set_controller_ref(child: &mut Value, primary: &Value) {
    let Some(uid) = primary.pointer("/metadata/uid").and_then(Value::as_str) else {
        return;
    };
    let reference = json!({
        "apiVersion": primary["apiVersion"],
        "kind": primary["kind"],
        "name": primary.pointer("/metadata/name").cloned().unwrap_or(Value::Null),
        "uid": uid,
        "controller": true,
        "blockOwnerDeletion": true,
    });
    let meta = &mut child["metadata"];
    if !meta.is_object() {
        *meta = json!({});
    }
    let refs = &mut meta["ownerReferences"];
    if !refs.is_array() {
        *refs = json!([]);
    }
    let list = refs.as_array_mut().expect("just made an array");
    if !list
        .iter()
        .any(|r| r.get("uid").and_then(Value::as_str) == Some(uid))
    {
        list.push(reference);
    }
}

/// Whether `child` names `primary_uid` as its controller.
pub fn controlled_by(child: &Value, primary_uid: &str) -> bool {
    child
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .is_some_and(|refs| {
            refs.iter().any(|r| {
                r.get("uid").and_then(Value::as_str) == Some(primary_uid)
                    && r.get("controller").and_then(Value::as_bool) == Some(true)
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_controller_reference_is_added_once() {
        let primary = json!({"apiVersion": "rekon.dev/v1alpha1", "kind": "WebApp", "metadata": {"name": "w", "uid": "u1"}});
        let mut child = json!({"metadata": {"name": "w"}});
        set_controller_ref(&mut child, &primary);
        set_controller_ref(&mut child, &primary);
        let refs = child["metadata"]["ownerReferences"].as_array().unwrap();
        assert_eq!(refs.len(), 1);
        assert_eq!(refs[0]["controller"], true);
        assert!(controlled_by(&child, "u1"));
        assert!(!controlled_by(&child, "u2"));
    }
}
