//! A plugin's finalizer on its primaries: when to add it, when to call `finalize`, when to
//! remove it, and what happens to a finalizer a plugin no longer declares.
//!
//! # Guarantees
//! - A plugin that declares a finalizer gets it added to every primary not being deleted
//!   before its first reconcile (a resourceVersion-preconditioned merge patch). The host
//!   records which finalizer it added for which plugin in the annotation
//!   `finalizers.rekon.dev/<plugin>`, so a later version of the plugin knows it.
//! - A primary being deleted that carries the plugin's finalizer is finalized (the
//!   plugin's `finalize`); the finalizer is removed only after `finalize` succeeded
//!   without asking to be called again.
//! - A version that **renames** its finalizer finalizes objects carrying the old name too,
//!   and replaces the old name by the new one on objects not being deleted. A version
//!   that **drops** its finalizer releases the old one (no `finalize` to call), with a
//!   Warning Event `FinalizerReleased` on the object. Nothing stays Terminating because a
//!   plugin changed its declaration.
//! - A primary being deleted without any finalizer of the plugin is left alone.
//!
//! # Caveats
//! When the plugin file is removed, no controller handles its finalizer any more: its
//! objects being deleted stay Terminating until the plugin comes back or the finalizer is
//! released with `rekon release-finalizer PLUGIN` (`crate::cli::release_finalizer`, which
//! removes the finalizer recorded in the annotation from every object holding it). The
//! host reports each such object when it removes the plugin, with a Warning Event
//! `FinalizerOrphaned` that names the command ([`super::Host::remove`]).

use serde_json::{Value, json};

/// The annotation recording which finalizer the host added for `plugin`.
pub fn annotation(plugin: &str) -> String {
    format!("finalizers.rekon.dev/{plugin}")
}

/// What a reconcile of a primary does about finalizers.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Step {
    /// Nothing to do for this primary (being deleted, and not ours to finalize).
    Skip,
    /// Change the finalizers first (add ours, rename an old one, or release an old one),
    /// with this merge patch of `metadata`; `released` names a finalizer let go without
    /// cleanup (reported).
    Patch {
        /// The merge patch.
        patch: Value,
        /// A finalizer released without calling the plugin.
        released: Option<String>,
    },
    /// Call the plugin: `reconcile`, or `finalize` when the primary is being deleted.
    Call {
        /// Whether the primary is being deleted (call `finalize`).
        finalize: bool,
        /// After a successful `finalize`, remove these finalizers (ours, and an old name).
        remove: Vec<String>,
    },
}

/// The step for `primary` (being deleted or not) of `plugin` declaring `finalizer`.
pub(super) fn step(plugin: &str, finalizer: Option<&str>, primary: &Value, deleting: bool) -> Step {
    let list = finalizers(primary);
    let key = annotation(plugin);
    let recorded = primary
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(&key))
        .and_then(Value::as_str);
    // An older name this plugin's host added, still on the object.
    let old = recorded.filter(|r| Some(*r) != finalizer && list.iter().any(|x| x == r));
    let has = finalizer.is_some_and(|f| list.iter().any(|x| x == f));
    let without = |drop: &[&str]| -> Vec<String> {
        list.iter()
            .filter(|x| !drop.contains(&x.as_str()))
            .cloned()
            .collect()
    };
    match (finalizer, deleting) {
        (None, _) => match old {
            Some(old) => Step::Patch {
                patch: json!({"metadata": {
                    "finalizers": without(&[old]),
                    "annotations": {key: null},
                }}),
                released: Some(old.to_owned()),
            },
            None => Step::Call {
                finalize: false,
                remove: Vec::new(),
            }
            .unless_deleting(deleting),
        },
        (Some(f), false) if !has || old.is_some() => {
            let mut next = without(&old.into_iter().collect::<Vec<_>>());
            if !has {
                next.push(f.to_owned());
            }
            Step::Patch {
                patch: json!({"metadata": {"finalizers": next, "annotations": {key: f}}}),
                released: None,
            }
        }
        (Some(_), false) => Step::Call {
            finalize: false,
            remove: Vec::new(),
        },
        (Some(f), true) if has || old.is_some() => Step::Call {
            finalize: true,
            remove: std::iter::once(f).chain(old).map(str::to_owned).collect(),
        },
        (Some(_), true) => Step::Skip,
    }
}

