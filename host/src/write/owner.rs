//! Ownership: the controller owner reference the host puts on applied children, and the
//! scope that goes with it — which namespaces a primary's writes may touch and which
//! namespace they default to.

use crate::contract::{Gvk, kind_of, meta};
use serde_json::{Value, json};
use std::fmt;

/// Where the writes made for one primary may go.
///
/// Kubernetes lets a namespaced object name a cluster-scoped owner, and a cluster-scoped
/// object name only a cluster-scoped owner (a namespaced owner of a cluster-scoped object
/// is unresolvable: the garbage collector never collects it). The scopes follow that, and
/// keep every write within what the primary stands for:
///
/// | primary | cluster-scoped objects | namespaced objects |
/// |---|---|---|
/// | namespaced, in `N` | refused | in `N` only (the default) |
/// | the `v1 Namespace` `N` | allowed | in `N` only (the default) |
/// | any other cluster-scoped kind | allowed | refused |
///
/// A cluster-scoped primary other than a Namespace has no namespace to stay within, so it
/// may not write into any: a decorator of namespaces reconciles the Namespace itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'a> {
    /// A namespaced primary in this namespace.
    Namespaced(&'a str),
    /// A primary that is the Namespace of this name.
    Namespace(&'a str),
    /// A cluster-scoped primary of another kind.
    Cluster,
}

impl<'a> Scope<'a> {
    /// The scope of `primary` (an object as JSON).
    pub fn of(primary: &'a Value) -> Self {
        match (meta(primary, "namespace"), meta(primary, "name")) {
            (Some(ns), _) if !ns.is_empty() => Scope::Namespaced(ns),
            (_, Some(name)) if kind_of(primary) == Gvk::new("", "v1", "Namespace") => {
                Scope::Namespace(name)
            }
            _ => Scope::Cluster,
        }
    }

    /// The namespace a namespaced object that names none is written to, and the only one
    /// a namespaced object may name; `None` when namespaced objects are out of scope.
    pub fn namespace(self) -> Option<&'a str> {
        match self {
            Scope::Namespaced(ns) | Scope::Namespace(ns) => Some(ns),
            Scope::Cluster => None,
        }
    }

    /// Whether an object naming `namespace` (or none) may be in scope, before its kind's
    /// scope is known: a named namespace must be the scope's.
    pub fn admits_named(self, namespace: Option<&str>) -> bool {
        namespace.is_none_or(|ns| self.namespace() == Some(ns))
    }

    /// Whether an object of a namespaced (or cluster-scoped) kind, landing in `namespace`
    /// after defaulting, is in scope.
    pub fn admits(self, namespaced: bool, namespace: Option<&str>) -> bool {
        match (self, namespaced) {
            (Scope::Namespaced(_), false) => false,
            (_, false) => true,
            (_, true) => namespace.is_some() && self.namespace() == namespace,
        }
    }
}

impl fmt::Display for Scope<'_> {
    /// `namespace "a"`, `namespace "a" (the primary itself) and cluster-scoped objects`,
    /// `cluster-scoped objects only`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Namespaced(ns) => write!(f, "namespace {ns:?}"),
            Scope::Namespace(ns) => write!(
                f,
                "namespace {ns:?} (the primary Namespace) and cluster-scoped objects"
            ),
            Scope::Cluster => {
                f.write_str("cluster-scoped objects only (the primary is cluster-scoped)")
            }
        }
    }
}

