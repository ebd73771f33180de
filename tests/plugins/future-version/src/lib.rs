//! A component built against `rekon:plugin@9.0.0`, a contract version the host does not
//! accept: it imports `rekon:plugin/host@9.0.0` and exports `rekon:plugin/guest@9.0.0`.
//! The host must refuse it at load, naming the version.
//!
//! The WIT is a minimal copy of the contract's shape under the future version.

mod bindings {
    wit_bindgen::generate!({
        inline: r#"
            package rekon:plugin@9.0.0;

            interface types {
                record gvk { group: string, version: string, kind: string }
                record plugin-metadata { name: string, version: string, primary: gvk }
                record request { primary: string, related: list<string>, settings: string }
                record output { mutations: list<string>, requeue-after-ms: option<u64> }
                variant reconcile-error { transient(string), permanent(string) }
            }

            interface host {
                now-ms: func() -> s64;
            }

            interface guest {
                use types.{plugin-metadata, request, output, reconcile-error};
                metadata: func() -> plugin-metadata;
                reconcile: func(request: request) -> result<output, reconcile-error>;
            }

            world plugin {
                import host;
                export guest;
            }
        "#,
        world: "plugin",
    });
}

use bindings::exports::rekon::plugin::guest::{Guest, PluginMetadata, ReconcileError};
use bindings::rekon::plugin::host;
use bindings::rekon::plugin::types::{Gvk, Output, Request};

/// The plugin.
pub struct FutureVersion;

impl Guest for FutureVersion {
    fn metadata() -> PluginMetadata {
        PluginMetadata {
            name: "future-version".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            primary: Gvk {
                group: String::new(),
                version: "v1".into(),
                kind: "ConfigMap".into(),
            },
        }
    }

    fn reconcile(_: Request) -> Result<Output, ReconcileError> {
        let now = host::now_ms();
        Ok(Output {
            mutations: Vec::new(),
            requeue_after_ms: u64::try_from(now).ok(),
        })
    }
}

#[cfg(target_arch = "wasm32")]
bindings::export!(FutureVersion with_types_in bindings);
