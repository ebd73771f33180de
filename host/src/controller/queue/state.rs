//! The queue's bookkeeping as a plain state machine: no locks, no waiting, and every method
//! that needs the time is given `now`. [`super::Queue`] wraps it in a mutex and wakes workers
//! according to what each method returns.
//!
//! Per key there is one [`Entry`]; the invariants, checked by `debug_assert`s in tests:
//! - the key is in `ready` exactly when it is wanted and not leased;
//! - the key is in `delays` exactly when its entry holds a delay ticket;
//! - an entry with nothing wanted, no lease, no delay and no failures is removed.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use tokio::time::Instant;

use super::{Config, Histogram, Key, Outcome, Priority};

/// Longest delay the queue schedules; longer ones are shortened to it (as tokio's own
/// "far future"), so `now + delay` cannot overflow.
const MAX_DELAY: Duration = Duration::from_secs(86_400 * 365 * 30);

/// A key that should run: at which priority, its place in line, and since when it is due.
#[derive(Debug, Clone, Copy)]
struct Want {
    priority: Priority,
    /// Place in line: keys of one priority are handed out in the order they were added.
    seq: u64,
    /// When the key became due (its add, its delay's deadline, or the end of the run it
    /// waited for); the queue duration is measured from here.
    since: Instant,
}

/// A pending delayed add: its deadline, and a sequence number to tell equal deadlines apart.
type Ticket = (Instant, u64);

#[derive(Debug, Default)]
struct Entry {
    /// Set while the key is waiting to run; while it is also leased, it is "dirty".
    want: Option<Want>,
    leased: bool,
    delay: Option<Ticket>,
    /// Consecutive failures, for the backoff.
    failures: u32,
}

impl Entry {
    fn is_idle(&self) -> bool {
        self.want.is_none() && !self.leased && self.delay.is_none() && self.failures == 0
    }
}

/// What an add did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Added {
    /// The queue is shut down; nothing changed.
    Ignored,
    /// The key was already waiting (its priority may have been raised).
    Collapsed,
    /// The key is now waiting to be leased.
    Ready,
    /// The key is leased; it runs again once, after the lease is done.
    Dirty,
}

/// What a delayed add did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Scheduled {
    /// The delay was zero: an immediate live add.
    Now(Added),
    /// The key's pending deadline is unchanged, or the key is due anyway.
    Unchanged,
    /// The key's deadline was set or moved earlier; `earliest` if it is now the queue's
    /// earliest deadline.
    Delayed { earliest: bool },
}

/// The result of trying to lease a key.
#[derive(Debug)]
pub(super) enum Attempt<K> {
    /// A key was leased.
    Leased(K),
    /// Shut down: nothing more will be handed out.
    ShutDown,
    /// Nothing to hand out now; try again when woken or at the deadline, if any.
    Wait(Option<Instant>),
}

/// What finishing a lease did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Finished {
    /// A follow-up was scheduled at the queue's new earliest deadline.
    pub(super) earliest: bool,
    /// No lease is in flight any more.
    pub(super) drained: bool,
}

/// Counters and timings, read by the metrics accessors.
#[derive(Debug, Default)]
pub(super) struct Stats {
    pub(super) adds_total: u64,
    pub(super) retries_total: u64,
    pub(super) queue_duration: Histogram,
    pub(super) work_duration: Histogram,
}

/// The whole queue state.
#[derive(Debug)]
pub(super) struct State<K> {
    config: Config,
    entries: HashMap<K, Entry>,
    /// Keys waiting to be leased, live before resync, then in order of addition.
    ready: BTreeMap<(Priority, u64), K>,
    /// Pending delayed adds, earliest first.
    delays: BTreeMap<Ticket, K>,
    in_flight: usize,
    next_seq: u64,
    shut_down: bool,
    pub(super) stats: Stats,
}

/// The delay after the `failures`+1-th consecutive failure: `base × 2^failures`, capped at
/// `max` (client-go's `ItemExponentialFailureRateLimiter`).
pub(super) fn backoff(config: &Config, failures: u32) -> Duration {
    1u32.checked_shl(failures)
        .and_then(|factor| config.backoff_base.checked_mul(factor))
        .map_or(config.backoff_max, |delay| delay.min(config.backoff_max))
}

