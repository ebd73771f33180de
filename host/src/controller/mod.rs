//! The controller core.
//!
//! - [`store`]: one watch and one compact store per kind for the whole host (docs/design.md, invariant 8),
//!   relisting by itself after a 410 Gone.
//! - [`queue`]: per-plugin work queues: deduplicated, one lease per key, bounded
//!   concurrency, backoff, live events before resync (docs/design.md, invariants 1 and 2).
//! - [`mapping`]: watched-object events → primary keys.
//! - [`Controller`]: one plugin's loop, from key to applied output.
//! - [`Stats`]: what each plugin's controller counts, in plain counters and histograms
//!   (the [`crate::metrics`] read them at scrape time).
//! - [`slots`]: the sandbox slots, shared fairly between plugins.
//! - [`Host`]: the plugins of one process sharing stores, applier and sandbox slots.

mod access;
mod config;
mod expectations;
pub mod finalizer;
mod histogram;
pub mod mapping;
mod options;
pub mod queue;
mod reconciler;
pub mod slots;
mod stats;
pub mod store;
pub mod thrash;

pub use access::Missing;
pub use config::Config;
pub use histogram::Histogram;
pub use options::PluginOptions;
pub use reconciler::Controller;
pub use stats::{Results, Stats};

use crate::kinds::Kinds;
use crate::plugin::Loaded;
use crate::write::Applier;
use crate::write::events::Recorder;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinSet;

/// A controller ready to start ([`Host::prepare`]): permissions checked, stores listed.
pub struct Prepared {
    plugin: Loaded,
    options: PluginOptions,
    primary: Arc<store::KindStore>,
    watched: Vec<(crate::contract::KeyMapping, Arc<store::KindStore>)>,
    replacing: Option<String>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("plugin", &self.plugin.name())
            .field("replacing", &self.replacing)
            .finish_non_exhaustive()
    }
}

/// Why a plugin could not be started.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A kind it declared could not be watched.
    #[error("plugin {plugin}: {source}")]
    Store {
        /// The plugin.
        plugin: String,
        /// The cause.
        #[source]
        source: store::Error,
    },
    /// A plugin with that name already runs.
    #[error("plugin {0} is already running")]
    Duplicate(String),
    /// The host's identity lacks permissions the plugin's declaration needs.
    #[error(
        "plugin {plugin}: forbidden: the host may not {}; grant them (`rekon rbac` prints the rules)",
        missing.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
    )]
    Forbidden {
        /// The plugin.
        plugin: String,
        /// What is missing.
        missing: Vec<Missing>,
    },
    /// Its watches did not complete their first list in time.
    #[error("plugin {plugin}: its watches did not list within {timeout:?}")]
    NotSynced {
        /// The plugin.
        plugin: String,
        /// How long it waited.
        timeout: Duration,
    },
    /// The permission check itself failed.
    #[error("plugin {plugin}: checking the host's permissions failed: {source}")]
    AccessReview {
        /// The plugin.
        plugin: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
}

impl Error {
    /// A bounded label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Store { source, .. } => source.metric_label(),
            Error::Duplicate(_) => "duplicate",
            Error::Forbidden { .. } => "forbidden",
            Error::NotSynced { .. } => "not_synced",
            Error::AccessReview { .. } => "access_review",
        }
    }
}

struct Running {
    reconciler: Arc<Controller>,
    tasks: JoinSet<()>,
}

/// The plugins of one rekon process, sharing one set of stores.
#[derive(Clone)]
pub struct Host {
    shared: reconciler::HostParts,
    kinds: Kinds,
    running: Arc<RunningMap>,
    /// Per plugin name: what its controllers keep across restarts.
    memories: Arc<Mutex<HashMap<String, Arc<reconciler::Memory>>>>,
}

type RunningMap = Mutex<HashMap<String, Running>>;

impl Host {
    /// A host talking to the API server through `client`.
    pub fn new(client: kube::Client, config: Config) -> Self {
        let kinds = Kinds::new(client.clone());
        let stores = store::Stores::with_kinds(kinds.clone(), config.namespace.clone());
        Self {
            shared: reconciler::HostParts {
                stores,
                applier: Applier::new(kinds.clone(), config.namespace.clone())
                    .guarded(config.fence.clone(), config.request_timeout),
                recorder: Recorder::new(client, &config.instance)
                    .guarded(config.fence.clone(), config.request_timeout),
                sandbox_slots: slots::Slots::with_policy(
                    config.sandbox_slots,
                    config.sandbox_policy,
                ),
                config,
            },
            kinds,
            running: Arc::default(),
            memories: Arc::default(),
        }
    }

