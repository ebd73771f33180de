//! The controller processes the driver starts, one per round: rekon's [`Host`] with the
//! compiled webapp plugin, or a kube-runtime [`Controller`] running the same webapp logic
//! natively. Each runs alone in its own process, so its RSS and CPU time are its own.
//!
//! Protocol: the driver passes the settings in `REKON_BENCH_*` variables. The child prints
//! `started <unix µs>` once its controller runs, then answers each `report` line on stdin
//! with one JSON line ([`Report`]) and exits on `quit` (or when stdin closes).

use crate::procfs;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use rekon_host::contract::{Condition, ConditionStatus};
use rekon_host::controller::{self, Host};
use rekon_host::plugin::{Artifacts, Loader};
use rekon_host::sandbox::{self, Sandbox};
use rekon_sdk::raw::wit;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Metadata, Subscriber};
use tracing_subscriber::filter::{LevelFilter, filter_fn};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// Which controller a child runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// rekon's Host with the webapp component.
    Rekon,
    /// A kube-runtime Controller with the webapp logic compiled natively.
    Native,
}

impl Side {
    /// `rekon` or `native`.
    pub fn name(self) -> &'static str {
        match self {
            Side::Rekon => "rekon",
            Side::Native => "native",
        }
    }

    /// The side a [`name`](Self::name) names.
    pub fn parse(s: &str) -> Option<Side> {
        match s {
            "rekon" => Some(Side::Rekon),
            "native" => Some(Side::Native),
            _ => None,
        }
    }
}

/// What a child passes back on `report`. Counters are cumulative; `reconciles` holds the
/// reconcile starts since the previous report.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Report {
    /// API requests by verb (`list`, `watch`, `get`, `create`, `apply`, `patch`, `update`,
    /// `delete`): counted by a layer in the client's HTTP stack.
    pub requests: BTreeMap<String, u64>,
    /// Reconcile starts: (`namespace/name`, wall clock in µs since the Unix epoch).
    pub reconciles: Vec<(String, u64)>,
    /// rekon only: live watch events as the host's stores received them, (`namespace/name`,
    /// wall µs), since the previous report.
    #[serde(default)]
    pub events: Vec<(String, u64)>,
    /// Resident set size now, KiB.
    pub rss_kib: u64,
    /// Peak resident set size, KiB.
    pub hwm_kib: u64,
    /// User + system CPU time of the process, ms.
    pub cpu_ms: u64,
}

/// Wall clock in µs since the Unix epoch (comparable across the driver and its children).
pub fn wall_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// The driver's handle on a child
// ---------------------------------------------------------------------------------------

/// A running child process (the bench binary again, as a controller) and its stdout lines.
pub struct ChildProc {
    process: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    timeout: Duration,
}

impl ChildProc {
    /// Starts the bench binary as the controller of `side` with `env`'s settings; a line
    /// not answered within `timeout` fails the bench.
    pub fn spawn(env: &Env, side: Side, timeout: Duration) -> Self {
        let mut process = Command::new(std::env::current_exe().expect("the bench binary"))
            .envs(env.vars(side))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the controller process starts");
        let stdout = process.stdout.take().expect("piped");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            process,
            lines,
            timeout,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// The next line the child prints.
    pub fn line(&self) -> String {
        self.lines
            .recv_timeout(self.timeout)
            .expect("the controller process answers")
    }

    /// Asks for a [`Report`] and waits for it.
    pub fn report(&mut self) -> Report {
        let stdin = self.process.stdin.as_mut().expect("piped");
        writeln!(stdin, "report").expect("the controller process reads");
        stdin.flush().expect("flushed");
        serde_json::from_str(&self.line()).expect("a report")
    }

    /// Tells the child to quit and waits for it.
    pub fn quit(mut self) {
        if let Some(mut stdin) = self.process.stdin.take() {
            let _ = writeln!(stdin, "quit");
        }
        let _ = self.process.wait();
    }
}

// ---------------------------------------------------------------------------------------
// Counting API requests
// ---------------------------------------------------------------------------------------

/// API requests by verb, counted as the client sends them.
#[derive(Default)]
pub struct Requests {
    counts: Mutex<BTreeMap<&'static str, u64>>,
}

impl Requests {
    fn count<B>(&self, req: &http::Request<B>) {
        let query = req.uri().query().unwrap_or("");
        let watch = query
            .split('&')
            .any(|p| p == "watch=true" || p == "watch=1");
        let path = req.uri().path();
        let verb = match *req.method() {
            http::Method::GET if watch => "watch",
            // A collection path ends in the plural: an odd number of segments after
            // `/api/v1` or `/apis/group/version`, with or without `namespaces/NS`.
            http::Method::GET if is_collection(path) => "list",
            http::Method::GET => "get",
            http::Method::POST => "create",
            http::Method::PATCH => {
                let apply = req
                    .headers()
                    .get(http::header::CONTENT_TYPE)
                    .is_some_and(|v| v.as_bytes().starts_with(b"application/apply-patch"));
                if apply { "apply" } else { "patch" }
            }
            http::Method::PUT => "update",
            http::Method::DELETE => "delete",
            _ => "other",
        };
        *self
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(verb)
            .or_default() += 1;
    }

