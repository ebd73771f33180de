//! The local control plane (`tests/controlplane` in a rekon checkout: embedded etcd,
//! kube-apiserver on loopback with TLS and RBAC, the garbage-collector and namespace
//! controllers, in one Go program): where its binary is cached, building it when its
//! sources changed, starting it and reading its ready line.
//!
//! The integration tests (crate `rekon-tests`) and `rekon dev` share this code: both
//! cache the binary in `$REKON_CACHE/bin`, so a binary built by one serves the other.

use super::Error;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// The line the control plane prints on stdout once it is ready, then
/// `kubeconfig=PATH server=URL etcd=URL admin=URL data-dir=DIR pid=PID`.
pub const READY_PREFIX: &str = "REKON_CONTROLPLANE_READY";

/// How many lines of a log the errors quote.
pub const LOG_TAIL_LINES: usize = 40;

/// The name of the binary in `$REKON_CACHE/bin`.
const BINARY_NAME: &str = "rekon-controlplane";

/// `$REKON_CACHE`, or `$HOME/.cache/rekon`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("REKON_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map_or_else(std::env::temp_dir, PathBuf::from);
    home.join(".cache").join("rekon")
}

/// Where the cached binary lives: `$REKON_CACHE/bin/rekon-controlplane`.
pub fn cached_binary() -> PathBuf {
    cache_dir().join("bin").join(BINARY_NAME)
}

/// The Go sources of the rekon checkout this binary was built from
/// (`tests/controlplane`), when that checkout is still there.
pub fn checkout_sources() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()?
        .join("tests")
        .join("controlplane");
    dir.join("build.sh").is_file().then_some(dir)
}

/// Whether a build shows its progress on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// The build's output goes to its log file only (the tests).
    Quiet,
    /// Also show which packages it compiles, on stderr (`rekon dev`).
    Show,
}

/// The binary for `rekon dev`: `explicit` (`--control-plane`) when given; else built from
/// the checkout's sources when they are there (only when they changed since the cached
/// build); else the cached binary.
///
/// # Errors
/// [`Error::NoControlPlane`] when none of these exists, build errors as
/// [`build_if_stale`].
pub fn locate(explicit: Option<&Path>, progress: Progress) -> Result<PathBuf, Error> {
    if let Some(path) = explicit {
        if !path.is_file() {
            return Err(Error::ControlPlaneMissing {
                path: path.to_owned(),
            });
        }
        return Ok(path.to_owned());
    }
    let bin_dir = cache_dir().join("bin");
    if let Some(src) = checkout_sources() {
        return build_if_stale(&src, &bin_dir, find_go, progress);
    }
    let cached = cached_binary();
    if cached.is_file() {
        return Ok(cached);
    }
    Err(Error::NoControlPlane { cached })
}

