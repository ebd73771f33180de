//! The reference points below the host's call path, with wasmtime used directly: one
//! instance created once and called again and again (state persists between calls, so
//! this is *not* isolated — it is what no per-call setup or reset at all would cost),
//! with and without epoch interruption (the host's time budget).
//!
//! Same engine settings as the host's otherwise (Cranelift defaults, the same WASI and
//! `rekon:plugin` imports, here answered by stubs the webapp plugin never calls).

use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

wasmtime::component::bindgen!({
    path: "../wit",
    world: "plugin",
});

use rekon::plugin::{host, types};

struct State {
    wasi: WasiCtx,
    table: ResourceTable,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for State {}

impl host::Host for State {
    fn log(&mut self, _: host::Level, _: String, _: Vec<(String, String)>) {}
    fn get(
        &mut self,
        _: types::Gvk,
        _: Option<String>,
        _: String,
    ) -> Result<Option<String>, host::CacheError> {
        Ok(None)
    }
    fn list(
        &mut self,
        _: types::Gvk,
        _: Option<String>,
        _: Option<String>,
    ) -> Result<Vec<String>, host::CacheError> {
        Ok(Vec::new())
    }
    fn now_ms(&mut self) -> i64 {
        0
    }
}

/// One instance, kept for every call.
pub struct Reused {
    store: Store<State>,
    plugin: Plugin,
}

impl Reused {
    /// Compiles `wasm` (with Cranelift's inliner if `inlining`, which the host leaves off
    /// by default) and instantiates it once; `epoch` arms epoch interruption with a deadline
    /// that is never reached (the checks run, nothing interrupts).
    pub fn new(wasm: &[u8], epoch: bool, inlining: bool) -> Self {
        let mut config = Config::new();
        config.wasm_component_model(true).epoch_interruption(epoch);
        if inlining {
            config.compiler_inlining(wasmtime::Inlining::Yes);
        }
        let engine = Engine::new(&config).expect("an engine");
        let component = Component::new(&engine, wasm).expect("the component compiles");
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).expect("WASI links");
        Plugin::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s).expect("rekon links");
        let mut store = Store::new(
            &engine,
            State {
                wasi: WasiCtx::builder().build(),
                table: ResourceTable::new(),
            },
        );
        if epoch {
            store.set_epoch_deadline(u64::MAX / 2);
        }
        let plugin = Plugin::instantiate(&mut store, &component, &linker).expect("instantiates");
        Self { store, plugin }
    }

    /// One `reconcile` call on the kept instance.
    pub fn call(&mut self, primary: &str, related: &[String]) {
        let req = types::Request {
            primary: primary.to_owned(),
            related: related.to_vec(),
            settings: "{}".into(),
        };
        let out = self
            .plugin
            .rekon_plugin_guest()
            .call_reconcile(&mut self.store, &req)
            .expect("no trap");
        assert!(out.is_ok());
    }
}
