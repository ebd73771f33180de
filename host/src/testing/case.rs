//! The fixture case format of `rekon test`: input objects → expected output.

use serde::Deserialize;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Why a case file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file or directory could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The YAML does not describe a case.
    #[error("{path} is not a valid case: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The cause (with line and column).
        #[source]
        source: serde_yaml::Error,
    },
    /// A field parsed but makes no sense.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The directory holds no case.
    #[error("{path} holds no .yaml or .yml case")]
    Empty {
        /// The directory.
        path: PathBuf,
    },
}

pub use crate::contract::Export;

/// One case: what the plugin is given and what it must answer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Case {
    /// Name printed in reports; defaults to the file stem.
    #[serde(default)]
    pub name: Option<String>,
    /// A fixed clock (RFC 3339), for plugins that read the time.
    #[serde(default)]
    pub now: Option<String>,
    /// Plugin settings (a JSON object).
    #[serde(default)]
    pub settings: Option<Value>,
    /// Which export to call.
    #[serde(default)]
    pub call: Export,
    /// The primary object.
    pub primary: Value,
    /// Related objects passed in the request (and visible in the cache).
    #[serde(default)]
    pub related: Vec<Value>,
    /// Further objects visible only through the cache imports.
    #[serde(default)]
    pub cache: Vec<Value>,
    /// What the plugin must answer.
    #[serde(default)]
    pub expect: Expect,
}

/// Expectations; an absent key is not checked.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Expect {
    /// Mutations: same count and order, objects matched partially.
    #[serde(default)]
    pub mutations: Option<Vec<Value>>,
    /// Requeue-after in ms; `null` requires none.
    #[serde(default, deserialize_with = "present")]
    pub requeue_after_ms: Option<Option<u64>>,
    /// Events, partially matched, same count.
    #[serde(default)]
    pub events: Option<Vec<Value>>,
    /// Conditions, partially matched, same count.
    #[serde(default)]
    pub conditions: Option<Vec<Value>>,
    /// Whether the output asks for pruning.
    #[serde(default)]
    pub prune: Option<bool>,
    /// An error instead of an output: `{transient: "substring"}` or `{permanent: …}`,
    /// or `{fault: "substring"}` for a sandbox or output-check failure.
    #[serde(default, with = "serde_yaml::with::singleton_map")]
    pub error: Option<ExpectError>,
}

/// An expected failure.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub enum ExpectError {
    /// A transient guest error whose message contains this text.
    Transient(String),
    /// A permanent guest error whose message contains this text.
    Permanent(String),
    /// A sandbox or output-check failure whose message contains this text.
    Fault(String),
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<u64>>, D::Error> {
    Option::<u64>::deserialize(d).map(Some)
}

/// A case read from a file.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The case.
    pub case: Case,
    /// Its name (the `name` field or the file stem).
    pub name: String,
    /// The fixed clock in ms, if any.
    pub now_ms: Option<i64>,
    /// The file.
    pub path: PathBuf,
}

/// Reads one case file.
///
/// # Errors
/// [`Error`] naming the file, with serde's line and column for parse errors.
pub fn read(path: &Path) -> Result<Loaded, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text, path)
}

/// Parses case text; `path` names it in errors and gives the default name.
///
/// # Errors
/// See [`read`].
pub fn parse(text: &str, path: &Path) -> Result<Loaded, Error> {
    let case: Case = serde_yaml::from_str(text).map_err(|source| Error::Parse {
        path: path.to_owned(),
        source,
    })?;
    let invalid = |reason: String| Error::Invalid {
        path: path.to_owned(),
        reason,
    };
    for (what, obj) in std::iter::once(("primary", &case.primary))
        .chain(case.related.iter().map(|o| ("related", o)))
        .chain(case.cache.iter().map(|o| ("cache", o)))
    {
        for field in ["/apiVersion", "/kind", "/metadata/name"] {
            if obj.pointer(field).and_then(Value::as_str).is_none() {
                return Err(invalid(format!("a {what} object lacks {}", &field[1..])));
            }
        }
    }
    let now_ms = match &case.now {
        Some(t) => Some(
            t.parse::<jiff::Timestamp>()
                .map_err(|e| invalid(format!("now: {t:?} is not an RFC 3339 time: {e}")))?
                .as_millisecond(),
        ),
        None => None,
    };
    let name = case.name.clone().unwrap_or_else(|| {
        path.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    Ok(Loaded {
        case,
        name,
        now_ms,
        path: path.to_owned(),
    })
}

/// Reads every `.yaml`/`.yml` case in `dir`, sorted by file name.
///
/// # Errors
/// The first unreadable or invalid case, or [`Error::Empty`].
pub fn read_dir(dir: &Path) -> Result<Vec<Loaded>, Error> {
    let entries = std::fs::read_dir(dir).map_err(|source| Error::Read {
        path: dir.to_owned(),
        source,
    })?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    paths.sort();
    if paths.is_empty() {
        return Err(Error::Empty {
            path: dir.to_owned(),
        });
    }
    paths.iter().map(|p| read(p)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minimal_case_parses_with_defaults() {
        let c = parse(
            "primary: {apiVersion: v1, kind: ConfigMap, metadata: {name: a}}\nnow: 2026-01-01T00:00:00Z\nexpect: {requeueAfterMs: null}",
            Path::new("x/first.yaml"),
        )
        .unwrap();
        assert_eq!(c.name, "first");
        assert_eq!(c.case.call, Export::Reconcile);
        assert_eq!(c.now_ms, Some(1_767_225_600_000));
        assert_eq!(c.case.expect.requeue_after_ms, Some(None));
        assert!(c.case.expect.mutations.is_none());
    }

    #[test]
    fn an_expected_error_is_written_as_a_one_key_map() {
        let c = parse(
            "primary: {apiVersion: v1, kind: A, metadata: {name: a}}\nexpect: {error: {permanent: no image}}",
            Path::new("e.yaml"),
        )
        .unwrap();
        assert!(
            matches!(c.case.expect.error, Some(ExpectError::Permanent(ref m)) if m == "no image")
        );
    }

    #[test]
    fn unknown_keys_and_incomplete_objects_are_refused_naming_the_file() {
        let e = parse(
            "primary: {apiVersion: v1, kind: A, metadata: {name: a}}\nexpekt: {}",
            Path::new("bad.yaml"),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("bad.yaml") && e.to_string().contains("expekt"),
            "{e}"
        );
        let e = parse(
            "primary: {apiVersion: v1, metadata: {name: a}}",
            Path::new("k.yaml"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("lacks kind"), "{e}");
    }
}
