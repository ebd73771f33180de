//! The scrape-time collector: at each scrape it asks its [sources](super::Metrics::add_source)
//! what runs now ([`Scrape`]) and encodes the owners' own counters — the controllers'
//! [`Stats`], their queues, the stores — so there is one source of truth per number.

use crate::contract::ObjectKey;
use crate::controller::queue::Queue;
use crate::controller::store::KindStore;
use crate::controller::{Controller, Histogram, Host, Stats};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};

/// One plugin as the scrape sees it: handles on the counters its owners keep.
#[derive(Debug, Clone)]
pub struct PluginState {
    /// The plugin's name (the `plugin` and `name` labels).
    pub name: String,
    /// Its controller's counters, which outlive the controller (see [`Stats`]).
    pub stats: Arc<Stats>,
    /// Its running controller; `None` while the plugin is stopped.
    pub running: Option<RunningState>,
}

/// A running plugin controller as the scrape sees it.
#[derive(Debug, Clone)]
pub struct RunningState {
    /// The version the plugin declares.
    pub version: String,
    /// sha256 of its component, hex.
    pub digest: String,
    /// Its work queue.
    pub queue: Queue<ObjectKey>,
}

impl RunningState {
    /// What a scrape reads from `controller`.
    pub fn of(controller: &Controller) -> Self {
        let plugin = controller.plugin();
        Self {
            version: plugin.metadata.version.clone(),
            digest: plugin.digest.clone(),
            queue: controller.queue().clone(),
        }
    }
}

/// What the [sources](super::Metrics::add_source) report at one scrape.
#[derive(Debug, Default)]
pub struct Scrape {
    /// The plugins: those running, and those that ran and stopped (their counters).
    pub plugins: Vec<PluginState>,
    /// The stores, one per watched kind.
    pub stores: Vec<Arc<KindStore>>,
}

impl Scrape {
    /// Adds what `host` runs: every plugin it has run, with its controller if running,
    /// and every store.
    pub fn add_host(&mut self, host: &Host) {
        let mut running: HashMap<String, Arc<Controller>> = host
            .controllers()
            .into_iter()
            .map(|c| (c.plugin().name().to_owned(), c))
            .collect();
        for (name, stats) in host.stats() {
            let running = running.remove(&name).map(|c| RunningState::of(&c));
            self.plugins.push(PluginState {
                name,
                stats,
                running,
            });
        }
        // Started between the two reads.
        for (name, c) in running {
            self.plugins.push(PluginState {
                name,
                stats: c.stats().clone(),
                running: Some(RunningState::of(&c)),
            });
        }
        let stores = host.stores();
        self.stores
            .extend(stores.kinds().iter().filter_map(|k| stores.store(k)));
    }
}

type Source = Box<dyn Fn(&mut Scrape) + Send + Sync>;

/// The sources, shared between [`super::Metrics`] and this collector in its registry.
#[derive(Default)]
pub(super) struct Sources(Mutex<Vec<Source>>);

impl Sources {
    pub(super) fn push(&self, source: Source) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(source);
    }
}

impl fmt::Debug for Sources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.lock().unwrap_or_else(PoisonError::into_inner).len();
        f.debug_struct("Sources").field("count", &n).finish()
    }
}

/// Picks one counter out of a plugin's [`Stats`].
type StatsCounter = fn(&Stats) -> &AtomicU64;

impl Collector for Sources {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let mut scrape = Scrape::default();
        for source in self.0.lock().unwrap_or_else(PoisonError::into_inner).iter() {
            source(&mut scrape);
        }
        scrape.plugins.sort_by(|a, b| a.name.cmp(&b.name));
        scrape.stores.sort_by(|a, b| a.gvk().cmp(b.gvk()));
        encode_reconciles(&mut encoder, &scrape.plugins)?;
        encode_plugins(&mut encoder, &scrape.plugins)?;
        encode_queues(&mut encoder, &scrape.plugins)?;
        encode_stores(&mut encoder, &scrape.stores)
    }
}

/// The running plugins, with their name.
fn running(plugins: &[PluginState]) -> impl Iterator<Item = (&str, &RunningState)> + Clone {
    plugins
        .iter()
        .filter_map(|p| Some((p.name.as_str(), p.running.as_ref()?)))
}

/// controller-runtime's reconcile metrics, from the controllers' [`Stats`].
fn encode_reconciles(enc: &mut DescriptorEncoder, plugins: &[PluginState]) -> fmt::Result {
    let results: [(&str, StatsCounter); 4] = [
        ("success", |s| &s.results.success),
        ("requeue_after", |s| &s.results.requeue_after),
        ("requeue", |s| &s.results.requeue),
        ("error", |s| &s.results.error),
    ];
    counters(
        enc,
        "reconcile",
        "Reconciles per plugin and result (success, requeue_after, requeue, error).",
        plugins.iter().flat_map(|p| {
            results.iter().map(move |(result, pick)| {
                (
                    [("plugin", p.name.as_str()), ("result", *result)],
                    Stats::read(pick(&p.stats)),
                )
            })
        }),
    )?;
    per_plugin_counters(
        enc,
        plugins,
        [
            (
                "reconcile_errors",
                "Reconciles per plugin that ended in an error.",
                |s| &s.results.error,
            ),
            (
                "terminal_reconcile_errors",
                "Reconciles per plugin that ended in an error not retried until the object changes.",
                |s| &s.results.terminal,
            ),
        ],
    )?;
    histograms(
        enc,
        "reconcile_time",
        "Time per reconcile, from lease to outcome.",
        plugins
            .iter()
            .map(|p| ([("plugin", p.name.as_str())], p.stats.reconcile_time())),
    )
}

