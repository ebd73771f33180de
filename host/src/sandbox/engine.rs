//! The wasmtime engine: its settings, its epoch ticker, and the linker every plugin is
//! pre-instantiated against.

use super::bindings::Plugin as Bindings;
use super::cpu::Cpu;
use super::error::boxed;
use super::state::HostState;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;
use wasmtime::component::Linker;

/// Engine-wide settings, fixed for the life of a [`Sandbox`].
#[derive(Debug, Clone)]
pub struct Config {
    /// How many instances may be alive at once (the pooling allocator's slots). Callers
    /// bound their concurrency to this.
    pub pool_instances: u32,
    /// The largest memory cap any plugin may be given; sizes the pool's memory slots.
    pub memory_ceiling: usize,
    /// Guest memory kept resident in a pool slot between instances, so a fresh instance
    /// does not page-fault in its first pages again.
    pub keep_resident: usize,
    /// Maximum native stack for wasm code.
    pub max_wasm_stack: usize,
    /// Granularity of time budgets, and how often a running call offers its CPU turn to
    /// another plugin's waiting call.
    pub epoch_tick: Duration,
    /// CPU turns: how many calls may run guest code at once, shared fairly between plugins
    /// ([`Cpu`]). Time budgets then count the time a call held its turn. 0 turns the
    /// sharing off: calls run as soon as they have a slot, and budgets are wall time.
    /// Default: the cores available to the process.
    pub cpus: usize,
    /// Use the pooling allocator (faster fresh instances) instead of on-demand allocation.
    pub pooling: bool,
    /// When a pool slot is recycled, reset only the guest pages the call wrote (found with
    /// Linux's `PAGEMAP_SCAN`, kernel 6.7+; elsewhere this silently falls back) instead of
    /// `memset`ting the whole [`keep_resident`](Self::keep_resident) prefix. The slot ends
    /// up byte-for-byte as fresh either way; this only changes how much is rewritten.
    pub pagemap_scan: bool,
    /// Let Cranelift inline small guest functions into their callers when compiling a
    /// plugin. Rust guests (serde especially) make many tiny calls, and every call in wasm
    /// also pays an epoch check. Off by default: calls get a little faster, but compiling
    /// is slower and the compiled artifact, and with it every loaded plugin's memory, is
    /// larger (BENCHMARKS.md has the figures).
    pub inlining: bool,
    /// Write `/tmp/perf-PID.map` so `perf` can name compiled guest functions (profiling).
    pub perf_map: bool,
    /// Compile one plugin at a time in the process, in a compiler dropped after it, and
    /// return the freed memory to the OS ([`Sandbox::compiling`]). On by default; off
    /// only to measure what it saves.
    pub bounded_compile: bool,
    /// Let Cranelift compile a plugin's functions on several threads. Faster on an idle
    /// machine, but each thread holds its own compiler state and its own allocator arena,
    /// which raises the peak memory of a cold start (BENCHMARKS.md, "Cold start memory").
    pub parallel_compilation: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            pool_instances: 64,
            memory_ceiling: 512 << 20,
            keep_resident: 4 << 20,
            max_wasm_stack: 1 << 20,
            epoch_tick: Duration::from_millis(5),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            pooling: true,
            pagemap_scan: true,
            inlining: false,
            perf_map: false,
            bounded_compile: true,
            parallel_compilation: false,
        }
    }
}

