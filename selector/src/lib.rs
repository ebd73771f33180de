//! Kubernetes label selectors: does an object's label map match a selector?
//!
//! One implementation for both sides of rekon: the host filters its cache with it, and the
//! plugin SDK matches and builds selectors with it inside `wasm32-wasip2` components, so the
//! two always agree on what a selector means. It depends on nothing beyond `std`.
//!
//! A [`Selector`] is a list of [`Requirement`]s, all of which must hold. It comes from
//!
//! - the string form of `kubectl -l` and of the cache `list` import (`app=web,tier!=db`,
//!   `env in (a,b)`, `release notin (canary)`, `owner`, `!legacy`): [`Selector::parse`];
//! - the `matchLabels` and `matchExpressions` of a spec's `LabelSelector`: one
//!   [`Requirement::equals`] per label and one [`Requirement::expression`] per expression,
//!   collected into a [`Selector`].
//!
//! `Display` writes the canonical string form, which [`Selector::parse`] reads back to an
//! equal selector:
//!
//! ```
//! use std::collections::BTreeMap;
//! use rekon_selector::{Requirement, Selector};
//!
//! let selector = Selector::parse("app == web, tier in (front,edge), !legacy").unwrap();
//! let labels: BTreeMap<String, String> =
//!     [("app".into(), "web".into()), ("tier".into(), "edge".into())].into();
//! assert!(selector.matches(&labels));
//! assert_eq!(selector.to_string(), "app=web,tier in (front,edge),!legacy");
//!
//! // The same selector from matchLabels and matchExpressions.
//! let built: Selector = [
//!     Requirement::equals("app", "web"),
//!     Requirement::expression("tier", "In", &["front".into(), "edge".into()]),
//!     Requirement::expression("legacy", "DoesNotExist", &[]),
//! ]
//! .into_iter()
//! .collect::<Result<_, _>>()
//! .unwrap();
//! assert_eq!(built, selector);
//! ```
//!
//! # Guarantees
//!
//! One meaning, one value: `k=v`, `k == v` and `k in (v)` all become the same
//! [`Requirement::Equals`] (and `k notin (v)` a [`Requirement::NotEquals`]), so selectors
//! that mean the same compare equal and print the same. Every requirement is checked when it
//! is built, so every [`Selector`] prints to a string that parses.
//!
//! # Caveats
//!
//! Keys and values are checked for the characters Kubernetes allows (letters, digits,
//! `-`, `_`, `.`, and `/` in keys), not for every length and prefix rule the API server
//! enforces. An empty selector matches every label map, as Kubernetes' empty
//! `LabelSelector` does; a *missing* selector (a `None` in a spec) matching nothing is the
//! caller's decision. Requirements keep the order they were written in.

#![warn(missing_docs)]

use std::collections::BTreeMap;
use std::fmt;

/// A label selector: every requirement must hold. The empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

impl Selector {
    /// Parses the string form: comma-separated `k=v`, `k==v`, `k!=v`, `k in (a,b)`,
    /// `k notin (a,b)`, `k` (exists) and `!k` (does not exist), with spaces allowed around
    /// keys, operators and values. The empty (or blank) string is the empty selector, which
    /// matches everything.
    ///
    /// # Errors
    ///
    /// An [`Error`] naming the selector and the [`Problem`] with the first requirement that
    /// does not parse: an empty requirement (`a,,b`, a trailing comma), an invalid key or
    /// value, or `in`/`notin` values not in parentheses.
    pub fn parse(input: &str) -> Result<Self, Error> {
        if input.trim().is_empty() {
            return Ok(Self::default());
        }
        split_top_level(input)
            .into_iter()
            .map(|term| parse_term(term.trim()))
            .collect::<Result<_, _>>()
            .map_err(|problem| Error::new(input, problem))
    }

    /// The requirements, in the order they were written.
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matches_with(|key| labels.get(key).map(String::as_str))
    }

    /// Whether the labels that `label` looks up (the value of a key, `None` when the key
    /// is absent) satisfy every requirement; for labels not held in a `BTreeMap`.
    pub fn matches_with<'a>(&self, label: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.requirements.iter().all(|r| r.matches_with(&label))
    }

    /// Whether the selector has no requirement (and so matches everything).
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }
}

impl FromIterator<Requirement> for Selector {
    /// The selector requiring all of `requirements`, in order.
    fn from_iter<I: IntoIterator<Item = Requirement>>(requirements: I) -> Self {
        Self {
            requirements: requirements.into_iter().collect(),
        }
    }
}

