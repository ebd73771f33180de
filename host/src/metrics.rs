//! Prometheus metrics of one rekon process.
//!
//! Names follow controller-runtime and client-go where the meaning is the same, so existing
//! dashboards keep working; rekon's own metrics start with `rekon_`.
//!
//! | metric | labels | what |
//! | --- | --- | --- |
//! | `reconcile_total` | `plugin`, `result` | reconciles by result: `success`, `requeue_after`, `requeue` (a conflict), `error` |
//! | `reconcile_errors_total` | `plugin` | reconciles that ended in an error (transient or permanent) |
//! | `terminal_reconcile_errors_total` | `plugin` | errors not retried until the object changes |
//! | `reconcile_time_seconds` | `plugin` | histogram: from lease to outcome, read-your-writes wait included |
//! | `active_workers` | `plugin` | reconciles running now |
//! | `max_concurrent_reconciles` | `plugin` | the plugin's concurrency limit |
//! | `workqueue_depth` | `name` | keys waiting to run now (not delayed, not running) |
//! | `workqueue_adds_total` | `name` | adds not collapsed into a waiting key, fired delays included |
//! | `workqueue_retries_total` | `name` | failed runs and conflicts, each requeued |
//! | `workqueue_queue_duration_seconds` | `name` | histogram: from due to leased |
//! | `workqueue_work_duration_seconds` | `name` | histogram: from leased to done |
//! | `rekon_workqueue_delayed` | `name` | keys waiting for a requeue-after or backoff delay |
//! | `rekon_plugin_info` | `plugin`, `version`, `digest` | the plugin version running (value 1) |
//! | `rekon_plugin_calls_total` | `plugin` | calls into the plugin (reconcile or finalize) |
//! | `rekon_plugin_faults_total` | `plugin`, `reason` | calls without usable output, by the fault's bounded label |
//! | `rekon_apply_writes_total` | `plugin` | writes the API server accepted |
//! | `rekon_apply_conflicts_total` | `plugin` | outputs stopped by a 409 conflict |
//! | `rekon_apply_errors_total` | `plugin` | outputs stopped by another API error |
//! | `rekon_read_your_writes_waits_total` | `plugin` | waits for the cache to show the key's previous writes |
//! | `rekon_read_your_writes_timeouts_total` | `plugin` | such waits that timed out |
//! | `rekon_resyncs_total` | `plugin` | periodic resync passes |
//! | `rekon_plugin_loads_total` | `result` | plugin files loaded (`compiled`, `cached`) or `refused` |
//! | `rekon_plugin_refusals_total` | `reason` | refused plugin files, by the refusal's bounded label |
//! | `rekon_plugin_start_failures_total` | `reason` | loaded plugins whose controller could not start |
//! | `rekon_cache_objects` | `kind` | objects in the kind's store |
//! | `rekon_cache_bytes` | `kind` | estimated heap bytes of the kind's store |
//! | `rekon_cache_synced` | `kind` | 1 once the kind's first list completed |
//! | `rekon_cache_rejected_total` | `kind` | objects from the watch that were not stored |
//! | `rekon_watch_restarts_total` | `kind` | watch failures, each restarted after backoff |
//! | `rekon_watch_relists_total` | `kind` | complete lists after the first (e.g. after `410 Gone`) |
//!
//! # Where the numbers come from
//! Reconcile results and times, plugin loads and start failures are recorded here when they
//! happen. Everything else is already counted by its owner — the queue
//! ([`Queue`] accessors), the controller
//! ([`Stats`]) and the stores ([`KindStore`]) — and is read from there at scrape time
//! through the [sources](Metrics::add_source), so there is one source of truth per number.
//!
//! # Caveats
//! Series read at scrape time belong to what runs now: when a plugin is stopped its
//! per-plugin series disappear, and reappear from zero if it starts again (Prometheus
//! treats that as a counter reset).

use crate::contract::ObjectKey;
use crate::controller::Stats;
use crate::controller::queue::{self, Outcome, Queue};
use crate::controller::store::KindStore;
use crate::plugin::{self, Origin};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// controller-runtime's buckets for `reconcile_time_seconds`, in seconds.
const RECONCILE_TIME_BUCKETS: [f64; 40] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8, 0.9,
    1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 15.0, 20.0,
    25.0, 30.0, 40.0, 50.0, 60.0,
];

