//! Structured logging through the host.
//!
//! Each line goes to the host's log, attributed to the plugin and the key being
//! reconciled, with key/value fields. Use the functions for fixed messages and the
//! macros ([`info!`](crate::info) and friends) for formatted ones with fields:
//!
//! ```no_run
//! rekon_sdk::log::info("reconciling");
//! let replicas = 3;
//! rekon_sdk::info!("scaled to {}", replicas; replicas = replicas, reason = "spec");
//! rekon_sdk::warn!("image missing");
//! ```
//!
//! On native targets lines go to the installed [`testing::FakeHost`](crate::testing::FakeHost)
//! (see [`FakeHost::logs`](crate::testing::FakeHost::logs)), or to stderr when none is
//! installed.

use std::fmt;

use crate::sys::{self, Host as _};

/// Severity of a log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Very detailed.
    Trace,
    /// Detailed.
    Debug,
    /// Normal.
    Info,
    /// Something odd.
    Warn,
    /// Something failed.
    Error,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Trace => "trace",
            Self::Debug => "debug",
            Self::Info => "info",
            Self::Warn => "warn",
            Self::Error => "error",
        })
    }
}

impl Level {
    pub(crate) fn to_wire(self) -> sys::Level {
        match self {
            Self::Trace => sys::Level::Trace,
            Self::Debug => sys::Level::Debug,
            Self::Info => sys::Level::Info,
            Self::Warn => sys::Level::Warn,
            Self::Error => sys::Level::Error,
        }
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn from_wire(level: sys::Level) -> Self {
        match level {
            sys::Level::Trace => Self::Trace,
            sys::Level::Debug => Self::Debug,
            sys::Level::Info => Self::Info,
            sys::Level::Warn => Self::Warn,
            sys::Level::Error => Self::Error,
        }
    }
}

/// Sends one line to the host, whichever it is (see `crate::host`).
pub(crate) fn write(level: Level, message: &str, fields: &[(String, String)]) {
    crate::host().log(level.to_wire(), message, fields);
}

/// Writes one log line with key/value fields.
pub fn log(level: Level, message: &str, fields: &[(&str, &str)]) {
    let fields: Vec<(String, String)> = fields
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    write(level, message, &fields);
}

/// Writes a trace line.
pub fn trace(message: &str) {
    log(Level::Trace, message, &[]);
}

/// Writes a debug line.
pub fn debug(message: &str) {
    log(Level::Debug, message, &[]);
}

/// Writes an info line.
pub fn info(message: &str) {
    log(Level::Info, message, &[]);
}

/// Writes a warning line.
pub fn warn(message: &str) {
    log(Level::Warn, message, &[]);
}

/// Writes an error line.
pub fn error(message: &str) {
    log(Level::Error, message, &[]);
}

/// Used by the logging macros; not part of the stable API.
#[doc(hidden)]
pub fn __write(level: Level, message: fmt::Arguments<'_>, fields: Vec<(String, String)>) {
    let message = message
        .as_str()
        .map_or_else(|| message.to_string(), str::to_owned);
    write(level, &message, &fields);
}

/// Logs at a [`Level`] with a format string and optional `; key = value` fields (values
/// are formatted with `Display`).
///
/// ```no_run
/// use rekon_sdk::log::Level;
/// let name = "web";
/// rekon_sdk::log!(Level::Info, "applied {}", name; kind = "Deployment", replicas = 3);
/// ```
#[macro_export]
macro_rules! log {
    ($level:expr, $fmt:literal $(, $arg:expr)* $(,)? $(; $($key:ident = $value:expr),* $(,)?)?) => {
        $crate::log::__write(
            $level,
            ::core::format_args!($fmt $(, $arg)*),
            ::std::vec![$($((::core::stringify!($key).to_owned(), ::std::string::ToString::to_string(&$value))),*)?],
        )
    };
}

/// Logs at trace level; same syntax as [`log!`](crate::log!) without the level.
#[macro_export]
macro_rules! trace {
    ($($t:tt)*) => { $crate::log!($crate::log::Level::Trace, $($t)*) };
}

/// Logs at debug level; same syntax as [`log!`](crate::log!) without the level.
#[macro_export]
macro_rules! debug {
    ($($t:tt)*) => { $crate::log!($crate::log::Level::Debug, $($t)*) };
}

/// Logs at info level; same syntax as [`log!`](crate::log!) without the level.
#[macro_export]
macro_rules! info {
    ($($t:tt)*) => { $crate::log!($crate::log::Level::Info, $($t)*) };
}

/// Logs at warn level; same syntax as [`log!`](crate::log!) without the level.
#[macro_export]
macro_rules! warn {
    ($($t:tt)*) => { $crate::log!($crate::log::Level::Warn, $($t)*) };
}

/// Logs at error level; same syntax as [`log!`](crate::log!) without the level.
#[macro_export]
macro_rules! error {
    ($($t:tt)*) => { $crate::log!($crate::log::Level::Error, $($t)*) };
}