    fn snapshot(&self) -> BTreeMap<String, u64> {
        self.counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| ((*k).to_owned(), *v))
            .collect()
    }
}

fn is_collection(path: &str) -> bool {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest = match segments.first() {
        Some(&"api") => &segments[segments.len().min(2)..],
        Some(&"apis") => &segments[segments.len().min(3)..],
        _ => return false,
    };
    let rest = match rest {
        ["namespaces", _, tail @ ..] if !tail.is_empty() => tail,
        r => r,
    };
    rest.len() == 1
}

/// A client for the kubeconfig at `path` whose HTTP stack counts every request.
async fn counting_client(path: &str, requests: Arc<Requests>) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(path).expect("the kubeconfig reads");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("the kubeconfig is usable");
    let layer = tower::util::MapRequestLayer::new(move |req: http::Request<kube::client::Body>| {
        requests.count(&req);
        req
    });
    kube::client::ClientBuilder::try_from(config)
        .expect("a client builder")
        .with_layer(&layer)
        .build()
}

// ---------------------------------------------------------------------------------------
// Recording reconcile starts
// ---------------------------------------------------------------------------------------

type Starts = Arc<Mutex<Vec<(String, u64)>>>;

/// Records the creation of rekon's `reconcile` span (one per reconcile, created when the
/// queue hands out the key) with its `key` field, and the host stores' `watch event`
/// trace events (one per live change received). Its filter enables those alone.
struct ReconcileSpans {
    starts: Starts,
    events: Starts,
}

fn reconcile_span(meta: &Metadata<'_>) -> bool {
    (meta.is_span() && meta.name() == "reconcile" && meta.target().starts_with("rekon_host"))
        || (meta.is_event() && meta.target() == "rekon_host::watch")
}

impl<S: Subscriber> Layer<S> for ReconcileSpans {
    fn on_new_span(&self, attrs: &Attributes<'_>, _: &Id, _: Context<'_, S>) {
        struct Key(Option<String>);
        impl Visit for Key {
            fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
                if field.name() == "key" {
                    self.0 = Some(format!("{value:?}"));
                }
            }
        }
        let mut key = Key(None);
        attrs.record(&mut key);
        if let Some(k) = key.0 {
            self.starts
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((k, wall_us()));
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        #[derive(Default)]
        struct Object {
            namespace: String,
            name: String,
        }
        impl Visit for Object {
            fn record_str(&mut self, field: &Field, value: &str) {
                match field.name() {
                    "namespace" => self.namespace = value.to_owned(),
                    "name" => self.name = value.to_owned(),
                    _ => {}
                }
            }
            fn record_debug(&mut self, _: &Field, _: &dyn std::fmt::Debug) {}
        }
        let at = wall_us();
        let mut o = Object::default();
        event.record(&mut o);
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((format!("{}/{}", o.namespace, o.name), at));
    }
}

// ---------------------------------------------------------------------------------------
// The two controllers
// ---------------------------------------------------------------------------------------

/// Settings the driver passes to a child.
pub struct Env {
    /// The admin kubeconfig of the control plane.
    pub kubeconfig: String,
    /// The round's namespace, the only one the controller watches.
    pub namespace: String,
    /// Reconciles at once.
    pub concurrency: usize,
    /// The webapp component.
    pub plugin: PathBuf,
    /// The precompiled artifact cache.
    pub artifacts: PathBuf,
}

