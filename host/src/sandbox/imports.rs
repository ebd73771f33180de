//! rekon's imports: thin glue that decodes, checks the allow-list, and forwards to the
//! call's [`super::CacheGrant`]. No Kubernetes logic lives here.

use super::bindings::host::{self, CacheError, Level};
use super::bindings::types::{self, Gvk as WitGvk};
use super::log::LogLine;
use super::state::HostState;
use crate::contract::Gvk;
use crate::selector::Selector;

impl types::Host for HostState {}

/// The trap a refused `list` stops the call with; the call reports it as
/// [`super::Error::ListTooLarge`].
#[derive(Debug, thiserror::Error)]
#[error("listing {kind} refused: {refused}")]
pub(super) struct ListRefused {
    pub(super) kind: String,
    pub(super) refused: super::TooLarge,
}

fn gvk(kind: &WitGvk) -> Gvk {
    Gvk::new(&kind.group, &kind.version, &kind.kind)
}

impl HostState {
    fn readable(&self, kind: &WitGvk) -> Result<(Gvk, &super::CacheGrant), CacheError> {
        let kind = gvk(kind);
        let Some(scope) = self.scope.as_ref() else {
            return Err(CacheError::UndeclaredKind(format!(
                "{kind}: the cache is not available in this call"
            )));
        };
        if !scope.metadata.may_read(&kind) {
            return Err(CacheError::UndeclaredKind(format!(
                "{kind} is not among the kinds plugin {:?} declared (primary, watches, reads)",
                scope.metadata.name
            )));
        }
        Ok((kind, scope))
    }
}

impl host::Host for HostState {
    fn log(&mut self, level: Level, message: String, fields: Vec<(String, String)>) {
        let level = match level {
            Level::Trace => tracing::Level::TRACE,
            Level::Debug => tracing::Level::DEBUG,
            Level::Info => tracing::Level::INFO,
            Level::Warn => tracing::Level::WARN,
            Level::Error => tracing::Level::ERROR,
        };
        self.push_log(LogLine {
            level,
            message,
            fields,
        });
    }

    fn get(
        &mut self,
        kind: WitGvk,
        namespace: Option<String>,
        name: String,
    ) -> Result<Option<String>, CacheError> {
        let (kind, scope) = self.readable(&kind)?;
        Ok(scope.cache.get(&kind, namespace.as_deref(), &name))
    }

    fn list(
        &mut self,
        kind: WitGvk,
        namespace: Option<String>,
        label_selector: Option<String>,
    ) -> wasmtime::Result<Result<Vec<String>, CacheError>> {
        let (kind, scope) = match self.readable(&kind) {
            Ok(found) => found,
            Err(e) => return Ok(Err(e)),
        };
        let selector = match label_selector.as_deref() {
            Some(s) => match Selector::parse(s) {
                Ok(s) => s,
                Err(e) => return Ok(Err(CacheError::BadSelector(e.to_string()))),
            },
            None => Selector::default(),
        };
        // A result past the memory cap could never be copied into the guest; refuse it
        // before the host builds it.
        let max_bytes = self.limiter.cap();
        match scope
            .cache
            .list_within(&kind, namespace.as_deref(), &selector, max_bytes)
        {
            Ok(objects) => Ok(Ok(objects)),
            Err(refused) => Err(wasmtime::Error::new(ListRefused {
                kind: kind.to_string(),
                refused,
            })),
        }
    }

    fn now_ms(&mut self) -> i64 {
        self.clock.now_ms()
    }
}
