//! CPU turns: the processor time of running guest code, shared fairly between plugins.
//!
//! Sandbox slots ([`crate::controller::slots`]) bound how many instances are alive and
//! share them between plugins, but a slot is not a processor. On a 2-core machine, sixty
//! calls of one plugin spinning to their time budget on blocking threads take the CPU
//! from everything else: another plugin's call that got a slot still runs at 1/61 of a
//! core. So a call also needs a *turn* to run guest code, and there are as many turns as
//! the host may give the sandbox cores ([`Config::cpus`](super::Config::cpus)).
//!
//! # Guarantees
//! - At most N turns are held at once.
//! - **Fair**: a free turn goes to the waiting plugin (tenant) holding the fewest turns
//!   (ties: the longest waiting). A call holding a turn checks at every epoch tick whether
//!   a waiter's plugin holds fewer turns than its own; if so it hands its turn over and
//!   queues again ([`Turn::share`]). So a plugin with work gets its fair share of the
//!   cores within one tick, however many calls another plugin runs; calls of one plugin
//!   do not preempt each other (no needless switching), and several plugins on fewer
//!   turns than plugins take turns tick by tick.
//! - **Work-conserving**: a turn is never left free while a call waits for one.
//! - The time a call spends waiting for a turn is not running time: time budgets count
//!   [`Turn::ran`], the time the call held its turn.
//!
//! # Caveats
//! - Preemption happens only at epoch ticks inside guest code: a host call (a cache read)
//!   or instantiation holds the turn until it returns to guest code.
//! - Turns bound the sandbox's threads, not the process's: the host's own tasks and the
//!   operating system's other processes still compete for the same cores.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// N CPU turns shared by plugins (see the module's guarantees). Cloning shares them.
#[derive(Clone)]
pub struct Cpu {
    inner: Arc<Shared>,
}

impl std::fmt::Debug for Cpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.inner.lock();
        f.debug_struct("Cpu")
            .field("turns", &state.total)
            .field("free", &state.free)
            .field("waiting", &state.waiting.len())
            .finish()
    }
}

struct Shared {
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is consistent between statements: a panic elsewhere cannot tear it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct State {
    total: usize,
    free: usize,
    /// Turns held per tenant; an entry goes when it holds none.
    held: HashMap<Arc<str>, usize>,
    /// Calls waiting for a turn, in arrival order.
    waiting: VecDeque<Arc<Waiter>>,
    /// Turns handed over by [`Turn::share`] since the start (for tests and metrics).
    handovers: u64,
}

struct Waiter {
    tenant: Arc<str>,
    granted: Mutex<bool>,
    wake: Condvar,
}

impl State {
    fn held(&self, tenant: &str) -> usize {
        self.held.get(tenant).copied().unwrap_or(0)
    }

    /// Hands free turns to waiters: each to the waiter whose tenant holds the fewest,
    /// the earliest among equals.
    fn dispatch(&mut self) {
        while self.free > 0 {
            let Some(index) = self
                .waiting
                .iter()
                .enumerate()
                .min_by_key(|(i, w)| (self.held(&w.tenant), *i))
                .map(|(i, _)| i)
            else {
                return;
            };
            self.grant(index);
        }
    }

    /// Hands a free turn to the waiter at `index`.
    fn grant(&mut self, index: usize) {
        let Some(waiter) = self.waiting.remove(index) else {
            return;
        };
        self.free -= 1;
        *self.held.entry(waiter.tenant.clone()).or_default() += 1;
        *waiter.granted.lock().unwrap_or_else(|e| e.into_inner()) = true;
        waiter.wake.notify_one();
    }

    fn release(&mut self, tenant: &str) {
        self.free += 1;
        if let Some(n) = self.held.get_mut(tenant) {
            *n -= 1;
            if *n == 0 {
                self.held.remove(tenant);
            }
        }
    }
}

impl Cpu {
    /// `turns` CPU turns (at least one).
    pub fn new(turns: usize) -> Self {
        let turns = turns.max(1);
        Self {
            inner: Arc::new(Shared {
                state: Mutex::new(State {
                    total: turns,
                    free: turns,
                    held: HashMap::new(),
                    waiting: VecDeque::new(),
                    handovers: 0,
                }),
            }),
        }
    }

    /// How many turns there are.
    pub fn turns(&self) -> usize {
        self.inner.lock().total
    }

    /// Turns `tenant`'s calls hold now.
    pub fn held(&self, tenant: &str) -> usize {
        self.inner.lock().held(tenant)
    }

