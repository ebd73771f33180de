//! One plugin's controller: events → keys → queue → snapshot → plugin → write.
//!
//! # Guarantees
//! - One reconcile at a time per key, distinct keys concurrently (the queue), each call
//!   in a fresh sandbox instance on a blocking thread, bounded by the host's sandbox
//!   slots.
//! - Level-triggered: a change to a watched object enqueues the primaries it maps to,
//!   before and after the change (an object relabelled from one primary to another
//!   concerns both).
//! - Read your writes ([`super::expectations`]): a key whose previous writes the stores
//!   do not show yet is set aside without holding a worker, and is never decided on a
//!   view older than its own writes.
//! - A 409 conflict drops the rest of the output and decides again promptly on fresh
//!   state; repeated conflicts of one key back off like failures. Other failures back off
//!   per key and record a Warning Event on the primary. The plugin's own events are
//!   recorded only when its whole output was written.

use super::expectations::{Check, Expectations};
use super::finalizer::{self, Step};
use super::mapping;
use super::queue::{Lease, Outcome, Priority, Queue};
use super::store::{Change, KindStore, Stored, Stores};
use super::thrash::{Fight, ThrashGuard};
use super::{Config, PluginOptions, Stats};
use crate::contract::{
    Event, EventType, Export, GuestError, Gvk, KeyMapping, Mutation, ObjectKey, Output, Request,
    Target, meta,
};
use crate::plugin::{Fault, Loaded};
use crate::sandbox::{CacheView, Clock};
use crate::selector::Selector;
use crate::write::events::Recorder;
use crate::write::{Applier, Context, Snapshot, Written};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::task::JoinSet;
use tracing::Instrument;

/// What a controller shares with the host.
#[derive(Clone)]
pub(super) struct HostParts {
    pub stores: Stores,
    pub applier: Applier,
    pub recorder: Recorder,
    pub sandbox_slots: super::slots::Slots,
    pub config: Config,
}

/// What a plugin's controller keeps across restarts (a hot reload that changes its
/// declaration starts a new controller): read-your-writes expectations, the thrash
/// guard's history and the counters.
pub(super) struct Memory {
    pub expectations: Expectations,
    pub thrash: ThrashGuard,
    pub stats: Arc<Stats>,
}

/// A running plugin controller.
pub struct Controller {
    plugin: RwLock<Loaded>,
    queue: Queue<ObjectKey>,
    stats: Arc<Stats>,
    memory: Arc<Memory>,
    /// This controller instance, among every one the process started.
    instance: u64,
    primary: Arc<KindStore>,
    watched: Vec<(KeyMapping, Arc<KindStore>)>,
    host: HostParts,
    options: PluginOptions,
}

impl Controller {
    pub(super) fn new(
        plugin: Loaded,
        primary: Arc<KindStore>,
        watched: Vec<(KeyMapping, Arc<KindStore>)>,
        host: HostParts,
        memory: Arc<Memory>,
        options: PluginOptions,
    ) -> Self {
        static INSTANCES: AtomicU64 = AtomicU64::new(0);
        let queue = Queue::new(super::queue::Config {
            max_concurrent: options
                .concurrency
                .unwrap_or(host.config.max_concurrent_reconciles),
            ..Default::default()
        });
        Self {
            plugin: RwLock::new(plugin),
            queue,
            stats: memory.stats.clone(),
            memory,
            instance: INSTANCES.fetch_add(1, Ordering::Relaxed),
            primary,
            watched,
            host,
            options,
        }
    }

    /// The plugin's counters (its predecessors' included, see [`Stats`]).
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// The work queue.
    pub fn queue(&self) -> &Queue<ObjectKey> {
        &self.queue
    }

    /// Whether every store this plugin uses (its primary, watched and read kinds) has
    /// completed its first list.
    pub fn is_synced(&self) -> bool {
        self.stores().iter().all(|s| s.is_synced())
    }

