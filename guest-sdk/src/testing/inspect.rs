//! Looking into an [`Output`] in tests: typed accessors, assertions, and the status the
//! host would write.

use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::condition::Status;
use crate::object::meta_str;
use crate::output::{EventType, Mutation, Target};
use crate::{Condition, Kind, Output, Request, clock};

impl Output {
    /// The objects of kind `K` this output applies, decoded, in order (native tests only).
    ///
    /// # Panics
    ///
    /// If an applied object of kind `K` does not fit `K`.
    pub fn applied<K: Kind + DeserializeOwned>(&self) -> Vec<K> {
        self.objects::<K>(|m| matches!(m, Mutation::Apply(_)))
    }

    /// The object of kind `K` named `name` this output applies (native tests only).
    ///
    /// # Panics
    ///
    /// If there is none, with a summary of the output's mutations.
    pub fn applied_named<K: Kind + DeserializeOwned>(&self, name: &str) -> K {
        let value = self
            .mutations()
            .iter()
            .find_map(|m| match m {
                Mutation::Apply(v) if is_kind::<K>(v) && meta_str(v, "name") == Some(name) => {
                    Some(v)
                }
                _ => None,
            })
            .unwrap_or_else(|| {
                panic!(
                    "no apply of {} {name:?}; the output has:\n{}",
                    K::KIND,
                    summary(self)
                )
            });
        decode(value)
    }

    /// The objects of kind `K` this output creates (native tests only).
    ///
    /// # Panics
    ///
    /// If one does not fit `K`.
    pub fn created<K: Kind + DeserializeOwned>(&self) -> Vec<K> {
        self.objects::<K>(|m| matches!(m, Mutation::Create(_)))
    }

    /// The objects of kind `K` this output updates (native tests only).
    ///
    /// # Panics
    ///
    /// If one does not fit `K`.
    pub fn updated<K: Kind + DeserializeOwned>(&self) -> Vec<K> {
        self.objects::<K>(|m| matches!(m, Mutation::Update(_)))
    }

    /// The status-update objects (native tests only).
    pub fn status_updates(&self) -> Vec<&Value> {
        self.mutations()
            .iter()
            .filter_map(|m| match m {
                Mutation::UpdateStatus(v) => Some(v),
                _ => None,
            })
            .collect()
    }

    /// The delete targets (native tests only).
    pub fn deletes(&self) -> Vec<&Target> {
        self.mutations()
            .iter()
            .filter_map(|m| match m {
                Mutation::Delete(t) => Some(t),
                _ => None,
            })
            .collect()
    }

    /// The merge patches with their targets (native tests only).
    pub fn merge_patches(&self) -> Vec<(&Target, &Value)> {
        self.mutations()
            .iter()
            .filter_map(|m| match m {
                Mutation::MergePatch { target, patch } => Some((target, patch)),
                _ => None,
            })
            .collect()
    }

    /// The condition of type `condition_type`, if the output has one (native tests only).
    pub fn condition_of(&self, condition_type: &str) -> Option<&Condition> {
        self.conditions()
            .iter()
            .find(|c| c.condition_type == condition_type)
    }

    fn objects<K: Kind + DeserializeOwned>(&self, which: impl Fn(&Mutation) -> bool) -> Vec<K> {
        self.mutations()
            .iter()
            .filter(|m| which(m))
            .filter_map(|m| match m {
                Mutation::Apply(v) | Mutation::Create(v) | Mutation::Update(v)
                    if is_kind::<K>(v) =>
                {
                    Some(decode(v))
                }
                _ => None,
            })
            .collect()
    }
}

fn is_kind<K: Kind + ?Sized>(v: &Value) -> bool {
    K::gvk().matches(
        v["apiVersion"].as_str().unwrap_or_default(),
        v["kind"].as_str().unwrap_or_default(),
    )
}

fn decode<K: DeserializeOwned>(v: &Value) -> K {
    serde_json::from_value(v.clone())
        .unwrap_or_else(|e| panic!("{v} does not fit {}: {e}", std::any::type_name::<K>()))
}