    /// Turns handed over to another plugin's waiting call so far.
    pub fn handovers(&self) -> u64 {
        self.inner.lock().handovers
    }

    /// Waits (blocking the thread) for a turn for `tenant`'s call.
    pub fn enter(&self, tenant: &Arc<str>) -> Turn {
        self.wait(tenant);
        Turn {
            cpu: self.clone(),
            tenant: tenant.clone(),
            since: Instant::now(),
            ran: Duration::ZERO,
        }
    }

    fn wait(&self, tenant: &Arc<str>) {
        let waiter = Arc::new(Waiter {
            tenant: tenant.clone(),
            granted: Mutex::new(false),
            wake: Condvar::new(),
        });
        {
            let mut state = self.inner.lock();
            state.waiting.push_back(waiter.clone());
            state.dispatch();
        }
        let mut granted = waiter.granted.lock().unwrap_or_else(|e| e.into_inner());
        while !*granted {
            granted = waiter.wake.wait(granted).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// A call's hold on one CPU turn; dropping it frees the turn.
pub struct Turn {
    cpu: Cpu,
    tenant: Arc<str>,
    since: Instant,
    ran: Duration,
}

impl std::fmt::Debug for Turn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Turn")
            .field("tenant", &self.tenant)
            .field("ran", &self.ran())
            .finish()
    }
}

impl Turn {
    /// The time this call has held its turn, waits between turns excluded.
    pub fn ran(&self) -> Duration {
        self.ran + self.since.elapsed()
    }

    /// Hands the turn over if another plugin's call waits while its plugin holds fewer
    /// turns than this call's, then waits (blocking) for a turn again. Returns whether it
    /// handed over.
    pub fn share(&mut self) -> bool {
        {
            let mut state = self.cpu.inner.lock();
            let mine = state.held(&self.tenant);
            // The waiter to hand over to: of a plugin holding fewer turns than this one,
            // the fewest, the longest waiting among equals. Chosen before this turn is
            // released: released first, it would go to whichever waiter came first, a
            // call of this very plugin as likely as the one it should go to.
            let Some(index) = state
                .waiting
                .iter()
                .enumerate()
                .filter(|(_, w)| state.held(&w.tenant) < mine)
                .min_by_key(|(i, w)| (state.held(&w.tenant), *i))
                .map(|(i, _)| i)
            else {
                return false;
            };
            self.ran += self.since.elapsed();
            state.handovers += 1;
            state.release(&self.tenant);
            state.grant(index);
        }
        self.cpu.wait(&self.tenant);
        self.since = Instant::now();
        true
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut state = self.cpu.inner.lock();
        state.release(&self.tenant);
        state.dispatch();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;
    use std::thread;

    fn tenant(name: &str) -> Arc<str> {
        Arc::from(name)
    }

    fn holders(cpu: &Cpu) -> HashMap<String, usize> {
        let state = cpu.inner.lock();
        state
            .held
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect()
    }

    fn waiting(cpu: &Cpu) -> usize {
        cpu.inner.lock().waiting.len()
    }

    fn until(what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !check() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            thread::yield_now();
        }
    }

