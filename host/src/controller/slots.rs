//! The host's sandbox slots, shared fairly between plugins.
//!
//! Every plugin call (a reconcile, a finalize, a custom key mapping) holds one slot while
//! its sandbox instance lives. There are N of them for the whole host (the sandbox pool's
//! size): a plain semaphore would hand them out first come, first served, so one plugin
//! looping to its time budget on many primaries could hold all N, again at every resync,
//! while every other plugin waits.
//!
//! # Guarantees
//! - At most N slots are held at once, and at most a plugin's share
//!   ([`Slots::limit`]) by that plugin.
//! - **Fair**: when a slot frees and several plugins wait, it goes to the waiting plugin
//!   holding the fewest slots (ties: the one whose oldest waiter has waited longest), and
//!   a plugin's own waiters are served in arrival order. So a plugin with work gets at
//!   least its fair share — N divided by the number of plugins with work — as soon as
//!   slots free, however many calls another plugin has queued.
//! - **Work-conserving**: a slot is never left free while a plugin under its share waits
//!   for one; a plugin alone may use all N (idle plugins reserve nothing).
//! - **Cancel-safe**: dropping an [`acquire`](Slots::acquire) future before it resolves
//!   leaves nothing held; a slot granted to it in that instant goes to the next waiter.
//! - No polling: a waiter sleeps until a slot is handed to it.
//!
//! # Caveats
//! - No preemption: a slot is handed over when the call holding it ends, so a waiter can
//!   wait up to the longest call in flight (bounded by the time budget of the sandbox
//!   limits).
//! - Fairness is by slots held, not by time used: a plugin whose calls are short gets
//!   through more calls with its share than one whose calls run to their budget.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::oneshot;

/// How free slots are handed to waiters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Policy {
    /// To the waiting plugin holding the fewest slots (see the module's guarantees).
    #[default]
    Fair,
    /// To the oldest waiter whatever its plugin, as a plain semaphore does: one plugin
    /// with many calls queued takes every slot. Kept as the baseline the fairness bench
    /// compares against.
    Fifo,
}

/// N sandbox slots shared by plugins (see the module's guarantees). Cloning shares the
/// slots.
#[derive(Clone)]
pub struct Slots {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Slots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.inner.lock();
        f.debug_struct("Slots")
            .field("total", &state.total)
            .field("free", &state.free)
            .field("policy", &state.policy)
            .finish_non_exhaustive()
    }
}

struct Inner {
    state: Mutex<State>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is consistent between statements: a panic elsewhere cannot tear it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct State {
    total: usize,
    free: usize,
    policy: Policy,
    /// Plugins holding or waiting for slots; an entry goes when it has neither.
    plugins: HashMap<String, PluginState>,
    /// Per plugin: the most slots it may hold, when below `total`.
    shares: HashMap<String, usize>,
    /// Arrival order of waiters.
    next_ticket: u64,
}

#[derive(Default)]
struct PluginState {
    held: usize,
    waiting: VecDeque<Waiter>,
}

struct Waiter {
    ticket: u64,
    grant: oneshot::Sender<Slot>,
}

/// One slot, held until dropped.
#[must_use = "the slot is released when dropped"]
pub struct Slot {
    inner: Option<Arc<Inner>>,
    plugin: String,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("plugin", &self.plugin)
            .finish()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            let mut state = inner.lock();
            state.release(&self.plugin);
            state.dispatch(&inner);
        }
    }
}

impl Slots {
    /// `total` slots (at least one), handed out fairly.
    pub fn new(total: usize) -> Self {
        Self::with_policy(total, Policy::Fair)
    }

