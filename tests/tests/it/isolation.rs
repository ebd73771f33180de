//! Failure isolation on the real API server (docs/design.md, invariant 5): the hostile plugin failing in
//! every way it can, beside a good plugin, in one host.
//!
//! Each failure fails that one reconcile and nothing else: a Warning Event on its primary
//! whose note names the failure, a fault counted under a bounded reason label
//! (`rekon_plugin_faults_total{plugin="hostile",reason=…}`), and exponential backoff for
//! its key; meanwhile the good plugin's primaries and the hostile plugin's well-behaved
//! ones converge, created before the failures and after them.
//!
//! The test runs its own host in its own namespace, so other tests on the same control
//! plane neither see its objects nor count in its numbers; it waits on conditions, never
//! on the clock, and its bounds follow from the queue's backoff formula rather than from
//! how fast the machine is.

use crate::controller::{WAIT, config, count, setup, start};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use rekon_host::contract::ObjectKey;
use rekon_host::controller::{Controller, queue};
use rekon_host::metrics::Format;
use rekon_tests::controlplane::wait_until;
use serde_json::json;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// A way for the hostile plugin to fail: its `data.mode` (and extra data), the fault's
/// metric label, and a fragment of the Warning Event's note that identifies it.
struct Failure {
    mode: &'static str,
    data: &'static [(&'static str, &'static str)],
    label: &'static [&'static str],
    note: &'static [&'static str],
}

const FAILURES: &[Failure] = &[
    Failure {
        mode: "loop",
        data: &[],
        label: &["timeout"],
        note: &["time budget"],
    },
    Failure {
        mode: "alloc",
        data: &[],
        label: &["out_of_memory"],
        note: &["memory cap"],
    },
    Failure {
        mode: "panic",
        data: &[],
        label: &["trap"],
        note: &["hostile panic"],
    },
    Failure {
        mode: "unreachable",
        data: &[],
        label: &["trap"],
        note: &["unreachable"],
    },
    // Recursion on the wasm stack alone: stopped by `max_wasm_stack`, nothing else.
    Failure {
        mode: "deep-recurse",
        data: &[],
        label: &["stack_overflow"],
        note: &["overflowed its stack"],
    },
    // 2 MiB: over the 1 MiB object cap, well under the 64 MiB memory cap.
    Failure {
        mode: "giant-output",
        data: &[("bytes", "2097152")],
        label: &["too_large"],
        note: &["over the limit"],
    },
    Failure {
        mode: "undeclared-write",
        data: &[],
        label: &["undeclared_kind"],
        note: &["v1 Secret"],
    },
    Failure {
        mode: "bad-json",
        data: &[],
        label: &["malformed_json"],
        note: &["not valid JSON"],
    },
    Failure {
        mode: "other-namespace",
        data: &[("namespace", "kube-system")],
        label: &["namespace_out_of_scope"],
        note: &["outside the primary's scope"],
    },
    Failure {
        mode: "error-transient",
        data: &[],
        label: &["guest_transient"],
        note: &["hostile transient error"],
    },
    Failure {
        mode: "error-permanent",
        data: &[],
        label: &["guest_permanent"],
        note: &["hostile permanent error"],
    },
];

/// Every reason label a plugin fault can carry (`plugin::Fault::metric_label`).
const FAULT_LABELS: &[&str] = &[
    "timeout",
    "out_of_memory",
    "stack_overflow",
    "trap",
    "instantiate",
    "malformed_json",
    "malformed_object",
    "undeclared_kind",
    "namespace_out_of_scope",
    "too_large",
    "bad_record",
    "guest_transient",
    "guest_permanent",
];

/// A ConfigMap, built up.
struct Cm(serde_json::Value);

fn cm(name: &str) -> Cm {
    Cm(json!({"metadata": {"name": name, "labels": {}}, "data": {}}))
}

impl Cm {
    fn data(mut self, key: &str, value: &str) -> Self {
        self.0["data"][key] = json!(value);
        self
    }

    fn label(mut self, key: &str, value: &str) -> Self {
        self.0["metadata"]["labels"][key] = json!(value);
        self
    }

    fn build(self) -> ConfigMap {
        serde_json::from_value(self.0).unwrap()
    }
}

fn hostile_primary(f: &Failure) -> ConfigMap {
    f.data
        .iter()
        .fold(
            cm(&format!("fail-{}", f.mode)).data("mode", f.mode),
            |c, (k, v)| c.data(k, v),
        )
        .build()
}

fn mirror_source(name: &str, value: &str) -> ConfigMap {
    cm(name)
        .label("rekon.dev/mirror", "true")
        .data("value", value)
        .build()
}

