//! The per-plugin work queue: which primary key runs next, and when.
//!
//! One [`Queue`] per plugin. Watches and resync [`add`](Queue::add) keys; a worker loop takes
//! [`Lease`]s with [`next`](Queue::next), reconciles the key, and ends the lease with an
//! [`Outcome`] that decides the key's follow-up (nothing, a requeue after a delay, or an
//! exponential backoff). The semantics follow client-go's rate-limited delaying workqueue
//! (its "dirty" and "processing" sets) and kube-runtime's scheduler and runner; this is where
//! docs/design.md invariants 1 (one at a time per key) and 2 (level-triggered) are enforced.
//!
//! ```no_run
//! use rekon_host::controller::queue::{self, Outcome, Priority, Queue};
//! # async fn reconcile(_key: &(String, String)) -> Result<Option<std::time::Duration>, ()> { Ok(None) }
//! # async fn run() {
//! let queue = Queue::new(queue::Config::default());
//! queue.add(("default".to_owned(), "web".to_owned()), Priority::Live);
//! // One dispatcher; `next` waits while `max_concurrent` leases are out.
//! while let Some(lease) = queue.next().await {
//!     tokio::spawn(async move {
//!         let outcome = match reconcile(lease.key()).await {
//!             Ok(None) => Outcome::Success,
//!             Ok(Some(after)) => Outcome::SuccessRequeueAfter(after),
//!             Err(()) => Outcome::Failed,
//!         };
//!         lease.done(outcome); // a panic above drops the lease: counted as `Failed`
//!     });
//! }
//! queue.drained().await; // after `shutdown()`: wait for the spawned runs
//! # }
//! ```
//!
//! # Design choices
//! - **Delays against immediate adds.** A run supersedes every pending delay of its key: when
//!   a key is leased its pending delay (requeue-after, backoff) is cancelled, because the
//!   outcome of that run schedules the next one. So an event that arrives during a backoff
//!   runs the key at once (as client-go), and no stale delay causes an extra run afterwards.
//!   A delayed add of a key that is already due is a no-op.
//!   Caveat (as client-go): a failing key whose failure itself causes an event (say, a
//!   status write that changes something each time) runs again at once, not after backoff.
//! - **[`Outcome::RetryNow`]** (a 409 Conflict) requeues after `backoff_base` (5 ms by
//!   default) when the key's last run succeeded: the plugin decides again promptly on
//!   fresher state. It counts a failure, so conflicts that persist (a writer contesting
//!   every write, a precondition the cache never catches up with) back off like failures
//!   instead of looping every 5 ms.
//! - **Shutdown** is immediate: [`next`](Queue::next) returns `None` from then on, even if
//!   keys are waiting; waiting and delayed keys are discarded (the next leader relists and
//!   reconciles everything, level-triggered). Leases in flight may finish;
//!   [`drained`](Queue::drained) tells when they have.

mod state;

use std::fmt;
use std::hash::Hash;
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

pub use super::histogram::Histogram;
use state::{Added, Attempt, Scheduled, State};

/// What a queue key must be. The host uses `(namespace, name)`.
pub trait Key: Clone + Eq + Hash + Ord + Send + Sync + 'static {}

impl<T: Clone + Eq + Hash + Ord + Send + Sync + 'static> Key for T {}

/// How a queue runs its keys.
///
/// # Guarantees
/// The default is client-go's `DefaultItemBasedRateLimiter` backoff (5 ms doubling up to
/// 1000 s) with at most 5 concurrent leases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Most leases out at once; 0 is treated as 1.
    pub max_concurrent: usize,
    /// Delay after the first consecutive failure; each further failure doubles it. Also the
    /// fixed delay of [`Outcome::RetryNow`].
    pub backoff_base: Duration,
    /// Longest backoff delay.
    pub backoff_max: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_concurrent: 5,
            backoff_base: Duration::from_millis(5),
            backoff_max: Duration::from_secs(1000),
        }
    }
}

/// Why a key was added, which decides its place in line.
///
/// # Guarantees
/// Every waiting `Live` key is handed out before any waiting `Resync` key; within a priority,
/// keys go in the order they were added. A key's priority only ever rises while it waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// A watch event, a fired delay, or a retry.
    Live,
    /// The periodic resync.
    Resync,
}

