//! The `rekon` command line. `main.rs` only parses and dispatches to these functions.

mod check;
mod dev;
mod new;
mod rbac;
mod run;
mod test;

pub use check::check;
pub use dev::{DevArgs, dev};
pub use new::{NewArgs, new};
pub use rbac::{RbacArgs, rbac};
pub use run::{RunArgs, run};
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
    Run(RunArgs),
    /// Develop a plugin on a local cluster: start the embedded control plane, install the
    /// CRDs beside the plugins, print `export KUBECONFIG=…`, and run the host with hot
    /// reload on DIR — a plugin crate, rebuilt on every change, or a directory of
    /// components. Ctrl-C stops everything it started.
    Dev(DevArgs),
    /// Print the ClusterRole and ClusterRoleBinding a host running the plugins of a
    /// directory needs: exactly what they declared plus the host's own needs.
    Rbac(RbacArgs),
    /// Run a compiled plugin in the real sandbox against fixture cases (YAML files) and
    /// report each case; exits non-zero if any fails.
    Test {
        /// The plugin component (.wasm).
        plugin: PathBuf,
        /// Directory of case files (*.yaml).
        cases: PathBuf,
    },
}