impl Step {
    /// `Skip` for a primary being deleted (nothing of ours to finalize), else `self`.
    fn unless_deleting(self, deleting: bool) -> Self {
        if deleting { Step::Skip } else { self }
    }
}

/// Whether `primary` carries a finalizer `plugin` must handle: its declared one, or an
/// older name recorded for it.
pub(super) fn carries(plugin: &str, finalizer: Option<&str>, primary: &Value) -> bool {
    let list = finalizers(primary);
    let recorded = primary
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(annotation(plugin)))
        .and_then(Value::as_str);
    finalizer
        .into_iter()
        .chain(recorded)
        .any(|f| list.iter().any(|x| x == f))
}

/// The finalizer list of `primary` without `remove`.
pub(super) fn without(primary: &Value, remove: &[String]) -> Vec<String> {
    finalizers(primary)
        .into_iter()
        .filter(|x| !remove.contains(x))
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

    fn obj(finalizers: &[&str], recorded: Option<&str>) -> Value {
        let mut o = json!({"metadata": {"finalizers": finalizers}});
        if let Some(r) = recorded {
            o["metadata"]["annotations"] = json!({"finalizers.rekon.dev/p": r});
        }
        o
    }

    fn call(finalize: bool, remove: &[&str]) -> Step {
        Step::Call {
            finalize,
            remove: remove.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn the_finalizer_is_added_and_recorded_first_then_the_plugin_is_called() {
        let fresh = obj(&["other"], None);
        assert_eq!(
            step("p", Some("x"), &fresh, false),
            Step::Patch {
                patch: json!({"metadata": {"finalizers": ["other", "x"],
                    "annotations": {"finalizers.rekon.dev/p": "x"}}}),
                released: None,
            }
        );
        let ours = obj(&["other", "x"], Some("x"));
        assert_eq!(step("p", Some("x"), &ours, false), call(false, &[]));
        assert_eq!(step("p", Some("x"), &ours, true), call(true, &["x"]));
        assert_eq!(step("p", Some("x"), &fresh, true), Step::Skip);
        assert_eq!(step("p", None, &fresh, true), Step::Skip);
        assert_eq!(step("p", None, &fresh, false), call(false, &[]));
        assert_eq!(without(&ours, &["x".into()]), ["other"]);
    }

    #[test]
    fn a_renamed_finalizer_replaces_the_old_name_and_finalizes_objects_carrying_it() {
        let old = obj(&["other", "v1"], Some("v1"));
        assert_eq!(
            step("p", Some("v2"), &old, false),
            Step::Patch {
                patch: json!({"metadata": {"finalizers": ["other", "v2"],
                    "annotations": {"finalizers.rekon.dev/p": "v2"}}}),
                released: None,
            }
        );
        // Being deleted with only the old name: the new version finalizes it.
        assert_eq!(step("p", Some("v2"), &old, true), call(true, &["v2", "v1"]));
        assert!(carries("p", Some("v2"), &old));
    }

    #[test]
    fn a_dropped_finalizer_is_released_whether_or_not_the_object_is_being_deleted() {
        let old = obj(&["other", "v1"], Some("v1"));
        let released = Step::Patch {
            patch: json!({"metadata": {"finalizers": ["other"],
                "annotations": {"finalizers.rekon.dev/p": null}}}),
            released: Some("v1".into()),
        };
        assert_eq!(step("p", None, &old, true), released);
        assert_eq!(step("p", None, &old, false), released);
        // A finalizer recorded for another plugin is not ours to release.
        assert_eq!(step("q", None, &old, true), Step::Skip);
        assert!(!carries("q", None, &old));
    }
}