/// An exposition format of the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0 text, ending in `# EOF` (what Prometheus asks for first).
    OpenMetrics,
    /// Prometheus text format 0.0.4 (for scrapers that do not speak OpenMetrics).
    Prometheus,
}

impl Format {
    /// The `Content-Type` of a response in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Prometheus => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        }
    }
}

/// One running plugin's controller as the scrape sees it: handles on the counters its
/// owners keep.
#[derive(Debug, Clone)]
pub struct PluginState {
    /// The plugin's name (the `plugin` and `name` labels).
    pub name: String,
    /// The version it declares.
    pub version: String,
    /// sha256 of its component, hex.
    pub digest: String,
    /// Its controller's counters.
    pub stats: Arc<Stats>,
    /// Its work queue.
    pub queue: Queue<ObjectKey>,
}

/// What the [sources](Metrics::add_source) report at one scrape.
#[derive(Debug, Default)]
pub struct Scrape {
    /// The running plugins.
    pub plugins: Vec<PluginState>,
    /// The stores, one per watched kind.
    pub stores: Vec<Arc<KindStore>>,
}

type Source = Box<dyn Fn(&mut Scrape) + Send + Sync>;

/// The sources, shared between [`Metrics`] and the collector in its registry.
#[derive(Default)]
struct Sources(Mutex<Vec<Source>>);

