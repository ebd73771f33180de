//! rekon: a Kubernetes reconcile host that runs each controller's decision as a sandboxed
//! WebAssembly component.
//!
//! Data flows one way: API server → watch → store → key → queue → snapshot → plugin →
//! mutations → write → API server. Each module owns one job (`docs/design.md` has the
//! picture, the contract and the invariants):
//! - [`contract`]: the WIT contract's types on the host side.
//! - [`kinds`]: resolving a plugin's kinds to API resources (discovery).
//! - [`selector`]: label selectors.
//! - [`sandbox`]: the wasmtime engine, limits, and one call into a plugin.
//! - [`plugin`]: checking, compiling and caching a plugin component; load-time policy.
//! - [`controller`]: shared watches and stores, key mapping, the work queue, resync, and
//!   the reconcile loop per plugin.
//! - [`mod@write`]: writing a plugin's output to the API server, conflict-safe (checks,
//!   resourceVersion preconditions, owner references, status, events).
//! - [`fence`]: whether this process may write now (the leader Lease).
//! - [`rbac`]: the permissions the loaded plugins need.
//! - [`operator`]: hot-reloaded plugin directory, per-plugin config, leader election.
//! - [`metrics`] and [`serve`]: Prometheus metrics, `/metrics`, `/healthz`, `/readyz`.
//! - [`testing`]: running a compiled plugin against fixture cases (`rekon test`).
//! - [`dev`]: the local control plane, CRD files and plugin crates, for `rekon dev`.
//! - [`cli`]: the `rekon` command line.

#![warn(missing_docs)]

pub mod cli;
pub mod contract;
pub mod controller;
pub mod dev;
pub mod fence;
pub mod kinds;
pub mod metrics;
pub mod operator;
pub mod plugin;
pub mod rbac;
pub mod sandbox;
pub mod selector;
pub mod serve;
pub mod testing;
pub mod write;
