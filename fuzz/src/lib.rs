//! Fuzzing harnesses for rekon's host.
//!
//! Each target in `fuzz_targets/` hands its input to one function here:
//!
//! | target | function | input |
//! | --- | --- | --- |
//! | `check_output` | [`structured_output`] | a whole plugin output, built by `arbitrary` ([`OutputInput`]) |
//! | `mutation_json` | [`mutation_text`] | the JSON text of one mutation's object or patch (seeds: real outputs) |
//! | `case_yaml` | [`case_text`] | a `rekon test` fixture case (seeds: the example plugins' cases) |
//!
//! # The invariant
//! No input panics: every one ends in `Ok` or a typed error. For output, "the path a
//! plugin's output takes after the WIT boundary" is [`check::output`] (the conversion
//! from the generated bindings before it only moves fields) and then the applier's
//! preparation of each write before it is sent ([`prepare_writes`]: namespace defaulting,
//! the owner reference, resourceVersion preconditions, decoding into a
//! [`DynamicObject`], the status merge). For an output the check accepts, the
//! guarantees the applier relies on are asserted too ([`assert_guarantees`]).

use arbitrary::Arbitrary;
use kube::core::DynamicObject;
use rekon_host::contract::{
    Condition, ConditionStatus, Event, EventType, Gvk, Metadata, Mutation, Output, Target, kind_of,
    meta,
};
use rekon_host::sandbox::{Limits, RawMutation, RawOutput};
use rekon_host::testing::case;
use rekon_host::write::owner::{self, Scope};
use rekon_host::write::{self, Snapshot, check, status};
use serde_json::{Map, Value, json};
use std::path::Path;

/// Strings the host or the API server gives meaning to, so the fuzzer reaches the checks
/// behind them without guessing them byte by byte.
const WORDS: &[&str] = &[
    "",
    "a",
    "b",
    "w",
    "web",
    "shop",
    "team-a",
    "default",
    "v1",
    "apps/v1",
    "rekon.dev/v1alpha1",
    "/v1",
    "apps/",
    "/",
    "ConfigMap",
    "Deployment",
    "Service",
    "Secret",
    "Namespace",
    "WebApp",
    "Tenant",
    "apiVersion",
    "kind",
    "metadata",
    "name",
    "namespace",
    "generateName",
    "resourceVersion",
    "uid",
    "ownerReferences",
    "status",
    "conditions",
    "spec",
    "Ready",
    "True",
    "u1",
    "7",
];

/// A string: one of [`WORDS`] or any text.
#[derive(Debug, Clone, Arbitrary)]
pub enum Word {
    /// `WORDS[n % WORDS.len()]`.
    Known(u8),
    /// Anything.
    Any(String),
}

impl Word {
    /// The text.
    pub fn text(&self) -> String {
        match self {
            Word::Known(n) => WORDS[usize::from(*n) % WORDS.len()].to_owned(),
            Word::Any(s) => s.clone(),
        }
    }
}

/// Any JSON value.
#[derive(Debug, Clone, Arbitrary)]
pub enum Json {
    /// `null`.
    Null,
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float (not finite becomes `null`, as serde_json does).
    Float(f64),
    /// A string.
    Str(Word),
    /// An array.
    Array(Vec<Json>),
    /// An object (later duplicate keys win).
    Object(Vec<(Word, Json)>),
}

impl Json {
    /// The value.
    pub fn value(&self) -> Value {
        match self {
            Json::Null => Value::Null,
            Json::Bool(b) => json!(b),
            Json::Int(i) => json!(i),
            Json::Float(f) => json!(f),
            Json::Str(w) => json!(w.text()),
            Json::Array(items) => Value::Array(items.iter().map(Json::value).collect()),
            Json::Object(fields) => object(fields),
        }
    }
}

fn object(fields: &[(Word, Json)]) -> Value {
    Value::Object(
        fields
            .iter()
            .map(|(k, v)| (k.text(), v.value()))
            .collect::<Map<_, _>>(),
    )
}

/// An object's `metadata`.
#[derive(Debug, Clone, Arbitrary)]
pub enum ObjectMeta {
    /// No `metadata` key.
    Missing,
    /// `metadata` of any shape (a string, an array...).
    Any(Json),
    /// An object with these fields, then `other`.
    Fields {
        /// `name`.
        name: Option<Json>,
        /// `namespace`.
        namespace: Option<Json>,
        /// `generateName`.
        generate_name: Option<Word>,
        /// `resourceVersion`.
        resource_version: Option<Word>,
        /// Anything else (labels, ownerReferences...).
        other: Vec<(Word, Json)>,
    },
}