impl fmt::Debug for Sources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.lock().unwrap_or_else(PoisonError::into_inner).len();
        f.debug_struct("Sources").field("count", &n).finish()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReconcileLabels {
    plugin: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLabels {
    plugin: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

type TimeFamily = Family<PluginLabels, Histogram, fn() -> Histogram>;

/// Picks one counter out of a plugin's [`Stats`].
type StatsCounter = fn(&Stats) -> &AtomicU64;

/// The metrics of one rekon process: a Prometheus registry with the event counters, plus
/// the [sources](Self::add_source) read at scrape time. See the module docs for the names.
///
/// # Guarantees
/// - Recording is lock-free per series after its first use, and never blocks on a scrape.
/// - Every label value is bounded: plugin names, kinds, and `metric_label()`s of error
///   enums — never an object name or a `Debug` string.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ReconcileLabels, Counter>,
    reconcile_errors: Family<PluginLabels, Counter>,
    terminal_errors: Family<PluginLabels, Counter>,
    reconcile_time: TimeFamily,
    loads: Family<ResultLabels, Counter>,
    refusals: Family<ReasonLabels, Counter>,
    start_failures: Family<ReasonLabels, Counter>,
    sources: Arc<Sources>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Empty metrics, with no source yet.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let reconciles = Family::default();
        let reconcile_errors = Family::default();
        let terminal_errors = Family::default();
        let reconcile_time: TimeFamily =
            Family::new_with_constructor(|| Histogram::new(RECONCILE_TIME_BUCKETS));
        let loads = Family::default();
        let refusals = Family::default();
        let start_failures = Family::default();
        registry.register(
            "reconcile",
            "Reconciles per plugin and result (success, requeue_after, requeue, error)",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciles per plugin that ended in an error",
            reconcile_errors.clone(),
        );
        registry.register(
            "terminal_reconcile_errors",
            "Reconciles per plugin that ended in an error not retried until the object changes",
            terminal_errors.clone(),
        );
        registry.register_with_unit(
            "reconcile_time",
            "Time per reconcile, from lease to outcome",
            Unit::Seconds,
            reconcile_time.clone(),
        );
        registry.register(
            "rekon_plugin_loads",
            "Plugin files loaded (compiled, cached) or refused",
            loads.clone(),
        );
        registry.register(
            "rekon_plugin_refusals",
            "Refused plugin files by reason",
            refusals.clone(),
        );
        registry.register(
            "rekon_plugin_start_failures",
            "Loaded plugins whose controller could not start, by reason",
            start_failures.clone(),
        );
        let sources = Arc::new(Sources::default());
        registry.register_collector(Box::new(sources.clone()));
        Self {
            registry,
            reconciles,
            reconcile_errors,
            terminal_errors,
            reconcile_time,
            loads,
            refusals,
            start_failures,
            sources,
        }
    }

    /// Adds a source: at every scrape, `source` reports what it runs into the [`Scrape`].
    ///
    /// # Caveats
    /// The source runs on the scraping task while the metrics' source list is locked: it
    /// must be quick and must not record metrics itself. A source that holds what holds
    /// these metrics would make a reference cycle: hold such things weakly.
    pub fn add_source(&self, source: impl Fn(&mut Scrape) + Send + Sync + 'static) {
        self.sources
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Box::new(source));
    }

    /// Records one finished reconcile of `plugin`: its outcome and how long it took.
    pub fn reconciled(&self, plugin: &str, outcome: Outcome, took: Duration) {
        let result = result_label(outcome);
        self.reconciles
            .get_or_create(&ReconcileLabels {
                plugin: plugin.to_owned(),
                result,
            })
            .inc();
        let labels = PluginLabels {
            plugin: plugin.to_owned(),
        };
        if result == "error" {
            self.reconcile_errors.get_or_create(&labels).inc();
        }
        if outcome == Outcome::FailedPermanent {
            self.terminal_errors.get_or_create(&labels).inc();
        }
        self.reconcile_time
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    /// Counts a plugin file loaded, compiled now or taken from the artifact cache.
    pub fn plugin_loaded(&self, origin: Origin) {
        let result = match origin {
            Origin::Compiled => "compiled",
            Origin::Cached => "cached",
        };
        self.loads.get_or_create(&ResultLabels { result }).inc();
    }

    /// Counts a plugin file refused, by the refusal's [bounded label](plugin::Error::metric_label).
    pub fn plugin_refused(&self, error: &plugin::Error) {
        self.plugin_refused_because(error.metric_label());
    }

    /// Counts a plugin file refused for a reason outside the loader's (e.g. `config` for
    /// an invalid `NAME.yaml`); `reason` must come from a fixed set.
    pub fn plugin_refused_because(&self, reason: &'static str) {
        self.loads
            .get_or_create(&ResultLabels { result: "refused" })
            .inc();
        self.refusals.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// Counts a loaded plugin whose controller could not start.
    pub fn plugin_start_failed(&self, error: &crate::controller::Error) {
        self.start_failures
            .get_or_create(&ReasonLabels {
                reason: error.metric_label(),
            })
            .inc();
    }

    /// Everything, encoded in `format`: the recorded series and what the sources report
    /// now.
    ///
    /// # Errors
    /// Only if encoding fails, which writing into a `String` does not.
    pub fn encode(&self, format: Format) -> Result<String, fmt::Error> {
        let mut out = String::new();
        match format {
            Format::OpenMetrics => {
                prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
            }
            Format::Prometheus => {
                prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?;
            }
        }
        Ok(out)
    }
}

/// controller-runtime's `result` label of an outcome.
fn result_label(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Success => "success",
        Outcome::SuccessRequeueAfter(_) => "requeue_after",
        Outcome::RetryNow => "requeue",
        Outcome::Failed | Outcome::FailedPermanent => "error",
        // Never recorded: a deferred lease did not reconcile.
        Outcome::Deferred => "deferred",
    }
}

impl Collector for Sources {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let mut scrape = Scrape::default();
        for source in self.0.lock().unwrap_or_else(PoisonError::into_inner).iter() {
            source(&mut scrape);
        }
        scrape.plugins.sort_by(|a, b| a.name.cmp(&b.name));
        scrape.stores.sort_by(|a, b| a.gvk().cmp(b.gvk()));
        encode_plugins(&mut encoder, &scrape.plugins)?;
        encode_queues(&mut encoder, &scrape.plugins)?;
        encode_stores(&mut encoder, &scrape.stores)
    }
}

