//! A plugin's finalizer on its primaries: when to add it, when to call `finalize`, and
//! the list without it once `finalize` succeeded.
//!
//! # Guarantees
//! - A plugin that declares a finalizer gets it added to every primary not being deleted
//!   before its first reconcile (a resourceVersion-preconditioned merge patch).
//! - A primary being deleted that carries the finalizer is finalized (the plugin's
//!   `finalize`); the finalizer is removed only after `finalize` succeeded without
//!   asking to be called again.
//! - A primary being deleted without the plugin's finalizer is left alone.

use serde_json::Value;

/// What a reconcile of a primary does about the finalizer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Step {
    /// Nothing to do for this primary (being deleted, and not ours to finalize).
    Skip,
    /// Add the finalizer first: patch the list to this.
    Add(Vec<String>),
    /// Call the plugin: `reconcile`, or `finalize` when the primary is being deleted.
    Call {
        /// Whether the primary is being deleted (call `finalize`).
        finalize: bool,
    },
}

/// The step for `primary` (being deleted or not) of a plugin declaring `finalizer`.
pub(super) fn step(finalizer: Option<&str>, primary: &Value, deleting: bool) -> Step {
    let list = finalizers(primary);
    let has = finalizer.is_some_and(|f| list.iter().any(|x| x == f));
    match (finalizer, deleting, has) {
        (_, true, false) | (None, true, _) => Step::Skip,
        (Some(f), false, false) => {
            let mut list = list;
            list.push(f.to_owned());
            Step::Add(list)
        }
        (_, deleting, _) => Step::Call { finalize: deleting },
    }
}

/// The finalizer list of `primary` without `finalizer`.
pub(super) fn without(primary: &Value, finalizer: Option<&str>) -> Vec<String> {
    finalizers(primary)
        .into_iter()
        .filter(|x| Some(x.as_str()) != finalizer)
        .collect()
}

/// The finalizers of an object.
pub(super) fn finalizers(o: &Value) -> Vec<String> {
    o.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|l| {
            l.iter()
                .filter_map(|f| f.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_finalizer_is_added_first_then_the_plugin_is_called() {
        let fresh = json!({"metadata": {"finalizers": ["other"]}});
        assert_eq!(
            step(Some("x"), &fresh, false),
            Step::Add(vec!["other".into(), "x".into()])
        );
        let ours = json!({"metadata": {"finalizers": ["other", "x"]}});
        assert_eq!(
            step(Some("x"), &ours, false),
            Step::Call { finalize: false }
        );
        assert_eq!(step(Some("x"), &ours, true), Step::Call { finalize: true });
        assert_eq!(step(Some("x"), &fresh, true), Step::Skip);
        assert_eq!(step(None, &fresh, true), Step::Skip);
        assert_eq!(step(None, &fresh, false), Step::Call { finalize: false });
        assert_eq!(without(&ours, Some("x")), ["other"]);
    }
}
