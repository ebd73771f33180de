//! Compiling components with bounded memory: one compile at a time in the process, in a
//! compiler that is dropped after it, and the freed memory handed back to the OS.
//!
//! An engine's compiler keeps its per-thread Cranelift contexts, sized for the largest
//! function it ever compiled, for the life of the engine: held for good by the engine
//! every plugin then runs in. A bounded compile therefore runs in a short-lived engine of the same
//! configuration (so its artifact loads into the host's engine unchanged) and is dropped
//! with it. glibc then keeps what was freed in its arenas, hence the trim. BENCHMARKS.md
//! ("Cold start memory") has the figures.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Held while a component is compiled (see [`super::Sandbox::compiling`]). Dropping it
/// returns freed memory to the OS, then lets the next compile start.
#[must_use = "the compile is bounded only while this is held"]
pub struct Compiling {
    // Released after `drop` has trimmed: the next compile starts from a trimmed heap.
    _turn: Option<MutexGuard<'static, ()>>,
    compiler: Compiler,
}

enum Compiler {
    /// A short-lived engine of this configuration per compile; trimmed after.
    Bounded(Box<wasmtime::Config>),
    /// The host's engine, whose compiler keeps its state (the unbounded way).
    Host(wasmtime::Engine),
}

/// One compile at a time, process-wide: every [`super::Sandbox`] shares it.
static TURN: Mutex<()> = Mutex::new(());

impl Compiling {
    /// Waits for this process's turn, then compiles in short-lived engines configured by
    /// `config`.
    pub(super) fn bounded(config: wasmtime::Config) -> Self {
        Self {
            // The lock guards no data, so a compile that panicked leaves nothing to repair.
            _turn: Some(TURN.lock().unwrap_or_else(PoisonError::into_inner)),
            compiler: Compiler::Bounded(Box::new(config)),
        }
    }

    /// Compiles in `engine` at once, without a turn or a trim.
    pub(super) fn unbounded(engine: wasmtime::Engine) -> Self {
        Self {
            _turn: None,
            compiler: Compiler::Host(engine),
        }
    }

    /// Compiles a component into an artifact for the host's engine
    /// (`Component::deserialize` loads it).
    ///
    /// # Errors
    /// wasmtime's, when it rejects the component.
    pub fn precompile(&self, bytes: &[u8]) -> wasmtime::Result<Vec<u8>> {
        match &self.compiler {
            Compiler::Bounded(config) => wasmtime::Engine::new(config)?.precompile_component(bytes),
            Compiler::Host(engine) => engine.precompile_component(bytes),
        }
    }
}

impl Drop for Compiling {
    fn drop(&mut self) {
        if matches!(self.compiler, Compiler::Bounded(_)) {
            release_freed_memory();
        }
    }
}

impl std::fmt::Debug for Compiling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiling")
            .field("bounded", &matches!(self.compiler, Compiler::Bounded(_)))
            .finish()
    }
}

/// Returns the free memory at the top of glibc's heaps and the free pages inside its
/// arenas to the OS.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[expect(
    unsafe_code,
    reason = "glibc's malloc_trim has no safe wrapper; it is the only way to hand freed arena pages back"
)]
fn release_freed_memory() {
    // SAFETY: `malloc_trim` takes no pointer and touches only glibc's own allocator state,
    // locking each arena as it trims it; it is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Other allocators return memory on their own terms; nothing to do.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_freed_memory() {}

#[cfg(test)]
mod tests {
    use super::Compiling;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn bounded_compiles_take_turns() {
        static ACTIVE: AtomicUsize = AtomicUsize::new(0);
        static MOST: AtomicUsize = AtomicUsize::new(0);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(|| {
                    for _ in 0..50 {
                        let _turn = Compiling::bounded(wasmtime::Config::new());
                        let now = ACTIVE.fetch_add(1, Ordering::SeqCst) + 1;
                        MOST.fetch_max(now, Ordering::SeqCst);
                        for _ in 0..20 {
                            std::thread::yield_now();
                        }
                        ACTIVE.fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("no panic");
        }
        assert_eq!(MOST.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn unbounded_compiles_do_not_wait_for_a_turn() {
        let _held = Compiling::bounded(wasmtime::Config::new());
        // Would deadlock if it took the turn this thread already holds.
        let engine = wasmtime::Engine::default();
        let _free = Compiling::unbounded(engine);
    }
}