fn encode_plugins(enc: &mut DescriptorEncoder, plugins: &[PluginState]) -> fmt::Result {
    if !plugins.is_empty() {
        let mut info = enc.encode_descriptor(
            "rekon_plugin",
            "The plugin version running.",
            None,
            MetricType::Info,
        )?;
        for p in plugins {
            info.encode_info(&[
                ("plugin", p.name.as_str()),
                ("version", p.version.as_str()),
                ("digest", p.digest.as_str()),
            ])?;
        }
    }
    let by_plugin = |pick: fn(&PluginState) -> u64| {
        plugins
            .iter()
            .map(move |p| ([("plugin", p.name.as_str())], pick(p)))
    };
    gauges(
        enc,
        "active_workers",
        "Reconciles running now.",
        by_plugin(|p| p.queue.in_flight() as u64),
    )?;
    gauges(
        enc,
        "max_concurrent_reconciles",
        "The plugin's concurrency limit.",
        by_plugin(|p| p.queue.config().max_concurrent as u64),
    )?;
    counters(
        enc,
        "rekon_plugin_calls",
        "Calls into the plugin (reconcile or finalize).",
        plugins.iter().map(|p| {
            (
                [("plugin", p.name.as_str())],
                Stats::get(&p.stats.reconciles),
            )
        }),
    )?;
    let faults: Vec<_> = plugins
        .iter()
        .flat_map(|p| {
            p.stats
                .faults()
                .into_iter()
                .map(move |(reason, n)| ([("plugin", p.name.as_str()), ("reason", reason)], n))
        })
        .collect();
    counters(
        enc,
        "rekon_plugin_faults",
        "Plugin calls without usable output, by reason.",
        faults,
    )?;
    let per_plugin: [(&str, &str, StatsCounter); 7] = [
        (
            "rekon_apply_writes",
            "Writes the API server accepted.",
            |s| &s.writes,
        ),
        (
            "rekon_apply_conflicts",
            "Plugin outputs stopped by a 409 conflict.",
            |s| &s.conflicts,
        ),
        (
            "rekon_apply_errors",
            "Plugin outputs stopped by another API error.",
            |s| &s.apply_errors,
        ),
        (
            "rekon_read_your_writes_waits",
            "Waits for the cache to show the key's previous writes.",
            |s| &s.ryw_waits,
        ),
        (
            "rekon_read_your_writes_timeouts",
            "Waits for the cache to show the key's previous writes that timed out.",
            |s| &s.ryw_timeouts,
        ),
        ("rekon_resyncs", "Periodic resync passes.", |s| &s.resyncs),
        (
            "rekon_thrash_fights",
            "Objects found rewritten back and forth with another writer (the primary is held).",
            |s| &s.thrash_fights,
        ),
    ];
    for (name, help, pick) in per_plugin {
        counters(
            enc,
            name,
            help,
            plugins
                .iter()
                .map(|p| ([("plugin", p.name.as_str())], Stats::get(pick(&p.stats)))),
        )?;
    }
    Ok(())
}

fn encode_queues(enc: &mut DescriptorEncoder, plugins: &[PluginState]) -> fmt::Result {
    let by_name = |pick: fn(&Queue<ObjectKey>) -> u64| {
        plugins
            .iter()
            .map(move |p| ([("name", p.name.as_str())], pick(&p.queue)))
    };
    gauges(
        enc,
        "workqueue_depth",
        "Keys waiting to run now.",
        by_name(|q| q.depth() as u64),
    )?;
    gauges(
        enc,
        "rekon_workqueue_delayed",
        "Keys waiting for a requeue-after or backoff delay.",
        by_name(|q| q.delayed() as u64),
    )?;
    counters(
        enc,
        "workqueue_adds",
        "Adds not collapsed into a waiting key.",
        by_name(Queue::adds_total),
    )?;
    counters(
        enc,
        "workqueue_retries",
        "Runs requeued after a failure or a conflict.",
        by_name(Queue::retries_total),
    )?;
    histograms(
        enc,
        "workqueue_queue_duration",
        "Time from a key being due to it being leased.",
        plugins
            .iter()
            .map(|p| ([("name", p.name.as_str())], p.queue.queue_duration())),
    )?;
    histograms(
        enc,
        "workqueue_work_duration",
        "Time from a key being leased to its run ending.",
        plugins
            .iter()
            .map(|p| ([("name", p.name.as_str())], p.queue.work_duration())),
    )
}