/// The sha256 of the files that determine the binary: `*.go`, `go.mod`, `go.sum` and
/// `build.sh`, with their names.
///
/// # Errors
/// The directory or one of its files cannot be read.
pub fn source_hash(dir: &Path) -> Result<String, Error> {
    let entries = fs::read_dir(dir).map_err(Error::io(format!("listing {}", dir.display())))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(Error::io(format!("listing {}", dir.display())))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".go") || matches!(name.as_str(), "go.mod" | "go.sum" | "build.sh") {
            files.push(name);
        }
    }
    files.sort();
    let mut hasher = Sha256::new();
    for name in files {
        let path = dir.join(&name);
        let data = fs::read(&path).map_err(Error::io(format!("reading {}", path.display())))?;
        hasher.update((name.len() as u64).to_le_bytes());
        hasher.update(name.as_bytes());
        hasher.update((data.len() as u64).to_le_bytes());
        hasher.update(&data);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Builds `src` into `bin_dir/rekon-controlplane` unless the hash file there says the
/// binary was built from the same sources. `locate_go` is only asked when a build is due.
/// Concurrent processes serialize on a lock file; the binary is built under a temporary
/// name and renamed into place. The build's output goes to
/// `bin_dir/rekon-controlplane.build.log` (and, with [`Progress::Show`], its progress to
/// stderr).
///
/// # Errors
/// [`Error::GoMissing`], [`Error::BuildFailed`], or an I/O error naming the path.
pub fn build_if_stale(
    src: &Path,
    bin_dir: &Path,
    locate_go: impl FnOnce() -> Option<PathBuf>,
    progress: Progress,
) -> Result<PathBuf, Error> {
    let binary = bin_dir.join(BINARY_NAME);
    let hash_file = bin_dir.join(format!("{BINARY_NAME}.sha256"));
    let hash = source_hash(src)?;
    let up_to_date =
        || binary.is_file() && fs::read_to_string(&hash_file).is_ok_and(|h| h.trim() == hash);
    if up_to_date() {
        return Ok(binary);
    }

    fs::create_dir_all(bin_dir).map_err(Error::io(format!("creating {}", bin_dir.display())))?;
    let lock_path = bin_dir.join(format!("{BINARY_NAME}.lock"));
    let lock =
        File::create(&lock_path).map_err(Error::io(format!("creating {}", lock_path.display())))?;
    if progress == Progress::Show && lock.try_lock().is_err() {
        eprintln!(
            "rekon: another process is building the control plane; waiting for it ({})",
            lock_path.display()
        );
    }
    lock.lock()
        .map_err(Error::io(format!("locking {}", lock_path.display())))?;
    // Another process may have built it while we waited for the lock.
    if up_to_date() {
        return Ok(binary);
    }

    let go = locate_go().ok_or_else(|| Error::GoMissing {
        source_dir: src.to_path_buf(),
    })?;
    let tmp = bin_dir.join(format!("{BINARY_NAME}.building.{}", std::process::id()));
    let build_log = bin_dir.join(format!("{BINARY_NAME}.build.log"));
    eprintln!(
        "rekon: building the control plane from {} (sources changed or first use; a cold build takes minutes), log: {}",
        src.display(),
        build_log.display()
    );
    let began = Instant::now();
    let mut command = Command::new("bash");
    command
        .arg(src.join("build.sh"))
        .arg(&tmp)
        .env("GO", &go)
        .stdin(Stdio::null());
    let status = match progress {
        Progress::Quiet => run_logged(command, &build_log),
        Progress::Show => run_showing_packages(command, &build_log),
    }?;
    if !status.success() {
        let _ = fs::remove_file(&tmp);
        if status.code() == Some(3) {
            return Err(Error::GoMissing {
                source_dir: src.to_path_buf(),
            });
        }
        return Err(Error::BuildFailed {
            source_dir: src.to_path_buf(),
            status: describe_exit(status),
            log_tail: tail_of_file(&build_log, LOG_TAIL_LINES),
        });
    }
    fs::rename(&tmp, &binary).map_err(Error::io(format!(
        "moving the built control plane {} to {}",
        tmp.display(),
        binary.display()
    )))?;
    let tmp_hash = bin_dir.join(format!("{BINARY_NAME}.sha256.{}", std::process::id()));
    fs::write(&tmp_hash, format!("{hash}\n"))
        .map_err(Error::io(format!("writing {}", tmp_hash.display())))?;
    fs::rename(&tmp_hash, &hash_file)
        .map_err(Error::io(format!("writing {}", hash_file.display())))?;
    eprintln!("rekon: built the control plane in {:.0?}", began.elapsed());
    Ok(binary)
}

/// Runs `command` with its stdout and stderr in `log`.
fn run_logged(mut command: Command, log: &Path) -> Result<ExitStatus, Error> {
    let out = File::create(log).map_err(Error::io(format!("creating {}", log.display())))?;
    let err = out
        .try_clone()
        .map_err(Error::io(format!("opening {}", log.display())))?;
    command
        .stdout(out)
        .stderr(err)
        .status()
        .map_err(|source| Error::Spawn {
            program: "bash".into(),
            source,
        })
}

/// Runs `command` with `go build -v` (through `GOFLAGS`), its output copied to `log`, and
/// a progress line on stderr: how many packages were compiled so far and the last one
/// (rewritten in place on a terminal, every 100 packages otherwise).
fn run_showing_packages(mut command: Command, log: &Path) -> Result<ExitStatus, Error> {
    let file = File::create(log).map_err(Error::io(format!("creating {}", log.display())))?;
    let flags = std::env::var("GOFLAGS").unwrap_or_default();
    let mut child = command
        .env("GOFLAGS", format!("{flags} -v").trim())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| Error::Spawn {
            program: "bash".into(),
            source,
        })?;
    let log = Arc::new(Mutex::new(file));
    let packages = Arc::new(Mutex::new(0usize));
    let terminal = std::io::stderr().is_terminal();
    let copy = |pipe: Box<dyn std::io::Read + Send>| {
        let log = log.clone();
        let packages = packages.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(log.lock().unwrap_or_else(|p| p.into_inner()), "{line}");
                // `go build -v` names each package it compiles, one a line, no spaces.
                if line.contains(' ') || line.is_empty() {
                    continue;
                }
                let mut n = packages.lock().unwrap_or_else(|p| p.into_inner());
                *n += 1;
                if terminal {
                    eprint!("\r\x1b[K  control plane: {n} packages compiled ({line})");
                } else if n.is_multiple_of(100) {
                    eprintln!("  control plane: {n} packages compiled ({line})");
                }
            }
        })
    };
    let stdout = child.stdout.take().map(|p| copy(Box::new(p)));
    let stderr = child.stderr.take().map(|p| copy(Box::new(p)));
    let status = child.wait().map_err(|source| Error::Spawn {
        program: "bash".into(),
        source,
    });
    for reader in [stdout, stderr].into_iter().flatten() {
        let _ = reader.join();
    }
    if terminal {
        eprintln!();
    }
    status
}

