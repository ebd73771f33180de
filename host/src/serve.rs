//! The HTTP endpoints a cluster scrapes and probes: `/metrics`, `/healthz`, `/readyz`.
//!
//! ```no_run
//! use rekon_host::serve::{self, Endpoints, Readiness};
//! # async fn run(host: rekon_host::controller::Host) -> std::io::Result<()> {
//! let readiness = Readiness::default();
//! let metrics = rekon_host::metrics::Metrics::for_host(&host);
//! let endpoints = Endpoints::new(metrics, readiness.clone());
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:8080").await?;
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let server = tokio::spawn(serve::serve(listener, endpoints, async {
//!     let _ = stopped.await;
//! }));
//! // … start the plugins, then (or poll `host.all_synced()`):
//! host.synced().await;
//! readiness.set(true);
//! // … on SIGTERM:
//! readiness.set(false);
//! let _ = stop.send(());
//! let _ = server.await;
//! # Ok(()) }
//! ```
//!
//! | path | answer |
//! | --- | --- |
//! | `/metrics` | 200, the [`Metrics`] as OpenMetrics text when the `Accept` header asks for it (Prometheus does), else Prometheus text 0.0.4 |
//! | `/healthz` | 200 `ok` while the process serves |
//! | `/readyz` | 503 until [`Readiness::set`]`(true)`, then 200 `ok` |
//!
//! Other paths answer 404, other methods than `GET` and `HEAD` 405.

use crate::metrics::{Format, Metrics};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;

/// How long a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for requests in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long to pause after a failed `accept` (e.g. out of file descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Whether the process is ready for traffic: what `/readyz` answers. Cheap to clone; clones
/// share one flag. Starts not ready.
///
/// # Guarantees
/// A [`set`](Self::set) is seen by every request that starts after it.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Marks the process ready (once plugins are loaded and their stores synced, see
    /// [`Host::all_synced`](crate::controller::Host::all_synced)) or not ready (say, on
    /// shutdown).
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    /// Whether the process is ready.
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// What the endpoints answer from. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// Served on `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Answered on `/readyz`.
    pub readiness: Readiness,
}

impl Endpoints {
    /// Endpoints serving `metrics` and answering `/readyz` from `readiness`.
    pub fn new(metrics: Arc<Metrics>, readiness: Readiness) -> Self {
        Self { metrics, readiness }
    }

    /// The answer to one request.
    fn respond<B>(&self, request: &Request<B>) -> Response<Full<Bytes>> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        match request.uri().path() {
            "/metrics" => self.metrics(request),
            "/healthz" | "/livez" => text(StatusCode::OK, "ok\n"),
            "/readyz" if self.readiness.is_ready() => text(StatusCode::OK, "ok\n"),
            "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }

    fn metrics<B>(&self, request: &Request<B>) -> Response<Full<Bytes>> {
        let format = negotiate(
            request
                .headers()
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok()),
        );
        match self.metrics.encode(format) {
            Ok(body) => {
                let mut response = Response::new(Full::new(Bytes::from(body)));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(format.content_type()),
                );
                response
            }
            Err(e) => {
                tracing::error!(error = %e, "encoding the metrics failed");
                text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "encoding the metrics failed\n",
                )
            }
        }
    }
}

