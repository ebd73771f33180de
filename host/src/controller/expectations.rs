//! Read-your-writes (docs/design.md, invariant 4): a key's next reconcile waits until the
//! stores show what its previous reconciles wrote.
//!
//! # Guarantees
//! - Every accepted write is expected: a create, apply, update, patch or status write
//!   until the store holds the object at the returned resourceVersion or later (or a
//!   later event of the kind passed it); a delete until the store no longer holds that
//!   (namespace, name, uid). A complete list that started after the write returned
//!   shows it too, whatever happened to the object since.
//! - A key whose writes are not shown yet is deferred: it gives its worker back and is
//!   re-added when the stores show them, or at the deadline by the queue itself (a
//!   delayed add, so the re-add does not depend on a waiter task surviving).
//! - Past the deadline the key is still not decided on the stale view: it waits another
//!   period, and the controller reports the lag (a Warning Event and a metric). Deciding
//!   on a view that misses the plugin's own writes is how duplicates are created.
//! - The expectations belong to the plugin, not to one controller instance: a controller
//!   restarted by a hot reload keeps them.

use super::store::{Expected, ExpectedState, Stores};
use crate::contract::{Gvk, ObjectKey};
use crate::write::{Vanished, Written};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// One write the store must show.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Expectation {
    kind: Gvk,
    namespace: Option<String>,
    name: String,
    state: State,
    /// The store's list mark when the write returned.
    mark: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    AtLeast(String),
    Gone(String),
}

impl Expectation {
    fn of(w: &Written, stores: &Stores) -> Option<Self> {
        let state = if w.is_gone() {
            State::Gone(w.uid.clone()?)
        } else {
            State::AtLeast(w.resource_version.clone()?)
        };
        // A kind without a store cannot be waited for.
        let store = stores.store(&w.kind)?;
        Some(Self {
            kind: w.kind.clone(),
            namespace: w.namespace.clone(),
            name: w.name.clone(),
            state,
            mark: store.list_mark(),
        })
    }

    fn vanished(v: &Vanished, stores: &Stores) -> Option<Self> {
        let store = stores.store(&v.kind)?;
        Some(Self {
            kind: v.kind.clone(),
            namespace: v.namespace.clone(),
            name: v.name.clone(),
            state: State::Gone(v.uid.clone()),
            mark: store.list_mark(),
        })
    }

    fn expected(&self) -> Expected<'_> {
        Expected {
            namespace: self.namespace.as_deref(),
            name: &self.name,
            state: match &self.state {
                State::AtLeast(rv) => ExpectedState::AtLeast(rv),
                State::Gone(uid) => ExpectedState::Gone(uid),
            },
            mark: self.mark,
        }
    }

    fn shown(&self, stores: &Stores) -> bool {
        stores
            .store(&self.kind)
            .is_none_or(|store| store.shows(&self.expected()))
    }
}

#[derive(Debug, Default)]
struct Pending {
    writes: Vec<Expectation>,
    /// Set while the key is deferred: when the current wait ends.
    deadline: Option<Instant>,
    /// Which controller instance runs a waiter for this key.
    waiter: Option<u64>,
    /// Deadlines passed in this wait.
    overdue: u32,
}

/// What [`Expectations::check`] found for a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Check {
    /// Nothing to wait for: reconcile.
    Clear,
    /// Defer the key until `until` (the deadline).
    Wait {
        /// When the queue re-adds the key by itself.
        until: Instant,
        /// Whether the caller must start a waiter that re-adds the key early.
        start_waiter: bool,
        /// Whether this is the first deferral of this wait (counted once).
        first: bool,
        /// When this check crossed a deadline: how many have passed in this wait (report
        /// it); 0 otherwise, so each deadline is reported once.
        overdue: u32,
    },
}

/// The expectations of one plugin's keys.
#[derive(Debug, Default)]
pub(super) struct Expectations {
    pending: Mutex<HashMap<ObjectKey, Pending>>,
}

impl Expectations {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectKey, Pending>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records what a reconcile of `key` wrote.
    pub(super) fn record(&self, key: &ObjectKey, written: &[Written], stores: &Stores) {
        let new: Vec<Expectation> = written
            .iter()
            .filter_map(|w| Expectation::of(w, stores))
            .collect();
        if !new.is_empty() {
            self.lock()
                .entry(key.clone())
                .or_default()
                .writes
                .extend(new);
        }
    }