    /// `total` slots (at least one), handed out by `policy`.
    pub fn with_policy(total: usize, policy: Policy) -> Self {
        let total = total.max(1);
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    total,
                    free: total,
                    policy,
                    plugins: HashMap::new(),
                    shares: HashMap::new(),
                    next_ticket: 0,
                }),
            }),
        }
    }

    /// Caps the slots `plugin` may hold at once at `share` (at least one); `None` lifts
    /// the cap. Slots it holds beyond a lowered cap are kept until released.
    pub fn limit(&self, plugin: &str, share: Option<usize>) {
        let mut state = self.inner.lock();
        match share {
            Some(n) => state.shares.insert(plugin.to_owned(), n.max(1)),
            None => state.shares.remove(plugin),
        };
        // A raised cap may let waiters in.
        state.dispatch(&self.inner);
    }

    /// Slots free now.
    pub fn available(&self) -> usize {
        self.inner.lock().free
    }

    /// Slots `plugin` holds now.
    pub fn held(&self, plugin: &str) -> usize {
        self.inner.lock().plugins.get(plugin).map_or(0, |p| p.held)
    }

    /// Waits for a slot for a call of `plugin`.
    ///
    /// # Guarantees
    /// Cancel-safe: dropped before it resolves, it holds nothing and its place goes to the
    /// next waiter. It resolves once this waiter is chosen (see the module's guarantees).
    pub async fn acquire(&self, plugin: &str) -> Slot {
        loop {
            let (ticket, granted) = match self.try_acquire_or_wait(plugin) {
                Ok(slot) => return slot,
                Err(waiting) => waiting,
            };
            let withdraw = Withdraw {
                inner: &self.inner,
                plugin,
                ticket,
            };
            let granted = granted.await;
            drop(withdraw);
            // A sender goes unused only when its waiter is withdrawn, which is this
            // future being dropped: the error arm cannot happen, but waiting again is
            // the safe answer if it ever did.
            if let Ok(slot) = granted {
                return slot;
            }
        }
    }

    /// A slot at once if one is free for `plugin`, else its place in the queue.
    fn try_acquire_or_wait(&self, plugin: &str) -> Result<Slot, (u64, oneshot::Receiver<Slot>)> {
        let mut state = self.inner.lock();
        // Free slots left after dispatching mean no eligible plugin waits: anyone under
        // its share may take one.
        if state.free > 0 && state.under_share(plugin) {
            state.take(plugin);
            return Ok(Slot {
                inner: Some(self.inner.clone()),
                plugin: plugin.to_owned(),
            });
        }
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        let (grant, granted) = oneshot::channel();
        state
            .plugins
            .entry(plugin.to_owned())
            .or_default()
            .waiting
            .push_back(Waiter { ticket, grant });
        Err((ticket, granted))
    }
}

/// Removes a waiter from the queue when its future is dropped (a no-op once it was
/// granted: the slot then travels in the channel, and dropping the receiver releases it).
struct Withdraw<'a> {
    inner: &'a Arc<Inner>,
    plugin: &'a str,
    ticket: u64,
}

impl Drop for Withdraw<'_> {
    fn drop(&mut self) {
        let mut state = self.inner.lock();
        if let Some(p) = state.plugins.get_mut(self.plugin) {
            p.waiting.retain(|w| w.ticket != self.ticket);
        }
        state.forget_if_idle(self.plugin);
    }
}

impl State {
    fn share(&self, plugin: &str) -> usize {
        self.shares.get(plugin).copied().unwrap_or(self.total)
    }

    fn under_share(&self, plugin: &str) -> bool {
        self.plugins.get(plugin).map_or(0, |p| p.held) < self.share(plugin)
    }

    fn take(&mut self, plugin: &str) {
        self.free -= 1;
        self.plugins.entry(plugin.to_owned()).or_default().held += 1;
    }

    fn release(&mut self, plugin: &str) {
        self.free += 1;
        if let Some(p) = self.plugins.get_mut(plugin) {
            p.held = p.held.saturating_sub(1);
        }
        self.forget_if_idle(plugin);
    }

    fn forget_if_idle(&mut self, plugin: &str) {
        if self
            .plugins
            .get(plugin)
            .is_some_and(|p| p.held == 0 && p.waiting.is_empty())
        {
            self.plugins.remove(plugin);
        }
    }

    /// The plugin whose waiter gets the next free slot, if any may.
    fn next(&self) -> Option<String> {
        let eligible = self
            .plugins
            .iter()
            .filter(|(name, p)| p.held < self.share(name))
            .filter_map(|(name, p)| p.waiting.front().map(|w| (name, p.held, w.ticket)));
        let chosen = match self.policy {
            Policy::Fair => eligible.min_by_key(|&(_, held, ticket)| (held, ticket)),
            Policy::Fifo => eligible.min_by_key(|&(_, _, ticket)| ticket),
        };
        chosen.map(|(name, _, _)| name.clone())
    }

