//! Applying a plugin's output to the API server, conflict-safe.
//!
//! # Guarantees (invariant 3, no blind writes)
//! - `apply` is server-side apply with one field manager per plugin (`rekon-<plugin>`),
//!   forced (the plugin decided on what it saw), carrying the snapshot's
//!   resourceVersion when the object was in the snapshot, so a change since is refused
//!   with 409 Conflict. The host adds a controller owner reference to the primary (not
//!   when the object is the primary itself) and defaults the namespace to the primary's.
//! - `update`, `update-status`, `merge-patch` and `delete` carry the resourceVersion (and
//!   for patch and delete the uid) the plugin gave or the snapshot had; a target the
//!   snapshot does not hold and that carries no resourceVersion is refused
//!   ([`Error::NoPrecondition`]) instead of being written blindly.
//! - `create` fails if the object exists (AlreadyExists is reported as a conflict).
//! - The first conflict stops the output: the remaining mutations are dropped and the
//!   caller requeues the primary promptly.
//! - A later mutation of an object the same output already wrote (say, the host's status
//!   write after the plugin applied fields of its own primary) carries the
//!   resourceVersion that write returned: only the plugin's own write came in between.
//! - Every write stays within the primary's [`owner::Scope`]: its namespace (or, for a
//!   Namespace, the one it names), cluster-scoped objects only for cluster-scoped
//!   primaries; anything else is refused ([`Error::OutOfScope`]) before it is sent.
//! - Conditions are merged into the primary's status (observedGeneration,
//!   lastTransitionTime) and written through the status subresource with the primary's
//!   resourceVersion; a status equal to the snapshot's is not written.
//! - Every successful write is returned with the resourceVersion the server answered, for
//!   read-your-writes.

pub mod check;
pub mod events;
pub mod owner;
pub mod status;

use crate::contract::{Gvk, Mutation, Output, Target, kind_of, meta};
use crate::kinds::{self, Kinds};
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams, Preconditions};
use owner::Scope;
use serde_json::{Value, json};
use std::collections::HashMap;

/// An object's identity in a snapshot.
type Key = (Gvk, Option<String>, String);

/// The objects a plugin saw in one reconcile (its request), by kind, namespace and name.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    seen: HashMap<Key, (String, String)>,
}

impl Snapshot {
    /// Indexes `objects` (the primary and the related objects of the request).
    pub fn new<'a>(objects: impl IntoIterator<Item = &'a Value>) -> Self {
        let mut seen = HashMap::new();
        for o in objects {
            let s = |p: &str| o.pointer(p).and_then(Value::as_str);
            if let (Some(av), Some(kind), Some(name)) =
                (s("/apiVersion"), s("/kind"), s("/metadata/name"))
            {
                let key = (
                    Gvk::from_api_version(av, kind),
                    s("/metadata/namespace").map(str::to_owned),
                    name.to_owned(),
                );
                let rv = s("/metadata/resourceVersion")
                    .unwrap_or_default()
                    .to_owned();
                let uid = s("/metadata/uid").unwrap_or_default().to_owned();
                seen.insert(key, (rv, uid));
            }
        }
        Self { seen }
    }

    /// The (resourceVersion, uid) the plugin saw for an object.
    pub fn get(&self, kind: &Gvk, namespace: Option<&str>, name: &str) -> Option<(&str, &str)> {
        self.seen
            .get(&(kind.clone(), namespace.map(str::to_owned), name.to_owned()))
            .map(|(rv, uid)| (rv.as_str(), uid.as_str()))
    }

    /// Records a write of the same output: a later mutation of that object carries the
    /// resourceVersion the write returned (the uid stays the one seen). A completed
    /// delete (no resourceVersion) changes nothing.
    pub fn record(&mut self, written: &Written) {
        let Some(rv) = &written.resource_version else {
            return;
        };
        let key = (
            written.kind.clone(),
            written.namespace.clone(),
            written.name.clone(),
        );
        self.seen.entry(key).or_default().0.clone_from(rv);
    }
}

/// A write the server accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The kind.
    pub kind: Gvk,
    /// Namespace.
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
    /// The resourceVersion the server returned; `None` for a completed delete.
    pub resource_version: Option<String>,
    /// The mutation verb.
    pub verb: &'static str,
    /// The resourceVersion the write was conditioned on (the object as the plugin saw
    /// it); `None` when it did not exist or was not seen.
    pub previous: Option<String>,
    /// A digest of what the plugin asked for (the object or patch without server-set
    /// metadata; for status writes, the status): equal digests mean the same intent.
    pub intent: u64,
    /// The object's field managers after the write, the latest change first.
    pub managers: Vec<String>,
}

