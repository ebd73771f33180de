//! Status conditions of the primary: [`Condition`].

use std::fmt;

/// A status condition of the primary, returned through
/// [`Output::condition`](crate::Output::condition).
///
/// The plugin says only type, status, reason and message. The host merges it into the
/// primary's `status.conditions` by `type`, sets `observedGeneration` to the generation
/// of the primary the plugin saw, and changes `lastTransitionTime` only when the status
/// changes — so a plugin never needs the clock or the generation for its conditions.
///
/// ```no_run
/// use rekon_sdk::Condition;
/// let ready = Condition::new("Ready", true, "Available", "3/3 replicas ready");
/// let progressing = Condition::new("Ready", false, "Progressing", "1/3 replicas ready");
/// let unknown = Condition::new("Ready", rekon_sdk::condition::Status::Unknown, "Pending", "");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Condition {
    /// Condition type, e.g. `Ready`.
    pub condition_type: String,
    /// True, False or Unknown.
    pub status: Status,
    /// Machine-readable reason, UpperCamelCase.
    pub reason: String,
    /// Human-readable message.
    pub message: String,
}

impl Condition {
    /// A condition; `status` is a [`Status`] or a `bool`.
    pub fn new(
        condition_type: impl Into<String>,
        status: impl Into<Status>,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            condition_type: condition_type.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// Tri-state status of a [`Condition`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    /// `"True"`.
    True,
    /// `"False"`.
    False,
    /// `"Unknown"`.
    Unknown,
}

impl Status {
    /// The wire form: `"True"`, `"False"` or `"Unknown"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::True => "True",
            Self::False => "False",
            Self::Unknown => "Unknown",
        }
    }
}

impl From<bool> for Status {
    fn from(b: bool) -> Self {
        if b { Self::True } else { Self::False }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