    /// What the controllers of `plugin` keep across restarts.
    fn memory(&self, plugin: &str) -> Arc<reconciler::Memory> {
        self.memories
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(plugin.to_owned())
            .or_insert_with(|| {
                Arc::new(reconciler::Memory {
                    expectations: expectations::Expectations::default(),
                    thrash: thrash::ThrashGuard::new(self.shared.config.thrash.clone()),
                    stats: Arc::default(),
                })
            })
            .clone()
    }

    /// The shared stores (one watch per kind).
    pub fn stores(&self) -> &store::Stores {
        &self.shared.stores
    }

    /// The counters of every plugin this host has run, by plugin name, running or not:
    /// they outlive a controller (see [`Stats`]).
    pub fn stats(&self) -> Vec<(String, Arc<Stats>)> {
        let mut stats: Vec<_> = self
            .memories
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(name, memory)| (name.clone(), memory.stats.clone()))
            .collect();
        stats.sort_by(|a, b| a.0.cmp(&b.0));
        stats
    }

    /// Whether every store of every running plugin has completed its first list (`true`
    /// when no plugin runs).
    pub fn all_synced(&self) -> bool {
        self.controllers().iter().all(|r| r.is_synced())
    }

    /// Resolves once every store of the plugins running when called has completed its
    /// first list; then the host is ready to serve (see [`crate::serve::Readiness`]).
    ///
    /// # Caveats
    /// Never resolves while a watch cannot list (a missing permission, an unreachable API
    /// server): race it against shutdown.
    pub async fn synced(&self) {
        for reconciler in self.controllers() {
            reconciler.synced().await;
        }
    }

    /// The running controllers, one per plugin, in no particular order.
    pub fn controllers(&self) -> Vec<Arc<Controller>> {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|r| r.reconciler.clone())
            .collect()
    }

    /// Starts a controller for `plugin`: watches its kinds (reusing existing watches) and
    /// begins reconciling.
    ///
    /// # Errors
    /// [`Error::Store`] if a declared kind cannot be watched (e.g. its CRD is missing),
    /// [`Error::Duplicate`] if a plugin of that name runs already.
    pub async fn start(&self, plugin: Loaded) -> Result<Arc<Controller>, Error> {
        self.start_with(plugin, PluginOptions::default()).await
    }

    /// [`Host::start`] with per-plugin options: [`prepare`](Self::prepare), then
    /// [`launch`](Self::launch).
    ///
    /// # Errors
    /// As [`Host::prepare`].
    pub async fn start_with(
        &self,
        plugin: Loaded,
        options: PluginOptions,
    ) -> Result<Arc<Controller>, Error> {
        let prepared = self.prepare(plugin, options, None).await?;
        Ok(self.launch(prepared).await)
    }

    /// Gets a controller for `plugin` ready without starting it: checks through access
    /// reviews that the host may do everything the plugin declared, starts (or reuses)
    /// the watches of its kinds and waits until they have listed. Nothing running is
    /// touched, so when this fails, the controller it was to replace keeps running.
    ///
    /// `replacing` names the running plugin the result will replace (see
    /// [`launch`](Self::launch)); any other running plugin of the same name is a
    /// duplicate.
    ///
    /// # Errors
    /// [`Error::Duplicate`], [`Error::Forbidden`] naming each missing permission,
    /// [`Error::AccessReview`], [`Error::Store`] if a declared kind cannot be watched
    /// (e.g. its CRD is missing), [`Error::NotSynced`] if its watches do not list within
    /// [`Config::sync_timeout`]. The caller counts errors with
    /// [`crate::metrics::Metrics::plugin_start_failed`].
    pub async fn prepare(
        &self,
        plugin: Loaded,
        options: PluginOptions,
        replacing: Option<&str>,
    ) -> Result<Prepared, Error> {
        let name = plugin.name().to_owned();
        if replacing != Some(name.as_str()) && self.get(&name).is_some() {
            return Err(Error::Duplicate(name));
        }
        let err = |source| Error::Store {
            plugin: name.clone(),
            source,
        };
        let meta = plugin.metadata.clone();
        let namespace = self.shared.config.namespace.as_deref();
        let missing = access::missing(&self.kinds, &meta, namespace)
            .await
            .map_err(|source| Error::AccessReview {
                plugin: name.clone(),
                source,
            })?;
        if !missing.is_empty() {
            return Err(Error::Forbidden {
                plugin: name,
                missing,
            });
        }
        let primary = self
            .shared
            .stores
            .ensure(&meta.primary)
            .await
            .map_err(err)?;
        let mut watched = Vec::new();
        for w in &meta.watches {
            watched.push((
                w.mapping.clone(),
                self.shared.stores.ensure(&w.kind).await.map_err(err)?,
            ));
        }
        let mut reads = Vec::new();
        for k in &meta.reads {
            reads.push(self.shared.stores.ensure(k).await.map_err(err)?);
        }
        let stores = std::iter::once(&primary)
            .chain(watched.iter().map(|(_, s)| s))
            .chain(&reads);
        let all_synced = futures::future::join_all(stores.map(|s| s.synced()));
        if tokio::time::timeout(self.shared.config.sync_timeout, all_synced)
            .await
            .is_err()
        {
            return Err(Error::NotSynced {
                plugin: name,
                timeout: self.shared.config.sync_timeout,
            });
        }
        Ok(Prepared {
            plugin,
            options,
            primary,
            watched,
            replacing: replacing.map(str::to_owned),
        })
    }

    /// Starts a prepared controller. If it replaces a running plugin, that one stops
    /// first (its in-flight reconciles finish on the old version; the read-your-writes
    /// expectations and the thrash history carry over to the new one).
    pub async fn launch(&self, prepared: Prepared) -> Arc<Controller> {
        let Prepared {
            plugin,
            options,
            primary,
            watched,
            replacing,
        } = prepared;
        if let Some(old) = &replacing {
            // Not `stop`: the stores the new controller shares with the old stay.
            self.stop_controller(old).await;
        }
        let name = plugin.name().to_owned();
        let primary_kind = plugin.metadata.primary.clone();
        self.shared.sandbox_slots.limit(
            &name,
            options.sandbox_share.or(self.shared.config.sandbox_share),
        );
        let reconciler = Arc::new(Controller::new(
            plugin,
            primary,
            watched,
            self.shared.clone(),
            self.memory(&name),
            options,
        ));
        let mut tasks = JoinSet::new();
        reconciler.spawn(&mut tasks);
        tracing::info!(plugin = %name, primary = %primary_kind, "controller started");
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                name,
                Running {
                    reconciler: reconciler.clone(),
                    tasks,
                },
            );
        reconciler
    }

    /// The running controller of a plugin.
    pub fn get(&self, plugin: &str) -> Option<Arc<Controller>> {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(plugin)
            .map(|r| r.reconciler.clone())
    }

    /// Names of the running plugins.
    pub fn plugins(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        names.sort();
        names
    }

    /// Removes a plugin for good (its file is gone): stops it as [`stop`](Self::stop)
    /// does, and first reports every primary being deleted that its finalizer still
    /// holds — no controller will finalize them now — with a Warning Event
    /// `FinalizerOrphaned` on each, naming the plugin and the finalizer. Returns how
    /// many it reported.
    pub async fn remove(&self, plugin: &str) -> usize {
        let mut reported = 0;
        if let Some(r) = self.get(plugin) {
            let loaded = r.plugin();
            for o in r.orphaned_by_removal() {
                let finalizer = loaded.metadata.finalizer.clone().unwrap_or_default();
                let note = format!(
                    "plugin {plugin} was removed while this object, being deleted, carries its \
                     finalizer {finalizer:?}: it stays Terminating until the plugin is back or \
                     the finalizer is released with `rekon release-finalizer {plugin}`"
                );
                tracing::warn!(plugin, object = %o.name(), %finalizer, "finalizer orphaned by the plugin's removal");
                let event = crate::contract::Event {
                    event_type: crate::contract::EventType::Warning,
                    reason: "FinalizerOrphaned".into(),
                    note,
                };
                if let Err(e) = self
                    .shared
                    .recorder
                    .record(plugin, &o.to_value(), &event)
                    .await
                {
                    tracing::warn!(error = %e, "could not record an event");
                }
                r.stats()
                    .finalizers_orphaned
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                reported += 1;
            }
        }
        self.stop(plugin).await;
        reported
    }

    /// Stops a plugin's controller: no new reconciles; waits for in-flight ones. Then
    /// the watches of kinds no other plugin uses are released.
    pub async fn stop(&self, plugin: &str) {
        self.stop_controller(plugin).await;
        self.shared.stores.release_unused().await;
    }

    async fn stop_controller(&self, plugin: &str) {
        let running = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(plugin);
        if let Some(mut r) = running {
            r.reconciler.stop().await;
            r.tasks.abort_all();
            // The tasks hold the controller and with it the stores: let them go first.
            while r.tasks.join_next().await.is_some() {}
            tracing::info!(plugin, "controller stopped");
        }
    }

    /// Stops every controller (waiting at most `grace` for in-flight reconciles) and the
    /// watches.
    pub async fn shutdown(&self, grace: Duration) {
        let names = self.plugins();
        let stops = futures::future::join_all(names.iter().map(|n| self.stop(n)));
        if tokio::time::timeout(grace, stops).await.is_err() {
            tracing::warn!(
                ?grace,
                "in-flight reconciles did not finish within the grace period"
            );
        }
        self.shared.stores.shutdown().await;
    }
}
