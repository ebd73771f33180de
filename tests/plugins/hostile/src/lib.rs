//! A rekon plugin that misbehaves on demand, to test the host's sandbox.
//!
//! Primary kind `v1 ConfigMap`; it may write ConfigMaps and reads nothing else. The
//! primary's `data.mode` picks the behaviour:
//!
//! | mode | behaviour |
//! | --- | --- |
//! | absent | does nothing (so the plugin can run live beside others without cascading) |
//! | `ok` | applies ConfigMap `<name>-out` with the primary's data minus `mode` (so the copy, a ConfigMap too, does nothing) |
//! | `loop` | spins forever without calling the host |
//! | `alloc` | allocates and touches 1 MiB blocks forever |
//! | `panic` | `panic!("hostile panic")` |
//! | `unreachable` | executes the wasm `unreachable` instruction |
//! | `recurse` | recurses without bound with frames in linear memory (overflows the shadow stack the guest keeps there, or the wasm stack, whichever comes first) |
//! | `deep-recurse` | recurses without bound with nothing in linear memory, so only the wasm stack (the host's `max_wasm_stack`) can stop it |
//! | `count` | increments a global counter and reports it: event `Counted` with note `calls=<n>` |
//! | `giant-output` | applies a ConfigMap holding `data.bytes` bytes (default 64 MiB) |
//! | `undeclared-write` | applies a `v1 Secret` (a kind it did not declare) |
//! | `other-namespace` | applies ConfigMap `<name>-out` into namespace `data.namespace` (default `kube-system`), outside its primary's |
//! | `list` | lists every cached ConfigMap; event `Listed` with the count, or `ListRefused` with the error |
//! | `read-secret` | reads a `v1 Secret` from the cache; event `ReadRefused` with the error, or `ReadAllowed` |
//! | `fs` | reads `/etc/hostname` and lists `/`; event `FsDenied` with the errors, or `FsGranted` (`ACCESS GRANTED: …`) |
//! | `socket` | connects TCP to `127.0.0.1:6443` and binds UDP; event `SocketDenied` / `SocketGranted` likewise |
//! | `env` | event `Env` with note `vars=<count> args=<list>` |
//! | `bad-json` | returns an `apply` whose JSON is `{not json` |
//! | `event-without-reason` / `event-note-too-long` | returns an event with an empty reason / a 2 KiB note |
//! | `condition-without-type` / `condition-without-reason` | returns a condition with an empty type / reason |
//! | `apply-without-api-version` / `apply-without-kind` | applies ConfigMap `<name>-out` without its `apiVersion` / `kind` |
//! | `stdout` | prints `data.bytes` bytes (default 10 MiB) to stdout, then succeeds with event `Printed` |
//! | `error-transient` / `error-permanent` | returns that error (`hostile transient error` / `hostile permanent error`) |
//! | `slow` | busy-waits `data.ms` milliseconds (default 100) by the host clock, then succeeds with event `Slept` |
//!
//! Any other mode is a permanent error naming it.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rekon_sdk::bindings::exports::rekon::plugin::guest::Guest;
use rekon_sdk::k8s_openapi::api::core::v1::{ConfigMap, Secret};
use rekon_sdk::raw::{self, wit};
use rekon_sdk::{Error, EventType, Metadata, Output, Plugin, Request};

mod probes;

/// The plugin, for every mode that returns through the typed API.
pub struct Hostile;

impl Plugin for Hostile {
    fn metadata() -> Metadata {
        Metadata::new::<ConfigMap>("hostile", env!("CARGO_PKG_VERSION")).writes::<ConfigMap>()
    }

