//! Checks a plugin's raw output against what the plugin declared, before anything is
//! written: well-formed objects, only declared kinds, namespaces within the primary's
//! [scope](super::owner::Scope), sizes within the limits, sane events and conditions.

use super::owner::Scope;
use crate::contract::{Condition, Event, Gvk, Metadata, Mutation, Output, Target};
use crate::sandbox::{Limits, RawMutation, RawOutput};
use serde_json::Value;

/// Longest event reason Kubernetes accepts.
const MAX_REASON: usize = 128;
/// Longest event note Kubernetes accepts.
const MAX_NOTE: usize = 1024;

/// Why an output was refused. `index` counts mutations (or events, conditions) from 0.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An object or patch is not JSON.
    #[error("mutation {index} ({verb}) is not valid JSON: {source}")]
    MalformedJson {
        /// Position.
        index: usize,
        /// Mutation verb.
        verb: &'static str,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// An object lacks what every Kubernetes object needs.
    #[error("mutation {index} ({verb}): {reason}")]
    MalformedObject {
        /// Position.
        index: usize,
        /// Mutation verb.
        verb: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A write to a kind the plugin did not declare.
    #[error(
        "mutation {index} ({verb}) writes {kind}, which the plugin did not declare in `writes`"
    )]
    UndeclaredKind {
        /// Position.
        index: usize,
        /// Mutation verb.
        verb: &'static str,
        /// The kind.
        kind: Gvk,
    },
    /// A write naming a namespace outside the primary's [`Scope`].
    #[error(
        "mutation {index} ({verb}) targets namespace {found:?}, outside the primary's scope: {scope}"
    )]
    NamespaceOutOfScope {
        /// Position.
        index: usize,
        /// Mutation verb.
        verb: &'static str,
        /// The namespace written.
        found: String,
        /// The primary's scope, described.
        scope: String,
    },
    /// An object, or the whole output, is too large.
    #[error("{what} is {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        /// What.
        what: String,
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// An output holds more events or conditions than its limit allows.
    #[error("the output has {count} {what}, over the limit of {limit}")]
    TooMany {
        /// `events` or `conditions`.
        what: &'static str,
        /// How many the output has.
        count: usize,
        /// The limit ([`Limits::max_events`], [`Limits::max_conditions`]).
        limit: usize,
    },
    /// An event or condition is unusable.
    #[error("{what}: {reason}")]
    BadRecord {
        /// Which event or condition.
        what: String,
        /// Why.
        reason: String,
    },
}

impl Error {
    /// A bounded label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::MalformedJson { .. } => "malformed_json",
            Error::MalformedObject { .. } => "malformed_object",
            Error::UndeclaredKind { .. } => "undeclared_kind",
            Error::NamespaceOutOfScope { .. } => "namespace_out_of_scope",
            Error::TooLarge { .. } => "too_large",
            Error::TooMany { .. } => "too_many",
            Error::BadRecord { .. } => "bad_record",
        }
    }
}

/// Checks `raw` for a plugin declaring `meta`, reconciling the primary `primary` (JSON).
///
/// # Guarantees
/// Whatever `raw` holds, this returns (the `check_output` and `mutation_json` fuzz
/// targets in `fuzz/` hold it to that). An accepted output has, for the applier:
/// - objects (`apply`, `create`, `update`, `updateStatus`) that are JSON objects whose
///   `metadata` is an object, with a non-empty `apiVersion`, `kind` and `metadata.name`
///   (or, for `create`, `metadata.generateName`), of a kind the plugin may write, naming
///   no namespace outside the primary's scope;
/// - merge patches that are JSON objects whose `metadata`, if present, is an object or
///   `null`, and targets with an `apiVersion`, `kind` and name, likewise declared and in
///   scope;
/// - at most [`Limits::max_events`] events, each with a reason of 1–128 bytes and a note
///   of at most 1024; at most [`Limits::max_conditions`] conditions, each with a type and
///   a reason.
///
/// # Errors
/// The first problem found, as an [`Error`] naming the mutation, event or condition.
pub fn output(
    raw: RawOutput,
    meta: &Metadata,
    primary: &str,
    limits: &Limits,
) -> Result<Output, Error> {
    let primary = identity(primary);
    let ctx = Ctx {
        meta,
        scope: Scope::of(&primary),
        limits,
    };
    count("events", raw.events.len(), limits.max_events)?;
    count("conditions", raw.conditions.len(), limits.max_conditions)?;
    let total: usize = raw.mutations.iter().map(raw_size).sum();
    if total > limits.output_bytes {
        return Err(Error::TooLarge {
            what: "the output".into(),
            size: total,
            limit: limits.output_bytes,
        });
    }
    let mutations = raw
        .mutations
        .into_iter()
        .enumerate()
        .map(|(i, m)| ctx.mutation(i, m))
        .collect::<Result<Vec<_>, _>>()?;
    for (i, e) in raw.events.iter().enumerate() {
        event(i, e)?;
    }
    for (i, c) in raw.conditions.iter().enumerate() {
        condition(i, c)?;
    }
    Ok(Output {
        mutations,
        requeue_after_ms: raw.requeue_after_ms,
        events: raw.events,
        conditions: raw.conditions,
        prune: raw.prune,
    })
}