/// An object shaped like a Kubernetes object, each part possibly wrong.
#[derive(Debug, Clone, Arbitrary)]
pub struct KubeObject {
    /// `apiVersion`.
    pub api_version: Option<Json>,
    /// `kind`.
    pub kind: Option<Json>,
    /// `metadata`.
    pub metadata: ObjectMeta,
    /// `status`, if any.
    pub status: Option<Json>,
    /// Other fields (`spec`, `data`...).
    pub other: Vec<(Word, Json)>,
}

impl KubeObject {
    /// The object.
    pub fn value(&self) -> Value {
        let mut o = Map::new();
        if let Some(v) = &self.api_version {
            o.insert("apiVersion".into(), v.value());
        }
        if let Some(k) = &self.kind {
            o.insert("kind".into(), k.value());
        }
        match &self.metadata {
            ObjectMeta::Missing => {}
            ObjectMeta::Any(j) => {
                o.insert("metadata".into(), j.value());
            }
            ObjectMeta::Fields {
                name,
                namespace,
                generate_name,
                resource_version,
                other,
            } => {
                let mut m = Map::new();
                if let Some(n) = name {
                    m.insert("name".into(), n.value());
                }
                if let Some(ns) = namespace {
                    m.insert("namespace".into(), ns.value());
                }
                if let Some(g) = generate_name {
                    m.insert("generateName".into(), json!(g.text()));
                }
                if let Some(rv) = resource_version {
                    m.insert("resourceVersion".into(), json!(rv.text()));
                }
                for (k, v) in other {
                    m.insert(k.text(), v.value());
                }
                o.insert("metadata".into(), Value::Object(m));
            }
        }
        if let Some(s) = &self.status {
            o.insert("status".into(), s.value());
        }
        for (k, v) in &self.other {
            o.insert(k.text(), v.value());
        }
        Value::Object(o)
    }
}

/// The text of an object or patch in a plugin's output.
#[derive(Debug, Clone, Arbitrary)]
pub enum Text {
    /// Any text (malformed JSON included).
    Raw(String),
    /// Any JSON value.
    Json(Json),
    /// An object shaped like a Kubernetes object.
    Object(Box<KubeObject>),
}

impl Text {
    /// The text.
    pub fn text(&self) -> String {
        match self {
            Text::Raw(s) => s.clone(),
            Text::Json(j) => j.value().to_string(),
            Text::Object(o) => o.value().to_string(),
        }
    }
}

/// A kind, as `apiVersion` and `kind`.
#[derive(Debug, Clone, Arbitrary)]
pub struct Kind {
    /// `group/version` or `v1`.
    pub api_version: Word,
    /// Kind.
    pub kind: Word,
}

impl Kind {
    fn gvk(&self) -> Gvk {
        Gvk::from_api_version(&self.api_version.text(), &self.kind.text())
    }
}

/// A mutation's target.
#[derive(Debug, Clone, Arbitrary)]
pub struct ArbitraryTarget {
    kind: Kind,
    namespace: Option<Word>,
    name: Word,
    resource_version: Option<Word>,
}

impl ArbitraryTarget {
    fn target(&self) -> Target {
        Target {
            api_version: self.kind.api_version.text(),
            kind: self.kind.kind.text(),
            namespace: self.namespace.as_ref().map(Word::text),
            name: self.name.text(),
            resource_version: self.resource_version.as_ref().map(Word::text),
        }
    }
}

/// One mutation as a plugin could return it.
#[derive(Debug, Clone, Arbitrary)]
pub enum ArbitraryMutation {
    /// `apply`.
    Apply(Text),
    /// `create`.
    Create(Text),
    /// `update`.
    Update(Text),
    /// `update-status`.
    UpdateStatus(Text),
    /// `merge-patch`.
    MergePatch(ArbitraryTarget, Text),
    /// `delete`.
    Delete(ArbitraryTarget),
}

impl ArbitraryMutation {
    fn raw(&self) -> RawMutation {
        match self {
            ArbitraryMutation::Apply(t) => RawMutation::Apply(t.text()),
            ArbitraryMutation::Create(t) => RawMutation::Create(t.text()),
            ArbitraryMutation::Update(t) => RawMutation::Update(t.text()),
            ArbitraryMutation::UpdateStatus(t) => RawMutation::UpdateStatus(t.text()),
            ArbitraryMutation::MergePatch(target, t) => {
                RawMutation::MergePatch(target.target(), t.text())
            }
            ArbitraryMutation::Delete(target) => RawMutation::Delete(target.target()),
        }
    }
}