/// How a run ended, which decides the key's follow-up.
///
/// # Guarantees
/// Whatever the outcome, a key added while it ran is handed out again right after (once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done; the failure count is reset.
    Success,
    /// Done; run again after the delay (live). The failure count is reset.
    SuccessRequeueAfter(Duration),
    /// Transient failure: run again after `backoff_base × 2^failures` (capped at
    /// `backoff_max`), and count one more failure.
    Failed,
    /// A 409 Conflict: run again promptly (after `backoff_base`) if the key's last run
    /// succeeded, so the plugin decides again on fresher state; counts a failure, so
    /// repeated conflicts back off like [`Failed`](Self::Failed).
    RetryNow,
    /// Failure that retrying will not fix: no retry until the key is added again. The failure
    /// count is reset.
    FailedPermanent,
    /// Not run now: whoever deferred the key adds it again. Until then the queue forgets
    /// it, as after a permanent failure (its failure count included); no retry counted.
    Deferred,
}

/// The shared state behind a [`Queue`] and its [`Lease`]s.
struct Shared<K> {
    state: Mutex<State<K>>,
    /// Wakes workers waiting in `next`: `notify_one` per key that became ready and per slot
    /// freed (tokio hands a `notify_one` on if the woken `next` is cancelled), `notify_waiters`
    /// on shutdown and when the earliest deadline moved earlier: every waiter sleeps until the
    /// earliest deadline (so a fired delay needs no wake-up), and must then look again.
    work: Notify,
    /// Wakes `drained` when the last lease ends.
    idle: Notify,
}

impl<K: Key> Shared<K> {
    fn lock(&self) -> MutexGuard<'_, State<K>> {
        // The state is consistent after every method, so a panic elsewhere does not taint it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn added(&self, added: Added) {
        if added == Added::Ready {
            self.work.notify_one();
        }
    }

    fn scheduled(&self, scheduled: Scheduled) {
        match scheduled {
            Scheduled::Now(added) => self.added(added),
            Scheduled::Delayed { earliest: true } => self.work.notify_waiters(),
            Scheduled::Delayed { earliest: false } | Scheduled::Unchanged => {}
        }
    }

    fn finish(&self, key: &K, outcome: Outcome, started: Instant) {
        let finished = self.lock().finish(key, outcome, started, Instant::now());
        if finished.earliest {
            self.work.notify_waiters();
        } else {
            // A slot freed up, and maybe the key itself is due again.
            self.work.notify_one();
        }
        if finished.drained {
            self.idle.notify_waiters();
        }
    }
}

/// A per-plugin work queue of keys.
///
/// Cloning is cheap; clones share one queue (watches add, workers lease).
///
/// # Guarantees
/// - **Deduplicated, level-triggered:** adding a key that is waiting changes nothing but its
///   priority; adding a key that is leased marks it to run once more right after.
/// - **One at a time per key:** a key is never leased twice at once.
/// - **Bounded:** at most `max_concurrent` leases are out at once.
/// - **Live first:** see [`Priority`]. Delays and backoff: see [`Outcome`] and the module docs.
/// - Time is tokio's, so `tokio::time::pause` controls every delay.
pub struct Queue<K: Key> {
    shared: Arc<Shared<K>>,
}

impl<K: Key> Clone for Queue<K> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<K: Key> fmt::Debug for Queue<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.shared.lock();
        f.debug_struct("Queue")
            .field("config", state.config())
            .field("in_flight", &state.in_flight())
            .field("shut_down", &state.is_shut_down())
            .finish_non_exhaustive()
    }
}

