//! A fault-injecting HTTP proxy between a host under test and the real API server.
//!
//! [`FaultProxy::start`] listens on `127.0.0.1:0` (plain HTTP/1.1, no auth) and forwards
//! every request with an upstream [`kube::Client`], which does TLS and authentication.
//! Response bodies are streamed through chunk by chunk, never buffered whole, so watches
//! work. Chunks as read from upstream follow socket reads, not events (one chunk may
//! hold several watch events and end inside the next), so JSON watch bodies are re-cut at
//! newlines: there every chunk the proxy delays, holds or drops is one whole event. A
//! host reaches the proxy through [`FaultProxy::client`] (in process) or a
//! kubeconfig from [`FaultProxy::write_kubeconfig`] (a `rekon run` child process).
//!
//! Faults are [`Rule`]s, added and removed while the proxy runs: a [`Matcher`] (methods,
//! a path substring, watch or not) and an [`Action`]:
//! - request actions act when a request arrives: [`Action::Respond`] answers with a
//!   Kubernetes `Status` without forwarding, [`Action::WatchGone`] ends a watch with a
//!   410 Gone event (the client relists), [`Action::Delay`] forwards late,
//!   [`Action::BlackHole`] never answers, [`Action::Hold`] forwards once the rule is
//!   removed (a write in flight while the test changes the object). The first matching
//!   request rule acts.
//! - stream actions act on response bodies, chunk by chunk, including responses that
//!   started before the rule was added: [`Action::DelayEvents`] delivers each chunk a
//!   fixed time after it arrived from upstream, [`Action::HoldEvents`] holds chunks until
//!   the rule is removed. Order is always kept.
//!
//! [`FaultProxy::cut_watches`] ends watch streams, [`FaultProxy::block_all`] partitions
//! the proxy's clients from the API server, and [`FaultProxy::requests`] /
//! [`FaultProxy::writes_to`] tell what happened.
//!
//! ```no_run
//! # async fn demo(upstream: kube::Client) -> Result<(), rekon_tests::proxy::Error> {
//! use rekon_tests::proxy::{Action, FaultProxy, Rule};
//! let proxy = FaultProxy::start(upstream).await?;
//! let client = proxy.client()?;
//! // The next write to a ConfigMap is answered 409 Conflict.
//! let id = proxy.add(
//!     Rule::new(Action::status(http::StatusCode::CONFLICT)).writes().path("/configmaps").times(1),
//! );
//! # let _ = (client, id);
//! # Ok(()) }
//! ```
//!
//! Note: a `kube::Client` built from a default [`kube::Config`] retries 429, 503 and 504
//! answers itself (`Config::default_retry`), so an injected one of those with a count is
//! usually invisible to the caller; [`FaultProxy::config`] keeps that default, like a
//! host's real client.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// An error type-erased for bodies.
type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body of every answer the proxy gives.
type ProxyBody = BoxBody<Bytes, BoxError>;
/// How many chunks may wait between a stream's pump and the client connection.
const STREAM_CHANNEL: usize = 16;