/// The primary's identity — `apiVersion`, `kind`, `metadata.name` and `.namespace`, all
/// [`Scope::of`] reads — without building the rest of the object: a large primary costs a
/// scan rather than a tree of allocations (BENCHMARKS.md, per-call phases).
fn identity(primary: &str) -> Value {
    #[derive(serde::Deserialize, Default)]
    #[serde(default)]
    struct Head {
        #[serde(rename = "apiVersion")]
        api_version: Value,
        kind: Value,
        metadata: HeadMeta,
    }
    #[derive(serde::Deserialize, Default)]
    #[serde(default)]
    struct HeadMeta {
        name: Value,
        namespace: Value,
    }
    let head: Head = serde_json::from_str(primary).unwrap_or_default();
    serde_json::json!({
        "apiVersion": head.api_version,
        "kind": head.kind,
        "metadata": { "name": head.metadata.name, "namespace": head.metadata.namespace },
    })
}

fn raw_size(m: &RawMutation) -> usize {
    match m {
        RawMutation::Apply(s)
        | RawMutation::Create(s)
        | RawMutation::Update(s)
        | RawMutation::UpdateStatus(s) => s.len(),
        RawMutation::MergePatch(_, p) => p.len(),
        RawMutation::Delete(_) => 0,
    }
}

struct Ctx<'a> {
    meta: &'a Metadata,
    scope: Scope<'a>,
    limits: &'a Limits,
}

impl Ctx<'_> {
    fn mutation(&self, index: usize, m: RawMutation) -> Result<Mutation, Error> {
        Ok(match m {
            RawMutation::Apply(s) => Mutation::Apply(self.object(index, "apply", &s)?),
            RawMutation::Create(s) => Mutation::Create(self.object(index, "create", &s)?),
            RawMutation::Update(s) => Mutation::Update(self.object(index, "update", &s)?),
            RawMutation::UpdateStatus(s) => {
                Mutation::UpdateStatus(self.object(index, "updateStatus", &s)?)
            }
            RawMutation::MergePatch(target, patch) => {
                self.target(index, "mergePatch", &target)?;
                self.size(index, "mergePatch", patch.len())?;
                let patch: Value =
                    serde_json::from_str(&patch).map_err(|source| Error::MalformedJson {
                        index,
                        verb: "mergePatch",
                        source,
                    })?;
                if !patch.is_object() {
                    return Err(malformed(
                        index,
                        "mergePatch",
                        "the patch must be a JSON object",
                    ));
                }
                // The applier adds the resourceVersion and uid preconditions under
                // `metadata`; `null` (a patch removing it) becomes an object.
                if patch
                    .get("metadata")
                    .is_some_and(|m| !m.is_object() && !m.is_null())
                {
                    return Err(malformed(
                        index,
                        "mergePatch",
                        "the patch's metadata must be a JSON object",
                    ));
                }
                Mutation::MergePatch { target, patch }
            }
            RawMutation::Delete(target) => {
                self.target(index, "delete", &target)?;
                Mutation::Delete(target)
            }
        })
    }

    fn size(&self, index: usize, verb: &'static str, size: usize) -> Result<(), Error> {
        if size > self.limits.object_bytes {
            return Err(Error::TooLarge {
                what: format!("mutation {index} ({verb})"),
                size,
                limit: self.limits.object_bytes,
            });
        }
        Ok(())
    }

    fn object(&self, index: usize, verb: &'static str, text: &str) -> Result<Value, Error> {
        self.size(index, verb, text.len())?;
        let obj: Value = serde_json::from_str(text).map_err(|source| Error::MalformedJson {
            index,
            verb,
            source,
        })?;
        // Plain key walks: `Value::pointer` unescapes (allocates) every segment.
        let field = |path: &str| {
            path.split('/')
                .skip(1)
                .try_fold(&obj, |v, key| v.get(key))
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
        };
        let api_version =
            field("/apiVersion").ok_or_else(|| malformed(index, verb, "missing apiVersion"))?;
        let kind = field("/kind").ok_or_else(|| malformed(index, verb, "missing kind"))?;
        if field("/metadata/name").is_none()
            && (verb != "create" || field("/metadata/generateName").is_none())
        {
            return Err(malformed(index, verb, "missing metadata.name"));
        }
        let gvk = Gvk::from_api_version(api_version, kind);
        self.writable(index, verb, &gvk)?;
        self.namespace(index, verb, field("/metadata/namespace"))?;
        Ok(obj)
    }

    fn target(&self, index: usize, verb: &'static str, t: &Target) -> Result<(), Error> {
        if t.api_version.is_empty() || t.kind.is_empty() || t.name.is_empty() {
            return Err(malformed(
                index,
                verb,
                "the target needs apiVersion, kind and name",
            ));
        }
        self.writable(index, verb, &t.gvk())?;
        self.namespace(index, verb, t.namespace.as_deref())
    }

    fn writable(&self, index: usize, verb: &'static str, kind: &Gvk) -> Result<(), Error> {
        if self.meta.may_write(kind) {
            Ok(())
        } else {
            Err(Error::UndeclaredKind {
                index,
                verb,
                kind: kind.clone(),
            })
        }
    }

    fn namespace(&self, index: usize, verb: &'static str, ns: Option<&str>) -> Result<(), Error> {
        match ns {
            Some(found) if !self.scope.admits_named(Some(found)) => {
                Err(Error::NamespaceOutOfScope {
                    index,
                    verb,
                    found: found.to_owned(),
                    scope: self.scope.to_string(),
                })
            }
            _ => Ok(()),
        }
    }
}

