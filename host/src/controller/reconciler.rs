//! One plugin's controller: events → keys → queue → snapshot → plugin → apply.
//!
//! # Guarantees
//! - One reconcile at a time per key, distinct keys concurrently (the queue), each call
//!   in a fresh sandbox instance on a blocking thread, bounded by the host's sandbox
//!   slots.
//! - Before reconciling a key the host waits (bounded by
//!   [`super::Config::read_your_writes_timeout`]) until the stores hold every object at
//!   least at the resourceVersion the key's previous writes returned (invariant 4). The
//!   wait does not hold a worker: the key is set aside and re-added when the stores show
//!   those writes (or the timeout passes), so a slow watch delays only the keys that
//!   wrote, never the others.
//! - A 409 conflict drops the rest of the output and retries promptly on fresh state;
//!   other failures back off per key and record a Warning event on the primary.

use super::mapping;
use super::queue::{Lease, Outcome, Priority, Queue};
use super::store::{Change, KindStore, Stores};
use super::thrash::{Fight, ThrashGuard};
use super::{Config, PluginOptions, Stats};
use crate::apply::events::Recorder;
use crate::apply::{Applier, Snapshot, Written};
use crate::contract::{
    Entry, Event, EventType, GuestError, KeyMapping, Mutation, ObjectKey, Output, Request, Target,
    meta,
};
use crate::metrics::{Metrics, PluginState};
use crate::plugin::{Fault, Loaded};
use crate::sandbox::{CacheView, Clock};
use crate::selector::Selector;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::Instrument;

/// What a reconciler shares with the host.
#[derive(Clone)]
pub(super) struct Shared {
    pub stores: Stores,
    pub applier: Applier,
    pub recorder: Recorder,
    pub sandbox_slots: Arc<Semaphore>,
    pub config: Config,
    pub metrics: Arc<Metrics>,
}

/// A running plugin controller.
pub struct Reconciler {
    plugin: RwLock<Loaded>,
    queue: Queue<ObjectKey>,
    stats: Arc<Stats>,
    expectations: Mutex<HashMap<ObjectKey, Vec<Written>>>,
    /// Keys set aside until the stores show their writes, with the wait's deadline.
    deferred: Mutex<HashMap<ObjectKey, tokio::time::Instant>>,
    primary: Arc<KindStore>,
    watched: Vec<(KeyMapping, Arc<KindStore>)>,
    shared: Shared,
    options: PluginOptions,
    thrash: ThrashGuard,
}

impl Reconciler {
    pub(super) fn new(
        plugin: Loaded,
        primary: Arc<KindStore>,
        watched: Vec<(KeyMapping, Arc<KindStore>)>,
        shared: Shared,
        options: PluginOptions,
    ) -> Self {
        let queue = Queue::new(super::queue::Config {
            max_concurrent: options
                .concurrency
                .unwrap_or(shared.config.max_concurrent_reconciles),
            ..Default::default()
        });
        Self {
            plugin: RwLock::new(plugin),
            queue,
            stats: Arc::default(),
            expectations: Mutex::default(),
            deferred: Mutex::default(),
            primary,
            watched,
            thrash: ThrashGuard::new(shared.config.thrash.clone()),
            shared,
            options,
        }
    }

