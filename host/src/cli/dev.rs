//! `rekon dev [DIR]`: a plugin author's inner loop on a local cluster.
//!
//! 1. Finds the local control plane's binary (`--control-plane`, else built from the
//!    checkout this rekon was built from when its sources changed, with progress shown,
//!    else the cached one) and starts it on a temporary directory (or `--data-dir`).
//! 2. Installs the CRDs beside the plugins (`crd.yaml`, `NAME.crd.yaml` in DIR).
//! 3. Prints `export KUBECONFIG=…` for kubectl.
//! 4. Runs the host on the plugins with hot reload — `rekon run`'s own code path. DIR is
//!    either a directory of components (`*.wasm`), followed as `rekon run` follows it, or
//!    a plugin crate: then it is built (`cargo build --release --target wasm32-wasip2`,
//!    cargo's progress shown), its component put into a plugin directory of its own, and
//!    rebuilt on every change to its files; the hot reload swaps it in. A build error is
//!    shown and the running version keeps running. A changed `crd.yaml` is applied again.
//! 5. Ctrl-C (or SIGTERM) stops the host, cargo and the control plane.

use super::run::{self, RunArgs};
use crate::dev::controlplane::{self, Progress};
use crate::dev::crds;
use crate::dev::source::{self, PluginCrate};
use clap::{Args, Parser};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// Arguments of `rekon dev`.
#[derive(Debug, Clone, Args)]
pub struct DevArgs {
    /// A plugin crate (built, and rebuilt on every change of its files) or a directory of
    /// plugin components (*.wasm, each optionally with NAME.yaml).
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// The control plane binary (default: built from this rekon's checkout when its
    /// sources changed, else `$REKON_CACHE/bin/rekon-controlplane`).
    #[arg(long, env = "REKON_CONTROLPLANE_BIN")]
    pub control_plane: Option<PathBuf>,
    /// Keep the cluster (etcd data, certificates, kubeconfig) and the built plugins in this
    /// directory between runs (default: a temporary directory, removed on exit).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The API server's port on 127.0.0.1 (default: a free one).
    #[arg(long)]
    pub port: Option<u16>,
    /// Address for the host's /metrics, /healthz and /readyz (none when absent). With a
    /// plugin crate, /readyz answers 503 until its first build is loaded.
    #[arg(long)]
    pub http_addr: Option<SocketAddr>,
    /// Directory of compiled plugin artifacts (a restart does not recompile).
    #[arg(long, env = "REKON_ARTIFACT_DIR")]
    pub artifact_dir: Option<PathBuf>,
}

/// How long the control plane may take to start (building it is not included).
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// How long the files of a crate must be quiet after a change before it is rebuilt.
const SETTLE: Duration = Duration::from_millis(300);

/// Runs `rekon dev` until Ctrl-C or SIGTERM. Blocks; builds its own tokio runtime after
/// starting the control plane from the calling thread (the control plane stops when that
/// thread exits, so call it from the main thread).
///
/// # Errors
/// DIR is neither a plugin crate nor a directory, the control plane cannot be found,
/// built or started, a CRD file is invalid or refused, or the host cannot start.
pub fn dev(args: DevArgs) -> anyhow::Result<ExitCode> {
    let dir = args
        .dir
        .canonicalize()
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.dir.display()))?;
    if !dir.is_dir() {
        anyhow::bail!(
            "{} is not a directory: give a plugin crate or a directory of plugin components",
            dir.display()
        );
    }
    let krate = PluginCrate::detect(&dir)?;

    let (work, _temporary) = match &args.data_dir {
        Some(d) => {
            std::fs::create_dir_all(d)
                .map_err(|e| anyhow::anyhow!("creating {}: {e}", d.display()))?;
            (d.canonicalize()?, None)
        }
        None => {
            let t = tempfile::Builder::new().prefix("rekon-dev-").tempdir()?;
            (t.path().to_owned(), Some(t))
        }
    };
    let binary = controlplane::locate(args.control_plane.as_deref(), Progress::Show)?;
    eprintln!(
        "rekon dev: starting the local control plane ({})",
        binary.display()
    );
    let mut cluster = controlplane::start(
        &binary,
        &work.join("controlplane"),
        args.data_dir.is_none(),
        args.port,
        START_TIMEOUT,
    )?;
    println!(
        "rekon dev: control plane pid {} ready at {} (log: {})",
        cluster.pid().unwrap_or_default(),
        cluster.ready.server,
        cluster.log.display()
    );

    let plugins = match &krate {
        Some(_) => {
            let p = work.join("plugins");
            std::fs::create_dir_all(&p)
                .map_err(|e| anyhow::anyhow!("creating {}: {e}", p.display()))?;
            p
        }
        None => dir.clone(),
    };
    let kubeconfig = cluster.ready.kubeconfig.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let outcome = runtime.block_on(async {
        let client = run::client(Some(&kubeconfig)).await?;
        let installed = crds::install(&client, &crds::find(&dir)?).await?;
        if !installed.is_empty() {
            println!("rekon dev: installed CRDs: {}", installed.join(", "));
        }
        println!(
            "rekon dev: for kubectl, run:\nexport KUBECONFIG={}",
            kubeconfig.display()
        );
        match &krate {
            Some(k) => println!(
                "rekon dev: building {} and rebuilding it on every change of {}; Ctrl-C stops",
                k.name(),
                k.dir().display()
            ),
            None => println!(
                "rekon dev: running the plugins of {}, reloaded as they change; Ctrl-C stops",
                dir.display()
            ),
        }
        // Not ready before the crate's first build is in the plugin directory.
        let (built, gate) = tokio::sync::watch::channel(krate.is_none());
        let follower = krate
            .clone()
            .map(|k| tokio::spawn(follow_crate(k, plugins.clone(), client.clone(), built)));
        let code = run::run_gated(run_args(&plugins, &kubeconfig, &args)?, Some(gate)).await;
        if let Some(task) = follower {
            // Dropping the build in progress stops cargo.
            task.abort();
            let _ = task.await;
        }
        code
    });
    // The runtime's tasks (a cargo build among them) end before the control plane does.
    drop(runtime);
    let stopped = cluster.stop();
    eprintln!("rekon dev: control plane stopped ({stopped})");
    outcome
}

