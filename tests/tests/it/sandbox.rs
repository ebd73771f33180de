//! The sandbox against real compiled plugins: isolation, limits, refusals, and the
//! `rekon check` / `rekon test` commands. No API server needed.

use rekon_host::contract::{Output, Request};
use rekon_host::plugin::{self, Artifacts, Fault, Loaded, Loader};
use rekon_host::sandbox::{self, Clock, NoCache, Sandbox};
use rekon_host::write::check;
use rekon_tests::{binary, plugins};
use serde_json::json;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

fn sandbox() -> Sandbox {
    static SANDBOX: OnceLock<Sandbox> = OnceLock::new();
    SANDBOX
        .get_or_init(|| Sandbox::new(sandbox::Config::default()).expect("sandbox starts"))
        .clone()
}

fn limits() -> sandbox::Limits {
    sandbox::Limits {
        memory_bytes: 32 << 20,
        time_budget: Duration::from_secs(1),
        ..Default::default()
    }
}

fn loader() -> Loader {
    let dir = plugins::target_dir().join("rekon-test-artifacts");
    Loader::new(sandbox(), Artifacts::in_dir(dir), limits())
}

fn hostile() -> &'static Loaded {
    static HOSTILE: OnceLock<Loaded> = OnceLock::new();
    HOSTILE.get_or_init(|| {
        loader()
            .load_file(&plugins::path("hostile-plugin"))
            .expect("the hostile plugin loads")
    })
}

/// A request for a ConfigMap whose `data` tells the hostile plugin what to do.
fn hostile_request(data: serde_json::Value) -> Request {
    let primary = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "victim", "namespace": "default", "resourceVersion": "1"},
        "data": data,
    });
    Request {
        primary: primary.to_string(),
        related: vec![],
        settings: "{}".into(),
    }
}

/// Reconciles a ConfigMap whose `data` tells the hostile plugin what to do.
fn run_hostile(data: serde_json::Value) -> Result<Output, Fault> {
    hostile()
        .reconcile(&hostile_request(data), Clock::System, Arc::new(NoCache))
        .result
}

fn event_notes(out: &Output) -> String {
    out.events
        .iter()
        .map(|e| e.note.as_str())
        .collect::<Vec<_>>()
        .join(" | ")
}

fn refusal(bytes: &[u8]) -> plugin::Error {
    match loader().load_bytes(bytes) {
        Ok(p) => panic!("{} was loaded but should be refused", p.name()),
        Err(e) => e,
    }
}

#[test]
fn webapp_cases_pass_in_the_real_sandbox() {
    let plugin = rekon_host::testing::load(&plugins::path("webapp")).expect("webapp loads");
    let cases = plugins::workspace().join("plugins/webapp/cases");
    let reports = rekon_host::testing::run_dir(&plugin, &cases).expect("cases are valid");
    assert!(reports.len() >= 3, "expected at least 3 webapp cases");
    assert!(
        reports.iter().all(|r| r.passed()),
        "{}",
        rekon_host::testing::render(&reports)
    );
}

#[test]
fn rekon_check_prints_the_webapp_declaration_and_permissions() {
    let out = std::process::Command::new(binary::rekon())
        .arg("check")
        .arg(plugins::path("webapp"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("primary    rekon.dev/v1alpha1 WebApp"),
        "{stdout}"
    );
    assert!(
        stdout.contains("apps/v1 Deployment (by owner reference)"),
        "{stdout}"
    );
    assert!(stdout.contains("deployments"), "{stdout}");
    assert!(stdout.contains("webapps/status"), "{stdout}");
    assert!(stdout.contains("16 events, 32 conditions"), "{stdout}");
}

#[test]
fn rekon_check_names_the_reason_a_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"#!/bin/sh\necho hi\n").unwrap();
    let out = std::process::Command::new(binary::rekon())
        .arg("check")
        .arg(&junk)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("junk.wasm") && stderr.contains("not a WebAssembly file"),
        "{stderr}"
    );
}