    /// Resolves once every store this plugin uses has completed its first list.
    ///
    /// # Caveats
    /// Never resolves while a watch cannot list (e.g. the host may not list the kind).
    pub async fn synced(&self) {
        for store in self.stores() {
            store.synced().await;
        }
    }

    fn stores(&self) -> Vec<Arc<KindStore>> {
        let reads = self.plugin().metadata.reads.clone();
        std::iter::once(self.primary.clone())
            .chain(self.watched.iter().map(|(_, store)| store.clone()))
            .chain(reads.iter().filter_map(|k| self.host.stores.store(k)))
            .collect()
    }

    /// The plugin version in use.
    pub fn plugin(&self) -> Loaded {
        self.plugin
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the plugin version: reconciles already running finish on the old one.
    pub fn replace_plugin(&self, plugin: Loaded) {
        *self.plugin.write().unwrap_or_else(|e| e.into_inner()) = plugin;
        self.enqueue_all(Priority::Live);
    }

    fn enqueue_all(&self, priority: Priority) {
        for o in self.primary.list(None, &Selector::default()) {
            self.enqueue(key_of(&o), priority);
        }
    }

    /// Queues `key` unless the plugin's options exclude its namespace. A primary being
    /// deleted that carries the plugin's finalizer is always admitted: a change of
    /// `namespaces` must not leave it Terminating.
    fn enqueue(&self, mut key: ObjectKey, priority: Priority) {
        if !self.primary.is_namespaced() {
            // A child in a namespace maps to its cluster-scoped owner: one key per
            // primary, however it was found (docs/design.md, invariant 1).
            key.namespace = None;
        }
        if self.options.admits(&key) || self.must_finalize(&key) {
            self.queue.add(key, priority);
        }
    }

    /// The primaries being deleted that carry a finalizer of this plugin.
    pub(super) fn orphaned_by_removal(&self) -> Vec<Arc<Stored>> {
        let plugin = self.plugin();
        self.primary
            .list(None, &Selector::default())
            .into_iter()
            .filter(|o| {
                o.is_deleting()
                    && finalizer::carries(
                        plugin.name(),
                        plugin.metadata.finalizer.as_deref(),
                        &o.to_value(),
                    )
            })
            .collect()
    }

    /// Whether the primary `key` is being deleted and carries a finalizer of this plugin.
    fn must_finalize(&self, key: &ObjectKey) -> bool {
        let plugin = self.plugin();
        self.primary
            .get(key.namespace.as_deref(), &key.name)
            .is_some_and(|o| {
                o.is_deleting()
                    && finalizer::carries(
                        plugin.name(),
                        plugin.metadata.finalizer.as_deref(),
                        &o.to_value(),
                    )
            })
    }

    /// Spawns the event, resync and worker tasks onto `tasks`.
    pub(super) fn spawn(self: &Arc<Self>, tasks: &mut JoinSet<()>) {
        let this = self.clone();
        let mut changes = self.primary.subscribe();
        // Subscribe, then list: a store another plugin already synced sends no events
        // for what it holds, and a change in between arrives on the channel as well.
        self.enqueue_all(Priority::Live);
        tasks.spawn(async move {
            while let Some(change) = changes.recv().await {
                if let Change::Upserted { object: o, .. } | Change::Deleted(o) = change {
                    this.enqueue(key_of(&o), Priority::Live);
                }
            }
        });
        for (mapping, store) in &self.watched {
            let this = self.clone();
            let mapping = mapping.clone();
            let kind = store.gvk().clone();
            let mut changes = store.subscribe();
            tasks.spawn(async move {
                while let Some(change) = changes.recv().await {
                    let (object, previous) = match change {
                        Change::Upserted { object, previous } => (object, previous),
                        Change::Deleted(object) => (object, None),
                        Change::Relisted => continue,
                    };
                    let mut keys = this.keys_for(&mapping, &kind, &object).await;
                    if let Some(previous) = previous {
                        keys.extend(this.keys_for(&mapping, &kind, &previous).await);
                    }
                    keys.sort();
                    keys.dedup();
                    for key in keys {
                        this.enqueue(key, Priority::Live);
                    }
                }
            });
        }
        let this = self.clone();
        tasks.spawn(async move { this.resync_loop().await });
        let this = self.clone();
        tasks.spawn(async move {
            // No decision on a partial view: wait until every store the plugin reads
            // has completed its first list.
            this.synced().await;
            let mut running = JoinSet::new();
            while let Some(lease) = this.queue.next().await {
                let worker = this.clone();
                running.spawn(async move { worker.process(lease).await });
                while running.try_join_next().is_some() {}
            }
            while running.join_next().await.is_some() {}
        });
    }

    /// Stops handing out work; resolves when in-flight reconciles have finished.
    pub async fn stop(&self) {
        self.queue.shutdown();
        self.queue.drained().await;
    }

    /// The primaries a watched object of `kind` maps to.
    async fn keys_for(&self, mapping: &KeyMapping, kind: &Gvk, object: &Stored) -> Vec<ObjectKey> {
        match mapping {
            KeyMapping::Custom => self.custom_keys(kind, object.json_str()).await,
            m => mapping::keys_for(m, self.primary.gvk(), &object.to_value()),
        }
    }

    async fn custom_keys(&self, kind: &Gvk, object: &str) -> Vec<ObjectKey> {
        let plugin = self.plugin();
        let cache: Arc<dyn CacheView> = Arc::new(self.host.stores.clone());
        let (kind, object) = (kind.clone(), object.to_owned());
        let _slot = self.host.sandbox_slots.acquire(plugin.name()).await;
        let call =
            tokio::task::spawn_blocking(move || plugin.map_to_primaries(&kind, &object, cache))
                .await;
        match call.map(|c| c.result) {
            Ok(Ok(keys)) => keys,
            Ok(Err(fault)) => {
                self.stats.count_fault(fault.metric_label());
                tracing::warn!(plugin = %self.plugin().name(), error = %fault, "map-to-primaries failed");
                Vec::new()
            }
            Err(e) => {
                tracing::error!(error = %e, "map-to-primaries task failed");
                Vec::new()
            }
        }
    }

    fn resync_period(&self) -> Duration {
        let configured = self.options.resync.or(self.host.config.resync_override);
        configured.unwrap_or_else(|| {
            self.plugin()
                .metadata
                .resync_seconds
                .map(|s| Duration::from_secs(u64::from(s)))
                .unwrap_or(self.host.config.resync_default)
        })
    }

    async fn resync_loop(&self) {
        self.primary.synced().await;
        loop {
            tokio::time::sleep(jittered(self.resync_period())).await;
            self.stats.resyncs.fetch_add(1, Ordering::Relaxed);
            self.enqueue_all(Priority::Resync);
        }
    }

    async fn process(self: Arc<Self>, lease: Lease<ObjectKey>) {
        let key = lease.key().clone();
        if self.defer_until_writes_shown(&key).await {
            // Give the worker back; the key comes back once the stores show its writes.
            lease.done(Outcome::Deferred);
            return;
        }
        let plugin = self.plugin();
        let span = tracing::info_span!("reconcile", plugin = %plugin.name(), kind = %plugin.metadata.primary.kind, key = %key);
        let started = tokio::time::Instant::now();
        let outcome = self.reconcile(&plugin, &key).instrument(span).await;
        self.stats.record_reconcile(outcome, started.elapsed());
        lease.done(outcome);
    }

    /// Whether `key` must wait for the stores to show its previous writes (docs/design.md, invariant 4).
    /// When so, the queue re-adds it at the deadline, and a waiter re-adds it as soon as
    /// the writes are shown; past a deadline the lag is reported and the key waits on.
    async fn defer_until_writes_shown(self: &Arc<Self>, key: &ObjectKey) -> bool {
        let now = tokio::time::Instant::now();
        let timeout = self.host.config.read_your_writes_timeout;
        let check =
            self.memory
                .expectations
                .check(key, &self.host.stores, self.instance, timeout, now);
        let Check::Wait {
            until,
            start_waiter,
            first,
            overdue,
        } = check
        else {
            return false;
        };
        if first {
            self.stats.own_write_waits.fetch_add(1, Ordering::Relaxed);
        }
        self.queue
            .add_after(key.clone(), until.saturating_duration_since(now));
        if start_waiter {
            let (this, key) = (self.clone(), key.clone());
            tokio::spawn(async move {
                this.memory
                    .expectations
                    .wait(&key, &this.host.stores, until)
                    .await;
                // Only while still deferred: a key another event already ran is not
                // enqueued a second time for the same event.
                if this.memory.expectations.is_deferred(&key) {
                    this.queue.add(key, Priority::Live);
                }
            });
        }
        if overdue > 0 {
            self.report_lag(key, overdue).await;
        }
        true
    }

    /// Reports that the stores did not show a key's own writes within the deadline.
    async fn report_lag(&self, key: &ObjectKey, overdue: u32) {
        self.stats.own_write_overdue.fetch_add(1, Ordering::Relaxed);
        let waiting = self.memory.expectations.describe(key).join(", ");
        let waited = self.host.config.read_your_writes_timeout * overdue;
        tracing::warn!(%key, ?waited, %waiting, "the cache has not caught up with this primary's own writes; not deciding on an older view");
        if overdue > 1 {
            return;
        }
        let Some(primary) = self.primary.get(key.namespace.as_deref(), &key.name) else {
            return;
        };
        let note = format!(
            "the host's cache has not shown this primary's own writes for {waited:?} \
             ({waiting}); the plugin is not called on an older view until it does"
        );
        let event = Event {
            event_type: EventType::Warning,
            reason: "CacheLagging".into(),
            note,
        };
        self.record_event(&self.plugin(), &primary.to_value(), event)
            .await;
    }

    async fn reconcile(&self, plugin: &Loaded, key: &ObjectKey) -> Outcome {
        let Some(stored) = self.primary.get(key.namespace.as_deref(), &key.name) else {
            return Outcome::Success;
        };
        // The thrash hold slows reconciles down; it never delays a finalization.
        if !stored.is_deleting()
            && let Some(left) = self.memory.thrash.held(key, std::time::Instant::now())
        {
            tracing::debug!(?left, "held by the thrash guard");
            return Outcome::SuccessRequeueAfter(left);
        }
        let primary = stored.to_value();
        let finalizer = plugin.metadata.finalizer.clone();
        let step = finalizer::step(
            plugin.name(),
            finalizer.as_deref(),
            &primary,
            stored.is_deleting(),
        );
        let (finalize, remove) = match step {
            Step::Skip => return Outcome::Success,
            Step::Patch { patch, released } => {
                let outcome = self.patch_metadata(plugin, key, &primary, patch).await;
                if let (Some(old), Outcome::Success) = (released, outcome) {
                    self.report_released(plugin, &primary, &old).await;
                }
                return outcome;
            }
            Step::Call { finalize, remove } => (finalize, remove),
        };
        let related = self.related(&primary);
        let output = match self.call(plugin, &stored, &related, finalize).await {
            Ok(output) => output,
            Err(outcome) => return outcome,
        };
        let outcome = self.write(plugin, key, &primary, &related, &output).await;
        if finalize && outcome == Outcome::Success && output.requeue_after_ms.is_none() {
            let rest = finalizer::without(&primary, &remove);
            let mut fresh = primary.clone();
            if let Some(rv) = self.memory.expectations.latest(key, self.primary.gvk()) {
                fresh["metadata"]["resourceVersion"] = json!(rv);
            }
            let patch = json!({"metadata": {"finalizers": rest}});
            return self.patch_metadata(plugin, key, &fresh, patch).await;
        }
        outcome
    }

    /// Reports a finalizer released without cleanup (the plugin no longer declares it).
    async fn report_released(&self, plugin: &Loaded, primary: &Value, old: &str) {
        self.stats
            .finalizers_released
            .fetch_add(1, Ordering::Relaxed);
        let note = format!(
            "plugin {} no longer declares the finalizer {old:?} its earlier version added; \
             released without cleanup",
            plugin.name()
        );
        tracing::warn!(
            finalizer = old,
            "finalizer released: the plugin no longer declares it"
        );
        let event = Event {
            event_type: EventType::Warning,
            reason: "FinalizerReleased".into(),
            note,
        };
        self.record_event(plugin, primary, event).await;
    }

    /// Calls the plugin (`reconcile`, or `finalize`) in a sandbox slot.
    async fn call(
        &self,
        plugin: &Loaded,
        stored: &Stored,
        related: &[Value],
        finalize: bool,
    ) -> Result<Output, Outcome> {
        let request = Request {
            primary: stored.json_str().to_owned(),
            related: related.iter().map(Value::to_string).collect(),
            settings: self.options.settings.clone(),
        };
        self.stats.reconciles.fetch_add(1, Ordering::Relaxed);
        let cache: Arc<dyn CacheView> = Arc::new(self.host.stores.clone());
        let call_plugin = plugin.clone();
        let slot = self.host.sandbox_slots.acquire(plugin.name()).await;
        let entry = if finalize {
            Export::Finalize
        } else {
            Export::Reconcile
        };
        let call = tokio::task::spawn_blocking(move || {
            call_plugin.decide(entry, &request, Clock::System, cache)
        })
        .await;
        drop(slot);
        let call = match call {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "reconcile task failed");
                return Err(Outcome::Failed);
            }
        };
        for line in &call.logs {
            line.emit(plugin.name());
        }
        match call.result {
            Ok(output) => Ok(output),
            Err(fault) => Err(self.report_fault(plugin, &stored.to_value(), fault).await),
        }
    }

    fn related(&self, primary: &Value) -> Vec<Value> {
        let uid = meta(primary, "uid").unwrap_or_default();
        let ns = meta(primary, "namespace");
        let name = meta(primary, "name").unwrap_or_default();
        let mut out = Vec::new();
        for (mapping, store) in &self.watched {
            let objects = match mapping {
                KeyMapping::OwnerReference => store.owned_by(uid),
                KeyMapping::Label(l) => match Selector::parse(&format!("{l}={name}")) {
                    Ok(sel) => store.list(ns, &sel),
                    Err(_) => Vec::new(),
                },
                KeyMapping::Custom => Vec::new(),
            };
            out.extend(objects.iter().map(|o| o.to_value()));
        }
        out
    }

    /// Writes the plugin's output and turns the result into the lease's outcome.
    async fn write(
        &self,
        plugin: &Loaded,
        key: &ObjectKey,
        primary: &Value,
        related: &[Value],
        output: &Output,
    ) -> Outcome {
        let snapshot = Snapshot::new(std::iter::once(primary).chain(related));
        let now = jiff::Timestamp::now().to_string();
        let cx = Context {
            plugin: plugin.name(),
            primary,
            snapshot: &snapshot,
            children: related,
            adopt: &self.options.adopt,
            now: &now,
        };
        let report = self.host.applier.write_output(&cx, output).await;
        self.stats
            .writes
            .fetch_add(report.written.len() as u64, Ordering::Relaxed);
        self.watch_for_fights(plugin, key, primary, &report.written)
            .await;
        self.memory
            .expectations
            .record(key, &report.written, &self.host.stores);
        match report.stopped {
            None => {
                for e in &output.events {
                    self.record_event(plugin, primary, e.clone()).await;
                }
                match output.requeue_after_ms {
                    Some(ms) => Outcome::SuccessRequeueAfter(Duration::from_millis(ms)),
                    None => Outcome::Success,
                }
            }
            Some(e @ crate::write::Error::Gone { .. }) => {
                // The cache still shows an object the API server no longer has: decide
                // again once it shows it gone (read-your-writes), not on this view.
                if let Some(vanished) = e.vanished() {
                    self.memory
                        .expectations
                        .record_vanished(key, vanished, &self.host.stores);
                }
                self.stats.count_write_error(e.metric_label());
                tracing::debug!(error = %e, "gone; deciding again once the cache shows it");
                Outcome::RetryNow
            }
            Some(e) if e.is_conflict() => {
                // The output was decided on a view that is no longer current: its events
                // are dropped with it.
                self.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "conflict; reconciling again on fresh state");
                Outcome::RetryNow
            }
            Some(e @ crate::write::Error::Fenced { .. }) => {
                // Not the leader (any more): nothing was written, and nothing can be
                // reported; the process is about to exit or stands by.
                self.stats.count_write_error(e.metric_label());
                tracing::debug!(error = %e, "output dropped: this process may not write");
                Outcome::Failed
            }
            Some(e) => {
                self.stats.apply_errors.fetch_add(1, Ordering::Relaxed);
                self.stats.count_write_error(e.metric_label());
                tracing::warn!(error = %e, "writing the plugin's output failed");
                let warning = Event {
                    event_type: EventType::Warning,
                    reason: e.event_reason().into(),
                    note: e.to_string(),
                };
                self.record_event(plugin, primary, warning).await;
                Outcome::Failed
            }
        }
    }

    /// Feeds the writes to the thrash guard and reports a fight it finds.
    async fn watch_for_fights(
        &self,
        plugin: &Loaded,
        key: &ObjectKey,
        primary: &Value,
        written: &[Written],
    ) {
        let now = std::time::Instant::now();
        for w in written {
            if let Some(fight) = self.memory.thrash.observe(key, w, now) {
                self.report_fight(plugin, primary, w, &fight).await;
            }
        }
        self.memory.thrash.forget_quiet(now);
    }

    /// Reports a fight the thrash guard found: log, counter, Warning Event naming the
    /// object and the other writer.
    async fn report_fight(&self, plugin: &Loaded, primary: &Value, w: &Written, fight: &Fight) {
        self.stats.thrash_fights.fetch_add(1, Ordering::Relaxed);
        let ours = crate::write::field_manager(plugin.name());
        let other = w.managers.iter().find(|m| **m != ours).map_or_else(
            || "another writer".to_owned(),
            |m| format!("field manager {m:?}"),
        );
        let note = format!(
            "{} was changed back {} times within {:?}: {other} keeps changing what plugin {} \
             applies; this primary is not reconciled for {:?}. Make one of them stop \
             owning those fields.",
            fight.object,
            fight.rounds,
            self.host.config.thrash.window,
            plugin.name(),
            fight.hold
        );
        tracing::warn!(object = %fight.object, rounds = fight.rounds, hold = ?fight.hold, %other, "thrashing: slowing down");
        let event = Event {
            event_type: EventType::Warning,
            reason: "Thrashing".into(),
            note,
        };
        self.record_event(plugin, primary, event).await;
    }

    async fn report_fault(&self, plugin: &Loaded, primary: &Value, fault: Fault) -> Outcome {
        self.stats.count_fault(fault.metric_label());
        tracing::warn!(error = %fault, "reconcile failed");
        let event = Event {
            event_type: EventType::Warning,
            reason: "ReconcileFailed".into(),
            note: failure_note(plugin.name(), &fault),
        };
        self.record_event(plugin, primary, event).await;
        match fault {
            Fault::Guest(GuestError::Permanent(_)) => Outcome::FailedPermanent,
            _ => Outcome::Failed,
        }
    }

    async fn record_event(&self, plugin: &Loaded, regarding: &Value, event: Event) {
        if let Err(e) = self
            .host
            .recorder
            .record(plugin.name(), regarding, &event)
            .await
        {
            tracing::warn!(error = %e, reason = %event.reason, "could not record an event");
        }
    }

    /// Writes a merge patch of the primary's metadata (finalizers, the finalizer
    /// annotation), conditioned on the resourceVersion in `primary`.
    async fn patch_metadata(
        &self,
        plugin: &Loaded,
        key: &ObjectKey,
        primary: &Value,
        patch: Value,
    ) -> Outcome {
        let s = |p: &str| {
            primary
                .pointer(p)
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let output = Output {
            mutations: vec![Mutation::MergePatch {
                target: Target {
                    api_version: s("/apiVersion").unwrap_or_default(),
                    kind: s("/kind").unwrap_or_default(),
                    namespace: s("/metadata/namespace"),
                    name: key.name.clone(),
                    resource_version: s("/metadata/resourceVersion"),
                },
                patch,
            }],
            ..Default::default()
        };
        self.write(plugin, key, primary, &[], &output).await
    }
}

