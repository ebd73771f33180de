//! Kubernetes label selectors: does an object's label map match a selector?
//!
//! A [`Selector`] comes from either form Kubernetes uses:
//!
//! - the structured [`LabelSelector`] of a spec (`matchLabels` and `matchExpressions`
//!   with `In`, `NotIn`, `Exists`, `DoesNotExist`), as in a Deployment's
//!   `spec.selector`: [`Selector::from_label_selector`];
//! - the string form of `kubectl -l` and of [`cache::list`](crate::cache::list)
//!   (`app=web,tier!=db`, `env in (a,b)`, `release notin (canary)`, `owner`, `!legacy`):
//!   [`Selector::parse`].
//!
//! Both mean the same requirements, and [`Selector`]'s `Display` writes the string form,
//! so a spec's selector can be handed to the cache:
//!
//! ```
//! use std::collections::BTreeMap;
//! use rekon_sdk::k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
//! use rekon_sdk::selector::Selector;
//!
//! let spec_selector = LabelSelector {
//!     match_labels: Some([("app".to_owned(), "web".to_owned())].into()),
//!     match_expressions: Some(vec![LabelSelectorRequirement {
//!         key: "tier".into(),
//!         operator: "In".into(),
//!         values: Some(vec!["front".into(), "edge".into()]),
//!     }]),
//! };
//! let selector = Selector::from_label_selector(&spec_selector).unwrap();
//! let labels: BTreeMap<String, String> =
//!     [("app".into(), "web".into()), ("tier".into(), "edge".into())].into();
//! assert!(selector.matches(&labels));
//! assert_eq!(selector.to_string(), "app=web,tier in (front,edge)");
//! assert_eq!(Selector::parse("app=web,tier in (front,edge)").unwrap(), selector);
//! ```
//!
//! # Caveats
//!
//! Keys and values are checked for the characters Kubernetes allows (letters, digits,
//! `-`, `_`, `.`, and `/` in keys), not for every length and prefix rule the API server
//! enforces. An empty selector matches every label map, as Kubernetes' empty
//! `LabelSelector` does; a *missing* selector (a `None` in a spec) matching nothing is the
//! caller's decision.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use rekon_selector::Requirement;

pub use rekon_selector::Error;

/// A label selector: every requirement must hold. The empty selector matches everything.
///
/// Parsing, matching and the string form are [`rekon_selector`]'s, the implementation the
/// host uses too, so a plugin and the host's cache agree on what a selector means.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Selector(rekon_selector::Selector);

impl From<Error> for crate::Error {
    /// A permanent error: a selector that does not parse will not parse on retry.
    fn from(e: Error) -> Self {
        Self::permanent(e.to_string())
    }
}

impl Selector {
    /// A selector that matches everything.
    pub fn everything() -> Self {
        Self::default()
    }

    /// Parses the string form: comma-separated `k=v`, `k==v`, `k!=v`, `k in (a,b)`,
    /// `k notin (a,b)`, `k` (exists) and `!k` (does not exist). The empty string matches
    /// everything.
    ///
    /// # Errors
    ///
    /// An [`Error`] naming the selector and the requirement that does not parse.
    pub fn parse(input: &str) -> Result<Self, Error> {
        rekon_selector::Selector::parse(input).map(Self)
    }

    /// The selector a [`LabelSelector`] of a spec stands for: its `matchLabels` (each
    /// `k=v`) and its `matchExpressions` (`In`, `NotIn`, `Exists`, `DoesNotExist`), all
    /// of which must hold. An empty `LabelSelector` matches everything.
    ///
    /// # Errors
    ///
    /// An [`Error`] for an unknown operator, `In`/`NotIn` without values,
    /// `Exists`/`DoesNotExist` with values, or an invalid key or value.
    pub fn from_label_selector(selector: &LabelSelector) -> Result<Self, Error> {
        let labels = selector
            .match_labels
            .iter()
            .flatten()
            .map(|(key, value)| Requirement::equals(key, value));
        let expressions = selector.match_expressions.iter().flatten().map(|e| {
            Requirement::expression(&e.key, &e.operator, e.values.as_deref().unwrap_or_default())
        });
        labels
            .chain(expressions)
            .collect::<Result<_, _>>()
            .map(Self)
            .map_err(|problem| Error::new(describe(selector), problem))
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.matches(labels)
    }

    /// Whether an object whose `metadata.labels` are `labels` (`None`: no labels)
    /// matches.
    pub fn matches_opt(&self, labels: Option<&BTreeMap<String, String>>) -> bool {
        self.matches_with(|key| labels.and_then(|l| l.get(key)).map(String::as_str))
    }

    /// Whether the labels that `label` looks up satisfy every requirement.
    pub(crate) fn matches_with<'a>(&self, label: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.0.matches_with(label)
    }

    /// Whether the selector has no requirement (and so matches everything).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Whether `labels` match a spec's [`LabelSelector`]: shorthand for
/// [`Selector::from_label_selector`] then [`Selector::matches_opt`].
///
/// # Errors
///
/// As [`Selector::from_label_selector`].
pub fn matches(
    selector: &LabelSelector,
    labels: Option<&BTreeMap<String, String>>,
) -> Result<bool, Error> {
    Ok(Selector::from_label_selector(selector)?.matches_opt(labels))
}