/// `rekon run`'s arguments for the host of `rekon dev`: its defaults (and environment),
/// with the plugin directory, the kubeconfig and what `rekon dev` was given.
fn run_args(plugins: &Path, kubeconfig: &Path, args: &DevArgs) -> anyhow::Result<RunArgs> {
    #[derive(Parser)]
    struct Run {
        #[command(flatten)]
        run: RunArgs,
    }
    let mut argv = vec![
        "rekon-dev".to_owned(),
        format!("--plugins={}", plugins.display()),
        format!("--kubeconfig={}", kubeconfig.display()),
        "--identity=rekon-dev".to_owned(),
        "--grace=5s".to_owned(),
    ];
    if let Some(addr) = args.http_addr {
        argv.push(format!("--http-addr={addr}"));
    }
    if let Some(dir) = &args.artifact_dir {
        argv.push(format!("--artifact-dir={}", dir.display()));
    }
    Ok(Run::try_parse_from(argv)?.run)
}

/// Builds the crate into `plugins`, then again after every change of its files; a changed
/// CRD file is applied again. Sends `true` on `built` once a build is in `plugins`. Runs
/// until aborted.
async fn follow_crate(
    krate: PluginCrate,
    plugins: PathBuf,
    client: kube::Client,
    built: tokio::sync::watch::Sender<bool>,
) {
    let mut watched = krate
        .watch()
        .map_err(|e| eprintln!("rekon dev: {e}; building once, not following changes"))
        .ok();
    let mut why = "first build".to_owned();
    loop {
        eprintln!("rekon dev: building {} ({why})", krate.name());
        let began = std::time::Instant::now();
        match krate.build().await {
            Ok(wasm) => match source::publish(&wasm, &plugins, krate.name()) {
                Ok(changed) => {
                    if changed {
                        eprintln!(
                            "rekon dev: built {} in {:.1?}; the host loads it",
                            krate.name(),
                            began.elapsed()
                        );
                    } else {
                        eprintln!("rekon dev: {} is unchanged", krate.name());
                    }
                    built.send_replace(true);
                }
                Err(e) => eprintln!("rekon dev: {e}"),
            },
            Err(e) => eprintln!("rekon dev: {e}"),
        }
        // The next change that needs a build; CRD files are applied as they change.
        loop {
            let Some((_watcher, changes)) = watched.as_mut() else {
                return;
            };
            let Some(changed) = next_burst(&krate, changes).await else {
                return;
            };
            if changed.iter().any(|p| crds::is_crd_file(p)) {
                match crds::find(krate.dir()) {
                    Ok(files) => match crds::install(&client, &files).await {
                        Ok(names) => {
                            eprintln!("rekon dev: applied CRDs again: {}", names.join(", "))
                        }
                        Err(e) => eprintln!("rekon dev: {e}"),
                    },
                    Err(e) => eprintln!("rekon dev: {e}"),
                }
            }
            // Named by a path that is still there (an editor's temporary file is not).
            let mut edits = changed.iter().filter(|p| !crds::is_crd_file(p));
            if let Some(path) = edits.clone().find(|p| p.exists()).or_else(|| edits.next()) {
                let shown = path.strip_prefix(krate.dir()).unwrap_or(path);
                why = format!("{} changed", shown.display());
                break;
            }
        }
    }
}

/// Waits for a change of the crate's files and for the burst it starts to settle (no
/// change for [`SETTLE`]); answers the paths, `None` once the watcher is gone.
async fn next_burst(
    krate: &PluginCrate,
    changes: &mut tokio::sync::mpsc::UnboundedReceiver<PathBuf>,
) -> Option<Vec<PathBuf>> {
    let mut paths = Vec::new();
    while paths.is_empty() {
        let path = changes.recv().await?;
        if krate.is_source(&path) {
            paths.push(path);
        }
    }
    loop {
        match tokio::time::timeout(SETTLE, changes.recv()).await {
            Ok(Some(path)) => {
                if krate.is_source(&path) && !paths.contains(&path) {
                    paths.push(path);
                }
            }
            Ok(None) => return None,
            Err(_) => return Some(paths),
        }
    }
}