fn encode_stores(enc: &mut DescriptorEncoder, stores: &[Arc<KindStore>]) -> fmt::Result {
    let kinds: Vec<String> = stores.iter().map(|s| s.gvk().to_string()).collect();
    let by_kind = |pick: fn(&KindStore) -> u64| {
        stores
            .iter()
            .zip(&kinds)
            .map(move |(s, kind)| ([("kind", kind.as_str())], pick(s)))
    };
    gauges(
        enc,
        "rekon_cache_objects",
        "Objects in the kind's store.",
        by_kind(|s| s.len() as u64),
    )?;
    gauges(
        enc,
        "rekon_cache_bytes",
        "Estimated heap bytes of the kind's store.",
        by_kind(|s| s.approx_bytes() as u64),
    )?;
    gauges(
        enc,
        "rekon_cache_synced",
        "1 once the kind's first list completed.",
        by_kind(|s| u64::from(s.is_synced())),
    )?;
    counters(
        enc,
        "rekon_cache_rejected",
        "Objects from the watch that were not stored.",
        by_kind(KindStore::rejected),
    )?;
    counters(
        enc,
        "rekon_watch_restarts",
        "Watch failures, each restarted after backoff.",
        by_kind(KindStore::watch_restarts),
    )?;
    counters(
        enc,
        "rekon_watch_relists",
        "Complete lists after the first one.",
        by_kind(KindStore::relists),
    )
}

/// Encodes a counter family (`name` without `_total`; the encoder appends it). A family
/// without rows is left out, as the registry's encoders do.
fn counters<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (L, u64)>,
) -> fmt::Result {
    let mut rows = rows.into_iter().peekable();
    if rows.peek().is_none() {
        return Ok(());
    }
    let mut metric = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in rows {
        metric
            .encode_family(&labels)?
            .encode_counter::<NoLabelSet, _, u64>(&value, None)?;
    }
    Ok(())
}

fn gauges<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (L, u64)>,
) -> fmt::Result {
    let mut rows = rows.into_iter().peekable();
    if rows.peek().is_none() {
        return Ok(());
    }
    let mut metric = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in rows {
        metric.encode_family(&labels)?.encode_gauge(&value)?;
    }
    Ok(())
}

/// Encodes the queue's duration histograms (`name` without the `_seconds` unit).
fn histograms<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (L, queue::Histogram)>,
) -> fmt::Result {
    let mut rows = rows.into_iter().peekable();
    if rows.peek().is_none() {
        return Ok(());
    }
    let unit = Unit::Seconds;
    let mut metric = enc.encode_descriptor(name, help, Some(&unit), MetricType::Histogram)?;
    for (labels, histogram) in rows {
        let (sum, count, buckets) = classic_buckets(&histogram);
        metric
            .encode_family(&labels)?
            .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
    }
    Ok(())
}