/// Why the proxy could not start or hand out a client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The listener could not be bound.
    #[error("binding the proxy's listener on 127.0.0.1:0")]
    Bind(#[source] std::io::Error),
    /// The proxy's URL is not a valid URI (cannot happen for a bound loopback address).
    #[error("the proxy's URL {url} is not a valid URI")]
    Url {
        /// The URL.
        url: String,
        /// Why.
        #[source]
        source: http::uri::InvalidUri,
    },
    /// A kube client for the proxy could not be built.
    #[error("creating a kube client for the proxy at {url}")]
    Client {
        /// The proxy's URL.
        url: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// The kubeconfig could not be serialised.
    #[error("serialising the proxy's kubeconfig")]
    Kubeconfig(#[source] serde_yaml::Error),
    /// The kubeconfig could not be written.
    #[error("writing the proxy's kubeconfig {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

// ---------------------------------------------------------------------------------------
// Rules
// ---------------------------------------------------------------------------------------

/// Which requests a [`Rule`] applies to. Every set criterion must hold; the default
/// matches every request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Matcher {
    /// The methods matched; empty matches any method.
    pub methods: Vec<Method>,
    /// A substring of the path with its query (`/api/v1/namespaces/x/configmaps?watch=true`).
    pub path: Option<String>,
    /// `Some(true)`: only watches (`watch=true` or `watch=1` in the query);
    /// `Some(false)`: only requests that are not watches; `None`: both.
    pub watch: Option<bool>,
    /// Substrings none of which the path with its query may contain.
    pub not_paths: Vec<String>,
}

impl Matcher {
    /// Whether a request with this method and path (with query) matches.
    pub fn matches(&self, method: &Method, path_and_query: &str) -> bool {
        (self.methods.is_empty() || self.methods.contains(method))
            && self
                .path
                .as_ref()
                .is_none_or(|p| path_and_query.contains(p.as_str()))
            && self.watch.is_none_or(|w| w == is_watch(path_and_query))
            && !self
                .not_paths
                .iter()
                .any(|p| path_and_query.contains(p.as_str()))
    }
}

/// What a [`Rule`] does to the requests it matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Answer with a Kubernetes `Status` (`"status": "Failure"`, this `code`, `reason` and
    /// a message naming the proxy) without forwarding the request.
    Respond {
        /// The HTTP status and the Status' `code`.
        status: StatusCode,
        /// The Status' `reason`, e.g. `Conflict`, `TooManyRequests`, `InternalError`.
        reason: String,
    },
    /// Forward the request after this delay (a slow API server).
    Delay(Duration),
    /// Accept the request and never answer it. When the rule is removed (or the proxy
    /// stops) the connection is closed without an answer; usually the client's own
    /// timeout has ended the request before that.
    BlackHole,
    /// Accept the request and forward it only when the rule is removed, then answer as
    /// the API server does: a write held while a test changes its
    /// object, which the API server then judges against the changed object. The held
    /// request is in [`FaultProxy::requests`] (with this rule) from its arrival.
    Hold,
    /// Answer (a watch) with 200 and one `ERROR` event carrying a `410 Gone` Status, then
    /// end the body: what the API server sends a watch from a compacted resourceVersion.
    /// A kube-runtime watcher then relists.
    WatchGone,
    /// Deliver every chunk of a matching response body this long after it arrived from
    /// upstream, in order (a lagging watch). Removing the rule releases waiting chunks.
    DelayEvents(Duration),
    /// Keep every chunk of a matching response body until the rule is removed, then
    /// release them in order.
    HoldEvents,
}

impl Action {
    /// [`Action::Respond`] with this status and its usual Kubernetes reason (`Conflict`,
    /// `TooManyRequests`, `InternalError`, `ServiceUnavailable`, ...).
    pub fn status(status: StatusCode) -> Self {
        let reason = match status.as_u16() {
            400 => "BadRequest",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "NotFound",
            405 => "MethodNotAllowed",
            409 => "Conflict",
            410 => "Expired",
            422 => "Invalid",
            429 => "TooManyRequests",
            500 => "InternalError",
            503 => "ServiceUnavailable",
            504 => "Timeout",
            _ => "Unknown",
        };
        Action::Respond {
            status,
            reason: reason.to_owned(),
        }
    }

    /// Whether the action acts on response bodies rather than on requests.
    pub fn is_stream_action(&self) -> bool {
        matches!(self, Action::DelayEvents(_) | Action::HoldEvents)
    }
}

/// A fault: a [`Matcher`], an [`Action`], and optionally how many times it acts.
///
/// Built with [`Rule::new`] and the narrowing methods, e.g.
/// `Rule::new(Action::HoldEvents).watches().path("/configmaps")`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Which requests it applies to.
    pub matcher: Matcher,
    /// What it does.
    pub action: Action,
    /// `Some(n)`: only the first `n` matching requests (for stream actions: the first `n`
    /// matching responses); `None`: all of them.
    pub count: Option<usize>,
    /// How many matching requests pass untouched before the rule acts (and before
    /// `count` starts); 0 by default. Request actions only: stream actions ignore it.
    pub skip: usize,
}

impl Rule {
    /// A rule doing `action` to every request.
    pub fn new(action: Action) -> Self {
        Rule {
            matcher: Matcher::default(),
            action,
            count: None,
            skip: 0,
        }
    }

