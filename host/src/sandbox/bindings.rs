//! Host bindings generated from `wit/rekon.wit`. Only the sandbox and its conversions use
//! these; the rest of the host sees `crate::contract` types.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "plugin",
    // `list` may stop the call: a result that cannot fit the guest's memory cap is refused
    // before it is built (the contract's `cache-error` has no case for it).
    imports: { "rekon:plugin/host.list": trappable },
});

pub use rekon::plugin::host;
pub use rekon::plugin::types;