/// The most consecutive failures a key can add within `window` after its `before`-th,
/// under the queue's exponential backoff: the `k`-th failure is followed by a delay of
/// `base × 2^(k-1)`, so `d` more failures take at least `base × 2^before × (2^(d-1) − 1)`.
/// One more is allowed for a run an event triggers at once.
fn backoff_bound(before: u32, window: Duration) -> u32 {
    let base = queue::Config::default().backoff_base.as_secs_f64();
    let first_delay = base * 2f64.powi(before as i32);
    (window.as_secs_f64() / first_delay + 1.0).log2().floor() as u32 + 2
}

fn key(ns: &str, name: &str) -> ObjectKey {
    ObjectKey {
        namespace: Some(ns.to_owned()),
        name: name.to_owned(),
    }
}

fn failures_of(r: &Controller, ns: &str) -> BTreeMap<&'static str, u32> {
    FAILURES
        .iter()
        .map(|f| {
            (
                f.mode,
                r.queue().failures(&key(ns, &format!("fail-{}", f.mode))),
            )
        })
        .collect()
}

/// The Warning Events on the primary `name`.
async fn warnings(events: &Api<Event>, name: &str) -> Vec<Event> {
    events
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| {
            e.type_.as_deref() == Some("Warning")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
        })
        .collect()
}