/// `$GO`, else `go` on `PATH`, else `/usr/local/go/bin/go`: the first that exists.
pub fn find_go() -> Option<PathBuf> {
    if let Some(go) = std::env::var_os("GO").filter(|g| !g.is_empty()) {
        return Some(PathBuf::from(go));
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("go"));
    on_path
        .chain(std::iter::once(PathBuf::from("/usr/local/go/bin/go")))
        .find(|p| p.is_file())
}

/// What the control plane's ready line says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    /// The admin kubeconfig it wrote.
    pub kubeconfig: PathBuf,
    /// The API server, `https://127.0.0.1:PORT`.
    pub server: String,
    /// The embedded etcd's client URL.
    pub etcd: String,
    /// The admin endpoint (`POST /compact`, `POST /shutdown`).
    pub admin: String,
}

impl Ready {
    /// Parses the line after [`READY_PREFIX`].
    ///
    /// # Errors
    /// [`Error::BadReadyLine`] naming the first missing key.
    pub fn parse(line: &str) -> Result<Ready, Error> {
        let fields: HashMap<&str, &str> = line
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .collect();
        let field = |key: &'static str| {
            fields
                .get(key)
                .map(|v| (*v).to_owned())
                .ok_or_else(|| Error::BadReadyLine {
                    missing: key,
                    line: line.to_owned(),
                })
        };
        Ok(Ready {
            kubeconfig: PathBuf::from(field("kubeconfig")?),
            server: field("server")?,
            etcd: field("etcd")?,
            admin: field("admin")?,
        })
    }
}

/// A control plane started by [`start`]; stopped (SIGTERM, then SIGKILL after 30 s) by
/// [`Running::stop`] or when dropped.
#[derive(Debug)]
pub struct Running {
    child: Option<Child>,
    /// What its ready line said.
    pub ready: Ready,
    /// Its stderr log.
    pub log: PathBuf,
}

