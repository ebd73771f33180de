//! Decoding JSON into a plugin's types with errors an author can act on: the field path
//! (`spec.ports[1].port`) and serde's reason, without the line and column of JSON text
//! the author never saw.

use serde::de::DeserializeOwned;

/// Decodes `json` into `T`.
///
/// # Errors
///
/// The reason, prefixed with the path of the field it concerns when that is not the
/// top level: ``spec: missing field `image` ``, `spec.replicas: invalid type: string
/// "x", expected i32`.
pub(crate) fn from_str<T: DeserializeOwned>(json: &str) -> Result<T, String> {
    serde_json::from_str(json).map_err(|e| explain(json, &e))
}

/// serde's message without its position, prefixed with the field path at that position.
pub(crate) fn explain(json: &str, e: &serde_json::Error) -> String {
    let message = e.to_string();
    let position = format!(" at line {} column {}", e.line(), e.column());
    let reason = message.strip_suffix(&position).unwrap_or(&message);
    if e.line() == 0 {
        return reason.to_owned();
    }
    match path_at(json, e.line(), e.column()) {
        path if path.is_empty() => reason.to_owned(),
        path => format!("{path}: {reason}"),
    }
}

/// `Deployment` for `k8s_openapi::api::apps::v1::Deployment`, `Vec` for `Vec<T>`.
pub(crate) fn short_type_name<T: ?Sized>() -> &'static str {
    let full = std::any::type_name::<T>();
    let base = full.split('<').next().unwrap_or(full);
    base.rsplit("::").next().unwrap_or(base)
}

enum Frame {
    /// In an object: the current key, and whether the next string is a key.
    Object { key: Option<String>, at_key: bool },
    /// In an array: the current index.
    Array(usize),
}

/// The path (`spec.containers[0].image`) of the value being read at a 1-based line and
/// column of `json` (columns count bytes, as serde_json reports them).
fn path_at(json: &str, line: usize, column: usize) -> String {
    let line_start: usize = json
        .split_inclusive('\n')
        .take(line.saturating_sub(1))
        .map(str::len)
        .sum();
    let end = (line_start + column).min(json.len());
    let bytes = &json.as_bytes()[..end];
    let mut stack: Vec<Frame> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'{' => stack.push(Frame::Object {
                key: None,
                at_key: true,
            }),
            b'[' => stack.push(Frame::Array(0)),
            b'}' | b']' => {
                stack.pop();
            }
            b',' => match stack.last_mut() {
                Some(Frame::Object { at_key, .. }) => *at_key = true,
                Some(Frame::Array(index)) => *index += 1,
                None => {}
            },
            b':' => {
                if let Some(Frame::Object { at_key, .. }) = stack.last_mut() {
                    *at_key = false;
                }
            }
            b'"' => {
                let start = i + 1;
                i = start;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                if let Some(Frame::Object { key, at_key: true }) = stack.last_mut() {
                    let raw = json.get(start..i.min(bytes.len())).unwrap_or_default();
                    let unescaped = serde_json::from_str(&format!("\"{raw}\""));
                    *key = Some(unescaped.unwrap_or_else(|_| raw.to_owned()));
                }
            }
            _ => {}
        }
        i += 1;
    }
    let mut path = String::new();
    for frame in &stack {
        match frame {
            Frame::Object { key: Some(k), .. } => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
            }
            Frame::Object { key: None, .. } => {}
            Frame::Array(index) => path.push_str(&format!("[{index}]")),
        }
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct App {
        spec: Spec,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Spec {
        image: String,
        #[serde(default)]
        replicas: i32,
        #[serde(default)]
        ports: Vec<Port>,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Port {
        port: u16,
    }

    fn reason(json: &str) -> String {
        from_str::<App>(json).unwrap_err()
    }

    #[test]
    fn a_missing_field_is_named_with_the_object_that_lacks_it() {
        assert_eq!(
            reason(r#"{"metadata":{"name":"a"},"spec":{"replicas":2}}"#),
            "spec: missing field `image`"
        );
        assert_eq!(reason(r#"{"metadata":{}}"#), "missing field `spec`");
    }

    #[test]
    fn a_wrong_type_is_named_by_its_path_without_line_and_column() {
        let r = reason(r#"{"spec":{"image":"x","replicas":"three"}}"#);
        assert_eq!(
            r,
            r#"spec.replicas: invalid type: string "three", expected i32"#
        );
        let r = reason(r#"{"spec":{"image":"x","ports":[{"port":80},{"port":-1}]}}"#);
        assert!(
            r.starts_with("spec.ports[1].port: invalid value: integer `-1`"),
            "{r}"
        );
    }

    #[test]
    fn keys_with_escapes_commas_and_braces_in_strings_do_not_confuse_the_path() {
        let r = reason(r#"{"spec":{"image":"a,b}{\"]","replicas":{}}}"#);
        assert!(r.starts_with("spec.replicas: invalid type: map"), "{r}");
        let r = reason("{\n  \"spec\": {\n    \"image\": 1\n  }\n}");
        assert!(
            r.starts_with("spec.image: invalid type: integer `1`"),
            "{r}"
        );
    }

    #[test]
    fn short_type_names_drop_the_module_path() {
        assert_eq!(short_type_name::<App>(), "App");
        assert_eq!(short_type_name::<Vec<App>>(), "Vec");
        assert_eq!(short_type_name::<serde_json::Value>(), "Value");
    }
}
