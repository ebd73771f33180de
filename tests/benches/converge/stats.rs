//! Medians, spreads, percentiles and the summary table.

use crate::Round;
use crate::child::Side;
use std::collections::BTreeSet;

pub use crate::figures::{median, percentile};

/// Median, min and max of one figure over the rounds of a side.
#[derive(Debug, Clone, Copy)]
pub struct Spread {
    /// The median.
    pub median: f64,
    /// The lowest value.
    pub min: f64,
    /// The highest value.
    pub max: f64,
}

impl Spread {
    /// The spread of `values`.
    pub fn of(mut values: Vec<f64>) -> Spread {
        let median = median(&mut values);
        Spread {
            median,
            min: values.first().copied().unwrap_or(0.0),
            max: values.last().copied().unwrap_or(0.0),
        }
    }
}

/// The rounds of one side at one N.
pub fn rounds(all: &[Round], side: Side, n: usize) -> Vec<&Round> {
    all.iter().filter(|r| r.side == side && r.n == n).collect()
}

type Figure = (&'static str, &'static str, fn(&Round) -> f64);

const FIGURES: &[Figure] = &[
    ("convergence", "s", |r| r.converge_s),
    ("  of which startup", "s", |r| r.startup_s),
    ("objects converged / s", "/s", |r| r.n as f64 / r.converge_s),
    ("reconciles / s", "/s", |r| {
        r.reconciles as f64 / r.converge_s
    }),
    ("reconciles per object", "", |r| {
        r.reconciles as f64 / r.n as f64
    }),
    ("API requests", "", |r| r.total_requests() as f64),
    ("API requests per object", "", |r| {
        r.total_requests() as f64 / r.n as f64
    }),
    ("settled (no reconcile for 1 s)", "s", |r| r.settle_s),
    ("reconciles until settled", "", |r| {
        r.settle_reconciles as f64
    }),
    ("API requests until settled", "", |r| {
        r.settle_requests as f64
    }),
    ("event→reconcile p50", "ms", |r| {
        percentile(&r.latencies_ms, 50.0)
    }),
    ("event→reconcile p99", "ms", |r| {
        percentile(&r.latencies_ms, 99.0)
    }),
    ("  after the update's response p50", "ms", |r| {
        percentile(&r.after_response_ms, 50.0)
    }),
    ("  after the update's response p99", "ms", |r| {
        percentile(&r.after_response_ms, 99.0)
    }),
    ("  update round trip (median)", "ms", |r| r.update_rtt_ms),
    ("requests per update", "", |r| {
        r.latency_phase_requests as f64 / r.latencies_ms.len().max(1) as f64
    }),
    ("RSS at convergence", "MiB", |r| r.rss_kib as f64 / 1024.0),
    ("peak RSS", "MiB", |r| r.hwm_kib as f64 / 1024.0),
    ("CPU until convergence", "s", |r| r.cpu_ms as f64 / 1000.0),
    ("CPU per object", "ms", |r| r.cpu_ms as f64 / r.n as f64),
];

/// Prints one table per N: each figure's median [min–max] for both sides and the
/// rekon/native ratio of the medians.
pub fn print_summary(all: &[Round], concurrency: usize) {
    let sizes: BTreeSet<usize> = all.iter().map(|r| r.n).collect();
    for n in sizes {
        let rekon = rounds(all, Side::Rekon, n);
        let native = rounds(all, Side::Native, n);
        println!(
            "\nN = {n} ({} rekon rounds, {} native rounds, concurrency {concurrency}; median [min–max])",
            rekon.len(),
            native.len()
        );
        println!(
            "{:<30} {:>26} {:>26} {:>8}",
            "figure", "rekon", "native", "ratio"
        );
        for (name, unit, f) in FIGURES {
            let a = Spread::of(rekon.iter().map(|r| f(r)).collect());
            let b = Spread::of(native.iter().map(|r| f(r)).collect());
            let cell =
                |s: Spread| format!("{} [{}–{}] {unit}", fmt(s.median), fmt(s.min), fmt(s.max));
            let ratio = if b.median > 0.0 {
                format!("{:.2}×", a.median / b.median)
            } else {
                "–".into()
            };
            println!("{name:<30} {:>26} {:>26} {ratio:>8}", cell(a), cell(b));
        }
        let verbs: BTreeSet<&String> = rekon
            .iter()
            .chain(&native)
            .flat_map(|r| r.requests.keys())
            .collect();
        let by_verb = |rs: &[&Round]| {
            verbs
                .iter()
                .map(|v| {
                    let mut counts: Vec<f64> = rs
                        .iter()
                        .map(|r| r.requests.get(*v).copied().unwrap_or(0) as f64)
                        .collect();
                    format!("{v} {}", fmt(median(&mut counts)))
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!("requests by verb (median): rekon: {}", by_verb(&rekon));
        println!("                           native: {}", by_verb(&native));
    }
}

fn fmt(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}