/// Why the sandbox could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// wasmtime refused the engine configuration.
    #[error("wasmtime engine configuration refused: {0}")]
    Engine(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// WASI could not be linked.
    #[error("linking WASI failed: {0}")]
    Link(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// The engine and linker shared by every plugin of a host. Cheap to clone.
///
/// [`Sandbox::prepare`], which builds a [`PluginPre`](super::PluginPre), is defined in
/// `call.rs` beside the type it builds, so that this file does not depend on the call.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

struct Inner {
    engine: wasmtime::Engine,
    // The engine's configuration without its pooling allocator: what bounded compiles
    // build their short-lived engines from (the allocator does not change the code).
    compile_config: wasmtime::Config,
    linker: Linker<HostState>,
    config: Config,
    cpu: Option<Cpu>,
    // Dropping the sender stops the epoch ticker.
    _ticker: mpsc::Sender<()>,
}

impl Sandbox {
    /// Builds the engine, starts its epoch ticker and links WASI and rekon's imports.
    ///
    /// # Errors
    /// [`SetupError`] if wasmtime refuses the configuration (e.g. the pooling allocator
    /// cannot reserve its memory).
    pub fn new(config: Config) -> Result<Self, SetupError> {
        let mut wasm = wasmtime::Config::new();
        wasm.wasm_component_model(true)
            .epoch_interruption(true)
            .max_wasm_stack(config.max_wasm_stack)
            .parallel_compilation(config.parallel_compilation);
        if config.inlining {
            wasm.compiler_inlining(wasmtime::Inlining::Yes);
        }
        if config.perf_map {
            wasm.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let compile_config = wasm.clone();
        if config.pooling {
            let mut pool = wasmtime::PoolingAllocationConfig::default();
            let n = config.pool_instances;
            pool.total_component_instances(n)
                .total_core_instances(n * 8)
                .total_memories(n * 2)
                .total_tables(n * 8)
                .max_memory_size(config.memory_ceiling)
                .linear_memory_keep_resident(config.keep_resident)
                .table_keep_resident(64 << 10)
                .pagemap_scan(if config.pagemap_scan {
                    wasmtime::Enabled::Auto
                } else {
                    wasmtime::Enabled::No
                });
            wasm.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
        }
        let engine = wasmtime::Engine::new(&wasm).map_err(|e| SetupError::Engine(boxed(e)))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| SetupError::Link(boxed(e)))?;
        Bindings::add_to_linker::<HostState, wasmtime::component::HasSelf<HostState>>(
            &mut linker,
            |s| s,
        )
        .map_err(|e| SetupError::Link(boxed(e)))?;
        let (tx, rx) = mpsc::channel::<()>();
        let ticking = engine.clone();
        let tick = config.epoch_tick;
        std::thread::Builder::new()
            .name("rekon-epoch".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(tick) {
                    ticking.increment_epoch();
                }
            })
            .map_err(|e| SetupError::Engine(Box::new(e)))?;
        Ok(Self {
            inner: Arc::new(Inner {
                engine,
                compile_config,
                linker,
                cpu: (config.cpus > 0).then(|| Cpu::new(config.cpus)),
                config,
                _ticker: tx,
            }),
        })
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &wasmtime::Engine {
        &self.inner.engine
    }

    /// The engine configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The CPU turns calls take, unless [`Config::cpus`] is 0.
    pub fn cpu(&self) -> Option<&Cpu> {
        self.inner.cpu.as_ref()
    }

    /// Takes this process's turn to compile a component: hold the returned guard while
    /// compiling and while the compiler's output is still on the heap.
    ///
    /// # Guarantees
    /// With [`Config::bounded_compile`] (the default), at most one guard is alive in the
    /// process at a time (others wait); each [`Compiling::precompile`] runs in its own
    /// short-lived engine, so no compiler state outlives it; dropping the guard returns
    /// freed heap memory to the OS (glibc's `malloc_trim`; a no-op with other allocators).
    ///
    /// [`Compiling::precompile`]: super::Compiling::precompile
    pub fn compiling(&self) -> super::Compiling {
        if self.inner.config.bounded_compile {
            super::Compiling::bounded(self.inner.compile_config.clone())
        } else {
            super::Compiling::unbounded(self.inner.engine.clone())
        }
    }

    /// The linker every plugin is pre-instantiated against (by [`Sandbox::prepare`]).
    pub(super) fn linker(&self) -> &Linker<HostState> {
        &self.inner.linker
    }

    /// Epoch ticks that make up `budget` (at least one).
    pub(crate) fn ticks(&self, budget: Duration) -> u64 {
        let tick = self.inner.config.epoch_tick.as_nanos().max(1);
        (budget.as_nanos() / tick).max(1) as u64
    }
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}
