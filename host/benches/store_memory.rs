//! Memory per cached object: rekon's `controller::store` against kube-runtime's
//! `reflector::store` of `DynamicObject`, for 10k and 100k ConfigMap-like objects of about
//! 2 KB of JSON each (labels, annotations, a controller ownerReference, two managedFields
//! entries making up about 30 % of the JSON, and data).
//!
//! Both stores are fed through their watcher path (`Init`, `InitApply` × N, `InitDone`).
//! Objects are generated one at a time inside the measured region and dropped once
//! applied, so the difference in live heap bytes before and after loading is what the
//! store holds. A counting global allocator measures live bytes as requested sizes
//! (allocator headers and fragmentation are not included, for either store).
//!
//! Run: `cargo bench -p rekon-host --bench store_memory` (set `STORE_MEMORY_SIZES=1000`
//! for a quick run).

use kube::api::{ApiResource, DynamicObject};
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher::Event;
use rekon_host::contract::Gvk;
use rekon_host::controller::store::KindStore;
use rekon_host::selector::Selector;
use serde_json::json;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

/// The system allocator, counting live bytes.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call forwards to `System` with the caller's arguments unchanged; the
// counter is only bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is; the caller upholds `GlobalAlloc::alloc`'s contract.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator (so from `System`) with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from `System` with `layout`; the caller upholds the rest.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            LIVE.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        new
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

fn config_map() -> ApiResource {
    ApiResource {
        group: String::new(),
        version: "v1".into(),
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        plural: "configmaps".into(),
    }
}

/// A deterministic pseudo-random hex string of `len` characters, different for each seed.
fn hex(seed: u64, len: usize) -> String {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = String::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push_str(&format!("{x:016x}"));
    }
    out.truncate(len);
    out
}

fn uuid(seed: u64) -> String {
    let h = hex(seed, 32);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Object `i`: a ConfigMap as a controller would own it, as the API server serves it.
fn object(i: u64) -> DynamicObject {
    let name = format!("web-{i:06}-config");
    let owner_uid = uuid(i ^ 0xABCD);
    let value = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": format!("team-{:02}", i % 50),
            "uid": uuid(i),
            "resourceVersion": (1_000_000 + i).to_string(),
            "creationTimestamp": "2024-05-01T10:00:00Z",
            "labels": {
                "app.kubernetes.io/name": format!("web-{}", i % 1000),
                "app.kubernetes.io/instance": format!("web-{i}"),
                "app.kubernetes.io/managed-by": "rekon",
                "app.kubernetes.io/part-of": "shop",
                "tier": "frontend",
            },
            "annotations": {
                "rekon.dev/checksum": format!("sha256:{}", hex(i, 64)),
                "rekon.dev/source-generation": "3",
                "deployment.kubernetes.io/revision": "7",
            },
            "ownerReferences": [{
                "apiVersion": "example.dev/v1",
                "kind": "WebApp",
                "name": format!("web-{i}"),
                "uid": owner_uid,
                "controller": true,
                "blockOwnerDeletion": true,
            }],
            "managedFields": [
                {
                    "manager": "rekon-webapp",
                    "operation": "Apply",
                    "apiVersion": "v1",
                    "time": "2024-05-01T10:00:00Z",
                    "fieldsType": "FieldsV1",
                    "fieldsV1": {
                        "f:data": {
                            "f:app.properties": {},
                            "f:feature-flags": {},
                            "f:log-level": {},
                            "f:upstreams": {},
                        },
                        "f:metadata": {
                            "f:labels": {
                                "f:app.kubernetes.io/instance": {},
                                "f:app.kubernetes.io/managed-by": {},
                                "f:app.kubernetes.io/name": {},
                                "f:app.kubernetes.io/part-of": {},
                                "f:tier": {},
                            },
                            "f:ownerReferences": {
                                format!("k:{{\"uid\":\"{owner_uid}\"}}"): {}
                            },
                        },
                    },
                },
                {
                    "manager": "kubectl-edit",
                    "operation": "Update",
                    "apiVersion": "v1",
                    "time": "2024-05-02T08:30:00Z",
                    "fieldsType": "FieldsV1",
                    "fieldsV1": {
                        "f:metadata": {"f:annotations": {"f:deployment.kubernetes.io/revision": {}}},
                    },
                },
            ],
        },
        "data": {
            "app.properties": format!(
                "server.port=8080\nserver.name=web-{i}\ncache.ttl=300\nsession.secret={}\nmetrics.enabled=true\n",
                hex(i + 1, 64)
            ),
            "feature-flags": format!("checkout-v2={}\nsearch-v3=false\nbanner={}\n", i.is_multiple_of(2), hex(i + 2, 150)),
            "log-level": "info",
            "upstreams": format!("payments=http://payments-{}.svc:8080,catalog=http://catalog.svc:8080,trace={}", i % 7, hex(i + 3, 130)),
        },
    });
    serde_json::from_value(value).expect("the fixture is a valid object")
}

fn without_managed_fields(mut obj: DynamicObject) -> DynamicObject {
    obj.metadata.managed_fields = None;
    obj
}

