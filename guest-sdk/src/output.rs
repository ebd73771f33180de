//! What a plugin decided: [`Output`], built by chaining.

use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::object::IntoObject;
use crate::object::meta_str;
use crate::{Condition, Error, Kind, Request};

/// The decision of one reconcile: mutations in order, an optional requeue, events and
/// conditions. Built by chaining; every method takes and returns `self`.
///
/// ```no_run
/// # use rekon_sdk::{Output, Condition, EventType};
/// # use rekon_sdk::k8s_openapi::api::{apps::v1::Deployment, core::v1::Service};
/// # use std::time::Duration;
/// # fn f(deployment: Deployment, service: Service, app: Deployment) -> Output {
/// Output::new()
///     .apply(&deployment)
///     .apply(&service)
///     .update_status(&app)
///     .condition(Condition::new("Ready", false, "Progressing", "0/3 replicas ready"))
///     .event(EventType::Normal, "Scaled", "scaled to 3 replicas")
///     .requeue_after(Duration::from_secs(30))
/// # }
/// ```
///
/// # Status and conditions
///
/// [`update_status`](Self::update_status) (or [`update_status_of`](Self::update_status_of))
/// replaces the primary's status through the status subresource;
/// [`condition`](Self::condition) asks the host to merge one condition into
/// `status.conditions`. They do not clobber each other because the host combines them
/// into one status write:
///
/// - with an `update_status` of the primary in the output, the host writes that status,
///   its `conditions` being the primary's current conditions (or those the plugin's
///   status carries, if it carries any) merged with the output's conditions — so a
///   plugin leaves `conditions` out of the status it writes;
/// - with conditions but no `update_status`, the host writes the current status with the
///   merged conditions, leaving every other status field as it is;
/// - when the result equals the current status, nothing is written.
///
/// Merging is by `type`, stamps `observedGeneration` with the generation the plugin saw,
/// and keeps `lastTransitionTime` unless the condition's status changed.
/// [`testing::written_status`](crate::testing::written_status) computes that status in
/// native tests.
///
/// # Errors
///
/// Builders cannot fail mid-chain. If an object does not serialise to a Kubernetes object
/// (no `apiVersion`/`kind` on a [`DynamicObject`](crate::DynamicObject), a
/// `update_status` object without `status`, …), the output remembers the first such
/// problem, ignores the rest of the chain's mutations, and the reconcile returns it as a
/// permanent [`Error`] (see [`Output::problem`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Output {
    mutations: Vec<Mutation>,
    requeue_after: Option<Duration>,
    events: Vec<Event>,
    conditions: Vec<Condition>,
    prune: bool,
    problem: Option<Error>,
}

/// One change the plugin asks the host to make, with objects as JSON.
#[derive(Clone, Debug, PartialEq)]
pub enum Mutation {
    /// Create or update through server-side apply; the host adds the controller owner
    /// reference to the primary.
    Apply(Value),
    /// Create; fails if the object exists.
    Create(Value),
    /// Replace, with `metadata.resourceVersion` (or the snapshot's) as precondition.
    Update(Value),
    /// JSON merge patch (RFC 7386) of the target.
    MergePatch {
        /// The object to patch.
        target: Target,
        /// The patch, a JSON object.
        patch: Value,
    },
    /// Delete, with resourceVersion and uid preconditions.
    Delete(Target),
    /// Replace the status through the status subresource.
    UpdateStatus(Value),
}

/// Names an object, with the resourceVersion the plugin saw as precondition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// `group/version`, or `v1` for the core group.
    pub api_version: String,
    /// Kind, e.g. `ConfigMap`.
    pub kind: String,
    /// Namespace, `None` when cluster-scoped.
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
    /// Precondition; `None` inherits the resourceVersion of the object in the snapshot
    /// (and the host refuses a target absent from the snapshot).
    pub resource_version: Option<String>,
}

impl Target {
    /// The object of kind `K` named `name` in `namespace`, with the snapshot's
    /// resourceVersion as precondition.
    pub fn new<K: Kind + ?Sized>(namespace: Option<&str>, name: impl Into<String>) -> Self {
        Self {
            api_version: K::api_version(),
            kind: K::KIND.to_owned(),
            namespace: namespace.map(str::to_owned),
            name: name.into(),
            resource_version: None,
        }
    }

    /// The target naming `object`, with its `metadata.resourceVersion` (if any) as
    /// precondition.
    ///
    /// # Errors
    ///
    /// A permanent [`Error`] if the object does not serialise or has no name.
    pub fn of(object: impl IntoObject) -> Result<Self, Error> {
        let value = object.into_object()?;
        let name = meta_str(&value, "name")
            .ok_or_else(|| Error::permanent("a target object has no metadata.name"))?;
        Ok(Self {
            api_version: value["apiVersion"].as_str().unwrap_or_default().to_owned(),
            kind: value["kind"].as_str().unwrap_or_default().to_owned(),
            namespace: meta_str(&value, "namespace").map(str::to_owned),
            name: name.to_owned(),
            resource_version: meta_str(&value, "resourceVersion").map(str::to_owned),
        })
    }

