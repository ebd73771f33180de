//! Why a reconcile did not decide: [`Error`].

use std::fmt;

/// A reconcile (or finalize) that did not decide. The host treats the two variants
/// differently:
///
/// - [`Error::Transient`]: retried with per-key exponential backoff. Use it for
///   "not yet" — a dependency is not ready, a referenced object is missing from the cache.
/// - [`Error::Permanent`]: recorded (a Warning event on the primary, a metric) and not
///   retried until the object changes. Use it for "never, as the object stands" — an
///   invalid spec, an object that does not parse.
///
/// `?` converts the SDK's other errors: a [`serde_json::Error`], a
/// [`cache::Error`](crate::cache::Error) and a [`selector::Error`](crate::selector::Error)
/// become permanent errors carrying their message. Add context with [`Error::context`].
///
/// The SDK's own decoding errors name what did not fit and where, so a Warning event on
/// the primary tells its owner what to fix: ``WebApp shop/web does not fit WebApp:
/// spec: missing field `image` ``, `related Deployment shop/web does not fit
/// Deployment: spec.replicas: invalid type: string "3", expected i32`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// Retry with backoff.
    Transient(String),
    /// Do not retry until the object changes.
    Permanent(String),
}

impl Error {
    /// A transient error: the host retries with backoff.
    pub fn transient(message: impl Into<String>) -> Self {
        Self::Transient(message.into())
    }

    /// A permanent error: the host records it and waits for the object to change.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self::Permanent(message.into())
    }

    /// The message, without the transient/permanent prefix.
    pub fn message(&self) -> &str {
        match self {
            Self::Transient(m) | Self::Permanent(m) => m,
        }
    }

    /// Whether the host will retry with backoff.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient(_))
    }

    /// Prefixes the message with `context: `, keeping the variant.
    #[must_use]
    pub fn context(self, context: impl fmt::Display) -> Self {
        match self {
            Self::Transient(m) => Self::Transient(format!("{context}: {m}")),
            Self::Permanent(m) => Self::Permanent(format!("{context}: {m}")),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Transient(m) => write!(f, "transient: {m}"),
            Self::Permanent(m) => write!(f, "permanent: {m}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<serde_json::Error> for Error {
    /// A permanent error: JSON that does not fit the expected type will not fit it on
    /// retry either.
    fn from(e: serde_json::Error) -> Self {
        Self::Permanent(format!("JSON does not fit: {e}"))
    }
}

impl From<crate::cache::Error> for Error {
    /// A permanent error: an undeclared kind, a bad selector or a cached object that
    /// does not fit its type is a bug in the plugin or the object, not a passing state.
    fn from(e: crate::cache::Error) -> Self {
        Self::Permanent(format!("cache: {e}"))
    }
}
