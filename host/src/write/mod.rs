//! Writing a plugin's output to the API server, conflict-safe and with consent.
//!
//! # Guarantees (docs/design.md, invariants 3, 7 and 9)
//! - `apply` is server-side apply with one field manager per plugin (`rekon-<plugin>`).
//!   The host adds a controller owner reference to the primary (not when the object is
//!   the primary itself) and defaults the namespace to the primary's.
//! - **Consent.** An apply never takes over an object the primary does not control:
//!   - the target is the primary itself, or in the snapshot and controlled by the
//!     primary: forced, carrying the snapshot's resourceVersion (a change since is a
//!     409 Conflict);
//!   - the target is not in the snapshot: the host reads it from the API server first.
//!     Absent: created by an apply that is not forced (a racing creator's contested
//!     fields give 409). Present and controlled by the primary: as if seen, with the
//!     resourceVersion just read;
//!   - present (seen or not) and not controlled by the primary: refused with
//!     [`Error::NotOwned`], naming the object's controller or field managers, unless the
//!     plugin's options adopt that kind; an adopting apply carries the resourceVersion
//!     observed, so a concurrent change still gives 409.
//!   - An apply carrying a resourceVersion whose object was deleted meanwhile is not
//!     refused by the API server: it creates the object anew (with another uid). The
//!     host deletes that object again at once (conditioned on its uid and
//!     resourceVersion) and stops with [`Error::Gone`]: a deleted primary never comes
//!     back, nor a deleted primary's child, and the plugin decides again on the cache
//!     that shows the deletion.
//! - `update`, `update-status`, `merge-patch` and `delete` carry the resourceVersion (and
//!   for patch and delete the uid) the plugin gave or the snapshot had; a target the
//!   snapshot does not hold and that carries no resourceVersion is refused
//!   ([`Error::NoPrecondition`]) instead of being written blindly ([`prepare`]).
//! - `create` fails if the object exists: [`Error::AlreadyExists`], which is a failure
//!   (backoff), not a conflict to re-decide at once.
//! - The first error stops the output: the remaining mutations are dropped.
//! - A later mutation of an object the same output already wrote (say, the host's status
//!   write after the plugin applied fields of its own primary) carries the
//!   resourceVersion that write returned: only the plugin's own write came in between.
//!   Objects created with `generateName` are recorded under the name the server gave.
//! - Every write stays within the primary's [`owner::Scope`] and within the namespace
//!   the host watches (when it watches one): anything else is refused
//!   ([`Error::OutOfScope`]) before it is sent, since the host could never see it.
//! - Pruning deletes only children the primary controls.
//! - Conditions are merged into the primary's status (observedGeneration,
//!   lastTransitionTime) and written through the status subresource with the primary's
//!   resourceVersion; a status equal to the snapshot's is not written.
//! - Every accepted write is returned ([`Written`]) with what read-your-writes waits for:
//!   the resourceVersion the server answered, or for a completed delete the uid that
//!   must leave the cache.

pub mod check;
pub mod events;
pub mod owner;
pub mod status;

use crate::contract::{Gvk, Mutation, Output, Target, kind_of, meta};
use crate::fence::{Fence, Fenced};
use crate::kinds::{self, Kinds};
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams, Preconditions};
use owner::Scope;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

/// An object's identity in a snapshot.
type Key = (Gvk, Option<String>, String);

/// What the plugin saw of one object.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Seen {
    /// Its resourceVersion ("" when unknown).
    pub resource_version: String,
    /// Its uid ("" when unknown).
    pub uid: String,
    /// The uid of its controller owner, if any.
    pub controller: Option<String>,
}

/// The objects a plugin saw in one reconcile (its request), by kind, namespace and name.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    seen: HashMap<Key, Seen>,
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
                seen.insert(key, seen_of(o));
            }
        }
        Self { seen }
    }

    /// What the plugin saw of an object.
    pub fn get(&self, kind: &Gvk, namespace: Option<&str>, name: &str) -> Option<&Seen> {
        self.seen
            .get(&(kind.clone(), namespace.map(str::to_owned), name.to_owned()))
    }

    /// Records a write of the same output: a later mutation of that object carries the
    /// resourceVersion the write returned (the uid stays the one seen; a created object
    /// gets the uid the server gave). A completed delete changes nothing.
    pub fn record(&mut self, written: &Written) {
        let (Some(rv), false) = (&written.resource_version, written.name.is_empty()) else {
            return;
        };
        let key = (
            written.kind.clone(),
            written.namespace.clone(),
            written.name.clone(),
        );
        let entry = self.seen.entry(key).or_default();
        entry.resource_version.clone_from(rv);
        if entry.uid.is_empty()
            && let Some(uid) = &written.uid
        {
            entry.uid.clone_from(uid);
        }
    }
}

fn seen_of(o: &Value) -> Seen {
    let s = |p: &str| o.pointer(p).and_then(Value::as_str).unwrap_or_default();
    Seen {
        resource_version: s("/metadata/resourceVersion").to_owned(),
        uid: s("/metadata/uid").to_owned(),
        controller: owner::controller_uid(o).map(str::to_owned),
    }
}

