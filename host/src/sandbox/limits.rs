//! The limits one call into a plugin runs under.

use std::time::Duration;

/// Per-plugin, per-call limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Cap on the guest's linear memory, in bytes.
    pub memory_bytes: usize,
    /// Time one call may run: the time it held its CPU turn when the sandbox shares CPU
    /// turns ([`Config::cpus`](super::Config::cpus), the default), else wall time.
    pub time_budget: Duration,
    /// Cap on the size of one call's output (all objects and patches together).
    pub output_bytes: usize,
    /// Cap on one object in the output.
    pub object_bytes: usize,
    /// Cap on captured stdout/stderr and log text per call.
    pub log_bytes: usize,
    /// Cap on the events in one output (each is an API call of its own).
    pub max_events: usize,
    /// Cap on the status conditions in one output.
    pub max_conditions: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: 64 << 20,
            time_budget: Duration::from_secs(2),
            output_bytes: 8 << 20,
            object_bytes: 1 << 20,
            log_bytes: 64 << 10,
            max_events: 16,
            max_conditions: 32,
        }
    }
}
