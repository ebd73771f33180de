//! Partial matching of expected JSON against actual JSON, with a readable account of every
//! difference.
//!
//! Rules: an expected object matches if each of its keys matches the actual value at that
//! key (extra actual keys are fine); lists match element-wise and must have the same
//! length; scalars must be equal. Numbers compare by value (`3` equals `3.0`).

use serde_json::Value;

/// Compares `expected` ⊆ `actual`, pushing one line per difference onto `diffs`, each
/// naming the path (`mutations[0].apply.spec.replicas`).
pub fn subset(expected: &Value, actual: &Value, path: &str, diffs: &mut Vec<String>) {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (k, ev) in e {
                let p = join(path, k);
                match a.get(k) {
                    Some(av) => subset(ev, av, &p, diffs),
                    None if ev.is_null() => {}
                    None => diffs.push(format!("{p}: expected {}, but it is absent", short(ev))),
                }
            }
        }
        (Value::Array(e), Value::Array(a)) => {
            if e.len() != a.len() {
                diffs.push(format!(
                    "{path}: expected {} item(s), got {}",
                    e.len(),
                    a.len()
                ));
            }
            for (i, (ev, av)) in e.iter().zip(a).enumerate() {
                subset(ev, av, &format!("{path}[{i}]"), diffs);
            }
        }
        (Value::Number(e), Value::Number(a)) if e.as_f64() == a.as_f64() => {}
        (e, a) if e == a => {}
        (e, a) => diffs.push(format!("{path}: expected {}, got {}", short(e), short(a))),
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 120 {
        format!("{}…", &s[..s.floor_char_boundary(117)])
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn diffs(e: Value, a: Value) -> Vec<String> {
        let mut d = Vec::new();
        subset(&e, &a, "x", &mut d);
        d
    }

    #[test]
    fn extra_actual_keys_are_ignored_but_mismatches_are_named_by_path() {
        assert!(diffs(json!({"a": 1}), json!({"a": 1.0, "b": 2})).is_empty());
        assert_eq!(
            diffs(json!({"a": {"b": 3}}), json!({"a": {"b": 2}})),
            ["x.a.b: expected 3, got 2"]
        );
        assert_eq!(
            diffs(json!({"c": "v"}), json!({})),
            ["x.c: expected \"v\", but it is absent"]
        );
    }

    #[test]
    fn lists_match_element_wise_with_equal_length() {
        assert!(diffs(json!([{"a": 1}]), json!([{"a": 1, "b": 2}])).is_empty());
        assert_eq!(
            diffs(json!([1, 2]), json!([1])),
            ["x: expected 2 item(s), got 1"]
        );
    }
}
