//! `rekon run --plugins DIR`.

use crate::controller::{self, Host};
use crate::plugin::{Artifacts, Loader};
use crate::sandbox::{self, Sandbox};
use clap::Args;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Arguments of `rekon run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Directory of plugin components (*.wasm).
    #[arg(long, env = "REKON_PLUGINS")]
    pub plugins: PathBuf,
    /// Kubeconfig file; in-cluster config or the default kubeconfig when absent.
    #[arg(long, env = "REKON_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Directory of compiled plugin artifacts.
    #[arg(long, env = "REKON_ARTIFACT_DIR")]
    pub artifact_dir: Option<PathBuf>,
    /// Resync period for every plugin, overriding what plugins declare (e.g. `30s`).
    #[arg(long, env = "REKON_RESYNC", value_parser = parse_duration)]
    pub resync: Option<Duration>,
    /// Watch and reconcile namespaced kinds in this namespace only (default: all).
    #[arg(long, env = "REKON_NAMESPACE")]
    pub namespace: Option<String>,
    /// Concurrent reconciles per plugin.
    #[arg(long, env = "REKON_CONCURRENCY", default_value_t = 4)]
    pub concurrency: usize,
    /// How long in-flight reconciles may take to finish on SIGTERM.
    #[arg(long, env = "REKON_GRACE", value_parser = parse_duration, default_value = "20s")]
    pub grace: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30s, 5m or 250ms"))?;
    Ok(match unit {
        "ms" => Duration::from_millis(n),
        "s" | "" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m, h)")),
    })
}

/// A kube client from `kubeconfig`, or inferred (in-cluster, then `~/.kube/config`).
///
/// # Errors
/// The kubeconfig cannot be read or names no usable cluster.
pub async fn client(kubeconfig: Option<&Path>) -> anyhow::Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| anyhow::anyhow!("reading kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await?
        }
        None => kube::Config::infer().await?,
    };
    Ok(kube::Client::try_from(config)?)
}

/// Loads every plugin in the directory (refusing broken ones, which are logged) and runs
/// their controllers until SIGTERM or Ctrl-C.
///
/// # Errors
/// The cluster is unreachable, or the directory cannot be read.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let client = client(args.kubeconfig.as_deref()).await?;
    let sandbox = Sandbox::new(sandbox::Config::default())?;
    let artifacts = args
        .artifact_dir
        .clone()
        .map(Artifacts::in_dir)
        .unwrap_or_default();
    let loader = Loader::new(sandbox.clone(), artifacts, sandbox::Limits::default());
    let host = Host::new(
        client,
        controller::Config {
            resync_override: args.resync,
            max_concurrent_reconciles: args.concurrency,
            namespace: args.namespace.clone(),
            sandbox_slots: sandbox.config().pool_instances as usize,
            instance: std::env::var("HOSTNAME").unwrap_or_else(|_| "rekon".into()),
            ..Default::default()
        },
    );
    let mut files: Vec<PathBuf> = std::fs::read_dir(&args.plugins)
        .map_err(|e| anyhow::anyhow!("reading plugin directory {}: {e}", args.plugins.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "wasm"))
        .collect();
    files.sort();
    for file in files {
        let loaded = match tokio::task::block_in_place(|| loader.load_file(&file)) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "plugin refused");
                continue;
            }
        };
        tracing::info!(plugin = %loaded.name(), file = %file.display(), origin = ?loaded.origin, "plugin loaded");
        if let Err(e) = host.start(loaded).await {
            tracing::error!(error = %e, "plugin not started");
        }
    }
    shutdown_signal().await;
    tracing::info!("shutting down");
    host.shutdown(args.grace).await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("a SIGTERM handler can be installed");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