fn encode_plugins(enc: &mut DescriptorEncoder, plugins: &[PluginState]) -> fmt::Result {
    let mut running = running(plugins).peekable();
    if running.peek().is_some() {
        let mut info = enc.encode_descriptor(
            "rekon_plugin",
            "The plugin version running.",
            None,
            MetricType::Info,
        )?;
        for (name, r) in running {
            info.encode_info(&[
                ("plugin", name),
                ("version", r.version.as_str()),
                ("digest", r.digest.as_str()),
            ])?;
        }
    }
    let by_plugin = |pick: fn(&RunningState) -> u64| {
        self::running(plugins).map(move |(name, r)| ([("plugin", name)], pick(r)))
    };
    gauges(
        enc,
        "active_workers",
        "Reconciles running now.",
        by_plugin(|r| r.queue.in_flight() as u64),
    )?;
    gauges(
        enc,
        "max_concurrent_reconciles",
        "The plugin's concurrency limit.",
        by_plugin(|r| r.queue.config().max_concurrent as u64),
    )?;
    by_reason(
        enc,
        plugins,
        "rekon_plugin_faults",
        "Plugin calls without usable output, by reason.",
        Stats::faults,
    )?;
    by_reason(
        enc,
        plugins,
        "rekon_write_errors",
        "Plugin outputs stopped by an error other than a conflict, by reason (not_owned, already_exists, fenced, timeout, ...).",
        Stats::write_errors,
    )?;
    let per_plugin: [(&str, &str, StatsCounter); 10] = [
        (
            "rekon_plugin_calls",
            "Calls into the plugin (reconcile or finalize).",
            |s| &s.reconciles,
        ),
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
            |s| &s.own_write_waits,
        ),
        (
            "rekon_read_your_writes_timeouts",
            "Deadlines passed waiting for the cache to show the key's previous writes (the key keeps waiting).",
            |s| &s.own_write_overdue,
        ),
        ("rekon_resyncs", "Periodic resync passes.", |s| &s.resyncs),
        (
            "rekon_thrash_fights",
            "Objects found rewritten back and forth with another writer (the primary is held).",
            |s| &s.thrash_fights,
        ),
        (
            "rekon_finalizers_released",
            "Finalizers released without cleanup because the plugin no longer declares them.",
            |s| &s.finalizers_released,
        ),
        (
            "rekon_finalizers_orphaned",
            "Primaries being deleted left with the finalizer of a removed plugin.",
            |s| &s.finalizers_orphaned,
        ),
    ];
    per_plugin_counters(enc, plugins, per_plugin)
}

/// One counter family per entry, a series per plugin.
fn per_plugin_counters<const N: usize>(
    enc: &mut DescriptorEncoder,
    plugins: &[PluginState],
    families: [(&str, &str, StatsCounter); N],
) -> fmt::Result {
    for (name, help, pick) in families {
        counters(
            enc,
            name,
            help,
            plugins
                .iter()
                .map(|p| ([("plugin", p.name.as_str())], Stats::read(pick(&p.stats)))),
        )?;
    }
    Ok(())
}

/// A counter family labelled by plugin and by the bounded reasons `counts` reports.
fn by_reason(
    enc: &mut DescriptorEncoder,
    plugins: &[PluginState],
    name: &str,
    help: &str,
    counts: fn(&Stats) -> std::collections::BTreeMap<&'static str, u64>,
) -> fmt::Result {
    let rows: Vec<_> = plugins
        .iter()
        .flat_map(|p| {
            counts(&p.stats)
                .into_iter()
                .map(move |(reason, n)| ([("plugin", p.name.as_str()), ("reason", reason)], n))
        })
        .collect();
    counters(enc, name, help, rows)
}

fn encode_queues(enc: &mut DescriptorEncoder, plugins: &[PluginState]) -> fmt::Result {
    let by_name = |pick: fn(&Queue<ObjectKey>) -> u64| {
        running(plugins).map(move |(name, r)| ([("name", name)], pick(&r.queue)))
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
        running(plugins).map(|(name, r)| ([("name", name)], r.queue.queue_duration())),
    )?;
    histograms(
        enc,
        "workqueue_work_duration",
        "Time from a key being leased to its run ending.",
        running(plugins).map(|(name, r)| ([("name", name)], r.queue.work_duration())),
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

/// Encodes duration histograms (`name` without the `_seconds` unit).
fn histograms<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (L, Histogram)>,
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
fn classic_buckets(histogram: &Histogram) -> (f64, u64, Vec<(f64, u64)>) {
    let mut buckets = Vec::with_capacity(histogram.bounds().len() + 1);
    let mut below = 0;
    for (bound, cumulative) in histogram.buckets() {
        buckets.push((bound.as_secs_f64(), cumulative - below));
        below = cumulative;
    }
    buckets.push((f64::INFINITY, histogram.count() - below));
    (histogram.sum().as_secs_f64(), histogram.count(), buckets)
}
