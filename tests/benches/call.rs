//! Per-call cost of a reconcile: the webapp plugin's logic as a native Rust function
//! against the same logic compiled to wasm and called in the sandbox with a fresh
//! instance per call (the host's isolation model), for a ~4 KB primary.
//!
//! Both paths do the same work: parse the request JSON, decide, serialise the output.
//! The wasm path also instantiates, copies across the boundary and runs the host's
//! output checks.
//!
//! Run: `cargo bench -p rekon-tests --bench call` (prints figures; asserts nothing).

use rekon_host::contract::Request;
use rekon_host::plugin::{Artifacts, Loader};
use rekon_host::sandbox::{self, Clock, NoCache, Sandbox};
use rekon_sdk::raw::wit;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

const ROUNDS: usize = 15;
const CALLS: usize = 200;

fn primary() -> String {
    let annotations: serde_json::Map<String, serde_json::Value> = (0..40)
        .map(|i| (format!("example.com/note-{i:02}"), json!("x".repeat(70))))
        .collect();
    json!({
        "apiVersion": "rekon.dev/v1alpha1", "kind": "WebApp",
        "metadata": {
            "name": "web", "namespace": "shop", "uid": "0b6a5c1e-0000-4000-8000-000000000001",
            "resourceVersion": "100", "generation": 3,
            "labels": {"app": "web", "team": "storefront", "tier": "frontend"},
            "annotations": annotations,
        },
        "spec": {"image": "nginx:1.27", "replicas": 3, "port": 8080},
    })
    .to_string()
}

/// Median over rounds of the mean time per call in a round.
fn measure(mut f: impl FnMut()) -> Duration {
    for _ in 0..CALLS {
        f();
    }
    let mut rounds: Vec<Duration> = (0..ROUNDS)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..CALLS {
                f();
            }
            start.elapsed() / CALLS as u32
        })
        .collect();
    rounds.sort();
    rounds[ROUNDS / 2]
}

fn main() {
    let primary = primary();
    let wasm = rekon_tests::plugins::path("webapp");
    println!(
        "reconcile call cost: webapp plugin, {:.1} KB primary, {ROUNDS} rounds × {CALLS} calls, median of round means",
        primary.len() as f64 / 1024.0
    );

    let native_req = wit::Request {
        primary: primary.clone(),
        related: vec![],
        settings: "{}".into(),
    };
    let native = measure(|| {
        let out = rekon_sdk::raw::reconcile::<webapp::WebAppPlugin>(native_req.clone());
        assert!(out.is_ok());
    });

    let sandbox = Sandbox::new(sandbox::Config::default()).expect("sandbox");
    let loader = Loader::new(sandbox, Artifacts::none(), sandbox::Limits::default());
    let plugin = loader.load_file(&wasm).expect("webapp loads");
    let req = Request {
        primary: primary.clone(),
        related: vec![],
        settings: "{}".into(),
    };
    let cache: Arc<dyn sandbox::CacheView> = Arc::new(NoCache);
    let fresh = measure(|| {
        let call = plugin.reconcile(&req, Clock::System, cache.clone());
        assert!(call.result.is_ok(), "{:?}", call.result.err());
    });

    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "{:<52} {:>9.1} µs   1.00×",
        "native Rust function (same logic, same JSON)",
        us(native)
    );
    println!(
        "{:<52} {:>9.1} µs   {:.2}× native",
        "wasm, fresh instance per call (pooling, epoch)",
        us(fresh),
        us(fresh) / us(native)
    );
}