/// Why applying stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object changed since the snapshot, or already exists (409). Requeue promptly.
    #[error("{verb} {what}: conflict, the object changed since the plugin saw it: {source}")]
    Conflict {
        /// Mutation verb.
        verb: &'static str,
        /// The object.
        what: String,
        /// The API error.
        #[source]
        source: Box<kube::Error>,
    },
    /// A write outside the primary's [`Scope`]: a namespace other than the primary's, a
    /// namespaced object for a cluster-scoped primary (other than a Namespace), or a
    /// cluster-scoped object for a namespaced primary.
    #[error("{verb} {what}: refused, outside the primary's scope: {scope}")]
    OutOfScope {
        /// Mutation verb.
        verb: &'static str,
        /// The object.
        what: String,
        /// The primary's scope, described.
        scope: String,
    },
    /// A write to an object the plugin did not see, without a resourceVersion.
    #[error(
        "{verb} {what}: refused, the object is not in the plugin's snapshot and carries no resourceVersion"
    )]
    NoPrecondition {
        /// Mutation verb.
        verb: &'static str,
        /// The object.
        what: String,
    },
    /// The API server refused the write (403, 422, ...).
    #[error("{verb} {what}: refused by the API server ({code}): {source}")]
    Refused {
        /// Mutation verb.
        verb: &'static str,
        /// The object.
        what: String,
        /// HTTP status.
        code: u16,
        /// The API error.
        #[source]
        source: Box<kube::Error>,
    },
    /// The API server could not be reached or failed (retry with backoff).
    #[error("{verb} {what}: API server unavailable: {source}")]
    Unavailable {
        /// Mutation verb.
        verb: &'static str,
        /// The object.
        what: String,
        /// The cause.
        #[source]
        source: Box<kube::Error>,
    },
    /// The kind could not be resolved.
    #[error(transparent)]
    UnknownKind(#[from] Box<kinds::Error>),
}

impl Error {
    /// A bounded label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Conflict { .. } => "conflict",
            Error::OutOfScope { .. } => "out_of_scope",
            Error::NoPrecondition { .. } => "no_precondition",
            Error::Refused { .. } => "refused",
            Error::Unavailable { .. } => "unavailable",
            Error::UnknownKind(_) => "unknown_kind",
        }
    }

    /// Whether this is a conflict (the plugin should decide again on fresh state).
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Conflict { .. })
    }

    fn from_kube(verb: &'static str, what: String, source: kube::Error) -> Self {
        let source = Box::new(source);
        match source.as_ref() {
            kube::Error::Api(s) if s.code == 409 => Error::Conflict { verb, what, source },
            kube::Error::Api(s) if s.code < 500 && s.code != 429 => Error::Refused {
                verb,
                what,
                code: s.code,
                source,
            },
            _ => Error::Unavailable { verb, what, source },
        }
    }
}

/// What applying an output did: the writes made, and the error that stopped it, if any.
#[derive(Debug, Default)]
pub struct Applied {
    /// Accepted writes, in order.
    pub written: Vec<Written>,
    /// The error that stopped the output (the rest was dropped).
    pub stopped: Option<Error>,
}

/// Writes plugin outputs.
#[derive(Clone)]
pub struct Applier {
    kinds: Kinds,
}

impl Applier {
    /// An applier writing through `kinds`' client.
    pub fn new(kinds: Kinds) -> Self {
        Self { kinds }
    }