/// A write the server accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The kind.
    pub kind: Gvk,
    /// Namespace.
    pub namespace: Option<String>,
    /// Name (the one the server gave, for `generateName`).
    pub name: String,
    /// The resourceVersion the server returned; `None` for a completed delete.
    pub resource_version: Option<String>,
    /// The object's uid: the one the server returned, or for a completed delete the one
    /// deleted (read-your-writes waits until the cache no longer holds it).
    pub uid: Option<String>,
    /// The mutation verb.
    pub verb: &'static str,
    /// The resourceVersion the write was conditioned on (the object as the plugin saw
    /// it); `None` when it did not exist or was not seen.
    pub previous: Option<String>,
    /// A digest of what the plugin asked for (the object or patch without server-set
    /// metadata; for status writes, the status): equal digests mean the same intent.
    pub digest: u64,
    /// The object's field managers after the write, the latest change first.
    pub managers: Vec<String>,
}

impl Written {
    /// Whether this write removed the object (read-your-writes waits for its absence).
    pub fn is_gone(&self) -> bool {
        self.verb == "delete" && self.resource_version.is_none()
    }
}

/// An object the API server no longer has (a 404 to a write conditioned on it, or a
/// primary gone before a child would be created for it) while the cache may still show
/// it: read-your-writes waits until the cache no longer holds this uid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vanished {
    /// The kind.
    pub kind: Gvk,
    /// Namespace.
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
    /// The uid the cache must no longer hold.
    pub uid: String,
}

impl Vanished {
    fn new(kind: &Gvk, namespace: Option<&str>, name: &str, uid: &str) -> Box<Self> {
        Box::new(Self {
            kind: kind.clone(),
            namespace: namespace.map(str::to_owned),
            name: name.to_owned(),
            uid: uid.to_owned(),
        })
    }
}

/// Why writing an output stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object changed since the snapshot (409). Decide again on fresh state.
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
    /// A `create` of an object that exists (409 AlreadyExists): the plugin did not see
    /// it, so deciding again at once would create it again. Backs off as a failure.
    #[error("{verb} {what}: the object already exists and the plugin did not see it: {source}")]
    AlreadyExists {
        /// Mutation verb.
        verb: &'static str,
        /// The object.
        what: String,
        /// The API error.
        #[source]
        source: Box<kube::Error>,
    },
    /// An apply to an object that exists and is not controlled by the primary, of a kind
    /// the plugin's options do not adopt. Nothing was written.
    #[error(
        "apply {what}: refused, the object exists and is not controlled by {primary} ({holder}); \
         to let the plugin take it over, list its kind under `adopt` in the plugin's configuration"
    )]
    NotOwned {
        /// The object.
        what: String,
        /// The primary, described.
        primary: String,
        /// Who holds it: its controller, or its field managers.
        holder: String,
    },
    /// A write outside the primary's [`Scope`], or into a namespace the host does not
    /// watch (it could never see the result).
    #[error("{verb} {what}: refused, outside the primary's scope: {scope}")]
    OutOfScope {
        /// Mutation verb.
        verb: &'static str,
        /// The object.
        what: String,
        /// The scope, described.
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
    /// The object the write was conditioned on no longer exists (404, or an apply
    /// created it anew and the host deleted that again), or the primary is gone before a
    /// child would be created for it: the cache is behind. Nothing was written (or what
    /// was, was undone); the plugin decides again once the cache shows it gone (`gone`).
    #[error("{verb} {what}: the object is gone; deciding again once the cache shows it")]
    Gone {
        /// Mutation verb.
        verb: &'static str,
        /// The object.
        what: String,
        /// What read-your-writes waits for, when the uid is known.
        vanished: Option<Box<Vanished>>,
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
    /// This process may not write now (it does not hold its leader Lease): nothing was
    /// sent.
    #[error("{verb} {what}: not written: {source}")]
    Fenced {
        /// Mutation verb.
        verb: &'static str,
        /// The object.
        what: String,
        /// Why the fence is closed.
        #[source]
        source: Fenced,
    },
    /// The API server did not answer within the request deadline. The write's outcome is
    /// unknown: the next reconcile decides on what the cache shows then.
    #[error("{verb} {what}: no answer from the API server within {after:?}")]
    Timeout {
        /// Mutation verb.
        verb: &'static str,
        /// The object.
        what: String,
        /// The deadline.
        after: Duration,
    },
}

impl Error {
    /// A bounded label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Conflict { .. } => "conflict",
            Error::Gone { .. } => "gone",
            Error::AlreadyExists { .. } => "already_exists",
            Error::NotOwned { .. } => "not_owned",
            Error::OutOfScope { .. } => "out_of_scope",
            Error::NoPrecondition { .. } => "no_precondition",
            Error::Refused { .. } => "refused",
            Error::Unavailable { .. } => "unavailable",
            Error::UnknownKind(_) => "unknown_kind",
            Error::Fenced { .. } => "fenced",
            Error::Timeout { .. } => "timeout",
        }
    }

    /// Whether this is a conflict (the plugin should decide again on fresh state).
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Conflict { .. })
    }

    /// What read-your-writes must wait for before deciding again ([`Error::Gone`]).
    pub fn vanished(&self) -> Option<&Vanished> {
        match self {
            Error::Gone { vanished, .. } => vanished.as_deref(),
            _ => None,
        }
    }

    /// The reason of the Warning Event recorded on the primary for this error.
    pub fn event_reason(&self) -> &'static str {
        match self {
            Error::NotOwned { .. } => "NotOwned",
            _ => "ApplyFailed",
        }
    }

    fn from_kube(verb: &'static str, what: String, source: kube::Error) -> Self {
        let source = Box::new(source);
        match source.as_ref() {
            kube::Error::Api(s) if s.code == 409 && s.reason == "AlreadyExists" => {
                Error::AlreadyExists { verb, what, source }
            }
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

/// What writing an output did: the writes made, and the error that stopped it, if any.
#[derive(Debug, Default)]
pub struct Report {
    /// Accepted writes, in order.
    pub written: Vec<Written>,
    /// The error that stopped the output (the rest was dropped).
    pub stopped: Option<Error>,
}

/// What one output is written for.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The plugin's name (its field manager is `rekon-<plugin>`).
    pub plugin: &'a str,
    /// The primary as the plugin saw it.
    pub primary: &'a Value,
    /// Everything the plugin saw (the primary and its related objects).
    pub snapshot: &'a Snapshot,
    /// The primary's owned children the plugin saw, for pruning.
    pub children: &'a [Value],
    /// Kinds whose existing objects an apply may take over (the operator's consent).
    pub adopt: &'a [Gvk],
    /// Now, RFC 3339, for condition transition times.
    pub now: &'a str,
}

/// A write other than apply, prepared by [`prepare`]: where it goes and the
/// preconditions it carries.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    /// The mutation verb.
    pub verb: &'static str,
    /// The kind.
    pub kind: Gvk,
    /// The namespace after defaulting (`None` for cluster-scoped kinds).
    pub namespace: Option<String>,
    /// The name.
    pub name: String,
    /// The resourceVersion the write is conditioned on.
    pub resource_version: Option<String>,
    /// The uid the write is conditioned on (patch and delete).
    pub uid: Option<String>,
    /// The body sent (object or patch, with namespace and preconditions set); `None`
    /// for a delete.
    pub body: Option<Value>,
}