impl fmt::Display for Selector {
    /// The canonical string form, as [`Selector::parse`] reads it back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, requirement) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{requirement}")?;
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

/// One requirement on one label key.
///
/// Built by [`Selector::parse`], [`Requirement::equals`] and [`Requirement::expression`],
/// which check the key and the values; the variants are `#[non_exhaustive]`, so code
/// outside this crate can match on them (with `..`) but not build an unchecked one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Requirement {
    /// `key=value` (also `key==value` and `key in (value)`): the label is present with
    /// this value.
    #[non_exhaustive]
    Equals {
        /// The label key.
        key: String,
        /// The value the label must have.
        value: String,
    },
    /// `key!=value` (also `key notin (value)`): the label is absent or has another value.
    #[non_exhaustive]
    NotEquals {
        /// The label key.
        key: String,
        /// The value the label must not have.
        value: String,
    },
    /// `key in (a,b)`: the label is present with one of two or more values.
    #[non_exhaustive]
    In {
        /// The label key.
        key: String,
        /// The values allowed, two or more, in the order written.
        values: Vec<String>,
    },
    /// `key notin (a,b)`: the label is absent or has none of two or more values.
    #[non_exhaustive]
    NotIn {
        /// The label key.
        key: String,
        /// The values refused, two or more, in the order written.
        values: Vec<String>,
    },
    /// `key`: the label is present, with any value.
    #[non_exhaustive]
    Exists {
        /// The label key.
        key: String,
    },
    /// `!key`: the label is absent.
    #[non_exhaustive]
    DoesNotExist {
        /// The label key.
        key: String,
    },
}

impl Requirement {
    /// `key=value`, as one entry of a `LabelSelector`'s `matchLabels` requires.
    ///
    /// # Errors
    ///
    /// [`Problem::InvalidKey`] or [`Problem::InvalidValue`].
    pub fn equals(key: &str, value: &str) -> Result<Self, Problem> {
        Ok(Self::Equals {
            key: key_of(key)?,
            value: value_of(value)?,
        })
    }

    /// The requirement of one `matchExpressions` entry: `key`, `operator` (`In`, `NotIn`,
    /// `Exists` or `DoesNotExist`, spelled as the Kubernetes API spells them) and `values`.
    ///
    /// # Guarantees
    ///
    /// `In` or `NotIn` with a single value is [`Requirement::Equals`] or
    /// [`Requirement::NotEquals`], as the string form has it.
    ///
    /// # Errors
    ///
    /// Checked in this order: [`Problem::InvalidKey`], [`Problem::InvalidValue`],
    /// [`Problem::MissingValues`] for `In`/`NotIn` without values,
    /// [`Problem::UnexpectedValues`] for `Exists`/`DoesNotExist` with values, and
    /// [`Problem::UnknownOperator`] for any other operator.
    pub fn expression(key: &str, operator: &str, values: &[String]) -> Result<Self, Problem> {
        let key = key_of(key)?;
        let values = values
            .iter()
            .map(|v| value_of(v))
            .collect::<Result<Vec<_>, _>>()?;
        let operator_owned = || operator.to_owned();
        Ok(match operator {
            "In" | "NotIn" if values.is_empty() => {
                return Err(Problem::MissingValues {
                    operator: operator_owned(),
                    key,
                });
            }
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                return Err(Problem::UnexpectedValues {
                    operator: operator_owned(),
                    key,
                });
            }
            "In" => Self::set(key, values, false),
            "NotIn" => Self::set(key, values, true),
            "Exists" => Self::Exists { key },
            "DoesNotExist" => Self::DoesNotExist { key },
            _ => {
                return Err(Problem::UnknownOperator {
                    operator: operator_owned(),
                    key,
                });
            }
        })
    }

    /// `key in (values)` or, `negated`, `key notin (values)`; one value is `=` or `!=`.
    fn set(key: String, values: Vec<String>, negated: bool) -> Self {
        match (<[String; 1]>::try_from(values), negated) {
            (Ok([value]), false) => Self::Equals { key, value },
            (Ok([value]), true) => Self::NotEquals { key, value },
            (Err(values), false) => Self::In { key, values },
            (Err(values), true) => Self::NotIn { key, values },
        }
    }

    /// The label key the requirement is on.
    pub fn key(&self) -> &str {
        match self {
            Self::Equals { key, .. }
            | Self::NotEquals { key, .. }
            | Self::In { key, .. }
            | Self::NotIn { key, .. }
            | Self::Exists { key }
            | Self::DoesNotExist { key } => key,
        }
    }

    /// Whether the labels that `label` looks up satisfy this requirement.
    pub fn matches_with<'a>(&self, label: impl Fn(&str) -> Option<&'a str>) -> bool {
        let found = label(self.key());
        match self {
            Self::Equals { value, .. } => found == Some(value.as_str()),
            Self::NotEquals { value, .. } => found != Some(value.as_str()),
            Self::In { values, .. } => found.is_some_and(|l| values.iter().any(|v| v == l)),
            Self::NotIn { values, .. } => found.is_none_or(|l| values.iter().all(|v| v != l)),
            Self::Exists { .. } => found.is_some(),
            Self::DoesNotExist { .. } => found.is_none(),
        }
    }
}