    /// Applies `output` of plugin `plugin` reconciling `primary`, given what the plugin
    /// saw (`snapshot`). `children` are the primary's owned children the plugin saw, for
    /// pruning; `now` is RFC 3339 for condition transition times.
    pub async fn apply(
        &self,
        plugin: &str,
        primary: &Value,
        snapshot: &Snapshot,
        children: &[Value],
        output: &Output,
        now: &str,
    ) -> Applied {
        let mut applied = Applied::default();
        let mut snapshot = snapshot.clone();
        let scope = Scope::of(primary);
        let primary_kind = kind_of(primary);
        let primary_ns = meta(primary, "namespace");
        let primary_name = meta(primary, "name").unwrap_or_default();
        let mut primary_status: Option<&Value> = None;
        let mut applied_keys = Vec::new();
        for m in &output.mutations {
            let result = match m {
                Mutation::UpdateStatus(obj)
                    if kind_of(obj) == primary_kind && meta(obj, "name") == Some(primary_name) =>
                {
                    // Written last, merged with the conditions.
                    primary_status = Some(obj);
                    continue;
                }
                Mutation::Apply(obj) => {
                    let r = self
                        .server_side_apply(plugin, primary, &snapshot, obj)
                        .await;
                    if let Ok(w) = &r {
                        applied_keys.push((w.kind.clone(), w.namespace.clone(), w.name.clone()));
                    }
                    r
                }
                _ => self.write(m, scope, &snapshot).await,
            };
            match result {
                Ok(w) => {
                    snapshot.record(&w);
                    applied.written.push(w);
                }
                Err(e) => {
                    applied.stopped = Some(e);
                    return applied;
                }
            }
        }
        if output.prune
            && let Some(uid) = meta(primary, "uid")
        {
            for child in children.iter().filter(|c| owner::controlled_by(c, uid)) {
                let k = kind_of(child);
                let ns = meta(child, "namespace").map(str::to_owned);
                let name = meta(child, "name").unwrap_or_default().to_owned();
                if applied_keys.contains(&(k.clone(), ns.clone(), name.clone())) {
                    continue;
                }
                let target = Target {
                    api_version: k.api_version(),
                    kind: k.kind.clone(),
                    namespace: ns,
                    name,
                    resource_version: None,
                };
                match self
                    .write(&Mutation::Delete(target), scope, &snapshot)
                    .await
                {
                    Ok(w) => applied.written.push(w),
                    Err(e) => {
                        applied.stopped = Some(e);
                        return applied;
                    }
                }
            }
        }
        if let Some(new_status) =
            status::primary_status(primary, primary_status, &output.conditions, now)
        {
            let mut obj = primary.clone();
            obj["status"] = new_status;
            if let Some((rv, _)) = snapshot.get(&primary_kind, primary_ns, primary_name) {
                obj["metadata"]["resourceVersion"] = json!(rv);
            }
            match self
                .write(&Mutation::UpdateStatus(obj), scope, &snapshot)
                .await
            {
                Ok(w) => applied.written.push(w),
                Err(e) => applied.stopped = Some(e),
            }
        }
        applied
    }

    /// Where a `verb` of the object `kind` `name`, naming `namespace` (or none), goes for
    /// a primary of `scope`: the API, the namespace after defaulting (`None` for
    /// cluster-scoped kinds) and the object described for errors.
    async fn locate(
        &self,
        verb: &'static str,
        kind: &Gvk,
        namespace: Option<&str>,
        name: &str,
        scope: Scope<'_>,
    ) -> Result<(Api<DynamicObject>, Option<String>, String), Error> {
        let r = self.kinds.resolve(kind).await.map_err(Box::new)?;
        let client = self.kinds.client().clone();
        let ns = if r.namespaced {
            namespace.or(scope.namespace())
        } else {
            None
        };
        let what = describe(kind, ns, name);
        if !scope.admits(r.namespaced, ns) {
            return Err(Error::OutOfScope {
                verb,
                what,
                scope: scope.to_string(),
            });
        }
        let api = match ns {
            Some(ns) => Api::namespaced_with(client, ns, &r.resource),
            None => Api::all_with(client, &r.resource),
        };
        Ok((api, ns.map(str::to_owned), what))
    }

    async fn server_side_apply(
        &self,
        plugin: &str,
        primary: &Value,
        snapshot: &Snapshot,
        obj: &Value,
    ) -> Result<Written, Error> {
        let kind = kind_of(obj);
        let name = meta(obj, "name").unwrap_or_default().to_owned();
        let (api, ns, what) = self
            .locate(
                "apply",
                &kind,
                meta(obj, "namespace"),
                &name,
                Scope::of(primary),
            )
            .await?;
        let mut desired = obj.clone();
        if let Some(ns) = &ns {
            desired["metadata"]["namespace"] = json!(ns);
        }
        owner::set_controller_ref(&mut desired, primary);
        if let Some((rv, _)) = snapshot.get(&kind, ns.as_deref(), &name) {
            desired["metadata"]["resourceVersion"] = json!(rv);
        }
        let params = PatchParams::apply(&field_manager(plugin)).force();
        let previous = snapshot
            .get(&kind, ns.as_deref(), &name)
            .map(|(rv, _)| rv.to_owned());
        let out = api
            .patch(&name, &params, &Patch::Apply(&desired))
            .await
            .map_err(|e| Error::from_kube("apply", what, e))?;
        let mut w = written(&kind, ns, name, "apply", Some(out));
        w.previous = previous.filter(|rv| !rv.is_empty());
        w.intent = intent(obj, false);
        Ok(w)
    }

