//! Cold start memory: the peak and the retained RSS of a process that loads plugins with
//! an empty artifact cache, as `rekon run` does on its first start.
//!
//! Each scenario runs in a fresh child process (this binary, re-executed) so that peaks do
//! not mix. The child loads its plugins one after another, as the operator does, through
//! [`Loader::load_bytes`]: sniff, hash, compile, write and map the artifact, check,
//! pre-instantiate, call `metadata()`. It keeps every plugin loaded, then reports its
//! `VmHWM` (peak RSS) and `VmRSS` (what stays).
//!
//! Plugins: the five examples (webapp, nodepool, netdefaults, teardown, rollout), and
//! 100 distinct components made from them (20 of each, each with a custom section that
//! makes its bytes, sha256 and artifact its own; a plugin's name comes from its metadata,
//! so these 100 share five names: fine for the loader, which does not look at names).
//!
//! Modes (`sandbox::Config`):
//! - `before`: what the host did before compiles were bounded (compiled in the host's
//!   engine, whose compiler keeps its state; no turn, no trim; Cranelift's parallel
//!   compilation on);
//! - `trim`: bounded (one at a time, in a short-lived engine, `malloc_trim` after it),
//!   parallel compilation on;
//! - `serial`: unbounded, parallel compilation off;
//! - `after`: the defaults (bounded, parallel compilation off).
//!
//! `COLDSTART_COUNTS` (default `5,100`) and `COLDSTART_MODES` (default all four) pick the
//! scenarios; `COLDSTART_VERBOSE=1` prints RSS after each plugin; `COLDSTART_POOLING=0`
//! uses the on-demand allocator.
//!
//! Run: `cargo bench -p rekon-tests --bench coldstart` (prints figures; asserts nothing).

#[path = "shared/procfs.rs"]
#[allow(dead_code)] // `cpu_ms` serves the converge and sustain benches
mod procfs;

use rekon_host::plugin::{Artifacts, Loader, Origin};
use rekon_host::sandbox::{self, Sandbox};
use std::process::Command;
use std::time::Instant;

const EXAMPLES: [&str; 5] = ["webapp", "nodepool", "netdefaults", "teardown", "rollout"];
const MODES: [&str; 4] = ["before", "trim", "serial", "after"];

/// The component with a custom section `rekon-bench-variant` holding `i`: a distinct,
/// equally valid component.
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

fn config(mode: &str) -> sandbox::Config {
    let (bounded_compile, parallel_compilation) = match mode {
        "before" => (false, true),
        "trim" => (true, true),
        "serial" => (false, false),
        "after" => (true, false),
        other => panic!("unknown mode {other:?}: one of {MODES:?}"),
    };
    sandbox::Config {
        bounded_compile,
        parallel_compilation,
        pooling: std::env::var("COLDSTART_POOLING").map_or(true, |v| v != "0"),
        ..Default::default()
    }
}

fn components(count: usize) -> Vec<Vec<u8>> {
    let bases: Vec<Vec<u8>> = EXAMPLES
        .iter()
        .map(|p| rekon_tests::plugins::bytes(p))
        .collect();
    if count == EXAMPLES.len() {
        return bases;
    }
    (0..count)
        .map(|i| variant(&bases[i % bases.len()], i))
        .collect()
}

/// The child: loads `count` plugins cold in `mode`, prints `peak_kib rss_kib seconds`.
fn child(mode: &str, count: usize) {
    let components = components(count);
    let dir = tempfile::tempdir().expect("a temporary artifact directory");
    let loader = Loader::new(
        Sandbox::new(config(mode)).expect("the sandbox starts"),
        Artifacts::in_dir(dir.path()),
        sandbox::Limits::default(),
    );
    if std::env::var_os("COLDSTART_VERBOSE").is_some() {
        eprintln!(
            "sandbox started: peak {} rss {} KiB",
            procfs::status_kib("self", "VmHWM:"),
            procfs::status_kib("self", "VmRSS:"),
        );
    }
    let started = Instant::now();
    let loaded: Vec<_> = components
        .iter()
        .map(|bytes| {
            let plugin = loader.load_bytes(bytes).expect("the plugin loads");
            assert_eq!(plugin.origin, Origin::Compiled, "the cache started empty");
            if std::env::var_os("COLDSTART_VERBOSE").is_some() {
                eprintln!(
                    "{}: peak {} rss {} anon {} file {} KiB",
                    plugin.name(),
                    procfs::status_kib("self", "VmHWM:"),
                    procfs::status_kib("self", "VmRSS:"),
                    procfs::status_kib("self", "RssAnon:"),
                    procfs::status_kib("self", "RssFile:"),
                );
            }
            plugin
        })
        .collect();
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{} {} {seconds:.1}",
        procfs::status_kib("self", "VmHWM:"),
        procfs::status_kib("self", "VmRSS:"),
    );
    drop(loaded);
}

fn main() {
    if let (Ok(mode), Ok(count)) = (
        std::env::var("COLDSTART_CHILD_MODE"),
        std::env::var("COLDSTART_CHILD_COUNT"),
    ) {
        return child(&mode, count.parse().expect("a count"));
    }
    let counts: Vec<usize> = std::env::var("COLDSTART_COUNTS")
        .unwrap_or_else(|_| "5,100".into())
        .split(',')
        .map(|c| {
            c.trim()
                .parse()
                .expect("COLDSTART_COUNTS is a list of numbers")
        })
        .collect();
    let modes = std::env::var("COLDSTART_MODES").unwrap_or_else(|_| MODES.join(","));
    // Build the plugins once, before any child measures.
    drop(components(EXAMPLES.len()));
    println!(
        "cold start memory: plugins loaded one after another with an empty artifact cache, \
         {} cores",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "{:>8} {:>8} {:>14} {:>14} {:>9}",
        "plugins", "mode", "peak RSS MiB", "after MiB", "load s"
    );
    let me = std::env::current_exe().expect("the bench knows its path");
    for &count in &counts {
        for mode in modes.split(',') {
            let out = Command::new(&me)
                .env("COLDSTART_CHILD_MODE", mode)
                .env("COLDSTART_CHILD_COUNT", count.to_string())
                .output()
                .expect("the child runs");
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "child {mode} {count} failed: {stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let figures: Vec<f64> = stdout
                .lines()
                .last()
                .unwrap_or_default()
                .split_whitespace()
                .map(|v| v.parse().expect("a figure"))
                .collect();
            println!(
                "{count:>8} {mode:>8} {:>14.0} {:>14.0} {:>9.1}",
                figures[0] / 1024.0,
                figures[1] / 1024.0,
                figures[2]
            );
        }
    }
}
