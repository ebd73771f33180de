//! Shared watches and stores: one watch and one compact store per kind for the whole host
//! (docs/design.md, invariant 8), however many plugins use the kind.
//!
//! - [`Stores`]: the host's set of stores. [`Stores::ensure`] resolves a kind by
//!   discovery and starts its one watcher task; it also answers the plugins' cache
//!   imports as a [`CacheView`].
//! - [`KindStore`]: every object of one kind, indexed by (namespace, name) and by
//!   controller owner, with change subscriptions and the read-your-writes check
//!   ([`KindStore::seen`], [`KindStore::wait_seen`], docs/design.md invariant 4).
//! - [`Stored`]: one object, held once as compact JSON without `metadata.managedFields`.
//!
//! # Watch errors and `410 Gone`
//! Each kind is watched by kube-runtime's [`watcher()`] with `watcher::Config::default()`
//! (paged `ListWatch`, bookmarks on) behind [`WatchStreamExt::default_backoff`]: after
//! any error the stream is not polled again until the backoff passes (client-go's
//! reflector parameters: 800 ms doubling to 30 s, jittered, reset after 120 s without
//! errors). Recovery itself is the watcher's — in kube-runtime 5.0.0, `src/watcher.rs`,
//! `step_trampolined`:
//! - A `WatchEvent::Error` with `code == 410` (the watch's resourceVersion was compacted
//!   away; the API server sends it as an `ERROR` event on the watch stream) moves the
//!   state machine to `State::Empty`, so the next poll yields `Event::Init` and lists again
//!   (`InitApply`… `InitDone`). A failed list (for example an expired continue token)
//!   also returns to `State::Empty`.
//! - Other watch errors keep the resourceVersion and restart the watch from it; a watch
//!   the server ends normally is resumed from the last bookmark.
//!
//! The store turns a relist into exactly the listed set ([`KindStore::record_event`]):
//! objects deleted while the watch was down are removed with a [`Change::Deleted`], and
//! objects changed meanwhile arrive as [`Change::Upserted`].

mod index;
mod kind;
mod stored;
#[cfg(test)]
pub(crate) mod testing;

pub use kind::{Change, Expected, ExpectedState, KindStore};
pub use stored::Stored;

use crate::contract::Gvk;
use crate::kinds::Kinds;
use crate::sandbox::CacheView;
use crate::selector::Selector;
use futures::StreamExt;
use kube::api::{Api, DynamicObject};
use kube::runtime::{WatchStreamExt, watcher};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::OnceCell;
use tokio::task::JoinHandle;
use tracing::Instrument;

/// Why a kind could not be watched.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server does not serve the kind at that group/version.
    #[error(
        "the API server does not serve {kind}; if it is a custom resource, is its \
         CustomResourceDefinition installed?"
    )]
    UnknownKind {
        /// The kind asked for.
        kind: Gvk,
        /// What discovery answered (a 404, or a group without the kind).
        #[source]
        source: kube::Error,
    },
    /// Discovery failed for another reason (connection, authorization, server error).
    #[error("discovering {kind} failed")]
    Discovery {
        /// The kind asked for.
        kind: Gvk,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// [`Stores::shutdown`] was called; no new watch is started.
    #[error("the stores are shut down; {kind} is not watched")]
    ShutDown {
        /// The kind asked for.
        kind: Gvk,
    },
}

impl Error {
    /// A bounded label for metrics, one per variant.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::UnknownKind { .. } => "unknown_kind",
            Error::Discovery { .. } => "discovery",
            Error::ShutDown { .. } => "shut_down",
        }
    }
}

/// The host's stores: one [`KindStore`] and one watch per kind. Cheap to clone; clones
/// share everything.
///
/// # Guarantees
/// - However many callers [`ensure`](Self::ensure) a kind, concurrently or not, one
///   discovery succeeds and one watcher task is started for it
///   ([`watch_count`](Self::watch_count) counts them).
/// - As a [`CacheView`], a kind not ensured (yet) reads as empty.
#[derive(Clone)]
pub struct Stores {
    inner: Arc<Inner>,
}

struct Inner {
    resolver: Kinds,
    namespace: Option<String>,
    kinds: Mutex<HashMap<Gvk, Arc<OnceCell<Arc<KindStore>>>>>,
    tasks: Mutex<Tasks>,
    watches: AtomicU64,
}

#[derive(Default)]
struct Tasks {
    closed: bool,
    handles: HashMap<Gvk, JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let tasks = self.tasks.get_mut().unwrap_or_else(PoisonError::into_inner);
        for handle in tasks.handles.values() {
            handle.abort();
        }
    }
}

impl Stores {
    /// No stores yet; watches go through `client` and cover the whole cluster.
    pub fn new(client: kube::Client) -> Self {
        Self::scoped(client, None)
    }