#[test]
fn rekon_test_with_a_wrong_expectation_prints_a_diff_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let good = plugins::workspace().join("plugins/webapp/cases");
    let first = std::fs::read_dir(&good)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .min()
        .expect("webapp has cases");
    let mut case: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&first).unwrap()).unwrap();
    // Expect one mutation that cannot be right.
    case["expect"]["mutations"] = serde_yaml::from_str(
        "[{apply: {apiVersion: apps/v1, kind: Deployment, spec: {replicas: 4242}}}]",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("wrong.yaml"),
        serde_yaml::to_string(&case).unwrap(),
    )
    .unwrap();
    let out = std::process::Command::new(binary::rekon())
        .arg("test")
        .arg(plugins::path("webapp"))
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("FAIL"), "{stdout}");
    assert!(
        stdout.contains("-      replicas: 4242"),
        "no diff line for replicas:\n{stdout}"
    );
    assert!(
        stdout.contains("+      replicas: 3"),
        "no diff line for replicas:\n{stdout}"
    );
    assert!(stdout.contains("0 passed, 1 failed"), "{stdout}");
}

#[test]
fn rekon_test_with_no_case_is_an_error_not_a_pass() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not a case").unwrap();
    let out = std::process::Command::new(binary::rekon())
        .arg("test")
        .arg(plugins::path("webapp"))
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    assert!(stderr.contains("holds no .yaml or .yml case"), "{stderr}");
    assert!(!stdout.contains("passed"), "{stdout}");
}

#[test]
fn rekon_test_passes_the_webapp_cases() {
    let out = std::process::Command::new(binary::rekon())
        .arg("test")
        .arg(plugins::path("webapp"))
        .arg(plugins::workspace().join("plugins/webapp/cases"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(" 0 failed"), "{stdout}");
}

/// Runs a probing mode of the hostile plugin and checks it reported a refusal.
fn assert_probe_denied(mode: &str) {
    let out = run_hostile(json!({"mode": mode})).expect("the plugin reports, not traps");
    let notes = event_notes(&out);
    assert!(!notes.is_empty(), "the {mode} mode reports what happened");
    assert!(!notes.contains("ACCESS GRANTED"), "{notes}");
}

#[test]
fn a_plugin_gets_an_error_not_access_when_it_opens_a_file() {
    assert_probe_denied("fs");
}

#[test]
fn a_plugin_gets_an_error_not_access_when_it_opens_a_socket() {
    assert_probe_denied("socket");
}

#[test]
fn a_plugin_sees_an_empty_environment() {
    let out = run_hostile(json!({"mode": "env"})).expect("the plugin reports");
    let notes = event_notes(&out);
    assert!(notes.contains("vars=0"), "{notes}");
    assert!(notes.contains("args=[]"), "no arguments either: {notes}");
}

#[test]
fn a_plugin_reading_an_undeclared_kind_is_refused_by_the_cache() {
    let out = run_hostile(json!({"mode": "read-secret"})).expect("the plugin reports");
    let notes = event_notes(&out);
    assert!(
        notes.contains("v1 Secret is not among the kinds"),
        "{notes}"
    );
}

/// A cache answering every ConfigMap list with `count` references to one shared object:
/// a list as large as a cluster's, held in a few KiB. Counts the JSON bytes it copies out.
struct HugeCache {
    object: Arc<str>,
    count: usize,
    copied: std::sync::atomic::AtomicUsize,
    unbounded_lists: std::sync::atomic::AtomicUsize,
}

impl HugeCache {
    fn new(count: usize, object_bytes: usize) -> Self {
        let object = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "big", "namespace": "default"},
            "data": {"blob": "x".repeat(object_bytes)},
        });
        Self {
            object: object.to_string().into(),
            count,
            copied: Default::default(),
            unbounded_lists: Default::default(),
        }
    }

    fn copy_all(&self) -> Vec<String> {
        use std::sync::atomic::Ordering::Relaxed;
        self.copied
            .fetch_add(self.count * self.object.len(), Relaxed);
        vec![self.object.to_string(); self.count]
    }
}