/// An event as a plugin could return it.
#[derive(Debug, Clone, Arbitrary)]
pub struct ArbitraryEvent {
    warning: bool,
    reason: Word,
    note: Word,
}

/// A condition as a plugin could return it.
#[derive(Debug, Clone, Arbitrary)]
pub struct ArbitraryCondition {
    condition_type: Word,
    status: u8,
    reason: Word,
    message: Word,
}

/// Everything one reconcile's output check sees: what the plugin declared, the primary,
/// the limits and the output.
#[derive(Debug, Clone, Arbitrary)]
pub struct OutputInput {
    /// The declared primary kind.
    pub primary_kind: Kind,
    /// The declared writable kinds.
    pub writes: Vec<Kind>,
    /// The primary: as the cache holds it (an object with a name) or any text.
    pub primary: Text,
    /// Cap on one object (any `u32`, so small caps are reached too).
    pub object_bytes: u32,
    /// Cap on the output.
    pub output_bytes: u32,
    /// The mutations.
    pub mutations: Vec<ArbitraryMutation>,
    /// Requeue after.
    pub requeue_after_ms: Option<u64>,
    /// Events.
    pub events: Vec<ArbitraryEvent>,
    /// Conditions.
    pub conditions: Vec<ArbitraryCondition>,
    /// Prune.
    pub prune: bool,
}

impl OutputInput {
    fn metadata(&self) -> Metadata {
        Metadata {
            name: "fuzz".into(),
            version: "0".into(),
            primary: self.primary_kind.gvk(),
            watches: Vec::new(),
            reads: Vec::new(),
            writes: self.writes.iter().map(Kind::gvk).collect(),
            resync_seconds: None,
            finalizer: None,
        }
    }

    fn raw(&self) -> RawOutput {
        RawOutput {
            mutations: self.mutations.iter().map(ArbitraryMutation::raw).collect(),
            requeue_after_ms: self.requeue_after_ms,
            events: self
                .events
                .iter()
                .map(|e| Event {
                    event_type: if e.warning {
                        EventType::Warning
                    } else {
                        EventType::Normal
                    },
                    reason: e.reason.text(),
                    note: e.note.text(),
                })
                .collect(),
            conditions: self
                .conditions
                .iter()
                .map(|c| Condition {
                    condition_type: c.condition_type.text(),
                    status: match c.status % 3 {
                        0 => ConditionStatus::True,
                        1 => ConditionStatus::False,
                        _ => ConditionStatus::Unknown,
                    },
                    reason: c.reason.text(),
                    message: c.message.text(),
                })
                .collect(),
            prune: self.prune,
        }
    }
}

/// The `check_output` target: a whole output, any declaration, any primary, any limits.
pub fn structured_output(input: &OutputInput) {
    let limits = Limits {
        object_bytes: input.object_bytes as usize,
        output_bytes: input.output_bytes as usize,
        ..Limits::default()
    };
    output(
        input.raw(),
        &input.metadata(),
        &input.primary.text(),
        &limits,
    );
}

/// Runs one output through the check and, if it passes, the applier's preparation.
///
/// # Panics
/// Only on a bug: a panic in the host, or an accepted output breaking a guarantee.
pub fn output(raw: RawOutput, declared: &Metadata, primary: &str, limits: &Limits) {
    match check::output(raw, declared, primary, limits) {
        Ok(out) => {
            assert_guarantees(&out, declared, primary);
            // The applier only ever sees primaries from the cache: objects with a name.
            if let Ok(primary) = serde_json::from_str::<Value>(primary)
                && meta(&primary, "name").is_some_and(|n| !n.is_empty())
            {
                prepare_writes(&out, &primary);
            }
        }
        Err(e) => {
            // Typed, with a bounded label and a message.
            let _ = (e.metric_label(), e.to_string());
        }
    }
}

