//! Shared by the `store_memory` bench and the `store_bytes` test: a counting global
//! allocator and the fixed ConfigMap-like objects both load into a store.
//!
//! Included with `#[path]` (not a target of its own); each includer uses what it needs.
#![allow(dead_code)]

use kube::api::{ApiResource, DynamicObject};
use kube::runtime::watcher::Event;
use rekon_host::contract::Gvk;
use rekon_host::controller::store::KindStore;
use serde_json::json;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

/// The system allocator, counting live bytes.
pub struct Counting;

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

pub fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

pub fn config_map() -> ApiResource {
    ApiResource::erase::<k8s_openapi::api::core::v1::ConfigMap>(&())
}

/// Loads objects `0..n` into a fresh ConfigMap store through its watcher path (`Init`,
/// `InitApply` × n, `InitDone`), each generated inside the measured region and dropped
/// once applied. A store warmed up first takes anything lazily initialised on the apply
/// path out of the figure. Returns the store, the live bytes it holds and the seconds
/// loading took.
pub fn load_store(n: u64) -> (KindStore, isize, f64) {
    let gvk = Gvk::new("", "v1", "ConfigMap");
    let warm = KindStore::new(gvk.clone(), config_map(), true);
    warm.record_event(Event::Apply(object(u64::MAX / 2)));
    drop(warm);

    let store = KindStore::new(gvk, config_map(), true);
    let before = live();
    let started = std::time::Instant::now();
    store.record_event(Event::Init);
    for i in 0..n {
        store.record_event(Event::InitApply(object(i)));
    }
    store.record_event(Event::InitDone);
    let seconds = started.elapsed().as_secs_f64();
    (store, live() - before, seconds)
}

/// A deterministic pseudo-random hex string of `len` characters, different for each seed.
pub fn hex(seed: u64, len: usize) -> String {
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

pub fn uuid(seed: u64) -> String {
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
pub fn object(i: u64) -> DynamicObject {
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

pub fn without_managed_fields(mut obj: DynamicObject) -> DynamicObject {
    obj.metadata.managed_fields = None;
    obj
}
