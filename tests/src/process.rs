//! `rekon run` as a separate process, for tests and the demo: started with a free port
//! for its HTTP endpoints and its log in a file, asked over HTTP, signalled, measured.

use crate::{binary, plugins};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

/// A running `rekon run`; killed (SIGKILL) when dropped unless it exited.
pub struct RekonProcess {
    child: Child,
    port: u16,
    log: PathBuf,
}

/// What `rekon run` is started with.
#[derive(Debug, Clone)]
pub struct RunOptions<'a> {
    /// The kubeconfig.
    pub kubeconfig: &'a Path,
    /// The plugin directory.
    pub plugins: &'a Path,
    /// `--identity`, also used in the log file's name.
    pub identity: &'a str,
    /// More arguments.
    pub args: Vec<String>,
    /// `REKON_LOG`.
    pub log_filter: &'a str,
    /// Whether the log goes to this process's stderr instead of a file in the temp dir.
    pub inherit_output: bool,
}

impl<'a> RunOptions<'a> {
    /// `rekon run --plugins DIR --kubeconfig KC --identity ID`, logs to a file.
    pub fn new(kubeconfig: &'a Path, plugins: &'a Path, identity: &'a str) -> Self {
        Self {
            kubeconfig,
            plugins,
            identity,
            args: Vec::new(),
            log_filter: "info,rekon_host=debug",
            inherit_output: false,
        }
    }

    /// Adds arguments.
    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }
}

impl RekonProcess {
    /// Starts `rekon run` with `--http-addr` on a free loopback port and the tests'
    /// artifact cache.
    ///
    /// # Panics
    /// If the binary cannot be built or started.
    pub fn start(options: RunOptions<'_>) -> Self {
        let port = free_port();
        let log = std::env::temp_dir().join(format!("rekon-{}-{port}.log", options.identity));
        let mut cmd = Command::new(binary::rekon());
        cmd.arg("run")
            .arg(format!("--plugins={}", options.plugins.display()))
            .arg(format!("--kubeconfig={}", options.kubeconfig.display()))
            .arg(format!(
                "--artifact-dir={}",
                plugins::target_dir().join("rekon-test-artifacts").display()
            ))
            .arg(format!("--http-addr=127.0.0.1:{port}"))
            .arg(format!("--identity={}", options.identity))
            .args(&options.args)
            .env("REKON_LOG", options.log_filter)
            .stdout(Stdio::null());
        if options.inherit_output {
            cmd.stderr(Stdio::inherit());
        } else {
            cmd.stderr(std::fs::File::create(&log).expect("a log file in the temp dir"));
        }
        let child = cmd.spawn().expect("rekon runs");
        Self { child, port, log }
    }

    /// The port of `/metrics`, `/healthz`, `/readyz`.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log so far (empty when the output is inherited).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET `path` on the host's endpoints: (status, body); `None` while nothing answers.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.port, path)
    }

    /// The body of `/metrics`.
    ///
    /// # Errors
    /// [`MetricError::Unreachable`] while nothing answers, [`MetricError::Status`] for an
    /// answer other than 200.
    pub fn metrics(&self) -> Result<String, MetricError> {
        let (status, body) = self
            .get("/metrics")
            .ok_or(MetricError::Unreachable { port: self.port })?;
        if status != 200 {
            return Err(MetricError::Status { status });
        }
        Ok(body)
    }

    /// The value of one sample on `/metrics`, e.g.
    /// `reconcile_total{plugin="webapp",result="success"}`: present, or an error saying
    /// why not (absent is not zero).
    ///
    /// # Errors
    /// As [`metrics`](Self::metrics), and [`MetricError::Absent`] when the body has no
    /// such sample.
    pub fn metric(&self, sample: &str) -> Result<f64, MetricError> {
        let body = self.metrics()?;
        sample_value(&body, sample)?.ok_or_else(|| MetricError::Absent {
            sample: sample.to_owned(),
        })
    }

    /// Resident memory in bytes (Linux), `None` once the process is gone.
    pub fn rss_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let kb: u64 = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        Some(kb * 1024)
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
    }

    /// Sends SIGKILL and reaps the process.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit (blocking).
    ///
    /// # Panics
    /// If waiting fails.
    pub fn wait(&mut self) -> ExitStatus {
        self.child.wait().expect("waiting for rekon")
    }

    /// The exit status if it exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for RekonProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Why a sample could not be read from a host's `/metrics`.
#[derive(Debug, thiserror::Error)]
pub enum MetricError {
    /// Nothing answered on the port.
    #[error("nothing answers on 127.0.0.1:{port}")]
    Unreachable {
        /// The port.
        port: u16,
    },
    /// `/metrics` answered with another status than 200.
    #[error("/metrics answered {status}")]
    Status {
        /// The HTTP status.
        status: u16,
    },
    /// The body has no sample of that name and labels.
    #[error("{sample} is not among the samples on /metrics")]
    Absent {
        /// The sample asked for.
        sample: String,
    },
    /// The sample's value is not a number.
    #[error("{sample} has the value {value:?}, not a number")]
    NotANumber {
        /// The sample.
        sample: String,
        /// Its text.
        value: String,
    },
}

/// The value of `sample` (name and labels exactly as exposed) in a Prometheus text body:
/// `Ok(None)` when absent.
///
/// # Errors
/// [`MetricError::NotANumber`] when the sample is there but its value does not parse.
pub fn sample_value(body: &str, sample: &str) -> Result<Option<f64>, MetricError> {
    let Some(line) = body
        .lines()
        .find(|l| l.starts_with(sample) && l[sample.len()..].starts_with(' '))
    else {
        return Ok(None);
    };
    let value = line.rsplit(' ').next().unwrap_or_default();
    value
        .parse()
        .map(Some)
        .map_err(|_| MetricError::NotANumber {
            sample: sample.to_owned(),
            value: value.to_owned(),
        })
}

/// A free TCP port on loopback (free when asked; a race with other binders is possible
/// but unlikely).
///
/// # Panics
/// If no port can be bound.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a loopback port")
        .port()
}

/// A minimal HTTP/1.1 GET on loopback: (status, body); `None` when nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str = "# TYPE reconcile_total counter\n\
        reconcile_total{plugin=\"web\",result=\"success\"} 0\n\
        reconcile_total{plugin=\"web\",result=\"success_later\"} 4\n\
        rekon_cache_bytes{kind=\"v1 ConfigMap\"} 1.5e3\n";

    #[test]
    fn a_sample_at_zero_is_present_and_a_missing_one_is_absent() {
        assert_eq!(
            sample_value(BODY, r#"reconcile_total{plugin="web",result="success"}"#).unwrap(),
            Some(0.0)
        );
        assert_eq!(
            sample_value(BODY, r#"reconcile_total{plugin="pool",result="success"}"#).unwrap(),
            None
        );
        assert_eq!(
            sample_value(BODY, r#"rekon_cache_bytes{kind="v1 ConfigMap"}"#).unwrap(),
            Some(1500.0)
        );
    }

    #[test]
    fn a_sample_is_not_matched_by_a_prefix_of_its_labels() {
        assert_eq!(
            sample_value(BODY, r#"reconcile_total{plugin="web",result="success_"#).unwrap(),
            None
        );
    }

    #[test]
    fn a_host_that_does_not_answer_is_an_error_not_zero() {
        assert_eq!(http_get(free_port(), "/metrics"), None);
    }
}