    /// Hands free slots to waiters until none is free or no waiter may take one.
    fn dispatch(&mut self, inner: &Arc<Inner>) {
        while self.free > 0 {
            let Some(plugin) = self.next() else { return };
            let Some(waiter) = self
                .plugins
                .get_mut(&plugin)
                .and_then(|p| p.waiting.pop_front())
            else {
                return;
            };
            if waiter.grant.is_closed() {
                self.forget_if_idle(&plugin);
                continue;
            }
            self.take(&plugin);
            let slot = Slot {
                inner: Some(inner.clone()),
                plugin,
            };
            if let Err(mut slot) = waiter.grant.send(slot) {
                // Its receiver went in the meantime. Dropping the slot here would lock
                // again: release it by hand.
                slot.inner = None;
                self.release(&slot.plugin);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::task::JoinHandle;

    /// Lets spawned tasks run until they all wait (time is paused: nothing else moves).
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    fn waiter(slots: &Slots, plugin: &'static str) -> JoinHandle<Slot> {
        let slots = slots.clone();
        tokio::spawn(async move { slots.acquire(plugin).await })
    }

    #[tokio::test(start_paused = true)]
    async fn a_plugin_asking_once_gets_the_next_slot_freed_by_one_holding_all() {
        let slots = Slots::new(4);
        let mut a_held = Vec::new();
        for _ in 0..4 {
            a_held.push(slots.acquire("a").await);
        }
        // A keeps asking: eight more calls queue before B's one.
        let a_queued: Vec<_> = (0..8).map(|_| waiter(&slots, "a")).collect();
        settle().await;
        let b = waiter(&slots, "b");
        settle().await;
        assert!(!b.is_finished());

        drop(a_held.pop());
        let b_slot = tokio::time::timeout(Duration::from_secs(1), b)
            .await
            .expect("B gets the freed slot")
            .unwrap();
        assert_eq!((slots.held("a"), slots.held("b")), (3, 1));
        assert!(a_queued.iter().all(|w| !w.is_finished()));

        // Only A waits now: the next freed slot goes back to it (work-conserving).
        drop(a_held.pop());
        settle().await;
        assert_eq!(slots.held("a"), 3);
        assert_eq!(a_queued.iter().filter(|w| w.is_finished()).count(), 1);
        drop(b_slot);
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_come_policy_lets_one_plugin_starve_another() {
        let slots = Slots::with_policy(2, Policy::Fifo);
        let mut a_held = vec![slots.acquire("a").await, slots.acquire("a").await];
        let _a_queued = waiter(&slots, "a");
        settle().await;
        let b = waiter(&slots, "b");
        settle().await;
        drop(a_held.pop());
        settle().await;
        assert_eq!(slots.held("a"), 2);
        assert!(!b.is_finished(), "FIFO serves A's older waiter first");
    }

    #[tokio::test(start_paused = true)]
    async fn ties_go_to_the_plugin_waiting_longest() {
        let slots = Slots::new(1);
        let held = slots.acquire("x").await;
        let b = waiter(&slots, "b");
        settle().await;
        let c = waiter(&slots, "c");
        settle().await;
        drop(held);
        settle().await;
        assert!(b.is_finished());
        assert!(!c.is_finished());
    }

    #[tokio::test(start_paused = true)]
    async fn one_plugin_alone_uses_every_slot() {
        let slots = Slots::new(8);
        let mut held = Vec::new();
        for _ in 0..8 {
            let slot = tokio::time::timeout(Duration::from_secs(1), slots.acquire("a"))
                .await
                .expect("a free slot is granted at once");
            held.push(slot);
        }
        assert_eq!((slots.held("a"), slots.available()), (8, 0));
        // Another plugin arriving later gets its share as A's slots free.
        let b: Vec<_> = (0..8).map(|_| waiter(&slots, "b")).collect();
        settle().await;
        held.truncate(4);
        settle().await;
        assert_eq!((slots.held("a"), slots.held("b")), (4, 4));
        assert_eq!(b.iter().filter(|w| w.is_finished()).count(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_waiter_holds_nothing_and_its_turn_goes_to_the_next() {
        let slots = Slots::new(1);
        let held = slots.acquire("a").await;
        let cancelled = waiter(&slots, "b");
        settle().await;
        let next = waiter(&slots, "c");
        settle().await;
        cancelled.abort();
        settle().await;
        drop(held);
        let slot = tokio::time::timeout(Duration::from_secs(1), next)
            .await
            .expect("the next waiter is woken")
            .unwrap();
        assert_eq!(slots.held("b"), 0);
        drop(slot);
        assert_eq!(slots.available(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_granted_to_a_waiter_dropped_unpolled_is_released() {
        let slots = Slots::new(1);
        let held = slots.acquire("a").await;
        let mut pending = Box::pin(slots.acquire("b"));
        assert!(futures::poll!(pending.as_mut()).is_pending());
        // The slot is handed to B's waiter, which is dropped before it looks.
        drop(held);
        assert_eq!(slots.held("b"), 1);
        drop(pending);
        assert_eq!((slots.held("b"), slots.available()), (0, 1));
        let _again = tokio::time::timeout(Duration::from_secs(1), slots.acquire("c"))
            .await
            .expect("no slot leaked");
    }

    #[tokio::test(start_paused = true)]
    async fn a_share_caps_a_plugin_and_leaves_the_rest_to_others() {
        let slots = Slots::new(4);
        slots.limit("a", Some(2));
        let a: Vec<_> = (0..4).map(|_| waiter(&slots, "a")).collect();
        settle().await;
        assert_eq!(a.iter().filter(|w| w.is_finished()).count(), 2);
        assert_eq!(slots.available(), 2, "A's cap leaves two free");
        let b1 = slots.acquire("b").await;
        let _b2 = slots.acquire("b").await;
        assert_eq!(slots.held("a"), 2);
        // Lifting the cap lets A's waiters in as slots free.
        slots.limit("a", None);
        drop(b1);
        settle().await;
        assert_eq!(slots.held("a"), 3);
    }
}
