//! The raw wit-bindgen bindings of the `rekon:plugin/plugin@0.1.0` world.
//!
//! Plugin authors do not need this module: [`export_plugin!`](crate::export_plugin)
//! and the typed API cover the contract. It is public for the few programs that must
//! speak the contract directly, such as test plugins returning deliberately invalid
//! output (see [`raw`](crate::raw)). [`export_guest!`](crate::bindings::export_guest)
//! exports a type implementing
//! [`exports::rekon::plugin::guest::Guest`]
//! directly.
//!
//! # Caveats
//!
//! The imported functions in [`rekon::plugin::host`] only work on `wasm32`; on native
//! targets wit-bindgen makes them `unreachable!()`. Use [`cache`](crate::cache),
//! [`log`](mod@crate::log) and [`clock`](crate::clock), which route to
//! [`testing`](crate::testing)'s fake host natively.

wit_bindgen::generate!({
    path: "../wit",
    world: "plugin",
    pub_export_macro: true,
    export_macro_name: "export_guest",
    default_bindings_module: "rekon_sdk::bindings",
});