    fn reconcile(req: Request) -> Result<Output, Error> {
        let primary: ConfigMap = req.primary()?;
        let data = primary.data.unwrap_or_default();
        let number = |key: &str, default: u64| {
            data.get(key)
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        let out = Output::new();
        match data.get("mode").map_or("none", String::as_str) {
            "none" => Ok(out),
            "ok" => {
                let mut copy = data.clone();
                copy.remove("mode");
                Ok(out.apply(&config_map(&req, "out", copy)))
            }
            "loop" => spin(),
            "alloc" => hoard(),
            "panic" => panic!("hostile panic"),
            "unreachable" => trap(),
            "recurse" => Ok(out.event(EventType::Normal, "Recursed", recurse(0).to_string())),
            "deep-recurse" => Ok(out.event(
                EventType::Normal,
                "Recursed",
                descend(0, number("depth", u64::MAX)).to_string(),
            )),
            "count" => {
                let calls = CALLS.fetch_add(1, Ordering::Relaxed) + 1;
                Ok(out.event(EventType::Normal, "Counted", format!("calls={calls}")))
            }
            "giant-output" => {
                let blob =
                    "x".repeat(usize::try_from(number("bytes", 64 << 20)).unwrap_or(usize::MAX));
                Ok(out.apply(&config_map(
                    &req,
                    "out",
                    BTreeMap::from([("blob".to_owned(), blob)]),
                )))
            }
            "other-namespace" => {
                let mut cm = config_map(&req, "out", BTreeMap::new());
                cm.metadata.namespace = Some(
                    data.get("namespace")
                        .map_or("kube-system", String::as_str)
                        .to_owned(),
                );
                Ok(out.apply(&cm))
            }
            "undeclared-write" => {
                let secret = Secret {
                    metadata: req.child_meta(format!("{}-secret", req.name())),
                    ..Secret::default()
                };
                Ok(out.apply(&secret))
            }
            "list" => Ok(match rekon_sdk::cache::list::<ConfigMap>(None, None) {
                Ok(all) => out.event(
                    EventType::Normal,
                    "Listed",
                    format!("{} objects", all.len()),
                ),
                Err(e) => out.event(EventType::Warning, "ListRefused", e.to_string()),
            }),
            "read-secret" => Ok(
                match rekon_sdk::cache::get::<Secret>(req.namespace(), "any") {
                    Err(e) => out.event(EventType::Warning, "ReadRefused", e.to_string()),
                    Ok(found) => out.event(
                        EventType::Warning,
                        "ReadAllowed",
                        format!("ACCESS GRANTED: found={}", found.is_some()),
                    ),
                },
            ),
            "fs" => Ok(probes::report(out, "Fs", probes::filesystem())),
            "socket" => Ok(probes::report(out, "Socket", probes::sockets())),
            "env" => Ok(out.event(EventType::Normal, "Env", probes::environment())),
            "stdout" => Ok(out.event(
                EventType::Normal,
                "Printed",
                probes::flood_stdout(number("bytes", 10 << 20)),
            )),
            "error-transient" => Err(Error::transient("hostile transient error")),
            "error-permanent" => Err(Error::permanent("hostile permanent error")),
            "slow" => {
                let waited = busy_wait(Duration::from_millis(number("ms", 100)));
                Ok(out.event(EventType::Normal, "Slept", format!("{waited} ms")))
            }
            other => Err(Error::permanent(format!("unknown mode {other:?}"))),
        }
    }
}

/// The component's export: [`Hostile`] through the SDK's adapter, except `bad-json`,
/// which no typed API can produce.
pub struct HostileGuest;

impl Guest for HostileGuest {
    fn metadata() -> wit::PluginMetadata {
        raw::metadata::<Hostile>()
    }

    fn reconcile(request: wit::Request) -> Result<wit::Output, wit::ReconcileError> {
        let primary: serde_json::Value = serde_json::from_str(&request.primary).unwrap_or_default();
        let mode = primary["data"]["mode"].as_str().unwrap_or_default();
        let name = primary["metadata"]["name"].as_str().unwrap_or_default();
        untyped(mode, name).map_or_else(|| raw::reconcile::<Hostile>(request), Ok)
    }

    fn finalize(request: wit::Request) -> Result<wit::Output, wit::ReconcileError> {
        raw::finalize::<Hostile>(request)
    }

