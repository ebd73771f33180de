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

/// A label selector: every requirement must hold. The empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

/// One requirement on one label key.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    /// The label is present with one of these values (`k=v` is `In` with one value).
    In(String, Vec<String>),
    /// The label is absent or has none of these values (`k!=v` is `NotIn` with one).
    NotIn(String, Vec<String>),
    /// The label is present.
    Exists(String),
    /// The label is absent.
    DoesNotExist(String),
}

/// Why a selector is not valid: names the selector and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    selector: String,
    reason: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "label selector {:?}: {}", self.selector, self.reason)
    }
}

impl std::error::Error for Error {}

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
        let fail = |reason: String| Error {
            selector: input.to_owned(),
            reason,
        };
        if input.trim().is_empty() {
            return Ok(Self::everything());
        }
        let requirements = split_top_level(input)
            .into_iter()
            .map(|term| parse_term(term.trim()).map_err(fail))
            .collect::<Result<_, _>>()?;
        Ok(Self { requirements })
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
        let fail = |reason: String| Error {
            selector: describe(selector),
            reason,
        };
        let mut requirements = Vec::new();
        for (key, value) in selector.match_labels.iter().flatten() {
            requirements.push(Requirement::In(
                key_of(key).map_err(fail)?,
                vec![value_of(value).map_err(fail)?],
            ));
        }
        for expression in selector.match_expressions.iter().flatten() {
            let key = key_of(&expression.key).map_err(fail)?;
            let values = expression
                .values
                .iter()
                .flatten()
                .map(|v| value_of(v))
                .collect::<Result<Vec<_>, _>>()
                .map_err(fail)?;
            let operator = expression.operator.as_str();
            let requirement = match operator {
                "In" | "NotIn" if values.is_empty() => {
                    return Err(fail(format!(
                        "{operator} on {key:?} needs at least one value"
                    )));
                }
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    return Err(fail(format!("{operator} on {key:?} takes no values")));
                }
                "In" => Requirement::In(key, values),
                "NotIn" => Requirement::NotIn(key, values),
                "Exists" => Requirement::Exists(key),
                "DoesNotExist" => Requirement::DoesNotExist(key),
                other => {
                    return Err(fail(format!(
                        "unknown operator {other:?} on {key:?} (In, NotIn, Exists, DoesNotExist)"
                    )));
                }
            };
            requirements.push(requirement);
        }
        Ok(Self { requirements })
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matches_with(|key| labels.get(key).map(String::as_str))
    }

    /// Whether an object whose `metadata.labels` are `labels` (`None`: no labels)
    /// matches.
    pub fn matches_opt(&self, labels: Option<&BTreeMap<String, String>>) -> bool {
        self.matches_with(|key| labels.and_then(|l| l.get(key)).map(String::as_str))
    }

    /// Whether the labels that `label` looks up satisfy every requirement.
    pub(crate) fn matches_with<'a>(&self, label: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.requirements.iter().all(|r| match r {
            Requirement::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Requirement::NotIn(k, vs) => label(k).is_none_or(|l| vs.iter().all(|v| v != l)),
            Requirement::Exists(k) => label(k).is_some(),
            Requirement::DoesNotExist(k) => label(k).is_none(),
        })
    }

    /// Whether the selector has no requirement (and so matches everything).
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
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

impl fmt::Display for Selector {
    /// The string form, as [`Selector::parse`] reads it back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for r in &self.requirements {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            match r {
                Requirement::In(k, vs) if vs.len() == 1 => write!(f, "{k}={}", vs[0])?,
                Requirement::NotIn(k, vs) if vs.len() == 1 => write!(f, "{k}!={}", vs[0])?,
                Requirement::In(k, vs) => write!(f, "{k} in ({})", vs.join(","))?,
                Requirement::NotIn(k, vs) => write!(f, "{k} notin ({})", vs.join(","))?,
                Requirement::Exists(k) => f.write_str(k)?,
                Requirement::DoesNotExist(k) => write!(f, "!{k}")?,
            }
        }
        Ok(())
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

/// Splits on commas outside parentheses.
fn split_top_level(s: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn parse_term(term: &str) -> Result<Requirement, String> {
    if term.is_empty() {
        return Err("empty requirement".into());
    }
    if let Some(key) = term.strip_prefix('!') {
        return Ok(Requirement::DoesNotExist(key_of(key)?));
    }
    if let Some((k, v)) = term.split_once("!=") {
        return Ok(Requirement::NotIn(key_of(k)?, vec![value_of(v)?]));
    }
    if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
        return Ok(Requirement::In(key_of(k)?, vec![value_of(v)?]));
    }
    for (op, notin) in [(" notin ", true), (" in ", false)] {
        if let Some((k, rest)) = term.split_once(op) {
            let inner = rest
                .trim()
                .strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
                .ok_or_else(|| format!("{term:?}: the values must be in parentheses"))?;
            let values = inner.split(',').map(value_of).collect::<Result<_, _>>()?;
            let key = key_of(k)?;
            return Ok(if notin {
                Requirement::NotIn(key, values)
            } else {
                Requirement::In(key, values)
            });
        }
    }
    Ok(Requirement::Exists(key_of(term)?))
}

fn key_of(raw: &str) -> Result<String, String> {
    let key = raw.trim();
    let valid = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if valid {
        Ok(key.to_owned())
    } else {
        Err(format!("{key:?} is not a valid label key"))
    }
}

fn value_of(raw: &str) -> Result<String, String> {
    let value = raw.trim();
    let valid = value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if valid {
        Ok(value.to_owned())
    } else {
        Err(format!("{value:?} is not a valid label value"))
    }
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
    fn every_string_operator_matches_as_kubernetes_defines_it() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        for (selector, expected) in [
            ("", true),
            ("app=web", true),
            ("app==web", true),
            ("app=db", false),
            ("app!=db", true),
            ("app!=web", false),
            ("missing!=x", true),
            ("tier in (front, back)", true),
            ("tier notin (front)", false),
            ("missing notin (x)", true),
            ("missing in (x)", false),
            ("app,!legacy", true),
            ("legacy", false),
            ("!app", false),
            ("app=web,tier=back", false),
        ] {
            assert_eq!(
                Selector::parse(selector).unwrap().matches(&l),
                expected,
                "{selector}"
            );
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
    fn invalid_selectors_are_refused_naming_the_selector_and_the_problem() {
        for bad in ["app in web", "=web", "a b", "app in (x", "a,,b", "app=we b"] {
            let err = Selector::parse(bad).unwrap_err();
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
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
        }
        let as_reconcile_error: crate::Error = Selector::parse("a b").unwrap_err().into();
        assert!(!as_reconcile_error.is_transient());
    }
}