impl sandbox::CacheView for HugeCache {
    fn get(&self, _: &rekon_host::contract::Gvk, _: Option<&str>, _: &str) -> Option<String> {
        None
    }
    fn list(
        &self,
        _: &rekon_host::contract::Gvk,
        _: Option<&str>,
        _: &rekon_host::selector::Selector,
    ) -> Vec<String> {
        use std::sync::atomic::Ordering::Relaxed;
        self.unbounded_lists.fetch_add(1, Relaxed);
        self.copy_all()
    }
    // As the controller's stores do: count first, copy only what fits.
    fn list_within(
        &self,
        _: &rekon_host::contract::Gvk,
        _: Option<&str>,
        _: &rekon_host::selector::Selector,
        max_bytes: usize,
    ) -> Result<Vec<String>, sandbox::TooLarge> {
        let mut budget = sandbox::ListBudget::new(self.count, max_bytes);
        for _ in 0..self.count {
            budget.add(self.object.len())?;
        }
        Ok(self.copy_all())
    }
}

fn run_hostile_list(cache: Arc<HugeCache>) -> Result<Output, Fault> {
    let primary = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "victim", "namespace": "default", "resourceVersion": "1"},
        "data": {"mode": "list"},
    });
    let req = Request {
        primary: primary.to_string(),
        related: vec![],
        settings: "{}".into(),
    };
    hostile().reconcile(&req, Clock::System, cache).result
}

#[test]
fn a_list_larger_than_the_memory_cap_is_refused_before_the_host_copies_it() {
    use std::sync::atomic::Ordering::Relaxed;
    // 10 000 objects of 16 KiB: 160 MiB of JSON against a 32 MiB cap.
    let cache = Arc::new(HugeCache::new(10_000, 16 << 10));
    let err = run_hostile_list(cache.clone()).unwrap_err();
    let Fault::Sandbox(sandbox::Error::ListTooLarge { kind, refused }) = &err else {
        panic!("expected ListTooLarge, got {err:?}");
    };
    assert_eq!(kind, "v1 ConfigMap");
    assert_eq!(refused.matched, 10_000);
    assert_eq!(refused.max_bytes, 32 << 20, "the plugin's memory cap");
    assert!(
        refused.counted < 10_000 && refused.bytes > 32 << 20,
        "{refused:?}"
    );
    let message = err.to_string();
    for part in ["v1 ConfigMap", "10000 objects", &(32u64 << 20).to_string()] {
        assert!(message.contains(part), "{message:?} names {part}");
    }
    assert_eq!(cache.copied.load(Relaxed), 0, "no object was copied");
    assert_eq!(
        cache.unbounded_lists.load(Relaxed),
        0,
        "the unbounded list is never used"
    );
}

#[test]
fn a_list_within_the_memory_cap_reaches_the_plugin() {
    let cache = Arc::new(HugeCache::new(10, 16 << 10));
    let out = run_hostile_list(cache).expect("the plugin reports");
    assert_eq!(event_notes(&out), "10 objects");
}

#[test]
fn an_endless_loop_is_stopped_by_the_time_budget() {
    let started = std::time::Instant::now();
    let err = run_hostile(json!({"mode": "loop"})).unwrap_err();
    assert!(
        matches!(err, Fault::Sandbox(sandbox::Error::Timeout { .. })),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "stopped promptly"
    );
}

#[test]
fn another_plugins_call_runs_while_a_looping_plugin_holds_every_cpu_turn() {
    // One CPU turn; the hostile plugin's two looping calls want it for their whole 1 s
    // budget each. Another plugin's call that arrives meanwhile must get the turn at the
    // next epoch tick and finish first, not wait for a loop to time out.
    let one_core = Sandbox::new(sandbox::Config {
        pool_instances: 4,
        cpus: 1,
        ..Default::default()
    })
    .expect("sandbox starts");
    let cpu = one_core.cpu().expect("CPU turns are on").clone();
    let dir = plugins::target_dir().join("rekon-test-artifacts");
    let loader = Loader::new(one_core, Artifacts::in_dir(dir), limits());
    let hostile = loader
        .load_file(&plugins::path("hostile-plugin"))
        .expect("the hostile plugin loads");
    let webapp = loader
        .load_file(&plugins::path("webapp"))
        .expect("webapp loads");
    let (done, finished) = std::sync::mpsc::channel();
    for _ in 0..2 {
        let (hostile, done) = (hostile.clone(), done.clone());
        std::thread::spawn(move || {
            let call = hostile.reconcile(
                &hostile_request(json!({"mode": "loop"})),
                Clock::System,
                Arc::new(NoCache),
            );
            let _ = done.send(("loop", call.result.map(|_| ())));
        });
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while cpu.held(hostile.name()) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "a loop call never ran"
        );
        std::thread::yield_now();
    }
    std::thread::spawn(move || {
        // Any quick call does: webapp answers a ConfigMap with an error at once.
        let call = webapp.reconcile(
            &hostile_request(json!({})),
            Clock::System,
            Arc::new(NoCache),
        );
        let _ = done.send(("webapp", call.result.map(|_| ())));
    });
    let order: Vec<_> = (0..3)
        .map(|_| {
            finished
                .recv_timeout(Duration::from_secs(60))
                .expect("every call ends")
        })
        .collect();
    assert_eq!(order[0].0, "webapp", "webapp waited for a loop: {order:?}");
    for (who, result) in &order[1..] {
        assert_eq!(*who, "loop");
        assert!(
            matches!(result, Err(Fault::Sandbox(sandbox::Error::Timeout { .. }))),
            "a loop call ends at its budget of time run: {result:?}"
        );
    }
    assert!(cpu.handovers() >= 1, "the loop handed its turn over");
}

