//! rekon: a Kubernetes reconcile host that runs each controller's decision as a sandboxed
//! WebAssembly component.
//!
//! Data flows one way: API server → watch → store → key → queue → snapshot → plugin →
//! mutations → apply → API server. Each module owns one step:
//! - [`contract`]: the WIT contract's types on the host side.
//! - [`sandbox`]: the wasmtime engine, limits, and the call.
//! - [`plugin`]: finding, checking, compiling and caching plugin components.
//! - [`apply`]: checking a plugin's output against what it declared.
//! - [`testing`]: running a compiled plugin against fixture cases (`rekon test`).
//! - [`selector`]: label selectors.
//! - [`operator`]: hot-reloaded plugin directory, per-plugin config, leader election.
//! - [`metrics`] and [`serve`]: Prometheus metrics, `/metrics`, `/healthz`, `/readyz`.
//! - [`cli`]: the `rekon` command line.

#![warn(missing_docs)]

pub mod apply;
pub mod cli;
pub mod contract;
pub mod controller;
pub mod kinds;
pub mod metrics;
pub mod operator;
pub mod plugin;
pub mod rbac;
pub mod sandbox;
pub mod selector;
pub mod serve;
pub mod testing;