impl Env {
    fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} is set"));
        Self {
            kubeconfig: var("REKON_BENCH_KUBECONFIG"),
            namespace: var("REKON_BENCH_NAMESPACE"),
            concurrency: var("REKON_BENCH_CONCURRENCY").parse().expect("a number"),
            plugin: var("REKON_BENCH_PLUGIN").into(),
            artifacts: var("REKON_BENCH_ARTIFACTS").into(),
        }
    }

    /// The variables for a child of `side`.
    pub fn vars(&self, side: Side) -> Vec<(&'static str, String)> {
        vec![
            ("REKON_BENCH_ROLE", side.name().to_owned()),
            ("REKON_BENCH_KUBECONFIG", self.kubeconfig.clone()),
            ("REKON_BENCH_NAMESPACE", self.namespace.clone()),
            ("REKON_BENCH_CONCURRENCY", self.concurrency.to_string()),
            ("REKON_BENCH_PLUGIN", self.plugin.display().to_string()),
            (
                "REKON_BENCH_ARTIFACTS",
                self.artifacts.display().to_string(),
            ),
        ]
    }
}

/// When this process was started as a child (`REKON_BENCH_ROLE`), runs it and returns
/// `true`; a bench's `main` returns right after.
pub fn run_if_child() -> bool {
    match std::env::var("REKON_BENCH_ROLE")
        .ok()
        .and_then(|r| Side::parse(&r))
    {
        Some(side) => {
            main(side);
            true
        }
        None => false,
    }
}

/// The child's `main`: runs the controller of `side` until told to quit.
pub fn main(side: Side) {
    let env = Env::from_env();
    let starts: Starts = Arc::default();
    let events: Starts = Arc::default();
    let requests = Arc::new(Requests::default());
    // Only the reconcile span and warnings (to stderr, e.g. a failing write) are enabled,
    // so tracing costs next to nothing on either side.
    let subscriber = tracing_subscriber::registry()
        .with(
            ReconcileSpans {
                starts: starts.clone(),
                events: events.clone(),
            }
            .with_filter(filter_fn(reconcile_span)),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(LevelFilter::WARN),
        );
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        let client = counting_client(&env.kubeconfig, requests.clone()).await;
        // Keep the controller alive until quit.
        let _running: Box<dyn std::any::Any> = match side {
            Side::Rekon => Box::new(start_rekon(&env, client).await),
            Side::Native => Box::new(start_native(&env, client, starts.clone())),
        };
        println!("started {}", wall_us());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        while let Some(line) = rx.recv().await {
            match line.trim() {
                "report" => {
                    let (rss_kib, hwm_kib) = (
                        procfs::status_kib("self", "VmRSS:"),
                        procfs::status_kib("self", "VmHWM:"),
                    );
                    let report = Report {
                        requests: requests.snapshot(),
                        reconciles: std::mem::take(
                            &mut *starts.lock().unwrap_or_else(|e| e.into_inner()),
                        ),
                        events: std::mem::take(
                            &mut *events.lock().unwrap_or_else(|e| e.into_inner()),
                        ),
                        rss_kib,
                        hwm_kib,
                        cpu_ms: procfs::cpu_ms("self"),
                    };
                    println!(
                        "{}",
                        serde_json::to_string(&report).expect("a report serialises")
                    );
                }
                "quit" => break,
                _ => {}
            }
        }
    });
    // Skip the runtime's orderly shutdown: the driver deletes the namespace next.
    std::process::exit(0);
}

async fn start_rekon(env: &Env, client: kube::Client) -> Host {
    let sandbox = Sandbox::new(sandbox::Config::default()).expect("the sandbox starts");
    let loader = Loader::new(
        sandbox,
        Artifacts::in_dir(&env.artifacts),
        sandbox::Limits::default(),
    );
    let plugin = loader.load_file(&env.plugin).expect("webapp loads");
    let host = Host::new(
        client,
        controller::Config {
            namespace: Some(env.namespace.clone()),
            max_concurrent_reconciles: env.concurrency,
            instance: "rekon-bench".into(),
            ..Default::default()
        },
    );
    host.start(plugin).await.expect("webapp starts");
    host
}

/// What the native reconciler reads besides the WebApp.
struct Ctx {
    webapps: Api<DynamicObject>,
    resource: ApiResource,
    deployments: Store<Deployment>,
    client: kube::Client,
    namespace: String,
    starts: Starts,
}

#[derive(Debug, thiserror::Error)]
enum NativeError {
    #[error("the webapp logic failed: {0:?}")]
    Logic(wit::ReconcileError),
    #[error("a mutation is not JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Kube(#[from] kube::Error),
}

/// The ApiResource of `WebApp`.
pub fn webapp_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk("rekon.dev", "v1alpha1", "WebApp"))
}

