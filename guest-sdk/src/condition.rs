//! Status conditions: [`Condition`], and [`set`] for plugins that keep conditions in a
//! status of their own.
//!
//! Most plugins return conditions through [`Output::condition`](crate::Output::condition)
//! and let the host merge them into the primary's `status.conditions`. A plugin that
//! writes conditions itself — into a child's status, or into the primary's status it
//! builds in full — merges them with [`set`], by the same rule the host follows:
//!
//! ```
//! use rekon_sdk::condition::{self, Condition};
//! use rekon_sdk::k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
//!
//! let mut conditions: Vec<meta::Condition> = Vec::new();
//! let now = rekon_sdk::clock::parse_rfc3339("2026-01-01T00:00:00Z").unwrap();
//! let ready = Condition::new("Ready", false, "Progressing", "1/3 replicas ready");
//! assert!(condition::set(&mut conditions, &ready, Some(4), now));
//!
//! // Later, same status, new message: the transition time stays.
//! let later = now + 60_000;
//! let ready = Condition::new("Ready", false, "Progressing", "2/3 replicas ready");
//! assert!(condition::set(&mut conditions, &ready, Some(4), later));
//! assert_eq!(conditions[0].last_transition_time.0.as_millisecond(), now);
//! assert!(!condition::is_true(&conditions, "Ready"));
//! ```

use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_openapi::jiff::Timestamp;

/// A status condition of the primary, returned through
/// [`Output::condition`](crate::Output::condition).
///
/// The plugin says only type, status, reason and message. The host merges it into the
/// primary's `status.conditions` by `type`, sets `observedGeneration` to the generation
/// of the primary the plugin saw, and changes `lastTransitionTime` only when the status
/// changes — so a plugin never needs the clock or the generation for its conditions.
///
/// ```no_run
/// use rekon_sdk::Condition;
/// let ready = Condition::new("Ready", true, "Available", "3/3 replicas ready");
/// let progressing = Condition::new("Ready", false, "Progressing", "1/3 replicas ready");
/// let unknown = Condition::new("Ready", rekon_sdk::condition::Status::Unknown, "Pending", "");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Condition {
    /// Condition type, e.g. `Ready`.
    pub condition_type: String,
    /// True, False or Unknown.
    pub status: Status,
    /// Machine-readable reason, UpperCamelCase.
    pub reason: String,
    /// Human-readable message.
    pub message: String,
}

impl Condition {
    /// A condition; `status` is a [`Status`] or a `bool`.
    pub fn new(
        condition_type: impl Into<String>,
        status: impl Into<Status>,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            condition_type: condition_type.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
        }
    }
}

impl Condition {
    /// This condition as a Kubernetes `metav1.Condition`, stamped with
    /// `observed_generation` and a `lastTransitionTime` of `transition_ms` (milliseconds
    /// since the Unix epoch, truncated to seconds as Kubernetes stores it).
    pub fn to_meta(&self, observed_generation: Option<i64>, transition_ms: i64) -> meta::Condition {
        meta::Condition {
            type_: self.condition_type.clone(),
            status: self.status.as_str().to_owned(),
            reason: self.reason.clone(),
            message: self.message.clone(),
            observed_generation,
            last_transition_time: meta::Time(timestamp(transition_ms)),
        }
    }
}

/// Merges `condition` into `conditions` by type, as the host merges the conditions of an
/// [`Output`](crate::Output): a condition of a new type is appended; one of an existing
/// type replaces it in place, keeping its `lastTransitionTime` unless the status
/// changed. `observedGeneration` becomes `observed_generation` (pass
/// [`Request::generation`](crate::Request::generation) for the primary), and a changed
/// status gets `now_ms` (pass [`clock::now`](crate::clock::now)) as its transition time.
///
/// Returns whether anything changed, so a plugin can skip a status write that would
/// change nothing.
///
/// # Guarantees
///
/// Idempotent: merging the same condition again with the same generation changes
/// nothing and returns `false`, whatever `now_ms` is — so a reconcile that runs twice
/// on the same state decides the same status.
pub fn set(
    conditions: &mut Vec<meta::Condition>,
    condition: &Condition,
    observed_generation: Option<i64>,
    now_ms: i64,
) -> bool {
    let Some(existing) = conditions
        .iter_mut()
        .find(|c| c.type_ == condition.condition_type)
    else {
        conditions.push(condition.to_meta(observed_generation, now_ms));
        return true;
    };
    let transition = if existing.status == condition.status.as_str() {
        existing.last_transition_time.0.as_millisecond()
    } else {
        now_ms
    };
    let merged = condition.to_meta(observed_generation, transition);
    if *existing == merged {
        return false;
    }
    *existing = merged;
    true
}

/// The condition of type `condition_type` in `conditions`, if there is one.
pub fn find<'a>(
    conditions: &'a [meta::Condition],
    condition_type: &str,
) -> Option<&'a meta::Condition> {
    conditions.iter().find(|c| c.type_ == condition_type)
}

