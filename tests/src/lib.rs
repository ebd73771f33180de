//! Support for rekon's integration tests: a local kube-apiserver ([`controlplane`]),
//! builds of the wasm plugins ([`plugins`]) and of the `rekon` binary ([`binary`]).

#![warn(missing_docs)]

pub mod binary;
pub mod controlplane;
pub mod plugins;