impl Prepared {
    fn what(&self) -> String {
        describe(&self.kind, self.namespace.as_deref(), &self.name)
    }
}

/// The target of a mutation: kind, namespace as named, name.
fn target_of(m: &Mutation) -> (Gvk, Option<String>, String) {
    match m {
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
    }
}

/// Where a write to a `namespaced` (or cluster-scoped) kind naming `namespace` (or
/// none) lands for a primary of `scope` on a host watching `watched` (or everything):
/// the namespace after defaulting.
///
/// # Errors
/// [`Error::OutOfScope`] outside the primary's scope or the watched namespace.
pub fn place(
    verb: &'static str,
    kind: &Gvk,
    namespace: Option<&str>,
    name: &str,
    namespaced: bool,
    scope: Scope<'_>,
    watched: Option<&str>,
) -> Result<Option<String>, Error> {
    let ns = if namespaced {
        namespace.or(scope.namespace())
    } else {
        None
    };
    let out_of_scope = |scope: String| Error::OutOfScope {
        verb,
        what: describe(kind, ns, name),
        scope,
    };
    if !scope.admits(namespaced, ns) {
        return Err(out_of_scope(scope.to_string()));
    }
    if let (Some(ns), Some(watched)) = (ns, watched)
        && ns != watched
    {
        return Err(out_of_scope(format!(
            "the host watches namespace {watched:?} only, so it could never see this write"
        )));
    }
    Ok(ns.map(str::to_owned))
}

/// Prepares a write other than apply: places it ([`place`]), resolves its preconditions
/// and builds the body. Pure: no API call.
///
/// # Guarantees
/// - `update`, `update-status`, `merge-patch` and `delete` carry a resourceVersion: the
///   one the mutation names, else the snapshot's; patch and delete also carry the uid
///   the snapshot saw.
/// - `create` carries none (the server refuses an existing object).
///
/// # Errors
/// [`Error::OutOfScope`] (see [`place`]); [`Error::NoPrecondition`] for a write that
/// needs a resourceVersion and has none.
pub fn prepare(
    m: &Mutation,
    namespaced: bool,
    scope: Scope<'_>,
    watched: Option<&str>,
    snapshot: &Snapshot,
) -> Result<Prepared, Error> {
    let verb = m.verb();
    let (kind, named_ns, name) = target_of(m);
    let namespace = place(
        verb,
        &kind,
        named_ns.as_deref(),
        &name,
        namespaced,
        scope,
        watched,
    )?;
    let seen = snapshot.get(&kind, namespace.as_deref(), &name);
    let explicit = match m {
        Mutation::MergePatch { target, .. } | Mutation::Delete(target) => {
            target.resource_version.clone()
        }
        Mutation::Update(o) | Mutation::UpdateStatus(o) => {
            meta(o, "resourceVersion").map(str::to_owned)
        }
        Mutation::Create(_) | Mutation::Apply(_) => None,
    };
    let nonempty = |s: &String| !s.is_empty();
    let creates = matches!(m, Mutation::Create(_) | Mutation::Apply(_));
    let resource_version = explicit
        .filter(nonempty)
        .or_else(|| seen.map(|s| s.resource_version.clone()))
        .filter(|rv| nonempty(rv) && !creates);
    let uid = seen.map(|s| s.uid.clone()).filter(nonempty);
    let what = describe(&kind, namespace.as_deref(), &name);
    let body = |o: &Value, rv: Option<&String>| {
        let mut o = o.clone();
        if let Some(ns) = &namespace {
            o["metadata"]["namespace"] = json!(ns);
        }
        match rv {
            Some(rv) => o["metadata"]["resourceVersion"] = json!(rv),
            // A create never carries one (the API server refuses it with a 500).
            None => {
                if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.remove("resourceVersion");
                }
            }
        }
        o
    };
    let body = match m {
        // An apply is placed like a create; the applier sends it as server-side apply.
        Mutation::Apply(o) | Mutation::Create(o) => Some(body(o, None)),
        _ if resource_version.is_none() => return Err(Error::NoPrecondition { verb, what }),
        Mutation::Update(o) | Mutation::UpdateStatus(o) => Some(body(o, resource_version.as_ref())),
        Mutation::MergePatch { patch, .. } => {
            let mut patch = patch.clone();
            patch["metadata"]["resourceVersion"] = json!(resource_version);
            if let Some(uid) = &uid {
                patch["metadata"]["uid"] = json!(uid);
            }
            Some(patch)
        }
        Mutation::Delete(_) => None,
    };
    Ok(Prepared {
        verb,
        kind,
        namespace,
        name,
        resource_version,
        uid,
        body,
    })
}