/// Whether `conditions` hold a condition of type `condition_type` with status `"True"`.
pub fn is_true(conditions: &[meta::Condition], condition_type: &str) -> bool {
    find(conditions, condition_type).is_some_and(|c| c.status == Status::True.as_str())
}

/// Milliseconds since the epoch as a timestamp, truncated to whole seconds (Kubernetes'
/// `metav1.Time` has second precision); out-of-range values clamp to the epoch.
fn timestamp(ms: i64) -> Timestamp {
    Timestamp::from_second(ms.div_euclid(1000)).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// Tri-state status of a [`Condition`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    /// `"True"`.
    True,
    /// `"False"`.
    False,
    /// `"Unknown"`.
    Unknown,
}

impl Status {
    /// The wire form: `"True"`, `"False"` or `"Unknown"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::True => "True",
            Self::False => "False",
            Self::Unknown => "Unknown",
        }
    }
}

impl From<bool> for Status {
    fn from(b: bool) -> Self {
        if b { Self::True } else { Self::False }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
    const T1: i64 = T0 + 90_500;

    fn rfc3339(c: &meta::Condition) -> String {
        crate::clock::format_rfc3339(c.last_transition_time.0.as_millisecond())
    }

    #[test]
    fn a_new_type_is_appended_with_the_generation_and_now() {
        let mut conditions = Vec::new();
        assert!(set(
            &mut conditions,
            &Condition::new("Ready", true, "Available", "ok"),
            Some(3),
            T0
        ));
        assert!(set(
            &mut conditions,
            &Condition::new("Degraded", false, "AsExpected", ""),
            Some(3),
            T1
        ));
        let types: Vec<_> = conditions.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, ["Ready", "Degraded"]);
        assert_eq!(
            (
                conditions[0].status.as_str(),
                conditions[0].reason.as_str(),
                conditions[0].observed_generation
            ),
            ("True", "Available", Some(3))
        );
        assert_eq!(rfc3339(&conditions[0]), "2026-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(&conditions[1]),
            "2026-01-01T00:01:30Z",
            "truncated to seconds"
        );
    }

    #[test]
    fn the_transition_time_changes_only_when_the_status_changes() {
        let mut conditions = Vec::new();
        set(
            &mut conditions,
            &Condition::new("Ready", false, "Progressing", "1/3"),
            Some(1),
            T0,
        );
        assert!(set(
            &mut conditions,
            &Condition::new("Ready", false, "Progressing", "2/3"),
            Some(2),
            T1
        ));
        assert_eq!(rfc3339(&conditions[0]), "2026-01-01T00:00:00Z");
        assert_eq!(
            (
                conditions[0].message.as_str(),
                conditions[0].observed_generation
            ),
            ("2/3", Some(2))
        );
        assert!(set(
            &mut conditions,
            &Condition::new("Ready", true, "Available", "3/3"),
            Some(2),
            T1
        ));
        assert_eq!(rfc3339(&conditions[0]), "2026-01-01T00:01:30Z");
        assert_eq!(conditions.len(), 1, "merged by type, not appended");
    }

    #[test]
    fn merging_the_same_condition_again_changes_nothing() {
        let ready = Condition::new("Ready", true, "Available", "3/3");
        let mut conditions = Vec::new();
        set(&mut conditions, &ready, Some(5), T0);
        let before = conditions.clone();
        assert!(!set(&mut conditions, &ready, Some(5), T1));
        assert_eq!(conditions, before);
        assert!(
            set(&mut conditions, &ready, Some(6), T1),
            "a new generation is a change"
        );
        assert_eq!(rfc3339(&conditions[0]), "2026-01-01T00:00:00Z");
    }

    #[test]
    fn find_and_is_true_look_up_by_type() {
        let mut conditions = Vec::new();
        set(
            &mut conditions,
            &Condition::new("Ready", true, "Available", ""),
            None,
            T0,
        );
        set(
            &mut conditions,
            &Condition::new("Degraded", Status::Unknown, "Checking", ""),
            None,
            T0,
        );
        assert!(is_true(&conditions, "Ready"));
        assert!(!is_true(&conditions, "Degraded") && !is_true(&conditions, "Missing"));
        assert_eq!(
            find(&conditions, "Degraded").map(|c| c.status.as_str()),
            Some("Unknown")
        );
        assert_eq!(conditions[0].observed_generation, None);
    }

    #[test]
    fn to_meta_serialises_as_kubernetes_writes_conditions() {
        let json = serde_json::to_value(
            Condition::new("Ready", false, "Progressing", "0/1").to_meta(Some(2), T0),
        )
        .unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "type": "Ready", "status": "False", "reason": "Progressing", "message": "0/1",
                "observedGeneration": 2, "lastTransitionTime": "2026-01-01T00:00:00Z",
            })
        );
    }
}
