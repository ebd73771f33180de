//! [`KindStore`]: every object of one kind, kept equal to the API server's by one watch.

use super::index::{ByName, Indexes};
use super::stored::{self, Stored};
use crate::contract::Gvk;
use crate::selector::Selector;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::watcher::Event;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// A change to a [`KindStore`], as its subscribers receive it.
#[derive(Debug, Clone)]
pub enum Change {
    /// The object was added or changed: its new state, and the state it replaced (so a
    /// subscriber can map both: an object relabelled away from one primary to another
    /// concerns both).
    Upserted {
        /// The new state.
        object: Arc<Stored>,
        /// The state it replaced, if the store held one.
        previous: Option<Arc<Stored>>,
    },
    /// The object was deleted (its last known state). Sent for a watch `Delete`, and for
    /// objects a relist no longer returned.
    Deleted(Arc<Stored>),
    /// A complete list finished (the first one, or a relist after the watch expired); the
    /// store now equals the listed set. Subscribers that keep derived state can re-enqueue
    /// everything.
    Relisted,
}

/// Every object of one kind, fed by one watch.
///
/// Objects are [`Stored`] once each (compact JSON, `metadata.managedFields` stripped) and
/// indexed by (namespace, name) and by controller owner uid. Readers never block each
/// other; the single writer is the kind's watcher task calling [`record_event`].
///
/// # Guarantees
/// - After every event the store reflects it: a reader that saw the change through
///   [`subscribe`] or [`wait_seen`] sees it in [`get`]/[`list`] too.
/// - A list (the first, or a relist after `410 Gone` or a watch restart) replaces the
///   store atomically when it completes (`InitDone`), as kube-runtime's reflector does:
///   until then readers see the previous state whole, never a mix of listed, stale and
///   already-deleted objects. Afterwards the store is exactly the listed set: objects it
///   held that the list did not return are removed, with a [`Change::Deleted`] each.
/// - For cluster-scoped kinds the `namespace` arguments are ignored.
///
/// [`record_event`]: KindStore::record_event
/// [`subscribe`]: KindStore::subscribe
/// [`wait_seen`]: KindStore::wait_seen
/// [`get`]: KindStore::get
/// [`list`]: KindStore::list
pub struct KindStore {
    gvk: Gvk,
    resource: ApiResource,
    namespaced: bool,
    state: RwLock<State>,
    subscribers: Mutex<Vec<mpsc::UnboundedSender<Change>>>,
    synced: watch::Sender<bool>,
    /// Bumped after every event, so waiters re-check without polling.
    changed: watch::Sender<u64>,
    /// The highest numeric resourceVersion the store is known to reflect completely.
    caught_up_to: AtomicU64,
    /// Lists started (`Init`) and the number of the latest one completed (`InitDone`):
    /// a list started after a write returned reflects that write when it completes.
    lists_started: AtomicU64,
    lists_completed_from: AtomicU64,
    counters: Counters,
}

#[derive(Default)]
struct State {
    indexes: Indexes,
    /// Between `Init` and `InitDone`: the objects listed so far, and the highest numeric
    /// resourceVersion among them (applied to `caught_up_to` only once the list is whole).
    relist: Option<Relist>,
}

#[derive(Default)]
struct Relist {
    /// Which `Init` this list answers (`lists_started` when it began).
    number: u64,
    listed: Vec<Arc<Stored>>,
    highest: u64,
}

/// A watch event with its object encoded.
enum Step {
    Apply(Arc<Stored>),
    Delete(Arc<Stored>),
    Init,
    InitApply(Arc<Stored>),
    InitDone,
}

#[derive(Default)]
struct Counters {
    watch_restarts: AtomicU64,
    lists: AtomicU64,
    rejected: AtomicU64,
}

impl KindStore {
    /// An empty store for `gvk`, served as `resource`. [`super::Stores::ensure`] builds
    /// one per kind and feeds it from a watch; tests and benches feed it with
    /// [`record_event`](Self::record_event).
    pub fn new(gvk: Gvk, resource: ApiResource, namespaced: bool) -> Self {
        Self {
            gvk,
            resource,
            namespaced,
            state: RwLock::default(),
            subscribers: Mutex::default(),
            synced: watch::Sender::new(false),
            changed: watch::Sender::new(0),
            caught_up_to: AtomicU64::new(0),
            lists_started: AtomicU64::new(0),
            lists_completed_from: AtomicU64::new(0),
            counters: Counters::default(),
        }
    }

