//! A fake host behind the SDK's host calls in native tests: [`FakeHost`].

use std::cell::RefCell;
use std::rc::Rc;

use serde_json::Value;

use crate::log::Level;
use crate::object::IntoObject;
use crate::object::meta_str;
use crate::selector::Selector;
use crate::sys;
use crate::{Gvk, Metadata, Plugin, clock};

/// A fake of the host's imports for native tests: an object cache for
/// [`cache`](crate::cache), a clock for [`clock`](crate::clock), and a log that captures
/// [`log`](mod@crate::log) lines.
///
/// ```no_run
/// use rekon_sdk::testing::{self, FakeHost};
/// use rekon_sdk::k8s_openapi::api::core::v1::Secret;
/// # struct MyPlugin;
/// # impl rekon_sdk::Plugin for MyPlugin {
/// #   fn metadata() -> rekon_sdk::Metadata { rekon_sdk::Metadata::new::<Secret>("x", "1") }
/// #   fn reconcile(_: rekon_sdk::Request) -> Result<rekon_sdk::Output, rekon_sdk::Error> { Ok(Default::default()) }
/// # }
/// use rekon_sdk::Plugin;
///
/// let primary = testing::obj("v1", "ConfigMap", "web").ns("default");
/// let host = FakeHost::for_plugin::<MyPlugin>()
///     .with(&testing::object::<Secret>("db").ns("default"))
///     .now("2026-01-01T00:00:00Z");
/// let out = host.run(|| MyPlugin::reconcile(testing::request(&primary))).unwrap();
/// assert!(host.logs().iter().all(|line| line.level < rekon_sdk::log::Level::Error));
/// ```
///
/// A `FakeHost` is a handle: clones share the same cache, clock and log. It is installed
/// per thread, for the duration of [`run`](Self::run) or while the guard of
/// [`install`](Self::install) lives. With none installed, host calls see an empty cache,
/// the system clock, and log to stderr.
#[derive(Clone, Debug, Default)]
pub struct FakeHost {
    state: Rc<RefCell<State>>,
}

#[derive(Debug, Default)]
struct State {
    objects: Vec<Value>,
    now_ms: Option<i64>,
    logs: Vec<LogLine>,
    declared: Option<Metadata>,
}

/// One captured log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    /// Severity.
    pub level: Level,
    /// Message.
    pub message: String,
    /// Key/value fields.
    pub fields: Vec<(String, String)>,
}

impl LogLine {
    /// The value of field `key`, if the line has it.
    pub fn field(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

thread_local! {
    static CURRENT: RefCell<Option<FakeHost>> = const { RefCell::new(None) };
}

impl FakeHost {
    /// An empty cache that allows every kind, the system clock, an empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// A fake host that refuses reads of kinds `P` did not declare, as the real host
    /// does.
    pub fn for_plugin<P: Plugin + ?Sized>() -> Self {
        Self::new().declared(P::metadata())
    }

    /// Refuses reads of kinds not declared in `metadata` (primary, watched, `reads`) with
    /// [`cache::Error::UndeclaredKind`](crate::cache::Error::UndeclaredKind).
    #[must_use]
    pub fn declared(self, metadata: Metadata) -> Self {
        self.state.borrow_mut().declared = Some(metadata);
        self
    }

    /// Adds an object to the cache (replacing one of the same kind, namespace and name).
    ///
    /// # Panics
    ///
    /// If the object does not serialise to a Kubernetes object: a broken fixture.
    #[must_use]
    pub fn with(self, object: impl IntoObject) -> Self {
        let value = object
            .into_object()
            .unwrap_or_else(|e| panic!("FakeHost::with: {e}"));
        {
            let mut state = self.state.borrow_mut();
            state.objects.retain(|o| !same_object(o, &value));
            state.objects.push(value);
        }
        self
    }

    /// Fixes the clock at `ms` milliseconds since the Unix epoch.
    #[must_use]
    pub fn now_ms(self, ms: i64) -> Self {
        self.state.borrow_mut().now_ms = Some(ms);
        self
    }

    /// Fixes the clock at an RFC 3339 time.
    ///
    /// # Panics
    ///
    /// If `rfc3339` is not RFC 3339.
    #[must_use]
    pub fn now(self, rfc3339: &str) -> Self {
        let ms = clock::parse_rfc3339(rfc3339)
            .unwrap_or_else(|| panic!("FakeHost::now: {rfc3339:?} is not RFC 3339"));
        self.now_ms(ms)
    }

    /// Runs `f` with this fake installed on the current thread, then restores whatever
    /// was installed before (also when `f` panics).
    pub fn run<R>(&self, f: impl FnOnce() -> R) -> R {
        let _guard = self.install();
        f()
    }

    /// Installs this fake on the current thread until the guard is dropped.
    #[must_use = "the fake is uninstalled when the guard is dropped"]
    pub fn install(&self) -> Installed {
        let previous = CURRENT.with(|c| c.replace(Some(self.clone())));
        Installed { previous }
    }

    /// The log lines captured so far.
    pub fn logs(&self) -> Vec<LogLine> {
        self.state.borrow().logs.clone()
    }

    /// Whether a captured log line's message contains `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        self.state
            .borrow()
            .logs
            .iter()
            .any(|l| l.message.contains(needle))
    }
}

/// Keeps a [`FakeHost`] installed on the current thread; restores the previous one on
/// drop.
#[derive(Debug)]
pub struct Installed {
    previous: Option<FakeHost>,
}

impl Drop for Installed {
    fn drop(&mut self) {
        let previous = self.previous.take();
        CURRENT.with(|c| *c.borrow_mut() = previous);
    }
}

fn current() -> Option<FakeHost> {
    CURRENT.with(|c| c.borrow().clone())
}

fn same_object(a: &Value, b: &Value) -> bool {
    a["apiVersion"] == b["apiVersion"]
        && a["kind"] == b["kind"]
        && meta_str(a, "namespace") == meta_str(b, "namespace")
        && meta_str(a, "name") == meta_str(b, "name")
}

impl State {
    fn check_declared(&self, kind: &Gvk) -> Result<(), sys::CacheError> {
        match &self.declared {
            Some(m) if !m.may_read(kind) => Err(sys::CacheError::UndeclaredKind(format!(
                "{kind} is not among the kinds plugin {} declared",
                m.name
            ))),
            _ => Ok(()),
        }
    }

