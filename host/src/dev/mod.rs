//! The pieces of `rekon dev`, a plugin author's inner loop on a local cluster (the command
//! itself, which puts them together with `rekon run`'s code path, is `cli::dev`):
//!
//! - [`controlplane`]: the local control plane — finding or building its binary (shared
//!   with the integration tests), starting it, stopping it.
//! - [`crds`]: installing the CustomResourceDefinitions found beside the plugins.
//! - [`source`]: a plugin crate — building its component with cargo and noticing edits
//!   to its sources.

pub mod controlplane;
pub mod crds;
pub mod source;

use std::path::PathBuf;
use std::time::Duration;

/// Why a step of `rekon dev` failed. Each names the thing and the reason.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No Go toolchain was found, and the control plane needed building.
    #[error(
        "cannot build the control plane from {source_dir}: no Go toolchain found (looked at $GO, \
         `go` on PATH and /usr/local/go/bin/go); install Go >= 1.26 or set \
         REKON_CONTROLPLANE_BIN to a prebuilt rekon-controlplane"
    )]
    GoMissing {
        /// The Go sources that needed building.
        source_dir: PathBuf,
    },
    /// `go build` (through `build.sh`) failed.
    #[error(
        "building the control plane from {source_dir} failed ({status}); last lines of the build output:\n{log_tail}"
    )]
    BuildFailed {
        /// The Go sources.
        source_dir: PathBuf,
        /// How the build exited.
        status: String,
        /// The end of the build's output.
        log_tail: String,
    },
    /// `--control-plane` (or `REKON_CONTROLPLANE_BIN`) names no file.
    #[error("the control plane binary {path} does not exist")]
    ControlPlaneMissing {
        /// The path given.
        path: PathBuf,
    },
    /// There is no control plane binary and no sources to build one from.
    #[error(
        "no local control plane: {cached} does not exist and this rekon was not built from a \
         checkout whose tests/controlplane could build it; pass --control-plane PATH (or set \
         REKON_CONTROLPLANE_BIN), or run `rekon dev` from a rekon built in a checkout, with Go \
         >= 1.26 installed"
    )]
    NoControlPlane {
        /// Where a cached binary was looked for.
        cached: PathBuf,
    },
    /// A program could not be started.
    #[error("cannot run {}: {source}", program.display())]
    Spawn {
        /// The program.
        program: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The control plane exited before printing its ready line.
    #[error(
        "the control plane exited before it was ready ({status}); last lines of its log {}:\n{log_tail}",
        log.display()
    )]
    ControlPlaneExited {
        /// How it exited.
        status: String,
        /// Its log.
        log: PathBuf,
        /// The end of that log.
        log_tail: String,
    },
    /// The control plane did not get ready in time.
    #[error(
        "the control plane was not ready after {timeout:?}; last lines of its log {}:\n{log_tail}",
        log.display()
    )]
    ControlPlaneTimeout {
        /// How long it was given.
        timeout: Duration,
        /// Its log.
        log: PathBuf,
        /// The end of that log.
        log_tail: String,
    },
    /// The ready line could not be understood.
    #[error("the control plane printed a ready line without {missing}: {line:?}")]
    BadReadyLine {
        /// The key that was missing.
        missing: &'static str,
        /// The line.
        line: String,
    },
    /// A CRD file holds something that is not a CustomResourceDefinition, or bad YAML.
    #[error("{}, document {index}: {reason}", file.display())]
    BadCrd {
        /// The file.
        file: PathBuf,
        /// The document's position in the file, from 1.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// The API server refused a CRD, or it did not become established.
    #[error("installing the CRD {name} from {}: {reason}", file.display())]
    CrdInstall {
        /// The CRD's name.
        name: String,
        /// The file it came from.
        file: PathBuf,
        /// Why.
        reason: String,
    },
    /// The directory is a crate cargo cannot describe, or not a plugin crate.
    #[error("{} is not a plugin crate: {reason}", manifest.display())]
    NotAPluginCrate {
        /// Its Cargo.toml.
        manifest: PathBuf,
        /// Why.
        reason: String,
    },
    /// `cargo build` failed (its diagnostics were shown as it ran).
    #[error("building {name} failed ({status}); the running version, if any, keeps running")]
    CrateBuildFailed {
        /// The crate.
        name: String,
        /// How cargo exited.
        status: String,
    },
    /// `cargo build` succeeded but named no component.
    #[error(
        "building {name} produced no .wasm component (is its crate-type cdylib, and is the \
         wasm32-wasip2 target installed? `rustup target add wasm32-wasip2`)"
    )]
    NoComponent {
        /// The crate.
        name: String,
    },
    /// A file-system operation failed.
    #[error("{action}: {source}")]
    Io {
        /// What was being done, naming the path.
        action: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// An [`Error::Io`] maker for `map_err`.
    pub fn io(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let action = action.into();
        move |source| Error::Io { action, source }
    }
}