/// One line per mutation: `apply apps/v1 Deployment default/web`, for failure messages.
pub fn summary(out: &Output) -> String {
    let object = |verb: &str, v: &Value| {
        let ns = meta_str(v, "namespace")
            .map(|n| format!("{n}/"))
            .unwrap_or_default();
        let (api, kind) = (
            v["apiVersion"].as_str().unwrap_or("?"),
            v["kind"].as_str().unwrap_or("?"),
        );
        format!(
            "{verb} {api} {kind} {ns}{}",
            meta_str(v, "name").unwrap_or("?")
        )
    };
    let target = |verb: &str, t: &Target| {
        let ns = t
            .namespace
            .as_deref()
            .map(|n| format!("{n}/"))
            .unwrap_or_default();
        format!("{verb} {} {} {ns}{}", t.api_version, t.kind, t.name)
    };
    let lines: Vec<String> = out
        .mutations()
        .iter()
        .map(|m| match m {
            Mutation::Apply(v) => object("apply", v),
            Mutation::Create(v) => object("create", v),
            Mutation::Update(v) => object("update", v),
            Mutation::UpdateStatus(v) => object("update-status", v),
            Mutation::MergePatch { target: t, .. } => target("merge-patch", t),
            Mutation::Delete(t) => target("delete", t),
        })
        .collect();
    if lines.is_empty() {
        "  (no mutations)".to_owned()
    } else {
        lines.iter().map(|l| format!("  {l}\n")).collect()
    }
}

/// Asserts the output applies an object of `kind` (the kind name, e.g. `"Deployment"`)
/// named `name`.
///
/// # Panics
///
/// If it does not, listing the mutations it has.
#[track_caller]
pub fn assert_applies(out: &Output, kind: &str, name: &str) {
    let found = out.mutations().iter().any(|m| matches!(m, Mutation::Apply(v) if v["kind"] == kind && meta_str(v, "name") == Some(name)));
    assert!(
        found,
        "expected an apply of {kind} {name:?}; the output has:\n{}",
        summary(out)
    );
}

/// Asserts the output has no mutations.
///
/// # Panics
///
/// If it has some, listing them.
#[track_caller]
pub fn assert_no_mutations(out: &Output) {
    assert!(
        out.mutations().is_empty(),
        "expected no mutations; the output has:\n{}",
        summary(out)
    );
}

/// Asserts the output sets condition `condition_type` with this status and reason, and
/// returns it for further checks.
///
/// # Panics
///
/// If it does not.
#[track_caller]
pub fn assert_condition<'a>(
    out: &'a Output,
    condition_type: &str,
    status: impl Into<Status>,
    reason: &str,
) -> &'a Condition {
    let status = status.into();
    let found = out
        .condition_of(condition_type)
        .unwrap_or_else(|| panic!("no {condition_type} condition in {:?}", out.conditions()));
    assert!(
        found.status == status && found.reason == reason,
        "expected {condition_type}={status} ({reason}), got {}={} ({})",
        found.condition_type,
        found.status,
        found.reason
    );
    found
}

/// Asserts the output records an event of this type and reason.
///
/// # Panics
///
/// If it does not.
#[track_caller]
pub fn assert_event(out: &Output, event_type: EventType, reason: &str) {
    assert!(
        out.events()
            .iter()
            .any(|e| e.event_type == event_type && e.reason == reason),
        "expected a {event_type:?} event {reason:?}, got {:?}",
        out.events()
    );
}