    fn of_kind<'a>(
        &'a self,
        kind: &'a Gvk,
        namespace: Option<&'a str>,
    ) -> impl Iterator<Item = &'a Value> + 'a {
        self.objects.iter().filter(move |o| {
            kind.matches(
                o["apiVersion"].as_str().unwrap_or_default(),
                o["kind"].as_str().unwrap_or_default(),
            ) && (namespace.is_none() || meta_str(o, "namespace") == namespace)
        })
    }
}

/// The port to the host on native targets: whichever [`FakeHost`] is installed on the
/// current thread, or none (an empty cache, the system clock, logs to stderr).
pub(crate) struct Current;

impl sys::Host for Current {
    fn log(&self, level: sys::Level, message: &str, fields: &[(String, String)]) {
        log(Level::from_wire(level), message, fields);
    }

    fn get(
        &self,
        kind: &sys::Gvk,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<String>, sys::CacheError> {
        get(&gvk(kind), namespace, name)
    }

    fn list(
        &self,
        kind: &sys::Gvk,
        namespace: Option<&str>,
        selector: Option<&str>,
    ) -> Result<Vec<String>, sys::CacheError> {
        list(&gvk(kind), namespace, selector)
    }

    fn now_ms(&self) -> i64 {
        now_ms()
    }
}

fn gvk(kind: &sys::Gvk) -> Gvk {
    Gvk::new(&kind.group, &kind.version, &kind.kind)
}

fn log(level: Level, message: &str, fields: &[(String, String)]) {
    let line = LogLine {
        level,
        message: message.to_owned(),
        fields: fields.to_vec(),
    };
    match current() {
        Some(host) => host.state.borrow_mut().logs.push(line),
        None => {
            let fields: String = line
                .fields
                .iter()
                .map(|(k, v)| format!(" {k}={v}"))
                .collect();
            eprintln!("[rekon {level}] {message}{fields}");
        }
    }
}

fn get(kind: &Gvk, namespace: Option<&str>, name: &str) -> Result<Option<String>, sys::CacheError> {
    let Some(host) = current() else {
        return Ok(None);
    };
    let state = host.state.borrow();
    state.check_declared(kind)?;
    let found = state
        .of_kind(kind, None)
        .find(|o| meta_str(o, "namespace") == namespace && meta_str(o, "name") == Some(name));
    Ok(found.map(Value::to_string))
}

fn list(
    kind: &Gvk,
    namespace: Option<&str>,
    selector: Option<&str>,
) -> Result<Vec<String>, sys::CacheError> {
    let selector = selector
        .map(Selector::parse)
        .transpose()
        .map_err(|e| sys::CacheError::BadSelector(e.to_string()))?;
    let Some(host) = current() else {
        return Ok(Vec::new());
    };
    let state = host.state.borrow();
    state.check_declared(kind)?;
    Ok(state
        .of_kind(kind, namespace)
        .filter(|o| {
            selector
                .as_ref()
                .is_none_or(|s| s.matches_with(|key| o["metadata"]["labels"][key].as_str()))
        })
        .map(Value::to_string)
        .collect())
}

fn now_ms() -> i64 {
    current()
        .and_then(|h| h.state.borrow().now_ms)
        .unwrap_or_else(|| {
            let since_epoch = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache;
    use crate::testing::{obj, object};
    use k8s_openapi::api::core::v1::{ConfigMap, Secret};

    struct ReadsConfigMaps;
    impl Plugin for ReadsConfigMaps {
        fn metadata() -> Metadata {
            Metadata::new::<ConfigMap>("reader", "1")
        }
        fn reconcile(_: crate::Request) -> Result<crate::Output, crate::Error> {
            Ok(crate::Output::new())
        }
    }

    #[test]
    fn get_and_list_see_only_the_installed_fake() {
        let host = FakeHost::new()
            .with(object::<ConfigMap>("a").ns("one").label("app", "web"))
            .with(object::<ConfigMap>("b").ns("one").label("app", "db"))
            .with(object::<ConfigMap>("a").ns("two").label("app", "web"));
        assert_eq!(
            cache::get::<ConfigMap>(Some("one"), "a").unwrap(),
            None,
            "not installed yet"
        );
        host.run(|| {
            let a = cache::get::<ConfigMap>(Some("two"), "a").unwrap().unwrap();
            assert_eq!(a.metadata.namespace.as_deref(), Some("two"));
            assert!(cache::get::<ConfigMap>(None, "a").unwrap().is_none());
            assert_eq!(cache::list::<ConfigMap>(None, None).unwrap().len(), 3);
            assert_eq!(
                cache::list::<ConfigMap>(Some("one"), Some("app=web"))
                    .unwrap()
                    .len(),
                1
            );
            assert_eq!(
                cache::list::<ConfigMap>(None, Some("app in (web, db),app!=db"))
                    .unwrap()
                    .len(),
                2
            );
            assert!(matches!(
                cache::list::<ConfigMap>(None, Some("app in web")),
                Err(cache::Error::BadSelector(_))
            ));
            assert!(cache::list::<Secret>(None, None).unwrap().is_empty());
        });
    }

    #[test]
    fn a_declared_fake_refuses_undeclared_kinds() {
        let host = FakeHost::for_plugin::<ReadsConfigMaps>().with(object::<Secret>("s").ns("x"));
        let err = host
            .run(|| cache::get::<Secret>(Some("x"), "s"))
            .unwrap_err();
        assert!(
            matches!(&err, cache::Error::UndeclaredKind(m) if m.contains("v1 Secret")),
            "{err}"
        );
        assert!(host.run(|| cache::get::<ConfigMap>(Some("x"), "s")).is_ok());
    }

    #[test]
    fn a_cached_object_that_does_not_fit_its_type_is_an_invalid_error() {
        let host = FakeHost::new().with(
            obj("v1", "ConfigMap", "bad")
                .ns("x")
                .field("data", serde_json::json!([1])),
        );
        let err = host
            .run(|| cache::get::<ConfigMap>(Some("x"), "bad"))
            .unwrap_err();
        assert!(
            matches!(&err, cache::Error::Invalid { name, namespace: Some(ns), .. } if name == "bad" && ns == "x"),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "cached ConfigMap x/bad does not fit its type: data: invalid type: sequence, expected a map"
        );
    }

    #[test]
    fn logs_and_clock_go_to_the_fake_and_nesting_restores_the_outer_one() {
        let outer = FakeHost::new().now("2026-01-01T00:00:00Z");
        let inner = FakeHost::new().now_ms(5);
        outer.run(|| {
            crate::info!("outer {}", 1; k = "v");
            inner.run(|| {
                assert_eq!(clock::now(), 5);
                crate::log::warn("inner");
            });
            assert_eq!(clock::now_rfc3339(), "2026-01-01T00:00:00Z");
        });
        assert_eq!(
            outer.logs(),
            [LogLine {
                level: Level::Info,
                message: "outer 1".into(),
                fields: vec![("k".into(), "v".into())]
            }]
        );
        assert!(inner.logged("inner") && !outer.logged("inner"));
    }

    #[test]
    fn the_fake_is_uninstalled_after_a_panic() {
        let host = FakeHost::new().now_ms(7);
        let caught =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| host.run(|| panic!("boom"))));
        assert!(caught.is_err());
        assert_ne!(clock::now(), 7);
    }
}
