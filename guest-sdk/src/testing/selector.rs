//! Kubernetes label selectors in their string form, for the fake cache's `list`.

use serde_json::{Map, Value};

/// A parsed label selector: every requirement must hold.
#[derive(Debug)]
pub(crate) struct Selector(Vec<Requirement>);

#[derive(Debug)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

impl Selector {
    /// Parses `a=b,c!=d,e in (f,g),h notin (i),j,!k`.
    pub(crate) fn parse(s: &str) -> Result<Self, String> {
        split_top_level(s)
            .into_iter()
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .map(|r| {
                parse_requirement(r)
                    .ok_or_else(|| format!("cannot parse {r:?} in label selector {s:?}"))
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    /// Whether an object with these labels matches.
    pub(crate) fn matches(&self, labels: Option<&Map<String, Value>>) -> bool {
        let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => label(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => label(k) != Some(v.as_str()),
            Requirement::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Requirement::NotIn(k, vs) => label(k).is_none_or(|l| vs.iter().all(|v| v != l)),
            Requirement::Exists(k) => label(k).is_some(),
            Requirement::DoesNotExist(k) => label(k).is_none(),
        })
    }
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

fn parse_requirement(r: &str) -> Option<Requirement> {
    let key = |k: &str| {
        let k = k.trim();
        (!k.is_empty()
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c)))
        .then(|| k.to_owned())
    };
    if let Some(k) = r.strip_prefix('!') {
        return Some(Requirement::DoesNotExist(key(k)?));
    }
    if let Some((k, v)) = r.split_once("!=") {
        return Some(Requirement::NotEquals(key(k)?, v.trim().to_owned()));
    }
    if let Some((k, v)) = r.split_once("==").or_else(|| r.split_once('=')) {
        return Some(Requirement::Equals(key(k)?, v.trim().to_owned()));
    }
    for (op, set) in [(" notin ", false), (" in ", true)] {
        if let Some((k, vs)) = r.split_once(op) {
            let vs = vs.trim().strip_prefix('(')?.strip_suffix(')')?;
            let vs = vs.split(',').map(|v| v.trim().to_owned()).collect();
            return Some(if set {
                Requirement::In(key(k)?, vs)
            } else {
                Requirement::NotIn(key(k)?, vs)
            });
        }
    }
    Some(Requirement::Exists(key(r)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn matches(selector: &str, labels: Value) -> bool {
        Selector::parse(selector)
            .unwrap()
            .matches(labels.as_object())
    }

    #[test]
    fn every_operator_matches_as_in_kubernetes() {
        let labels = json!({"app": "web", "tier": "front"});
        assert!(matches("app=web", labels.clone()) && matches("app==web", labels.clone()));
        assert!(!matches("app=db", labels.clone()) && matches("app!=db", labels.clone()));
        assert!(
            matches("tier in (front, back)", labels.clone())
                && !matches("tier notin (front)", labels.clone())
        );
        assert!(matches("app,!legacy", labels.clone()) && !matches("legacy", labels.clone()));
        assert!(
            matches("missing notin (x)", labels.clone()) && matches("missing!=x", labels.clone())
        );
        assert!(matches("", labels.clone()) && !matches("app=web,tier=back", labels));
    }

    #[test]
    fn malformed_selectors_are_refused() {
        for bad in ["app in web", "=web", "a b", "app in (x"] {
            assert!(Selector::parse(bad).is_err(), "{bad}");
        }
    }
}
