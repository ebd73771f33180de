//! Where host calls go: the component's `rekon:plugin/host` imports on `wasm32`, the
//! [`testing`](crate::testing) fake host on native targets (wit-bindgen's native import
//! stubs are `unreachable!()`).

#[cfg(target_arch = "wasm32")]
mod imp {
    use crate::bindings::rekon::plugin::host;
    use crate::log::Level;
    use crate::{Gvk, cache};

    pub fn log(level: Level, message: &str, fields: &[(String, String)]) {
        let level = match level {
            Level::Trace => host::Level::Trace,
            Level::Debug => host::Level::Debug,
            Level::Info => host::Level::Info,
            Level::Warn => host::Level::Warn,
            Level::Error => host::Level::Error,
        };
        host::log(level, message, fields);
    }

    pub fn get(
        kind: &Gvk,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<String>, cache::Error> {
        host::get(&crate::raw::gvk_to_wit(kind), namespace, name).map_err(refusal)
    }

    pub fn list(
        kind: &Gvk,
        namespace: Option<&str>,
        selector: Option<&str>,
    ) -> Result<Vec<String>, cache::Error> {
        host::list(&crate::raw::gvk_to_wit(kind), namespace, selector).map_err(refusal)
    }

    pub fn now_ms() -> i64 {
        host::now_ms()
    }

    fn refusal(e: host::CacheError) -> cache::Error {
        match e {
            host::CacheError::UndeclaredKind(m) => cache::Error::UndeclaredKind(m),
            host::CacheError::BadSelector(m) => cache::Error::BadSelector(m),
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
pub(crate) use crate::testing::host::{get, list, log, now_ms};
#[cfg(target_arch = "wasm32")]
pub(crate) use imp::{get, list, log, now_ms};
