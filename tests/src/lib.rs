//! Support for rekon's integration tests: a local kube-apiserver ([`controlplane`]),
//! builds of the wasm plugins ([`plugins`]), and small fixture builders.

pub mod controlplane;
pub mod plugins;
