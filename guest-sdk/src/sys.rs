//! The port to the host: what a plugin may ask of it, in the contract's wire types only
//! (`rekon:plugin/host`). Callers ([`cache`](crate::cache), [`log`](mod@crate::log),
//! [`clock`](crate::clock)) convert to and from their own types.
//!
//! On `wasm32` the component's imports implement [`Host`] ([`Imports`]); on native
//! targets wit-bindgen's import stubs are `unreachable!()`, so the crate root picks the
//! [`testing`](crate::testing) fake instead (`crate::host`).

pub(crate) use crate::bindings::rekon::plugin::host::{CacheError, Level};
pub(crate) use crate::bindings::rekon::plugin::types::Gvk;

/// The host's imports, in wire types.
pub(crate) trait Host {
    /// Writes one structured log line.
    fn log(&self, level: Level, message: &str, fields: &[(String, String)]);
    /// One cached object as JSON, if the cache holds it.
    fn get(
        &self,
        kind: &Gvk,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<String>, CacheError>;
    /// Cached objects as JSON, optionally in one namespace and matching a label selector.
    fn list(
        &self,
        kind: &Gvk,
        namespace: Option<&str>,
        selector: Option<&str>,
    ) -> Result<Vec<String>, CacheError>;
    /// Wall-clock time in milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
}

/// The component's `rekon:plugin/host` imports.
#[cfg(target_arch = "wasm32")]
pub(crate) struct Imports;

#[cfg(target_arch = "wasm32")]
impl Host for Imports {
    fn log(&self, level: Level, message: &str, fields: &[(String, String)]) {
        crate::bindings::rekon::plugin::host::log(level, message, fields);
    }

    fn get(
        &self,
        kind: &Gvk,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<String>, CacheError> {
        crate::bindings::rekon::plugin::host::get(kind, namespace, name)
    }

    fn list(
        &self,
        kind: &Gvk,
        namespace: Option<&str>,
        selector: Option<&str>,
    ) -> Result<Vec<String>, CacheError> {
        crate::bindings::rekon::plugin::host::list(kind, namespace, selector)
    }

    fn now_ms(&self) -> i64 {
        crate::bindings::rekon::plugin::host::now_ms()
    }
}