    /// The kind.
    pub fn gvk(&self) -> &Gvk {
        &self.gvk
    }

    /// The resource discovery resolved the kind to (plural, apiVersion).
    pub fn api_resource(&self) -> &ApiResource {
        &self.resource
    }

    /// Whether objects of the kind live in namespaces.
    pub fn is_namespaced(&self) -> bool {
        self.namespaced
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// The namespace key to look in: "" for cluster-scoped kinds whatever was asked;
    /// `None` (every namespace) when a namespaced kind is asked without one.
    fn scope<'a>(&self, namespace: Option<&'a str>) -> Option<&'a str> {
        if self.namespaced { namespace } else { Some("") }
    }

    /// One object.
    ///
    /// # Guarantees
    /// `None` when the object is not cached, and for a namespaced kind asked without a
    /// namespace.
    pub fn get(&self, namespace: Option<&str>, name: &str) -> Option<Arc<Stored>> {
        let namespace = self.scope(namespace)?;
        self.read().indexes.get(namespace, name).cloned()
    }

    /// The objects in `namespace` (every namespace when `None`) whose labels match
    /// `selector`, ordered by (namespace, name).
    ///
    /// # Guarantees
    /// A consistent snapshot: taken under one read lock, so no event is half-visible.
    /// Labels are matched after the lock is released.
    pub fn list(&self, namespace: Option<&str>, selector: &Selector) -> Vec<Arc<Stored>> {
        let candidates: Vec<Arc<Stored>> = {
            let state = self.read();
            match self.scope(namespace) {
                Some(ns) => state.indexes.in_namespace(ns).cloned().collect(),
                None => state.indexes.all().cloned().collect(),
            }
        };
        if selector.is_empty() {
            return candidates;
        }
        candidates
            .into_iter()
            .filter(|obj| selector.matches(&obj.labels()))
            .collect()
    }

    /// The objects whose controller owner reference (`controller: true`) has `uid`, in
    /// any namespace, ordered by (namespace, name).
    pub fn owned_by(&self, uid: &str) -> Vec<Arc<Stored>> {
        self.read().indexes.owned_by(uid).cloned().collect()
    }

    /// How many objects are cached.
    pub fn len(&self) -> usize {
        self.read().indexes.len()
    }

    /// Whether no object is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// An estimate of the heap bytes the cached objects and their index entries hold
    /// (the bench `store_memory` measures the exact figure with a counting allocator).
    pub fn approx_bytes(&self) -> usize {
        self.read().indexes.approx_bytes()
    }

    /// How many times the watch failed and was restarted (after backoff): a dropped
    /// connection, an API error, or a `410 Gone` that makes it relist.
    pub fn watch_restarts(&self) -> u64 {
        self.counters.watch_restarts.load(Ordering::Relaxed)
    }

    /// How many complete lists finished after the first one.
    pub fn relists(&self) -> u64 {
        self.counters
            .lists
            .load(Ordering::Relaxed)
            .saturating_sub(1)
    }

    /// How many objects from the watch were not stored (no name, or not a JSON object).
    pub fn rejected(&self) -> u64 {
        self.counters.rejected.load(Ordering::Relaxed)
    }

    /// Whether the first complete list has finished.
    pub fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    /// Resolves once the first complete list has finished (at once if it has).
    ///
    /// # Caveats
    /// Never resolves if the watch never completes a list (for example when RBAC forbids
    /// listing the kind: the watcher keeps retrying); bound it with a timeout.
    pub async fn synced(&self) {
        let mut rx = self.synced.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = rx.wait_for(|synced| *synced).await;
    }

    /// A channel receiving every change applied after this call, in order.
    ///
    /// # Guarantees
    /// Nothing is dropped or coalesced (the channel is unbounded). To start from the
    /// current state, subscribe first and then [`list`](Self::list): a change made in
    /// between arrives on the channel as well, so none is missed.
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<Change> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(tx);
        rx
    }

    /// Whether the store has caught up with `resource_version` of the object at
    /// (`namespace`, `name`): it holds the object at that resourceVersion or newer, or
    /// the store has seen an event at that resourceVersion or later (so a write that
    /// returned it is reflected, including a deletion after it).
    ///
    /// resourceVersions compare numerically when both parse as `u64` (etcd revisions,
    /// which every etcd-backed API server returns, ordered across a kind's watch stream);
    /// otherwise only equality with the cached object's counts.
    ///
    /// # Caveats
    /// After a relist the store only knows the listed objects' own resourceVersions, not
    /// the list's: an object written and then deleted while the watch was down reads as
    /// not seen until a later event passes its resourceVersion.
    pub fn seen(&self, namespace: Option<&str>, name: &str, resource_version: &str) -> bool {
        if let Ok(want) = resource_version.parse::<u64>()
            && self.caught_up_to.load(Ordering::Acquire) >= want
        {
            return true;
        }
        self.get(namespace, name)
            .and_then(|obj| {
                obj.resource_version()
                    .map(|have| stored::at_or_after(have, resource_version))
            })
            .unwrap_or(false)
    }

    /// Whether the store no longer holds the object at (`namespace`, `name`) with `uid`:
    /// it holds nothing there, or another object of that name (a later re-creation).
    pub fn gone(&self, namespace: Option<&str>, name: &str, uid: &str) -> bool {
        self.get(namespace, name)
            .is_none_or(|obj| obj.uid() != Some(uid))
    }

    /// A mark for [`listed_since`](Self::listed_since): how many lists have started.
    pub fn list_mark(&self) -> u64 {
        self.lists_started.load(Ordering::Acquire)
    }

    /// Whether a complete list that started after `mark` was taken has replaced the
    /// store: the store then reflects every write that returned before `mark`, whatever
    /// resourceVersion it carried (an object written and deleted while the watch was
    /// down is simply absent).
    pub fn listed_since(&self, mark: u64) -> bool {
        self.lists_completed_from.load(Ordering::Acquire) > mark
    }

    /// Whether the store shows an expected write (see [`Expected`]).
    pub fn shows(&self, expect: &Expected<'_>) -> bool {
        if self.listed_since(expect.mark) {
            return true;
        }
        match expect.state {
            ExpectedState::AtLeast(rv) => self.seen(expect.namespace, expect.name, rv),
            ExpectedState::Gone(uid) => self.gone(expect.namespace, expect.name, uid),
        }
    }

    /// Waits until the store [`shows`](Self::shows) `expect`, at most `timeout`.
    ///
    /// # Guarantees
    /// No polling: it re-checks after each event the store records. Returns whether it
    /// was shown; `false` means the timeout passed first.
    pub async fn wait_for(&self, expect: &Expected<'_>, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        // Subscribe before checking, so a change between the check and the wait wakes us.
        let mut changed = self.changed.subscribe();
        loop {
            if self.shows(expect) {
                return true;
            }
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => {}
                // Timed out (or, impossibly, the store's own sender is gone).
                _ => return self.shows(expect),
            }
        }
    }

    /// Waits until [`seen`](Self::seen) holds, at most `timeout`; see
    /// [`wait_for`](Self::wait_for).
    pub async fn wait_seen(
        &self,
        namespace: Option<&str>,
        name: &str,
        resource_version: &str,
        timeout: Duration,
    ) -> bool {
        let expect = Expected {
            namespace,
            name,
            state: ExpectedState::AtLeast(resource_version),
            mark: u64::MAX,
        };
        self.wait_for(&expect, timeout).await
    }

    /// Records one event from the kind's watcher; the watcher task's only call.
    ///
    /// - `Apply`: insert or replace; [`Change::Upserted`] unless the resourceVersion is
    ///   the one already held.
    /// - `Delete`: remove; [`Change::Deleted`] with the object's final state.
    /// - `Init`: a list starts (first sync, or a relist after `410 Gone`).
    /// - `InitApply`: buffer the object; readers do not see it yet.
    /// - `InitDone`: replace the store with the listed set in one step:
    ///   [`Change::Upserted`] for each new or changed object, [`Change::Deleted`] for each
    ///   one the list did not return, then [`Change::Relisted`]; the first one marks the
    ///   store synced.
    ///
    /// Objects are stored with `metadata.managedFields` stripped. An object without a name
    /// is logged, counted in [`rejected`](Self::rejected) and skipped.
    ///
    /// # Guarantees
    /// Readers see each event applied entirely or not at all; subscribers receive the
    /// resulting changes in the order events were applied. Meant to be called by one
    /// writer at a time (calls from several threads are serialised by the store's lock).
    pub fn record_event(&self, event: Event<DynamicObject>) {
        if let Event::Apply(obj) | Event::Delete(obj) = &event {
            // When a live change arrived (benchmarks time event → reconcile from it).
            tracing::trace!(
                target: "rekon_host::watch",
                kind = %self.gvk,
                namespace = obj.metadata.namespace.as_deref().unwrap_or(""),
                name = obj.metadata.name.as_deref().unwrap_or(""),
                "watch event"
            );
        }
        // Encode before taking the lock: readers wait only for the index update.
        let step = match event {
            Event::Apply(obj) => self.encode(obj).map(Step::Apply),
            Event::Delete(obj) => self.encode(obj).map(Step::Delete),
            Event::Init => Some(Step::Init),
            Event::InitApply(obj) => self.encode(obj).map(Step::InitApply),
            Event::InitDone => Some(Step::InitDone),
        };
        let Some(step) = step else { return };
        let mut changes = Vec::new();
        let mut state = self.write();
        match step {
            Step::Apply(obj) => self.upsert(&mut state, obj, &mut changes),
            Step::Delete(obj) => {
                state.indexes.remove(obj.namespace_key(), obj.name());
                self.advance(&obj);
                changes.push(Change::Deleted(obj));
            }
            Step::Init => {
                let number = self.lists_started.fetch_add(1, Ordering::AcqRel) + 1;
                state.relist = Some(Relist {
                    number,
                    ..Relist::default()
                });
            }
            Step::InitApply(obj) => {
                let relist = state.relist.get_or_insert_default();
                if let Some(rv) = obj.resource_version().and_then(|rv| rv.parse().ok()) {
                    relist.highest = relist.highest.max(rv);
                }
                relist.listed.push(obj);
            }
            Step::InitDone => self.finish_list(&mut state, &mut changes),
        }
        // Still under the lock, so subscribers receive changes in the order applied.
        self.emit(changes);
        drop(state);
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Counts a watch failure; the watcher restarts after backoff.
    pub(super) fn record_watch_restart(&self) {
        self.counters.watch_restarts.fetch_add(1, Ordering::Relaxed);
    }

    fn encode(&self, obj: DynamicObject) -> Option<Arc<Stored>> {
        match Stored::encode(obj, &self.resource) {
            Ok(stored) => Some(stored::shared(stored)),
            Err(reason) => {
                self.counters.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(kind = %self.gvk, %reason, "object from the watch not stored");
                None
            }
        }
    }

    /// Records that the store reflects everything up to `obj`'s resourceVersion.
    fn advance(&self, obj: &Stored) {
        if let Some(rv) = obj.resource_version().and_then(|rv| rv.parse().ok()) {
            self.caught_up_to.fetch_max(rv, Ordering::AcqRel);
        }
    }

    /// A live `Apply`: insert or replace (unless the same version is held), and advance
    /// the caught-up mark.
    fn upsert(&self, state: &mut State, obj: Arc<Stored>, changes: &mut Vec<Change>) {
        if let Some(relist) = &mut state.relist {
            // Not expected between Init and InitDone; the list would otherwise drop it.
            relist.listed.push(obj.clone());
        }
        self.advance(&obj);
        let held = state.indexes.get(obj.namespace_key(), obj.name());
        if held.is_some_and(|held| unchanged(held, &obj)) {
            return;
        }
        let previous = state.indexes.insert(obj.clone());
        changes.push(Change::Upserted {
            object: obj,
            previous,
        });
    }

    /// `InitDone`: the listed set replaces the store in one step, keeping the objects
    /// held at the same version (no second copy of what did not change).
    fn finish_list(&self, state: &mut State, changes: &mut Vec<Change>) {
        let Some(relist) = state.relist.take() else {
            tracing::debug!(kind = %self.gvk, "InitDone without Init; ignored");
            return;
        };
        let mut fresh = Indexes::default();
        let mut listed = BTreeSet::new();
        for obj in relist.listed {
            let held = state.indexes.get(obj.namespace_key(), obj.name());
            let kept = match held {
                Some(held) if unchanged(held, &obj) => held.clone(),
                _ => {
                    changes.push(Change::Upserted {
                        object: obj.clone(),
                        previous: held.cloned(),
                    });
                    obj
                }
            };
            fresh.insert(kept.clone());
            listed.insert(ByName(kept));
        }
        for obj in state.indexes.all() {
            if !relist_contains(&listed, obj) {
                changes.push(Change::Deleted(obj.clone()));
            }
        }
        drop(listed);
        state.indexes = fresh;
        self.caught_up_to
            .fetch_max(relist.highest, Ordering::AcqRel);
        self.lists_completed_from
            .fetch_max(relist.number, Ordering::AcqRel);
        self.counters.lists.fetch_add(1, Ordering::Relaxed);
        changes.push(Change::Relisted);
        self.synced.send_replace(true);
    }

    fn emit(&self, changes: Vec<Change>) {
        if changes.is_empty() {
            return;
        }
        let mut subscribers = self
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        subscribers.retain(|tx| changes.iter().all(|c| tx.send(c.clone()).is_ok()));
    }
}

