//! Host bindings generated from `wit/rekon.wit`. Only the sandbox and its conversions use
//! these; the rest of the host sees `crate::contract` types.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "plugin",
});

pub use rekon::plugin::host;
pub use rekon::plugin::types;
