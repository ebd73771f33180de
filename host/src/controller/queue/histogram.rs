//! A small fixed-bucket histogram of durations, so a metrics module can export the queue's
//! timings (`workqueue_queue_duration_seconds`, `workqueue_work_duration_seconds`) without the
//! queue depending on a metrics library.

use std::time::Duration;

/// The buckets' upper bounds: client-go's workqueue buckets, 10 ns × 10^i for i in 0..10
/// (10 ns … 10 s). Values above the last bound land in the implicit `+Inf` bucket.
const BOUNDS: [Duration; 10] = [
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

/// Counts of observed durations per bucket, with their sum and count.
///
/// # Guarantees
/// - A value counts in every bucket whose upper bound is at least the value (Prometheus `le`
///   semantics) once read through [`Histogram::buckets`]; `count()` is the `+Inf` bucket.
/// - The sum saturates instead of overflowing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Histogram {
    /// Non-cumulative counts; index `BOUNDS.len()` is the `+Inf` bucket.
    counts: [u64; BOUNDS.len() + 1],
    sum: Duration,
    count: u64,
}

impl Histogram {
    /// The buckets' upper bounds, ascending.
    pub const BOUNDS: &'static [Duration] = &BOUNDS;

    /// Records one value.
    pub fn observe(&mut self, value: Duration) {
        let bucket = BOUNDS.partition_point(|bound| *bound < value);
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
        BOUNDS
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
}