    /// Records that `key` found an object gone that the cache may still show: the next
    /// reconcile waits until the cache no longer holds it.
    pub(super) fn record_vanished(&self, key: &ObjectKey, vanished: &Vanished, stores: &Stores) {
        if let Some(e) = Expectation::vanished(vanished, stores) {
            self.lock().entry(key.clone()).or_default().writes.push(e);
        }
    }

    /// Whether `key` may be reconciled now, for controller instance `instance` whose
    /// deadline period is `timeout`.
    pub(super) fn check(
        &self,
        key: &ObjectKey,
        stores: &Stores,
        instance: u64,
        timeout: Duration,
        now: Instant,
    ) -> Check {
        let mut pending = self.lock();
        let Some(p) = pending.get_mut(key) else {
            return Check::Clear;
        };
        p.writes.retain(|w| !w.shown(stores));
        if p.writes.is_empty() {
            pending.remove(key);
            return Check::Clear;
        }
        let first = p.deadline.is_none();
        let mut until = *p.deadline.get_or_insert(now + timeout);
        let mut crossed = false;
        if now >= until {
            p.overdue += 1;
            crossed = true;
            until = now + timeout;
            p.deadline = Some(until);
            p.waiter = None;
        }
        let start_waiter = p.waiter != Some(instance);
        p.waiter = Some(instance);
        Check::Wait {
            until,
            start_waiter,
            first,
            overdue: if crossed { p.overdue } else { 0 },
        }
    }

    /// Whether `key` is still deferred (a waiter re-adds it only then, so one event
    /// does not enqueue a key twice).
    pub(super) fn is_deferred(&self, key: &ObjectKey) -> bool {
        self.lock().get(key).is_some_and(|p| p.deadline.is_some())
    }

    /// Waits until the stores show every pending write of `key`, or `until`.
    pub(super) async fn wait(&self, key: &ObjectKey, stores: &Stores, until: Instant) {
        let writes = self
            .lock()
            .get(key)
            .map(|p| p.writes.clone())
            .unwrap_or_default();
        for w in &writes {
            let Some(store) = stores.store(&w.kind) else {
                continue;
            };
            let left = until.saturating_duration_since(Instant::now());
            store.wait_for(&w.expected(), left).await;
        }
    }

    /// The latest resourceVersion written for `kind` `key` (the primary), if pending.
    pub(super) fn latest(&self, key: &ObjectKey, kind: &Gvk) -> Option<String> {
        self.lock()
            .get(key)?
            .writes
            .iter()
            .rev()
            .find(|w| &w.kind == kind && w.name == key.name && w.namespace == key.namespace)
            .and_then(|w| match &w.state {
                State::AtLeast(rv) => Some(rv.clone()),
                State::Gone(_) => None,
            })
    }

