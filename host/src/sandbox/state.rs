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

    /// As [`list`](Self::list), but refused when the result would take more than
    /// `max_bytes` in the guest: the objects' JSON plus [`LIST_ENTRY_BYTES`] for each entry.
    ///
    /// # Errors
    /// [`TooLarge`] as soon as the running total passes `max_bytes`.
    ///
    /// # Guarantees
    /// Implementations that hold many objects (the controller's stores) override this to
    /// refuse *before* copying any JSON, so a refused list costs the host no more than the
    /// matching objects' references. This default builds the full list first and only
    /// then checks it: fine for small fixture caches, not for a cluster's.
    fn list_within(
        &self,
        kind: &Gvk,
        namespace: Option<&str>,
        selector: &Selector,
        max_bytes: usize,
    ) -> Result<Vec<String>, TooLarge> {
        let all = self.list(kind, namespace, selector);
        let mut budget = ListBudget::new(all.len(), max_bytes);
        for json in &all {
            budget.add(json.len())?;
        }
        Ok(all)
    }
}

/// What one entry of a `list` result costs the guest besides its JSON: the string's
/// pointer and length in the guest's `list<string>` (wasm32).
pub const LIST_ENTRY_BYTES: usize = 8;

/// A `list` refused because its result would not fit the caller's byte budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "{matched} objects match; the first {counted} already take {bytes} bytes, more than \
     the {max_bytes} bytes allowed"
)]
pub struct TooLarge {
    /// Objects matching the query.
    pub matched: usize,
    /// Objects counted before the budget ran out.
    pub counted: usize,
    /// Bytes those objects take in the guest (JSON plus [`LIST_ENTRY_BYTES`] each).
    pub bytes: usize,
    /// The budget.
    pub max_bytes: usize,
}

/// Running total for [`CacheView::list_within`] implementations: add each object's JSON
/// length before copying it; the first object past the budget is refused.
#[derive(Debug, Clone, Copy)]
pub struct ListBudget {
    refused: TooLarge,
}

impl ListBudget {
    /// A budget of `max_bytes` for a list of `matched` objects.
    pub fn new(matched: usize, max_bytes: usize) -> Self {
        Self {
            refused: TooLarge {
                matched,
                counted: 0,
                bytes: 0,
                max_bytes,
            },
        }
    }

    /// Counts one object of `json_len` bytes.
    ///
    /// # Errors
    /// [`TooLarge`] when the total now passes the budget.
    pub fn add(&mut self, json_len: usize) -> Result<(), TooLarge> {
        let r = &mut self.refused;
        r.counted += 1;
        r.bytes = r.bytes.saturating_add(json_len + LIST_ENTRY_BYTES);
        if r.bytes > r.max_bytes {
            return Err(*r);
        }
        Ok(())
    }
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

#[cfg(test)]
mod tests {
    use super::{CacheView, LIST_ENTRY_BYTES, ListBudget, TooLarge};
    use crate::controller::store::Stores;
    use crate::controller::store::testing::cm;
    use crate::selector::Selector;
    use kube::runtime::watcher::Event;

    /// Offline stores holding `n` ConfigMaps in namespace `a`, each with `value` as data.
    fn stores_with(n: usize, value: &str) -> (Stores, crate::contract::Gvk) {
        let (stores, store) = Stores::with_test_store();
        for i in 0..n {
            store.record_event(Event::Apply(
                cm(&format!("cm-{i:04}")).ns("a").data("v", value).build(),
            ));
        }
        let kind = store.gvk().clone();
        (stores, kind)
    }

    #[test]
    fn budget_refuses_the_first_object_past_it() {
        let mut budget = ListBudget::new(3, 2 * (10 + LIST_ENTRY_BYTES));
        assert_eq!(budget.add(10), Ok(()));
        assert_eq!(budget.add(10), Ok(()));
        assert_eq!(
            budget.add(10),
            Err(TooLarge {
                matched: 3,
                counted: 3,
                bytes: 3 * (10 + LIST_ENTRY_BYTES),
                max_bytes: 2 * (10 + LIST_ENTRY_BYTES),
            })
        );
    }

    #[tokio::test]
    async fn store_list_within_its_budget_returns_every_match() {
        let (stores, kind) = stores_with(5, "small");
        let all = stores.list(&kind, Some("a"), &Selector::default());
        let need: usize = all.iter().map(|j| j.len() + LIST_ENTRY_BYTES).sum();
        let within = stores
            .list_within(&kind, Some("a"), &Selector::default(), need)
            .expect("exactly the budget fits");
        assert_eq!(within, all);
    }

    #[tokio::test]
    async fn store_list_past_its_budget_is_refused_with_the_counts() {
        let big = "x".repeat(64 << 10);
        let (stores, kind) = stores_with(100, &big);
        let refused = stores
            .list_within(&kind, None, &Selector::default(), 1 << 20)
            .expect_err("100 objects of 64 KiB do not fit in 1 MiB");
        assert_eq!(refused.matched, 100);
        assert_eq!(refused.max_bytes, 1 << 20);
        assert!(refused.bytes > 1 << 20, "{refused}");
        // It stopped counting at the first object past the budget: 15 objects of 64 KiB
        // and their metadata fit in 1 MiB, the 16th does not.
        assert_eq!(refused.counted, 16, "{refused}");
    }
}