impl fmt::Display for Requirement {
    /// The canonical string form of the requirement.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Equals { key, value } => write!(f, "{key}={value}"),
            Self::NotEquals { key, value } => write!(f, "{key}!={value}"),
            Self::In { key, values } => write!(f, "{key} in ({})", values.join(",")),
            Self::NotIn { key, values } => write!(f, "{key} notin ({})", values.join(",")),
            Self::Exists { key } => f.write_str(key),
            Self::DoesNotExist { key } => write!(f, "!{key}"),
        }
    }
}

/// Why a selector is not valid: names the selector and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    selector: String,
    problem: Problem,
}

impl Error {
    /// The error for `selector` (the string parsed, or a description of a structured
    /// selector) having `problem`.
    pub fn new(selector: impl Into<String>, problem: Problem) -> Self {
        Self {
            selector: selector.into(),
            problem,
        }
    }

    /// The selector that is not valid, as given to [`Error::new`].
    pub fn selector(&self) -> &str {
        &self.selector
    }

    /// What is wrong with it.
    pub fn problem(&self) -> &Problem {
        &self.problem
    }
}

impl fmt::Display for Error {
    /// `label selector "<selector>": <problem>`; the problem is part of the message, not
    /// a separate `source`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "label selector {:?}: {}", self.selector, self.problem)
    }
}

impl std::error::Error for Error {}

/// What is wrong with a requirement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// A blank requirement: two commas in a row, or a leading or trailing comma.
    EmptyRequirement,
    /// A key (given, trimmed) that is empty or has a character not allowed in a label key.
    InvalidKey(String),
    /// A value (given, trimmed) with a character not allowed in a label value.
    InvalidValue(String),
    /// An `in` or `notin` requirement (given whole) whose values are not in parentheses.
    UnparenthesizedValues(String),
    /// A `matchExpressions` `In` or `NotIn` without values.
    MissingValues {
        /// The operator, `In` or `NotIn`.
        operator: String,
        /// The label key.
        key: String,
    },
    /// A `matchExpressions` `Exists` or `DoesNotExist` with values.
    UnexpectedValues {
        /// The operator, `Exists` or `DoesNotExist`.
        operator: String,
        /// The label key.
        key: String,
    },
    /// A `matchExpressions` operator other than `In`, `NotIn`, `Exists`, `DoesNotExist`.
    UnknownOperator {
        /// The operator given.
        operator: String,
        /// The label key.
        key: String,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EmptyRequirement => f.write_str("empty requirement"),
            Self::InvalidKey(key) => write!(f, "{key:?} is not a valid label key"),
            Self::InvalidValue(value) => write!(f, "{value:?} is not a valid label value"),
            Self::UnparenthesizedValues(term) => {
                write!(f, "{term:?}: the values must be in parentheses")
            }
            Self::MissingValues { operator, key } => {
                write!(f, "{operator} on {key:?} needs at least one value")
            }
            Self::UnexpectedValues { operator, key } => {
                write!(f, "{operator} on {key:?} takes no values")
            }
            Self::UnknownOperator { operator, key } => write!(
                f,
                "unknown operator {operator:?} on {key:?} (In, NotIn, Exists, DoesNotExist)"
            ),
        }
    }
}

impl std::error::Error for Problem {}

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