    /// Sets the precondition.
    #[must_use]
    pub fn resource_version(mut self, resource_version: impl Into<String>) -> Self {
        self.resource_version = Some(resource_version.into());
        self
    }
}

/// Something a [`Target`] can be taken from: a `Target`, or an object
/// ([`IntoObject`]).
pub trait IntoTarget {
    /// The target.
    ///
    /// # Errors
    ///
    /// As [`Target::of`].
    fn into_target(self) -> Result<Target, Error>;
}

impl IntoTarget for Target {
    fn into_target(self) -> Result<Target, Error> {
        Ok(self)
    }
}

impl<O: IntoObject> IntoTarget for O {
    fn into_target(self) -> Result<Target, Error> {
        Target::of(self)
    }
}

/// An Event to record about the primary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Normal or Warning.
    pub event_type: EventType,
    /// Machine-readable, UpperCamelCase, e.g. `Scaled`.
    pub reason: String,
    /// Human-readable text.
    pub note: String,
}

/// Kind of a Kubernetes Event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    /// Something expected happened.
    Normal,
    /// Something the object's owner should look at.
    Warning,
}

impl Output {
    /// An output that changes nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Creates or updates `object` through server-side apply with the plugin's field
    /// manager. The host adds a controller owner reference to the primary, and, if the
    /// object is in the snapshot, its resourceVersion as precondition. Declare only the
    /// fields you care about: fields other writers own are left alone.
    #[must_use]
    pub fn apply(self, object: impl IntoObject) -> Self {
        self.push(|| object.into_object().map(Mutation::Apply))
    }

    /// Creates `object`; the write fails if it exists.
    #[must_use]
    pub fn create(self, object: impl IntoObject) -> Self {
        self.push(|| object.into_object().map(Mutation::Create))
    }

    /// Replaces `object`, with its `metadata.resourceVersion` (or, when it has none, the
    /// snapshot's) as precondition.
    #[must_use]
    pub fn update(self, object: impl IntoObject) -> Self {
        self.push(|| object.into_object().map(Mutation::Update))
    }

    /// Applies a JSON merge patch to `target` (a [`Target`] or an object, whose
    /// resourceVersion becomes the precondition).
    #[must_use]
    pub fn merge_patch(self, target: impl IntoTarget, patch: impl Serialize) -> Self {
        self.push(|| {
            let target = target.into_target()?;
            let patch = serde_json::to_value(patch)?;
            if !patch.is_object() {
                return Err(Error::permanent(format!(
                    "a merge patch of {} {} is not a JSON object",
                    target.kind, target.name
                )));
            }
            Ok(Mutation::MergePatch { target, patch })
        })
    }

    /// Deletes `target` (a [`Target`] or an object, whose resourceVersion becomes the
    /// precondition).
    #[must_use]
    pub fn delete(self, target: impl IntoTarget) -> Self {
        self.push(|| target.into_target().map(Mutation::Delete))
    }

    /// Replaces the status of `object` through the status subresource. Only
    /// `apiVersion`, `kind`, `metadata.{name, namespace, resourceVersion, uid}` and
    /// `status` are sent. See the [type docs](Self#status-and-conditions) for how this
    /// combines with [`condition`](Self::condition).
    #[must_use]
    pub fn update_status(self, object: impl IntoObject) -> Self {
        self.push(|| status_only(object.into_object()?).map(Mutation::UpdateStatus))
    }

    /// Replaces the status of the request's primary with `status` through the status
    /// subresource: the same as [`update_status`](Self::update_status) of the primary
    /// with only its status changed, without decoding the primary.
    #[must_use]
    pub fn update_status_of(self, request: &Request, status: impl Serialize) -> Self {
        self.push(|| {
            let status = serde_json::to_value(status)?;
            let mut metadata = Map::new();
            let identity = [
                ("name", Some(request.name())),
                ("namespace", request.namespace()),
                ("resourceVersion", request.resource_version()),
                ("uid", request.uid()),
            ];
            for (field, value) in identity {
                if let Some(value) = value {
                    metadata.insert(field.to_owned(), Value::String(value.to_owned()));
                }
            }
            let gvk = request.gvk();
            status_only(json!({ "apiVersion": gvk.api_version(), "kind": gvk.kind, "metadata": metadata, "status": status }))
                .map(Mutation::UpdateStatus)
        })
    }