impl fmt::Debug for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for Selector {
    /// The string form, as [`Selector::parse`] reads it back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for Selector {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        Self::parse(s)
    }
}

/// A `LabelSelector` described for error messages, in a JSON-like form.
fn describe(selector: &LabelSelector) -> String {
    let labels: Vec<String> = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let expressions: Vec<String> = selector
        .match_expressions
        .iter()
        .flatten()
        .map(|e| {
            format!(
                "{} {} [{}]",
                e.key,
                e.operator,
                e.values
                    .iter()
                    .flatten()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(",")
            )
        })
        .collect();
    format!(
        "matchLabels {{{}}} matchExpressions [{}]",
        labels.join(","),
        expressions.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn expression(key: &str, operator: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: operator.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| (*v).into()).collect()),
        }
    }

    fn structured(
        match_labels: &[(&str, &str)],
        expressions: Vec<LabelSelectorRequirement>,
    ) -> LabelSelector {
        LabelSelector {
            match_labels: (!match_labels.is_empty()).then(|| labels(match_labels)),
            match_expressions: (!expressions.is_empty()).then_some(expressions),
        }
    }

    #[test]
    fn match_labels_and_every_expression_operator_match_as_kubernetes_defines_them() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        let check = |s: LabelSelector| matches(&s, Some(&l)).unwrap();
        assert!(check(structured(&[("app", "web")], vec![])));
        assert!(!check(structured(
            &[("app", "web"), ("tier", "back")],
            vec![]
        )));
        assert!(check(structured(
            &[],
            vec![expression("tier", "In", &["front", "back"])]
        )));
        assert!(!check(structured(
            &[],
            vec![expression("missing", "In", &["x"])]
        )));
        assert!(!check(structured(
            &[],
            vec![expression("tier", "NotIn", &["front"])]
        )));
        assert!(check(structured(
            &[],
            vec![expression("missing", "NotIn", &["x"])]
        )));
        assert!(check(structured(
            &[],
            vec![expression("app", "Exists", &[])]
        )));
        assert!(!check(structured(
            &[],
            vec![expression("missing", "Exists", &[])]
        )));
        assert!(check(structured(
            &[],
            vec![expression("missing", "DoesNotExist", &[])]
        )));
        assert!(!check(structured(
            &[("app", "web")],
            vec![expression("tier", "DoesNotExist", &[])]
        )));
    }

    #[test]
    fn an_empty_label_selector_matches_everything_including_no_labels() {
        let empty = LabelSelector::default();
        assert!(matches(&empty, None).unwrap());
        assert!(matches(&empty, Some(&labels(&[("a", "b")]))).unwrap());
        assert!(Selector::from_label_selector(&empty).unwrap().is_empty());
        assert!(!matches(&structured(&[("a", "b")], vec![]), None).unwrap());
    }

    #[test]
    fn a_structured_selector_has_the_same_meaning_as_its_string_form() {
        let s = structured(
            &[("app", "web")],
            vec![
                expression("tier", "In", &["front", "edge"]),
                expression("release", "NotIn", &["canary"]),
                expression("owner", "Exists", &[]),
                expression("legacy", "DoesNotExist", &[]),
            ],
        );
        let selector = Selector::from_label_selector(&s).unwrap();
        let text = selector.to_string();
        assert_eq!(
            text,
            "app=web,tier in (front,edge),release!=canary,owner,!legacy"
        );
        assert_eq!(text.parse::<Selector>().unwrap(), selector);
    }

    #[test]
    fn invalid_label_selectors_are_refused_naming_the_selector_and_the_problem() {
        for (s, needle) in [
            (
                structured(&[], vec![expression("a", "Equals", &["x"])]),
                "unknown operator \"Equals\"",
            ),
            (
                structured(&[], vec![expression("a", "In", &[])]),
                "needs at least one value",
            ),
            (
                structured(&[], vec![expression("a", "Exists", &["x"])]),
                "takes no values",
            ),
            (
                structured(&[("bad key", "x")], vec![]),
                "\"bad key\" is not a valid label key",
            ),
        ] {
            let err = Selector::from_label_selector(&s).unwrap_err();
            assert!(err.to_string().contains(needle), "{err}");
            assert!(err.to_string().starts_with("label selector"), "{err}");
            assert_eq!(err.selector(), describe(&s));
        }
    }

    #[test]
    fn a_selector_error_is_a_permanent_reconcile_error() {
        for err in [
            Selector::parse("a b").unwrap_err(),
            "a,,b".parse::<Selector>().unwrap_err(),
            Selector::from_label_selector(&structured(&[], vec![expression("a", "In", &[])]))
                .unwrap_err(),
        ] {
            let message = err.to_string();
            let as_reconcile_error: crate::Error = err.into();
            assert!(!as_reconcile_error.is_transient());
            assert!(as_reconcile_error.to_string().contains(&message));
        }
    }

    #[test]
    fn a_missing_labels_map_is_matched_as_no_labels() {
        let selector = Selector::parse("!legacy,tier notin (db)").unwrap();
        assert!(selector.matches_opt(None));
        assert!(!Selector::parse("app").unwrap().matches_opt(None));
        assert!(Selector::everything().matches_opt(None));
        assert!(Selector::everything().is_empty());
    }
}
