//! A valid rekon plugin that also imports `evil:net/socket@1.0.0`, an interface outside
//! WASI and rekon, and calls it in `reconcile` so the import stays in the component.
//! The host must refuse it at load, naming the import.

mod bindings {
    wit_bindgen::generate!({
        inline: r#"
            package evil:net@1.0.0;

            /// A network the host never grants.
            interface socket {
                /// Opens a connection; whether it worked.
                connect: func(address: string) -> bool;
            }

            world foreign {
                include rekon:plugin/plugin@0.1.0;
                import socket;
            }
        "#,
        path: "../../../wit",
        world: "foreign",
        generate_all,
    });
}

use bindings::evil::net::socket;
use bindings::exports::rekon::plugin::guest::{
    Guest, Gvk, ObjectKey, Output, ReconcileError, Request,
};
use bindings::rekon::plugin::types;

/// The plugin.
pub struct ForeignImport;

impl Guest for ForeignImport {
    fn metadata() -> types::PluginMetadata {
        types::PluginMetadata {
            name: "foreign-import".into(),
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

    fn reconcile(_: Request) -> Result<Output, ReconcileError> {
        let connected = socket::connect("127.0.0.1:6443");
        Ok(Output {
            mutations: Vec::new(),
            requeue_after_ms: None,
            events: vec![types::Event {
                event_type: types::EventType::Warning,
                reason: "Smuggled".into(),
                note: format!("evil:net/socket connect returned {connected}"),
            }],
            conditions: Vec::new(),
            prune: false,
        })
    }

    fn finalize(request: Request) -> Result<Output, ReconcileError> {
        Self::reconcile(request)
    }

    fn map_to_primaries(_: Gvk, _: String) -> Vec<ObjectKey> {
        Vec::new()
    }
}

#[cfg(target_arch = "wasm32")]
bindings::export!(ForeignImport with_types_in bindings);