    /// Like [`new`](Self::new), but namespaced kinds are watched in `namespace` only
    /// (cluster-scoped kinds are still watched cluster-wide).
    pub fn scoped(client: kube::Client, namespace: Option<String>) -> Self {
        Self::with_kinds(Kinds::new(client), namespace)
    }

    /// Like [`scoped`](Self::scoped), resolving kinds through a shared discovery cache.
    pub fn with_kinds(kinds: Kinds, namespace: Option<String>) -> Self {
        Self {
            inner: Arc::new(Inner {
                resolver: kinds,
                namespace,
                kinds: Mutex::default(),
                tasks: Mutex::default(),
                watches: AtomicU64::new(0),
            }),
        }
    }

    /// The store of `kind`, started on first use: discovery resolves the kind at its
    /// pinned group/version (plural, namespaced or not), then one watcher task keeps the
    /// store equal to the API server's objects.
    ///
    /// # Guarantees
    /// Concurrent calls for one kind wait for the same discovery and share its store;
    /// only one watcher task per kind is ever started. The returned store may not have
    /// finished its first list; await [`KindStore::synced`] for that.
    ///
    /// # Errors
    /// - [`Error::UnknownKind`] when the server does not serve the kind (a later call
    ///   tries again, so installing the CRD afterwards works).
    /// - [`Error::Discovery`] when discovery fails otherwise (also retried on the next
    ///   call).
    /// - [`Error::ShutDown`] after [`shutdown`](Self::shutdown).
    ///
    /// # Panics
    /// Outside a Tokio runtime (the watcher task is spawned on the current one).
    pub async fn ensure(&self, kind: &Gvk) -> Result<Arc<KindStore>, Error> {
        let cell = {
            if self.lock_tasks().closed {
                return Err(Error::ShutDown { kind: kind.clone() });
            }
            let mut kinds = self.lock_kinds();
            kinds.entry(kind.clone()).or_default().clone()
        };
        cell.get_or_try_init(|| self.start(kind)).await.cloned()
    }

    /// The store of `kind` if it has been ensured.
    pub fn store(&self, kind: &Gvk) -> Option<Arc<KindStore>> {
        self.lock_kinds().get(kind)?.get().cloned()
    }

    /// The kinds with a store, sorted.
    pub fn kinds(&self) -> Vec<Gvk> {
        let mut kinds: Vec<Gvk> = self
            .lock_kinds()
            .iter()
            .filter(|(_, cell)| cell.initialized())
            .map(|(kind, _)| kind.clone())
            .collect();
        kinds.sort();
        kinds
    }

    /// How many watches have been opened (one per ensured kind; docs/design.md, invariant 8).
    pub fn watch_count(&self) -> u64 {
        self.inner.watches.load(Ordering::Relaxed)
    }

    /// Stops every watcher task and refuses new kinds. The stores keep their contents.
    ///
    /// # Guarantees
    /// When it returns, no watcher task runs; stores no longer change.
    pub async fn shutdown(&self) {
        let handles = {
            let mut tasks = self.lock_tasks();
            tasks.closed = true;
            std::mem::take(&mut tasks.handles)
        };
        for handle in handles.values() {
            handle.abort();
        }
        for handle in handles.into_values() {
            // Aborted tasks end with a cancellation error; that is the point.
            let _ = handle.await;
        }
    }

    /// Stops the watch of every kind whose store nobody but the stores themselves holds
    /// (no running controller, no prepared one, no reader): its memory is returned and a
    /// later [`ensure`](Self::ensure) starts a new watch. Returns the kinds released.
    ///
    /// # Guarantees
    /// A store someone still holds keeps its watch; the check and the removal happen
    /// under the stores' lock, so a concurrent `ensure` either finds the store kept or
    /// starts a new one.
    pub async fn release_unused(&self) -> Vec<Gvk> {
        let released: Vec<(Gvk, Option<JoinHandle<()>>)> = {
            let mut kinds = self.lock_kinds();
            let mut tasks = self.lock_tasks();
            let unused: Vec<Gvk> = kinds
                .iter()
                .filter(|(_, cell)| {
                    // Held by the map's cell and by its watcher task only.
                    cell.get()
                        .is_some_and(|store| Arc::strong_count(store) <= HELD_BY_STORES)
                })
                .map(|(kind, _)| kind.clone())
                .collect();
            unused
                .into_iter()
                .map(|kind| {
                    kinds.remove(&kind);
                    let handle = tasks.handles.remove(&kind);
                    (kind, handle)
                })
                .collect()
        };
        let mut out = Vec::new();
        for (kind, handle) in released {
            if let Some(handle) = handle {
                handle.abort();
                // Aborted tasks end with a cancellation error; that is the point.
                let _ = handle.await;
            }
            tracing::info!(kind = %kind, "watch released: no plugin uses the kind any more");
            out.push(kind);
        }
        out
    }