    /// The objects `key` waits for, described (for the lag report).
    pub(super) fn describe(&self, key: &ObjectKey) -> Vec<String> {
        self.lock()
            .get(key)
            .map(|p| {
                p.writes
                    .iter()
                    .map(|w| {
                        let at = match &w.state {
                            State::AtLeast(rv) => format!("resourceVersion {rv}"),
                            State::Gone(_) => "its deletion".to_owned(),
                        };
                        match &w.namespace {
                            Some(ns) => format!("{} {ns}/{} at {at}", w.kind.kind, w.name),
                            None => format!("{} {} at {at}", w.kind.kind, w.name),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ObjectKey {
        ObjectKey {
            namespace: Some("a".into()),
            name: "p".into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn without_writes_a_key_is_clear() {
        let stores = Stores::new_offline();
        let e = Expectations::default();
        let now = Instant::now();
        let check = e.check(&key(), &stores, 1, Duration::from_secs(10), now);
        assert_eq!(check, Check::Clear);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unshown_write_defers_past_the_deadline_and_reports_each_period() {
        let (stores, store) = Stores::with_test_store();
        let e = Expectations::default();
        let w = Written {
            kind: store.gvk().clone(),
            namespace: Some("a".into()),
            name: "child".into(),
            resource_version: Some("5".into()),
            uid: Some("u".into()),
            verb: "create",
            previous: None,
            digest: 0,
            managers: Vec::new(),
        };
        e.record(&key(), std::slice::from_ref(&w), &stores);
        let t = Duration::from_secs(10);
        let now = Instant::now();
        let Check::Wait {
            until,
            start_waiter,
            first,
            overdue,
        } = e.check(&key(), &stores, 1, t, now)
        else {
            panic!("deferred");
        };
        assert_eq!(
            (until, start_waiter, first, overdue),
            (now + t, true, true, 0)
        );
        assert!(e.is_deferred(&key()));
        // The same controller asks again before the deadline: no second waiter.
        let again = e.check(&key(), &stores, 1, t, now + Duration::from_secs(1));
        assert!(matches!(
            again,
            Check::Wait {
                start_waiter: false,
                first: false,
                overdue: 0,
                ..
            }
        ));
        // A restarted controller (another instance) starts its own waiter.
        let restarted = e.check(&key(), &stores, 2, t, now + Duration::from_secs(2));
        assert!(matches!(
            restarted,
            Check::Wait {
                start_waiter: true,
                ..
            }
        ));
        // Past the deadline: still not clear; a new period, reported.
        let late = e.check(&key(), &stores, 2, t, now + t);
        assert!(
            matches!(
                late,
                Check::Wait {
                    overdue: 1,
                    start_waiter: true,
                    ..
                }
            ),
            "{late:?}"
        );
        // Asked again within the new period: not reported a second time.
        let again = e.check(&key(), &stores, 2, t, now + t + Duration::from_secs(1));
        assert!(matches!(again, Check::Wait { overdue: 0, .. }), "{again:?}");
        let second = e.check(&key(), &stores, 2, t, now + t + t);
        assert!(
            matches!(second, Check::Wait { overdue: 2, .. }),
            "{second:?}"
        );
        // The store shows the write: clear, and no longer deferred.
        store.record_event(kube::runtime::watcher::Event::Apply(
            crate::controller::store::testing::cm("child")
                .ns("a")
                .rv(5)
                .build(),
        ));
        assert_eq!(e.check(&key(), &stores, 2, t, now + t), Check::Clear);
        assert!(!e.is_deferred(&key()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_delete_is_expected_until_its_uid_leaves_the_store() {
        let (stores, store) = Stores::with_test_store();
        store.record_event(kube::runtime::watcher::Event::Apply(
            crate::controller::store::testing::cm("old")
                .ns("a")
                .rv(3)
                .uid("u-old")
                .build(),
        ));
        let e = Expectations::default();
        let w = Written {
            kind: store.gvk().clone(),
            namespace: Some("a".into()),
            name: "old".into(),
            resource_version: None,
            uid: Some("u-old".into()),
            verb: "delete",
            previous: Some("3".into()),
            digest: 0,
            managers: Vec::new(),
        };
        e.record(&key(), &[w], &stores);
        let t = Duration::from_secs(10);
        let now = Instant::now();
        assert!(matches!(
            e.check(&key(), &stores, 1, t, now),
            Check::Wait { .. }
        ));
        store.record_event(kube::runtime::watcher::Event::Delete(
            crate::controller::store::testing::cm("old")
                .ns("a")
                .rv(4)
                .uid("u-old")
                .build(),
        ));
        assert_eq!(e.check(&key(), &stores, 1, t, now), Check::Clear);
    }

    #[tokio::test(start_paused = true)]
    async fn an_object_found_gone_is_waited_for_until_the_cache_drops_it() {
        let (stores, store) = Stores::with_test_store();
        let cm = || {
            crate::controller::store::testing::cm("p")
                .ns("a")
                .uid("u-p")
        };
        store.record_event(kube::runtime::watcher::Event::Apply(cm().rv(3).build()));
        let e = Expectations::default();
        let vanished = Vanished {
            kind: store.gvk().clone(),
            namespace: Some("a".into()),
            name: "p".into(),
            uid: "u-p".into(),
        };
        e.record_vanished(&key(), &vanished, &stores);
        let t = Duration::from_secs(10);
        let now = Instant::now();
        assert!(matches!(
            e.check(&key(), &stores, 1, t, now),
            Check::Wait { .. }
        ));
        store.record_event(kube::runtime::watcher::Event::Delete(cm().rv(4).build()));
        assert_eq!(e.check(&key(), &stores, 1, t, now), Check::Clear);
    }
}
