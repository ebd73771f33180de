//! `rekon test PLUGIN.wasm CASES_DIR`.

use crate::testing;
use std::path::Path;

/// Runs the cases; returns the rendered report and whether every case passed. A file
/// that is not a valid case is reported as a failed case; the others still run.
///
/// # Errors
/// The plugin was refused, or the cases directory is unreadable or empty (nothing ran).
pub fn test(plugin: &Path, cases: &Path) -> anyhow::Result<(String, bool)> {
    let loaded = testing::load(plugin)?;
    let reports = testing::run_dir(&loaded, cases)?;
    let ok = reports.iter().all(testing::Report::passed);
    Ok((testing::render(&reports), ok))
}