/// Starts `binary` on `data_dir` (its etcd data, certificates, kubeconfig and log there;
/// removed when it stops if `remove_data_dir`) and waits up to `timeout` for its ready
/// line. Call it from a thread that lives as long as the control plane should: the Go
/// program asks for SIGTERM when the thread that spawned it exits.
///
/// # Errors
/// [`Error::Spawn`], [`Error::ControlPlaneExited`], [`Error::ControlPlaneTimeout`],
/// [`Error::BadReadyLine`], or an I/O error naming the path.
pub fn start(
    binary: &Path,
    data_dir: &Path,
    remove_data_dir: bool,
    port: Option<u16>,
    timeout: Duration,
) -> Result<Running, Error> {
    fs::create_dir_all(data_dir).map_err(Error::io(format!("creating {}", data_dir.display())))?;
    // The log sits beside the data dir, so it outlives a removed one.
    let log_path = data_dir.with_extension("log");
    let log =
        File::create(&log_path).map_err(Error::io(format!("creating {}", log_path.display())))?;
    let mut command = Command::new(binary);
    command
        .arg(format!("--data-dir={}", data_dir.display()))
        .arg(format!("--port={}", port.unwrap_or(0)))
        .arg(format!(
            "--ready-timeout={}s",
            timeout.as_secs().saturating_sub(5).max(1)
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log);
    if remove_data_dir {
        command.arg("--remove-data-dir");
    }
    // Its own process group: a Ctrl-C at the terminal reaches the host, which stops first
    // and then stops this (a control plane gone first would fail the host's last writes).
    #[cfg(unix)]
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut child = command.spawn().map_err(|source| Error::Spawn {
        program: binary.to_owned(),
        source,
    })?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = mpsc::channel();
    // Reads on to the end, so the control plane never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if !sent && let Some(rest) = line.strip_prefix(READY_PREFIX) {
                sent = true;
                let _ = tx.send(rest.to_owned());
            }
        }
    });
    let mut running = Running {
        child: Some(child),
        ready: Ready {
            kubeconfig: PathBuf::new(),
            server: String::new(),
            etcd: String::new(),
            admin: String::new(),
        },
        log: log_path,
    };
    match rx.recv_timeout(timeout) {
        Ok(line) => {
            running.ready = Ready::parse(&line)?;
            Ok(running)
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            let child = running.child.as_mut().expect("not stopped yet");
            let status = child
                .wait()
                .map_or_else(|e| format!("wait failed: {e}"), describe_exit);
            Err(Error::ControlPlaneExited {
                status,
                log_tail: tail_of_file(&running.log, LOG_TAIL_LINES),
                log: running.log.clone(),
            })
        }
        Err(mpsc::RecvTimeoutError::Timeout) => Err(Error::ControlPlaneTimeout {
            timeout,
            log_tail: tail_of_file(&running.log, LOG_TAIL_LINES),
            log: running.log.clone(),
        }),
    }
}