/// The note of the Warning Event for a failed call: the fault as it displays, except that
/// a trap is described by its cause and the plugin's last error log (its panic message,
/// say) without wasmtime's wasm backtrace, which the log line keeps: a backtrace would
/// fill the Event's note (cut at 1000 bytes) before it says what happened.
fn failure_note(plugin: &str, fault: &Fault) -> String {
    match fault {
        Fault::Sandbox(crate::sandbox::Error::Trapped {
            last_error_log,
            source,
            ..
        }) => {
            let mut cause: &(dyn std::error::Error + 'static) = source.as_ref();
            while let Some(next) = cause.source() {
                cause = next;
            }
            let log = last_error_log
                .as_deref()
                .map(|l| format!(" ({l})"))
                .unwrap_or_default();
            format!("plugin {plugin} trapped: {cause}{log}")
        }
        _ => format!("plugin {plugin} {fault}"),
    }
}

fn key_of(o: &Stored) -> ObjectKey {
    ObjectKey {
        namespace: o.namespace().map(str::to_owned),
        name: o.name().to_owned(),
    }
}

/// `period` stretched by a random 0–10 %, so primaries of many plugins and hosts do not
/// resync in lockstep.
fn jittered(period: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(period.as_nanos() as u64);
    let fraction = (h.finish() % 1000) as f64 / 10_000.0;
    period.mul_f64(1.0 + fraction)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trap_event_names_the_trap_and_the_panic_not_the_backtrace() {
        let frames = (0..40)
            .map(|i| format!("    {i}: 0x{i:x} - plugin.wasm!std::panicking::frame_{i}"))
            .collect::<Vec<_>>()
            .join("\n");
        let error = wasmtime::Error::from(wasmtime::Trap::UnreachableCodeReached).context(format!(
            "error while executing at wasm backtrace:\n{frames}"
        ));
        let fault = Fault::Sandbox(crate::sandbox::Error::Trapped {
            trap: error.to_string(),
            last_error_log: Some("panicked at src/lib.rs:9:5: hostile panic".into()),
            source: crate::sandbox::boxed(error),
        });
        let note = failure_note("hostile", &fault);
        assert_eq!(
            note,
            "plugin hostile trapped: wasm trap: wasm `unreachable` instruction executed \
             (panicked at src/lib.rs:9:5: hostile panic)"
        );
        let timeout = Fault::Sandbox(crate::sandbox::Error::Timeout {
            budget: Duration::from_secs(2),
        });
        assert_eq!(
            failure_note("hostile", &timeout),
            "plugin hostile exceeded its time budget of 2s"
        );
    }

    #[test]
    fn jitter_stretches_by_up_to_ten_percent_and_varies() {
        let samples: Vec<Duration> = (0..100)
            .map(|_| jittered(Duration::from_secs(100)))
            .collect();
        for d in &samples {
            assert!(
                *d >= Duration::from_secs(100) && *d <= Duration::from_secs(110),
                "{d:?}"
            );
        }
        // Zero jitter would pass the bounds above; these would not.
        assert!(samples.iter().any(|d| *d > Duration::from_secs(100)));
        assert!(
            samples.iter().any(|d| *d != samples[0]),
            "all equal: {samples:?}"
        );
    }
}
