//! `rekon run --plugins DIR`: the operator process.
//!
//! 1. Serves `/metrics`, `/healthz` and `/readyz` (when `--http-addr` is given).
//! 2. With `--leader-elect`, waits to hold the Lease; a standby reports ready (it can take
//!    over) but reconciles nothing.
//! 3. Follows the plugin directory: plugins start, are swapped and stop as their files
//!    come, change and go ([`crate::operator::plugins`]). `/readyz` turns ready once every
//!    plugin file was acted on and the stores synced.
//! 4. On SIGTERM or Ctrl-C: stops taking work, lets in-flight reconciles finish (at most
//!    `--grace`), releases the Lease, exits 0. A leader that lost its Lease exits 1 so
//!    that its restart starts clean.

use crate::controller::{self, Host};
use crate::fence::Fence;
use crate::metrics::Metrics;
use crate::operator::config::parse_duration;
use crate::operator::leader::{Elector, Holding, Timing};
use crate::operator::{self, Follow, PluginSet, Reporter};
use crate::plugin::{Artifacts, Loader};
use crate::sandbox::{self, Sandbox};
use crate::serve::{self, Endpoints, Readiness};
use crate::write::events::Recorder;
use clap::Args;
use serde_json::json;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// Arguments of `rekon run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Directory of plugin components (*.wasm), each optionally with a NAME.yaml config;
    /// followed while running.
    #[arg(long, env = "REKON_PLUGINS")]
    pub plugins: PathBuf,
    /// Kubeconfig file; in-cluster config or the default kubeconfig when absent.
    #[arg(long, env = "REKON_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Directory of compiled plugin artifacts (a restart does not recompile).
    #[arg(long, env = "REKON_ARTIFACT_DIR")]
    pub artifact_dir: Option<PathBuf>,
    /// Resync period for every plugin, overriding what plugins declare (e.g. `30s`).
    #[arg(long, env = "REKON_RESYNC", value_parser = parse_duration)]
    pub resync: Option<Duration>,
    /// Watch and reconcile namespaced kinds in this namespace only (default: all).
    #[arg(long, env = "REKON_NAMESPACE")]
    pub namespace: Option<String>,
    /// Concurrent reconciles per plugin (their wasm calls share the sandbox's slots; the
    /// rest wait on the API server).
    #[arg(long, env = "REKON_CONCURRENCY", default_value_t = 64)]
    pub concurrency: usize,
    /// How long in-flight reconciles may take to finish on SIGTERM.
    #[arg(long, env = "REKON_GRACE", value_parser = parse_duration, default_value = "20s")]
    pub grace: Duration,
    /// Address for /metrics, /healthz and /readyz (e.g. `0.0.0.0:8080`); none when absent.
    #[arg(long, env = "REKON_HTTP_ADDR")]
    pub http_addr: Option<SocketAddr>,
    /// Reconcile only while holding a Lease, so that replicas can stand by.
    #[arg(long, env = "REKON_LEADER_ELECT")]
    pub leader_elect: bool,
    /// Namespace of the Lease (and of the host's own Events).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// Name of the Lease.
    #[arg(long, env = "REKON_LEASE_NAME", default_value = "rekon")]
    pub lease_name: String,
    /// How long a Lease stays valid without renewal.
    #[arg(long, value_parser = parse_duration, default_value = "15s")]
    pub lease_duration: Duration,
    /// How long the leader tries to renew before giving up leadership.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub renew_deadline: Duration,
    /// How often candidates retry and the leader renews.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    pub retry_period: Duration,
    /// This instance's identity in the Lease and in Events (default: the pod or host name
    /// and the process id).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Deadline of every API request the controllers make (writes, reads, Events); a
    /// write that times out counts as a failure and is retried with backoff.
    #[arg(long, env = "REKON_REQUEST_TIMEOUT", value_parser = parse_duration, default_value = "30s")]
    pub request_timeout: Duration,
    /// CPU turns for plugin code: how many calls run guest code at once, shared fairly
    /// between plugins, with time budgets counting the time a call ran (0: no sharing,
    /// budgets in wall time). Default: the cores available to the process (a container's
    /// CPU quota included).
    #[arg(long, env = "REKON_SANDBOX_CPUS")]
    pub sandbox_cpus: Option<usize>,
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

