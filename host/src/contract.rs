//! The WIT contract's types on the host side.
//!
//! These mirror `wit/rekon.wit` one to one, in plain Rust with serde, so the rest of the
//! host (and `rekon test` fixtures) never touches generated bindings. Conversions from the
//! bindings live in `sandbox::convert`.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The WIT package version this host was built against.
pub const WIT_VERSION: &str = "0.1.0";

/// A Kubernetes kind: group (empty for core), version, kind.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Gvk {
    /// API group, empty for the core group.
    #[serde(default)]
    pub group: String,
    /// API version, e.g. `v1`.
    pub version: String,
    /// Kind, e.g. `ConfigMap`.
    pub kind: String,
}

impl Gvk {
    /// Builds a kind from its parts.
    pub fn new(group: &str, version: &str, kind: &str) -> Self {
        Self {
            group: group.to_owned(),
            version: version.to_owned(),
            kind: kind.to_owned(),
        }
    }

    /// Builds a kind from an object's `apiVersion` (`group/version` or `v1`) and `kind`.
    pub fn from_api_version(api_version: &str, kind: &str) -> Self {
        match api_version.split_once('/') {
            Some((group, version)) => Self::new(group, version, kind),
            None => Self::new("", api_version, kind),
        }
    }

    /// The `apiVersion` string: `group/version`, or the version alone for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

impl fmt::Display for Gvk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.api_version(), self.kind)
    }
}

/// A string field of an object's `metadata` (`name`, `namespace`, `uid`,
/// `resourceVersion`...), if present.
pub fn meta<'a>(object: &'a serde_json::Value, field: &str) -> Option<&'a str> {
    object.get("metadata")?.get(field)?.as_str()
}

/// The kind of an object, from its `apiVersion` and `kind` (empty parts when absent).
pub fn kind_of(object: &serde_json::Value) -> Gvk {
    let s = |k: &str| {
        object
            .get(k)
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
    };
    Gvk::from_api_version(s("apiVersion"), s("kind"))
}

/// How an event on a watched kind maps to primary keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum KeyMapping {
    /// The controller owner reference names the primary.
    OwnerReference,
    /// This label names the primary, in the object's namespace.
    Label(String),
    /// The plugin's `map-to-primaries` export decides.
    Custom,
}

/// A watched kind and its key mapping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watch {
    /// The kind.
    pub kind: Gvk,
    /// How its events map to primaries.
    pub mapping: KeyMapping,
}

/// What a plugin declares about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    /// Plugin name.
    pub name: String,
    /// Plugin version.
    pub version: String,
    /// The reconciled kind.
    pub primary: Gvk,
    /// Kinds that trigger reconciles of primaries.
    pub watches: Vec<Watch>,
    /// Extra readable kinds.
    pub reads: Vec<Gvk>,
    /// Writable kinds.
    pub writes: Vec<Gvk>,
    /// Resync period in seconds, if the plugin chose one.
    pub resync_seconds: Option<u32>,
    /// Finalizer name, if the plugin needs cleanup on delete.
    pub finalizer: Option<String>,
}

impl Metadata {
    /// Whether the plugin may read `kind` through the cache imports: the primary, the
    /// watched kinds and the declared `reads`.
    pub fn may_read(&self, kind: &Gvk) -> bool {
        self.primary == *kind
            || self.watches.iter().any(|w| w.kind == *kind)
            || self.reads.contains(kind)
    }

    /// Whether the plugin may write objects of `kind` (the primary is writable for its
    /// status, finalizers and patches).
    pub fn may_write(&self, kind: &Gvk) -> bool {
        self.primary == *kind || self.writes.contains(kind)
    }

    /// Every kind the plugin can read, deduplicated, primary first.
    pub fn readable_kinds(&self) -> Vec<Gvk> {
        let mut kinds = vec![self.primary.clone()];
        for k in self.watches.iter().map(|w| &w.kind).chain(&self.reads) {
            if !kinds.contains(k) {
                kinds.push(k.clone());
            }
        }
        kinds
    }
}

/// Names an object, with an optional resourceVersion precondition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    /// `group/version` or `v1`.
    pub api_version: String,
    /// Kind.
    pub kind: String,
    /// Namespace, `None` for cluster-scoped objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
    /// The resourceVersion the plugin saw; `None` inherits the snapshot's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
}