/// One trimmed requirement of the string form.
fn parse_term(term: &str) -> Result<Requirement, Problem> {
    if term.is_empty() {
        return Err(Problem::EmptyRequirement);
    }
    if let Some(key) = term.strip_prefix('!') {
        return Ok(Requirement::DoesNotExist { key: key_of(key)? });
    }
    if let Some((key, value)) = term.split_once("!=") {
        return Ok(Requirement::NotEquals {
            key: key_of(key)?,
            value: value_of(value)?,
        });
    }
    if let Some((key, value)) = term.split_once("==").or_else(|| term.split_once('=')) {
        return Requirement::equals(key, value);
    }
    for (operator, negated) in [(" notin ", true), (" in ", false)] {
        if let Some((key, rest)) = term.split_once(operator) {
            let inner = rest
                .trim()
                .strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
                .ok_or_else(|| Problem::UnparenthesizedValues(term.to_owned()))?;
            let values = inner.split(',').map(value_of).collect::<Result<_, _>>()?;
            return Ok(Requirement::set(key_of(key)?, values, negated));
        }
    }
    Ok(Requirement::Exists { key: key_of(term)? })
}

fn key_of(raw: &str) -> Result<String, Problem> {
    let key = raw.trim();
    let valid = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if valid {
        Ok(key.to_owned())
    } else {
        Err(Problem::InvalidKey(key.to_owned()))
    }
}