/// A kube-runtime controller: `Controller` over WebApps owning Deployments and Services
/// (metadata watches, as `owns` does), plus a reflector of Deployments for the status.
fn start_native(env: &Env, client: kube::Client, starts: Starts) -> tokio::task::JoinHandle<()> {
    let ns = env.namespace.as_str();
    let resource = webapp_resource();
    let webapps: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let (reader, writer) = reflector::store();
    let deployment_cache = watcher(deployments.clone(), watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .for_each(|_| std::future::ready(()));
    tokio::spawn(deployment_cache);
    let ctx = Arc::new(Ctx {
        webapps: webapps.clone(),
        resource: resource.clone(),
        deployments: reader,
        client,
        namespace: ns.to_owned(),
        starts,
    });
    let controller = Controller::new_with(webapps, watcher::Config::default(), resource)
        .owns(deployments, watcher::Config::default())
        .owns(services, watcher::Config::default())
        .with_config(ControllerConfig::default().concurrency(env.concurrency as u16))
        .run(reconcile_native, error_policy, ctx)
        .for_each(|_| std::future::ready(()));
    tokio::spawn(controller)
}

fn error_policy(_: Arc<DynamicObject>, error: &NativeError, _: Arc<Ctx>) -> Action {
    eprintln!("native reconcile failed: {error}");
    Action::requeue(Duration::from_millis(500))
}

/// The webapp plugin's own `reconcile`, compiled natively, and a minimal native host for
/// its output: server-side apply of each child (forced, with a controller owner reference
/// and the WebApp's namespace), then the status with the Ready condition merged in the
/// way rekon merges it, written only when it changed.
async fn reconcile_native(app: Arc<DynamicObject>, ctx: Arc<Ctx>) -> Result<Action, NativeError> {
    let name = app.name_any();
    ctx.starts
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((format!("{}/{name}", ctx.namespace), wall_us()));
    let primary = serde_json::to_value(&*app)?;
    let related: Vec<String> = ctx
        .deployments
        .get(&ObjectRef::new(&name).within(&ctx.namespace))
        .map(|d| serde_json::to_string(&*d))
        .transpose()?
        .into_iter()
        .collect();
    let out = rekon_sdk::raw::reconcile::<webapp::WebAppPlugin>(wit::Request {
        primary: primary.to_string(),
        related,
        settings: "{}".into(),
    })
    .map_err(NativeError::Logic)?;
    let owner = app
        .controller_owner_ref(&ctx.resource)
        .expect("a WebApp from the API server has a name and uid");
    let params = PatchParams::apply("webapp-native").force();
    let mut plugin_status = None;
    for m in out.mutations {
        match m {
            wit::Mutation::Apply(text) => {
                let mut child: Value = serde_json::from_str(&text)?;
                child["metadata"]["namespace"] = json!(ctx.namespace);
                child["metadata"]["ownerReferences"] = json!([owner]);
                let kind = child["kind"].as_str().unwrap_or_default();
                let child_name = child["metadata"]["name"].as_str().unwrap_or_default();
                match kind {
                    "Deployment" => {
                        Api::<Deployment>::namespaced(ctx.client.clone(), &ctx.namespace)
                            .patch(child_name, &params, &Patch::Apply(&child))
                            .await?;
                    }
                    _ => {
                        Api::<Service>::namespaced(ctx.client.clone(), &ctx.namespace)
                            .patch(child_name, &params, &Patch::Apply(&child))
                            .await?;
                    }
                }
            }
            wit::Mutation::UpdateStatus(text) => plugin_status = Some(serde_json::from_str(&text)?),
            other => unreachable!("webapp does not emit {other:?}"),
        }
    }
    let conditions: Vec<Condition> = out
        .conditions
        .into_iter()
        .map(|c| Condition {
            condition_type: c.condition_type,
            status: match c.status {
                wit::ConditionStatus::TrueStatus => ConditionStatus::True,
                wit::ConditionStatus::FalseStatus => ConditionStatus::False,
                wit::ConditionStatus::UnknownStatus => ConditionStatus::Unknown,
            },
            reason: c.reason,
            message: c.message,
        })
        .collect();
    let now = jiff_now();
    if let Some(status) = rekon_host::write::status::primary_status(
        &primary,
        plugin_status.as_ref(),
        &conditions,
        &now,
    ) {
        ctx.webapps
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await?;
    }
    Ok(Action::requeue(Duration::from_secs(300)))
}

/// Now as RFC 3339 UTC, as rekon's host writes `lastTransitionTime`.
fn jiff_now() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}