impl Target {
    /// The target's kind.
    pub fn gvk(&self) -> Gvk {
        Gvk::from_api_version(&self.api_version, &self.kind)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {}/{}", self.kind, ns, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

/// One change a plugin asks for. Objects are JSON values as the plugin produced them
/// (already parsed and checked by `write::check`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Mutation {
    /// Server-side apply of a desired object, owned by the primary.
    Apply(serde_json::Value),
    /// Create; fails if the object exists.
    Create(serde_json::Value),
    /// Replace, with a resourceVersion precondition.
    Update(serde_json::Value),
    /// JSON merge patch of a target.
    MergePatch {
        /// The object patched.
        target: Target,
        /// The patch.
        patch: serde_json::Value,
    },
    /// Delete a target.
    Delete(Target),
    /// Replace the status of an object.
    UpdateStatus(serde_json::Value),
}

impl Mutation {
    /// The variant's name as in fixtures and metric labels.
    pub fn verb(&self) -> &'static str {
        match self {
            Mutation::Apply(_) => "apply",
            Mutation::Create(_) => "create",
            Mutation::Update(_) => "update",
            Mutation::MergePatch { .. } => "mergePatch",
            Mutation::Delete(_) => "delete",
            Mutation::UpdateStatus(_) => "updateStatus",
        }
    }
}

/// Kubernetes Event type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventType {
    /// Normal.
    Normal,
    /// Warning.
    Warning,
}

/// An Event to record on the primary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Normal or Warning.
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// Machine-readable reason.
    pub reason: String,
    /// Human-readable note.
    pub note: String,
}

/// A condition's status, serialised as Kubernetes spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConditionStatus {
    /// "True"
    True,
    /// "False"
    False,
    /// "Unknown"
    Unknown,
}

/// A status condition for the primary (the host adds observedGeneration and
/// lastTransitionTime when it writes it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Condition {
    /// Condition type.
    #[serde(rename = "type")]
    pub condition_type: String,
    /// Status.
    pub status: ConditionStatus,
    /// Reason.
    pub reason: String,
    /// Message.
    pub message: String,
}

/// Which decision export a call makes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Export {
    /// `reconcile`: decide what a live primary needs.
    #[default]
    Reconcile,
    /// `finalize`: clean up before a primary carrying the plugin's finalizer goes away.
    Finalize,
}

/// The input of one reconcile.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Request {
    /// The primary, JSON text.
    pub primary: String,
    /// Related objects, JSON text each.
    pub related: Vec<String>,
    /// Plugin settings, JSON object text.
    pub settings: String,
}

/// What a plugin decided, validated.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Output {
    /// Mutations, in order.
    pub mutations: Vec<Mutation>,
    /// Requeue after this many milliseconds.
    pub requeue_after_ms: Option<u64>,
    /// Events to record.
    pub events: Vec<Event>,
    /// Conditions to merge into the primary's status.
    pub conditions: Vec<Condition>,
    /// Prune owned children not applied.
    pub prune: bool,
}

/// A reconcile the plugin itself reported as failed (as opposed to a sandbox failure).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "camelCase")]
pub enum GuestError {
    /// Retry with backoff.
    #[error("transient: {0}")]
    Transient(String),
    /// Do not retry until the object changes.
    #[error("permanent: {0}")]
    Permanent(String),
}

/// A primary's key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectKey {
    /// Namespace; `None` for cluster-scoped primaries.
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{ns}/{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_version_round_trips_for_core_and_named_groups() {
        let core = Gvk::from_api_version("v1", "ConfigMap");
        assert_eq!(core, Gvk::new("", "v1", "ConfigMap"));
        assert_eq!(core.api_version(), "v1");
        let apps = Gvk::from_api_version("apps/v1", "Deployment");
        assert_eq!(apps.group, "apps");
        assert_eq!(apps.api_version(), "apps/v1");
    }

    #[test]
    fn primary_and_watched_kinds_are_readable_but_only_declared_kinds_writable() {
        let meta = Metadata {
            name: "p".into(),
            version: "1".into(),
            primary: Gvk::new("x.dev", "v1", "App"),
            watches: vec![Watch {
                kind: Gvk::new("apps", "v1", "Deployment"),
                mapping: KeyMapping::OwnerReference,
            }],
            reads: vec![Gvk::new("", "v1", "ConfigMap")],
            writes: vec![Gvk::new("", "v1", "Service")],
            resync_seconds: None,
            finalizer: None,
        };
        assert!(meta.may_read(&Gvk::new("apps", "v1", "Deployment")));
        assert!(meta.may_read(&Gvk::new("", "v1", "ConfigMap")));
        assert!(!meta.may_read(&Gvk::new("", "v1", "Secret")));
        assert!(meta.may_write(&Gvk::new("x.dev", "v1", "App")));
        assert!(!meta.may_write(&Gvk::new("apps", "v1", "Deployment")));
        assert_eq!(meta.readable_kinds().len(), 3);
    }
}
