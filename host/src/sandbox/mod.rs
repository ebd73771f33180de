//! The wasmtime engine, the per-call limits, and the call itself.
//!
//! # Guarantees
//! - Every call runs in a fresh [`wasmtime::Store`] and a fresh instance: nothing leaks
//!   between calls, and a trapped instance is dropped with its store.
//! - A call is bounded in memory (a [`Limits::memory_bytes`] cap enforced by a
//!   `ResourceLimiter` that reports [`Error::OutOfMemory`]), in time (an epoch deadline,
//!   [`Error::Timeout`]) and in stack ([`Error::StackOverflow`]).
//! - WASI is linked with a closed context: no preopened directories, every socket address
//!   denied, no name lookups, an empty environment and argument list, and stdout/stderr
//!   captured (bounded) into the plugin's log.
//!
//! The sandbox is synchronous: callers on an async runtime run calls on blocking threads.

mod bindings;
mod call;
mod compile;
mod convert;
mod imports;
mod log;
mod pipe;
mod state;

pub use call::{Call, Phases, PluginPre};
pub use compile::Compiling;
pub use convert::{RawMutation, RawOutput};
pub use log::LogLine;
pub use state::{
    CacheView, Clock, HostState, LIST_ENTRY_BYTES, ListBudget, NoCache, Scope, TooLarge,
};

use bindings::{Plugin as Bindings, PluginPre as BindingsPre};

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;
use wasmtime::component::{Component, Linker};

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
    /// Granularity of time budgets.
    pub epoch_tick: Duration,
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
            pooling: true,
            pagemap_scan: true,
            inlining: false,
            perf_map: false,
            bounded_compile: true,
            parallel_compilation: false,
        }
    }
}

/// Per-plugin, per-call limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Cap on the guest's linear memory, in bytes.
    pub memory_bytes: usize,
    /// Wall time one call may take.
    pub time_budget: Duration,
    /// Cap on the size of one call's output (all objects and patches together).
    pub output_bytes: usize,
    /// Cap on one object in the output.
    pub object_bytes: usize,
    /// Cap on captured stdout/stderr and log text per call.
    pub log_bytes: usize,
    /// Cap on the events in one output (each is an API call of its own).
    pub max_events: usize,
    /// Cap on the status conditions in one output.
    pub max_conditions: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: 64 << 20,
            time_budget: Duration::from_secs(2),
            output_bytes: 8 << 20,
            object_bytes: 1 << 20,
            log_bytes: 64 << 10,
            max_events: 16,
            max_conditions: 32,
        }
    }
}

/// Why a call into a plugin failed inside the sandbox (as opposed to the plugin reporting
/// an error itself, which is a [`crate::contract::GuestError`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The call ran past its time budget and was interrupted.
    #[error("exceeded its time budget of {budget:?}")]
    Timeout {
        /// The budget.
        budget: Duration,
    },
    /// The guest tried to grow its memory past the cap.
    #[error("exceeded its memory cap of {limit} bytes (asked for {asked} bytes)")]
    OutOfMemory {
        /// The cap.
        limit: usize,
        /// The size it asked for.
        asked: usize,
    },
    /// The guest asked the cache for a list whose result would not fit its memory cap; the
    /// host refused it before copying any object, and the call was stopped.
    #[error(
        "listed {kind}: {} objects match, the first {} already take {} bytes, more than its \
         memory cap of {} bytes; narrow the query with a namespace or a label selector",
        refused.matched, refused.counted, refused.bytes, refused.max_bytes
    )]
    ListTooLarge {
        /// The kind listed.
        kind: String,
        /// The counts and the cap.
        refused: TooLarge,
    },
    /// The guest overflowed its stack.
    #[error("overflowed its stack")]
    StackOverflow,
    /// The guest trapped (a panic shows as `unreachable`; the panic message, when the SDK
    /// logged one, is in `last_error_log`).
    #[error("trapped: {trap}{}", last_error_log.as_deref().map(|l| format!(" ({l})")).unwrap_or_default())]
    Trapped {
        /// The trap as wasmtime describes it.
        trap: String,
        /// The last error-level line the plugin logged before trapping.
        last_error_log: Option<String>,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The instance could not be created (e.g. the pool is exhausted).
    #[error("could not be instantiated: {source}")]
    Instantiate {
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Error {
    /// A bounded label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Timeout { .. } => "timeout",
            Error::OutOfMemory { .. } => "out_of_memory",
            Error::ListTooLarge { .. } => "list_too_large",
            Error::StackOverflow => "stack_overflow",
            Error::Trapped { .. } => "trap",
            Error::Instantiate { .. } => "instantiate",
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

pub(crate) fn boxed(e: wasmtime::Error) -> Box<dyn std::error::Error + Send + Sync> {
    e.into()
}

/// The engine and linker shared by every plugin of a host. Cheap to clone.
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

    /// Takes this process's turn to compile a component: hold the returned guard while
    /// compiling and while the compiler's output is still on the heap.
    ///
    /// # Guarantees
    /// With [`Config::bounded_compile`] (the default), at most one guard is alive in the
    /// process at a time (others wait); each [`Compiling::precompile`] runs in its own
    /// short-lived engine, so no compiler state outlives it; dropping the guard returns
    /// freed heap memory to the OS (glibc's `malloc_trim`; a no-op with other allocators).
    pub fn compiling(&self) -> Compiling {
        if self.inner.config.bounded_compile {
            Compiling::bounded(self.inner.compile_config.clone())
        } else {
            Compiling::unbounded(self.inner.engine.clone())
        }
    }

    /// Pre-instantiates a compiled component against the host's linker.
    ///
    /// # Errors
    /// The linker's error when the component imports something the host does not
    /// provide, or lacks the exports of the `plugin` world.
    pub fn prepare(
        &self,
        component: &Component,
    ) -> Result<PluginPre, Box<dyn std::error::Error + Send + Sync>> {
        let pre = self
            .inner
            .linker
            .instantiate_pre(component)
            .map_err(boxed)?;
        let pre = BindingsPre::new(pre).map_err(boxed)?;
        Ok(PluginPre::new(self.clone(), pre))
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