    /// Only requests with one of these methods.
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.matcher.methods = methods.into_iter().collect();
        self
    }

    /// Only writes: POST, PUT, PATCH and DELETE.
    pub fn writes(self) -> Self {
        self.methods([Method::POST, Method::PUT, Method::PATCH, Method::DELETE])
    }

    /// Only requests whose path with query contains `substring`.
    pub fn path(mut self, substring: impl Into<String>) -> Self {
        self.matcher.path = Some(substring.into());
        self
    }

    /// Only watch requests.
    pub fn watches(mut self) -> Self {
        self.matcher.watch = Some(true);
        self
    }

    /// Only requests that are not watches.
    pub fn not_watches(mut self) -> Self {
        self.matcher.watch = Some(false);
        self
    }

    /// Only the first `n` matching requests (or responses, for stream actions).
    pub fn times(mut self, n: usize) -> Self {
        self.count = Some(n);
        self
    }

    /// Only requests whose path with query does not contain `substring` (may be given
    /// several times).
    pub fn not_path(mut self, substring: impl Into<String>) -> Self {
        self.matcher.not_paths.push(substring.into());
        self
    }

    /// Lets the first `n` matching requests pass untouched; the rule acts from the next
    /// one on. `.after(i).times(1)` acts on the `i+1`-th only. Request actions only.
    pub fn after(mut self, n: usize) -> Self {
        self.skip = n;
        self
    }
}

/// Names an added [`Rule`], for [`FaultProxy::remove`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleId(u64);

/// One request the proxy received, in [`FaultProxy::requests`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// Its method.
    pub method: Method,
    /// Its path with query.
    pub path: String,
    /// Whether it is a watch (`watch=true` or `watch=1`).
    pub watch: bool,
    /// The status the proxy answered with; `None` while unanswered, and for black-holed
    /// requests.
    pub status: Option<u16>,
    /// The first rule that acted on it (a request action, or a stream action on its
    /// response body); `None` when it passed untouched.
    pub rule: Option<RuleId>,
    /// Whether it was forwarded and the API server answered it.
    pub forwarded: bool,
    /// For a write forwarded upstream, the resourceVersion its body is conditioned on:
    /// `metadata.resourceVersion` (apply, update, patch) or
    /// `preconditions.resourceVersion` (delete). `None` when it carries none.
    pub precondition: Option<String>,
}

impl Seen {
    /// Whether it is a POST, PUT, PATCH or DELETE.
    pub fn is_write(&self) -> bool {
        is_write(&self.method)
    }
}

fn is_write(method: &Method) -> bool {
    matches!(
        *method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    )
}

/// The resourceVersion a write's JSON body is conditioned on, if any.
fn precondition_of(body: &[u8]) -> Option<String> {
    let body: serde_json::Value = serde_json::from_slice(body).ok()?;
    [
        "/metadata/resourceVersion",
        "/preconditions/resourceVersion",
    ]
    .iter()
    .find_map(|p| body.pointer(p)?.as_str())
    .filter(|rv| !rv.is_empty())
    .map(str::to_owned)
}

/// Whether a path's query asks for a watch.
fn is_watch(path_and_query: &str) -> bool {
    path_and_query
        .split_once('?')
        .is_some_and(|(_, q)| q.split('&').any(|p| p == "watch=true" || p == "watch=1"))
}

// ---------------------------------------------------------------------------------------
// Shared state
// ---------------------------------------------------------------------------------------

struct Installed {
    id: RuleId,
    rule: Rule,
    /// What is left of `rule.count`.
    remaining: Option<usize>,
    /// What is left of `rule.skip`.
    skipping: usize,
}

impl Installed {
    /// Takes one use from the count; false when it is used up or the match is one of
    /// those to let pass first.
    fn take(&mut self) -> bool {
        if self.skipping > 0 {
            self.skipping -= 1;
            return false;
        }
        match &mut self.remaining {
            None => true,
            Some(0) => false,
            Some(n) => {
                *n -= 1;
                true
            }
        }
    }
}

/// A response body in flight.
struct StreamEntry {
    path: String,
    watch: bool,
    cut: Arc<Notify>,
}

#[derive(Default)]
struct State {
    next_id: u64,
    rules: Vec<Installed>,
    blocked: bool,
    seen: Vec<Seen>,
    streams: HashMap<u64, StreamEntry>,
}

struct Shared {
    upstream: kube::Client,
    state: Mutex<State>,
    /// Bumped whenever rules or the block change: waiters re-evaluate.
    changed: watch::Sender<u64>,
    /// Set once, when the proxy stops.
    stopped: watch::Sender<bool>,
}

