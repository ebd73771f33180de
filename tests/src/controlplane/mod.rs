//! A real Kubernetes control plane on loopback for rekon's integration tests and demo.
//!
//! The control plane is the Go program in `tests/controlplane/` (embedded etcd,
//! kube-apiserver with TLS and RBAC, the garbage-collector and namespace controllers, all
//! in one process). This module builds it on first use (cached under `$REKON_CACHE`,
//! default `$HOME/.cache/rekon`, rebuilt only when its sources change), starts it, and
//! hands out [`kube::Client`]s, fresh namespaces and installed CRDs.
//!
//! ```no_run
//! # async fn demo() -> Result<(), rekon_tests::controlplane::Error> {
//! use rekon_tests::controlplane::{ControlPlane, TestNamespace};
//! let cp = ControlPlane::shared().await?;
//! let client = cp.client().await?;
//! let ns = TestNamespace::create(&client, "my-test").await?;
//! # let _ = ns.name();
//! # Ok(()) }
//! ```
//!
//! Environment:
//! - `REKON_CACHE`: where the binary is cached (default `$HOME/.cache/rekon`).
//! - `REKON_CONTROLPLANE_BIN`: use this binary instead of building one.
//! - `GO`: the Go toolchain to build with (default `go` on `PATH`, then `/usr/local/go/bin/go`).
//!
//! Processes: every control plane is spawned from one long-lived thread, and the Go
//! program asks the kernel for SIGTERM when that thread dies (`PR_SET_PDEATHSIG`) and also
//! watches its parent pid, so no control plane outlives the test binary, even when a test
//! panics or the binary exits without running destructors. [`ControlPlane`]'s `Drop`
//! kills its process.

mod build;
mod fixtures;

pub use build::{binary, cache_dir, source_dir, source_hash};
pub use fixtures::{
    CRD_ESTABLISHED_TIMEOUT, IntoCrd, TestNamespace, install_crd, random_name, wait_until,
};

use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use kube::api::{Api, PostParams};
use kube::config::{AuthInfo, KubeConfigOptions, Kubeconfig};

use rekon_host::dev::controlplane::{
    LOG_TAIL_LINES, READY_PREFIX, Ready, describe_exit, tail_of_file,
};