/// Asserts what `check::output` guarantees of an output it accepts.
///
/// # Panics
/// When the output breaks one.
pub fn assert_guarantees(out: &Output, declared: &Metadata, primary: &str) {
    let primary: Value = serde_json::from_str(primary).unwrap_or(Value::Null);
    let scope = Scope::of(&primary);
    for m in &out.mutations {
        match m {
            Mutation::Apply(o)
            | Mutation::Create(o)
            | Mutation::Update(o)
            | Mutation::UpdateStatus(o) => {
                assert!(o.is_object(), "{} of a non-object", m.verb());
                assert!(
                    o.get("metadata").is_some_and(Value::is_object),
                    "{} of an object whose metadata is not an object",
                    m.verb()
                );
                let kind = kind_of(o);
                assert!(!kind.version.is_empty() && !kind.kind.is_empty());
                assert!(
                    declared.may_write(&kind),
                    "{} of undeclared {kind}",
                    m.verb()
                );
                let named = meta(o, "name").is_some_and(|n| !n.is_empty());
                let generated = meta(o, "generateName").is_some_and(|n| !n.is_empty());
                assert!(named || (m.verb() == "create" && generated));
                if let Some(ns) = meta(o, "namespace").filter(|ns| !ns.is_empty()) {
                    assert!(scope.admits_named(Some(ns)), "namespace {ns} out of scope");
                }
            }
            Mutation::MergePatch { target, patch } => {
                assert_target(target, declared, scope);
                assert!(patch.is_object(), "a merge patch that is not an object");
                assert!(
                    patch
                        .get("metadata")
                        .is_none_or(|m| m.is_object() || m.is_null()),
                    "a merge patch whose metadata is neither an object nor null"
                );
            }
            Mutation::Delete(target) => assert_target(target, declared, scope),
        }
    }
    for e in &out.events {
        assert!(!e.reason.is_empty() && e.reason.len() <= 128 && e.note.len() <= 1024);
    }
    for c in &out.conditions {
        assert!(!c.condition_type.is_empty() && !c.reason.is_empty());
    }
}

fn assert_target(t: &Target, declared: &Metadata, scope: Scope<'_>) {
    assert!(!t.api_version.is_empty() && !t.kind.is_empty() && !t.name.is_empty());
    assert!(
        declared.may_write(&t.gvk()),
        "target of undeclared {}",
        t.gvk()
    );
    assert!(scope.admits_named(t.namespace.as_deref()));
}

/// What the applier does to each write of a checked output before sending it, without
/// an API server: the real [`write::prepare`] of every write (a namespaced kind assumed,
/// as in most outputs), with its preconditions asserted, then the status merge.
///
/// # Panics
/// When `prepare` panics, or sets a precondition other than the one the plugin saw or
/// named: a write other than a create must carry the resourceVersion the mutation names,
/// else the snapshot's; a patch or delete of an object the snapshot holds also its uid; a
/// create none.
pub fn prepare_writes(out: &Output, primary: &Value) {
    let scope = Scope::of(primary);
    let snapshot = Snapshot::new([primary]);
    let primary_kind = kind_of(primary);
    let primary_name = meta(primary, "name").unwrap_or_default();
    let mut plugin_status = None;
    for m in &out.mutations {
        if let Mutation::UpdateStatus(o) = m
            && kind_of(o) == primary_kind
            && meta(o, "name") == Some(primary_name)
        {
            plugin_status = Some(o);
            continue;
        }
        let Ok(p) = write::prepare(m, true, scope, None, &snapshot) else {
            continue;
        };
        let seen = snapshot.get(&p.kind, p.namespace.as_deref(), &p.name);
        let named = match m {
            Mutation::MergePatch { target, .. } | Mutation::Delete(target) => {
                target.resource_version.clone()
            }
            Mutation::Update(o) | Mutation::UpdateStatus(o) => {
                meta(o, "resourceVersion").map(str::to_owned)
            }
            Mutation::Apply(_) | Mutation::Create(_) => None,
        }
        .filter(|rv| !rv.is_empty());
        match m {
            Mutation::Apply(_) | Mutation::Create(_) => {
                assert_eq!(
                    p.resource_version, None,
                    "a create carries no resourceVersion"
                );
                let body = p.body.clone().unwrap_or_default();
                assert!(body["metadata"].get("resourceVersion").is_none());
                let _ = serde_json::from_value::<DynamicObject>(body);
            }
            _ => {
                let expected = named.or_else(|| {
                    seen.map(|s| s.resource_version.clone())
                        .filter(|rv| !rv.is_empty())
                });
                assert!(expected.is_some(), "prepared without a precondition: {p:?}");
                assert_eq!(
                    p.resource_version, expected,
                    "the precondition is the one seen or named"
                );
                if matches!(m, Mutation::MergePatch { .. } | Mutation::Delete(_))
                    && let Some(s) = seen.filter(|s| !s.uid.is_empty())
                {
                    assert_eq!(p.uid.as_deref(), Some(s.uid.as_str()), "the uid seen");
                }
                if let Some(body) = &p.body {
                    assert_eq!(
                        body["metadata"]["resourceVersion"].as_str(),
                        p.resource_version.as_deref(),
                        "the body carries the precondition"
                    );
                    let _ = serde_json::to_vec(body);
                }
            }
        }
        if let Mutation::Apply(o) = m {
            let mut desired = o.clone();
            owner::set_controller_ref(&mut desired, primary);
            let _ = serde_json::to_vec(&desired);
        }
    }
    if out.prune
        && let Some(uid) = meta(primary, "uid")
    {
        let _ = owner::controlled_by(primary, uid);
    }
    if let Some(new_status) = status::primary_status(
        primary,
        plugin_status,
        &out.conditions,
        "2026-01-01T00:00:00Z",
    ) {
        let mut obj = primary.clone();
        obj["status"] = new_status;
        let _ = serde_json::from_value::<DynamicObject>(obj);
    }
}