/// What happens to an arriving request.
enum Decision {
    Forward,
    Respond(StatusCode, String, RuleId),
    WatchGone(RuleId),
    Delay(Duration),
    /// Held until the rule is removed (`Some`) or the block is lifted (`None`).
    BlackHole(Option<RuleId>),
    /// Held until the rule is removed, then forwarded.
    Hold(RuleId),
}

/// Whether the next chunk of a stream may go.
enum Gate {
    Empty,
    Ready,
    Until(Instant),
    Wait,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state inconsistent in a way
        // that matters to tests; keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|g| *g += 1);
    }

    /// Logs the request and decides its fate. Returns its index in the log.
    fn admit(&self, method: &Method, path: &str) -> (usize, Decision) {
        let mut state = self.lock();
        let State {
            rules,
            blocked,
            seen,
            ..
        } = &mut *state;
        let index = seen.len();
        let mut entry = Seen {
            method: method.clone(),
            path: path.to_owned(),
            watch: is_watch(path),
            status: None,
            rule: None,
            forwarded: false,
            precondition: None,
        };
        let decision = if *blocked {
            Decision::BlackHole(None)
        } else {
            rules
                .iter_mut()
                .filter(|r| !r.rule.action.is_stream_action())
                .filter(|r| r.rule.matcher.matches(method, path))
                .find_map(|r| r.take().then_some((r.id, r.rule.action.clone())))
                .map_or(Decision::Forward, |(id, action)| {
                    entry.rule = Some(id);
                    match action {
                        Action::Respond { status, reason } => Decision::Respond(status, reason, id),
                        Action::Delay(d) => Decision::Delay(d),
                        Action::WatchGone => Decision::WatchGone(id),
                        Action::BlackHole => Decision::BlackHole(Some(id)),
                        Action::Hold => Decision::Hold(id),
                        Action::DelayEvents(_) | Action::HoldEvents => Decision::Forward,
                    }
                })
        };
        seen.push(entry);
        (index, decision)
    }

    fn conditioned_on(&self, index: usize, precondition: Option<String>) {
        if let Some(seen) = self.lock().seen.get_mut(index) {
            seen.precondition = precondition;
        }
    }

    fn answered(&self, index: usize, status: StatusCode, forwarded: bool) {
        if let Some(seen) = self.lock().seen.get_mut(index) {
            seen.status = Some(status.as_u16());
            seen.forwarded = forwarded;
        }
    }

    /// Whether a black hole for this rule (or the block, for `None`) still holds.
    fn still_black_holed(&self, rule: Option<RuleId>) -> bool {
        let state = self.lock();
        match rule {
            Some(id) => state.rules.iter().any(|r| r.id == id),
            None => state.blocked,
        }
    }

    /// Whether the head chunk of a stream, arrived at `arrived`, may be delivered now.
    /// Claims stream rules for this stream on first use (their counts).
    fn gate(
        &self,
        method: &Method,
        path: &str,
        index: usize,
        claimed: &mut HashSet<RuleId>,
        arrived: Instant,
    ) -> Gate {
        let mut state = self.lock();
        let State {
            rules,
            blocked,
            seen,
            ..
        } = &mut *state;
        if *blocked {
            return Gate::Wait;
        }
        let mut delay = Duration::ZERO;
        let mut held = false;
        for r in rules.iter_mut() {
            if !r.rule.action.is_stream_action() || !r.rule.matcher.matches(method, path) {
                continue;
            }
            if !claimed.contains(&r.id) {
                if !r.take() {
                    continue;
                }
                claimed.insert(r.id);
                if let Some(s) = seen.get_mut(index) {
                    s.rule.get_or_insert(r.id);
                }
            }
            match r.rule.action {
                Action::DelayEvents(d) => delay = delay.max(d),
                Action::HoldEvents => held = true,
                _ => {}
            }
        }
        if held {
            Gate::Wait
        } else if arrived + delay <= Instant::now() {
            Gate::Ready
        } else {
            Gate::Until(arrived + delay)
        }
    }

    /// Ends everything: streams are cut, connections dropped by their tasks.
    fn stop(&self) {
        self.stopped.send_replace(true);
        for stream in self.lock().streams.values() {
            stream.cut.notify_one();
        }
    }
}

