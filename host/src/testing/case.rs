//! The fixture case format of `rekon test`: input objects → expected output, or, for a
//! mapping case, a watched object → the primary keys it maps to.
//!
//! `docs/plugin-guide.md` ("Case file reference") documents every field; a unit test
//! compares its table with the fields this parser accepts ([`fields`]).

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

/// Which export a case calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub enum Call {
    /// `reconcile` with the primary.
    #[default]
    Reconcile,
    /// `finalize` with the primary.
    Finalize,
    /// `map-to-primaries` with the watched `object`.
    MapToPrimaries,
}

impl Call {
    /// The decision export, or `None` for [`Call::MapToPrimaries`].
    pub fn export(self) -> Option<Export> {
        match self {
            Call::Reconcile => Some(Export::Reconcile),
            Call::Finalize => Some(Export::Finalize),
            Call::MapToPrimaries => None,
        }
    }
}

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
    pub call: Call,
    /// The primary object (`null` in a mapping case, which has none).
    #[serde(default)]
    pub primary: Value,
    /// A mapping case's watched object, handed to `map-to-primaries`.
    #[serde(default)]
    pub object: Option<Value>,
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
    /// A mapping case's primary keys, `namespace/name` (or `name` when cluster-scoped),
    /// in any order.
    #[serde(default)]
    pub primaries: Option<Vec<String>>,
}

impl Expect {
    /// The keys set, which only a reconcile or finalize case may use.
    fn decision_keys(&self) -> Vec<&'static str> {
        let mut keys = Vec::new();
        for (key, set) in [
            ("mutations", self.mutations.is_some()),
            ("requeueAfterMs", self.requeue_after_ms.is_some()),
            ("events", self.events.is_some()),
            ("conditions", self.conditions.is_some()),
            ("prune", self.prune.is_some()),
        ] {
            if set {
                keys.push(key);
            }
        }
        keys
    }
}

