//! The controller core.
//!
//! - [`store`]: one watch and one compact store per kind for the whole host (invariant 8),
//!   relisting by itself after a 410 Gone.
//! - [`queue`]: per-plugin work queues: deduplicated, one lease per key, bounded
//!   concurrency, backoff, live events before resync (invariants 1 and 2).
//! - [`mapping`]: watched-object events → primary keys.
//! - [`Reconciler`]: one plugin's loop, from key to applied output.
//! - [`Stats`]: what each plugin's controller counts, in plain counters and histograms
//!   (the [`crate::metrics`] read them at scrape time).
//! - [`Host`]: the plugins of one process sharing stores, applier and sandbox slots.

mod access;
mod config;
mod expectations;
mod finalizer;
mod histogram;
pub mod mapping;
mod options;
pub mod queue;
mod reconciler;
mod stats;
pub mod store;
pub mod thrash;

pub use access::Missing;
pub use config::Config;
pub use histogram::Histogram;
pub use options::PluginOptions;
pub use reconciler::Reconciler;
pub use stats::{Results, Stats};

use crate::apply::Applier;
use crate::apply::events::Recorder;
use crate::kinds::Kinds;
use crate::plugin::Loaded;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

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
            Error::AccessReview { .. } => "access_review",
        }
    }
}

struct Running {
    reconciler: Arc<Reconciler>,
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
                applier: Applier::new(kinds.clone(), config.namespace.clone()),
                recorder: Recorder::new(client, &config.instance),
                sandbox_slots: Arc::new(Semaphore::new(config.sandbox_slots.max(1))),
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
    pub fn controllers(&self) -> Vec<Arc<Reconciler>> {
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
    pub async fn start(&self, plugin: Loaded) -> Result<Arc<Reconciler>, Error> {
        self.start_with(plugin, PluginOptions::default()).await
    }

    /// [`Host::start`] with per-plugin options. First checks, through access reviews,
    /// that the host may do everything the plugin declared.
    ///
    /// # Errors
    /// As [`Host::start`], and [`Error::Forbidden`] naming each missing permission. The
    /// caller counts errors with [`crate::metrics::Metrics::plugin_start_failed`].
    pub async fn start_with(
        &self,
        plugin: Loaded,
        options: PluginOptions,
    ) -> Result<Arc<Reconciler>, Error> {
        let name = plugin.name().to_owned();
        if self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&name)
        {
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
        for k in &meta.reads {
            self.shared.stores.ensure(k).await.map_err(err)?;
        }
        let reconciler = Arc::new(Reconciler::new(
            plugin,
            primary,
            watched,
            self.shared.clone(),
            self.memory(&name),
            options,
        ));
        let mut tasks = JoinSet::new();
        reconciler.spawn(&mut tasks);
        tracing::info!(plugin = %name, primary = %meta.primary, "controller started");
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
        Ok(reconciler)
    }

    /// The running controller of a plugin.
    pub fn get(&self, plugin: &str) -> Option<Arc<Reconciler>> {
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

    /// Stops a plugin's controller: no new reconciles; waits for in-flight ones.
    pub async fn stop(&self, plugin: &str) {
        let running = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(plugin);
        if let Some(mut r) = running {
            r.reconciler.stop().await;
            r.tasks.abort_all();
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