/// Writes plugin outputs.
#[derive(Clone)]
pub struct Applier {
    kinds: Kinds,
    watched: Option<String>,
    fence: Fence,
    deadline: Duration,
}

impl Applier {
    /// An applier writing through `kinds`' client, for a host watching namespaced kinds
    /// in `watched` only (`None`: everywhere), open (no fence) and with a 30 s deadline
    /// per API call.
    pub fn new(kinds: Kinds, watched: Option<String>) -> Self {
        Self {
            kinds,
            watched,
            fence: Fence::open(),
            deadline: Duration::from_secs(30),
        }
    }

    /// Writes only while `fence` admits them; each API call answers within `deadline`
    /// or fails with [`Error::Timeout`].
    pub fn guarded(mut self, fence: Fence, deadline: Duration) -> Self {
        self.fence = fence;
        self.deadline = deadline;
        self
    }

    /// Runs one API call: refused without sending if the fence is closed (writes only),
    /// bounded by the deadline.
    async fn call<T>(
        &self,
        verb: &'static str,
        what: &str,
        write: bool,
        request: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<Result<T, kube::Error>, Error> {
        if write {
            self.fence.check().map_err(|source| Error::Fenced {
                verb,
                what: what.to_owned(),
                source,
            })?;
        }
        tokio::time::timeout(self.deadline, request)
            .await
            .map_err(|_| Error::Timeout {
                verb,
                what: what.to_owned(),
                after: self.deadline,
            })
    }

    /// Writes `output`, in order, for the reconcile described by `cx`; see the module
    /// docs for what each mutation carries. Stops at the first error.
    pub async fn write_output(&self, cx: &Context<'_>, output: &Output) -> Report {
        let mut report = Report::default();
        let mut snapshot = cx.snapshot.clone();
        let primary_kind = kind_of(cx.primary);
        let primary_ns = meta(cx.primary, "namespace");
        let primary_name = meta(cx.primary, "name").unwrap_or_default();
        let mut primary_status: Option<&Value> = None;
        let mut primary_confirmed = false;
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
                    let primary = &mut primary_confirmed;
                    self.server_side_apply(cx, &snapshot, obj, primary, &mut report.written)
                        .await
                }
                Mutation::Create(_) => match self.confirm_primary(cx, &mut primary_confirmed).await
                {
                    Ok(()) => self.send(m, Scope::of(cx.primary), &snapshot).await,
                    Err(e) => Err(e),
                },
                _ => self.send(m, Scope::of(cx.primary), &snapshot).await,
            };
            match result {
                Ok(w) => {
                    snapshot.record(&w);
                    report.written.push(w);
                }
                Err(e) => {
                    report.stopped = Some(e);
                    return report;
                }
            }
        }
        if output.prune
            && let Err(e) = self.prune(cx, &snapshot, &mut report.written).await
        {
            report.stopped = Some(e);
            return report;
        }
        if let Some(new_status) =
            status::primary_status(cx.primary, primary_status, &output.conditions, cx.now)
        {
            let mut obj = cx.primary.clone();
            obj["status"] = new_status;
            if let Some(seen) = snapshot.get(&primary_kind, primary_ns, primary_name) {
                obj["metadata"]["resourceVersion"] = json!(seen.resource_version);
            }
            match self
                .send(
                    &Mutation::UpdateStatus(obj),
                    Scope::of(cx.primary),
                    &snapshot,
                )
                .await
            {
                Ok(w) => report.written.push(w),
                Err(e) => report.stopped = Some(e),
            }
        }
        report
    }

    /// Deletes the children the primary controls that this output did not apply.
    async fn prune(
        &self,
        cx: &Context<'_>,
        snapshot: &Snapshot,
        written: &mut Vec<Written>,
    ) -> Result<(), Error> {
        let Some(uid) = meta(cx.primary, "uid") else {
            return Ok(());
        };
        let applied: Vec<(Gvk, Option<String>, String)> = written
            .iter()
            .filter(|w| w.verb == "apply")
            .map(|w| (w.kind.clone(), w.namespace.clone(), w.name.clone()))
            .collect();
        for child in cx.children.iter().filter(|c| owner::controlled_by(c, uid)) {
            let kind = kind_of(child);
            let ns = meta(child, "namespace").map(str::to_owned);
            let name = meta(child, "name").unwrap_or_default().to_owned();
            if applied.contains(&(kind.clone(), ns.clone(), name.clone())) {
                continue;
            }
            let target = Target {
                api_version: kind.api_version(),
                kind: kind.kind.clone(),
                namespace: ns,
                name,
                resource_version: None,
            };
            let w = self
                .send(&Mutation::Delete(target), Scope::of(cx.primary), snapshot)
                .await?;
            written.push(w);
        }
        Ok(())
    }

    /// Whether objects of `kind` are namespaced (discovery, cached).
    async fn namespaced(&self, kind: &Gvk) -> Result<bool, Error> {
        Ok(self.kinds.resolve(kind).await.map_err(Box::new)?.namespaced)
    }

    /// The API for one object's kind in `namespace` (or cluster-wide).
    async fn api(&self, kind: &Gvk, namespace: Option<&str>) -> Result<Api<DynamicObject>, Error> {
        let r = self.kinds.resolve(kind).await.map_err(Box::new)?;
        let client = self.kinds.client().clone();
        Ok(match namespace {
            Some(ns) => Api::namespaced_with(client, ns, &r.resource),
            None => Api::all_with(client, &r.resource),
        })
    }

    /// Before the first object this output creates: whether the primary still exists
    /// (a quorum read). A primary deleted while the cache still shows it would get
    /// children the garbage collector removes again at once.
    ///
    /// # Errors
    /// [`Error::Gone`] naming the primary (with its uid to wait for) when it is gone or
    /// was replaced by another of the same name.
    async fn confirm_primary(&self, cx: &Context<'_>, confirmed: &mut bool) -> Result<(), Error> {
        if *confirmed {
            return Ok(());
        }
        let kind = kind_of(cx.primary);
        let ns = meta(cx.primary, "namespace");
        let name = meta(cx.primary, "name").unwrap_or_default();
        let uid = meta(cx.primary, "uid").unwrap_or_default();
        let what = describe(&kind, ns, name);
        let api = self.api(&kind, ns).await?;
        let live = self
            .call("create", &what, false, api.get_opt(name))
            .await?
            .map_err(|e| Error::from_kube("create", what.clone(), e))?;
        if live.is_some_and(|o| o.metadata.uid.as_deref() == Some(uid)) {
            *confirmed = true;
            return Ok(());
        }
        Err(Error::Gone {
            verb: "create",
            what,
            vanished: (!uid.is_empty()).then(|| Vanished::new(&kind, ns, name, uid)),
        })
    }

    async fn server_side_apply(
        &self,
        cx: &Context<'_>,
        snapshot: &Snapshot,
        obj: &Value,
        primary_confirmed: &mut bool,
        undone: &mut Vec<Written>,
    ) -> Result<Written, Error> {
        let kind = kind_of(obj);
        let name = meta(obj, "name").unwrap_or_default().to_owned();
        let namespaced = self.namespaced(&kind).await?;
        let ns = place(
            "apply",
            &kind,
            meta(obj, "namespace"),
            &name,
            namespaced,
            Scope::of(cx.primary),
            self.watched.as_deref(),
        )?;
        let api = self.api(&kind, ns.as_deref()).await?;
        let what = describe(&kind, ns.as_deref(), &name);
        let mut desired = obj.clone();
        if let Some(ns) = &ns {
            desired["metadata"]["namespace"] = json!(ns);
        }
        let consent = if owner::is_same_object(&desired, cx.primary) {
            Consent::Seen(snapshot.get(&kind, ns.as_deref(), &name).cloned())
        } else {
            match snapshot.get(&kind, ns.as_deref(), &name) {
                Some(seen) => Consent::Seen(Some(seen.clone())),
                None => Consent::Unseen,
            }
        };
        // The object the apply is conditioned on (`None`: it creates).
        let seen = match consent {
            Consent::Seen(seen) => {
                if let Some(s) = &seen
                    && !owner::is_same_object(&desired, cx.primary)
                {
                    self.may_take(cx, &api, &kind, &what, &name, s).await?;
                }
                seen
            }
            Consent::Unseen => {
                let live = self.call("apply", &what, false, api.get_opt(&name)).await?;
                match live.map_err(|e| Error::from_kube("apply", what.clone(), e))? {
                    None => {
                        self.confirm_primary(cx, primary_confirmed).await?;
                        None
                    }
                    Some(live) => {
                        let live = serde_json::to_value(&live).unwrap_or(Value::Null);
                        let seen = seen_of(&live);
                        self.may_take(cx, &api, &kind, &what, &name, &seen).await?;
                        Some(seen)
                    }
                }
            }
        };
        let force = seen.is_some();
        let precondition = seen.as_ref().map(|s| s.resource_version.clone());
        owner::set_controller_ref(&mut desired, cx.primary);
        let precondition = precondition.filter(|rv| !rv.is_empty());
        if let Some(rv) = &precondition {
            desired["metadata"]["resourceVersion"] = json!(rv);
        }
        let mut params = PatchParams::apply(&field_manager(cx.plugin));
        params.force = force;
        let out = self
            .call(
                "apply",
                &what,
                true,
                api.patch(&name, &params, &Patch::Apply(&desired)),
            )
            .await?
            .map_err(|e| Error::from_kube("apply", what, e))?;
        if let Some(seen) = seen.filter(|s| !s.uid.is_empty())
            && out.metadata.uid.as_deref() != Some(seen.uid.as_str())
        {
            let (gone, undo) = self
                .undo_recreate(&api, &kind, ns, &name, &seen.uid, &out)
                .await;
            undone.extend(undo);
            return Err(gone);
        }
        let mut w = written(&kind, ns, name, "apply", Some(out));
        w.previous = precondition;
        w.digest = digest(obj, false);
        Ok(w)
    }

    /// An apply conditioned on the object the plugin saw (uid `seen_uid`) created `out`
    /// anew: that object was deleted meanwhile, and the API server drops an apply's
    /// resourceVersion precondition when the object is missing. The plugin decided on an
    /// object that no longer exists, so nothing may be written: `out` is deleted again
    /// (conditioned on its uid and resourceVersion, so a change by anyone since is kept)
    /// and the plugin decides again once the cache shows the deletion. Without this, an
    /// apply racing a user's delete would bring a deleted primary back, or a child of a
    /// deleted primary.
    ///
    /// Returns the [`Error::Gone`] to stop the output with, and the undoing delete when
    /// it was accepted: read-your-writes then waits until the cache has seen that delete,
    /// so the plugin never decides on the short-lived object either. A failed undo is
    /// logged (the object then carries the primary's owner reference, if any, and the
    /// garbage collector removes it when the primary is gone).
    async fn undo_recreate(
        &self,
        api: &Api<DynamicObject>,
        kind: &Gvk,
        ns: Option<String>,
        name: &str,
        seen_uid: &str,
        out: &DynamicObject,
    ) -> (Error, Option<Written>) {
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                resource_version: out.metadata.resource_version.clone(),
                uid: out.metadata.uid.clone(),
            }),
            ..Default::default()
        };
        let what = describe(kind, ns.as_deref(), name);
        let mut undo = None;
        let deleted = self
            .call("delete", &what, true, api.delete(name, &dp))
            .await
            .and_then(|r| r.map_err(|e| Error::from_kube("delete", what.clone(), e)));
        match deleted {
            Ok(deleted) => {
                tracing::info!(
                    object = %what,
                    "an apply re-created an object deleted since the plugin saw it; deleted it again"
                );
                let mut w = written(kind, ns.clone(), name.to_owned(), "delete", deleted.left());
                if w.uid.is_none() {
                    w.uid.clone_from(&out.metadata.uid);
                }
                w.previous.clone_from(&out.metadata.resource_version);
                undo = Some(w);
            }
            // Deleted meanwhile by someone else: nothing to undo.
            Err(Error::Refused { code: 404, .. }) => {}
            Err(e) => tracing::warn!(
                object = %what, error = %e,
                "an apply re-created an object deleted since the plugin saw it; deleting it again failed"
            ),
        }
        let gone = Error::Gone {
            verb: "apply",
            what,
            vanished: Some(Vanished::new(kind, ns.as_deref(), name, seen_uid)),
        };
        (gone, undo)
    }

    /// Whether an apply may write over the existing object `seen`: the primary controls
    /// it, or the plugin's options adopt its kind.
    ///
    /// # Errors
    /// [`Error::NotOwned`], naming its controller, or its field managers (read from the
    /// API server) when it has none.
    async fn may_take(
        &self,
        cx: &Context<'_>,
        api: &Api<DynamicObject>,
        kind: &Gvk,
        what: &str,
        name: &str,
        seen: &Seen,
    ) -> Result<(), Error> {
        let primary_uid = meta(cx.primary, "uid").unwrap_or_default();
        if seen.controller.as_deref() == Some(primary_uid) || cx.adopt.contains(kind) {
            return Ok(());
        }
        let live = self
            .call("apply", what, false, api.get_opt(name))
            .await
            .ok()
            .and_then(Result::ok)
            .flatten();
        let holder = live
            .as_ref()
            .map(|o| holder_of(&serde_json::to_value(o).unwrap_or(Value::Null)))
            .unwrap_or_else(|| "no controller".to_owned());
        Err(Error::NotOwned {
            what: what.to_owned(),
            primary: describe(
                &kind_of(cx.primary),
                meta(cx.primary, "namespace"),
                meta(cx.primary, "name").unwrap_or_default(),
            ),
            holder,
        })
    }

    /// Sends a write other than apply, prepared by [`prepare`].
    async fn send(
        &self,
        m: &Mutation,
        scope: Scope<'_>,
        snapshot: &Snapshot,
    ) -> Result<Written, Error> {
        let (kind, _, _) = target_of(m);
        let namespaced = self.namespaced(&kind).await?;
        let p = prepare(m, namespaced, scope, self.watched.as_deref(), snapshot)?;
        let api = self.api(&p.kind, p.namespace.as_deref()).await?;
        let what = p.what();
        let fail = |e: kube::Error| match (&e, &p.uid) {
            // The object the write was conditioned on is gone: wait for the cache.
            (kube::Error::Api(s), Some(uid)) if s.code == 404 => Error::Gone {
                verb: p.verb,
                what: what.clone(),
                vanished: Some(Vanished::new(&p.kind, p.namespace.as_deref(), &p.name, uid)),
            },
            _ => Error::from_kube(p.verb, what.clone(), e),
        };
        let object = |body: &Option<Value>| -> Result<DynamicObject, Error> {
            serde_json::from_value(body.clone().unwrap_or(Value::Null)).map_err(|e| {
                Error::Refused {
                    verb: p.verb,
                    what: what.clone(),
                    code: 422,
                    source: Box::new(kube::Error::SerdeError(e)),
                }
            })
        };
        let pp = PostParams::default();
        let verb = p.verb;
        let out = match m {
            Mutation::Apply(_) | Mutation::Create(_) => {
                let body = object(&p.body)?;
                Some(
                    self.call(verb, &what, true, api.create(&pp, &body))
                        .await?
                        .map_err(fail)?,
                )
            }
            Mutation::Update(_) => {
                let body = object(&p.body)?;
                let request = api.replace(&p.name, &pp, &body);
                Some(self.call(verb, &what, true, request).await?.map_err(fail)?)
            }
            Mutation::UpdateStatus(_) => {
                let body = object(&p.body)?;
                let request = api.replace_status(&p.name, &pp, &body);
                Some(self.call(verb, &what, true, request).await?.map_err(fail)?)
            }
            Mutation::MergePatch { .. } => {
                let patch = p.body.clone().unwrap_or(Value::Null);
                let params = PatchParams::default();
                let patch = Patch::Merge(&patch);
                let request = api.patch(&p.name, &params, &patch);
                Some(self.call(verb, &what, true, request).await?.map_err(fail)?)
            }
            Mutation::Delete(_) => {
                let dp = DeleteParams {
                    preconditions: Some(Preconditions {
                        resource_version: p.resource_version.clone(),
                        uid: p.uid.clone(),
                    }),
                    ..Default::default()
                };
                match self
                    .call(verb, &what, true, api.delete(&p.name, &dp))
                    .await?
                {
                    Ok(either) => either.left(),
                    // Gone already: the cache will show it gone as well.
                    Err(kube::Error::Api(s)) if s.code == 404 => None,
                    Err(e) => return Err(fail(e)),
                }
            }
        };
        let mut w = written(&p.kind, p.namespace.clone(), p.name.clone(), p.verb, out);
        if w.uid.is_none() {
            w.uid.clone_from(&p.uid);
        }
        w.previous = p.resource_version;
        w.digest = match m {
            Mutation::Apply(o) | Mutation::Create(o) | Mutation::Update(o) => digest(o, false),
            Mutation::UpdateStatus(o) => digest(o, true),
            Mutation::MergePatch { patch, .. } => digest(patch, false),
            Mutation::Delete(_) => 0,
        };
        Ok(w)
    }
}