/// The primary's status as the host writes it for this output, or `None` when the host
/// writes none (no `update_status` of the primary and no conditions, or a result equal
/// to the primary's current status).
///
/// The rule, shared with the host: start from the last `update_status` of the primary
/// (or the primary's current status); if the output has conditions, merge them by type
/// into that status's `conditions` (or, when it has none, the current ones), stamping
/// `observedGeneration` with the primary's generation and keeping `lastTransitionTime`
/// unless the status changed (then it is the [clock](crate::clock)'s now); a status
/// update without `conditions` keeps the current ones.
pub fn written_status(request: &Request, out: &Output) -> Option<Value> {
    let primary: Value = serde_json::from_str(request.primary_json()).ok()?;
    let update = out.status_updates().into_iter().rev().find(|v| {
        meta_str(v, "name") == Some(request.name())
            && v["kind"] == primary["kind"]
            && v["apiVersion"] == primary["apiVersion"]
    });
    let current = primary.get("status").cloned().unwrap_or_else(|| json!({}));
    let mut status = update.map_or_else(|| current.clone(), |u| u["status"].clone());
    if !status.is_object() {
        status = json!({});
    }
    let base = status
        .get("conditions")
        .or_else(|| current.get("conditions"));
    let mut conditions = base.and_then(Value::as_array).cloned().unwrap_or_default();
    for c in out.conditions() {
        let previous = conditions
            .iter()
            .position(|p| p["type"] == c.condition_type.as_str());
        let transition = previous
            .map(|i| &conditions[i])
            .filter(|p| p["status"] == c.status.as_str())
            .map(|p| p["lastTransitionTime"].clone())
            .filter(|t| !t.is_null())
            .unwrap_or_else(|| json!(clock::now_rfc3339()));
        let mut merged = json!({
            "type": c.condition_type, "status": c.status.as_str(), "reason": c.reason,
            "message": c.message, "lastTransitionTime": transition,
        });
        if let Some(generation) = request.generation() {
            merged["observedGeneration"] = json!(generation);
        }
        match previous {
            Some(i) => conditions[i] = merged,
            None => conditions.push(merged),
        }
    }
    if base.is_some() || !out.conditions().is_empty() {
        status["conditions"] = Value::Array(conditions);
    }
    (status != current).then_some(status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{FakeHost, obj, request};
    use k8s_openapi::api::core::v1::ConfigMap;

    fn primary() -> crate::testing::Obj {
        obj("rekon.dev/v1alpha1", "WebApp", "web").ns("default").generation(3).status(json!({
            "readyReplicas": 1,
            "conditions": [
                {"type": "Ready", "status": "False", "reason": "Progressing", "lastTransitionTime": "2025-01-01T00:00:00Z", "observedGeneration": 2},
                {"type": "Other", "status": "True", "reason": "Kept"},
            ],
        }))
    }

    #[test]
    fn written_status_combines_the_status_update_with_merged_conditions() {
        let p = primary();
        let out = Output::new()
            .update_status(p.clone().status(json!({"readyReplicas": 3})))
            .condition(Condition::new("Ready", true, "Available", "3/3"));
        let status = FakeHost::new()
            .now("2026-01-01T00:00:00Z")
            .run(|| written_status(&request(&p), &out))
            .unwrap();
        assert_eq!(status["readyReplicas"], 3);
        let conditions = status["conditions"].as_array().unwrap();
        assert_eq!(conditions.len(), 2, "{status}");
        assert_eq!(conditions[0]["status"], "True");
        assert_eq!(conditions[0]["observedGeneration"], 3);
        assert_eq!(conditions[0]["lastTransitionTime"], "2026-01-01T00:00:00Z");
        assert_eq!(conditions[1]["reason"], "Kept");
    }

    #[test]
    fn an_unchanged_condition_status_keeps_its_transition_time() {
        let p = primary();
        let out = Output::new().condition(Condition::new("Ready", false, "Progressing", "2/3"));
        let status = written_status(&request(&p), &out).unwrap();
        assert_eq!(
            status["readyReplicas"], 1,
            "no status update: other fields stay"
        );
        assert_eq!(
            status["conditions"][0]["lastTransitionTime"],
            "2025-01-01T00:00:00Z"
        );
        assert_eq!(status["conditions"][0]["observedGeneration"], 3);
        assert_eq!(written_status(&request(&p), &Output::new()), None);
        let settled = p.status(json!({"conditions": [{
            "type": "Ready", "status": "False", "reason": "Progressing", "message": "2/3",
            "lastTransitionTime": "2025-01-01T00:00:00Z", "observedGeneration": 3,
        }]}));
        let same = Output::new().condition(Condition::new("Ready", false, "Progressing", "2/3"));
        assert_eq!(
            written_status(&request(&settled), &same),
            None,
            "nothing changes: no write"
        );
    }

    #[test]
    fn accessors_decode_only_their_kind() {
        let cm = obj("v1", "ConfigMap", "a").ns("x").data(json!({"k": "v"}));
        let out = Output::new()
            .apply(&cm)
            .apply(obj("v1", "Secret", "a"))
            .create(&cm)
            .delete(cm.clone().rv("4"));
        assert_eq!(out.applied::<ConfigMap>().len(), 1);
        assert_eq!(out.applied_named::<ConfigMap>("a").data.unwrap()["k"], "v");
        assert_eq!(out.created::<ConfigMap>().len(), 1);
        assert_eq!(out.deletes()[0].resource_version.as_deref(), Some("4"));
        assert_applies(&out, "Secret", "a");
        let caught = std::panic::catch_unwind(|| assert_applies(&out, "Secret", "b")).unwrap_err();
        let message = caught.downcast_ref::<String>().unwrap();
        assert!(
            message.contains("apply v1 Secret a") && message.contains("delete v1 ConfigMap x/a"),
            "{message}"
        );
    }
}
