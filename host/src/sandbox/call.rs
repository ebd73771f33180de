//! One call into a plugin: a fresh `Store` and instance, limits armed, the outcome
//! classified, logs collected.

use super::bindings::{Plugin as Bindings, PluginPre as BindingsPre};
use super::convert::{self, RawOutput};
use super::engine::Sandbox;
use super::error::{Error, boxed};
use super::imports::ListRefused;
use super::limits::Limits;
use super::log::LogLine;
use super::state::{CacheGrant, Clock, HostState, MemoryCapExceeded};
use crate::contract::{Export, GuestError, Gvk, Metadata, ObjectKey, Request};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::component::Component;
use wasmtime::{Store, UpdateDeadline};

impl Sandbox {
    /// Pre-instantiates a compiled component against the host's linker.
    ///
    /// # Errors
    /// The linker's error when the component imports something the host does not
    /// provide, or lacks the exports of the `plugin` world.
    pub fn prepare(
        &self,
        component: &Component,
    ) -> Result<PluginPre, Box<dyn std::error::Error + Send + Sync>> {
        let pre = self.linker().instantiate_pre(component).map_err(boxed)?;
        let pre = BindingsPre::new(pre).map_err(boxed)?;
        Ok(PluginPre::new(self.clone(), pre))
    }
}

/// The outcome of one call, with what the plugin logged during it.
#[derive(Debug)]
pub struct Call<T, E = Error> {
    /// The value returned, or why the call failed.
    pub result: Result<T, E>,
    /// Lines logged, stdout and stderr included (bounded by [`Limits::log_bytes`]).
    pub logs: Vec<LogLine>,
    /// Log lines or bytes dropped past the bound.
    pub logs_dropped: u64,
    /// Wall time of the call, instantiation included.
    pub elapsed: Duration,
    /// Where that time went.
    pub phases: Phases,
}

/// Where the wall time of one [`Call`] went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Phases {
    /// Creating the store and the instance: the closed WASI context, a pool slot, the
    /// guest's memory image.
    pub instantiate: Duration,
    /// The guest call: copying the request in, running the guest, copying the output out.
    pub run: Duration,
    /// Dropping the store and the instance; the pool slot is reset to its pristine image.
    pub teardown: Duration,
}

impl<T, E> Call<T, E> {
    /// Maps the result, keeping logs and timing.
    pub fn map_result<U, F>(self, f: impl FnOnce(Result<T, E>) -> Result<U, F>) -> Call<U, F> {
        Call {
            result: f(self.result),
            logs: self.logs,
            logs_dropped: self.logs_dropped,
            elapsed: self.elapsed,
            phases: self.phases,
        }
    }
}

/// A compiled plugin, pre-instantiated against the host's linker: every call instantiates
/// it afresh.
#[derive(Clone)]
pub struct PluginPre {
    sandbox: Sandbox,
    pre: BindingsPre<HostState>,
    tenant: Arc<str>,
}

impl PluginPre {
    pub(crate) fn new(sandbox: Sandbox, pre: BindingsPre<HostState>) -> Self {
        Self {
            sandbox,
            pre,
            tenant: Arc::from("(loading)"),
        }
    }

    /// The name its calls share CPU turns under ([`Sandbox::cpu`]): the plugin's, once
    /// its metadata is known; `(loading)` before.
    #[must_use]
    pub fn named(mut self, tenant: &str) -> Self {
        self.tenant = Arc::from(tenant);
        self
    }

    /// Calls `metadata()`. The cache imports refuse every read during this call.
    pub fn metadata(&self, limits: &Limits) -> Call<Metadata> {
        self.invoke(limits, Clock::System, None, |b, s| {
            b.rekon_plugin_guest()
                .call_metadata(s)
                .map(convert::metadata)
        })
    }