fn malformed(index: usize, verb: &'static str, reason: &str) -> Error {
    Error::MalformedObject {
        index,
        verb,
        reason: reason.to_owned(),
    }
}

fn count(what: &'static str, count: usize, limit: usize) -> Result<(), Error> {
    if count > limit {
        return Err(Error::TooMany { what, count, limit });
    }
    Ok(())
}

fn event(i: usize, e: &Event) -> Result<(), Error> {
    let bad = |reason: String| Error::BadRecord {
        what: format!("event {i}"),
        reason,
    };
    if e.reason.is_empty() || e.reason.len() > MAX_REASON {
        return Err(bad(format!("reason must be 1-{MAX_REASON} characters")));
    }
    if e.note.len() > MAX_NOTE {
        return Err(bad(format!(
            "note is {} bytes, over {MAX_NOTE}",
            e.note.len()
        )));
    }
    Ok(())
}

fn condition(i: usize, c: &Condition) -> Result<(), Error> {
    if c.condition_type.is_empty() || c.reason.is_empty() {
        return Err(Error::BadRecord {
            what: format!("condition {i}"),
            reason: "type and reason must not be empty".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::{KeyMapping, Watch};

    fn meta() -> Metadata {
        Metadata {
            name: "t".into(),
            version: "1".into(),
            primary: Gvk::new("rekon.dev", "v1alpha1", "WebApp"),
            watches: vec![Watch {
                kind: Gvk::new("apps", "v1", "Deployment"),
                mapping: KeyMapping::OwnerReference,
            }],
            reads: vec![],
            writes: vec![Gvk::new("apps", "v1", "Deployment")],
            resync_seconds: None,
            finalizer: None,
        }
    }

    const PRIMARY: &str = r#"{"apiVersion":"rekon.dev/v1alpha1","kind":"WebApp","metadata":{"name":"w","namespace":"a"}}"#;

    fn check(m: RawMutation) -> Result<Output, Error> {
        let raw = RawOutput {
            mutations: vec![m],
            ..Default::default()
        };
        output(raw, &meta(), PRIMARY, &Limits::default())
    }

    #[test]
    fn a_declared_kind_in_the_primary_namespace_passes() {
        let out = check(RawMutation::Apply(
            r#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"w","namespace":"a"}}"#.into(),
        ))
        .unwrap();
        assert_eq!(out.mutations[0].verb(), "apply");
    }

    #[test]
    fn undeclared_kinds_are_refused_naming_the_kind() {
        let err = check(RawMutation::Apply(
            r#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"s"}}"#.into(),
        ))
        .unwrap_err();
        assert_eq!(err.metric_label(), "undeclared_kind");
        assert!(err.to_string().contains("v1 Secret"), "{err}");
    }

    #[test]
    fn malformed_json_missing_fields_and_foreign_namespaces_are_refused() {
        assert_eq!(
            check(RawMutation::Apply("{not json".into()))
                .unwrap_err()
                .metric_label(),
            "malformed_json"
        );
        assert_eq!(
            check(RawMutation::Apply(
                r#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{}}"#.into()
            ))
            .unwrap_err()
            .metric_label(),
            "malformed_object"
        );
        let other_ns = r#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"w","namespace":"b"}}"#;
        assert_eq!(
            check(RawMutation::Apply(other_ns.into()))
                .unwrap_err()
                .metric_label(),
            "namespace_out_of_scope"
        );
    }

    fn check_for(primary: &str, m: RawMutation) -> Result<Output, Error> {
        let raw = RawOutput {
            mutations: vec![m],
            ..Default::default()
        };
        let meta = Metadata {
            primary: Gvk::new("", "v1", "Namespace"),
            ..meta()
        };
        output(raw, &meta, primary, &Limits::default())
    }

    const NAMESPACE: &str =
        r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"team-a"}}"#;
    const TENANT: &str =
        r#"{"apiVersion":"rekon.dev/v1alpha1","kind":"Tenant","metadata":{"name":"team-a"}}"#;

    fn deployment_in(ns: &str) -> RawMutation {
        RawMutation::Apply(format!(
            r#"{{"apiVersion":"apps/v1","kind":"Deployment","metadata":{{"name":"w","namespace":"{ns}"}}}}"#
        ))
    }

    #[test]
    fn a_namespace_primary_may_write_into_the_namespace_it_names_only() {
        assert!(check_for(NAMESPACE, deployment_in("team-a")).is_ok());
        let err = check_for(NAMESPACE, deployment_in("team-b")).unwrap_err();
        assert_eq!(err.metric_label(), "namespace_out_of_scope");
        assert!(err.to_string().contains(r#"namespace "team-a""#), "{err}");
    }

    #[test]
    fn another_cluster_scoped_primary_may_name_no_namespace() {
        let err = check_for(TENANT, deployment_in("team-a")).unwrap_err();
        assert_eq!(err.metric_label(), "namespace_out_of_scope");
        assert!(
            err.to_string().contains("cluster-scoped objects only"),
            "{err}"
        );
        let unnamed = RawMutation::Apply(
            r#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"w"}}"#.into(),
        );
        assert!(
            check_for(TENANT, unnamed).is_ok(),
            "without a namespace the applier decides, knowing the kind's scope"
        );
    }

    fn merge_patch(patch: &str) -> RawMutation {
        let target = Target {
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            namespace: None,
            name: "w".into(),
            resource_version: None,
        };
        RawMutation::MergePatch(target, patch.into())
    }

    #[test]
    fn a_merge_patch_whose_metadata_is_not_an_object_is_refused() {
        // Found by the `check_output` fuzz target: the applier adds its preconditions
        // with `patch["metadata"]["resourceVersion"] = …`, which panics unless
        // `metadata` is an object or null.
        for metadata in [r#""x""#, "7", "[]", "true"] {
            let err = check(merge_patch(&format!(r#"{{"metadata":{metadata}}}"#))).unwrap_err();
            assert_eq!(err.metric_label(), "malformed_object", "{metadata}: {err}");
            assert!(err.to_string().contains("metadata"), "{err}");
        }
        for ok in [
            r#"{"metadata":{"labels":{"a":"b"}}}"#,
            r#"{"metadata":null}"#,
            "{}",
        ] {
            assert!(check(merge_patch(ok)).is_ok(), "{ok}");
        }
    }

    fn records(events: usize, conditions: usize) -> RawOutput {
        let event = |i: usize| Event {
            event_type: crate::contract::EventType::Normal,
            reason: "Scaled".into(),
            note: format!("step {i}"),
        };
        let condition = |i: usize| Condition {
            condition_type: format!("Step{i}"),
            status: crate::contract::ConditionStatus::True,
            reason: "Done".into(),
            message: String::new(),
        };
        RawOutput {
            events: (0..events).map(event).collect(),
            conditions: (0..conditions).map(condition).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn events_and_conditions_up_to_their_limits_pass() {
        let limits = Limits::default();
        let raw = records(limits.max_events, limits.max_conditions);
        let out = output(raw, &meta(), PRIMARY, &limits).expect("at the limits passes");
        assert_eq!(out.events.len(), 16);
        assert_eq!(out.conditions.len(), 32);
    }

    #[test]
    fn more_events_than_the_limit_are_refused_naming_count_and_limit() {
        let limits = Limits {
            max_events: 3,
            ..Limits::default()
        };
        let err = output(records(4, 0), &meta(), PRIMARY, &limits).unwrap_err();
        assert_eq!(err.metric_label(), "too_many");
        assert_eq!(
            err.to_string(),
            "the output has 4 events, over the limit of 3"
        );
    }

    #[test]
    fn more_conditions_than_the_limit_are_refused_naming_count_and_limit() {
        let err = output(records(0, 33), &meta(), PRIMARY, &Limits::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the output has 33 conditions, over the limit of 32"
        );
    }

    #[test]
    fn objects_over_the_size_cap_are_refused() {
        let big = format!(
            r#"{{"apiVersion":"apps/v1","kind":"Deployment","metadata":{{"name":"w"}},"x":"{}"}}"#,
            "a".repeat(2 << 20)
        );
        assert_eq!(
            check(RawMutation::Apply(big)).unwrap_err().metric_label(),
            "too_large"
        );
    }
}
