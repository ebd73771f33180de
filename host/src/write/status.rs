//! Merging plugin conditions into an object's status, Kubernetes-style: by `type`, with
//! `observedGeneration` set to the object's generation and `lastTransitionTime` changed
//! only when the condition's status changes.

use crate::contract::{Condition, ConditionStatus};
use serde_json::{Value, json};

fn status_text(s: ConditionStatus) -> &'static str {
    match s {
        ConditionStatus::True => "True",
        ConditionStatus::False => "False",
        ConditionStatus::Unknown => "Unknown",
    }
}

/// Merges `conditions` into `existing` (a `status.conditions` array, possibly absent) and
/// returns the new array.
///
/// # Guarantees
/// Conditions of other types are kept in place; a condition whose status is unchanged
/// keeps its `lastTransitionTime`; every merged condition carries `observedGeneration`.
pub fn merge_conditions(
    existing: Option<&Value>,
    conditions: &[Condition],
    generation: Option<i64>,
    now: &str,
) -> Value {
    let mut list: Vec<Value> = existing
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for c in conditions {
        let status = status_text(c.status);
        let previous = list
            .iter()
            .position(|e| e.get("type").and_then(Value::as_str) == Some(c.condition_type.as_str()));
        let transition = previous
            .map(|i| &list[i])
            .filter(|e| e.get("status").and_then(Value::as_str) == Some(status))
            .and_then(|e| e.get("lastTransitionTime").cloned())
            .unwrap_or_else(|| json!(now));
        let mut merged = json!({
            "type": c.condition_type,
            "status": status,
            "reason": c.reason,
            "message": c.message,
            "lastTransitionTime": transition,
        });
        if let Some(g) = generation {
            merged["observedGeneration"] = json!(g);
        }
        match previous {
            Some(i) => list[i] = merged,
            None => list.push(merged),
        }
    }
    Value::Array(list)
}

/// The status to write for the primary: the plugin's status object (if it returned one)
/// or the primary as the snapshot had it, with `conditions` merged in. `None` when the
/// result equals the snapshot's status (no write needed).
pub fn primary_status(
    primary: &Value,
    plugin_status: Option<&Value>,
    conditions: &[Condition],
    now: &str,
) -> Option<Value> {
    let current = primary.get("status").cloned().unwrap_or_else(|| json!({}));
    let mut status = match plugin_status {
        Some(s) => s.get("status").cloned().unwrap_or_else(|| json!({})),
        None => current.clone(),
    };
    if !conditions.is_empty() {
        let generation = primary
            .pointer("/metadata/generation")
            .and_then(Value::as_i64);
        let base = status
            .get("conditions")
            .or_else(|| current.get("conditions"))
            .cloned();
        if !status.is_object() {
            status = json!({});
        }
        status["conditions"] = merge_conditions(base.as_ref(), conditions, generation, now);
    } else if plugin_status.is_some()
        && status.is_object()
        && status.get("conditions").is_none()
        && let Some(c) = current.get("conditions")
    {
        // A plugin status without conditions keeps the conditions already there. A status
        // that is not an object is left as the plugin wrote it, for the API server to judge.
        status["conditions"] = c.clone();
    }
    (status != current).then_some(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cond(status: ConditionStatus) -> Condition {
        Condition {
            condition_type: "Ready".into(),
            status,
            reason: "R".into(),
            message: "m".into(),
        }
    }

    #[test]
    fn transition_time_changes_only_when_the_status_changes() {
        let first = merge_conditions(None, &[cond(ConditionStatus::False)], Some(1), "t1");
        assert_eq!(first[0]["lastTransitionTime"], "t1");
        assert_eq!(first[0]["observedGeneration"], 1);
        let same = merge_conditions(Some(&first), &[cond(ConditionStatus::False)], Some(2), "t2");
        assert_eq!(same[0]["lastTransitionTime"], "t1");
        assert_eq!(same[0]["observedGeneration"], 2);
        let flipped = merge_conditions(Some(&same), &[cond(ConditionStatus::True)], Some(2), "t3");
        assert_eq!(flipped[0]["lastTransitionTime"], "t3");
        assert_eq!(flipped[0]["status"], "True");
    }

    #[test]
    fn other_condition_types_are_kept() {
        let existing = json!([{"type": "Synced", "status": "True"}]);
        let merged = merge_conditions(Some(&existing), &[cond(ConditionStatus::True)], None, "t");
        assert_eq!(merged.as_array().unwrap().len(), 2);
        assert_eq!(merged[0]["type"], "Synced");
    }

    #[test]
    fn a_plugin_status_that_is_not_an_object_does_not_panic() {
        // Indexing a JSON string or number with `status["conditions"] = …` panics; a
        // plugin's `updateStatus` of its primary may carry any `status`.
        let primary = json!({"metadata": {"generation": 1},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}});
        for odd in [json!("x"), json!(7), json!([1]), json!(true)] {
            let plugin = json!({"status": odd});
            assert_eq!(
                primary_status(&primary, Some(&plugin), &[], "t"),
                Some(odd.clone()),
                "left as written: {odd}"
            );
            let merged =
                primary_status(&primary, Some(&plugin), &[cond(ConditionStatus::True)], "t")
                    .unwrap();
            assert_eq!(merged["conditions"][0]["type"], "Ready", "{odd}");
        }
    }

    #[test]
    fn an_unchanged_status_needs_no_write() {
        let primary = json!({"metadata": {"generation": 3}, "status": {"readyReplicas": 2}});
        assert!(
            primary_status(
                &primary,
                Some(&json!({"status": {"readyReplicas": 2}})),
                &[],
                "t"
            )
            .is_none()
        );
        let written = primary_status(&primary, None, &[cond(ConditionStatus::True)], "t").unwrap();
        assert_eq!(written["readyReplicas"], 2);
        assert_eq!(written["conditions"][0]["observedGeneration"], 3);
        let again = json!({"metadata": {"generation": 3}, "status": written});
        assert!(primary_status(&again, None, &[cond(ConditionStatus::True)], "later").is_none());
    }
}