/// Why the control plane or one of the helpers failed. Each variant is named by the
/// outcome; the underlying cause, when there is one, is the error's `source()`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Finding or building the control plane binary failed, or its ready line was not
    /// understood (the shared code of `rekon dev`).
    #[error(transparent)]
    Dev(#[from] rekon_host::dev::Error),
    /// Building failed earlier in this process; it is not retried.
    #[error("the control plane could not be built earlier in this process: {reason}")]
    BuildFailedEarlier {
        /// The first failure with its causes.
        reason: String,
    },
    /// A file-system operation failed.
    #[error("{action}")]
    Io {
        /// What was being done, naming the path.
        action: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The control plane binary could not be executed.
    #[error("could not run the control plane binary {binary}")]
    SpawnFailed {
        /// The binary.
        binary: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The control plane exited before printing its ready line.
    #[error(
        "the control plane exited before it was ready ({status}); last lines of its log {log}:\n{log_tail}"
    )]
    StartFailed {
        /// How it exited.
        status: String,
        /// Its stderr log.
        log: PathBuf,
        /// The end of that log.
        log_tail: String,
    },
    /// The control plane did not get ready in time (it has been killed).
    #[error(
        "the control plane was not ready after {timeout:?}; last lines of its log {log}:\n{log_tail}"
    )]
    Timeout {
        /// The start timeout.
        timeout: Duration,
        /// Its stderr log.
        log: PathBuf,
        /// The end of that log.
        log_tail: String,
    },
    /// The kubeconfig written by the control plane could not be loaded.
    #[error("loading the control plane's kubeconfig {path}")]
    Kubeconfig {
        /// The kubeconfig.
        path: PathBuf,
        /// Why.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// A kube client could not be built.
    #[error("creating a kube client for {server}")]
    Client {
        /// The API server URL.
        server: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// The control plane's admin endpoint (etcd compaction, shutdown) failed.
    #[error("the control plane's admin endpoint {url}: {reason}")]
    Admin {
        /// The URL called.
        url: String,
        /// What went wrong.
        reason: String,
        /// The I/O error, if that was the cause.
        #[source]
        source: Option<io::Error>,
    },
    /// The control plane did not stop cleanly.
    #[error(
        "the control plane (pid {pid}) did not stop cleanly ({status}); last lines of its log {log}:\n{log_tail}"
    )]
    StopFailed {
        /// Its process id.
        pid: u32,
        /// How it exited, or that it had to be killed.
        status: String,
        /// Its stderr log.
        log: PathBuf,
        /// The end of that log.
        log_tail: String,
    },
    /// The process-wide control plane of [`ControlPlane::shared`] failed to start; every
    /// test asking for it gets this.
    #[error("the shared control plane is unavailable: {reason}")]
    SharedUnavailable {
        /// The first start's error with its causes.
        reason: String,
    },
    /// A Kubernetes API call made by a helper failed.
    #[error("{action}")]
    Api {
        /// What was being done.
        action: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// A condition awaited by [`wait_until`] or a helper did not hold in time.
    #[error("timed out after {timeout:?} waiting until {what}")]
    WaitTimeout {
        /// The condition.
        what: String,
        /// How long it waited.
        timeout: Duration,
    },
    /// Waiting for a condition failed before the condition held.
    #[error("waiting until {what} failed")]
    WaitFailed {
        /// The condition.
        what: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// An object handed to a helper, or answered by the API server, is not valid.
    #[error("{what} is not valid")]
    Invalid {
        /// What was parsed.
        what: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

fn io_error(action: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let action = action.into();
    move |source| Error::Io { action, source }
}

/// The error and its causes on one line, for errors that must be cloned as text.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

// ---------------------------------------------------------------------------------------
// Starting and stopping
// ---------------------------------------------------------------------------------------

/// How to start a [`ControlPlane`].
#[derive(Clone, Debug)]
pub struct ControlPlaneOptions {
    /// Where etcd data, certificates, the kubeconfig and the log live. `None`: a fresh
    /// temporary directory, removed when the control plane stops. A given directory is
    /// kept, and starting again on it restarts on the same etcd data, certificates and
    /// (when free) ports.
    pub data_dir: Option<PathBuf>,
    /// The API server's port on 127.0.0.1; `None` picks a free one (or the previous
    /// run's, on a reused data dir).
    pub port: Option<u16>,
    /// The kube-apiserver watch cache. Off, watches are served by etcd directly, so after
    /// [`ControlPlane::compact_etcd`] a watch from an older resourceVersion gets 410 Gone.
    pub watch_cache: bool,
    /// How long to wait for the ready line (building the binary is not included).
    pub start_timeout: Duration,
    /// Extra kube-apiserver flags, such as `--feature-gates=X=true`.
    pub apiserver_args: Vec<String>,
}

impl Default for ControlPlaneOptions {
    fn default() -> Self {
        Self {
            data_dir: None,
            port: None,
            watch_cache: true,
            start_timeout: Duration::from_secs(120),
            apiserver_args: Vec::new(),
        }
    }
}

/// A running local control plane: etcd, kube-apiserver (TLS on 127.0.0.1, RBAC) and the
/// garbage-collector and namespace controllers, in one child process.
///
/// Dropping it kills the process (and removes its data dir if it was temporary).
pub struct ControlPlane {
    child: Mutex<Option<Child>>,
    pid: u32,
    kubeconfig_path: PathBuf,
    kubeconfig: Kubeconfig,
    server_url: String,
    etcd_url: String,
    admin_url: String,
    data_dir: PathBuf,
    log_path: PathBuf,
    startup: Duration,
    // Removed on drop; declared last so the process is gone first.
    _temp_dir: Option<tempfile::TempDir>,
}

impl fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlPlane")
            .field("pid", &self.pid)
            .field("server_url", &self.server_url)
            .field("kubeconfig_path", &self.kubeconfig_path)
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

/// Spawns every control plane from one thread that lives as long as the process: the
/// child's parent-death signal fires when the *thread* that forked it exits, and test
/// threads exit after each test.
fn spawn_from_lasting_thread(command: Command) -> io::Result<Child> {
    type Request = (Command, mpsc::Sender<io::Result<Child>>);
    static SPAWNER: OnceLock<mpsc::Sender<Request>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("rekon-controlplane-spawner".into())
            .spawn(move || {
                // The sender lives in a static, so this loop ends only with the process.
                while let Ok((mut command, reply)) = rx.recv() {
                    let _ = reply.send(command.spawn());
                }
            })
            .expect("starting the control plane spawner thread");
        tx
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner
        .send((command, reply_tx))
        .map_err(|_| io::Error::other("the control plane spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| io::Error::other("the control plane spawner thread did not answer"))?
}

/// What the stdout reader thread reports.
enum StdoutEvent {
    Ready(String),
    Closed,
}

impl ControlPlane {
    /// Starts a control plane (building the binary first if needed) and waits until it is
    /// ready. Runs the blocking parts on tokio's blocking pool.
    pub async fn start(options: ControlPlaneOptions) -> Result<ControlPlane, Error> {
        match tokio::task::spawn_blocking(move || Self::start_blocking(options)).await {
            Ok(result) => result,
            Err(join) => std::panic::resume_unwind(join.into_panic()),
        }
    }

    /// [`ControlPlane::start`] without async: blocks the calling thread.
    pub fn start_blocking(options: ControlPlaneOptions) -> Result<ControlPlane, Error> {
        let binary = binary()?;
        let (data_dir, temp_dir) = match &options.data_dir {
            Some(dir) => {
                fs::create_dir_all(dir).map_err(io_error(format!("creating {}", dir.display())))?;
                (dir.clone(), None)
            }
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("rekon-controlplane-")
                    .tempdir()
                    .map_err(io_error("creating a temporary data directory"))?;
                (temp.path().to_path_buf(), Some(temp))
            }
        };
        let log_path = data_dir.join("controlplane.log");
        let kubeconfig_path = data_dir.join("kubeconfig");
        let log = File::create(&log_path)
            .map_err(io_error(format!("creating {}", log_path.display())))?;

        let mut command = Command::new(&binary);
        command
            .arg(format!("--data-dir={}", data_dir.display()))
            .arg(format!("--kubeconfig-out={}", kubeconfig_path.display()))
            .arg(format!("--watch-cache={}", options.watch_cache))
            .arg(format!("--port={}", options.port.unwrap_or(0)))
            // A little shorter than ours, so that the program reports what it was waiting
            // for (in its log) before we give up on it.
            .arg(format!(
                "--ready-timeout={}s",
                options.start_timeout.as_secs().saturating_sub(5).max(1)
            ));
        if temp_dir.is_some() {
            // Also removed by the Go program when it is stopped by a signal after this
            // process is gone, e.g. for the shared control plane.
            command.arg("--remove-data-dir");
        }
        for arg in &options.apiserver_args {
            command.arg(format!("--apiserver-arg={arg}"));
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);

        let began = Instant::now();
        let mut child =
            spawn_from_lasting_thread(command).map_err(|source| Error::SpawnFailed {
                binary: binary.clone(),
                source,
            })?;
        let pid = child.id();
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::Builder::new()
            .name(format!("rekon-controlplane-{pid}-stdout"))
            .spawn(move || {
                let mut ready_sent = false;
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if !ready_sent && line.starts_with(READY_PREFIX) {
                        ready_sent = true;
                        let _ = tx.send(StdoutEvent::Ready(line));
                    }
                }
                let _ = tx.send(StdoutEvent::Closed);
            });
        if let Err(source) = reader {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::Io {
                action: "starting the control plane's stdout reader thread".into(),
                source,
            });
        }

        let line = match rx.recv_timeout(options.start_timeout) {
            Ok(StdoutEvent::Ready(line)) => line,
            Ok(StdoutEvent::Closed) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = child
                    .wait()
                    .map_or_else(|e| format!("wait failed: {e}"), describe_exit);
                return Err(Error::StartFailed {
                    status,
                    log_tail: tail_of_file(&log_path, LOG_TAIL_LINES),
                    log: keep_log(&log_path, temp_dir),
                });
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::Timeout {
                    timeout: options.start_timeout,
                    log_tail: tail_of_file(&log_path, LOG_TAIL_LINES),
                    log: keep_log(&log_path, temp_dir),
                });
            }
        };
        let startup = began.elapsed();
        eprintln!(
            "rekon-tests: control plane pid {pid} ready in {startup:.1?} (log: {})",
            log_path.display()
        );

        let (server_url, etcd_url, admin_url) = match Ready::parse(&line) {
            Ok(ready) => (ready.server, ready.etcd, ready.admin),
            Err(err) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(err.into());
            }
        };
        let kubeconfig = match Kubeconfig::read_from(&kubeconfig_path) {
            Ok(k) => k,
            Err(source) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::Kubeconfig {
                    path: kubeconfig_path,
                    source,
                });
            }
        };

        Ok(ControlPlane {
            child: Mutex::new(Some(child)),
            pid,
            kubeconfig_path,
            kubeconfig,
            server_url,
            etcd_url,
            admin_url,
            data_dir,
            log_path,
            startup,
            _temp_dir: temp_dir,
        })
    }

    /// The control plane shared by every test of this test binary (started on first use,
    /// with [`ControlPlaneOptions::default`]: watch cache on, temporary data). It lives
    /// until the test binary exits. Its clients come from [`ControlPlane::client`], which
    /// builds a fresh one in the caller's runtime, so each `#[tokio::test]` may use it.
    ///
    /// If it fails to start, every caller gets [`Error::SharedUnavailable`] with the
    /// first failure's reason (no retry per test).
    pub async fn shared() -> Result<&'static ControlPlane, Error> {
        static SHARED: tokio::sync::OnceCell<Result<ControlPlane, String>> =
            tokio::sync::OnceCell::const_new();
        let result = SHARED
            .get_or_init(|| async {
                ControlPlane::start(ControlPlaneOptions::default())
                    .await
                    .map_err(|e| chain(&e))
            })
            .await;
        result.as_ref().map_err(|reason| Error::SharedUnavailable {
            reason: reason.clone(),
        })
    }

    /// A new client with the admin identity (group `system:masters`), created in the
    /// caller's tokio runtime.
    pub async fn client(&self) -> Result<kube::Client, Error> {
        let config = self.config().await?;
        kube::Client::try_from(config).map_err(|source| Error::Client {
            server: self.server_url.clone(),
            source,
        })
    }

    /// The admin [`kube::Config`] (from the written kubeconfig).
    pub async fn config(&self) -> Result<kube::Config, Error> {
        kube::Config::from_custom_kubeconfig(self.kubeconfig.clone(), &KubeConfigOptions::default())
            .await
            .map_err(|source| Error::Kubeconfig {
                path: self.kubeconfig_path.clone(),
                source,
            })
    }

    /// A new client authenticating with a bearer `token` (for example a ServiceAccount
    /// token from the TokenRequest API) against this API server, trusting its CA.
    pub async fn client_with_token(&self, token: &str) -> Result<kube::Client, Error> {
        let mut config = self.config().await?;
        config.auth_info = serde_json::from_value::<AuthInfo>(
            serde_json::json!({ "token": token }),
        )
        .map_err(|e| Error::Invalid {
            what: "a bearer token".into(),
            source: Box::new(e),
        })?;
        kube::Client::try_from(config).map_err(|source| Error::Client {
            server: self.server_url.clone(),
            source,
        })
    }

    /// A new client authenticating as ServiceAccount `namespace/name`, with a one-hour
    /// token requested through the TokenRequest API (`serviceaccounts/token`) by `admin`.
    pub async fn service_account_client(
        &self,
        admin: &kube::Client,
        namespace: &str,
        name: &str,
    ) -> Result<kube::Client, Error> {
        let token = self.service_account_token(admin, namespace, name).await?;
        self.client_with_token(&token).await
    }

    /// A one-hour token for ServiceAccount `namespace/name` from the TokenRequest API
    /// (`serviceaccounts/token`), requested by `admin`: what the kubelet mounts in a pod.
    pub async fn service_account_token(
        &self,
        admin: &kube::Client,
        namespace: &str,
        name: &str,
    ) -> Result<String, Error> {
        use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
        use k8s_openapi::api::core::v1::ServiceAccount;
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                expiration_seconds: Some(3600),
                ..Default::default()
            }),
            ..Default::default()
        };
        let issued = Api::<ServiceAccount>::namespaced(admin.clone(), namespace)
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .map_err(|source| Error::Api {
                action: format!("requesting a token for ServiceAccount {namespace}/{name}"),
                source,
            })?;
        let token = issued.status.and_then(|s| s.token).unwrap_or_default();
        if token.is_empty() {
            return Err(Error::Invalid {
                what: format!("the TokenRequest answer for ServiceAccount {namespace}/{name}"),
                source: "it carries no token".into(),
            });
        }
        Ok(token)
    }

    /// Compacts etcd at its current revision (physically), so every older
    /// resourceVersion is gone; answers that revision. With the watch cache off, a watch
    /// from an older resourceVersion then gets 410 Gone.
    pub async fn compact_etcd(&self) -> Result<i64, Error> {
        let url = self.admin_url.clone();
        let body = run_blocking(move || admin_post(&url, "/compact")).await?;
        let answer: serde_json::Value = serde_json::from_str(&body).map_err(|e| Error::Admin {
            url: format!("{}/compact", self.admin_url),
            reason: format!("answer {body:?} is not JSON: {e}"),
            source: None,
        })?;
        answer["revision"].as_i64().ok_or_else(|| Error::Admin {
            url: format!("{}/compact", self.admin_url),
            reason: format!("answer {body:?} has no revision"),
            source: None,
        })
    }

    /// Stops the control plane cleanly (etcd data flushed, temporary data removed) and
    /// waits for it to exit; kills it if it has not exited after 30 s.
    pub async fn stop(self) -> Result<(), Error> {
        run_blocking(move || self.stop_blocking()).await
    }

    /// [`ControlPlane::stop`] without async.
    pub fn stop_blocking(self) -> Result<(), Error> {
        let mut guard = self.child.lock().unwrap_or_else(|p| p.into_inner());
        let Some(mut child) = guard.take() else {
            return Ok(());
        };
        drop(guard);
        let asked = admin_post(&self.admin_url, "/shutdown");
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if asked.is_ok() && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
            }
        };
        match status {
            Some(status) if status.success() => Ok(()),
            other => Err(Error::StopFailed {
                pid: self.pid,
                status: match (other, asked) {
                    (Some(status), _) => describe_exit(status),
                    (None, Ok(_)) => "still running 30s after a shutdown request; killed".into(),
                    (None, Err(err)) => {
                        format!("shutdown request failed ({}); killed", chain(&err))
                    }
                },
                log: self.log_path.clone(),
                log_tail: tail_of_file(&self.log_path, LOG_TAIL_LINES),
            }),
        }
    }

    /// The admin kubeconfig the control plane wrote (CA and client certificate embedded).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig_path
    }

    /// The API server URL, `https://127.0.0.1:PORT`.
    pub fn server_url(&self) -> &str {
        &self.server_url
    }

    /// The embedded etcd's client URL, `http://127.0.0.1:PORT`.
    pub fn etcd_url(&self) -> &str {
        &self.etcd_url
    }

    /// The admin endpoint, `http://127.0.0.1:PORT` (`POST /compact`, `POST /shutdown`).
    pub fn admin_url(&self) -> &str {
        &self.admin_url
    }

    /// The data directory (etcd data, certificates, kubeconfig, log).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The control plane's stderr log.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The last `lines` lines of the control plane's log, for test failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        tail_of_file(&self.log_path, lines)
    }

    /// The control plane's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// How long it took from spawning the process to its ready line.
    pub fn startup_time(&self) -> Duration {
        self.startup
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let mut guard = self.child.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(mut child) = guard.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Moves the log out of a temporary data dir that is about to be removed, so an error
/// can point at it.
fn keep_log(log: &Path, temp_dir: Option<tempfile::TempDir>) -> PathBuf {
    let Some(temp_dir) = temp_dir else {
        return log.to_path_buf();
    };
    let kept = std::env::temp_dir().join(format!(
        "rekon-controlplane-failed-{}.log",
        temp_dir
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    if fs::copy(log, &kept).is_ok() {
        kept
    } else {
        log.to_path_buf()
    }
}

async fn run_blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(value) => value,
        Err(join) => std::panic::resume_unwind(join.into_panic()),
    }
}

/// POSTs to the admin endpoint with a minimal HTTP/1.1 client; answers the body of a
/// 200 response.
fn admin_post(base: &str, path: &str) -> Result<String, Error> {
    let url = format!("{base}{path}");
    let fail = |reason: String, source: Option<io::Error>| Error::Admin {
        url: url.clone(),
        reason,
        source,
    };
    let host = base
        .strip_prefix("http://")
        .ok_or_else(|| fail("only http:// is supported".into(), None))?;
    let addr = host
        .to_socket_addrs()
        .map_err(|e| fail("resolving the address".into(), Some(e)))?
        .next()
        .ok_or_else(|| fail("the address resolves to nothing".into(), None))?;
    let exchange = || -> io::Result<String> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        write!(
            stream,
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        Ok(response)
    };
    let response = exchange().map_err(|e| fail("the request failed".into(), Some(e)))?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status_line = head.lines().next().unwrap_or_default();
    if status_line.split_whitespace().nth(1) != Some("200") {
        return Err(fail(
            format!("answered {status_line:?}: {}", body.trim()),
            None,
        ));
    }
    Ok(body.trim().to_string())
}
