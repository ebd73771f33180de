//! The `rekon` command line. `main.rs` only parses and dispatches to these functions.

mod check;
mod dev;
mod new;
mod rbac;
mod release;
mod run;
mod test;

pub use check::check;
pub use dev::{DevArgs, dev};
pub use new::{Error as NewError, NewArgs, new};
pub use rbac::{RbacArgs, rbac};
pub use release::{Error as ReleaseError, ReleaseArgs, release_finalizer};
pub use run::{RunArgs, client, run};
pub use test::test;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// rekon: a Kubernetes reconcile host for controllers written as WebAssembly plugins.
#[derive(Debug, Parser)]
#[command(name = "rekon", version, about)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, env = "REKON_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output format.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load a plugin and print what it declares, the permissions it needs and its limits,
    /// or why it is refused.
    Check {
        /// The plugin component (.wasm).
        plugin: PathBuf,
        /// Directory of compiled artifacts (skips recompiling an unchanged plugin).
        #[arg(long, env = "REKON_ARTIFACT_DIR")]
        artifact_dir: Option<PathBuf>,
    },
    /// Create a plugin crate that builds, tests and runs as is: Cargo.toml, src/lib.rs,
    /// src/tests.rs, cases/, crd.yaml and a README.
    New(NewArgs),
    /// Run the controllers of every plugin in a directory against a cluster, until SIGTERM.
    Run(Box<RunArgs>),
    /// Develop a plugin on a local cluster: start the embedded control plane, install the
    /// CRDs beside the plugins, print `export KUBECONFIG=…`, and run the host with hot
    /// reload on DIR — a plugin crate, rebuilt on every change, or a directory of
    /// components. Ctrl-C stops everything it started.
    Dev(DevArgs),
    /// Print the ClusterRole and ClusterRoleBinding a host running the plugins of a
    /// directory needs: exactly what they declared plus the host's own needs.
    Rbac(RbacArgs),
    /// Remove the finalizer a removed plugin left on objects (recorded in the annotation
    /// `finalizers.rekon.dev/PLUGIN`), so that those being deleted can go. For plugins
    /// no longer running only: a running host would add the finalizer back (this command
    /// cannot tell whether one runs). The plugin's `finalize` is not called.
    ReleaseFinalizer(ReleaseArgs),
    /// Run a compiled plugin in the real sandbox against fixture cases (YAML files:
    /// reconcile, finalize or mapToPrimaries cases, see the plugin guide's case file
    /// reference) and report each case; a file that is not a valid case is a failed case.
    /// Exits non-zero if any fails.
    Test {
        /// The plugin component (.wasm).
        plugin: PathBuf,
        /// Directory of case files (*.yaml).
        cases: PathBuf,
    },
}
