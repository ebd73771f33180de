//! What one plugin's controller counts: plain counters and a histogram, recorded where
//! things happen and read by whoever wants them (the metrics module, at scrape time; tests).
//! The controller depends on no metrics library.

use super::histogram::Histogram;
use super::queue::Outcome;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Counters of one plugin's controller. They are the single record of these numbers.
///
/// # Guarantees
/// - Kept per plugin name for the life of the host: a controller restarted for a new
///   declaration (a hot reload) continues its predecessor's counts.
/// - Counts only grow.
#[derive(Debug)]
pub struct Stats {
    /// Plugin calls (reconcile or finalize).
    pub reconciles: AtomicU64,
    /// Finished reconciles by result.
    pub results: Results,
    /// Writes the API server accepted.
    pub writes: AtomicU64,
    /// Outputs stopped by a 409 conflict.
    pub conflicts: AtomicU64,
    /// Outputs stopped by another API error.
    pub apply_errors: AtomicU64,
    /// Reconciles deferred until the cache showed the key's own previous writes (counted
    /// once per wait, only when the writes were not shown yet).
    pub own_write_waits: AtomicU64,
    /// Deadlines such waits passed (each reported; the key keeps waiting).
    pub own_write_overdue: AtomicU64,
    /// Resync passes.
    pub resyncs: AtomicU64,
    /// Fights with another writer the thrash guard detected.
    pub thrash_fights: AtomicU64,
    /// Finalizers released without cleanup because the plugin no longer declares them.
    pub finalizers_released: AtomicU64,
    /// Primaries being deleted left with the plugin's finalizer when it was removed.
    pub finalizers_orphaned: AtomicU64,
    reconcile_time: Mutex<Histogram>,
    faults: ByLabel,
    write_errors: ByLabel,
}

/// Finished reconciles of one plugin by result, as controller-runtime's `result` label
/// names them. A lease deferred for read-your-writes did not reconcile and is not counted.
#[derive(Debug, Default)]
pub struct Results {
    /// Succeeded.
    pub success: AtomicU64,
    /// Succeeded, and asked to run again after a delay.
    pub requeue_after: AtomicU64,
    /// Stopped by a conflict (or no sandbox slot), run again promptly.
    pub requeue: AtomicU64,
    /// Ended in an error, transient or permanent.
    pub error: AtomicU64,
    /// Of [`error`](Self::error), those not retried until the object changes.
    pub terminal: AtomicU64,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            reconciles: AtomicU64::default(),
            results: Results::default(),
            writes: AtomicU64::default(),
            conflicts: AtomicU64::default(),
            apply_errors: AtomicU64::default(),
            own_write_waits: AtomicU64::default(),
            own_write_overdue: AtomicU64::default(),
            resyncs: AtomicU64::default(),
            thrash_fights: AtomicU64::default(),
            finalizers_released: AtomicU64::default(),
            finalizers_orphaned: AtomicU64::default(),
            reconcile_time: Mutex::new(Histogram::new(Histogram::RECONCILE_TIME)),
            faults: ByLabel::default(),
            write_errors: ByLabel::default(),
        }
    }
}

impl Stats {
    /// Records one finished reconcile: its result, and how long it took from lease to
    /// outcome. A [`Outcome::Deferred`] lease did not reconcile: nothing is recorded.
    pub(crate) fn record_reconcile(&self, outcome: Outcome, took: Duration) {
        let results = &self.results;
        let counter = match outcome {
            Outcome::Success => &results.success,
            Outcome::SuccessRequeueAfter(_) => &results.requeue_after,
            Outcome::RetryNow => &results.requeue,
            Outcome::Failed => &results.error,
            Outcome::FailedPermanent => {
                results.terminal.fetch_add(1, Ordering::Relaxed);
                &results.error
            }
            Outcome::Deferred => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.reconcile_time
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .observe(took);
    }

    /// Time per reconcile, from lease to outcome (controller-runtime's
    /// `reconcile_time_seconds` buckets).
    pub fn reconcile_time(&self) -> Histogram {
        self.reconcile_time
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn count_write_error(&self, label: &'static str) {
        self.write_errors.add(label);
    }

    /// Outputs stopped by an error other than a conflict, by reason label
    /// ([`crate::write::Error::metric_label`]: `not_owned`, `already_exists`, …).
    pub fn write_errors(&self) -> BTreeMap<&'static str, u64> {
        self.write_errors.read()
    }

    pub(crate) fn count_fault(&self, label: &'static str) {
        self.faults.add(label);
    }

    /// Plugin faults by reason label.
    pub fn faults(&self) -> BTreeMap<&'static str, u64> {
        self.faults.read()
    }

    /// Shorthand for reading a counter.
    pub fn read(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Counts by a bounded label (an error enum's `metric_label`).
#[derive(Debug, Default)]
struct ByLabel(Mutex<BTreeMap<&'static str, u64>>);

impl ByLabel {
    fn add(&self, label: &'static str) {
        *self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(label)
            .or_default() += 1;
    }

    fn read(&self) -> BTreeMap<&'static str, u64> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_are_counted_and_timed_a_deferred_lease_not() {
        let stats = Stats::default();
        let ms = Duration::from_millis;
        stats.record_reconcile(Outcome::Success, ms(3));
        stats.record_reconcile(Outcome::SuccessRequeueAfter(ms(100)), ms(30));
        stats.record_reconcile(Outcome::RetryNow, ms(30));
        stats.record_reconcile(Outcome::Failed, ms(30));
        stats.record_reconcile(Outcome::FailedPermanent, ms(30));
        stats.record_reconcile(Outcome::Deferred, ms(30));
        let r = &stats.results;
        let counts = [
            &r.success,
            &r.requeue_after,
            &r.requeue,
            &r.error,
            &r.terminal,
        ]
        .map(Stats::read);
        assert_eq!(counts, [1, 1, 1, 2, 1]);
        let time = stats.reconcile_time();
        assert_eq!(time.count(), 5);
        assert_eq!(time.bounds(), Histogram::RECONCILE_TIME);
        assert_eq!(time.sum(), ms(123));
    }
}