/// Runs the operator until SIGTERM or Ctrl-C (exit 0) or until leadership is lost
/// (exit 1).
///
/// # Errors
/// The cluster is unreachable, the plugin directory cannot be read, or the HTTP address
/// cannot be bound.
pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    run_gated(args, None).await
}

/// [`run`], with `/readyz` also held at 503 until `gate` holds `true` (`rekon dev`: until
/// the first build of its plugin crate is in the plugin directory; an empty directory
/// would otherwise count as every plugin loaded).
///
/// # Errors
/// As [`run`].
pub async fn run_gated(
    args: RunArgs,
    gate: Option<tokio::sync::watch::Receiver<bool>>,
) -> anyhow::Result<ExitCode> {
    if !args.plugins.is_dir() {
        anyhow::bail!("plugin directory {} does not exist", args.plugins.display());
    }
    let client = client(args.kubeconfig.as_deref()).await?;
    let identity = identity(&args);
    // With leader election, every write is fenced by the Lease (closed until acquired).
    let fence = if args.leader_elect {
        Fence::leased(args.renew_deadline)
    } else {
        Fence::open()
    };
    let (host, loader) = build_host(&args, client.clone(), &identity, &fence)?;
    let stopped = stop_on_signal();

    // The metrics read the host at each scrape; the host knows nothing of them.
    let metrics = Arc::new(Metrics::new());
    let source = host.clone();
    metrics.add_source(move |scrape| scrape.add_host(&source));
    let readiness = Readiness::default();
    if let Some(addr) = args.http_addr {
        let endpoints = Endpoints::new(metrics.clone(), readiness.clone());
        serve_endpoints(addr, endpoints, stopped()).await?;
    }

    let candidate = {
        Elector::new(
            client.clone(),
            &args.lease_namespace,
            &args.lease_name,
            &identity,
            Timing {
                lease_duration: args.lease_duration,
                renew_deadline: args.renew_deadline,
                retry: args.retry_period,
            },
        )
        .fenced(fence.clone())
    };
    let mut holding = None;
    if args.leader_elect {
        let mut elector = candidate;
        if !stand_by(&mut elector, &readiness, stopped()).await {
            tracing::info!("stopped while standing by");
            return Ok(ExitCode::SUCCESS);
        }
        holding = Some(elector.hold_in_background());
    }

    let reporter = Reporter {
        recorder: Recorder::new(client.clone(), &identity)
            .guarded(fence.clone(), args.request_timeout),
        regarding: event_subject(&args),
    };
    let mut set = PluginSet::new(
        host.clone(),
        loader,
        args.plugins.clone(),
        Some(reporter),
        metrics,
    );
    let leadership_lost = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let lost = async {
        match holding.as_mut() {
            Some(h) => h.lost().await,
            None => std::future::pending().await,
        }
    };
    let stop = stop_or_lost(stopped(), lost, leadership_lost.clone());
    let ready_host = host.clone();
    let ready = readiness.clone();
    operator::follow(&mut set, &Follow::default(), stop, move |settled| {
        let opened = gate.as_ref().is_none_or(|g| *g.borrow());
        if settled && opened && !ready.is_ready() && ready_host.all_synced() {
            tracing::info!(plugins = ?ready_host.plugins(), "ready: plugins loaded, stores synced");
            ready.set(true);
        }
    })
    .await;

    readiness.set(false);
    let lost = leadership_lost.load(std::sync::atomic::Ordering::SeqCst);
    shut_down(&host, holding, args.grace, lost).await
}

/// This process's identity for the Lease and Events: `--identity`, or `HOSTNAME-PID`.
fn identity(args: &RunArgs) -> String {
    args.identity.clone().unwrap_or_else(|| {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "rekon".into());
        format!("{host}-{}", std::process::id())
    })
}

