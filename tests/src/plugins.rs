//! Builds the wasm plugins (examples and hostile test plugins) once per test process.
//!
//! `cargo test` builds host code natively; the plugins must be built for
//! `wasm32-wasip2`. The first caller runs one `cargo build --release --target
//! wasm32-wasip2` for every plugin crate (incremental: about a second when nothing
//! changed); later callers in the same process get the cached paths.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Plugin crates built for the tests: (crate name, artifact stem).
pub const CRATES: &[&str] = &[
    "webapp",
    "hostile-plugin",
    "foreign-import-plugin",
    "future-version-plugin",
    "missing-export-plugin",
    "mirror-plugin",
    "nodepool",
    "cleanup-plugin",
    "netdefaults",
    "teardown",
    "rollout",
    "stamp-plugin",
    "stamp-next-plugin",
    "replicas-plugin",
    "stamp-wide-plugin",
    "stamp-fin-plugin",
];

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

/// Where cargo puts build output for this workspace.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
}

/// The directory holding the built `.wasm` files.
///
/// # Panics
/// If the build fails: the panic carries cargo's output, so the failing plugin is named.
pub fn dir() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(workspace()).args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--quiet",
        ]);
        for c in CRATES {
            cmd.args(["-p", c]);
        }
        let out = cmd
            .output()
            .expect("cargo can be run to build the wasm plugins");
        assert!(
            out.status.success(),
            "building the wasm plugins failed (is the wasm32-wasip2 target installed? \
             `rustup target add wasm32-wasip2`):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        release_dir()
    })
}

/// Where cargo puts the plugins built for `wasm32-wasip2` in release, built or not.
pub fn release_dir() -> PathBuf {
    target_dir().join("wasm32-wasip2").join("release")
}

/// The component of a plugin crate in `dir` (cargo names it after the library: `-`
/// becomes `_`), built or not.
pub fn component_in(dir: &Path, crate_name: &str) -> PathBuf {
    dir.join(format!("{}.wasm", crate_name.replace('-', "_")))
}

/// The built component of a plugin crate, e.g. `path("hostile-plugin")`; builds every
/// test plugin first (once per process).
pub fn path(crate_name: &str) -> PathBuf {
    component_in(dir(), crate_name)
}

/// The bytes of a built plugin.
pub fn bytes(crate_name: &str) -> Vec<u8> {
    let p = path(crate_name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}