#[test]
fn unbounded_allocation_is_stopped_by_the_memory_cap() {
    let err = run_hostile(json!({"mode": "alloc"})).unwrap_err();
    match err {
        Fault::Sandbox(sandbox::Error::OutOfMemory { limit, .. }) => assert_eq!(limit, 32 << 20),
        other => panic!("expected OutOfMemory, got {other:?}"),
    }
}

#[test]
fn unbounded_recursion_on_the_wasm_stack_is_stopped_as_a_stack_overflow() {
    let err = run_hostile(json!({"mode": "deep-recurse"})).unwrap_err();
    assert!(
        matches!(err, Fault::Sandbox(sandbox::Error::StackOverflow)),
        "{err:?}"
    );
    assert_eq!(err.metric_label(), "stack_overflow");
}

#[test]
fn the_wasm_stack_limit_is_the_configured_max_wasm_stack() {
    // 10 000 frames of a small function: well within the default 1 MiB, far over 64 KiB.
    let depth = json!({"mode": "deep-recurse", "depth": "10000"});
    let out = run_hostile(depth.clone()).expect("within the default stack");
    assert!(!event_notes(&out).is_empty());
    let small = Sandbox::new(sandbox::Config {
        pool_instances: 2,
        max_wasm_stack: 64 << 10,
        ..Default::default()
    })
    .expect("sandbox starts");
    let dir = plugins::target_dir().join("rekon-test-artifacts");
    let hostile = Loader::new(small, Artifacts::in_dir(dir), limits())
        .load_file(&plugins::path("hostile-plugin"))
        .expect("the hostile plugin loads");
    let err = hostile
        .reconcile(&hostile_request(depth), Clock::System, Arc::new(NoCache))
        .result
        .unwrap_err();
    assert!(
        matches!(err, Fault::Sandbox(sandbox::Error::StackOverflow)),
        "{err:?}"
    );
}

#[test]
fn every_call_gets_a_fresh_instance_with_its_globals_at_zero() {
    for call in 0..5 {
        let out = run_hostile(json!({"mode": "count"})).expect("the plugin counts");
        assert_eq!(
            event_notes(&out),
            "calls=1",
            "call {call} saw a global another call incremented"
        );
    }
}

#[test]
fn events_and_conditions_without_a_reason_or_type_are_refused() {
    for (mode, what, reason) in [
        ("event-without-reason", "event 0", "reason must be"),
        ("event-note-too-long", "event 0", "note is 2048 bytes"),
        ("condition-without-type", "condition 0", "must not be empty"),
        (
            "condition-without-reason",
            "condition 0",
            "must not be empty",
        ),
    ] {
        let err = run_hostile(json!({"mode": mode})).unwrap_err();
        assert_eq!(err.metric_label(), "bad_record", "{mode}: {err}");
        let msg = err.to_string();
        assert!(msg.contains(what) && msg.contains(reason), "{mode}: {msg}");
    }
}