/// `rekon_plugin_faults_total{plugin="hostile",reason=…}` by reason, from the host's
/// Prometheus exposition.
fn hostile_faults(metrics: &str) -> BTreeMap<String, u64> {
    let prefix = "rekon_plugin_faults_total{plugin=\"hostile\",reason=\"";
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .filter_map(|rest| {
            let (reason, value) = rest.split_once("\"} ")?;
            Some((reason.to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}

/// Waits until every source's mirror holds `value`, and every `ok` primary's copy exists.
async fn converged(cms: &Api<ConfigMap>, sources: &[String], oks: &[String], value: &str) {
    wait_until("the good primaries converge", WAIT, || async {
        for s in sources {
            let mirror = cms.get_opt(&format!("{s}-mirror")).await.ok().flatten()?;
            let data = mirror.data.unwrap_or_default();
            (data.get("value").map(String::as_str) == Some(value)).then_some(())?;
        }
        for o in oks {
            cms.get_opt(&format!("{o}-out")).await.ok().flatten()?;
        }
        Some(())
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn every_plugin_failure_fails_only_its_own_key_and_the_rest_converges() {
    let (client, ns) = setup("isolation").await;
    let ns = ns.name().to_owned();
    let (host, running) = start(&client, config(&ns), &["mirror-plugin", "hostile-plugin"]).await;
    let (mirror, hostile) = (&running[0], &running[1]);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let pp = PostParams::default();

    // Failing primaries, the Secret reader, and good primaries of both plugins at once.
    let created = Instant::now();
    for f in FAILURES {
        cms.create(&pp, &hostile_primary(f)).await.unwrap();
    }
    cms.create(&pp, &cm("read-secret").data("mode", "read-secret").build())
        .await
        .unwrap();
    let sources: Vec<String> = (0..5).map(|i| format!("src-{i}")).collect();
    let oks: Vec<String> = (0..3).map(|i| format!("ok-{i}")).collect();
    for s in &sources {
        cms.create(&pp, &mirror_source(s, "v1")).await.unwrap();
    }
    for o in &oks {
        cms.create(&pp, &cm(o).data("mode", "ok").data("value", o).build())
            .await
            .unwrap();
    }
    converged(&cms, &sources, &oks, "v1").await;
    let first = created.elapsed();

    // Each failure: a Warning Event on its own primary that names it.
    for f in FAILURES {
        let name = format!("fail-{}", f.mode);
        let found = wait_until(&format!("a Warning Event on {name}"), WAIT, || async {
            warnings(&events, &name).await.into_iter().find(|e| {
                e.reason.as_deref() == Some("ReconcileFailed")
                    && e.note
                        .as_deref()
                        .is_some_and(|n| f.note.iter().any(|x| n.contains(x)))
            })
        })
        .await;
        let event = match found {
            Ok(e) => e,
            Err(e) => panic!("{e}; its events: {:?}", notes_of(&events, &name).await),
        };
        let note = event.note.unwrap_or_default();
        assert!(note.contains("plugin hostile"), "names the plugin: {note}");
        println!("{:<16} Warning ReconcileFailed: {note}", f.mode);
    }
    // The Secret reader is refused, and says so in its own Warning Event.
    let refused = wait_until("a ReadRefused event", WAIT, || async {
        warnings(&events, "read-secret")
            .await
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("ReadRefused"))
    })
    .await
    .unwrap();
    println!(
        "{:<16} Warning ReadRefused: {}",
        "read-secret",
        refused.note.as_deref().unwrap_or_default()
    );
    assert!(
        !warnings(&events, "read-secret")
            .await
            .iter()
            .any(|e| e.reason.as_deref() == Some("ReadAllowed")),
        "the Secret stayed unreadable"
    );

    // Each fault counted under its bounded label, in the host's metrics.
    let metrics = wait_until("every fault is counted", WAIT, || async {
        let text = rekon_host::metrics::Metrics::for_host(&host)
            .encode(Format::Prometheus)
            .ok()?;
        let faults = hostile_faults(&text);
        FAILURES
            .iter()
            .all(|f| {
                f.label
                    .iter()
                    .any(|l| faults.get(*l).is_some_and(|n| *n >= 1))
            })
            .then_some(faults)
    })
    .await
    .unwrap();
    println!("rekon_plugin_faults_total{{plugin=\"hostile\"}}: {metrics:?}");
    for reason in metrics.keys() {
        assert!(
            FAULT_LABELS.contains(&reason.as_str()),
            "an unbounded reason label: {reason}"
        );
    }
    assert!(
        mirror.stats().faults().is_empty(),
        "the good plugin has no faults: {:?}",
        mirror.stats().faults()
    );

    // Backoff: the failing keys wait out delays instead of running again and again.
    let fast: Vec<&Failure> = FAILURES
        .iter()
        .filter(|f| !matches!(f.mode, "loop" | "error-permanent"))
        .collect();
    wait_until(
        "the fast-failing keys have backed off a few times",
        WAIT,
        || async {
            let failures = failures_of(hostile, &ns);
            fast.iter().all(|f| failures[f.mode] >= 6).then_some(())
        },
    )
    .await
    .unwrap();
    let delayed = wait_until("failing keys wait in backoff", WAIT, || async {
        let d = hostile.queue().delayed();
        (d >= fast.len() - 1).then_some(d)
    })
    .await
    .unwrap();
    println!("hostile queue: {delayed} keys delayed (backoff)");

    // A window of live work while the failures go on: new good primaries and changes to
    // the old ones converge; the endless loop runs into its budget twice more.
    let before = failures_of(hostile, &ns);
    let calls_before = count(&hostile.stats().reconciles);
    let window = Instant::now();
    let more: Vec<String> = (0..3).map(|i| format!("late-src-{i}")).collect();
    let more_oks: Vec<String> = (0..2).map(|i| format!("late-ok-{i}")).collect();
    for s in &more {
        cms.create(&pp, &mirror_source(s, "v2")).await.unwrap();
    }
    for o in &more_oks {
        cms.create(&pp, &cm(o).data("mode", "ok").build())
            .await
            .unwrap();
    }
    for s in &sources {
        let patch = json!({"data": {"value": "v2"}});
        cms.patch(s, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
    }
    let all: Vec<String> = sources.iter().chain(&more).cloned().collect();
    converged(&cms, &all, &more_oks, "v2").await;
    let late = window.elapsed();
    wait_until("the endless loop timed out twice more", WAIT, || async {
        (hostile.queue().failures(&key(&ns, "fail-loop")) >= before["loop"] + 2).then_some(())
    })
    .await
    .unwrap();
    let span = window.elapsed();
    let after = failures_of(hostile, &ns);
    let calls = count(&hostile.stats().reconciles) - calls_before;
    println!(
        "converged: first batch in {first:.1?}, late batch and changes in {late:.1?} \
         (while failing); window {span:.1?}: {calls} hostile calls in all"
    );
    for f in FAILURES {
        let (b, a) = (before[f.mode], after[f.mode]);
        let bound = backoff_bound(b, span);
        println!(
            "{:<16} consecutive failures {b:>2} → {a:>2} in the window (bound {bound})",
            f.mode
        );
        if f.mode == "error-permanent" {
            assert_eq!(a, 0, "a permanent error is not retried");
        } else {
            assert!(a - b <= bound, "{}: {b} → {a} failures in {span:?}", f.mode);
            assert!(
                a <= backoff_bound(0, created.elapsed()),
                "{}: {a} failures since creation",
                f.mode
            );
        }
    }
    // Everything the hostile plugin was asked in the window, bounded: the failing keys'
    // retries, and the late good primaries with their copies (a few calls each).
    let retries: u32 = FAILURES
        .iter()
        .map(|f| backoff_bound(before[f.mode], span))
        .sum();
    let bound = u64::from(retries) + 10 * (all.len() + 2 * more_oks.len()) as u64;
    assert!(
        calls <= bound,
        "{calls} hostile calls in {span:?}, bound {bound}: a hot loop"
    );
    // A reason label only one key produces counts that key's calls.
    let faults = hostile.stats().faults();
    assert_eq!(
        faults.get("guest_permanent"),
        Some(&1),
        "the permanent error ran once, not again: {faults:?}"
    );
    assert!(
        faults["timeout"] <= u64::from(backoff_bound(0, created.elapsed())),
        "{faults:?}"
    );
    assert_eq!(
        hostile.queue().failures(&key(&ns, "read-secret")),
        0,
        "a refused read fails nothing"
    );
}

async fn notes_of(events: &Api<Event>, name: &str) -> Vec<String> {
    warnings(events, name)
        .await
        .into_iter()
        .filter_map(|e| e.note)
        .collect()
}
