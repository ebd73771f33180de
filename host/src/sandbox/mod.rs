//! The wasmtime engine, the per-call limits, and the call itself.
//!
//! # Guarantees
//! - Every call runs in a fresh [`wasmtime::Store`] and a fresh instance: nothing leaks
//!   between calls, and a trapped instance is dropped with its store.
//! - A call is bounded in memory (a [`Limits::memory_bytes`] cap enforced by a
//!   `ResourceLimiter` that reports [`Error::OutOfMemory`]), in time (an epoch deadline
//!   on the time it ran, [`Error::Timeout`]) and in stack ([`Error::StackOverflow`]).
//! - Guest code runs on CPU turns shared fairly between plugins ([`Cpu`]): a plugin
//!   looping on many calls cannot take the cores from another plugin's call.
//! - WASI is linked with a closed context: no preopened directories, every socket address
//!   denied, no name lookups, an empty environment and argument list, and stdout/stderr
//!   captured (bounded) into the plugin's log.
//!
//! The sandbox is synchronous: callers on an async runtime run calls on blocking threads.

mod bindings;
mod call;
mod compile;
mod convert;
mod cpu;
mod engine;
mod error;
mod imports;
mod limits;
mod log;
mod pipe;
mod state;

pub use call::{Call, Phases, PluginPre};
pub use compile::Compiling;
pub use convert::{RawMutation, RawOutput};
pub use cpu::{Cpu, Turn};
pub use engine::{Config, Sandbox, SetupError};
pub use error::Error;
pub(crate) use error::boxed;
pub use limits::Limits;
pub use log::LogLine;
pub use state::{
    CacheGrant, CacheView, Clock, HostState, LIST_ENTRY_BYTES, ListBudget, NoCache, TooLarge,
};
