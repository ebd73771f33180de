//! Host-wide controller settings.

use super::thrash;
use std::time::Duration;

/// Host-wide controller settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Resync period for plugins that declare none.
    pub resync_default: Duration,
    /// Overrides every plugin's resync period (tests, operators who know better).
    pub resync_override: Option<Duration>,
    /// How long a reconcile waits for the cache to show the key's previous writes.
    pub read_your_writes_timeout: Duration,
    /// Concurrent reconciles per plugin. Their wasm calls are bounded separately by
    /// [`sandbox_slots`](Self::sandbox_slots), so most of these are waiting on the API
    /// server; a low number lets a few slow writes hold up every other key (the default,
    /// 64, comes from the sustained-load bench: BENCHMARKS.md).
    pub max_concurrent_reconciles: usize,
    /// Sandbox instances alive at once across plugins (≤ the sandbox pool).
    pub sandbox_slots: usize,
    /// How those slots are shared between plugins: fairly unless a bench wants the
    /// first-come baseline.
    pub sandbox_policy: super::slots::Policy,
    /// The most slots one plugin's calls hold at once when its options set no
    /// `sandbox_share` (`None`: no cap beyond the fair sharing). With the sandbox's CPU
    /// turns on, `rekon run` sets twice the turns: a plugin cannot run more calls than
    /// there are turns, and slots its calls would hold while waiting for one are slots
    /// another plugin's call waits for (BENCHMARKS.md, "Fairness between plugins").
    pub sandbox_share: Option<usize>,
    /// Reported as the events' reporting instance (e.g. the pod name).
    pub instance: String,
    /// Watch namespaced kinds in this namespace only (`None`: the whole cluster).
    pub namespace: Option<String>,
    /// When rewriting an object back and forth with another writer counts as a fight.
    pub thrash: thrash::ThrashConfig,
    /// How long starting a plugin waits for its watches' first lists.
    pub sync_timeout: Duration,
    /// Every write (and Event) is made only while this admits it: the leader Lease's
    /// fence with leader election, open without.
    pub fence: crate::fence::Fence,
    /// Deadline of each API request the controllers make (not of watches, which kube's
    /// watcher restarts when idle past its own timeout).
    pub request_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            resync_default: Duration::from_secs(600),
            resync_override: None,
            read_your_writes_timeout: Duration::from_secs(10),
            max_concurrent_reconciles: 64,
            sandbox_slots: 32,
            sandbox_policy: super::slots::Policy::Fair,
            sandbox_share: None,
            instance: "rekon".to_owned(),
            namespace: None,
            thrash: thrash::ThrashConfig::default(),
            sync_timeout: Duration::from_secs(60),
            fence: crate::fence::Fence::open(),
            request_timeout: Duration::from_secs(30),
        }
    }
}