struct Sizes {
    served: usize,
    stripped: usize,
}

/// Microseconds per object for the apply path alone: `n` objects generated first, then
/// applied to a fresh store as one list.
fn apply_micros(n: u64) -> f64 {
    let objects: Vec<DynamicObject> = (0..n).map(object).collect();
    let store = KindStore::new(Gvk::new("", "v1", "ConfigMap"), config_map(), true);
    let started = Instant::now();
    store.record_event(Event::Init);
    for obj in objects {
        store.record_event(Event::InitApply(obj));
    }
    store.record_event(Event::InitDone);
    started.elapsed().as_secs_f64() * 1e6 / n as f64
}

fn json_sizes(n: u64) -> Sizes {
    let mut sizes = Sizes {
        served: 0,
        stripped: 0,
    };
    for i in 0..n {
        let obj = object(i);
        sizes.served += serde_json::to_vec(&obj).unwrap().len();
        sizes.stripped += serde_json::to_vec(&without_managed_fields(obj))
            .unwrap()
            .len();
    }
    sizes
}

/// Loads `n` objects into rekon's store; returns (measured bytes, the store's own
/// estimate, seconds).
fn rekon(n: u64) -> (isize, usize, f64) {
    let gvk = Gvk::new("", "v1", "ConfigMap");
    // Warm up anything lazily initialised on the apply path.
    let warm = KindStore::new(gvk.clone(), config_map(), true);
    warm.record_event(Event::Apply(object(u64::MAX / 2)));
    drop(warm);

    let store = KindStore::new(gvk, config_map(), true);
    let before = live();
    let started = Instant::now();
    store.record_event(Event::Init);
    for i in 0..n {
        store.record_event(Event::InitApply(object(i)));
    }
    store.record_event(Event::InitDone);
    let seconds = started.elapsed().as_secs_f64();
    let held = live() - before;
    assert_eq!(store.len() as u64, n);
    let sample = store
        .get(Some("team-07"), "web-000007-config")
        .expect("loaded");
    assert!(sample.controller_owner_uid().is_some());
    let selector = Selector::parse("app.kubernetes.io/name=web-7").expect("selector");
    assert!(!store.list(Some("team-07"), &selector).is_empty());
    (held, store.approx_bytes(), seconds)
}

/// Loads `n` objects into kube-runtime's reflector store; returns the measured bytes.
fn reflector(n: u64, strip: bool) -> isize {
    let mut writer: Writer<DynamicObject> = Writer::new(config_map());
    let reader = writer.as_reader();
    let before = live();
    writer.apply_watcher_event(&Event::Init);
    for i in 0..n {
        let obj = if strip {
            without_managed_fields(object(i))
        } else {
            object(i)
        };
        writer.apply_watcher_event(&Event::InitApply(obj));
    }
    writer.apply_watcher_event(&Event::InitDone);
    let held = live() - before;
    assert_eq!(reader.len() as u64, n);
    held
}

fn main() {
    println!(
        "store_memory: live heap bytes per cached object (requested sizes, counting allocator)"
    );
    println!("ratios are bytes held / JSON size; `served` = the object as the API server sends it");
    println!("(with managedFields), `stripped` = without managedFields (what rekon stores)\n");
    // `STORE_MEMORY_SIZES=1000,5000` overrides the sizes (for a quick run).
    let sizes: Vec<u64> = std::env::var("STORE_MEMORY_SIZES")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![10_000, 100_000]);
    for n in sizes {
        let sizes = json_sizes(n);
        let served = sizes.served as f64 / n as f64;
        let stripped = sizes.stripped as f64 / n as f64;
        let (held, estimate, seconds) = rekon(n);
        let per_object = held as f64 / n as f64;
        let reflector_served = reflector(n, false) as f64 / n as f64;
        let reflector_stripped = reflector(n, true) as f64 / n as f64;
        println!("N = {n}");
        println!(
            "  JSON per object:        {served:>7.0} B served, {stripped:>7.0} B stripped (managedFields {:.0} %)",
            100.0 * (served - stripped) / served
        );
        println!(
            "  rekon store:            {per_object:>7.0} B/object = {:.2}x served, {:.2}x stripped \
             (own estimate {:.0} B; loaded in {seconds:.2} s with fixture generation; \
             apply path alone {:.1} µs/object)",
            per_object / served,
            per_object / stripped,
            estimate as f64 / n as f64,
            apply_micros(n.min(20_000)),
        );
        println!(
            "  kube-runtime reflector: {reflector_served:>7.0} B/object = {:.2}x served (objects as served)",
            reflector_served / served
        );
        println!(
            "  kube-runtime reflector: {reflector_stripped:>7.0} B/object = {:.2}x served, {:.2}x stripped (managedFields stripped first)",
            reflector_stripped / served,
            reflector_stripped / stripped
        );
        println!(
            "  rekon / reflector:      {:.2}x (objects as served), {:.2}x (both without managedFields); \
             target rekon <= 1.0x served JSON: {}",
            per_object / reflector_served,
            per_object / reflector_stripped,
            if per_object <= served {
                "met"
            } else {
                "missed"
            }
        );
        println!();
    }
}
