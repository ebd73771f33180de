//! Per-call state owned by the `Store`: WASI's closed context, the memory limiter,
//! captured logs, and the scope the cache imports answer from.

use super::log::{Log, LogLine};
use crate::contract::{Gvk, Metadata};
use crate::selector::Selector;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{HostWallClock, WasiCtx, WasiCtxView, WasiView};

/// Read-only access to the host's cached objects, as JSON text. Implemented by the
/// controller's stores and by the fixture cache of `rekon test`.
pub trait CacheView: Send + Sync {
    /// One object, if cached.
    fn get(&self, kind: &Gvk, namespace: Option<&str>, name: &str) -> Option<String>;
    /// Objects of `kind`, optionally in one namespace, matching `selector`.
    fn list(&self, kind: &Gvk, namespace: Option<&str>, selector: &Selector) -> Vec<String>;
}

/// A cache that holds nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoCache;

impl CacheView for NoCache {
    fn get(&self, _: &Gvk, _: Option<&str>, _: &str) -> Option<String> {
        None
    }
    fn list(&self, _: &Gvk, _: Option<&str>, _: &Selector) -> Vec<String> {
        Vec::new()
    }
}

/// The clock a plugin sees through the `now-ms` import and WASI's wall clock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Clock {
    /// The system clock.
    #[default]
    System,
    /// A fixed instant, in milliseconds since the Unix epoch (tests).
    Fixed(i64),
}

impl Clock {
    /// Milliseconds since the Unix epoch.
    pub fn now_ms(self) -> i64 {
        match self {
            Clock::System => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0),
            Clock::Fixed(ms) => ms,
        }
    }
}

impl HostWallClock for Clock {
    fn resolution(&self) -> Duration {
        Duration::from_millis(1)
    }
    fn now(&self) -> Duration {
        Duration::from_millis(self.now_ms().max(0) as u64)
    }
}

/// What the cache imports may answer during a call: the plugin's declaration (the
/// allow-list) and the cache behind it.
#[derive(Clone)]
pub struct CacheGrant {
    /// The plugin's declaration; reads outside it are refused.
    pub metadata: Arc<Metadata>,
    /// The cache.
    pub cache: Arc<dyn CacheView>,
}

/// Everything a `Store` owns for one call.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(super) limiter: Limiter,
    pub(super) scope: Option<CacheGrant>,
    pub(super) clock: Clock,
    pub(super) log: Log,
}

impl HostState {
    /// A closed context: no files, sockets, environment or arguments; bounded stdio.
    pub(super) fn new(
        memory_cap: usize,
        log_cap: usize,
        clock: Clock,
        scope: Option<CacheGrant>,
    ) -> Self {
        let log = Log::new(log_cap);
        let mut wasi = WasiCtx::builder();
        wasi.stdout(log.stdout())
            .stderr(log.stderr())
            .wall_clock(clock)
            .allow_ip_name_lookup(false)
            .allow_tcp(false)
            .allow_udp(false)
            .socket_addr_check(|_, _| Box::pin(async { false }));
        Self {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limiter: Limiter {
                cap: memory_cap,
                exceeded: None,
            },
            scope,
            clock,
            log,
        }
    }

    pub(super) fn push_log(&mut self, line: LogLine) {
        self.log.push(line);
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Caps linear memory growth and remembers that the cap was hit, so the failure is
/// reported as [`super::Error::OutOfMemory`] rather than as a generic trap.
pub(super) struct Limiter {
    cap: usize,
    pub(super) exceeded: Option<usize>,
}

impl Limiter {
    pub(super) fn cap(&self) -> usize {
        self.cap
    }
}

/// The error a refused growth traps with.
#[derive(Debug, thiserror::Error)]
#[error("memory cap of {cap} bytes exceeded (asked for {asked} bytes)")]
pub(super) struct MemoryCapExceeded {
    pub(super) cap: usize,
    pub(super) asked: usize,
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.cap {
            self.exceeded = Some(desired);
            return Err(wasmtime::Error::new(MemoryCapExceeded {
                cap: self.cap,
                asked: desired,
            }));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}
