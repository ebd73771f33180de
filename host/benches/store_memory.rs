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

use kube::api::DynamicObject;
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher::Event;
use rekon_host::contract::Gvk;
use rekon_host::controller::store::KindStore;
use rekon_host::selector::Selector;
use std::time::Instant;

#[path = "support/store_objects.rs"]
mod store_objects;
use store_objects::{config_map, live, load_store, object, without_managed_fields};

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
    let (store, held, seconds) = load_store(n);
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