/// How an apply's target relates to what the plugin saw.
enum Consent {
    /// In the snapshot (or the primary itself, maybe without a resourceVersion).
    Seen(Option<Seen>),
    /// Not in the snapshot: read from the API server before writing.
    Unseen,
}

/// Who holds an existing object, for [`Error::NotOwned`]: `controller Kind name`, or
/// `no controller; field managers a, b`.
fn holder_of(o: &Value) -> String {
    let controller = o
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .and_then(|refs| {
            refs.iter()
                .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))
        });
    if let Some(r) = controller {
        let s = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("?");
        return format!("controller {} {}", s("kind"), s("name"));
    }
    let managers: Vec<&str> = o
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .map(|fields| {
            let mut m: Vec<&str> = fields
                .iter()
                .filter_map(|f| f.get("manager").and_then(Value::as_str))
                .collect();
            m.dedup();
            m
        })
        .unwrap_or_default();
    if managers.is_empty() {
        "no controller".to_owned()
    } else {
        format!("no controller; field managers {}", managers.join(", "))
    }
}

fn written(
    kind: &Gvk,
    namespace: Option<String>,
    name: String,
    verb: &'static str,
    out: Option<DynamicObject>,
) -> Written {
    let (name, uid, resource_version, managers) = match out {
        Some(o) => {
            let mut fields = o.metadata.managed_fields.unwrap_or_default();
            fields.sort_by(|a, b| b.time.cmp(&a.time));
            let managers = fields.into_iter().filter_map(|f| f.manager).collect();
            (
                o.metadata.name.unwrap_or(name),
                o.metadata.uid,
                o.metadata.resource_version,
                managers,
            )
        }
        None => (name, None, None, Vec::new()),
    };
    Written {
        kind: kind.clone(),
        namespace,
        name,
        resource_version,
        uid,
        verb,
        previous: None,
        digest: 0,
        managers,
    }
}

