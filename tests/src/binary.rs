//! The `rekon` binary, built once per test process (debug, like the tests).

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// Path to a freshly built `rekon` binary.
///
/// # Panics
/// If the build fails, with cargo's output.
pub fn rekon() -> &'static PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = Command::new(cargo)
            .current_dir(crate::plugins::workspace())
            .args(["build", "--quiet", "-p", "rekon-host", "--bin", "rekon"])
            .output()
            .expect("cargo can be run to build rekon");
        assert!(
            out.status.success(),
            "building rekon failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        crate::plugins::target_dir().join("debug").join("rekon")
    })
}