/// The sum in seconds, the count, and per-bucket (not cumulative) counts ending with the
/// `+Inf` bucket, as the encoder takes them.
fn classic_buckets(histogram: &queue::Histogram) -> (f64, u64, Vec<(f64, u64)>) {
    let mut buckets = Vec::with_capacity(queue::Histogram::BOUNDS.len() + 1);
    let mut below = 0;
    for (bound, cumulative) in histogram.buckets() {
        buckets.push((bound.as_secs_f64(), cumulative - below));
        below = cumulative;
    }
    buckets.push((f64::INFINITY, histogram.count() - below));
    (histogram.sum().as_secs_f64(), histogram.count(), buckets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::GuestError;
    use crate::controller::queue::Priority;
    use crate::controller::store::testing::cm;
    use crate::plugin::Fault;
    use kube::runtime::watcher::Event;

    fn key(name: &str) -> ObjectKey {
        ObjectKey {
            namespace: Some("default".into()),
            name: name.into(),
        }
    }

    fn plugin(name: &str, stats: &Arc<Stats>, queue: &Queue<ObjectKey>) -> PluginState {
        PluginState {
            name: name.into(),
            version: "1.2.3".into(),
            digest: "ab12".into(),
            stats: stats.clone(),
            queue: queue.clone(),
        }
    }

    fn openmetrics(metrics: &Metrics) -> String {
        metrics.encode(Format::OpenMetrics).expect("encodes")
    }

    /// The exposition has exactly this sample line.
    #[track_caller]
    fn assert_sample(text: &str, line: &str) {
        assert!(
            text.lines().any(|l| l == line),
            "no line {line:?} in:\n{text}"
        );
    }

    #[test]
    fn a_reconcile_is_counted_by_result_and_timed() {
        let metrics = Metrics::new();
        let ms = Duration::from_millis;
        metrics.reconciled("web", Outcome::Success, ms(3));
        metrics.reconciled("web", Outcome::Success, ms(30));
        metrics.reconciled("web", Outcome::SuccessRequeueAfter(ms(100)), ms(30));
        metrics.reconciled("web", Outcome::RetryNow, ms(30));
        metrics.reconciled("web", Outcome::Failed, ms(30));
        metrics.reconciled("web", Outcome::FailedPermanent, ms(30));
        metrics.reconciled("pool", Outcome::Failed, Duration::from_secs(90));
        let text = openmetrics(&metrics);
        for line in [
            r#"reconcile_total{plugin="web",result="success"} 2"#,
            r#"reconcile_total{plugin="web",result="requeue_after"} 1"#,
            r#"reconcile_total{plugin="web",result="requeue"} 1"#,
            r#"reconcile_total{plugin="web",result="error"} 2"#,
            r#"reconcile_errors_total{plugin="web"} 2"#,
            r#"terminal_reconcile_errors_total{plugin="web"} 1"#,
            r#"reconcile_total{plugin="pool",result="error"} 1"#,
            r#"reconcile_time_seconds_count{plugin="web"} 6"#,
            r#"reconcile_time_seconds_bucket{le="0.005",plugin="web"} 1"#,
            r#"reconcile_time_seconds_bucket{le="0.05",plugin="web"} 6"#,
            r#"reconcile_time_seconds_bucket{le="60.0",plugin="pool"} 0"#,
            r#"reconcile_time_seconds_bucket{le="+Inf",plugin="pool"} 1"#,
            "# TYPE reconcile_time_seconds histogram",
            "# UNIT reconcile_time_seconds seconds",
        ] {
            assert_sample(&text, line);
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn a_fault_is_counted_by_its_bounded_reason() {
        let metrics = Metrics::new();
        let stats = Arc::new(Stats::default());
        let queue = Queue::new(queue::Config::default());
        let fault = Fault::Guest(GuestError::Permanent("missing field replicas".into()));
        stats.count_fault(fault.metric_label());
        stats.count_fault(fault.metric_label());
        stats.count_fault("timeout");
        stats
            .conflicts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let state = plugin("web", &stats, &queue);
        metrics.add_source(move |scrape| scrape.plugins.push(state.clone()));
        let text = openmetrics(&metrics);
        for line in [
            r#"rekon_plugin_faults_total{plugin="web",reason="guest_permanent"} 2"#,
            r#"rekon_plugin_faults_total{plugin="web",reason="timeout"} 1"#,
            r#"rekon_apply_conflicts_total{plugin="web"} 1"#,
            r#"rekon_apply_writes_total{plugin="web"} 0"#,
            r#"rekon_plugin_info{plugin="web",version="1.2.3",digest="ab12"} 1"#,
        ] {
            assert_sample(&text, line);
        }
        // Read at scrape time: a later fault shows in the next scrape.
        stats.count_fault("timeout");
        assert_sample(
            &openmetrics(&metrics),
            r#"rekon_plugin_faults_total{plugin="web",reason="timeout"} 2"#,
        );
    }

    #[tokio::test(start_paused = true)]
    async fn queue_adds_retries_and_depth_are_read_from_the_queue() {
        let metrics = Metrics::new();
        let stats = Arc::new(Stats::default());
        let queue: Queue<ObjectKey> = Queue::new(queue::Config {
            max_concurrent: 1,
            ..Default::default()
        });
        let state = plugin("web", &stats, &queue);
        metrics.add_source(move |scrape| scrape.plugins.push(state.clone()));
        queue.add(key("a"), Priority::Live);
        queue.add(key("a"), Priority::Live); // collapsed: not an add
        queue.add(key("b"), Priority::Resync);
        let lease = queue.next().await.expect("a is ready");
        tokio::time::advance(Duration::from_millis(20)).await;
        let text = openmetrics(&metrics);
        for line in [
            r#"workqueue_adds_total{name="web"} 2"#,
            r#"workqueue_depth{name="web"} 1"#,
            r#"active_workers{plugin="web"} 1"#,
            r#"max_concurrent_reconciles{plugin="web"} 1"#,
        ] {
            assert_sample(&text, line);
        }
        lease.done(Outcome::Failed);
        let text = openmetrics(&metrics);
        for line in [
            r#"workqueue_retries_total{name="web"} 1"#,
            r#"rekon_workqueue_delayed{name="web"} 1"#,
            r#"workqueue_work_duration_seconds_count{name="web"} 1"#,
            r#"workqueue_work_duration_seconds_sum{name="web"} 0.02"#,
            r#"workqueue_work_duration_seconds_bucket{le="0.01",name="web"} 0"#,
            r#"workqueue_work_duration_seconds_bucket{le="0.1",name="web"} 1"#,
            r#"workqueue_work_duration_seconds_bucket{le="+Inf",name="web"} 1"#,
            r#"active_workers{plugin="web"} 0"#,
        ] {
            assert_sample(&text, line);
        }
        // The backoff fires: a delayed add that counts when it fires.
        tokio::time::advance(Duration::from_millis(5)).await;
        assert_sample(
            &openmetrics(&metrics),
            r#"workqueue_adds_total{name="web"} 3"#,
        );
    }

    #[test]
    fn cache_objects_are_read_from_the_stores_at_scrape_time() {
        let metrics = Metrics::new();
        let sample = cm("a").ns("n");
        let store = Arc::new(KindStore::new(sample.gvk(), sample.resource(), true));
        let source = store.clone();
        metrics.add_source(move |scrape| scrape.stores.push(source.clone()));
        let text = openmetrics(&metrics);
        assert_sample(&text, r#"rekon_cache_objects{kind="v1 ConfigMap"} 0"#);
        assert_sample(&text, r#"rekon_cache_synced{kind="v1 ConfigMap"} 0"#);
        store.record_event(Event::Init);
        store.record_event(Event::InitApply(cm("a").ns("n").rv(1).build()));
        store.record_event(Event::InitApply(cm("b").ns("n").rv(2).build()));
        store.record_event(Event::InitDone);
        let text = openmetrics(&metrics);
        assert_sample(&text, r#"rekon_cache_objects{kind="v1 ConfigMap"} 2"#);
        assert_sample(&text, r#"rekon_cache_synced{kind="v1 ConfigMap"} 1"#);
        assert_sample(&text, r#"rekon_watch_relists_total{kind="v1 ConfigMap"} 0"#);
    }

    #[test]
    fn plugin_loads_are_counted_by_result_and_refusals_by_reason() {
        let metrics = Metrics::new();
        metrics.plugin_loaded(Origin::Compiled);
        metrics.plugin_loaded(Origin::Cached);
        metrics.plugin_loaded(Origin::Cached);
        metrics.plugin_refused(&plugin::Error::CoreModule);
        let text = openmetrics(&metrics);
        for line in [
            r#"rekon_plugin_loads_total{result="compiled"} 1"#,
            r#"rekon_plugin_loads_total{result="cached"} 2"#,
            r#"rekon_plugin_loads_total{result="refused"} 1"#,
            r#"rekon_plugin_refusals_total{reason="core_module"} 1"#,
        ] {
            assert_sample(&text, line);
        }
    }

    #[test]
    fn the_prometheus_text_format_has_no_eof_and_no_unit_line() {
        let metrics = Metrics::new();
        metrics.reconciled("web", Outcome::Success, Duration::from_millis(1));
        let text = metrics.encode(Format::Prometheus).expect("encodes");
        assert_sample(&text, r#"reconcile_total{plugin="web",result="success"} 1"#);
        assert_sample(&text, "# TYPE reconcile_total counter");
        assert!(
            !text.contains("# EOF") && !text.contains("# UNIT"),
            "{text}"
        );
    }
}