    /// The plugin's counters.
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
            .chain(reads.iter().filter_map(|k| self.shared.stores.store(k)))
            .collect()
    }

    /// What the metrics read from this controller at a scrape.
    pub(super) fn metrics_state(&self) -> PluginState {
        let plugin = self.plugin();
        PluginState {
            name: plugin.name().to_owned(),
            version: plugin.metadata.version.clone(),
            digest: plugin.digest.clone(),
            stats: self.stats.clone(),
            queue: self.queue.clone(),
        }
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
        for o in self.primary.list(None, &Selector::default()) {
            if let Some(key) = key_of(&o) {
                self.enqueue(key, Priority::Live);
            }
        }
    }

    /// Queues `key` unless the plugin's options exclude its namespace.
    fn enqueue(&self, mut key: ObjectKey, priority: Priority) {
        if !self.primary.is_namespaced() {
            // A child in a namespace maps to its cluster-scoped owner: one key per
            // primary, however it was found (invariant 1).
            key.namespace = None;
        }
        if self.options.admits(&key) {
            self.queue.add(key, priority);
        }
    }

    /// Spawns the event, resync and worker tasks onto `tasks`.
    pub(super) fn spawn(self: &Arc<Self>, tasks: &mut JoinSet<()>) {
        let this = self.clone();
        let mut changes = self.primary.subscribe();
        // Subscribe, then list: a store another plugin already synced sends no events
        // for what it holds, and a change in between arrives on the channel as well.
        for o in self.primary.list(None, &Selector::default()) {
            if let Some(key) = key_of(&o) {
                self.enqueue(key, Priority::Live);
            }
        }
        tasks.spawn(async move {
            while let Some(change) = changes.recv().await {
                if let Change::Applied(o) | Change::Deleted(o) = change
                    && let Some(key) = key_of(&o)
                {
                    this.enqueue(key, Priority::Live);
                }
            }
        });
        for (mapping, store) in &self.watched {
            let this = self.clone();
            let mapping = mapping.clone();
            let mut changes = store.subscribe();
            let kind = store.gvk().clone();
            tasks.spawn(async move {
                while let Some(change) = changes.recv().await {
                    let (Change::Applied(o) | Change::Deleted(o)) = change else {
                        continue;
                    };
                    let keys = match &mapping {
                        KeyMapping::Custom => this.custom_keys(&kind, o.json_str()).await,
                        m => mapping::keys_for(m, &this.primary.gvk().clone(), &o.to_value()),
                    };
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

    async fn custom_keys(&self, kind: &crate::contract::Gvk, object: &str) -> Vec<ObjectKey> {
        let plugin = self.plugin();
        let cache: Arc<dyn CacheView> = Arc::new(self.shared.stores.clone());
        let (kind, object) = (kind.clone(), object.to_owned());
        let Ok(_slot) = self.shared.sandbox_slots.clone().acquire_owned().await else {
            return Vec::new();
        };
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
        let configured = self.options.resync.or(self.shared.config.resync_override);
        configured.unwrap_or_else(|| {
            self.plugin()
                .metadata
                .resync_seconds
                .map(|s| Duration::from_secs(u64::from(s)))
                .unwrap_or(self.shared.config.resync_default)
        })
    }

    async fn resync_loop(&self) {
        self.primary.synced().await;
        loop {
            tokio::time::sleep(jittered(self.resync_period())).await;
            self.stats.resyncs.fetch_add(1, Ordering::Relaxed);
            for o in self.primary.list(None, &Selector::default()) {
                if let Some(key) = key_of(&o) {
                    self.enqueue(key, Priority::Resync);
                }
            }
        }
    }

    async fn process(self: Arc<Self>, lease: Lease<ObjectKey>) {
        let key = lease.key().clone();
        if !self.own_writes_seen(&key) {
            // Give the worker back; a waiter re-adds the key once the stores show them.
            lease.done(Outcome::Deferred);
            return;
        }
        let plugin = self.plugin();
        let span = tracing::info_span!("reconcile", plugin = %plugin.name(), kind = %plugin.metadata.primary.kind, key = %key);
        let started = tokio::time::Instant::now();
        let outcome = self.reconcile(&plugin, &key).instrument(span).await;
        self.shared
            .metrics
            .reconciled(plugin.name(), outcome, started.elapsed());
        lease.done(outcome);
    }

    /// Whether the stores show every write of `key`'s previous reconciles (invariant 4),
    /// or the wait for them timed out. When not, one waiter per key re-adds `key` once
    /// they are seen or at the deadline, and the caller gives its worker back.
    fn own_writes_seen(self: &Arc<Self>, key: &ObjectKey) -> bool {
        let mut expectations = self.expectations.lock().unwrap_or_else(|e| e.into_inner());
        let Some(writes) = expectations.get_mut(key) else {
            return true;
        };
        self.stats
            .ryw_waits
            .fetch_add(writes.len() as u64, Ordering::Relaxed);
        writes.retain(|w| !self.is_seen(w));
        let mut deferred = self.deferred.lock().unwrap_or_else(|e| e.into_inner());
        if writes.is_empty() {
            expectations.remove(key);
            deferred.remove(key);
            return true;
        }
        let now = tokio::time::Instant::now();
        if let Some(&deadline) = deferred.get(key) {
            if now < deadline {
                // Already waited for; re-added when seen.
                return false;
            }
            self.stats.ryw_timeouts.fetch_add(1, Ordering::Relaxed);
            for w in writes.iter() {
                tracing::warn!(object = %w.name, resource_version = ?w.resource_version, "cache did not catch up with our own write in time");
            }
            expectations.remove(key);
            deferred.remove(key);
            return true;
        }
        let deadline = now + self.shared.config.read_your_writes_timeout;
        deferred.insert(key.clone(), deadline);
        let pending = writes.clone();
        let (this, key) = (self.clone(), key.clone());
        tokio::spawn(async move {
            for w in &pending {
                let (Some(rv), Some(store)) =
                    (&w.resource_version, this.shared.stores.store(&w.kind))
                else {
                    continue;
                };
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                store
                    .wait_seen(w.namespace.as_deref(), &w.name, rv, left)
                    .await;
            }
            // Seen, or the deadline passed: either way the next lease proceeds.
            this.queue.add(key, Priority::Live);
        });
        false
    }

    /// Whether the stores show `w` (a write without a resourceVersion or of a kind no
    /// store holds counts as seen: there is nothing to wait for).
    fn is_seen(&self, w: &Written) -> bool {
        match (&w.resource_version, self.shared.stores.store(&w.kind)) {
            (Some(rv), Some(store)) => store.seen(w.namespace.as_deref(), &w.name, rv),
            _ => true,
        }
    }

    async fn reconcile(&self, plugin: &Loaded, key: &ObjectKey) -> Outcome {
        if let Some(left) = self.thrash.held(key, std::time::Instant::now()) {
            tracing::debug!(?left, "held by the thrash guard");
            return Outcome::SuccessRequeueAfter(left);
        }
        let Some(stored) = self.primary.get(key.namespace.as_deref(), &key.name) else {
            return Outcome::Success;
        };
        let primary = stored.to_value();
        let finalizer = plugin.metadata.finalizer.clone();
        let has_finalizer = finalizer
            .as_deref()
            .is_some_and(|f| finalizers(&primary).iter().any(|x| x == f));
        let deleting = stored.is_deleting();
        match (&finalizer, deleting, has_finalizer) {
            (_, true, false) | (None, true, _) => return Outcome::Success,
            (Some(f), false, false) => {
                let mut list = finalizers(&primary);
                list.push(f.clone());
                return self.patch_finalizers(plugin, key, &primary, list).await;
            }
            _ => {}
        }
        let related = self.related(&primary);
        let request = Request {
            primary: stored.json_str().to_owned(),
            related: related.iter().map(Value::to_string).collect(),
            settings: self.options.settings.clone(),
        };
        self.stats.reconciles.fetch_add(1, Ordering::Relaxed);
        let cache: Arc<dyn CacheView> = Arc::new(self.shared.stores.clone());
        let call_plugin = plugin.clone();
        let Ok(_slot) = self.shared.sandbox_slots.clone().acquire_owned().await else {
            return Outcome::RetryNow;
        };
        let entry = if deleting {
            Entry::Finalize
        } else {
            Entry::Reconcile
        };
        let call = tokio::task::spawn_blocking(move || {
            call_plugin.decide(entry, &request, Clock::System, cache)
        })
        .await;
        drop(_slot);
        let call = match call {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "reconcile task failed");
                return Outcome::Failed;
            }
        };
        for line in &call.logs {
            line.emit(plugin.name());
        }
        let output = match call.result {
            Ok(o) => o,
            Err(fault) => return self.failed(plugin, &primary, fault).await,
        };
        let outcome = self.write(plugin, key, &primary, &related, &output).await;
        if deleting && outcome == Outcome::Success && output.requeue_after_ms.is_none() {
            let rest: Vec<String> = finalizers(&primary)
                .into_iter()
                .filter(|x| Some(x) != finalizer.as_ref())
                .collect();
            let mut fresh = primary.clone();
            if let Some(rv) = self.latest_rv(key) {
                fresh["metadata"]["resourceVersion"] = json!(rv);
            }
            return self.patch_finalizers(plugin, key, &fresh, rest).await;
        }
        outcome
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
        let applied = self
            .shared
            .applier
            .apply(plugin.name(), primary, &snapshot, related, output, &now)
            .await;
        self.stats
            .writes
            .fetch_add(applied.written.len() as u64, Ordering::Relaxed);
        let now = std::time::Instant::now();
        for w in &applied.written {
            if let Some(fight) = self.thrash.observe(key, w, now) {
                self.fought(plugin, primary, w, &fight).await;
            }
        }
        self.thrash.forget_quiet(now);
        if !applied.written.is_empty() {
            self.expectations
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(key.clone())
                .or_default()
                .extend(applied.written);
        }
        for e in &output.events {
            self.event(plugin, primary, e.clone()).await;
        }
        match applied.stopped {
            None => match output.requeue_after_ms {
                Some(ms) => Outcome::SuccessRequeueAfter(Duration::from_millis(ms)),
                None => Outcome::Success,
            },
            Some(e) if e.is_conflict() => {
                self.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "conflict; reconciling again on fresh state");
                Outcome::RetryNow
            }
            Some(e) => {
                self.stats.apply_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "applying the plugin's output failed");
                let warning = Event {
                    event_type: EventType::Warning,
                    reason: "ApplyFailed".into(),
                    note: e.to_string(),
                };
                self.event(plugin, primary, warning).await;
                Outcome::Failed
            }
        }
    }

    /// Reports a fight the thrash guard found: log, counter, Warning Event naming the
    /// object and the other writer.
    async fn fought(&self, plugin: &Loaded, primary: &Value, w: &Written, fight: &Fight) {
        self.stats.thrash_fights.fetch_add(1, Ordering::Relaxed);
        let ours = crate::apply::field_manager(plugin.name());
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
            self.shared.config.thrash.window,
            plugin.name(),
            fight.hold
        );
        tracing::warn!(object = %fight.object, rounds = fight.rounds, hold = ?fight.hold, %other, "thrashing: slowing down");
        let event = Event {
            event_type: EventType::Warning,
            reason: "Thrashing".into(),
            note,
        };
        self.event(plugin, primary, event).await;
    }

    async fn failed(&self, plugin: &Loaded, primary: &Value, fault: Fault) -> Outcome {
        self.stats.count_fault(fault.metric_label());
        tracing::warn!(error = %fault, "reconcile failed");
        let event = Event {
            event_type: EventType::Warning,
            reason: "ReconcileFailed".into(),
            note: failure_note(plugin.name(), &fault),
        };
        self.event(plugin, primary, event).await;
        match fault {
            Fault::Guest(GuestError::Permanent(_)) => Outcome::FailedPermanent,
            _ => Outcome::Failed,
        }
    }

    async fn event(&self, plugin: &Loaded, regarding: &Value, event: Event) {
        if let Err(e) = self
            .shared
            .recorder
            .record(plugin.name(), regarding, &event)
            .await
        {
            tracing::warn!(error = %e, reason = %event.reason, "could not record an event");
        }
    }

    fn latest_rv(&self, key: &ObjectKey) -> Option<String> {
        let kind = self.primary.gvk();
        self.expectations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)?
            .iter()
            .rev()
            .find(|w| &w.kind == kind && w.name == key.name && w.namespace == key.namespace)
            .and_then(|w| w.resource_version.clone())
    }

    async fn patch_finalizers(
        &self,
        plugin: &Loaded,
        key: &ObjectKey,
        primary: &Value,
        list: Vec<String>,
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
                patch: json!({"metadata": {"finalizers": list}}),
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

fn key_of(o: &super::store::Stored) -> Option<ObjectKey> {
    Some(ObjectKey {
        namespace: o.namespace().map(str::to_owned),
        name: o.name().to_owned(),
    })
}

fn finalizers(o: &Value) -> Vec<String> {
    o.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|l| {
            l.iter()
                .filter_map(|f| f.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
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
    fn jitter_stays_within_ten_percent() {
        for _ in 0..100 {
            let d = jittered(Duration::from_secs(100));
            assert!(
                d >= Duration::from_secs(100) && d <= Duration::from_secs(110),
                "{d:?}"
            );
        }
    }
}