fn value_of(raw: &str) -> Result<String, Problem> {
    let value = raw.trim();
    let valid = value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if valid {
        Ok(value.to_owned())
    } else {
        Err(Problem::InvalidValue(value.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn strings(values: &[&str]) -> Vec<String> {
        values.iter().map(|v| (*v).to_owned()).collect()
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
            ("tier in (back, edge)", false),
            ("missing in (x)", false),
            ("tier notin (front)", false),
            ("tier notin (back, edge)", true),
            ("missing notin (x)", true),
            ("app", true),
            ("legacy", false),
            ("!app", false),
            ("!legacy", true),
            ("app,!legacy", true),
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
    fn a_blank_selector_is_empty_and_matches_everything() {
        for blank in ["", "   "] {
            let selector = Selector::parse(blank).unwrap();
            assert!(selector.is_empty(), "{blank:?}");
            assert!(selector.matches(&labels(&[])), "{blank:?}");
            assert!(selector.matches(&labels(&[("a", "b")])), "{blank:?}");
        }
        assert!(!Selector::parse("a").unwrap().is_empty());
    }

    #[test]
    fn invalid_selectors_are_refused_naming_the_selector_and_the_problem() {
        let key = |k: &str| Problem::InvalidKey(k.into());
        let value = |v: &str| Problem::InvalidValue(v.into());
        let unparenthesized = |t: &str| Problem::UnparenthesizedValues(t.into());
        for (bad, problem) in [
            ("a,,b", Problem::EmptyRequirement),
            ("a,", Problem::EmptyRequirement),
            (", a", Problem::EmptyRequirement),
            ("=web", key("")),
            ("!", key("")),
            ("a b", key("a b")),
            ("a@b=c", key("a@b")),
            ("app=we b", value("we b")),
            ("app!=x/y", value("x/y")),
            ("app in (x, y z)", value("y z")),
            ("app in web", unparenthesized("app in web")),
            ("app in (x", unparenthesized("app in (x")),
            ("app notin x)", unparenthesized("app notin x)")),
        ] {
            let err = Selector::parse(bad).unwrap_err();
            assert_eq!(err.selector(), bad);
            assert_eq!(err.problem(), &problem, "{bad}");
            let message = err.to_string();
            assert!(
                message.starts_with(&format!("label selector {bad:?}: ")),
                "{message}"
            );
            assert!(message.ends_with(&problem.to_string()), "{message}");
        }
    }

    #[test]
    fn display_writes_the_canonical_form_which_parses_back_equal() {
        for (written, canonical) in [
            ("app == web", "app=web"),
            (" app=web , tier != db ", "app=web,tier!=db"),
            ("env in ( prod ,staging )", "env in (prod,staging)"),
            ("release notin (canary,beta)", "release notin (canary,beta)"),
            ("owner, ! legacy", "owner,!legacy"),
            ("a=,b!=", "a=,b!="),
            ("a in (,x)", "a in (,x)"),
            ("example.com/app=v1.2_3-x", "example.com/app=v1.2_3-x"),
        ] {
            let selector = Selector::parse(written).unwrap();
            assert_eq!(selector.to_string(), canonical, "{written}");
            assert_eq!(Selector::parse(canonical).unwrap(), selector, "{written}");
        }
    }

    #[test]
    fn a_one_value_set_is_the_same_requirement_as_equality() {
        let parse = |s: &str| Selector::parse(s).unwrap();
        assert_eq!(parse("env in (prod)"), parse("env=prod"));
        assert_eq!(parse("env in (prod)").to_string(), "env=prod");
        assert_eq!(parse("env notin (prod)"), parse("env!=prod"));
        assert_eq!(parse("env notin (prod)").to_string(), "env!=prod");
        assert_eq!(parse("env in ()"), parse("env="));
        assert_eq!(
            Requirement::expression("env", "In", &strings(&["prod"])),
            Requirement::equals("env", "prod")
        );
        assert!(matches!(
            parse("env in (prod)").requirements(),
            [Requirement::Equals { key, value, .. }] if key == "env" && value == "prod"
        ));
    }

    #[test]
    fn match_expressions_build_the_requirements_their_string_form_parses_to() {
        let built: Selector = [
            Requirement::equals("app", "web"),
            Requirement::expression("tier", "In", &strings(&["front", "edge"])),
            Requirement::expression("release", "NotIn", &strings(&["canary"])),
            Requirement::expression("track", "NotIn", &strings(&["a", "b"])),
            Requirement::expression("owner", "Exists", &[]),
            Requirement::expression("legacy", "DoesNotExist", &[]),
        ]
        .into_iter()
        .collect::<Result<_, _>>()
        .unwrap();
        let text = "app=web,tier in (front,edge),release!=canary,track notin (a,b),owner,!legacy";
        assert_eq!(built.to_string(), text);
        assert_eq!(Selector::parse(text).unwrap(), built);
        assert_eq!(
            built
                .requirements()
                .iter()
                .map(Requirement::key)
                .collect::<Vec<_>>(),
            ["app", "tier", "release", "track", "owner", "legacy"]
        );
    }

    #[test]
    fn a_malformed_match_expression_is_refused_with_the_problem() {
        let on_a = |operator: &str| (operator.to_owned(), "a".to_owned());
        let unknown = |op| {
            let (operator, key) = on_a(op);
            Problem::UnknownOperator { operator, key }
        };
        let missing = |op| {
            let (operator, key) = on_a(op);
            Problem::MissingValues { operator, key }
        };
        let unexpected = |op| {
            let (operator, key) = on_a(op);
            Problem::UnexpectedValues { operator, key }
        };
        for ((key, operator, values), problem, message) in [
            (
                ("a", "Equals", &["x"][..]),
                unknown("Equals"),
                "unknown operator \"Equals\" on \"a\" (In, NotIn, Exists, DoesNotExist)",
            ),
            (
                ("a", "In", &[]),
                missing("In"),
                "In on \"a\" needs at least one value",
            ),
            (
                ("a", "NotIn", &[]),
                missing("NotIn"),
                "NotIn on \"a\" needs at least one value",
            ),
            (
                ("a", "Exists", &["x"]),
                unexpected("Exists"),
                "Exists on \"a\" takes no values",
            ),
            (
                ("a", "DoesNotExist", &["x"]),
                unexpected("DoesNotExist"),
                "DoesNotExist on \"a\" takes no values",
            ),
            (
                ("bad key", "Bogus", &["bad value"]),
                Problem::InvalidKey("bad key".into()),
                "\"bad key\" is not a valid label key",
            ),
            (
                ("a", "Bogus", &["bad value"]),
                Problem::InvalidValue("bad value".into()),
                "\"bad value\" is not a valid label value",
            ),
        ] {
            let got = Requirement::expression(key, operator, &strings(values)).unwrap_err();
            assert_eq!(got, problem, "{key} {operator} {values:?}");
            assert_eq!(got.to_string(), message);
        }
        assert_eq!(
            Requirement::equals("a", "b c"),
            Err(Problem::InvalidValue("b c".into()))
        );
    }

    #[test]
    fn matches_with_reads_labels_through_the_lookup() {
        let selector = Selector::parse("app=web,!legacy,tier notin (db,cache)").unwrap();
        let lookup = |pairs: &'static [(&'static str, &'static str)]| {
            move |key: &str| pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
        };
        assert!(selector.matches_with(lookup(&[("app", "web"), ("tier", "front")])));
        assert!(!selector.matches_with(lookup(&[("app", "web"), ("tier", "db")])));
        assert!(!selector.matches_with(lookup(&[("app", "web"), ("legacy", "")])));
        assert!(!selector.matches_with(|_| None));
        assert!(Selector::default().matches_with(|_| None));
    }
}
