//! rekon's integration tests: one binary, one local control plane per run.

mod sandbox;
mod smoke;
