//! `rekon test PLUGIN.wasm CASES_DIR`.

use crate::testing;
use std::path::Path;

/// Runs the cases; returns the rendered report and whether every case passed.
///
/// # Errors
/// The plugin was refused or a case file is invalid (nothing ran).
pub fn test(plugin: &Path, cases: &Path) -> anyhow::Result<(String, bool)> {
    let loaded = testing::load(plugin)?;
    let reports = testing::run_dir(&loaded, cases)?;
    let ok = reports.iter().all(testing::Report::passed);
    Ok((testing::render(&reports), ok))
}
