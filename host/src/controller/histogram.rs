//! A small fixed-bucket histogram of durations, so the controller can keep its timings
//! (the queue's `workqueue_queue_duration_seconds` and `workqueue_work_duration_seconds`,
//! the reconciler's `reconcile_time_seconds`) and a metrics module can export them, without
//! the controller depending on a metrics library.

use std::time::Duration;

/// client-go's workqueue buckets: 10 ns × 10^i for i in 0..10 (10 ns … 10 s).
const WORKQUEUE: [Duration; 10] = [
    Duration::from_nanos(10),
    Duration::from_nanos(100),
    Duration::from_micros(1),
    Duration::from_micros(10),
    Duration::from_micros(100),
    Duration::from_millis(1),
    Duration::from_millis(10),
    Duration::from_millis(100),
    Duration::from_secs(1),
    Duration::from_secs(10),
];

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// controller-runtime's buckets for `reconcile_time_seconds` (5 ms … 60 s).
const RECONCILE_TIME: [Duration; 40] = [
    ms(5),
    ms(10),
    ms(25),
    ms(50),
    ms(100),
    ms(150),
    ms(200),
    ms(250),
    ms(300),
    ms(350),
    ms(400),
    ms(450),
    ms(500),
    ms(600),
    ms(700),
    ms(800),
    ms(900),
    ms(1_000),
    ms(1_250),
    ms(1_500),
    ms(1_750),
    ms(2_000),
    ms(2_500),
    ms(3_000),
    ms(3_500),
    ms(4_000),
    ms(4_500),
    ms(5_000),
    ms(6_000),
    ms(7_000),
    ms(8_000),
    ms(9_000),
    ms(10_000),
    ms(15_000),
    ms(20_000),
    ms(25_000),
    ms(30_000),
    ms(40_000),
    ms(50_000),
    ms(60_000),
];

/// Counts of observed durations per bucket, with their sum and count.
///
/// # Guarantees
/// - A value counts in every bucket whose upper bound is at least the value (Prometheus `le`
///   semantics) once read through [`Histogram::buckets`]; `count()` is the `+Inf` bucket.
///   Values above the last bound land only in that implicit `+Inf` bucket.
/// - The sum saturates instead of overflowing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Histogram {
    bounds: &'static [Duration],
    /// Non-cumulative counts; index `bounds.len()` is the `+Inf` bucket.
    counts: Vec<u64>,
    sum: Duration,
    count: u64,
}

impl Default for Histogram {
    /// An empty histogram with the [workqueue](Self::WORKQUEUE) buckets.
    fn default() -> Self {
        Self::new(Self::WORKQUEUE)
    }
}

impl Histogram {
    /// client-go's workqueue buckets, ascending.
    pub const WORKQUEUE: &'static [Duration] = &WORKQUEUE;

    /// controller-runtime's `reconcile_time_seconds` buckets, ascending.
    pub const RECONCILE_TIME: &'static [Duration] = &RECONCILE_TIME;

    /// An empty histogram with these upper bounds, which must be ascending.
    pub fn new(bounds: &'static [Duration]) -> Self {
        debug_assert!(bounds.is_sorted(), "bucket bounds must ascend");
        Self {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: Duration::ZERO,
            count: 0,
        }
    }

    /// The buckets' upper bounds, ascending (the `+Inf` bucket not included).
    pub fn bounds(&self) -> &'static [Duration] {
        self.bounds
    }

    /// Records one value.
    pub fn observe(&mut self, value: Duration) {
        let bucket = self.bounds.partition_point(|bound| *bound < value);
        self.counts[bucket] += 1;
        self.sum = self.sum.saturating_add(value);
        self.count += 1;
    }

    /// How many values were recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The sum of the recorded values.
    pub fn sum(&self) -> Duration {
        self.sum
    }

    /// Each upper bound with the cumulative count of values at or below it, ascending. The
    /// `+Inf` bucket is not listed: it is [`Histogram::count`].
    pub fn buckets(&self) -> impl Iterator<Item = (Duration, u64)> + '_ {
        self.bounds
            .iter()
            .zip(&self.counts)
            .scan(0, |total, (bound, count)| {
                *total += count;
                Some((*bound, *total))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_with_le_semantics() {
        let mut histogram = Histogram::default();
        histogram.observe(Duration::from_millis(1));
        histogram.observe(Duration::from_millis(5));
        histogram.observe(Duration::from_secs(60));
        let buckets: Vec<_> = histogram.buckets().collect();
        assert_eq!(buckets[5], (Duration::from_millis(1), 1));
        assert_eq!(buckets[6], (Duration::from_millis(10), 2));
        assert_eq!(buckets[9], (Duration::from_secs(10), 2));
        assert_eq!(histogram.count(), 3);
        assert_eq!(histogram.sum(), Duration::from_millis(60_006));
    }

    #[test]
    fn reconcile_time_buckets_are_controller_runtimes() {
        let mut histogram = Histogram::new(Histogram::RECONCILE_TIME);
        histogram.observe(Duration::from_millis(5));
        histogram.observe(Duration::from_millis(6));
        histogram.observe(Duration::from_secs(61));
        let buckets: Vec<_> = histogram.buckets().collect();
        assert_eq!(buckets.len(), 40);
        assert_eq!(buckets[0], (Duration::from_millis(5), 1));
        assert_eq!(buckets[1], (Duration::from_millis(10), 2));
        assert_eq!(buckets[39], (Duration::from_secs(60), 2));
        assert_eq!(histogram.count(), 3);
        let seconds: Vec<f64> = Histogram::RECONCILE_TIME
            .iter()
            .map(Duration::as_secs_f64)
            .collect();
        assert_eq!(seconds[..4], [0.005, 0.01, 0.025, 0.05]);
        assert_eq!(seconds[17..20], [1.0, 1.25, 1.5]);
        assert_eq!(seconds[39], 60.0);
    }
}
