//! Plugin load: how long loading many plugins takes with and without the precompiled
//! artifact cache, and what each loaded plugin costs in memory while idle.
//!
//! The plugins are `LOAD_PLUGINS` (default 100) distinct components: the webapp
//! component with a custom section appended that makes each one's bytes — so its sha256,
//! its artifact and its compiled code — its own. Loading one is everything `rekon run`
//! does per file: sniff, hash, compile or take the cached artifact, check the imports and
//! the contract version, pre-instantiate, call `metadata()` in a fresh instance, validate.
//!
//! - **cold**: an empty artifact directory, so each plugin is compiled (and its artifact
//!   written);
//! - **warm**: a new engine (as after a restart) over the filled directory, so each is
//!   deserialized from its artifact.
//!
//! Idle memory: in the warm process, its RSS with the plugins loaded (kept alive, no call
//! in flight) minus its RSS before loading them, per plugin; the artifact size for scale.
//! RSS is split into anonymous (private) memory and file-backed pages.
//!
//! `LOAD_PLUGINS` sets the count; `LOAD_INLINING=1` compiles with Cranelift's inliner.
//!
//! Run: `cargo bench -p rekon-tests --bench load` (prints figures; asserts nothing).

#[path = "shared/procfs.rs"]
#[allow(dead_code)] // `cpu_ms` serves the converge and sustain benches
mod procfs;

use rekon_host::plugin::{Artifacts, Loaded, Loader, Origin};
use rekon_host::sandbox::{self, Sandbox};
use std::time::{Duration, Instant};

/// The component with a custom section `rekon-bench-variant` holding `i`: a distinct,
/// equally valid component (custom sections are allowed anywhere at the top level).
fn variant(base: &[u8], i: usize) -> Vec<u8> {
    let name = b"rekon-bench-variant";
    let payload = format!("{i:08}");
    let mut content = Vec::new();
    leb128(&mut content, name.len());
    content.extend_from_slice(name);
    content.extend_from_slice(payload.as_bytes());
    let mut out = base.to_vec();
    out.push(0); // custom section id
    leb128(&mut out, content.len());
    out.extend_from_slice(&content);
    out
}

fn leb128(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// (RSS, of which anonymous) in KiB: file-backed pages are the rest.
fn rss_kib() -> (u64, u64) {
    (
        procfs::status_kib("self", "VmRSS:"),
        procfs::status_kib("self", "RssAnon:"),
    )
}

fn load_all(loader: &Loader, components: &[Vec<u8>], origin: Origin) -> (Duration, Vec<Loaded>) {
    let started = Instant::now();
    let loaded: Vec<Loaded> = components
        .iter()
        .map(|bytes| {
            let plugin = loader.load_bytes(bytes).expect("the variant loads");
            assert_eq!(plugin.origin, origin);
            plugin
        })
        .collect();
    (started.elapsed(), loaded)
}

/// The host's default engine settings; `LOAD_INLINING=1` compiles with Cranelift's
/// inliner instead.
fn config() -> sandbox::Config {
    sandbox::Config {
        inlining: std::env::var("LOAD_INLINING").is_ok_and(|v| v == "1"),
        ..Default::default()
    }
}

fn main() {
    let count: usize = std::env::var("LOAD_PLUGINS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let base = rekon_tests::plugins::bytes("webapp");
    let components: Vec<Vec<u8>> = (0..count).map(|i| variant(&base, i)).collect();
    if let Ok(dir) = std::env::var("LOAD_WARM_DIR") {
        return warm_phase(&dir, &components);
    }
    let dir = tempfile::tempdir().expect("a temporary artifact directory");
    println!(
        "plugin load: {count} distinct webapp components ({:.0} KB each), {} cores",
        base.len() as f64 / 1024.0,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );

    let cold = Loader::new(
        Sandbox::new(config()).expect("the sandbox starts"),
        Artifacts::in_dir(dir.path()),
        sandbox::Limits::default(),
    );
    let (cold_time, cold_loaded) = load_all(&cold, &components, Origin::Compiled);
    drop(cold_loaded);
    drop(cold);
    let artifact_bytes: u64 = std::fs::read_dir(dir.path())
        .expect("the artifact directory lists")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();

    // Warm: a new process (as after a restart), so the RSS it measures is not muddled by
    // the heap the cold phase left behind.
    let warm = std::process::Command::new(std::env::current_exe().expect("the bench binary"))
        .env("LOAD_WARM_DIR", dir.path())
        .env("LOAD_PLUGINS", count.to_string())
        .output()
        .expect("the warm phase runs");
    assert!(
        warm.status.success(),
        "the warm phase failed: {}",
        String::from_utf8_lossy(&warm.stderr)
    );
    let figures: Vec<f64> = String::from_utf8_lossy(&warm.stdout)
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    let [warm_secs, before, after, anon_before, anon_after] = figures[..] else {
        panic!(
            "the warm phase printed {:?}",
            String::from_utf8_lossy(&warm.stdout)
        )
    };
    let warm_time = Duration::from_secs_f64(warm_secs);
    let per_plugin = (after - before).max(0.0) / count as f64 / 1024.0;
    let anon_per_plugin = (anon_after - anon_before).max(0.0) / count as f64 / 1024.0;

    println!(
        "cold (compile):              {:>8.2} s total, {:>7.1} ms per plugin",
        cold_time.as_secs_f64(),
        cold_time.as_secs_f64() * 1e3 / count as f64
    );
    println!(
        "warm (precompiled artifact): {:>8.3} s total, {:>7.2} ms per plugin   target ≤ 1 s total: {}",
        warm_time.as_secs_f64(),
        warm_time.as_secs_f64() * 1e3 / count as f64,
        if warm_time <= Duration::from_secs(1) {
            "met"
        } else {
            "missed"
        }
    );
    println!(
        "idle memory per loaded plugin: {per_plugin:.2} MiB RSS, of which {anon_per_plugin:.2} MiB anonymous, the rest file-backed (process {:.1} → {:.1} MiB; artifact {:.2} MiB on disk)   target ≤ 2 MiB: {}",
        before / 1024.0,
        after / 1024.0,
        artifact_bytes as f64 / count as f64 / (1 << 20) as f64,
        if per_plugin <= 2.0 { "met" } else { "missed" }
    );
}

/// The warm phase, in its own process: loads every component from the artifacts in
/// `dir` and prints the time taken (s) and the RSS before and after (KiB).
fn warm_phase(dir: &str, components: &[Vec<u8>]) {
    // The engine's own fixed cost (the pool's reservation) is outside the figures.
    let loader = Loader::new(
        Sandbox::new(config()).expect("the sandbox starts"),
        Artifacts::in_dir(dir),
        sandbox::Limits::default(),
    );
    let before = rss_kib();
    let (time, loaded) = load_all(&loader, components, Origin::Cached);
    let after = rss_kib();
    println!(
        "{} {} {} {} {}",
        time.as_secs_f64(),
        before.0,
        after.0,
        before.1,
        after.1
    );
    drop(loaded);
}
