//! Runs a compiled plugin in the real sandbox against fixture cases, as `rekon test` does,
//! so plugin authors and the host's own tests share one runner.
//!
//! ```no_run
//! use rekon_host::testing;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let plugin = testing::load(std::path::Path::new("webapp.wasm"))?;
//! let reports = testing::run_dir(&plugin, std::path::Path::new("plugins/webapp/cases"))?;
//! assert!(reports.iter().all(|r| r.passed()), "{}", testing::render(&reports));
//! # Ok(()) }
//! ```

pub mod case;
mod matcher;

pub use case::{Call, Case, Expect, ExpectError};

use crate::contract::{Gvk, KeyMapping, ObjectKey, Output, Request, kind_of};
use crate::plugin::{self, Artifacts, Fault, Loaded, Loader};
use crate::sandbox::{self, CacheView, Clock, LogLine, Sandbox};
use crate::selector::Selector;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// Why a plugin could not be tested at all.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The sandbox could not start.
    #[error(transparent)]
    Setup(#[from] sandbox::SetupError),
    /// The plugin was refused.
    #[error(transparent)]
    Refused(#[from] plugin::Refused),
    /// A case could not be read.
    #[error(transparent)]
    Case(#[from] case::Error),
}

/// Loads a plugin file with default sandbox settings and no artifact cache.
///
/// # Errors
/// [`Error::Setup`] or [`Error::Refused`].
pub fn load(path: &Path) -> Result<Loaded, Error> {
    let sandbox = Sandbox::new(sandbox::Config {
        pool_instances: 8,
        ..Default::default()
    })?;
    let loader = Loader::new(sandbox, Artifacts::none(), sandbox::Limits::default());
    Ok(loader.load_file(path)?)
}

/// The outcome of one case.
#[derive(Debug)]
pub struct Report {
    /// The case's name.
    pub name: String,
    /// Every difference between expected and actual; empty when the case passed.
    pub failures: Vec<String>,
    /// Side-by-side rendering of the differing sections (unified diff).
    pub diff: String,
    /// What the plugin logged.
    pub logs: Vec<LogLine>,
}

impl Report {
    /// Whether the case passed.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Runs every case in `dir`. A file that is not a valid case is a failed case named
/// after the file, with the reason; the others still run.
///
/// # Errors
/// [`Error::Case`] if the directory is unreadable or holds no case.
pub fn run_dir(plugin: &Loaded, dir: &Path) -> Result<Vec<Report>, Error> {
    let cases = case::read_dir(dir)?;
    Ok(cases
        .iter()
        .map(|c| match c {
            Ok(c) => run(plugin, c),
            Err(e) => invalid(e),
        })
        .collect())
}

/// The report of a file that is not a valid case.
fn invalid(e: &case::Error) -> Report {
    let path = match e {
        case::Error::Read { path, .. }
        | case::Error::Parse { path, .. }
        | case::Error::Invalid { path, .. }
        | case::Error::Empty { path } => path,
    };
    Report {
        name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        failures: vec![format!("not a valid case: {e}")],
        diff: String::new(),
        logs: Vec::new(),
    }
}

/// Runs one case.
pub fn run(plugin: &Loaded, c: &case::Loaded) -> Report {
    let case = &c.case;
    let Some(export) = case.call.export() else {
        return run_mapping(plugin, c);
    };
    let request = Request {
        primary: case.primary.to_string(),
        related: case.related.iter().map(Value::to_string).collect(),
        settings: case
            .settings
            .clone()
            .unwrap_or_else(|| json!({}))
            .to_string(),
    };
    let cache = Arc::new(FixtureCache::new(
        std::iter::once(&case.primary)
            .chain(&case.related)
            .chain(&case.cache),
    ));
    let clock = c.now_ms.map(Clock::Fixed).unwrap_or_default();
    let call = plugin.decide(export, &request, clock, cache);
    let mut report = Report {
        name: c.name.clone(),
        failures: Vec::new(),
        diff: String::new(),
        logs: call.logs,
    };
    compare(&case.expect, call.result, &mut report);
    report
}

/// Runs a mapping case: `map-to-primaries` on the watched object, with the cache.
fn run_mapping(plugin: &Loaded, c: &case::Loaded) -> Report {
    let case = &c.case;
    let mut report = Report {
        name: c.name.clone(),
        failures: Vec::new(),
        diff: String::new(),
        logs: Vec::new(),
    };
    let Some(object) = &case.object else {
        report
            .failures
            .push("a mapToPrimaries case needs `object`".into());
        return report;
    };
    let kind = kind_of(object);
    let custom = plugin
        .metadata
        .watches
        .iter()
        .any(|w| w.kind == kind && w.mapping == KeyMapping::Custom);
    if !custom {
        report.failures.push(format!(
            "the plugin does not watch {kind} with a custom mapping (Mapping::Custom), so the \
             host never calls map-to-primaries for it"
        ));
        return report;
    }
    let cache = Arc::new(FixtureCache::new(
        std::iter::once(object).chain(&case.cache),
    ));
    let call = plugin.map_to_primaries(&kind, &object.to_string(), cache);
    report.logs = call.logs;
    match (call.result, &case.expect.error) {
        (Ok(keys), None) => {
            let want = sorted(case.expect.primaries.iter().flatten().cloned());
            let got = sorted(keys.iter().map(ObjectKey::to_string));
            if want != got {
                report.failures.push(format!(
                    "primaries: expected [{}], got [{}]",
                    want.join(", "),
                    got.join(", ")
                ));
                report
                    .diff
                    .push_str(&unified("primaries", &json!(want), &json!(got)));
            }
        }
        (Ok(keys), Some(e)) => report.failures.push(format!(
            "expected an error ({e:?}), but the plugin mapped to {} key(s)",
            keys.len()
        )),
        (Err(fault), Some(ExpectError::Fault(w))) if fault.to_string().contains(w.as_str()) => {}
        (Err(fault), want) => report.failures.push(match want {
            Some(want) => format!("expected error {want:?}, got: {fault}"),
            None => format!("expected primaries, but the plugin {fault}"),
        }),
    }
    report
}

/// Keys sorted and deduplicated: the host reconciles each key once, in no set order.
fn sorted(keys: impl Iterator<Item = String>) -> Vec<String> {
    let mut keys: Vec<String> = keys.collect();
    keys.sort();
    keys.dedup();
    keys
}

fn compare(expect: &Expect, result: Result<Output, Fault>, report: &mut Report) {
    let output = match (result, &expect.error) {
        (Ok(out), None) => out,
        (Ok(_), Some(e)) => {
            report.failures.push(format!(
                "expected an error ({e:?}), but the plugin returned an output"
            ));
            return;
        }
        (Err(fault), None) => {
            report
                .failures
                .push(format!("expected an output, but the plugin {fault}"));
            return;
        }
        (Err(fault), Some(want)) => {
            let (ok, text) = match (&fault, want) {
                (
                    Fault::Guest(crate::contract::GuestError::Transient(m)),
                    ExpectError::Transient(w),
                )
                | (
                    Fault::Guest(crate::contract::GuestError::Permanent(m)),
                    ExpectError::Permanent(w),
                ) => (m.contains(w.as_str()), m.clone()),
                (Fault::Sandbox(_) | Fault::InvalidOutput(_), ExpectError::Fault(w)) => {
                    (fault.to_string().contains(w.as_str()), fault.to_string())
                }
                _ => (false, fault.to_string()),
            };
            if !ok {
                report
                    .failures
                    .push(format!("expected error {want:?}, got: {text}"));
            }
            return;
        }
    };
    let actual = serde_json::to_value(&output).unwrap_or(Value::Null);
    let sections: [(&str, Option<Value>); 5] = [
        ("mutations", expect.mutations.clone().map(Value::Array)),
        ("events", expect.events.clone().map(Value::Array)),
        ("conditions", expect.conditions.clone().map(Value::Array)),
        ("requeueAfterMs", expect.requeue_after_ms.map(|r| json!(r))),
        ("prune", expect.prune.map(Value::Bool)),
    ];
    for (key, want) in sections {
        let Some(want) = want else { continue };
        let got = actual.get(key).cloned().unwrap_or(Value::Null);
        let before = report.failures.len();
        if want.is_null() && !got.is_null() {
            report
                .failures
                .push(format!("{key}: expected none, got {got}"));
        } else {
            matcher::subset(&want, &got, key, &mut report.failures);
        }
        if report.failures.len() > before {
            report
                .diff
                .push_str(&unified(key, &want, &project(&got, &want)));
        }
    }
}

/// The parts of `actual` that `expected` talks about, so a diff shows only those.
fn project(actual: &Value, expected: &Value) -> Value {
    match (actual, expected) {
        (Value::Object(a), Value::Object(e)) => Value::Object(
            e.keys()
                .filter_map(|k| a.get(k).map(|av| (k.clone(), project(av, &e[k]))))
                .collect(),
        ),
        (Value::Array(a), Value::Array(e)) => Value::Array(
            a.iter()
                .enumerate()
                .map(|(i, av)| e.get(i).map_or_else(|| av.clone(), |ev| project(av, ev)))
                .collect(),
        ),
        _ => actual.clone(),
    }
}

fn unified(section: &str, expected: &Value, actual: &Value) -> String {
    let e = serde_yaml::to_string(expected).unwrap_or_default();
    let a = serde_yaml::to_string(actual).unwrap_or_default();
    similar::TextDiff::from_lines(&e, &a)
        .unified_diff()
        .context_radius(3)
        .header(&format!("expected {section}"), &format!("actual {section}"))
        .to_string()
}

/// Renders reports as `rekon test` prints them: one line per case, the differences of
/// failed cases, and a closing `N passed, M failed` line.
pub fn render(reports: &[Report]) -> String {
    let mut out = String::new();
    for r in reports {
        if r.passed() {
            out.push_str(&format!("ok   {}\n", r.name));
            continue;
        }
        out.push_str(&format!("FAIL {}\n", r.name));
        for f in &r.failures {
            out.push_str(&format!("     {f}\n"));
        }
        for line in r.diff.lines() {
            out.push_str(&format!("     {line}\n"));
        }
        for l in r.logs.iter().filter(|l| l.level <= tracing::Level::WARN) {
            out.push_str(&format!("     plugin {}: {}\n", l.level, l.message));
        }
    }
    let passed = reports.iter().filter(|r| r.passed()).count();
    out.push_str(&format!(
        "{passed} passed, {} failed\n",
        reports.len() - passed
    ));
    out
}

/// A cache made of fixture objects.
#[derive(Debug, Default)]
pub struct FixtureCache {
    objects: Vec<Fixture>,
}

/// One fixture object, indexed by what the cache imports filter on.
#[derive(Debug)]
struct Fixture {
    kind: Gvk,
    namespace: Option<String>,
    name: String,
    labels: BTreeMap<String, String>,
    json: String,
}

impl FixtureCache {
    /// A cache holding `objects` (each needs apiVersion, kind and metadata.name).
    pub fn new<'a>(objects: impl IntoIterator<Item = &'a Value>) -> Self {
        let objects = objects
            .into_iter()
            .map(|o| {
                let s = |p: &str| {
                    o.pointer(p)
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned()
                };
                let labels = o
                    .pointer("/metadata/labels")
                    .and_then(Value::as_object)
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                            .collect()
                    })
                    .unwrap_or_default();
                let ns = o
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                Fixture {
                    kind: Gvk::from_api_version(&s("/apiVersion"), &s("/kind")),
                    namespace: ns,
                    name: s("/metadata/name"),
                    labels,
                    json: o.to_string(),
                }
            })
            .collect();
        Self { objects }
    }
}

