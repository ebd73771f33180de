//! Why a call into a plugin failed inside the sandbox.

use std::time::Duration;

/// Why a call into a plugin failed inside the sandbox (as opposed to the plugin reporting
/// an error itself, which is a [`crate::contract::GuestError`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The call ran past its time budget and was interrupted.
    #[error("exceeded its time budget of {budget:?}")]
    Timeout {
        /// The budget.
        budget: Duration,
    },
    /// The guest tried to grow its memory past the cap.
    #[error("exceeded its memory cap of {limit} bytes (asked for {asked} bytes)")]
    OutOfMemory {
        /// The cap.
        limit: usize,
        /// The size it asked for.
        asked: usize,
    },
    /// The guest asked the cache for a list whose result would not fit its memory cap; the
    /// host refused it before copying any object, and the call was stopped.
    #[error(
        "listed {kind}: {} objects match, the first {} already take {} bytes, more than its \
         memory cap of {} bytes; narrow the query with a namespace or a label selector",
        refused.matched, refused.counted, refused.bytes, refused.max_bytes
    )]
    ListTooLarge {
        /// The kind listed.
        kind: String,
        /// The counts and the cap.
        refused: super::state::TooLarge,
    },
    /// The guest overflowed its stack.
    #[error("overflowed its stack")]
    StackOverflow,
    /// The guest trapped (a panic shows as `unreachable`; the panic message, when the SDK
    /// logged one, is in `last_error_log`).
    #[error("trapped: {trap}{}", last_error_log.as_deref().map(|l| format!(" ({l})")).unwrap_or_default())]
    Trapped {
        /// The trap as wasmtime describes it.
        trap: String,
        /// The last error-level line the plugin logged before trapping.
        last_error_log: Option<String>,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The instance could not be created (e.g. the pool is exhausted).
    #[error("could not be instantiated: {source}")]
    Instantiate {
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Error {
    /// A bounded label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Timeout { .. } => "timeout",
            Error::OutOfMemory { .. } => "out_of_memory",
            Error::ListTooLarge { .. } => "list_too_large",
            Error::StackOverflow => "stack_overflow",
            Error::Trapped { .. } => "trap",
            Error::Instantiate { .. } => "instantiate",
        }
    }
}

pub(crate) fn boxed(e: wasmtime::Error) -> Box<dyn std::error::Error + Send + Sync> {
    e.into()
}
