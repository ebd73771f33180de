//! Support for rekon's integration tests: a local kube-apiserver ([`controlplane`]),
//! builds of the wasm plugins ([`plugins`]) and of the `rekon` binary ([`binary`]), and
//! `rekon run` as a process ([`process`]), and a fault-injecting proxy in front of the API
//! server ([`proxy`]).

#![warn(missing_docs)]

pub mod binary;
pub mod controlplane;
pub mod plugins;
pub mod process;
pub mod proxy;