#[test]
fn an_object_without_an_api_version_or_kind_is_refused() {
    for (mode, field) in [
        ("apply-without-api-version", "apiVersion"),
        ("apply-without-kind", "kind"),
    ] {
        let err = run_hostile(json!({"mode": mode})).unwrap_err();
        assert!(
            matches!(
                &err,
                Fault::InvalidOutput(check::Error::MalformedObject { index: 0, .. })
            ),
            "{mode}: {err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains(field),
            "{mode}: the missing field is named: {msg}"
        );
    }
    // The same object with both is accepted: the refusal is about the missing field.
    let out = run_hostile(json!({"mode": "ok"})).expect("a complete object is accepted");
    assert_eq!(out.mutations.len(), 1);
}

#[test]
fn a_mutation_for_an_undeclared_kind_is_refused() {
    let err = run_hostile(json!({"mode": "undeclared-write"})).unwrap_err();
    match err {
        Fault::InvalidOutput(check::Error::UndeclaredKind { kind, .. }) => {
            assert_eq!(kind.kind, "Secret")
        }
        other => panic!("expected UndeclaredKind, got {other:?}"),
    }
}

#[test]
fn malformed_and_oversized_output_is_refused() {
    let err = run_hostile(json!({"mode": "bad-json"})).unwrap_err();
    assert_eq!(err.metric_label(), "malformed_json", "{err}");
    let err = run_hostile(json!({"mode": "giant-output", "bytes": (4u64 << 20).to_string()}))
        .unwrap_err();
    assert_eq!(err.metric_label(), "too_large", "{err}");
}

#[test]
fn a_trap_in_one_call_does_not_affect_the_next_call() {
    let err = run_hostile(json!({"mode": "panic"})).unwrap_err();
    match &err {
        Fault::Sandbox(sandbox::Error::Trapped { last_error_log, .. }) => {
            let msg = last_error_log.as_deref().unwrap_or_default();
            assert!(
                msg.contains("hostile panic"),
                "panic message surfaced: {msg:?}"
            );
        }
        other => panic!("expected a trap, got {other:?}"),
    }
    let out = run_hostile(json!({"mode": "ok"})).expect("the next call works");
    assert_eq!(out.mutations.len(), 1);
    let err = run_hostile(json!({"mode": "unreachable"})).unwrap_err();
    assert_eq!(err.metric_label(), "trap");
    run_hostile(json!({"mode": "ok"})).expect("and again after unreachable");
}

#[test]
fn guest_errors_stay_distinct_from_sandbox_failures() {
    let err = run_hostile(json!({"mode": "error-transient"})).unwrap_err();
    assert_eq!(err.metric_label(), "guest_transient");
    let err = run_hostile(json!({"mode": "error-permanent"})).unwrap_err();
    assert_eq!(err.metric_label(), "guest_permanent");
}

#[test]
fn excess_stdout_is_dropped_not_fatal() {
    let call = hostile().reconcile(
        &Request {
            primary: json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"n","namespace":"d"},"data":{"mode":"stdout","bytes":"1048576"}})
                .to_string(),
            related: vec![],
            settings: "{}".into(),
        },
        Clock::System,
        Arc::new(NoCache),
    );
    call.result.expect("printing a lot does not fail the call");
    assert!(call.logs_dropped > 0, "output beyond the cap was dropped");
    let kept: usize = call.logs.iter().map(|l| l.message.len()).sum();
    assert!(kept <= limits().log_bytes * 2, "kept {kept} bytes");
}