// ---------------------------------------------------------------------------------------
// The proxy
// ---------------------------------------------------------------------------------------

/// A programmable fault-injecting proxy in front of the API server. Stops when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    listener: JoinHandle<()>,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl FaultProxy {
    /// Starts a proxy on `127.0.0.1:0` forwarding to `upstream`, in the caller's tokio
    /// runtime. It has no rules.
    pub async fn start(upstream: kube::Client) -> Result<FaultProxy, Error> {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(Error::Bind)?;
        let addr = listener.local_addr().map_err(Error::Bind)?;
        let shared = Arc::new(Shared {
            upstream,
            state: Mutex::new(State::default()),
            changed: watch::channel(0).0,
            stopped: watch::channel(false).0,
        });
        let listener = tokio::spawn(serve(listener, shared.clone()));
        Ok(FaultProxy {
            addr,
            shared,
            listener,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A [`kube::Config`] for the proxy: its URL, no auth, namespace `default`, kube's
    /// defaults otherwise (change e.g. `read_timeout` before building a client).
    pub fn config(&self) -> Result<kube::Config, Error> {
        let url = self.url();
        let uri = url.parse().map_err(|source| Error::Url {
            url: url.clone(),
            source,
        })?;
        Ok(kube::Config::new(uri))
    }

    /// A client talking to the API server through the proxy.
    pub fn client(&self) -> Result<kube::Client, Error> {
        kube::Client::try_from(self.config()?).map_err(|source| Error::Client {
            url: self.url(),
            source,
        })
    }

    /// Writes a kubeconfig (context `rekon-fault-proxy`, no credentials) pointing at the
    /// proxy, for a `rekon run` process.
    pub fn write_kubeconfig(&self, path: &Path) -> Result<(), Error> {
        let name = "rekon-fault-proxy";
        let kubeconfig = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{ "name": name, "cluster": { "server": self.url() } }],
            "users": [{ "name": name, "user": {} }],
            "contexts": [{
                "name": name,
                "context": { "cluster": name, "user": name, "namespace": "default" },
            }],
            "current-context": name,
        });
        let text = serde_yaml::to_string(&kubeconfig).map_err(Error::Kubeconfig)?;
        std::fs::write(path, text).map_err(|source| Error::Write {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Adds a rule; it applies to requests arriving from now on and, for stream actions,
    /// to chunks of responses already in flight.
    pub fn add(&self, rule: Rule) -> RuleId {
        let id = {
            let mut state = self.shared.lock();
            state.next_id += 1;
            let id = RuleId(state.next_id);
            state.rules.push(Installed {
                id,
                remaining: rule.count,
                skipping: if rule.action.is_stream_action() {
                    0
                } else {
                    rule.skip
                },
                rule,
            });
            id
        };
        self.shared.bump();
        id
    }

    /// Removes a rule: requests it black-holed are closed, chunks it held or delayed are
    /// released. False when there was no such rule.
    pub fn remove(&self, id: RuleId) -> bool {
        let removed = {
            let mut state = self.shared.lock();
            let before = state.rules.len();
            state.rules.retain(|r| r.id != id);
            state.rules.len() != before
        };
        self.shared.bump();
        removed
    }

    /// Removes every rule.
    pub fn clear(&self) {
        self.shared.lock().rules.clear();
        self.shared.bump();
    }

    /// Ends every watch response in flight whose path (with query) contains
    /// `path_substring`: its body ends cleanly, as if the API server had closed the
    /// watch, so the client sees the stream end and re-watches. Events not delivered yet
    /// (delayed, held, blocked) are dropped, never half an event; a client re-watching
    /// from its last resourceVersion gets them again. Returns how many were cut.
    pub fn cut_watches(&self, path_substring: &str) -> usize {
        let mut state = self.shared.lock();
        let before = state.streams.len();
        // Cut streams leave the registry at once: a second call does not count them.
        state.streams.retain(|_, stream| {
            let cut = stream.watch && stream.path.contains(path_substring);
            if cut {
                stream.cut.notify_one();
            }
            !cut
        });
        before - state.streams.len()
    }

    /// `true`: a network partition of the proxy's clients. Every new request is
    /// black-holed and no response body in flight moves. `false` lifts it: held chunks
    /// flow on, black-holed requests are closed without an answer.
    pub fn block_all(&self, blocked: bool) {
        self.shared.lock().blocked = blocked;
        self.shared.bump();
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<Seen> {
        self.shared.lock().seen.clone()
    }

    /// How many writes (POST, PUT, PATCH, DELETE) whose path contains `path_substring`
    /// reached the API server and were answered 2xx by it.
    pub fn writes_to(&self, path_substring: &str) -> usize {
        self.shared
            .lock()
            .seen
            .iter()
            .filter(|s| {
                s.is_write()
                    && s.forwarded
                    && s.status.is_some_and(|c| (200..300).contains(&c))
                    && s.path.contains(path_substring)
            })
            .count()
    }

    /// Stops the proxy: the listener closes, connections and streams in flight end.
    pub async fn stop(mut self) {
        self.shared.stop();
        self.listener.abort();
        // The listener task was aborted: this only waits for it to be gone.
        let _ = (&mut self.listener).await;
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop();
        self.listener.abort();
    }
}

// ---------------------------------------------------------------------------------------
// Serving
// ---------------------------------------------------------------------------------------

/// Accepts connections until aborted; each connection ends when the proxy stops.
async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "fault proxy: accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let mut stopped = shared.stopped.subscribe();
        let conn_shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| handle(conn_shared.clone(), request));
            let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                result = connection => if let Err(e) = result {
                    tracing::debug!(error = %e, "fault proxy: a connection ended with an error");
                },
                () = until_stopped(&mut stopped) => {}
            }
        });
    }
}

