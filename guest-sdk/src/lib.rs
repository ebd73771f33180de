//! Write rekon controller plugins.
//!
//! A rekon plugin is the decision half of a Kubernetes controller, compiled to a
//! WebAssembly component: given a primary object and what the host's cache knows about
//! it, it answers with the mutations it wants, when to look again, events and status
//! conditions. The host does the rest — watches, cache, queue, retries, conflict-safe
//! writes. This crate owns the bindings to the contract (`rekon:plugin@0.1.0`); a plugin
//! implements [`Plugin`] and calls [`export_plugin!`], and writes no binding code.
//!
//! # A complete plugin
//!
//! `Cargo.toml`: `crate-type = ["cdylib", "rlib"]` (the `rlib` lets native unit tests
//! link it) and dependencies on `rekon-sdk`, `serde` and `serde_json`. Build it with
//! `cargo build --release --target wasm32-wasip2`.
//!
//! ```no_run
//! use rekon_sdk::k8s_openapi::api::core::v1::ConfigMap;
//! use rekon_sdk::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
//! use rekon_sdk::{Condition, Error, Kind, Metadata, Output, Plugin, Request};
//! use serde::{Deserialize, Serialize};
//!
//! /// The custom resource: `Greeting` in group `example.dev`, version `v1`.
//! #[derive(Serialize, Deserialize)]
//! struct Greeting {
//!     metadata: ObjectMeta,
//!     spec: GreetingSpec,
//! }
//!
//! #[derive(Serialize, Deserialize)]
//! struct GreetingSpec {
//!     message: String,
//! }
//!
//! impl Kind for Greeting {
//!     const GROUP: &'static str = "example.dev";
//!     const VERSION: &'static str = "v1";
//!     const KIND: &'static str = "Greeting";
//! }
//!
//! /// Keeps a ConfigMap named after each Greeting holding its message.
//! struct Greeter;
//!
//! impl Plugin for Greeter {
//!     fn metadata() -> Metadata {
//!         Metadata::new::<Greeting>("greeter", env!("CARGO_PKG_VERSION")).owns::<ConfigMap>()
//!     }
//!
//!     fn reconcile(req: Request) -> Result<Output, Error> {
//!         let greeting: Greeting = req.primary()?;
//!         let config_map = ConfigMap {
//!             metadata: ObjectMeta {
//!                 name: Some(req.name().to_owned()),
//!                 namespace: req.namespace().map(str::to_owned),
//!                 ..ObjectMeta::default()
//!             },
//!             data: Some([("message".to_owned(), greeting.spec.message)].into()),
//!             ..ConfigMap::default()
//!         };
//!         rekon_sdk::info!("greeting {}", req.name(); generation = req.generation().unwrap_or(0));
//!         Ok(Output::new()
//!             .apply(&config_map) // the host adds the owner reference to the Greeting
//!             .condition(Condition::new("Ready", true, "Written", "the ConfigMap holds the message")))
//!     }
//! }
//!
//! rekon_sdk::export_plugin!(Greeter);
//! ```
//!
//! `rekon new NAME` creates such a crate, and rekon's `docs/plugin-guide.md` walks through
//! writing, testing and deploying one.
//!
//! # Map
//!
//! - [`Plugin`], [`Metadata`], [`export_plugin!`]: what a plugin is and declares.
//! - [`Request`]: typed access to the primary, related objects and settings.
//! - [`Output`]: mutation builders (`apply`, `create`, `update`, `merge_patch`,
//!   `delete`, `update_status`, `update_status_of`), `requeue_after`, `event`,
//!   `condition`, `prune`. Objects are typed values (`&deployment`) or JSON manifests
//!   (`json!({...})`), see [`IntoObject`].
//! - [`Error`]: transient (retry with backoff) or permanent (record, wait for a change).
//! - [`Kind`], [`Gvk`], [`DynamicObject`]: typed objects are k8s-openapi types (re-exported
//!   as [`k8s_openapi`]) and your own serde types implementing [`Kind`].
//! - [`cache`], [`log`](mod@log) (and the [`info!`] … macros), [`clock`]: the host's imports.
//! - Helpers for decisions: [`condition::set`] (conditions in a status you write
//!   yourself), [`owner`] (is this child the primary's? a reference to the primary),
//!   [`selector`] (label selectors, `matchLabels` and `matchExpressions`).
//! - [`testing`] (native only): fixtures, a fake host, assertions on outputs.
//!
//! # Native and wasm
//!
//! On `wasm32` the [`cache`], [`log`](mod@log) and [`clock`] functions call the component's
//! `rekon:plugin/host` imports. On native targets (unit tests, benchmarks) they go to the
//! [`testing::FakeHost`] installed on the current thread, so the same plugin code runs
//! in both.

#![warn(missing_docs)]

extern crate self as rekon_sdk;

#[cfg(all(target_arch = "wasm32", feature = "arena"))]
mod arena;
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod bindings;
pub mod cache;
pub mod clock;
pub mod condition;
mod decode;
mod error;
pub mod log;
#[cfg(target_arch = "wasm32")]
mod mem;
pub mod object;
pub mod output;
pub mod owner;
pub mod plugin;
pub mod raw;
mod request;
pub mod selector;
mod sys;

#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

/// The host behind the SDK's host calls: the component's imports on `wasm32`.
#[cfg(target_arch = "wasm32")]
pub(crate) fn host() -> impl sys::Host {
    sys::Imports
}

/// The host behind the SDK's host calls on native targets: the [`testing::FakeHost`]
/// installed on this thread, if any.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn host() -> impl sys::Host {
    testing::host::Current
}

pub use condition::Condition;
pub use error::Error;
pub use object::{DynamicObject, Gvk, IntoObject, Kind, ObjectKey, Scope, ToObject};
pub use output::{EventType, Output, Target};
pub use plugin::{Mapping, Metadata, Plugin};
pub use request::Request;

/// In wasm, plugins allocate from a bump arena sized for one call (see `arena.rs`; the
/// default `arena` feature).
#[cfg(all(target_arch = "wasm32", feature = "arena"))]
#[global_allocator]
static ALLOCATOR: arena::Arena = arena::Arena::new();

/// The k8s-openapi crate the SDK's types come from (API version `v1_37`), so a plugin
/// need not pick a version feature itself.
pub use k8s_openapi;
/// serde_json, for `json!` and [`serde_json::Value`].
pub use serde_json;

/// Everything a typical plugin imports: `use rekon_sdk::prelude::*;`.
pub mod prelude {
    pub use crate::condition::{Condition, Status};
    pub use crate::selector::Selector;
    pub use crate::{
        DynamicObject, Error, EventType, Gvk, Kind, Mapping, Metadata, ObjectKey, Output, Plugin,
        Request, Target,
    };
}