/// Primaries of each [`Scope`], the namespaced one with conditions in its status.
const PRIMARIES: &[&str] = &[
    r#"{"apiVersion":"rekon.dev/v1alpha1","kind":"WebApp","metadata":{"name":"web","namespace":"shop","uid":"u1","resourceVersion":"100","generation":2},"spec":{"image":"nginx:1.27","replicas":3},"status":{"readyReplicas":1,"conditions":[{"type":"Ready","status":"False","reason":"Progressing","message":"1/3","lastTransitionTime":"2026-01-01T00:00:00Z","observedGeneration":1}]}}"#,
    r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"team-a","uid":"u2","resourceVersion":"5"}}"#,
    r#"{"apiVersion":"rekon.dev/v1alpha1","kind":"Tenant","metadata":{"name":"team-a","uid":"u3","resourceVersion":"9"}}"#,
];

/// The `mutation_json` target: `text` as the object of every verb that carries one, and
/// as a merge patch of the primary, for a primary of each scope, with and without
/// conditions (so the status merge runs on the plugin's status).
pub fn mutation_text(text: &str) {
    let writes = [
        Gvk::new("apps", "v1", "Deployment"),
        Gvk::new("", "v1", "Service"),
        Gvk::new("", "v1", "ConfigMap"),
        Gvk::new("networking.k8s.io", "v1", "NetworkPolicy"),
    ];
    let ready = Condition {
        condition_type: "Ready".into(),
        status: ConditionStatus::True,
        reason: "Available".into(),
        message: "3/3".into(),
    };
    for primary in PRIMARIES {
        let p: Value = serde_json::from_str(primary).expect("a valid primary");
        let declared = Metadata {
            name: "fuzz".into(),
            version: "0".into(),
            primary: kind_of(&p),
            watches: Vec::new(),
            reads: Vec::new(),
            writes: writes.to_vec(),
            resync_seconds: None,
            finalizer: None,
        };
        let target = Target {
            api_version: declared.primary.api_version(),
            kind: declared.primary.kind.clone(),
            namespace: meta(&p, "namespace").map(str::to_owned),
            name: meta(&p, "name").unwrap_or_default().to_owned(),
            resource_version: None,
        };
        let verbs = [
            RawMutation::Apply(text.to_owned()),
            RawMutation::Create(text.to_owned()),
            RawMutation::Update(text.to_owned()),
            RawMutation::UpdateStatus(text.to_owned()),
            RawMutation::MergePatch(target, text.to_owned()),
        ];
        for m in verbs {
            for conditions in [Vec::new(), vec![ready.clone()]] {
                let raw = RawOutput {
                    mutations: vec![m.clone()],
                    conditions,
                    prune: true,
                    ..RawOutput::default()
                };
                output(raw, &declared, primary, &Limits::default());
            }
        }
    }
}

/// The `case_yaml` target: `text` as a case file, then what `rekon test` derives from a
/// parsed case before calling the plugin.
pub fn case_text(text: &str) {
    match case::parse(text, Path::new("fuzz/case.yaml")) {
        Ok(loaded) => {
            let c = &loaded.case;
            let _ = c.primary.to_string();
            let _ = c.related.iter().map(Value::to_string).count();
            let _ = c.settings.as_ref().map(Value::to_string);
            let _ = (&loaded.name, loaded.now_ms);
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}
