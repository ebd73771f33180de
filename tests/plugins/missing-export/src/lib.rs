//! A component that imports rekon's `rekon:plugin/host@0.1.0` and exports a
//! `rekon:plugin/guest@0.1.0` lacking `reconcile` (it has `metadata`, `finalize` and
//! `map-to-primaries`). The host must refuse it at load.
//!
//! The WIT is the contract's `types` and `host` as they are, and its `guest` without
//! `reconcile`.

mod bindings {
    wit_bindgen::generate!({
        inline: r#"
            package rekon:plugin@0.1.0;

            interface types {
                record gvk { group: string, version: string, kind: string }
                variant key-mapping { owner-reference, label(string), custom }
                record watch { kind: gvk, mapping: key-mapping }
                record plugin-metadata {
                    name: string, version: string, primary: gvk, watches: list<watch>,
                    reads: list<gvk>, writes: list<gvk>, resync-seconds: option<u32>,
                    finalizer: option<string>,
                }
                record target {
                    api-version: string, kind: string, namespace: option<string>, name: string,
                    resource-version: option<string>,
                }
                record merge-patch { target: target, patch: string }
                variant mutation {
                    apply(string), create(string), update(string), merge-patch(merge-patch),
                    delete(target), update-status(string),
                }
                enum event-type { normal, warning }
                record event { event-type: event-type, reason: string, note: string }
                enum condition-status { true-status, false-status, unknown-status }
                record condition {
                    condition-type: string, status: condition-status, reason: string, message: string,
                }
                record request { primary: string, related: list<string>, settings: string }
                record output {
                    mutations: list<mutation>, requeue-after-ms: option<u64>, events: list<event>,
                    conditions: list<condition>, prune: bool,
                }
                variant reconcile-error { transient(string), permanent(string) }
                record object-key { namespace: option<string>, name: string }
            }

            interface host {
                use types.{gvk};
                enum level { trace, debug, info, warn, error }
                variant cache-error { undeclared-kind(string), bad-selector(string) }
                log: func(level: level, message: string, fields: list<tuple<string, string>>);
                get: func(kind: gvk, namespace: option<string>, name: string) -> result<option<string>, cache-error>;
                %list: func(kind: gvk, namespace: option<string>, label-selector: option<string>) -> result<list<string>, cache-error>;
                now-ms: func() -> s64;
            }

            interface guest {
                use types.{plugin-metadata, request, output, reconcile-error, gvk, object-key};
                metadata: func() -> plugin-metadata;
                // no `reconcile`
                finalize: func(request: request) -> result<output, reconcile-error>;
                map-to-primaries: func(kind: gvk, object: string) -> list<object-key>;
            }

            world plugin {
                import host;
                export guest;
            }
        "#,
        world: "plugin",
    });
}

use bindings::exports::rekon::plugin::guest::{
    Guest, Gvk, ObjectKey, Output, PluginMetadata, ReconcileError, Request,
};
use bindings::rekon::plugin::host;

/// The plugin.
pub struct MissingExport;

impl Guest for MissingExport {
    fn metadata() -> PluginMetadata {
        PluginMetadata {
            name: "missing-export".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            primary: Gvk {
                group: String::new(),
                version: "v1".into(),
                kind: "ConfigMap".into(),
            },
            watches: Vec::new(),
            reads: Vec::new(),
            writes: Vec::new(),
            resync_seconds: None,
            finalizer: None,
        }
    }

    fn finalize(_: Request) -> Result<Output, ReconcileError> {
        host::log(host::Level::Info, "finalizing without a reconcile", &[]);
        Ok(Output {
            mutations: Vec::new(),
            requeue_after_ms: None,
            events: Vec::new(),
            conditions: Vec::new(),
            prune: false,
        })
    }

    fn map_to_primaries(_: Gvk, _: String) -> Vec<ObjectKey> {
        Vec::new()
    }
}

#[cfg(target_arch = "wasm32")]
bindings::export!(MissingExport with_types_in bindings);