#[test]
fn a_component_importing_a_foreign_interface_is_refused_naming_it() {
    let err = refusal(&plugins::bytes("foreign-import-plugin"));
    assert!(
        matches!(err, plugin::Error::ForbiddenImport { .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("evil:"), "the import is named: {msg}");
}

#[test]
fn a_component_for_another_contract_version_is_refused_naming_both_versions() {
    let err = refusal(&plugins::bytes("future-version-plugin"));
    let msg = err.to_string();
    assert!(
        msg.contains("rekon:plugin@9.0.0") && msg.contains("rekon:plugin@0.1.x"),
        "{msg}"
    );
}

#[test]
fn a_component_missing_an_export_is_refused() {
    let err = refusal(&plugins::bytes("missing-export-plugin"));
    // The reason names the function the component lacks.
    assert!(
        matches!(&err, plugin::Error::MissingExport { name } if name.contains("reconcile")),
        "{err:?}: {err}"
    );
    assert!(err.to_string().contains("reconcile"), "{err}");
}

#[test]
fn core_modules_and_non_wasm_files_are_refused_with_the_reason() {
    let core = [0u8, b'a', b's', b'm', 1, 0, 0, 0];
    assert!(matches!(refusal(&core), plugin::Error::CoreModule));
    assert!(matches!(
        refusal(b"hello world"),
        plugin::Error::NotWasm { .. }
    ));
}

#[test]
fn compiled_artifacts_are_reused_from_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let loader = Loader::new(sandbox(), Artifacts::in_dir(dir.path()), limits());
    let first = loader.load_file(&plugins::path("webapp")).unwrap();
    let second = loader.load_file(&plugins::path("webapp")).unwrap();
    assert_eq!(first.origin, plugin::Origin::Compiled);
    assert_eq!(second.origin, plugin::Origin::Cached);
    // A corrupted artifact is not trusted: it is recompiled. One byte of compiled code
    // flipped still deserializes (wasmtime checks the headers, not the code), so only the
    // checksum written beside the artifact can tell.
    let mut flipped = 0;
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "cwasm") {
            let mut bytes = std::fs::read(&p).unwrap();
            let (start, len) = elf_section(&bytes, ".text").expect("the artifact has code");
            bytes[start + len / 2] ^= 0x01;
            std::fs::write(&p, bytes).unwrap();
            flipped += 1;
        }
    }
    assert_eq!(flipped, 1, "one artifact was cached");
    let third = loader.load_file(&plugins::path("webapp")).unwrap();
    assert_eq!(third.origin, plugin::Origin::Compiled);
    assert!(Path::new(&plugins::path("webapp")).exists());
    // The plugins loaded before the file was changed in place (and truncated) run the
    // code they were loaded with: what is mapped is a private copy, not the cache file.
    let webapp = json!({
        "apiVersion": "rekon.dev/v1alpha1", "kind": "WebApp",
        "metadata": {"name": "web", "namespace": "shop", "uid": "u1", "generation": 1, "resourceVersion": "1"},
        "spec": {"image": "nginx:1.27", "replicas": 2, "port": 8080},
    });
    let req = Request {
        primary: webapp.to_string(),
        related: vec![],
        settings: "{}".into(),
    };
    for (which, loaded) in [
        ("compiled", &first),
        ("cached", &second),
        ("recompiled", &third),
    ] {
        let out = loaded
            .reconcile(&req, Clock::System, Arc::new(NoCache))
            .result
            .unwrap_or_else(|f| {
                panic!("the {which} plugin runs after the artifact changed: {f:?}")
            });
        assert_eq!(
            out.mutations.len(),
            3,
            "{which}: Deployment, Service, status"
        );
    }
}

/// The file offset and size of the section `name` in a 64-bit little-endian ELF file
/// (what wasmtime serializes a compiled component as).
fn elf_section(elf: &[u8], name: &str) -> Option<(usize, usize)> {
    let u16_at = |o: usize| Some(u16::from_le_bytes(elf.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(elf.get(o..o + 4)?.try_into().ok()?));
    let u64_at =
        |o: usize| usize::try_from(u64::from_le_bytes(elf.get(o..o + 8)?.try_into().ok()?)).ok();
    if elf.get(..5)? != b"\x7fELF\x02" {
        return None;
    }
    let (table, entry) = (u64_at(0x28)?, usize::from(u16_at(0x3a)?));
    let (count, names) = (usize::from(u16_at(0x3c)?), usize::from(u16_at(0x3e)?));
    let header = |i: usize| table + i * entry;
    let strings = u64_at(header(names) + 0x18)?;
    (0..count).find_map(|i| {
        let at = strings + usize::try_from(u32_at(header(i))?).ok()?;
        let end = at + elf.get(at..)?.iter().position(|b| *b == 0)?;
        (elf.get(at..end)? == name.as_bytes())
            .then(|| Some((u64_at(header(i) + 0x18)?, u64_at(header(i) + 0x20)?)))?
    })
}