    #[test]
    fn no_more_than_n_turns_are_held_at_once() {
        let cpu = Cpu::new(2);
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let (cpu, running, most) = (cpu.clone(), running.clone(), most.clone());
                thread::spawn(move || {
                    for _ in 0..50 {
                        let mut turn = cpu.enter(&tenant(["a", "b", "c"][i % 3]));
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        thread::yield_now();
                        running.fetch_sub(1, Ordering::SeqCst);
                        // Sharing hands the turn over; this call is not running then.
                        turn.share();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(most.load(Ordering::SeqCst) <= 2, "held at once: {most:?}");
        assert_eq!(cpu.inner.lock().free, 2, "every turn came back");
        assert!(holders(&cpu).is_empty());
    }

    #[test]
    fn a_plugin_holding_every_turn_hands_one_to_another_plugins_call_at_its_next_share() {
        let cpu = Cpu::new(2);
        let mut loop_a = cpu.enter(&tenant("loop"));
        let mut loop_b = cpu.enter(&tenant("loop"));
        assert_eq!(holders(&cpu)["loop"], 2);

        // A call of the same plugin waits and is not handed a turn by sharing.
        let (same_tx, same_rx) = mpsc::channel();
        let same_cpu = cpu.clone();
        let same = thread::spawn(move || {
            let turn = same_cpu.enter(&tenant("loop"));
            same_tx.send(()).unwrap();
            drop(turn);
        });
        until("the third loop call to wait", || waiting(&cpu) == 1);
        assert!(
            !loop_a.share(),
            "no other plugin waits: nothing to hand over"
        );
        assert!(same_rx.try_recv().is_err());

        // Another plugin's call arrives: the next share hands it a turn.
        let (web_tx, web_rx) = mpsc::channel();
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let web_cpu = cpu.clone();
        let web = thread::spawn(move || {
            let turn = web_cpu.enter(&tenant("webapp"));
            web_tx.send(()).unwrap();
            // Hold it until told to finish.
            let _ = done_rx.recv();
            drop(turn);
        });
        until("webapp's call to wait", || waiting(&cpu) == 2);
        let sharer = thread::spawn(move || {
            assert!(loop_a.share(), "webapp holds none, loop two: hand over");
            loop_a
        });
        web_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("webapp got a turn");
        assert_eq!(holders(&cpu)["webapp"], 1);
        assert_eq!(holders(&cpu)["loop"], 1);
        // One plugin each now: nobody holds more, so sharing keeps the turn.
        assert!(!loop_b.share());
        assert_eq!(cpu.handovers(), 1);

        // webapp finishes: its turn goes to the oldest loop waiter (the third call, which
        // arrived before the handed-over one).
        done_tx.send(()).unwrap();
        web.join().unwrap();
        same_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the waiting loop call ran");
        same.join().unwrap();
        drop(loop_b);
        let loop_a = sharer.join().unwrap();
        assert!(loop_a.ran() < Duration::from_secs(60));
        drop(loop_a);
        assert_eq!(cpu.inner.lock().free, 2);
    }

    #[test]
    fn a_handed_over_turn_goes_to_the_other_plugins_call_not_to_a_call_queued_before_it() {
        let cpu = Cpu::new(1);
        let mut first = cpu.enter(&tenant("loop"));
        // Another call of the looping plugin queues first, then webapp's.
        let (tx, rx) = mpsc::channel();
        let queued = {
            let (cpu, tx) = (cpu.clone(), tx.clone());
            thread::spawn(move || {
                let turn = cpu.enter(&tenant("loop"));
                tx.send("loop").unwrap();
                drop(turn);
            })
        };
        until("the second loop call to wait", || waiting(&cpu) == 1);
        let web = {
            let cpu = cpu.clone();
            thread::spawn(move || {
                let turn = cpu.enter(&tenant("webapp"));
                tx.send("webapp").unwrap();
                drop(turn);
            })
        };
        until("webapp's call to wait", || waiting(&cpu) == 2);
        let sharer = thread::spawn(move || {
            assert!(first.share());
            first
        });
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(10)).unwrap(),
            "webapp",
            "the turn went to the loop's own queued call"
        );
        web.join().unwrap();
        drop(sharer.join().unwrap());
        queued.join().unwrap();
    }

    #[test]
    fn plugins_on_fewer_turns_than_plugins_take_turns_at_each_share() {
        let cpu = Cpu::new(1);
        let mut a = cpu.enter(&tenant("a"));
        let (tx, rx) = mpsc::channel();
        let b_cpu = cpu.clone();
        let b = thread::spawn(move || {
            let mut turn = b_cpu.enter(&tenant("b"));
            tx.send("b ran").unwrap();
            // b shares back as soon as a waits.
            until_waiting(&b_cpu);
            assert!(turn.share());
            tx.send("b ran again").unwrap();
        });
        until("b to wait", || waiting(&cpu) == 1);
        assert!(a.share(), "b holds none, a one: a hands over");
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), "b ran");
        // a got its turn back when b shared.
        assert_eq!(holders(&cpu)["a"], 1);
        drop(a);
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(10)).unwrap(),
            "b ran again"
        );
        b.join().unwrap();
    }

    fn until_waiting(cpu: &Cpu) {
        until("a waiter", || waiting(cpu) == 1);
    }

    #[test]
    fn time_waiting_for_a_turn_is_not_running_time() {
        let cpu = Cpu::new(1);
        let mut a = cpu.enter(&tenant("a"));
        let b_cpu = cpu.clone();
        let b = thread::spawn(move || {
            let turn = b_cpu.enter(&tenant("b"));
            thread::sleep(Duration::from_millis(300));
            drop(turn);
        });
        until("b to wait", || waiting(&cpu) == 1);
        let before = a.ran();
        let shared_at = Instant::now();
        assert!(a.share());
        let waited = shared_at.elapsed();
        assert!(
            waited >= Duration::from_millis(300),
            "a waited for b's turn"
        );
        // Running time grew by far less than the wait.
        assert!(a.ran() - before < Duration::from_millis(250), "{a:?}");
        b.join().unwrap();
    }
}