    /// Calls `reconcile(request)` or `finalize(request)`.
    pub fn decide(
        &self,
        entry: Export,
        request: &Request,
        limits: &Limits,
        clock: Clock,
        scope: CacheGrant,
    ) -> Call<Result<RawOutput, GuestError>> {
        let req = convert::request(request);
        self.invoke(limits, clock, Some(scope), move |b, s| {
            let guest = b.rekon_plugin_guest();
            let result = match entry {
                Export::Reconcile => guest.call_reconcile(s, &req),
                Export::Finalize => guest.call_finalize(s, &req),
            };
            result.map(|r| r.map(convert::output).map_err(convert::guest_error))
        })
    }

    /// Calls `map-to-primaries(kind, object)`.
    pub fn map_to_primaries(
        &self,
        kind: &Gvk,
        object: &str,
        limits: &Limits,
        scope: CacheGrant,
    ) -> Call<Vec<ObjectKey>> {
        let kind = convert::wit_gvk(kind);
        self.invoke(limits, Clock::System, Some(scope), move |b, s| {
            b.rekon_plugin_guest()
                .call_map_to_primaries(s, &kind, object)
                .map(|keys| keys.into_iter().map(convert::object_key).collect())
        })
    }

    fn invoke<T>(
        &self,
        limits: &Limits,
        clock: Clock,
        scope: Option<CacheGrant>,
        f: impl FnOnce(&Bindings, &mut Store<HostState>) -> wasmtime::Result<T>,
    ) -> Call<T> {
        let started = Instant::now();
        let mut phases = Phases::default();
        let state = HostState::new(limits.memory_bytes, limits.log_bytes, clock, scope);
        let mut store = Store::new(self.sandbox.engine(), state);
        store.limiter(|s| &mut s.limiter);
        match self.sandbox.cpu() {
            // Run on a CPU turn: at every tick, stop at the budget of time run, else offer
            // the turn to another plugin's waiting call.
            Some(cpu) => {
                let mut turn = cpu.enter(&self.tenant);
                let budget = limits.time_budget;
                store.set_epoch_deadline(1);
                store.epoch_deadline_callback(move |_| {
                    if turn.ran() >= budget {
                        return Ok(UpdateDeadline::Interrupt);
                    }
                    turn.share();
                    Ok(UpdateDeadline::Continue(1))
                });
            }
            None => store.set_epoch_deadline(self.sandbox.ticks(limits.time_budget)),
        }
        let instantiated = self.pre.instantiate(&mut store);
        let ran = Instant::now();
        phases.instantiate = ran - started;
        let result = match instantiated {
            Ok(bindings) => f(&bindings, &mut store).map_err(|e| classify(e, store.data(), limits)),
            Err(e) => Err(match store.data().limiter.exceeded {
                Some(_) => classify(e, store.data(), limits),
                None => Error::Instantiate { source: boxed(e) },
            }),
        };
        let torn = Instant::now();
        phases.run = torn - ran;
        let state = store.into_data();
        phases.teardown = torn.elapsed();
        let (logs, logs_dropped) = state.log.finish();
        Call {
            result,
            logs,
            logs_dropped,
            elapsed: started.elapsed(),
            phases,
        }
    }
}

fn classify(e: wasmtime::Error, state: &HostState, limits: &Limits) -> Error {
    if let Some(asked) = state.limiter.exceeded {
        return Error::OutOfMemory {
            limit: state.limiter.cap(),
            asked,
        };
    }
    if let Some(cap) = e.downcast_ref::<MemoryCapExceeded>() {
        return Error::OutOfMemory {
            limit: cap.cap,
            asked: cap.asked,
        };
    }
    if let Some(ListRefused { kind, refused }) = e.downcast_ref::<ListRefused>() {
        return Error::ListTooLarge {
            kind: kind.clone(),
            refused: *refused,
        };
    }
    match e.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => Error::Timeout {
            budget: limits.time_budget,
        },
        Some(wasmtime::Trap::StackOverflow) => Error::StackOverflow,
        _ => Error::Trapped {
            trap: e.to_string(),
            last_error_log: state
                .log
                .lines()
                .iter()
                .rev()
                .find(|l| l.level == tracing::Level::ERROR)
                .map(|l| l.message.clone()),
            source: boxed(e),
        },
    }
}