    /// Reconciles the primary again after `delay`, even without events (rounded down to
    /// whole milliseconds).
    #[must_use]
    pub fn requeue_after(mut self, delay: Duration) -> Self {
        self.requeue_after = Some(delay);
        self
    }

    /// Records an Event about the primary.
    #[must_use]
    pub fn event(
        mut self,
        event_type: EventType,
        reason: impl Into<String>,
        note: impl Into<String>,
    ) -> Self {
        self.events.push(Event {
            event_type,
            reason: reason.into(),
            note: note.into(),
        });
        self
    }

    /// Merges a condition into the primary's status; the host stamps it with
    /// `observedGeneration`. A later condition of the same type replaces an earlier one.
    #[must_use]
    pub fn condition(mut self, condition: Condition) -> Self {
        self.conditions
            .retain(|c| c.condition_type != condition.condition_type);
        self.conditions.push(condition);
        self
    }

    /// Asks the host to delete the primary's owned children (of the plugin's writable
    /// kinds) that this output does not `apply`.
    #[must_use]
    pub fn prune(mut self) -> Self {
        self.prune = true;
        self
    }

    /// Appends a mutation as is.
    #[must_use]
    pub fn mutation(mut self, mutation: Mutation) -> Self {
        if self.problem.is_none() {
            self.mutations.push(mutation);
        }
        self
    }

    /// The mutations, in order.
    pub fn mutations(&self) -> &[Mutation] {
        &self.mutations
    }

    /// The requested requeue delay.
    pub fn requeue(&self) -> Option<Duration> {
        self.requeue_after
    }

    /// The events to record.
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// The conditions to merge.
    pub fn conditions(&self) -> &[Condition] {
        &self.conditions
    }

    /// Whether pruning was asked for.
    pub fn prunes(&self) -> bool {
        self.prune
    }

    /// The first builder problem (see [Errors](Self#errors)); a reconcile returning this
    /// output fails with it.
    pub fn problem(&self) -> Option<&Error> {
        self.problem.as_ref()
    }

    fn push(mut self, mutation: impl FnOnce() -> Result<Mutation, Error>) -> Self {
        if self.problem.is_none() {
            match mutation() {
                Ok(m) => self.mutations.push(m),
                Err(e) => self.problem = Some(e),
            }
        }
        self
    }
}