impl<K: Key> State<K> {
    pub(super) fn new(config: Config) -> Self {
        Self {
            config,
            entries: HashMap::new(),
            ready: BTreeMap::new(),
            delays: BTreeMap::new(),
            in_flight: 0,
            next_seq: 0,
            shut_down: false,
            stats: Stats::default(),
        }
    }

    pub(super) fn config(&self) -> &Config {
        &self.config
    }

    pub(super) fn is_shut_down(&self) -> bool {
        self.shut_down
    }

    pub(super) fn in_flight(&self) -> usize {
        self.in_flight
    }

    pub(super) fn failures(&self, key: &K) -> u32 {
        self.entries.get(key).map_or(0, |entry| entry.failures)
    }

    /// Keys waiting to be leased now, after moving due delays in.
    pub(super) fn depth(&mut self, now: Instant) -> usize {
        self.promote_due(now);
        self.ready.len()
    }

    /// Keys with a pending delayed add, after moving due delays in.
    pub(super) fn delayed(&mut self, now: Instant) -> usize {
        self.promote_due(now);
        self.delays.len()
    }

    fn next_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    /// Marks `key` as wanted at `priority`, due since `since`.
    pub(super) fn add(&mut self, key: K, priority: Priority, since: Instant) -> Added {
        if self.shut_down {
            return Added::Ignored;
        }
        let seq = self.next_seq();
        let entry = self.entries.entry(key.clone()).or_default();
        let added = match &mut entry.want {
            Some(want) => {
                if priority < want.priority {
                    if !entry.leased {
                        let line = self.ready.remove(&(want.priority, want.seq));
                        debug_assert!(line.is_some(), "a waiting key is in the ready line");
                        self.ready.insert((priority, want.seq), key);
                    }
                    want.priority = priority;
                }
                Added::Collapsed
            }
            None => {
                entry.want = Some(Want {
                    priority,
                    seq,
                    since,
                });
                if entry.leased {
                    Added::Dirty
                } else {
                    self.ready.insert((priority, seq), key);
                    Added::Ready
                }
            }
        };
        if added != Added::Collapsed {
            self.stats.adds_total += 1;
        }
        added
    }

    /// Adds `key` live once `delay` has passed; the earliest pending deadline wins.
    pub(super) fn add_after(&mut self, key: K, delay: Duration, now: Instant) -> Scheduled {
        if delay.is_zero() {
            return Scheduled::Now(self.add(key, Priority::Live, now));
        }
        if self.shut_down {
            return Scheduled::Unchanged;
        }
        let at = now + delay.min(MAX_DELAY);
        let seq = self.next_seq();
        let entry = self.entries.entry(key.clone()).or_default();
        if entry.want.is_some() {
            // Due already: the coming run supersedes any later deadline.
            return Scheduled::Unchanged;
        }
        if let Some(pending) = entry.delay {
            if pending.0 <= at {
                return Scheduled::Unchanged;
            }
            self.delays.remove(&pending);
        }
        let ticket = (at, seq);
        entry.delay = Some(ticket);
        self.delays.insert(ticket, key);
        let earliest = self.delays.first_key_value().map(|(first, _)| *first) == Some(ticket);
        Scheduled::Delayed { earliest }
    }

    /// Moves every delayed add whose deadline has passed into the ready line (live).
    fn promote_due(&mut self, now: Instant) {
        while let Some(first) = self.delays.first_entry() {
            if first.key().0 > now {
                break;
            }
            let ((at, _), key) = first.remove_entry();
            if let Some(entry) = self.entries.get_mut(&key) {
                entry.delay = None;
            }
            self.add(key, Priority::Live, at);
        }
    }

    /// Leases the first ready key if the concurrency limit allows.
    pub(super) fn try_lease(&mut self, now: Instant) -> Attempt<K> {
        if self.shut_down {
            return Attempt::ShutDown;
        }
        self.promote_due(now);
        if self.in_flight < self.config.max_concurrent
            && let Some((_, key)) = self.ready.pop_first()
        {
            return self.lease(key, now);
        }
        Attempt::Wait(self.delays.first_key_value().map(|((at, _), _)| *at))
    }