/// The sandbox, the plugin loader and the controller host, configured from `args`.
fn build_host(
    args: &RunArgs,
    client: kube::Client,
    identity: &str,
    fence: &Fence,
) -> anyhow::Result<(Host, Loader)> {
    let mut config = sandbox::Config::default();
    if let Some(cpus) = args.sandbox_cpus {
        config.cpus = cpus;
    }
    let sandbox = Sandbox::new(config)?;
    let turns = sandbox.cpu().map_or(0, |cpu| cpu.turns());
    tracing::info!(cpu_turns = turns, "sandbox ready");
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
            sandbox_share: (turns > 0).then_some(2 * turns),
            instance: identity.to_owned(),
            fence: fence.clone(),
            request_timeout: args.request_timeout,
            ..Default::default()
        },
    );
    Ok((host, loader))
}

/// Watches for SIGTERM or Ctrl-C; the returned function makes a future that resolves once
/// either arrived (immediately if one already has).
fn stop_on_signal() -> impl Fn() -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown requested");
        let _ = stop_tx.send(true);
    });
    move || {
        let mut rx = stop_rx.clone();
        Box::pin(async move {
            let _ = rx.wait_for(|s| *s).await;
        })
    }
}

/// Binds `addr` and serves `/metrics`, `/healthz` and `/readyz` until `stopped`.
async fn serve_endpoints(
    addr: SocketAddr,
    endpoints: Endpoints,
    stopped: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("binding {addr} for /metrics and probes: {e}"))?;
    tracing::info!(addr = %listener.local_addr()?, "serving /metrics, /healthz, /readyz");
    tokio::spawn(serve::serve(listener, endpoints, stopped));
    Ok(())
}

/// Stands by, ready, until `elector` acquires the Lease (`true`, and not ready until the
/// plugins run) or the process is stopped first (`false`). A standby reconciles nothing.
async fn stand_by(
    elector: &mut Elector,
    readiness: &Readiness,
    stopped: impl Future<Output = ()>,
) -> bool {
    // A standby is ready: it can take over.
    readiness.set(true);
    tokio::select! {
        () = elector.acquire() => {}
        () = stopped => return false,
    }
    readiness.set(false);
    true
}

/// What the host's own Events (a refused plugin) are about: its Pod when `POD_NAME` and
/// `POD_NAMESPACE` are set, its Lease otherwise.
fn event_subject(args: &RunArgs) -> serde_json::Value {
    match (std::env::var("POD_NAME"), std::env::var("POD_NAMESPACE")) {
        (Ok(name), Ok(namespace)) => json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "name": name, "namespace": namespace },
        }),
        _ => json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": { "name": args.lease_name, "namespace": args.lease_namespace },
        }),
    }
}

/// Resolves when the process is stopped or leadership is lost (`lost` resolves; it never
/// does without leader election); a loss is recorded in `lost_flag`.
async fn stop_or_lost(
    stopped: impl Future<Output = ()>,
    lost: impl Future<Output = ()>,
    lost_flag: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    tokio::select! {
        () = stopped => {}
        () = lost => lost_flag.store(true, std::sync::atomic::Ordering::SeqCst),
    }
}

/// Stops the controllers (in-flight reconciles get `grace`), then exits: failure if
/// leadership was `lost`, otherwise success after releasing the Lease.
async fn shut_down(
    host: &Host,
    holding: Option<Holding>,
    grace: Duration,
    lost: bool,
) -> anyhow::Result<ExitCode> {
    // A deposed leader's writes are fenced already: do not wait for reconciles in
    // flight, exit at once so the restart begins from a clean state.
    let grace = if lost { Duration::ZERO } else { grace };
    tracing::info!(grace = ?grace, "stopping controllers");
    host.shutdown(grace).await;
    if lost {
        tracing::error!("exiting: leadership lost");
        return Ok(ExitCode::FAILURE);
    }
    if let Some(holding) = holding {
        // Renewals stop first: one racing the release would take the Lease again.
        match tokio::time::timeout(Duration::from_secs(5), holding.release()).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "could not release the lease; a standby takes over when it expires");
            }
            Err(_) => {
                tracing::warn!(
                    "releasing the lease got no answer; a standby takes over when it expires"
                );
            }
        }
    }
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
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