/// OpenMetrics when the client's `Accept` header names it, else the Prometheus text format.
fn negotiate(accept: Option<&str>) -> Format {
    match accept {
        Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
        _ => Format::Prometheus,
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Serves the endpoints on `listener` (HTTP/1.1) until `shutdown` resolves.
///
/// # Guarantees
/// - Once `shutdown` resolves no new connection is accepted, the listener is closed, idle
///   keep-alive connections are closed, and requests in flight get up to 5 s to finish;
///   then this returns.
/// - A failed `accept` (say, out of file descriptors) is logged and retried after a short
///   pause; it never ends the server. A client has 10 s to send its request headers.
pub async fn serve(
    listener: TcpListener,
    endpoints: Endpoints,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    if let Ok(address) = listener.local_addr() {
        tracing::debug!(%address, "serving /metrics, /healthz and /readyz");
    }
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let endpoints = endpoints.clone();
        let service = service_fn(move |request: Request<Incoming>| {
            let response = endpoints.respond(&request);
            async move { Ok::<_, Infallible>(response) }
        });
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "metrics connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            grace = ?SHUTDOWN_GRACE,
            "metrics connections still open after the grace period"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::Stats;
    use crate::controller::queue::Outcome;
    use crate::metrics::PluginState;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::sync::oneshot;
    use tokio::task::JoinHandle;

    /// A server on a free loopback port, and what stops it.
    struct Server {
        address: SocketAddr,
        endpoints: Endpoints,
        stop: oneshot::Sender<()>,
        task: JoinHandle<()>,
    }

    async fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let address = listener.local_addr().expect("has an address");
        let endpoints = Endpoints::new(Arc::new(Metrics::new()), Readiness::default());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, endpoints.clone(), async {
            let _ = stopped.await;
        }));
        Server {
            address,
            endpoints,
            stop,
            task,
        }
    }

    /// Adds a stopped plugin `web` that reconciled once, ending in `outcome`.
    fn reconciled(metrics: &Metrics, outcome: Outcome) {
        let stats = Arc::new(Stats::default());
        stats.record_reconcile(outcome, Duration::from_millis(2));
        metrics.add_source(move |scrape| {
            scrape.plugins.push(PluginState {
                name: "web".into(),
                stats: stats.clone(),
                running: None,
            });
        });
    }

    impl Server {
        async fn stop(self) {
            self.stop.send(()).expect("the server runs");
            tokio::time::timeout(Duration::from_secs(10), self.task)
                .await
                .expect("the server stops in time")
                .expect("the server does not panic");
        }
    }

    /// A response: status, headers (lower-case names), body.
    struct Answer {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Answer {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        }
    }

    /// Sends one request over a fresh connection and reads the whole answer.
    async fn request(
        address: SocketAddr,
        method: &str,
        path: &str,
        accept: Option<&str>,
    ) -> Answer {
        let mut stream = TcpStream::connect(address).await.expect("connects");
        let accept = accept
            .map(|a| format!("Accept: {a}\r\n"))
            .unwrap_or_default();
        let head =
            format!("{method} {path} HTTP/1.1\r\nHost: test\r\n{accept}Connection: close\r\n\r\n");
        stream.write_all(head.as_bytes()).await.expect("writes");
        let mut raw = String::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut raw))
            .await
            .expect("answers in time")
            .expect("reads");
        parse(&raw)
    }

    fn parse(raw: &str) -> Answer {
        let (head, body) = raw.split_once("\r\n\r\n").expect("a complete response");
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .expect("a status line");
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Answer {
            status,
            headers,
            body: body.to_owned(),
        }
    }

    async fn get(address: SocketAddr, path: &str) -> Answer {
        request(address, "GET", path, None).await
    }

    #[tokio::test]
    async fn healthz_answers_ok_while_the_process_serves() {
        let server = start().await;
        let answer = get(server.address, "/healthz").await;
        assert_eq!((answer.status, answer.body.as_str()), (200, "ok\n"));
        server.stop().await;
    }

    #[tokio::test]
    async fn readyz_is_unavailable_until_readiness_is_set() {
        let server = start().await;
        let answer = get(server.address, "/readyz").await;
        assert_eq!((answer.status, answer.body.as_str()), (503, "not ready\n"));
        server.endpoints.readiness.set(true);
        assert_eq!(get(server.address, "/readyz").await.status, 200);
        server.endpoints.readiness.set(false);
        assert_eq!(get(server.address, "/readyz").await.status, 503);
        server.stop().await;
    }

    #[tokio::test]
    async fn metrics_are_served_as_openmetrics_when_asked_for() {
        let server = start().await;
        reconciled(&server.endpoints.metrics, Outcome::Success);
        let prometheus_accept = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        let answer = request(server.address, "GET", "/metrics", Some(prometheus_accept)).await;
        assert_eq!(answer.status, 200);
        assert_eq!(
            answer.header("content-type"),
            Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
        );
        assert!(
            answer
                .body
                .contains("reconcile_total{plugin=\"web\",result=\"success\"} 1\n"),
            "{}",
            answer.body
        );
        assert!(answer.body.ends_with("# EOF\n"), "{}", answer.body);
        server.stop().await;
    }

    #[tokio::test]
    async fn metrics_fall_back_to_the_prometheus_text_format() {
        let server = start().await;
        reconciled(&server.endpoints.metrics, Outcome::Failed);
        let answer = get(server.address, "/metrics").await;
        assert_eq!(answer.status, 200);
        assert_eq!(
            answer.header("content-type"),
            Some("text/plain; version=0.0.4; charset=utf-8")
        );
        assert!(answer.body.contains("# TYPE reconcile_total counter\n"));
        assert!(
            answer
                .body
                .contains("reconcile_total{plugin=\"web\",result=\"error\"} 1\n"),
            "{}",
            answer.body
        );
        assert!(!answer.body.contains("# EOF"));
        server.stop().await;
    }

    #[tokio::test]
    async fn unknown_paths_and_methods_are_refused() {
        let server = start().await;
        assert_eq!(get(server.address, "/nope").await.status, 404);
        let post = request(server.address, "POST", "/metrics", None).await;
        assert_eq!(post.status, 405);
        assert_eq!(post.header("allow"), Some("GET, HEAD"));
        let head = request(server.address, "HEAD", "/healthz", None).await;
        assert_eq!((head.status, head.body.as_str()), (200, ""));
        server.stop().await;
    }

    #[tokio::test]
    async fn shutdown_closes_idle_connections_and_the_listener() {
        let server = start().await;
        let address = server.address;
        // A keep-alive connection that stays open and idle after its request.
        let mut idle = TcpStream::connect(address).await.expect("connects");
        idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
            .await
            .expect("writes");
        let mut first = [0u8; 12];
        idle.read_exact(&mut first).await.expect("answered");
        assert_eq!(&first, b"HTTP/1.1 200");
        server.stop().await;
        assert!(
            TcpStream::connect(address).await.is_err(),
            "still listening"
        );
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), idle.read_to_end(&mut rest))
            .await
            .expect("the idle connection is closed");
        assert!(read.is_ok());
    }
}
