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
//! | `rekon_write_errors_total` | `plugin`, `reason` | outputs stopped by an error other than a conflict, by the error's bounded label (`not_owned`, `already_exists`, `fenced`, `timeout`, …) |
//! | `rekon_finalizers_released_total` | `plugin` | finalizers a new version no longer declares, released without cleanup |
//! | `rekon_finalizers_orphaned_total` | `plugin` | primaries being deleted left with a removed plugin's finalizer |
//! | `rekon_read_your_writes_waits_total` | `plugin` | waits for the cache to show the key's previous writes |
//! | `rekon_read_your_writes_timeouts_total` | `plugin` | deadlines such waits passed (the key keeps waiting, `CacheLagging` Warning Event) |
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
//! Each number has one owner, which counts it where it happens, in plain counters that
//! know nothing of Prometheus: the controller ([`Stats`](crate::controller::Stats): reconcile results and times,
//! plugin calls, faults, writes), its queue ([`Queue`](crate::controller::queue::Queue)
//! accessors) and the stores ([`KindStore`](crate::controller::store::KindStore)). At each
//! scrape the collector (`scrape.rs`) asks the [sources](Metrics::add_source) what runs
//! ([`Scrape::add_host`] reads a [`Host`]) and encodes those counters.
//!
//! Only what no controller sees is recorded here, as it happens: plugin files loaded or
//! refused and controllers that could not start ([`Metrics::plugin_loaded`] and friends,
//! called by the operator's plugin set).
//!
//! This module sits above [`crate::controller`]: it reads the controller, never the
//! reverse. The process wires the two together (`rekon run`; tests use
//! [`Metrics::for_host`]).
//!
//! # Caveats
//! A plugin's controller counters ([`Stats`](crate::controller::Stats)) are kept per plugin name for the life of the
//! process: a hot reload that restarts its controller continues them, and they are still
//! reported after the plugin stops. What belongs to the running controller — `rekon_plugin_info`,
//! `active_workers`, `max_concurrent_reconciles` and the `workqueue_*` series — disappears
//! when the plugin stops, and a restarted controller's queue counts from zero (Prometheus
//! treats that as a counter reset).

mod scrape;

pub use scrape::{PluginState, RunningState, Scrape};

use crate::controller::Host;
use crate::plugin::{self, Origin};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use scrape::Sources;
use std::fmt;
use std::sync::Arc;

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

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
        let loads = Family::default();
        let refusals = Family::default();
        let start_failures = Family::default();
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
            loads,
            refusals,
            start_failures,
            sources,
        }
    }

    /// Metrics whose scrapes read `host`: its plugins' counters, running controllers and
    /// queues, and its stores.
    pub fn for_host(host: &Host) -> Arc<Self> {
        let metrics = Arc::new(Self::new());
        let host = host.clone();
        metrics.add_source(move |scrape| scrape.add_host(&host));
        metrics
    }

    /// Adds a source: at every scrape, `source` reports what it runs into the [`Scrape`].
    ///
    /// # Caveats
    /// The source runs on the scraping task while the metrics' source list is locked: it
    /// must be quick and must not record metrics itself. A source that holds what holds
    /// these metrics would make a reference cycle: hold such things weakly.
    pub fn add_source(&self, source: impl Fn(&mut Scrape) + Send + Sync + 'static) {
        self.sources.push(Box::new(source));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::{GuestError, ObjectKey};
    use crate::controller::Stats;
    use crate::controller::queue::{self, Outcome, Priority, Queue};
    use crate::controller::store::KindStore;
    use crate::controller::store::testing::cm;
    use crate::plugin::Fault;
    use kube::runtime::watcher::Event;
    use std::time::Duration;

    fn key(name: &str) -> ObjectKey {
        ObjectKey {
            namespace: Some("default".into()),
            name: name.into(),
        }
    }

    fn plugin(name: &str, stats: &Arc<Stats>, queue: &Queue<ObjectKey>) -> PluginState {
        PluginState {
            name: name.into(),
            stats: stats.clone(),
            running: Some(RunningState {
                version: "1.2.3".into(),
                digest: "ab12".into(),
                queue: queue.clone(),
            }),
        }
    }

    /// Metrics reading the counters of stopped plugins, by name.
    fn reading(stats: &[(&str, &Arc<Stats>)]) -> Metrics {
        let metrics = Metrics::new();
        let plugins: Vec<PluginState> = stats
            .iter()
            .map(|(name, stats)| PluginState {
                name: (*name).to_owned(),
                stats: Arc::clone(stats),
                running: None,
            })
            .collect();
        metrics.add_source(move |scrape| scrape.plugins.extend(plugins.iter().cloned()));
        metrics
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
        let (web, pool) = (Arc::new(Stats::default()), Arc::new(Stats::default()));
        let metrics = reading(&[("web", &web), ("pool", &pool)]);
        let ms = Duration::from_millis;
        web.record_reconcile(Outcome::Success, ms(3));
        web.record_reconcile(Outcome::Success, ms(30));
        web.record_reconcile(Outcome::SuccessRequeueAfter(ms(100)), ms(30));
        web.record_reconcile(Outcome::RetryNow, ms(30));
        web.record_reconcile(Outcome::Failed, ms(30));
        web.record_reconcile(Outcome::FailedPermanent, ms(30));
        web.record_reconcile(Outcome::Deferred, ms(30)); // not a reconcile
        pool.record_reconcile(Outcome::Failed, Duration::from_secs(90));
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
        let web = Arc::new(Stats::default());
        let metrics = reading(&[("web", &web)]);
        web.record_reconcile(Outcome::Success, Duration::from_millis(1));
        let text = metrics.encode(Format::Prometheus).expect("encodes");
        assert_sample(&text, r#"reconcile_total{plugin="web",result="success"} 1"#);
        assert_sample(&text, "# TYPE reconcile_total counter");
        assert!(
            !text.contains("# EOF") && !text.contains("# UNIT"),
            "{text}"
        );
    }
}