/// A digest of what a write asked for: `status` only for status writes, else the body
/// without the metadata the server sets or the host adds per write.
fn digest(body: &Value, status_only: bool) -> u64 {
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
            uid: None,
            verb: "apply",
            previous: None,
            digest: 0,
            managers: Vec::new(),
        }
    }

    fn cm(name: &str, rv: &str, uid: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": "a", "resourceVersion": rv, "uid": uid}})
    }

    fn target(name: &str, rv: Option<&str>) -> Target {
        Target {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            namespace: None,
            name: name.into(),
            resource_version: rv.map(str::to_owned),
        }
    }

    #[test]
    fn digest_ignores_server_metadata_and_status_writes_compare_status_only() {
        let a = json!({"metadata": {"name": "x", "resourceVersion": "1"}, "data": {"k": "v"}});
        let b = json!({"metadata": {"name": "x", "resourceVersion": "2",
            "managedFields": []}, "data": {"k": "v"}});
        let c = json!({"metadata": {"name": "x"}, "data": {"k": "w"}});
        assert_eq!(digest(&a, false), digest(&b, false));
        assert_ne!(digest(&a, false), digest(&c, false));
        let s1 = json!({"metadata": {"resourceVersion": "1"}, "spec": 1, "status": {"r": 1}});
        let s2 = json!({"metadata": {"resourceVersion": "5"}, "spec": 2, "status": {"r": 1}});
        assert_eq!(digest(&s1, true), digest(&s2, true));
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
        let seen = s.get(&d, Some("a"), "w").unwrap();
        assert_eq!(
            (seen.resource_version.as_str(), seen.uid.as_str()),
            ("8", "u")
        );
        s.record(&deployment_written(None));
        assert_eq!(
            s.get(&d, Some("a"), "w").unwrap().resource_version,
            "8",
            "a completed delete changes nothing"
        );
        let created = Written {
            name: "new".into(),
            uid: Some("n1".into()),
            ..deployment_written(Some("9"))
        };
        s.record(&created);
        let seen = s.get(&d, Some("a"), "new").unwrap();
        assert_eq!(
            (seen.resource_version.as_str(), seen.uid.as_str()),
            ("9", "n1")
        );
    }

    #[test]
    fn a_create_without_a_name_does_not_lend_its_version_to_the_next_generated_create() {
        let mut s = Snapshot::default();
        let unnamed = Written {
            name: String::new(),
            ..deployment_written(Some("9"))
        };
        s.record(&unnamed);
        let second = Mutation::Create(json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"generateName": "web-"}}));
        let p = prepare(&second, true, Scope::Namespaced("a"), None, &s).unwrap();
        assert_eq!(p.resource_version, None);
        assert_eq!(p.body.unwrap()["metadata"].get("resourceVersion"), None);
    }

    #[test]
    fn updates_patches_and_deletes_carry_the_seen_version_and_uid() {
        let s = Snapshot::new(&[cm("c", "7", "u7")]);
        let scope = Scope::Namespaced("a");
        let patch = Mutation::MergePatch {
            target: target("c", None),
            patch: json!({"data": {"k": "v"}}),
        };
        let p = prepare(&patch, true, scope, None, &s).unwrap();
        assert_eq!(p.body.as_ref().unwrap()["metadata"]["resourceVersion"], "7");
        assert_eq!(p.body.as_ref().unwrap()["metadata"]["uid"], "u7");
        let d = prepare(&Mutation::Delete(target("c", None)), true, scope, None, &s).unwrap();
        assert_eq!(
            (d.resource_version.as_deref(), d.uid.as_deref()),
            (Some("7"), Some("u7"))
        );
        let explicit = prepare(
            &Mutation::Delete(target("c", Some("9"))),
            true,
            scope,
            None,
            &s,
        );
        assert_eq!(explicit.unwrap().resource_version.as_deref(), Some("9"));
        let update = Mutation::Update(cm("c", "", ""));
        let u = prepare(&update, true, scope, None, &s).unwrap();
        assert_eq!(u.body.unwrap()["metadata"]["resourceVersion"], "7");
        assert_eq!(u.namespace.as_deref(), Some("a"));
    }

    #[test]
    fn a_create_carries_no_resource_version_even_of_an_object_the_plugin_saw() {
        let s = Snapshot::new(&[cm("c", "7", "u7")]);
        let create = Mutation::Create(cm("c", "5", ""));
        let p = prepare(&create, true, Scope::Namespaced("a"), None, &s).unwrap();
        assert_eq!(p.resource_version, None);
        assert_eq!(p.body.unwrap()["metadata"].get("resourceVersion"), None);
    }

    #[test]
    fn a_write_to_an_unseen_object_without_a_version_is_refused() {
        let s = Snapshot::default();
        let scope = Scope::Namespaced("a");
        for m in [
            Mutation::Delete(target("c", None)),
            Mutation::Update(cm("c", "", "")),
            Mutation::UpdateStatus(cm("c", "", "")),
            Mutation::MergePatch {
                target: target("c", None),
                patch: json!({}),
            },
        ] {
            let e = prepare(&m, true, scope, None, &s).unwrap_err();
            assert_eq!(e.metric_label(), "no_precondition", "{e}");
        }
        let create = Mutation::Create(cm("c", "", ""));
        assert!(prepare(&create, true, scope, None, &s).is_ok());
    }

    #[test]
    fn a_write_into_a_namespace_the_host_does_not_watch_is_refused() {
        let primary =
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}});
        let scope = Scope::of(&primary);
        let create = Mutation::Create(json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c"}}));
        let e = prepare(&create, true, scope, Some("other"), &Snapshot::default()).unwrap_err();
        assert_eq!(e.metric_label(), "out_of_scope");
        assert!(
            e.to_string().contains("watches namespace \"other\" only"),
            "{e}"
        );
        assert!(prepare(&create, true, scope, Some("team"), &Snapshot::default()).is_ok());
        assert!(prepare(&create, true, scope, None, &Snapshot::default()).is_ok());
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
        let mut child = cm("w", "7", "u");
        child["metadata"]["ownerReferences"] = json!([{"apiVersion": "v1", "kind": "X", "name": "p", "uid": "p1", "controller": true}]);
        let s = Snapshot::new(&[child]);
        let k = Gvk::new("", "v1", "ConfigMap");
        let seen = s.get(&k, Some("a"), "w").unwrap();
        assert_eq!(seen.resource_version, "7");
        assert_eq!(seen.controller.as_deref(), Some("p1"));
        assert_eq!(s.get(&k, Some("b"), "w"), None);
    }

    #[test]
    fn the_holder_of_an_object_is_its_controller_or_its_field_managers() {
        let owned = json!({"metadata": {"ownerReferences": [
            {"kind": "ReplicaSet", "name": "rs", "uid": "1", "controller": true}]}});
        assert_eq!(holder_of(&owned), "controller ReplicaSet rs");
        let managed = json!({"metadata": {"managedFields": [
            {"manager": "kubectl-client-side-apply"}, {"manager": "kubectl-client-side-apply"},
            {"manager": "ops"}]}});
        assert_eq!(
            holder_of(&managed),
            "no controller; field managers kubectl-client-side-apply, ops"
        );
        assert_eq!(holder_of(&json!({})), "no controller");
    }
}