/// Resolves once the proxy stops.
async fn until_stopped(stopped: &mut watch::Receiver<bool>) {
    let _ = stopped.wait_for(|s| *s).await;
}

/// A Kubernetes `Status` answer.
fn status_response(status: StatusCode, reason: &str, message: &str) -> Response<ProxyBody> {
    let body = serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": status.as_u16(),
    });
    let mut response = Response::new(
        Full::new(Bytes::from(body.to_string()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

/// Headers that belong to one connection, not to the request or response.
fn hop_by_hop(name: &header::HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "host"
            | "content-length"
            | "authorization"
    )
}

fn copy_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (name, value) in from {
        if !hop_by_hop(name) {
            to.append(name.clone(), value.clone());
        }
    }
}

/// Serves one request: rules first, then upstream. An `Err` closes the connection
/// without an answer (black holes that ended).
async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, BoxError> {
    let method = request.method().clone();
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let (index, decision) = shared.admit(&method, &path);
    match decision {
        Decision::Forward => {}
        Decision::Respond(status, reason, id) => {
            shared.answered(index, status, false);
            let message = format!("injected by the rekon-tests fault proxy (rule {})", id.0);
            return Ok(status_response(status, &reason, &message));
        }
        Decision::WatchGone(id) => {
            shared.answered(index, StatusCode::OK, false);
            let message = format!(
                "too old resource version (injected by the rekon-tests fault proxy, rule {})",
                id.0
            );
            let event = serde_json::json!({"type": "ERROR", "object": {
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": message, "reason": "Expired", "code": 410,
            }});
            let mut response = Response::new(
                Full::new(Bytes::from(format!("{event}\n")))
                    .map_err(|never| match never {})
                    .boxed(),
            );
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            return Ok(response);
        }
        Decision::Delay(delay) => tokio::time::sleep(delay).await,
        Decision::BlackHole(rule) => {
            let mut changed = shared.changed.subscribe();
            while shared.still_black_holed(rule) {
                if changed.changed().await.is_err() {
                    break;
                }
            }
            return Err("black-holed by the fault proxy; closing without an answer".into());
        }
        Decision::Hold(rule) => {
            let mut changed = shared.changed.subscribe();
            while shared.still_black_holed(Some(rule)) {
                if changed.changed().await.is_err() {
                    break;
                }
            }
        }
    }

    let (parts, body) = request.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => return Err(Box::new(e) as BoxError),
    };
    if is_write(&method) {
        shared.conditioned_on(index, precondition_of(&body));
    }
    let mut upstream_request = Request::builder().method(method.clone()).uri(path.as_str());
    if let Some(headers) = upstream_request.headers_mut() {
        copy_headers(&parts.headers, headers);
    }
    let upstream_request = upstream_request.body(kube::client::Body::from(body))?;
    let response = match shared.upstream.send(upstream_request).await {
        Ok(response) => response,
        Err(e) => {
            shared.answered(index, StatusCode::BAD_GATEWAY, false);
            let message = format!("the fault proxy could not reach the API server: {e}");
            return Ok(status_response(
                StatusCode::BAD_GATEWAY,
                "InternalError",
                &message,
            ));
        }
    };
    let (upstream_parts, upstream_body) = response.into_parts();
    shared.answered(index, upstream_parts.status, true);

    let (tx, mut rx) = mpsc::channel(STREAM_CHANNEL);
    let cut = Arc::new(Notify::new());
    let stream_id = {
        let mut state = shared.lock();
        state.next_id += 1;
        let id = state.next_id;
        state.streams.insert(
            id,
            StreamEntry {
                path: path.clone(),
                watch: is_watch(&path),
                cut: cut.clone(),
            },
        );
        id
    };
    let json = upstream_parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let by_line = json && is_watch(&path);
    tokio::spawn(pump(
        shared.clone(),
        Pumped {
            method,
            path,
            index,
            stream_id,
            cut,
            by_line,
        },
        upstream_body,
        tx,
    ));
    let body = StreamBody::new(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)));
    let mut response = Response::new(body.boxed());
    *response.status_mut() = upstream_parts.status;
    copy_headers(&upstream_parts.headers, response.headers_mut());
    Ok(response)
}