    async fn write(
        &self,
        m: &Mutation,
        scope: Scope<'_>,
        snapshot: &Snapshot,
    ) -> Result<Written, Error> {
        let verb = m.verb();
        let (kind, ns, name) = match m {
            Mutation::Apply(o)
            | Mutation::Create(o)
            | Mutation::Update(o)
            | Mutation::UpdateStatus(o) => (
                kind_of(o),
                meta(o, "namespace").map(str::to_owned),
                meta(o, "name").unwrap_or_default().to_owned(),
            ),
            Mutation::MergePatch { target, .. } | Mutation::Delete(target) => {
                (target.gvk(), target.namespace.clone(), target.name.clone())
            }
        };
        let (api, ns, what) = self
            .locate(verb, &kind, ns.as_deref(), &name, scope)
            .await?;
        let seen = snapshot.get(&kind, ns.as_deref(), &name);
        let explicit_rv = match m {
            Mutation::MergePatch { target, .. } | Mutation::Delete(target) => {
                target.resource_version.clone()
            }
            Mutation::Update(o) | Mutation::UpdateStatus(o) => meta(o, "resourceVersion")
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
            _ => None,
        };
        let rv = explicit_rv
            .or_else(|| seen.map(|(rv, _)| rv.to_owned()))
            .filter(|s| !s.is_empty());
        let uid = seen
            .map(|(_, uid)| uid.to_owned())
            .filter(|s| !s.is_empty());
        let fail = |e| Error::from_kube(verb, what.clone(), e);
        let needs_rv = !matches!(m, Mutation::Create(_) | Mutation::Apply(_));
        if needs_rv && rv.is_none() {
            return Err(Error::NoPrecondition { verb, what });
        }
        let object = |o: &Value| -> Result<DynamicObject, Error> {
            let mut o = o.clone();
            if let Some(ns) = &ns {
                o["metadata"]["namespace"] = json!(ns);
            }
            if let Some(rv) = &rv {
                o["metadata"]["resourceVersion"] = json!(rv);
            }
            serde_json::from_value(o).map_err(|e| Error::Refused {
                verb,
                what: what.clone(),
                code: 422,
                source: Box::new(kube::Error::SerdeError(e)),
            })
        };
        let out = match m {
            Mutation::Create(o) => Some(
                api.create(&PostParams::default(), &object(o)?)
                    .await
                    .map_err(fail)?,
            ),
            Mutation::Update(o) => Some(
                api.replace(&name, &PostParams::default(), &object(o)?)
                    .await
                    .map_err(fail)?,
            ),
            Mutation::UpdateStatus(o) => Some(
                api.replace_status(&name, &PostParams::default(), &object(o)?)
                    .await
                    .map_err(fail)?,
            ),
            Mutation::MergePatch { patch, .. } => {
                let mut patch = patch.clone();
                patch["metadata"]["resourceVersion"] = json!(rv);
                if let Some(uid) = &uid {
                    patch["metadata"]["uid"] = json!(uid);
                }
                Some(
                    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                        .map_err(fail)?,
                )
            }
            Mutation::Delete(_) => {
                let dp = DeleteParams {
                    preconditions: Some(Preconditions {
                        resource_version: rv.clone(),
                        uid: uid.clone(),
                    }),
                    ..Default::default()
                };
                match api.delete(&name, &dp).await {
                    Ok(either) => either.left(),
                    Err(kube::Error::Api(s)) if s.code == 404 => None,
                    Err(e) => return Err(fail(e)),
                }
            }
            Mutation::Apply(_) => unreachable!("apply goes through server_side_apply"),
        };
        let mut w = written(&kind, ns, name, verb, out);
        w.previous = rv;
        w.intent = match m {
            Mutation::Apply(o) | Mutation::Create(o) | Mutation::Update(o) => intent(o, false),
            Mutation::UpdateStatus(o) => intent(o, true),
            Mutation::MergePatch { patch, .. } => intent(patch, false),
            Mutation::Delete(_) => 0,
        };
        Ok(w)
    }
}