    fn lock_kinds(&self) -> std::sync::MutexGuard<'_, HashMap<Gvk, Arc<OnceCell<Arc<KindStore>>>>> {
        self.inner
            .kinds
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_tasks(&self) -> std::sync::MutexGuard<'_, Tasks> {
        self.inner
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    async fn start(&self, kind: &Gvk) -> Result<Arc<KindStore>, Error> {
        let resolved = self.inner.resolver.resolve(kind).await.map_err(|e| {
            let crate::kinds::Error { kind, source } = e;
            if crate::kinds::is_unknown(&source) {
                Error::UnknownKind { kind, source }
            } else {
                Error::Discovery { kind, source }
            }
        })?;
        let (resource, namespaced) = (resolved.resource, resolved.namespaced);
        let store = Arc::new(KindStore::new(kind.clone(), resource.clone(), namespaced));
        let client = self.inner.resolver.client().clone();
        let api: Api<DynamicObject> = match (&self.inner.namespace, namespaced) {
            (Some(ns), true) => Api::namespaced_with(client, ns, &resource),
            _ => Api::all_with(client, &resource),
        };
        let mut tasks = self.lock_tasks();
        if tasks.closed {
            return Err(Error::ShutDown { kind: kind.clone() });
        }
        let span = tracing::info_span!("watch", kind = %kind);
        tasks.handles.insert(
            kind.clone(),
            tokio::spawn(run_watch(store.clone(), api).instrument(span)),
        );
        self.inner.watches.fetch_add(1, Ordering::Relaxed);
        tracing::info!(kind = %kind, plural = %resource.plural, namespaced, "watch started");
        Ok(store)
    }
}

#[cfg(test)]
impl Stores {
    /// Stores whose client points nowhere (no watch is ever started by the tests).
    pub(crate) fn new_offline() -> Self {
        let url: http::Uri = "http://127.0.0.1:9".parse().expect("a valid URL");
        let client = kube::Client::try_from(kube::Config::new(url)).expect("a client");
        Self::new(client)
    }

    /// Offline stores holding one empty ConfigMap store, fed by the test.
    pub(crate) fn with_test_store() -> (Self, Arc<KindStore>) {
        let stores = Self::new_offline();
        let b = testing::cm("x");
        let store = Arc::new(KindStore::new(b.gvk(), b.resource(), true));
        let cell = Arc::new(OnceCell::new_with(Some(store.clone())));
        stores.lock_kinds().insert(b.gvk(), cell);
        (stores, store)
    }
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores")
            .field("kinds", &self.kinds())
            .field("watches", &self.watch_count())
            .finish_non_exhaustive()
    }
}

impl CacheView for Stores {
    fn get(&self, kind: &Gvk, namespace: Option<&str>, name: &str) -> Option<String> {
        let obj = self.store(kind)?.get(namespace, name)?;
        Some(obj.json_str().to_owned())
    }

    fn list(&self, kind: &Gvk, namespace: Option<&str>, selector: &Selector) -> Vec<String> {
        self.store(kind)
            .map(|store| {
                store
                    .list(namespace, selector)
                    .iter()
                    .map(|obj| obj.json_str().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn list_within(
        &self,
        kind: &Gvk,
        namespace: Option<&str>,
        selector: &Selector,
        max_bytes: usize,
    ) -> Result<Vec<String>, crate::sandbox::TooLarge> {
        let Some(store) = self.store(kind) else {
            return Ok(Vec::new());
        };
        let matched = store.list(namespace, selector);
        // Sum first, copy after: a refused list copies no JSON.
        let mut budget = crate::sandbox::ListBudget::new(matched.len(), max_bytes);
        for obj in &matched {
            budget.add(obj.json_str().len())?;
        }
        Ok(matched
            .iter()
            .map(|obj| obj.json_str().to_owned())
            .collect())
    }
}

/// Strong references to a [`KindStore`] the stores themselves keep: the map's and the
/// watcher task's.
const HELD_BY_STORES: usize = 2;

/// The kind's watcher task: feeds every event into the store until aborted. See the
/// module docs for how errors and `410 Gone` are recovered.
async fn run_watch(store: Arc<KindStore>, api: Api<DynamicObject>) {
    let events = watcher(api, watcher::Config::default()).default_backoff();
    let mut events = std::pin::pin!(events);
    while let Some(event) = events.next().await {
        match event {
            Ok(event) => store.record_event(event),
            Err(error) => {
                store.record_watch_restart();
                tracing::warn!(%error, "watch failed; retrying after backoff");
            }
        }
    }
}

#[cfg(test)]
mod tests;