    fn map_to_primaries(kind: wit::Gvk, object: String) -> Vec<wit::ObjectKey> {
        raw::map_to_primaries::<Hostile>(kind, object)
    }
}

/// The output of a mode no typed API can produce, for the primary `name`.
fn untyped(mode: &str, name: &str) -> Option<wit::Output> {
    let mut out = wit::Output {
        mutations: Vec::new(),
        requeue_after_ms: None,
        events: Vec::new(),
        conditions: Vec::new(),
        prune: false,
    };
    let event = |reason: &str, note: String| wit::Event {
        event_type: wit::EventType::Normal,
        reason: reason.to_owned(),
        note,
    };
    let condition = |condition_type: &str, reason: &str| wit::Condition {
        condition_type: condition_type.to_owned(),
        status: wit::ConditionStatus::TrueStatus,
        reason: reason.to_owned(),
        message: "hostile".to_owned(),
    };
    let mut object = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": format!("{name}-out") },
    });
    match mode {
        "bad-json" => out
            .mutations
            .push(wit::Mutation::Apply("{not json".to_owned())),
        "event-without-reason" => out.events.push(event("", "no reason".to_owned())),
        "event-note-too-long" => out.events.push(event("Long", "x".repeat(2048))),
        "condition-without-type" => out.conditions.push(condition("", "Hostile")),
        "condition-without-reason" => out.conditions.push(condition("Ready", "")),
        "apply-without-api-version" | "apply-without-kind" => {
            let field = if mode == "apply-without-kind" {
                "kind"
            } else {
                "apiVersion"
            };
            object.as_object_mut()?.remove(field);
            out.mutations.push(wit::Mutation::Apply(object.to_string()));
        }
        _ => return None,
    }
    Some(out)
}

#[cfg(target_arch = "wasm32")]
rekon_sdk::bindings::export_guest!(HostileGuest with_types_in rekon_sdk::bindings);

fn config_map(req: &Request, suffix: &str, data: BTreeMap<String, String>) -> ConfigMap {
    ConfigMap {
        metadata: req.child_meta(format!("{}-{suffix}", req.name())),
        data: Some(data),
        ..ConfigMap::default()
    }
}

fn spin() -> ! {
    let mut i = 0u64;
    loop {
        i = black_box(i.wrapping_add(1));
    }
}

fn hoard() -> ! {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut block = vec![0u8; 1 << 20];
        for page in block.iter_mut().step_by(4096) {
            *page = 1;
        }
        hoard.push(black_box(block));
    }
}

#[cfg(target_arch = "wasm32")]
fn trap() -> ! {
    core::arch::wasm32::unreachable()
}

#[cfg(not(target_arch = "wasm32"))]
fn trap() -> ! {
    panic!("`unreachable` mode traps only on wasm32")
}

/// Calls of `count` this instance has seen.
static CALLS: AtomicU64 = AtomicU64::new(0);

/// Recurses `limit - n` deep. Only integers, no address taken: everything lives in wasm
/// locals and the wasm stack, none in the shadow stack in linear memory. The rotation
/// after the call keeps it from being turned into a loop.
#[inline(never)]
fn descend(n: u64, limit: u64) -> u64 {
    if n >= limit {
        return n;
    }
    descend(n + 1, limit).rotate_left(7) ^ n
}

#[inline(never)]
fn recurse(depth: u64) -> u64 {
    let frame = black_box([depth; 32]);
    if black_box(depth) == u64::MAX {
        return 0;
    }
    recurse(depth + 1).wrapping_add(frame[7])
}

/// Spins until `wait` has passed on the host clock; returns the milliseconds waited.
fn busy_wait(wait: Duration) -> i64 {
    let start = rekon_sdk::clock::now();
    let wait = i64::try_from(wait.as_millis()).unwrap_or(i64::MAX);
    loop {
        let waited = rekon_sdk::clock::now() - start;
        if waited >= wait {
            return waited;
        }
    }
}