impl<K: Key> Queue<K> {
    /// An empty queue.
    pub fn new(mut config: Config) -> Self {
        config.max_concurrent = config.max_concurrent.max(1);
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State::new(config)),
                work: Notify::new(),
                idle: Notify::new(),
            }),
        }
    }

    /// Adds `key` to run as soon as possible.
    ///
    /// # Guarantees
    /// - A key already waiting is not added twice; a `Live` add raises a waiting `Resync` key
    ///   to `Live`, never the other way round.
    /// - A key currently leased runs once more, right after its lease ends.
    /// - After [`shutdown`](Self::shutdown), does nothing.
    pub fn add(&self, key: K, priority: Priority) {
        let added = self.shared.lock().add(key, priority, Instant::now());
        self.shared.added(added);
    }

    /// Adds `key` (live) once `delay` has passed.
    ///
    /// # Guarantees
    /// - Of several pending delays of one key, the earliest deadline wins.
    /// - A zero delay is an immediate live add. A key that is already due is left alone.
    /// - The next lease of the key cancels its pending delay (see the module docs).
    /// - After [`shutdown`](Self::shutdown), does nothing.
    pub fn add_after(&self, key: K, delay: Duration) {
        let scheduled = self.shared.lock().add_after(key, delay, Instant::now());
        self.shared.scheduled(scheduled);
    }

    /// Waits for the next key to run and leases it.
    ///
    /// # Guarantees
    /// - Waits while no key is ready or `max_concurrent` leases are out.
    /// - Returns `None` once [`shutdown`](Self::shutdown) was called, even if keys are waiting.
    /// - Cancel-safe: dropping the future loses no key and no wake-up.
    pub async fn next(&self) -> Option<Lease<K>> {
        loop {
            // Registered before looking, so a wake-up between the look and the wait is kept.
            let mut notified = pin!(self.shared.work.notified());
            notified.as_mut().enable();
            let now = Instant::now();
            let deadline = match self.shared.lock().try_lease(now) {
                Attempt::Leased(key) => {
                    return Some(Lease {
                        key,
                        started: now,
                        shared: Some(Arc::clone(&self.shared)),
                    });
                }
                Attempt::ShutDown => return None,
                Attempt::Wait(deadline) => deadline,
            };
            match deadline {
                Some(deadline) => {
                    tokio::select! {
                        () = notified => {}
                        () = tokio::time::sleep_until(deadline) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Stops handing out keys: pending and future [`next`](Self::next) calls return `None`,
    /// adds are ignored, and waiting and delayed keys are discarded.
    ///
    /// # Guarantees
    /// Leases in flight stay valid and may be finished; their outcomes schedule nothing.
    pub fn shutdown(&self) {
        self.shared.lock().shut_down();
        self.shared.work.notify_waiters();
    }

    /// Resolves once no lease is in flight (at once if none is).
    ///
    /// # Caveats
    /// Without [`shutdown`](Self::shutdown) first, new leases may start right after.
    pub async fn drained(&self) {
        loop {
            let mut notified = pin!(self.shared.idle.notified());
            notified.as_mut().enable();
            if self.shared.lock().in_flight() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// The configuration in effect.
    pub fn config(&self) -> Config {
        self.shared.lock().config().clone()
    }

    /// Keys waiting to be leased now (client-go's `Len`, `workqueue_depth`). Keys in flight,
    /// even if added again, and keys waiting for a delay are not counted.
    pub fn depth(&self) -> usize {
        self.shared.lock().depth(Instant::now())
    }

    /// Keys waiting for a delay (requeue-after, backoff, retry) to pass.
    pub fn delayed(&self) -> usize {
        self.shared.lock().delayed(Instant::now())
    }

    /// Leases out now.
    pub fn in_flight(&self) -> usize {
        self.shared.lock().in_flight()
    }

    /// Adds that were not collapsed into a waiting key (`workqueue_adds_total`), including
    /// delayed adds when they fire.
    pub fn adds_total(&self) -> u64 {
        self.shared.lock().stats.adds_total
    }

    /// Leases ended with [`Outcome::Failed`] (or dropped) or [`Outcome::RetryNow`]
    /// (`workqueue_retries_total`).
    pub fn retries_total(&self) -> u64 {
        self.shared.lock().stats.retries_total
    }

    /// Consecutive failures of `key` (client-go's `NumRequeues`); 0 after a success.
    pub fn failures(&self, key: &K) -> u32 {
        self.shared.lock().failures(key)
    }

    /// Time from a key being due to being leased (`workqueue_queue_duration_seconds`).
    pub fn queue_duration(&self) -> Histogram {
        self.shared.lock().stats.queue_duration.clone()
    }

    /// Time from lease to its end (`workqueue_work_duration_seconds`).
    pub fn work_duration(&self) -> Histogram {
        self.shared.lock().stats.work_duration.clone()
    }
}

/// The right to run one key, until [`done`](Lease::done) or drop.
///
/// # Guarantees
/// - While a lease is alive no other lease of its key exists.
/// - Dropping it without `done` (a panic in the worker, a cancelled task) ends it as
///   [`Outcome::Failed`], so the key is retried with backoff and never wedged.
#[must_use = "a lease dropped without `done` counts as a failure"]
pub struct Lease<K: Key> {
    key: K,
    started: Instant,
    /// Taken when the lease ends, so it ends once.
    shared: Option<Arc<Shared<K>>>,
}

impl<K: Key> Lease<K> {
    /// The leased key.
    pub fn key(&self) -> &K {
        &self.key
    }

    /// Ends the lease; `outcome` decides the key's follow-up.
    pub fn done(mut self, outcome: Outcome) {
        self.finish(outcome);
    }

    fn finish(&mut self, outcome: Outcome) {
        if let Some(shared) = self.shared.take() {
            shared.finish(&self.key, outcome, self.started);
        }
    }
}

impl<K: Key> Drop for Lease<K> {
    fn drop(&mut self) {
        self.finish(Outcome::Failed);
    }
}

impl<K: Key + fmt::Debug> fmt::Debug for Lease<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("key", &self.key)
            .field("started", &self.started)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use futures::FutureExt as _;
    use tokio::time::timeout;

    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn queue(max_concurrent: usize) -> Queue<&'static str> {
        Queue::new(Config {
            max_concurrent,
            ..Config::default()
        })
    }

    impl<K: Key> Queue<K> {
        fn check_invariants(&self) {
            self.shared.lock().check_invariants();
        }
    }

    /// The lease `next` hands out without letting time pass, if any.
    fn ready_now<K: Key>(queue: &Queue<K>) -> Option<Lease<K>> {
        queue.next().now_or_never().flatten()
    }

    /// Whether nothing is handed out for `period` of (paused) time.
    async fn nothing_for<K: Key>(queue: &Queue<K>, period: Duration) -> bool {
        timeout(period, queue.next()).await.is_err()
    }

    #[track_caller]
    fn assert_waited(start: Instant, expected: Duration) {
        let waited = start.elapsed();
        // tokio's timers tick in whole milliseconds.
        assert!(
            waited >= expected && waited <= expected + Duration::from_millis(1),
            "expected to wait {expected:?}, waited {waited:?}"
        );
    }

    #[test]
    fn leases_and_waits_can_move_across_tasks() {
        fn assert_send<T: Send>(_: &T) {}
        let queue = queue(1);
        assert_send(&queue.next());
        assert_send(&queue.drained());
        queue.add("a", Priority::Live);
        let lease = queue
            .next()
            .now_or_never()
            .flatten()
            .expect("the key is ready");
        assert_send(&lease);
    }

    #[tokio::test(start_paused = true)]
    async fn burst_of_adds_collapses_into_one_lease() {
        let queue = queue(4);
        for _ in 0..100 {
            queue.add("a", Priority::Live);
        }
        queue.add("a", Priority::Resync);
        assert_eq!((queue.depth(), queue.adds_total()), (1, 1));
        let lease = ready_now(&queue).expect("the key is ready");
        assert_eq!(*lease.key(), "a");
        lease.done(Outcome::Success);
        assert!(nothing_for(&queue, HOUR).await);
        queue.check_invariants();
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_is_never_leased_twice_at_once() {
        let queue = queue(4);
        queue.add("a", Priority::Live);
        let first = ready_now(&queue).expect("the key is ready");
        queue.add("a", Priority::Live);
        queue.add("a", Priority::Resync);
        assert_eq!(queue.depth(), 0, "a dirty key in flight is not waiting");
        assert!(nothing_for(&queue, HOUR).await);
        first.done(Outcome::Success);
        let second = ready_now(&queue).expect("handed out again right after the run");
        assert_eq!(*second.key(), "a");
        second.done(Outcome::Success);
        assert!(nothing_for(&queue, HOUR).await, "once, not once per add");
        assert_eq!(queue.adds_total(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrency_limit_is_respected() {
        let queue = queue(2);
        for key in ["a", "b", "c", "d"] {
            queue.add(key, Priority::Live);
        }
        let a = ready_now(&queue).expect("a slot is free");
        let b = ready_now(&queue).expect("a slot is free");
        assert_eq!((queue.in_flight(), queue.depth()), (2, 2));
        assert!(nothing_for(&queue, HOUR).await);
        a.done(Outcome::Success);
        let c = ready_now(&queue).expect("a slot was freed");
        assert_eq!(*c.key(), "c");
        assert!(ready_now(&queue).is_none());
        assert_eq!(queue.in_flight(), 2);
        drop((b, c));
        queue.check_invariants();
    }

    #[tokio::test(start_paused = true)]
    async fn live_keys_go_before_resync_keys() {
        let queue = queue(10);
        queue.add("r1", Priority::Resync);
        queue.add("r2", Priority::Resync);
        queue.add("l1", Priority::Live);
        queue.add("r2", Priority::Live); // promoted; keeps its place (added before l1)
        queue.add("l1", Priority::Resync); // stays live
        let order: Vec<_> = std::iter::from_fn(|| ready_now(&queue))
            .map(|lease| *lease.key())
            .collect();
        assert_eq!(order, ["r2", "l1", "r1"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_fired_delay_goes_before_waiting_resync_keys() {
        let queue = queue(1);
        queue.add("x", Priority::Live);
        let x = ready_now(&queue).expect("the key is ready");
        queue.add("r", Priority::Resync);
        queue.add_after("d", Duration::from_secs(1));
        tokio::time::advance(Duration::from_secs(2)).await;
        x.done(Outcome::Success);
        let order: Vec<_> =
            std::iter::from_fn(|| ready_now(&queue).map(|lease| *lease.key())).collect();
        assert_eq!(order, ["d", "r"]);
    }

    #[tokio::test(start_paused = true)]
    async fn requeue_after_fires_after_the_delay() {
        let queue = queue(1);
        queue.add("a", Priority::Live);
        let start = Instant::now();
        let lease = ready_now(&queue).expect("the key is ready");
        lease.done(Outcome::SuccessRequeueAfter(Duration::from_secs(30)));
        assert_eq!((queue.depth(), queue.delayed()), (0, 1));
        assert!(nothing_for(&queue, Duration::from_secs(29)).await);
        let again = queue.next().await.expect("the delay fired");
        assert_waited(start, Duration::from_secs(30));
        assert_eq!((*again.key(), queue.failures(&"a")), ("a", 0));
    }

    #[tokio::test(start_paused = true)]
    async fn the_earliest_pending_delay_wins() {
        let queue = queue(1);
        let start = Instant::now();
        queue.add_after("a", Duration::from_secs(10));
        queue.add_after("a", Duration::from_secs(3));
        queue.add_after("a", Duration::from_secs(20));
        assert_eq!(queue.delayed(), 1);
        queue
            .next()
            .await
            .expect("the delay fired")
            .done(Outcome::Success);
        assert_waited(start, Duration::from_secs(3));
        assert!(nothing_for(&queue, HOUR).await);
    }

    #[tokio::test(start_paused = true)]
    async fn an_add_runs_at_once_and_the_run_cancels_the_pending_delay() {
        let queue = queue(1);
        queue.add("a", Priority::Live);
        let lease = ready_now(&queue).expect("the key is ready");
        lease.done(Outcome::SuccessRequeueAfter(Duration::from_secs(60)));
        queue.add("a", Priority::Live);
        let lease = ready_now(&queue).expect("an event runs the key at once");
        assert_eq!(queue.delayed(), 0);
        lease.done(Outcome::Success);
        assert!(nothing_for(&queue, HOUR).await);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_exponentially_and_success_resets() {
        let queue = queue(1);
        queue.add("a", Priority::Live);
        let mut lease = ready_now(&queue).expect("the key is ready");
        for failures in 0..20 {
            let expected =
                (Duration::from_millis(5) * 2u32.pow(failures)).min(Duration::from_secs(1000));
            let start = Instant::now();
            lease.done(Outcome::Failed);
            assert_eq!(queue.failures(&"a"), failures + 1);
            lease = queue.next().await.expect("retried");
            assert_waited(start, expected);
        }
        assert_eq!(queue.retries_total(), 20);
        lease.done(Outcome::Success);
        assert_eq!(queue.failures(&"a"), 0);
        queue.add("a", Priority::Live);
        let start = Instant::now();
        ready_now(&queue)
            .expect("the key is ready")
            .done(Outcome::Failed);
        queue.next().await.expect("retried").done(Outcome::Success);
        assert_waited(start, Duration::from_millis(5));
        queue.check_invariants();
    }

    #[test]
    fn backoff_saturates_at_the_cap() {
        let config = Config::default();
        assert_eq!(state::backoff(&config, 0), Duration::from_millis(5));
        assert_eq!(state::backoff(&config, 17), Duration::from_millis(655_360));
        for failures in [18, 31, 32, 64, u32::MAX] {
            assert_eq!(state::backoff(&config, failures), Duration::from_secs(1000));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_first_conflict_retries_promptly_and_repeated_ones_back_off() {
        let queue = queue(1);
        queue.add("a", Priority::Live);
        let mut lease = ready_now(&queue).expect("the key is ready");
        // Conflict after conflict: 5, 10, 20, 40 ms…, not 5 ms forever.
        for expected_ms in [5, 10, 20, 40, 80] {
            let start = Instant::now();
            lease.done(Outcome::RetryNow);
            lease = queue.next().await.expect("retried");
            assert_waited(start, Duration::from_millis(expected_ms));
        }
        assert_eq!(queue.failures(&"a"), 5);
        lease.done(Outcome::Success);
        // After a success, the next conflict is retried after the base delay again.
        queue.add("a", Priority::Live);
        let start = Instant::now();
        ready_now(&queue).expect("ready").done(Outcome::RetryNow);
        queue.next().await.expect("retried").done(Outcome::Success);
        assert_waited(start, Duration::from_millis(5));
        assert_eq!(queue.retries_total(), 6);
    }

    #[tokio::test(start_paused = true)]
    async fn a_permanent_failure_waits_for_the_next_add() {
        let queue = queue(1);
        queue.add("a", Priority::Live);
        ready_now(&queue)
            .expect("the key is ready")
            .done(Outcome::FailedPermanent);
        assert!(nothing_for(&queue, HOUR).await);
        assert_eq!(queue.failures(&"a"), 0);
        queue.add("a", Priority::Live);
        let lease = ready_now(&queue).expect("an event runs the key again");
        // Added while it runs: runs again right after, whatever the outcome.
        queue.add("a", Priority::Live);
        lease.done(Outcome::FailedPermanent);
        assert!(ready_now(&queue).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_deferred_key_waits_for_whoever_deferred_it() {
        let queue = queue(1);
        queue.add("a", Priority::Live);
        ready_now(&queue)
            .expect("the key is ready")
            .done(Outcome::Deferred);
        assert!(nothing_for(&queue, HOUR).await);
        assert_eq!(queue.retries_total(), 0);
        queue.add("a", Priority::Live);
        let lease = ready_now(&queue).expect("added again, it runs");
        // Added again while deferring (the waiter was quicker): runs right after.
        queue.add("a", Priority::Live);
        lease.done(Outcome::Deferred);
        ready_now(&queue)
            .expect("runs again")
            .done(Outcome::Success);
        queue.check_invariants();
    }

    /// Spawns a worker that waits in `next` and reports its key and when it got it.
    fn waiting_worker(
        queue: &Queue<&'static str>,
    ) -> tokio::task::JoinHandle<Option<(&'static str, Instant)>> {
        let queue = queue.clone();
        tokio::spawn(async move {
            let lease = queue.next().await?;
            let key = *lease.key();
            lease.done(Outcome::Success);
            Some((key, Instant::now()))
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_worker_wakes_when_a_key_is_added() {
        let queue = queue(1);
        let worker = waiting_worker(&queue);
        tokio::task::yield_now().await;
        let start = Instant::now();
        queue.add("a", Priority::Live);
        let woken = timeout(HOUR, worker)
            .await
            .expect("woken")
            .expect("no panic");
        assert_eq!(woken, Some(("a", start)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_worker_wakes_when_a_slot_frees_up() {
        let queue = queue(1);
        queue.add("a", Priority::Live);
        queue.add("b", Priority::Live);
        let a = ready_now(&queue).expect("the key is ready");
        let worker = waiting_worker(&queue);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let start = Instant::now();
        a.done(Outcome::Success);
        let woken = timeout(HOUR, worker)
            .await
            .expect("woken")
            .expect("no panic");
        assert_eq!(woken, Some(("b", start)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_worker_wakes_for_a_new_earlier_deadline() {
        let queue = queue(1);
        let worker = waiting_worker(&queue);
        tokio::task::yield_now().await;
        let start = Instant::now();
        queue.add_after("late", Duration::from_secs(60));
        tokio::task::yield_now().await;
        queue.add_after("early", Duration::from_secs(1));
        let woken = timeout(HOUR, worker)
            .await
            .expect("woken")
            .expect("no panic");
        assert_eq!(woken, Some(("early", start + Duration::from_secs(1))));
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_worker_wakes_when_a_retry_becomes_due() {
        let queue = queue(1);
        queue.add("a", Priority::Live);
        let a = ready_now(&queue).expect("the key is ready");
        let worker = waiting_worker(&queue);
        tokio::task::yield_now().await;
        let start = Instant::now();
        a.done(Outcome::Failed);
        let woken = timeout(HOUR, worker)
            .await
            .expect("woken")
            .expect("no panic");
        assert_eq!(woken, Some(("a", start + Duration::from_millis(5))));
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_lease_counts_as_failure() {
        let queue = queue(1);
        queue.add("a", Priority::Live);
        let lease = ready_now(&queue).expect("the key is ready");
        let worker = tokio::spawn(async move {
            let _lease = lease;
            panic!("a worker panics while holding a lease (expected by this test)");
        });
        assert!(worker.await.expect_err("the worker panicked").is_panic());
        assert_eq!((queue.failures(&"a"), queue.retries_total()), (1, 1));
        assert_eq!(queue.in_flight(), 0);
        let start = Instant::now();
        drop(queue.next().await.expect("retried with backoff"));
        assert_waited(start, Duration::from_millis(5));
        assert_eq!(queue.failures(&"a"), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_stops_handing_out_and_drained_waits_for_in_flight() {
        let queue = queue(1);
        queue.add("a", Priority::Live);
        queue.add("b", Priority::Live);
        let a = ready_now(&queue).expect("the key is ready");
        let waiting = tokio::spawn({
            let queue = queue.clone();
            async move { queue.next().await.map(|lease| *lease.key()) }
        });
        tokio::task::yield_now().await;
        queue.shutdown();
        assert_eq!(waiting.await.expect("no panic"), None);
        assert!(
            queue.next().await.is_none(),
            "b is waiting but not handed out"
        );
        queue.add("c", Priority::Live);
        queue.add_after("c", Duration::from_secs(1));
        assert_eq!((queue.depth(), queue.delayed()), (0, 0));
        let mut drained = pin!(queue.drained());
        assert!(futures::poll!(drained.as_mut()).is_pending());
        a.done(Outcome::Failed);
        drained.await;
        assert_eq!((queue.in_flight(), queue.delayed()), (0, 0));
        queue.check_invariants();
    }

    #[tokio::test(start_paused = true)]
    async fn queue_duration_measures_from_due_to_lease() {
        let queue = queue(1);
        queue.add("a", Priority::Live);
        tokio::time::advance(Duration::from_secs(2)).await;
        let lease = queue.next().await.expect("the key is ready");
        tokio::time::advance(Duration::from_millis(50)).await;
        lease.done(Outcome::Success);
        let waited = queue.queue_duration();
        assert_eq!((waited.count(), waited.sum()), (1, Duration::from_secs(2)));
        let buckets: Vec<_> = waited.buckets().collect();
        assert_eq!(
            buckets[8..],
            [(Duration::from_secs(1), 0), (Duration::from_secs(10), 1)]
        );
        assert_eq!(queue.work_duration().sum(), Duration::from_millis(50));
    }

    /// A tiny deterministic generator (xorshift64).
    struct XorShift(u64);

    impl XorShift {
        fn below(&mut self, bound: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % bound
        }
    }

    /// What the random workload saw, stamped with a logical clock.
    #[derive(Default)]
    struct Seen {
        clock: u64,
        running: HashSet<u32>,
        most_running: usize,
        overlaps: usize,
        last_add: HashMap<u32, u64>,
        last_start: HashMap<u32, u64>,
    }

    impl Seen {
        fn tick(&mut self) -> u64 {
            self.clock += 1;
            self.clock
        }
    }

    #[tokio::test(start_paused = true)]
    async fn random_workers_never_overlap_a_key_and_run_every_key_after_its_last_add() {
        for seed in [1, 7, 42, 0x9E37_79B9_7F4A_7C15] {
            random_workload(seed).await;
        }
    }

    async fn random_workload(seed: u64) {
        const MAX_CONCURRENT: usize = 3;
        let queue: Queue<u32> = Queue::new(Config {
            max_concurrent: MAX_CONCURRENT,
            ..Config::default()
        });
        let seen = Arc::new(Mutex::new(Seen::default()));
        let workers: Vec<_> = (0..5u64)
            .map(|worker| {
                let (queue, seen) = (queue.clone(), Arc::clone(&seen));
                let mut rng = XorShift(seed ^ (worker + 1).wrapping_mul(0x2545_F491_4F6C_DD1D));
                tokio::spawn(async move {
                    while let Some(lease) = queue.next().await {
                        let key = *lease.key();
                        {
                            let mut seen = seen.lock().unwrap();
                            if !seen.running.insert(key) {
                                seen.overlaps += 1;
                            }
                            seen.most_running = seen.most_running.max(seen.running.len());
                            let now = seen.tick();
                            seen.last_start.insert(key, now);
                        }
                        tokio::time::sleep(Duration::from_millis(rng.below(20))).await;
                        seen.lock().unwrap().running.remove(&key);
                        match rng.below(10) {
                            0..=4 => lease.done(Outcome::Success),
                            5 => lease.done(Outcome::SuccessRequeueAfter(Duration::from_millis(
                                1 + rng.below(50),
                            ))),
                            6 => lease.done(Outcome::Failed),
                            7 => lease.done(Outcome::RetryNow),
                            8 => lease.done(Outcome::FailedPermanent),
                            _ => drop(lease),
                        }
                    }
                })
            })
            .collect();

        let mut rng = XorShift(seed);
        for _ in 0..400 {
            let key = u32::try_from(rng.below(16)).expect("small");
            match rng.below(8) {
                0..=5 => {
                    let priority = if rng.below(3) == 0 {
                        Priority::Resync
                    } else {
                        Priority::Live
                    };
                    // Stamp and add with no await between: one step on this runtime.
                    let now = seen.lock().unwrap().tick();
                    seen.lock().unwrap().last_add.insert(key, now);
                    queue.add(key, priority);
                }
                _ => queue.add_after(key, Duration::from_millis(rng.below(30))),
            }
            queue.check_invariants();
            if rng.below(3) == 0 {
                tokio::time::sleep(Duration::from_millis(rng.below(5))).await;
            } else {
                tokio::task::yield_now().await;
            }
        }

        let settle_by = Instant::now() + HOUR;
        while queue.depth() + queue.delayed() + queue.in_flight() > 0 {
            assert!(
                Instant::now() < settle_by,
                "seed {seed}: the queue never settled"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
            queue.check_invariants();
        }
        {
            let seen = seen.lock().unwrap();
            assert_eq!(
                seen.overlaps, 0,
                "seed {seed}: a key was leased twice at once"
            );
            assert!(seen.most_running <= MAX_CONCURRENT, "seed {seed}");
            for (key, added) in &seen.last_add {
                assert!(
                    seen.last_start.get(key) > Some(added),
                    "seed {seed}: key {key} did not run after its last add"
                );
            }
        }
        queue.shutdown();
        for worker in workers {
            worker.await.expect("workers do not panic");
        }
        queue.drained().await;
    }
}