/// Adds a controller owner reference to `primary` on `child`, unless `child` already
/// has a reference with the primary's uid, or `child` is the primary itself (same kind,
/// namespace and name: a plugin applying fields of its own primary). Existing references
/// are kept.
pub fn set_controller_ref(child: &mut Value, primary: &Value) {
    let Some(uid) = primary.pointer("/metadata/uid").and_then(Value::as_str) else {
        return;
    };
    if is_same_object(child, primary) {
        return;
    }
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

/// Whether `a` and `b` name the same object: kind (group and kind, any version),
/// namespace and name.
pub fn is_same_object(a: &Value, b: &Value) -> bool {
    let (ka, kb) = (kind_of(a), kind_of(b));
    ka.group == kb.group
        && ka.kind == kb.kind
        && meta(a, "namespace") == meta(b, "namespace")
        && meta(a, "name") == meta(b, "name")
}

/// Whether `child` names `primary_uid` as its controller.
pub fn controlled_by(child: &Value, primary_uid: &str) -> bool {
    controller_uid(child) == Some(primary_uid)
}

/// The uid of `object`'s controller owner reference (`controller: true`), if any.
pub fn controller_uid(object: &Value) -> Option<&str> {
    object
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)?
        .iter()
        .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))?
        .get("uid")
        .and_then(Value::as_str)
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

    #[test]
    fn fields_applied_to_the_primary_itself_get_no_owner_reference() {
        let primary = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "a", "uid": "u1", "resourceVersion": "7"}});
        let mut own = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "a"},
            "spec": {"template": {"metadata": {"annotations": {"x": "1"}}}}});
        set_controller_ref(&mut own, &primary);
        assert_eq!(own["metadata"].get("ownerReferences"), None);
        let mut namesake = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "a"}});
        set_controller_ref(&mut namesake, &primary);
        assert!(
            controlled_by(&namesake, "u1"),
            "a child of another kind is owned"
        );
    }

    #[test]
    fn a_namespaced_child_of_a_namespace_names_the_cluster_scoped_owner() {
        let primary = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a", "uid": "ns-uid"}});
        let mut policy = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "default-deny-ingress", "namespace": "team-a"}});
        set_controller_ref(&mut policy, &primary);
        let owner = &policy["metadata"]["ownerReferences"][0];
        assert_eq!(
            (&owner["kind"], &owner["name"], &owner["uid"]),
            (&json!("Namespace"), &json!("team-a"), &json!("ns-uid"))
        );
    }

    #[test]
    fn a_primary_scope_follows_its_own_scope_and_kind() {
        let webapp = json!({"apiVersion": "rekon.dev/v1alpha1", "kind": "WebApp", "metadata": {"name": "w", "namespace": "a"}});
        let namespace =
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a"}});
        let other = json!({"apiVersion": "rekon.dev/v1alpha1", "kind": "Tenant", "metadata": {"name": "team-a"}});
        let not_core = json!({"apiVersion": "example.dev/v1", "kind": "Namespace", "metadata": {"name": "team-a"}});
        assert_eq!(Scope::of(&webapp), Scope::Namespaced("a"));
        assert_eq!(Scope::of(&namespace), Scope::Namespace("team-a"));
        assert_eq!(Scope::of(&other), Scope::Cluster);
        assert_eq!(
            Scope::of(&not_core),
            Scope::Cluster,
            "only the core Namespace"
        );
    }

    #[test]
    fn a_namespace_primary_writes_into_the_namespace_it_names_and_no_other() {
        let s = Scope::Namespace("team-a");
        assert_eq!(s.namespace(), Some("team-a"));
        assert!(s.admits_named(Some("team-a")) && s.admits_named(None));
        assert!(!s.admits_named(Some("team-b")));
        assert!(s.admits(true, Some("team-a")));
        assert!(!s.admits(true, Some("team-b")));
        assert!(
            s.admits(false, None),
            "cluster-scoped objects are owned validly"
        );
    }

    #[test]
    fn another_cluster_scoped_primary_writes_cluster_scoped_objects_only() {
        let s = Scope::Cluster;
        assert_eq!(s.namespace(), None, "no default namespace to fall back to");
        assert!(!s.admits_named(Some("default")));
        assert!(s.admits_named(None));
        assert!(!s.admits(true, None) && !s.admits(true, Some("default")));
        assert!(s.admits(false, None));
    }

    #[test]
    fn a_namespaced_primary_writes_namespaced_objects_in_its_namespace_only() {
        let s = Scope::Namespaced("a");
        assert!(s.admits(true, Some("a")));
        assert!(!s.admits(true, Some("b")) && !s.admits_named(Some("b")));
        assert!(
            !s.admits(false, None),
            "a cluster-scoped child cannot name a namespaced owner"
        );
    }
}