impl Running {
    /// The control plane's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Asks it to stop (SIGTERM: etcd flushed, a temporary data dir removed) and waits;
    /// kills it if it has not exited after 30 s. Answers how it exited.
    pub fn stop(&mut self) -> String {
        let Some(mut child) = self.child.take() else {
            return "already stopped".into();
        };
        #[cfg(unix)]
        {
            use rustix::process::{Pid, Signal, kill_process};
            if let Some(pid) = Pid::from_raw(child.id() as i32) {
                let _ = kill_process(pid, Signal::TERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return describe_exit(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return "killed: still running 30 s after SIGTERM".into();
                }
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How a process exited, in words.
pub fn describe_exit(status: ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let (None, Some(signal)) = (status.code(), status.signal()) {
            return format!("killed by signal {signal}");
        }
    }
    match status.code() {
        Some(code) => format!("exit status {code}"),
        None => status.to_string(),
    }
}

/// The last `lines` lines of a file, or why it could not be read.
pub fn tail_of_file(path: &Path, lines: usize) -> String {
    match fs::read(path) {
        Ok(data) => {
            let text = String::from_utf8_lossy(&data);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(err) => format!("(could not read {}: {err})", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A copy of the Go sources in a temporary directory, to break at will.
    fn copy_of_sources() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let src = checkout_sources().expect("tests run in a checkout");
        for entry in fs::read_dir(src).expect("the Go sources are listable") {
            let entry = entry.expect("a directory entry");
            if entry.file_type().expect("a file type").is_file() {
                fs::copy(entry.path(), dir.path().join(entry.file_name()))
                    .expect("copying a source");
            }
        }
        dir
    }

    #[test]
    fn a_missing_go_toolchain_is_named_in_the_error() {
        let src = copy_of_sources();
        let bin = tempfile::tempdir().expect("a temporary directory");
        let err = build_if_stale(src.path(), bin.path(), || None, Progress::Quiet)
            .expect_err("no Go, no build");
        assert!(matches!(err, Error::GoMissing { .. }), "{err:?}");
        assert!(err.to_string().contains("no Go toolchain found"), "{err}");
    }

    #[test]
    fn a_go_path_that_does_not_run_is_reported_as_go_missing() {
        let src = copy_of_sources();
        let bin = tempfile::tempdir().expect("a temporary directory");
        let err = build_if_stale(
            src.path(),
            bin.path(),
            || Some(PathBuf::from("/nonexistent/go")),
            Progress::Quiet,
        )
        .expect_err("a Go that does not exist cannot build");
        assert!(matches!(err, Error::GoMissing { .. }), "{err:?}");
    }

    #[test]
    fn a_failing_build_quotes_the_compiler_output_with_or_without_progress() {
        for progress in [Progress::Quiet, Progress::Show] {
            let src = copy_of_sources();
            fs::write(
                src.path().join("broken.go"),
                // An error in the import clause fails while go loads packages, before it
                // compiles any dependency (a body-level error would first build all of
                // Kubernetes on a cold cache).
                "package main\n\nimport (\n\tthis is not Go\n)\n",
            )
            .expect("writing a broken source");
            let bin = tempfile::tempdir().expect("a temporary directory");
            let err = build_if_stale(src.path(), bin.path(), find_go, progress)
                .expect_err("a syntax error fails the build");
            let Error::BuildFailed {
                log_tail, status, ..
            } = &err
            else {
                panic!("expected BuildFailed, got {err:?}")
            };
            assert_eq!(status, "exit status 4");
            assert!(
                log_tail.contains("broken.go"),
                "the compiler's complaint is quoted ({progress:?}): {log_tail}"
            );
            assert!(
                !bin.path().join(BINARY_NAME).exists(),
                "no binary is left behind"
            );
        }
    }

    #[test]
    fn the_source_hash_changes_with_any_source() {
        let src = copy_of_sources();
        let before = source_hash(src.path()).expect("hashing");
        assert_eq!(
            before,
            source_hash(src.path()).expect("hashing"),
            "the hash is stable"
        );
        fs::write(src.path().join("extra.go"), "package main\n").expect("adding a source");
        let after = source_hash(src.path()).expect("hashing");
        assert_ne!(before, after);
        fs::write(src.path().join("notes.txt"), "not a source").expect("adding a non-source");
        assert_eq!(
            after,
            source_hash(src.path()).expect("hashing"),
            "other files do not count"
        );
    }

    #[test]
    fn a_ready_line_names_what_it_lacks() {
        let ready = Ready::parse(
            " kubeconfig=/d/kubeconfig server=https://127.0.0.1:1 etcd=http://127.0.0.1:2 admin=http://127.0.0.1:3 data-dir=/d pid=9",
        )
        .expect("a complete line");
        assert_eq!(ready.kubeconfig, PathBuf::from("/d/kubeconfig"));
        assert_eq!(ready.server, "https://127.0.0.1:1");
        let err = Ready::parse(" kubeconfig=/k etcd=http://e admin=http://a").unwrap_err();
        assert!(
            err.to_string().contains("without server"),
            "names the missing key: {err}"
        );
    }

    #[test]
    fn an_explicit_control_plane_that_does_not_exist_is_refused_naming_it() {
        let err = locate(Some(Path::new("/nonexistent/cp")), Progress::Quiet).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/cp"), "{err}");
    }
}