/// `{apiVersion, kind, metadata: {name, namespace, resourceVersion, uid}, status}`.
fn status_only(object: Value) -> Result<Value, Error> {
    let Value::Object(mut full) = object else {
        unreachable!("to_object returns objects")
    };
    let status = full
        .remove("status")
        .filter(|s| !s.is_null())
        .ok_or_else(|| {
            Error::permanent(format!(
                "update_status of {} {:?}: the object has no status",
                full.get("kind").and_then(Value::as_str).unwrap_or_default(),
                full.get("metadata")
                    .and_then(|m| m.get("name"))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
            ))
        })?;
    let mut meta = Map::new();
    if let Some(Value::Object(m)) = full.get("metadata") {
        for field in ["name", "namespace", "resourceVersion", "uid"] {
            if let Some(v) = m.get(field) {
                meta.insert(field.to_owned(), v.clone());
            }
        }
    }
    let mut out = Map::new();
    out.insert(
        "apiVersion".into(),
        full.remove("apiVersion").unwrap_or_default(),
    );
    out.insert("kind".into(), full.remove("kind").unwrap_or_default());
    out.insert("metadata".into(), Value::Object(meta));
    out.insert("status".into(), status);
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DynamicObject;
    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn config_map(name: &str, rv: Option<&str>) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                resource_version: rv.map(Into::into),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        }
    }

    #[derive(Serialize)]
    struct Custom {
        metadata: ObjectMeta,
        spec: Value,
        status: Option<Value>,
    }
    impl Kind for Custom {
        const GROUP: &'static str = "rekon.dev";
        const VERSION: &'static str = "v1alpha1";
        const KIND: &'static str = "WebApp";
    }

    #[test]
    fn apply_fills_in_api_version_and_kind_of_custom_types() {
        let app = Custom {
            metadata: config_map("web", None).metadata,
            spec: json!({"image": "nginx"}),
            status: None,
        };
        let out = Output::new().apply(&app);
        let Mutation::Apply(obj) = &out.mutations()[0] else {
            panic!("{out:?}")
        };
        assert_eq!(obj["apiVersion"], "rekon.dev/v1alpha1");
        assert_eq!(obj["kind"], "WebApp");
        assert_eq!(obj["spec"]["image"], "nginx");
    }

    #[test]
    fn json_manifests_are_applied_as_written_and_must_name_their_kind() {
        let manifest = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}});
        let out = Output::new()
            .apply(manifest.clone())
            .delete(manifest.clone());
        assert_eq!(out.mutations()[0], Mutation::Apply(manifest));
        let Mutation::Delete(t) = &out.mutations()[1] else {
            panic!("{out:?}")
        };
        assert_eq!(
            (
                t.kind.as_str(),
                t.name.as_str(),
                t.resource_version.as_deref()
            ),
            ("Service", "web", None)
        );
        let out = Output::new().apply(json!({"kind": "Service", "metadata": {"name": "web"}}));
        assert!(
            out.problem()
                .unwrap()
                .message()
                .contains("\"web\" has no apiVersion or kind"),
            "{:?}",
            out.problem()
        );
    }

    #[test]
    fn delete_takes_target_and_precondition_from_the_object() {
        let out = Output::new().delete(&config_map("old", Some("42")));
        assert_eq!(
            out.mutations(),
            [Mutation::Delete(Target {
                api_version: "v1".into(),
                kind: "ConfigMap".into(),
                namespace: Some("default".into()),
                name: "old".into(),
                resource_version: Some("42".into()),
            })]
        );
        let out = Output::new().delete(Target::new::<ConfigMap>(None, "cluster-wide"));
        let Mutation::Delete(t) = &out.mutations()[0] else {
            panic!()
        };
        assert_eq!(
            (t.namespace.as_deref(), t.resource_version.as_deref()),
            (None, None)
        );
    }

    #[test]
    fn update_status_sends_only_identity_and_status() {
        let app = Custom {
            metadata: ObjectMeta {
                labels: Some([("a".into(), "b".into())].into()),
                ..config_map("web", Some("9")).metadata
            },
            spec: json!({"image": "nginx"}),
            status: Some(json!({"readyReplicas": 2})),
        };
        let out = Output::new().update_status(&app);
        assert_eq!(
            out.mutations(),
            [Mutation::UpdateStatus(json!({
                "apiVersion": "rekon.dev/v1alpha1", "kind": "WebApp",
                "metadata": {"name": "web", "namespace": "default", "resourceVersion": "9"},
                "status": {"readyReplicas": 2},
            }))]
        );
    }

    #[test]
    fn update_status_of_takes_the_identity_from_the_request() {
        let req = Request::from_json(
            r#"{"apiVersion":"rekon.dev/v1alpha1","kind":"WebApp","metadata":{"name":"web","namespace":"ns","resourceVersion":"5","uid":"u","labels":{"a":"b"}},"spec":{"image":"x"}}"#.into(),
            vec![],
            String::new(),
        )
        .unwrap();
        let out = Output::new().update_status_of(&req, json!({"readyReplicas": 1}));
        assert_eq!(
            out.mutations(),
            [Mutation::UpdateStatus(json!({
                "apiVersion": "rekon.dev/v1alpha1", "kind": "WebApp",
                "metadata": {"name": "web", "namespace": "ns", "resourceVersion": "5", "uid": "u"},
                "status": {"readyReplicas": 1},
            }))]
        );
        let out = Output::new().update_status_of(&req, ());
        assert!(
            out.problem().unwrap().message().contains("has no status"),
            "{:?}",
            out.problem()
        );
    }

    #[test]
    fn a_builder_problem_is_kept_and_stops_later_mutations() {
        let untyped = DynamicObject {
            metadata: config_map("x", None).metadata,
            ..DynamicObject::default()
        };
        let out = Output::new()
            .apply(&config_map("a", None))
            .apply(&untyped)
            .apply(&config_map("b", None));
        assert_eq!(out.mutations().len(), 1);
        assert!(
            out.problem()
                .unwrap()
                .message()
                .contains("no apiVersion or kind"),
            "{:?}",
            out.problem()
        );
        let out = Output::new().update_status(&config_map("a", None));
        assert!(out.problem().unwrap().message().contains("has no status"));
        let out = Output::new().merge_patch(Target::new::<ConfigMap>(None, "a"), json!([1]));
        assert!(
            out.problem()
                .unwrap()
                .message()
                .contains("not a JSON object")
        );
    }

    #[test]
    fn a_later_condition_of_the_same_type_replaces_the_earlier() {
        let out = Output::new()
            .condition(Condition::new("Ready", false, "Progressing", ""))
            .condition(Condition::new("Degraded", false, "AsExpected", ""))
            .condition(Condition::new("Ready", true, "Available", ""));
        let kinds: Vec<_> = out
            .conditions()
            .iter()
            .map(|c| (c.condition_type.as_str(), c.reason.as_str()))
            .collect();
        assert_eq!(kinds, [("Degraded", "AsExpected"), ("Ready", "Available")]);
    }
}