impl CacheView for FixtureCache {
    fn get(&self, kind: &Gvk, namespace: Option<&str>, name: &str) -> Option<String> {
        self.objects
            .iter()
            .find(|o| o.kind == *kind && o.namespace.as_deref() == namespace && o.name == name)
            .map(|o| o.json.clone())
    }

    fn list(&self, kind: &Gvk, namespace: Option<&str>, selector: &Selector) -> Vec<String> {
        self.objects
            .iter()
            .filter(|o| {
                o.kind == *kind
                    && (namespace.is_none() || o.namespace.as_deref() == namespace)
                    && selector.matches(&o.labels)
            })
            .map(|o| o.json.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fixture_cache_filters_by_kind_namespace_and_labels() {
        let objs = [
            json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"a","namespace":"x","labels":{"app":"web"}}}),
            json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"b","namespace":"y"}}),
            json!({"apiVersion":"v1","kind":"Secret","metadata":{"name":"a","namespace":"x"}}),
        ];
        let cache = FixtureCache::new(&objs);
        let cm = Gvk::new("", "v1", "ConfigMap");
        assert!(cache.get(&cm, Some("x"), "a").is_some());
        assert!(cache.get(&cm, Some("y"), "a").is_none());
        assert_eq!(cache.list(&cm, None, &Selector::default()).len(), 2);
        assert_eq!(
            cache
                .list(&cm, None, &Selector::parse("app=web").unwrap())
                .len(),
            1
        );
        assert_eq!(cache.list(&cm, Some("y"), &Selector::default()).len(), 1);
    }

    #[test]
    fn a_diff_shows_only_the_fields_the_case_names() {
        let actual = json!([{"apply": {"kind": "Deployment", "spec": {"replicas": 3, "x": 1}}}]);
        let expected = json!([{"apply": {"spec": {"replicas": 5}}}]);
        let diff = unified("mutations", &expected, &project(&actual, &expected));
        assert!(
            diff.contains("-      replicas: 5") && diff.contains("+      replicas: 3"),
            "{diff}"
        );
        assert!(!diff.contains("Deployment"), "{diff}");
    }
}