    /// Marks `key`, just taken from the ready line, as leased.
    fn lease(&mut self, key: K, now: Instant) -> Attempt<K> {
        let entry = self.entries.entry(key.clone()).or_default();
        let want = entry.want.take();
        debug_assert!(
            want.is_some() && !entry.leased,
            "a ready key is wanted, not leased"
        );
        entry.leased = true;
        // The run supersedes a pending delay: its outcome schedules the next one.
        if let Some(ticket) = entry.delay.take() {
            self.delays.remove(&ticket);
        }
        self.in_flight += 1;
        if let Some(want) = want {
            let waited = now.saturating_duration_since(want.since);
            self.stats.queue_duration.observe(waited);
        }
        Attempt::Leased(key)
    }

    /// Ends the lease of `key`, started at `started`, with `outcome`.
    pub(super) fn finish(
        &mut self,
        key: &K,
        outcome: Outcome,
        started: Instant,
        now: Instant,
    ) -> Finished {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.stats
            .work_duration
            .observe(now.saturating_duration_since(started));
        let drained = self.in_flight == 0;
        let Some(entry) = self.entries.get_mut(key) else {
            debug_assert!(false, "a leased key has an entry");
            return Finished {
                earliest: false,
                drained,
            };
        };
        entry.leased = false;
        if self.shut_down {
            self.entries.remove(key);
            return Finished {
                earliest: false,
                drained,
            };
        }
        let follow_up = match outcome {
            Outcome::Success => {
                entry.failures = 0;
                None
            }
            Outcome::SuccessRequeueAfter(delay) => {
                entry.failures = 0;
                Some(delay)
            }
            // A conflict is retried after the base delay when the key last succeeded;
            // repeated ones back off like failures (a conflict that persists is one).
            Outcome::Failed | Outcome::RetryNow => {
                let delay = backoff(&self.config, entry.failures);
                entry.failures = entry.failures.saturating_add(1);
                self.stats.retries_total += 1;
                Some(delay)
            }
            Outcome::FailedPermanent => {
                entry.failures = 0;
                None
            }
            Outcome::Deferred => None,
        };
        // Dirty: added while it ran; it is due from now, in its place in line.
        if let Some(want) = &mut entry.want {
            want.since = now;
            self.ready.insert((want.priority, want.seq), key.clone());
        }
        let earliest = match follow_up {
            Some(delay) => matches!(
                self.add_after(key.clone(), delay, now),
                Scheduled::Delayed { earliest: true }
            ),
            None => false,
        };
        if self.entries.get(key).is_some_and(Entry::is_idle) {
            self.entries.remove(key);
        }
        Finished { earliest, drained }
    }

    /// Stops handing out keys and forgets every waiting and delayed key.
    pub(super) fn shut_down(&mut self) {
        self.shut_down = true;
        self.ready.clear();
        self.delays.clear();
        self.entries.retain(|_, entry| {
            entry.want = None;
            entry.delay = None;
            entry.leased
        });
    }

    /// Checks the invariants in the module docs (tests only).
    #[cfg(test)]
    pub(super) fn check_invariants(&self) {
        let mut leased = 0;
        for (key, entry) in &self.entries {
            assert!(!entry.is_idle(), "idle entries are removed");
            leased += usize::from(entry.leased);
            match (entry.want, entry.leased) {
                (Some(want), false) => {
                    assert!(self.ready.get(&(want.priority, want.seq)) == Some(key));
                }
                _ => assert!(!self.ready.values().any(|k| k == key)),
            }
            if let Some(ticket) = entry.delay {
                assert!(self.delays.get(&ticket) == Some(key));
            }
        }
        assert_eq!(leased, self.in_flight);
        assert!(self.in_flight <= self.config.max_concurrent);
        assert!(self.ready.values().all(|k| self.entries.contains_key(k)));
        assert!(
            self.delays
                .iter()
                .all(|(ticket, k)| self.entries.get(k).and_then(|e| e.delay) == Some(*ticket))
        );
    }
}