/// What a pump knows about its stream.
struct Pumped {
    method: Method,
    path: String,
    /// Its request's index in the log.
    index: usize,
    stream_id: u64,
    cut: Arc<Notify>,
    /// Whether chunks are re-cut at newlines: JSON watch bodies, so that a chunk is one
    /// whole event (upstream chunks follow reads, not events).
    by_line: bool,
}

/// Splits data into complete lines (each with its `\n`) as it arrives; what follows the
/// last newline waits for more.
#[derive(Default)]
struct Lines {
    partial: bytes::BytesMut,
}

impl Lines {
    fn push(&mut self, data: &[u8], mut line: impl FnMut(Bytes)) {
        self.partial.extend_from_slice(data);
        while let Some(end) = self.partial.iter().position(|b| *b == b'\n') {
            line(self.partial.split_to(end + 1).freeze());
        }
    }

    fn rest(&mut self) -> Option<Bytes> {
        (!self.partial.is_empty()).then(|| self.partial.split().freeze())
    }
}

type Chunk = Result<Frame<Bytes>, BoxError>;

/// Moves one response body from upstream to the client, chunk by chunk, gated by the
/// stream rules and the block; ends when the body ends, the client goes away, the
/// stream is cut or the proxy stops.
async fn pump(
    shared: Arc<Shared>,
    stream: Pumped,
    mut body: kube::client::Body,
    tx: mpsc::Sender<Chunk>,
) {
    let mut queue: VecDeque<(Instant, Chunk)> = VecDeque::new();
    let mut claimed = HashSet::new();
    let mut changed = shared.changed.subscribe();
    let mut stopped = shared.stopped.subscribe();
    let mut upstream_done = false;
    let mut lines = Lines::default();
    loop {
        if upstream_done && queue.is_empty() {
            break;
        }
        let gate = match queue.front() {
            None => Gate::Empty,
            Some((arrived, _)) => shared.gate(
                &stream.method,
                &stream.path,
                stream.index,
                &mut claimed,
                *arrived,
            ),
        };
        let ready = matches!(gate, Gate::Ready);
        let until = match gate {
            Gate::Until(at) => Some(at),
            _ => None,
        };
        tokio::select! {
            biased;
            () = stream.cut.notified() => break,
            () = until_stopped(&mut stopped) => break,
            () = tx.closed() => break,
            permit = tx.reserve(), if ready => match (permit, queue.pop_front()) {
                (Ok(permit), Some((_, chunk))) => permit.send(chunk),
                _ => break,
            },
            frame = body.frame(), if !upstream_done => {
                let now = Instant::now();
                let mut push = |chunk: Chunk| queue.push_back((now, chunk));
                match frame {
                    Some(Ok(frame)) if stream.by_line => match frame.into_data() {
                        Ok(data) => lines.push(&data, |line| push(Ok(Frame::data(line)))),
                        Err(frame) => {
                            if let Some(rest) = lines.rest() {
                                push(Ok(Frame::data(rest)));
                            }
                            push(Ok(frame));
                        }
                    },
                    Some(Ok(frame)) => push(Ok(frame)),
                    Some(Err(e)) => {
                        if let Some(rest) = lines.rest() {
                            push(Ok(Frame::data(rest)));
                        }
                        push(Err(Box::new(e) as BoxError));
                        upstream_done = true;
                    }
                    None => {
                        if let Some(rest) = lines.rest() {
                            push(Ok(Frame::data(rest)));
                        }
                        upstream_done = true;
                    }
                }
            },
            () = tokio::time::sleep_until(until.unwrap_or_else(Instant::now)), if until.is_some() => {}
            result = changed.changed() => if result.is_err() {
                break;
            },
        }
    }
    shared.lock().streams.remove(&stream.stream_id);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_writes_precondition_is_read_from_its_metadata_or_its_delete_preconditions() {
        let of = |v: serde_json::Value| precondition_of(v.to_string().as_bytes());
        let apply = serde_json::json!({"metadata": {"name": "a", "resourceVersion": "7"}});
        assert_eq!(of(apply), Some("7".to_owned()));
        let delete = serde_json::json!({"preconditions": {"uid": "u", "resourceVersion": "9"}});
        assert_eq!(of(delete), Some("9".to_owned()));
        assert_eq!(of(serde_json::json!({"metadata": {"name": "a"}})), None);
        assert_eq!(
            of(serde_json::json!({"metadata": {"resourceVersion": ""}})),
            None
        );
        assert_eq!(precondition_of(b"not json"), None);
    }

    #[test]
    fn lines_are_cut_at_newlines_and_the_rest_waits_for_more() {
        let mut lines = Lines::default();
        let mut out = Vec::new();
        lines.push(b"{\"a\":1}\n{\"b\":", |l| out.push(l));
        assert_eq!(out, [Bytes::from_static(b"{\"a\":1}\n")]);
        lines.push(b"2}\n{\"c\":3}\n{", |l| out.push(l));
        assert_eq!(
            out[1..],
            [
                Bytes::from_static(b"{\"b\":2}\n"),
                Bytes::from_static(b"{\"c\":3}\n")
            ]
        );
        assert_eq!(lines.rest(), Some(Bytes::from_static(b"{")));
        assert_eq!(lines.rest(), None);
    }

    #[test]
    fn a_watch_is_told_by_its_query() {
        assert!(is_watch("/api/v1/configmaps?watch=true&resourceVersion=1"));
        assert!(is_watch("/api/v1/configmaps?labelSelector=a&watch=1"));
        assert!(!is_watch("/api/v1/configmaps?watch=false"));
        assert!(!is_watch("/api/v1/configmaps/watch=true"));
        assert!(!is_watch("/api/v1/configmaps?resourceVersion=1"));
    }

    #[test]
    fn a_rule_after_n_acts_from_the_next_match_and_excluded_paths_do_not_match() {
        let rule = Rule::new(Action::status(StatusCode::CONFLICT))
            .writes()
            .not_path("/events")
            .after(2)
            .times(1);
        assert!(
            !rule
                .matcher
                .matches(&Method::POST, "/apis/events.k8s.io/v1/namespaces/n/events")
        );
        assert!(
            rule.matcher
                .matches(&Method::POST, "/api/v1/namespaces/n/configmaps")
        );
        let mut installed = Installed {
            id: RuleId(1),
            remaining: rule.count,
            skipping: rule.skip,
            rule,
        };
        let acted: Vec<bool> = (0..4).map(|_| installed.take()).collect();
        assert_eq!(acted, [false, false, true, false]);
    }

    #[test]
    fn a_matcher_needs_every_criterion() {
        let rule = Rule::new(Action::HoldEvents)
            .writes()
            .path("/configmaps")
            .not_watches();
        let m = &rule.matcher;
        assert!(m.matches(&Method::PATCH, "/api/v1/namespaces/n/configmaps/x"));
        assert!(!m.matches(&Method::GET, "/api/v1/namespaces/n/configmaps/x"));
        assert!(!m.matches(&Method::POST, "/api/v1/namespaces/n/secrets"));
        assert!(!m.matches(&Method::POST, "/api/v1/namespaces/n/configmaps?watch=true"));
        assert!(Matcher::default().matches(&Method::GET, "/anything?watch=1"));
    }
}