fn written(
    kind: &Gvk,
    namespace: Option<String>,
    name: String,
    verb: &'static str,
    out: Option<DynamicObject>,
) -> Written {
    let (resource_version, managers) = match out {
        Some(o) => {
            let mut fields = o.metadata.managed_fields.unwrap_or_default();
            fields.sort_by(|a, b| b.time.cmp(&a.time));
            let managers = fields.into_iter().filter_map(|f| f.manager).collect();
            (o.metadata.resource_version, managers)
        }
        None => (None, Vec::new()),
    };
    Written {
        kind: kind.clone(),
        namespace,
        name,
        resource_version,
        verb,
        previous: None,
        intent: 0,
        managers,
    }
}

/// A digest of a write's intent: `status` only for status writes, else the body without
/// the metadata the server sets or the host adds per write.
fn intent(body: &Value, status_only: bool) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut v = if status_only {
        body.get("status").cloned().unwrap_or(Value::Null)
    } else {
        body.clone()
    };
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        for k in [
            "resourceVersion",
            "managedFields",
            "generation",
            "uid",
            "creationTimestamp",
        ] {
            m.remove(k);
        }
    }
    let mut h = std::hash::DefaultHasher::new();
    v.to_string().hash(&mut h);
    h.finish()
}

/// The field manager of a plugin's server-side applies.
pub fn field_manager(plugin: &str) -> String {
    format!("rekon-{plugin}")
}

fn describe(kind: &Gvk, ns: Option<&str>, name: &str) -> String {
    match ns {
        Some(ns) => format!("{} {ns}/{name}", kind.kind),
        None => format!("{} {name}", kind.kind),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment_written(rv: Option<&str>) -> Written {
        Written {
            kind: Gvk::new("apps", "v1", "Deployment"),
            namespace: Some("a".into()),
            name: "w".into(),
            resource_version: rv.map(str::to_owned),
            verb: "apply",
            previous: None,
            intent: 0,
            managers: Vec::new(),
        }
    }

    #[test]
    fn intent_ignores_server_metadata_and_status_writes_compare_status_only() {
        let a = json!({"metadata": {"name": "x", "resourceVersion": "1"}, "data": {"k": "v"}});
        let b = json!({"metadata": {"name": "x", "resourceVersion": "2",
            "managedFields": []}, "data": {"k": "v"}});
        let c = json!({"metadata": {"name": "x"}, "data": {"k": "w"}});
        assert_eq!(intent(&a, false), intent(&b, false));
        assert_ne!(intent(&a, false), intent(&c, false));
        let s1 = json!({"metadata": {"resourceVersion": "1"}, "spec": 1, "status": {"r": 1}});
        let s2 = json!({"metadata": {"resourceVersion": "5"}, "spec": 2, "status": {"r": 1}});
        assert_eq!(intent(&s1, true), intent(&s2, true));
    }

    #[test]
    fn a_later_write_of_an_object_this_output_wrote_carries_the_returned_version() {
        // The plugin applied fields of its own primary (rv 7 → 8); the status write that
        // follows must not conflict with that write.
        let primary = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "w", "namespace": "a", "resourceVersion": "7", "uid": "u"}});
        let mut s = Snapshot::new([&primary]);
        let d = Gvk::new("apps", "v1", "Deployment");
        s.record(&deployment_written(Some("8")));
        assert_eq!(s.get(&d, Some("a"), "w"), Some(("8", "u")), "the uid stays");
        s.record(&deployment_written(None));
        assert_eq!(
            s.get(&d, Some("a"), "w"),
            Some(("8", "u")),
            "a completed delete changes nothing"
        );
        let created = Written {
            name: "new".into(),
            ..deployment_written(Some("9"))
        };
        s.record(&created);
        assert_eq!(s.get(&d, Some("a"), "new"), Some(("9", "")));
    }

    #[test]
    fn scope_errors_have_their_own_metric_label() {
        let e = Error::OutOfScope {
            verb: "apply",
            what: "Deployment default/w".into(),
            scope: Scope::Cluster.to_string(),
        };
        assert_eq!(e.metric_label(), "out_of_scope");
        assert!(e.to_string().contains("cluster-scoped objects only"), "{e}");
    }

    #[test]
    fn the_snapshot_finds_what_the_plugin_saw_by_kind_namespace_and_name() {
        let objs = [json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "w", "namespace": "a", "resourceVersion": "7", "uid": "u"}})];
        let s = Snapshot::new(&objs);
        let d = Gvk::new("apps", "v1", "Deployment");
        assert_eq!(s.get(&d, Some("a"), "w"), Some(("7", "u")));
        assert_eq!(s.get(&d, Some("b"), "w"), None);
    }
}