/// A write read-your-writes waits for the store to show.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    /// Its namespace.
    pub namespace: Option<&'a str>,
    /// Its name.
    pub name: &'a str,
    /// What the store must show.
    pub state: ExpectedState<'a>,
    /// [`KindStore::list_mark`] when the write returned: a list started after it shows
    /// the write, whatever happened to the object since.
    pub mark: u64,
}

/// What the store must show of an expected write.
#[derive(Debug, Clone, Copy)]
pub enum ExpectedState<'a> {
    /// The object at this resourceVersion or later (or a later event of the kind).
    AtLeast(&'a str),
    /// No object of that name with this uid.
    Gone(&'a str),
}

impl std::fmt::Debug for KindStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KindStore")
            .field("gvk", &self.gvk)
            .field("namespaced", &self.namespaced)
            .field("len", &self.len())
            .field("synced", &self.is_synced())
            .finish_non_exhaustive()
    }
}

fn relist_contains(listed: &BTreeSet<ByName>, obj: &Stored) -> bool {
    use super::index::NameKey;
    listed.contains(&(obj.namespace_key(), obj.name()) as &dyn NameKey)
}

/// Whether `new` is the version already held: same resourceVersion (the server's
/// statement that nothing changed), or identical JSON when there is none.
fn unchanged(held: &Stored, new: &Stored) -> bool {
    match (held.resource_version(), new.resource_version()) {
        (Some(a), Some(b)) => a == b && held.uid() == new.uid(),
        _ => held.json() == new.json(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::store::testing::{cm, ns_kind};

    fn store() -> KindStore {
        let b = cm("x");
        KindStore::new(b.gvk(), b.resource(), true)
    }

    fn names(objs: &[Arc<Stored>]) -> Vec<String> {
        objs.iter()
            .map(|o| format!("{}/{}", o.namespace_key(), o.name()))
            .collect()
    }

    fn drain(rx: &mut mpsc::UnboundedReceiver<Change>) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(change) = rx.try_recv() {
            out.push(crate::controller::store::testing::describe(change));
        }
        out
    }

    fn list_all(store: &KindStore, objs: Vec<DynamicObject>) {
        store.record_event(Event::Init);
        for obj in objs {
            store.record_event(Event::InitApply(obj));
        }
        store.record_event(Event::InitDone);
    }

    #[test]
    fn applied_objects_are_found_by_get_and_list() {
        let store = store();
        store.record_event(Event::Apply(cm("a").ns("one").rv(1).build()));
        store.record_event(Event::Apply(cm("b").ns("two").rv(2).build()));
        assert_eq!(
            store.get(Some("one"), "a").unwrap().resource_version(),
            Some("1")
        );
        assert!(store.get(Some("two"), "a").is_none());
        assert!(
            store.get(None, "a").is_none(),
            "a namespaced kind needs a namespace"
        );
        assert_eq!(
            names(&store.list(None, &Selector::default())),
            ["one/a", "two/b"]
        );
        assert_eq!(
            names(&store.list(Some("two"), &Selector::default())),
            ["two/b"]
        );
        assert_eq!(store.len(), 2);
    }

    #[test]
    fn an_update_replaces_the_object_and_an_unchanged_resource_version_is_not_a_change() {
        let store = store();
        let mut rx = store.subscribe();
        store.record_event(Event::Apply(cm("a").ns("n").rv(1).data("k", "1").build()));
        store.record_event(Event::Apply(cm("a").ns("n").rv(2).data("k", "2").build()));
        store.record_event(Event::Apply(cm("a").ns("n").rv(2).data("k", "2").build()));
        assert_eq!(drain(&mut rx), ["applied a@1", "applied a@2"]);
        assert_eq!(
            store.get(Some("n"), "a").unwrap().to_value()["data"]["k"],
            "2"
        );
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn a_delete_removes_the_object_and_emits_its_final_state() {
        let store = store();
        store.record_event(Event::Apply(cm("a").ns("n").rv(1).build()));
        let mut rx = store.subscribe();
        store.record_event(Event::Delete(cm("a").ns("n").rv(5).build()));
        assert!(store.get(Some("n"), "a").is_none());
        assert_eq!(drain(&mut rx), ["deleted a"]);
        assert_eq!(store.approx_bytes(), 0);
    }

    #[test]
    fn a_relist_ends_equal_to_the_listed_set_and_reports_what_changed() {
        let store = store();
        list_all(
            &store,
            vec![
                cm("kept").ns("n").rv(1).build(),
                cm("changed").ns("n").rv(2).build(),
                cm("gone").ns("n").rv(3).build(),
            ],
        );
        assert_eq!(store.relists(), 0);
        let mut rx = store.subscribe();
        // The watch expired (410); kube-runtime's watcher lists again.
        list_all(
            &store,
            vec![
                cm("kept").ns("n").rv(1).build(),
                cm("changed").ns("n").rv(7).build(),
                cm("new").ns("n").rv(8).build(),
            ],
        );
        assert_eq!(
            drain(&mut rx),
            [
                "applied changed@7",
                "applied new@8",
                "deleted gone",
                "relisted"
            ]
        );
        assert_eq!(
            names(&store.list(None, &Selector::default())),
            ["n/changed", "n/kept", "n/new"]
        );
        assert_eq!(store.relists(), 1);
    }

    #[test]
    fn an_interrupted_relist_starts_over_and_only_the_complete_one_deletes() {
        let store = store();
        list_all(
            &store,
            vec![cm("a").ns("n").rv(1).build(), cm("b").ns("n").rv(2).build()],
        );
        store.record_event(Event::Init);
        store.record_event(Event::InitApply(cm("a").ns("n").rv(1).build()));
        // The list failed half-way; the watcher starts a new one.
        list_all(&store, vec![cm("b").ns("n").rv(2).build()]);
        assert_eq!(names(&store.list(None, &Selector::default())), ["n/b"]);
    }

    #[test]
    fn the_owner_index_follows_a_change_of_controller_owner() {
        let store = store();
        store.record_event(Event::Apply(
            cm("child").ns("n").rv(1).owned_by("p1").build(),
        ));
        store.record_event(Event::Apply(
            cm("other").ns("m").rv(1).owned_by("p1").build(),
        ));
        store.record_event(Event::Apply(
            cm("loose").ns("n").rv(1).owner("p1", false).build(),
        ));
        assert_eq!(names(&store.owned_by("p1")), ["m/other", "n/child"]);
        store.record_event(Event::Apply(
            cm("child").ns("n").rv(2).owned_by("p2").build(),
        ));
        assert_eq!(names(&store.owned_by("p1")), ["m/other"]);
        assert_eq!(names(&store.owned_by("p2")), ["n/child"]);
        store.record_event(Event::Delete(
            cm("other").ns("m").rv(3).owned_by("p1").build(),
        ));
        assert!(store.owned_by("p1").is_empty());
        assert!(
            store.owned_by("p").is_empty(),
            "a uid prefix is not a match"
        );
    }

    #[test]
    fn list_filters_by_namespace_and_label_selector() {
        let store = store();
        store.record_event(Event::Apply(cm("a").ns("n").label("app", "web").build()));
        store.record_event(Event::Apply(cm("b").ns("n").label("app", "db").build()));
        store.record_event(Event::Apply(cm("c").ns("m").label("app", "web").build()));
        store.record_event(Event::Apply(cm("d").ns("n").build()));
        let web = Selector::parse("app=web").unwrap();
        assert_eq!(names(&store.list(None, &web)), ["m/c", "n/a"]);
        assert_eq!(names(&store.list(Some("n"), &web)), ["n/a"]);
        let not_web = Selector::parse("app notin (web)").unwrap();
        assert_eq!(names(&store.list(Some("n"), &not_web)), ["n/b", "n/d"]);
        assert!(store.list(Some("nn"), &Selector::default()).is_empty());
    }

    #[test]
    fn cluster_scoped_kinds_ignore_the_namespace() {
        let b = ns_kind("x");
        let store = KindStore::new(b.gvk(), b.resource(), false);
        store.record_event(Event::Apply(ns_kind("prod").rv(1).build()));
        assert!(store.get(None, "prod").is_some());
        assert!(store.get(Some("anything"), "prod").is_some());
        assert_eq!(store.list(Some("x"), &Selector::default()).len(), 1);
        assert_eq!(store.get(None, "prod").unwrap().namespace(), None);
    }

    #[test]
    fn seen_compares_resource_versions_numerically_and_counts_later_deletions() {
        let store = store();
        store.record_event(Event::Apply(cm("a").ns("n").rv(10).build()));
        assert!(store.seen(Some("n"), "a", "10"));
        assert!(store.seen(Some("n"), "a", "9"));
        assert!(!store.seen(Some("n"), "a", "11"));
        assert!(!store.seen(Some("n"), "new", "11"), "not created yet");
        store.record_event(Event::Delete(cm("a").ns("n").rv(12).build()));
        assert!(store.seen(Some("n"), "a", "11"), "deleted after the write");
        assert!(!store.seen(Some("n"), "a", "13"));
    }

    #[test]
    fn seen_falls_back_to_equality_for_opaque_resource_versions() {
        let store = store();
        let mut obj = cm("a").ns("n").build();
        obj.metadata.resource_version = Some("abc".into());
        store.record_event(Event::Apply(obj));
        assert!(store.seen(Some("n"), "a", "abc"));
        assert!(!store.seen(Some("n"), "a", "abd"));
    }

    #[test]
    fn a_relist_in_progress_does_not_count_as_caught_up() {
        let store = store();
        list_all(&store, vec![cm("a").ns("n").rv(5).build()]);
        store.record_event(Event::Init);
        store.record_event(Event::InitApply(cm("b").ns("n").rv(20).build()));
        // `a` was written at 15 meanwhile, but the list is not whole yet.
        assert!(!store.seen(Some("n"), "a", "15"));
        assert!(
            !store.seen(Some("n"), "b", "20"),
            "listed objects wait for InitDone"
        );
        store.record_event(Event::InitApply(cm("a").ns("n").rv(15).build()));
        store.record_event(Event::InitDone);
        assert!(store.seen(Some("n"), "a", "15"));
        assert!(store.seen(Some("n"), "b", "20"));
        assert!(store.seen(Some("n"), "gone", "19"));
    }

    #[test]
    fn a_relist_replaces_the_store_at_once_and_no_reader_sees_a_mix() {
        let store = store();
        list_all(
            &store,
            vec![cm("a").ns("n").rv(1).build(), cm("b").ns("n").rv(2).build()],
        );
        // While the watch was down, `a` and `b` were deleted and `c` created.
        store.record_event(Event::Init);
        let seen = || names(&store.list(None, &Selector::default()));
        assert_eq!(seen(), ["n/a", "n/b"]);
        store.record_event(Event::InitApply(cm("c").ns("n").rv(9).build()));
        assert_eq!(
            seen(),
            ["n/a", "n/b"],
            "never {{a, b, c}}: a state that never existed"
        );
        assert!(store.get(Some("n"), "c").is_none());
        store.record_event(Event::InitDone);
        assert_eq!(seen(), ["n/c"]);
    }

    #[test]
    fn a_relist_keeps_unchanged_objects_without_a_second_copy() {
        let store = store();
        list_all(&store, vec![cm("a").ns("n").rv(1).data("k", "v").build()]);
        let before = store.get(Some("n"), "a").unwrap();
        list_all(&store, vec![cm("a").ns("n").rv(1).data("k", "v").build()]);
        assert!(Arc::ptr_eq(&before, &store.get(Some("n"), "a").unwrap()));
    }

    #[test]
    fn an_update_reports_the_state_it_replaced() {
        let store = store();
        store.record_event(Event::Apply(
            cm("a").ns("n").rv(1).label("pool", "a").build(),
        ));
        let mut rx = store.subscribe();
        store.record_event(Event::Apply(
            cm("a").ns("n").rv(2).label("pool", "b").build(),
        ));
        let Ok(Change::Upserted { object, previous }) = rx.try_recv() else {
            panic!("an upsert");
        };
        assert_eq!(object.labels().get("pool").map(String::as_str), Some("b"));
        let previous = previous.expect("the replaced state");
        assert_eq!(previous.labels().get("pool").map(String::as_str), Some("a"));
    }

    #[test]
    fn a_deletion_is_shown_once_the_uid_leaves_the_store_or_a_later_list_completes() {
        let store = store();
        store.record_event(Event::Apply(cm("a").ns("n").rv(1).build()));
        let uid = store.get(Some("n"), "a").unwrap().uid().unwrap().to_owned();
        let gone = Expected {
            namespace: Some("n"),
            name: "a",
            state: ExpectedState::Gone(&uid),
            mark: store.list_mark(),
        };
        assert!(!store.shows(&gone), "still cached");
        store.record_event(Event::Delete(cm("a").ns("n").rv(2).build()));
        assert!(store.shows(&gone));
        // Re-created under the same name: another uid, so the deletion still shows.
        store.record_event(Event::Apply(cm("a").ns("n").rv(3).uid("other").build()));
        assert!(store.shows(&gone));

        // A write at a version the watch never delivers (the object was deleted while
        // the watch was down) shows once a list started after it completes.
        let lost = Expected {
            namespace: Some("n"),
            name: "lost",
            state: ExpectedState::AtLeast("100"),
            mark: store.list_mark(),
        };
        assert!(!store.shows(&lost));
        list_all(&store, vec![cm("a").ns("n").rv(3).uid("other").build()]);
        assert!(store.shows(&lost));
    }

    #[tokio::test]
    async fn wait_seen_wakes_on_the_event_that_catches_up() {
        let store = Arc::new(store());
        store.record_event(Event::Apply(cm("a").ns("n").rv(1).build()));
        let waiter = tokio::spawn({
            let store = store.clone();
            async move {
                store
                    .wait_seen(Some("n"), "a", "3", Duration::from_secs(3600))
                    .await
            }
        });
        tokio::task::yield_now().await;
        store.record_event(Event::Apply(cm("a").ns("n").rv(2).build()));
        store.record_event(Event::Apply(cm("a").ns("n").rv(3).build()));
        assert!(waiter.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn wait_seen_gives_up_after_the_timeout() {
        let store = store();
        store.record_event(Event::Apply(cm("a").ns("n").rv(1).build()));
        let started = tokio::time::Instant::now();
        assert!(
            !store
                .wait_seen(Some("n"), "a", "2", Duration::from_secs(10))
                .await
        );
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test]
    async fn synced_resolves_after_the_first_complete_list() {
        let store = Arc::new(store());
        store.record_event(Event::Init);
        store.record_event(Event::InitApply(cm("a").ns("n").rv(1).build()));
        assert!(!store.is_synced());
        let waiter = tokio::spawn({
            let store = store.clone();
            async move { store.synced().await }
        });
        store.record_event(Event::InitDone);
        waiter.await.unwrap();
        assert!(store.is_synced());
        store.synced().await;
    }

    #[test]
    fn each_subscriber_gets_every_change_after_subscribing() {
        let store = store();
        store.record_event(Event::Apply(cm("early").ns("n").rv(1).build()));
        let mut first = store.subscribe();
        store.record_event(Event::Apply(cm("a").ns("n").rv(2).build()));
        let mut second = store.subscribe();
        store.record_event(Event::Delete(cm("a").ns("n").rv(3).build()));
        assert_eq!(drain(&mut first), ["applied a@2", "deleted a"]);
        assert_eq!(drain(&mut second), ["deleted a"]);
        drop(first);
        store.record_event(Event::Apply(cm("b").ns("n").rv(4).build()));
        assert_eq!(drain(&mut second), ["applied b@4"]);
    }

    #[test]
    fn objects_without_a_name_are_counted_and_skipped() {
        let store = store();
        store.record_event(Event::Apply(cm("").ns("n").build()));
        assert_eq!(store.rejected(), 1);
        assert!(store.is_empty());
    }

    #[test]
    fn approx_bytes_covers_the_json_of_every_object() {
        let store = store();
        store.record_event(Event::Apply(cm("a").ns("n").rv(1).data("k", "v").build()));
        let json = store.get(Some("n"), "a").unwrap().json().len();
        assert!(store.approx_bytes() > json);
        assert!(
            store.approx_bytes() < json + 256,
            "{}",
            store.approx_bytes()
        );
    }
}