/// The keys the parser accepts: of a case (`""`), of `expect` (`"expect"`) or of
/// `expect.error` (`"expect.error"`), in declaration order; what the reference in
/// `docs/plugin-guide.md` is checked against. Read from the parser itself (serde's
/// "expected one of" list), so it cannot drift from it.
///
/// # Panics
/// On another `of`, or if serde stops naming the expected fields (a unit test catches
/// it).
pub fn fields(of: &str) -> Vec<String> {
    let probe = "zz-no-such-field: 0\n";
    let err = match of {
        "" => serde_yaml::from_str::<Case>(probe).map(drop),
        "expect" => serde_yaml::from_str::<Expect>(probe).map(drop),
        "expect.error" => serde_yaml::from_str::<ExpectError>("zz-no-such-field\n").map(drop),
        "call" => serde_yaml::from_str::<Call>("zz-no-such-field\n").map(drop),
        _ => panic!("no case fields of {of:?}"),
    }
    .expect_err("an unknown key is refused")
    .to_string();
    let list = err
        .split_once("expected one of ")
        .or_else(|| err.split_once("expected "))
        .map(|(_, rest)| rest)
        .unwrap_or_else(|| panic!("serde did not list the expected fields: {err}"));
    list.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
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
    check_shape(&case).map_err(invalid)?;
    let objects = std::iter::once(("primary", &case.primary))
        .filter(|(_, o)| !o.is_null())
        .chain(case.object.iter().map(|o| ("object", o)))
        .chain(case.related.iter().map(|o| ("related", o)))
        .chain(case.cache.iter().map(|o| ("cache", o)));
    for (what, obj) in objects {
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

/// Which keys go with which call: a reconcile or finalize case has a `primary` and
/// expects an output or an error; a mapping case has an `object` and expects
/// `primaries` (or a `fault`).
fn check_shape(case: &Case) -> Result<(), String> {
    let e = &case.expect;
    if case.call == Call::MapToPrimaries {
        let mut stray = Vec::new();
        for (key, set) in [
            ("primary", !case.primary.is_null()),
            ("related", !case.related.is_empty()),
            ("settings", case.settings.is_some()),
            ("now", case.now.is_some()),
        ] {
            if set {
                stray.push(key);
            }
        }
        stray.extend(e.decision_keys());
        if !stray.is_empty() {
            return Err(format!(
                "a mapToPrimaries case takes `object`, `cache` and `expect.primaries` (or \
                 `expect.error.fault`); it cannot have {}",
                stray.join(", ")
            ));
        }
        if case.object.is_none() {
            return Err("a mapToPrimaries case needs `object`, the watched object".into());
        }
        match (&e.primaries, &e.error) {
            (None, None) => {
                return Err("a mapToPrimaries case needs `expect.primaries` (a list, \
                            possibly empty)"
                    .into());
            }
            (_, Some(ExpectError::Transient(_) | ExpectError::Permanent(_))) => {
                return Err("map-to-primaries cannot return a guest error: expect \
                            `primaries` or `error: { fault: … }`"
                    .into());
            }
            _ => {}
        }
        return Ok(());
    }
    if case.primary.is_null() {
        return Err(format!(
            "missing `primary` (a {} case reconciles one; only a mapToPrimaries case has none)",
            if case.call == Call::Finalize {
                "finalize"
            } else {
                "reconcile"
            }
        ));
    }
    if case.object.is_some() {
        return Err("`object` is for a mapToPrimaries case (`call: mapToPrimaries`)".into());
    }
    if e.primaries.is_some() {
        return Err(
            "`expect.primaries` is for a mapToPrimaries case (`call: mapToPrimaries`)".into(),
        );
    }
    Ok(())
}

/// Reads every `.yaml`/`.yml` case in `dir`, sorted by file name: each a case or why
/// that file is not one.
///
/// # Errors
/// The directory cannot be read, or holds no case ([`Error::Empty`]).
pub fn read_dir(dir: &Path) -> Result<Vec<Result<Loaded, Error>>, Error> {
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
    Ok(paths.iter().map(|p| read(p)).collect())
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
        assert_eq!(c.case.call, Call::Reconcile);
        assert_eq!(c.case.call.export(), Some(Export::Reconcile));
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

    #[test]
    fn a_mapping_case_has_an_object_and_expects_primaries() {
        let c = parse(
            "call: mapToPrimaries\nobject: {apiVersion: v1, kind: ConfigMap, metadata: {name: a, namespace: x}}\nexpect: {primaries: [x/web]}",
            Path::new("m.yaml"),
        )
        .unwrap();
        assert_eq!(c.case.call, Call::MapToPrimaries);
        assert_eq!(c.case.call.export(), None);
        assert!(c.case.primary.is_null());
        assert_eq!(c.case.expect.primaries, Some(vec!["x/web".to_owned()]));
    }

    #[test]
    fn a_case_mixing_mapping_and_reconcile_keys_is_refused_saying_which() {
        let obj = "{apiVersion: v1, kind: ConfigMap, metadata: {name: a}}";
        for (text, reason) in [
            (
                format!(
                    "call: mapToPrimaries\nobject: {obj}\nprimary: {obj}\nexpect: {{primaries: []}}"
                ),
                "cannot have primary",
            ),
            (
                format!(
                    "call: mapToPrimaries\nobject: {obj}\nexpect: {{primaries: [], prune: true}}"
                ),
                "cannot have prune",
            ),
            (
                "call: mapToPrimaries\nexpect: {primaries: []}".to_owned(),
                "needs `object`",
            ),
            (
                format!("call: mapToPrimaries\nobject: {obj}"),
                "needs `expect.primaries`",
            ),
            (
                format!("call: mapToPrimaries\nobject: {obj}\nexpect: {{error: {{permanent: x}}}}"),
                "cannot return a guest error",
            ),
            (format!("object: {obj}"), "missing `primary`"),
            (
                format!("primary: {obj}\nobject: {obj}"),
                "`object` is for a mapToPrimaries case",
            ),
            (
                format!("primary: {obj}\nexpect: {{primaries: []}}"),
                "`expect.primaries` is for",
            ),
            (
                format!("call: reconcil\nprimary: {obj}"),
                "unknown variant `reconcil`",
            ),
        ] {
            let e = parse(&text, Path::new("mixed.yaml")).unwrap_err();
            assert!(
                e.to_string().contains("mixed.yaml") && e.to_string().contains(reason),
                "{text}: {e}"
            );
        }
    }

    #[test]
    fn the_parser_names_its_fields() {
        assert_eq!(
            fields(""),
            [
                "name", "now", "settings", "call", "primary", "object", "related", "cache",
                "expect"
            ]
        );
        assert_eq!(
            fields("expect"),
            [
                "mutations",
                "requeueAfterMs",
                "events",
                "conditions",
                "prune",
                "error",
                "primaries"
            ]
        );
        assert_eq!(fields("expect.error"), ["transient", "permanent", "fault"]);
        assert_eq!(fields("call"), ["reconcile", "finalize", "mapToPrimaries"]);
    }

    #[test]
    fn one_invalid_file_does_not_hide_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let good = "primary: {apiVersion: v1, kind: A, metadata: {name: a}}";
        std::fs::write(dir.path().join("01-good.yaml"), good).unwrap();
        std::fs::write(dir.path().join("02-bad.yaml"), "primary: [").unwrap();
        std::fs::write(dir.path().join("03-good.yml"), good).unwrap();
        let read = read_dir(dir.path()).unwrap();
        assert_eq!(read.len(), 3);
        assert!(read[0].is_ok() && read[2].is_ok());
        let e = read[1].as_ref().unwrap_err();
        assert!(e.to_string().contains("02-bad.yaml"), "{e}");
    }

    /// The plugin guide's "Case file reference": (key, meaning) per table row.
    fn reference() -> Vec<(String, String)> {
        let guide = include_str!("../../../docs/plugin-guide.md");
        let section = guide
            .split_once("### Case file reference\n")
            .expect("docs/plugin-guide.md has a \"Case file reference\" section")
            .1;
        let section = section.split("\n#").next().unwrap_or_default();
        section
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| {
                let (key, rest) = l.split_once("` |")?;
                Some((key.to_owned(), rest.trim_end_matches('|').trim().to_owned()))
            })
            .collect()
    }

    /// The documented keys under `prefix` (`""`: top level), one level deep.
    fn documented(prefix: &str) -> Vec<String> {
        reference()
            .into_iter()
            .filter_map(|(key, _)| {
                let rest = if prefix.is_empty() {
                    Some(key.as_str())
                } else {
                    key.strip_prefix(prefix)?.strip_prefix('.')
                };
                rest.filter(|r| !r.contains('.')).map(str::to_owned)
            })
            .collect()
    }

    /// The code spans of the documented meaning of `key`.
    fn spans_of(key: &str) -> Vec<String> {
        let (_, meaning) = reference()
            .into_iter()
            .find(|(k, _)| k == key)
            .unwrap_or_else(|| panic!("the case file reference has no `{key}` row"));
        meaning
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn the_case_file_reference_documents_exactly_the_parsers_fields() {
        for of in ["", "expect", "expect.error"] {
            let mut doc = documented(of);
            let mut parser = fields(of);
            doc.sort();
            parser.sort();
            assert_eq!(
                doc, parser,
                "docs/plugin-guide.md \"Case file reference\" rows for {of:?} vs the parser's fields"
            );
        }
        let calls = spans_of("call");
        for call in fields("call") {
            assert!(
                calls.contains(&call),
                "the `call` row does not name {call:?}: {calls:?}"
            );
        }
        // Every mutation verb the output can hold, as the `expect.mutations` row names it.
        let err = serde_json::from_str::<crate::contract::Mutation>(r#"{"zz": 0}"#)
            .unwrap_err()
            .to_string();
        let verbs: Vec<&str> = err.split('`').skip(3).step_by(2).collect();
        assert!(verbs.contains(&"delete"), "{err}");
        let mutations = spans_of("expect.mutations");
        for verb in verbs {
            assert!(
                mutations.iter().any(|s| s == verb),
                "the `expect.mutations` row does not name {verb:?}: {mutations:?}"
            );
        }
    }
}
