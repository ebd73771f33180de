//! What a plugin directory holds, and which of it has settled.
//!
//! A plugin is `NAME.wasm`, optionally with `NAME.yaml` beside it ([`super::config`]).
//! Hidden files (a leading `.`) and other names are ignored, so a writer can create
//! `.NAME.wasm.tmp` and rename it into place — the safe way to publish a plugin.
//!
//! A file still being written must never be loaded half-written. Each scan records every
//! file's size and modification time; a plugin is *settled* once two scans at least the
//! settle interval apart saw the same fingerprints. Only settled plugins are acted on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Size and modification time of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    /// Length in bytes.
    pub len: u64,
    /// Last modification.
    pub modified: Option<SystemTime>,
}

/// The files of one plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Files {
    /// `NAME.wasm`.
    pub wasm: PathBuf,
    /// Its fingerprint.
    pub wasm_print: Fingerprint,
    /// `NAME.yaml` (or `.yml`), when present.
    pub config: Option<(PathBuf, Fingerprint)>,
}

/// One scan: plugin file stem → its files.
pub type Scan = BTreeMap<String, Files>;

/// Lists the plugins in `dir`.
///
/// # Errors
/// The directory cannot be read.
pub fn scan(dir: &Path) -> std::io::Result<Scan> {
    let mut wasm = BTreeMap::new();
    let mut configs = BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let Ok(entry) = entry else { continue };
        let path = entry.path();
        let Some(file_name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if file_name.starts_with('.') {
            continue;
        }
        let Some((stem, ext)) = file_name.rsplit_once('.') else {
            continue;
        };
        // Follows symlinks: Kubernetes mounts ConfigMaps and Secrets as links into `..data`.
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        let print = Fingerprint {
            len: meta.len(),
            modified: meta.modified().ok(),
        };
        match ext {
            "wasm" => {
                wasm.insert(stem.to_owned(), (path, print));
            }
            "yaml" | "yml" => {
                configs.insert(stem.to_owned(), (path, print));
            }
            _ => {}
        }
    }
    Ok(wasm
        .into_iter()
        .map(|(stem, (wasm, wasm_print))| {
            let config = configs.remove(&stem);
            (
                stem,
                Files {
                    wasm,
                    wasm_print,
                    config,
                },
            )
        })
        .collect())
}

/// Config files without a plugin beside them (likely a typo the admin wants to hear of).
pub fn orphan_configs(dir: &Path, scan: &Scan) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut orphans: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or(".");
            !name.starts_with('.')
                && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
                && p.file_stem()
                    .and_then(|s| s.to_str())
                    .is_some_and(|s| !scan.contains_key(s))
        })
        .collect();
    orphans.sort();
    orphans
}

/// The plugins whose files are the same in both scans.
pub fn settled<'a>(previous: &Scan, current: &'a Scan) -> BTreeMap<&'a str, &'a Files> {
    current
        .iter()
        .filter(|(stem, files)| previous.get(*stem) == Some(files))
        .map(|(stem, files)| (stem.as_str(), files))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugins_pair_with_their_configs_and_hidden_files_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // `.c.wasm` and `.d.yml` have the extensions of a plugin and a config: only the
        // hidden rule leaves them out.
        for f in [
            "a.wasm",
            "a.yaml",
            "b.wasm",
            ".c.wasm",
            ".c.wasm.tmp",
            ".b.yaml",
            ".d.yml",
            "notes.txt",
            "d.yml",
        ] {
            std::fs::write(d.join(f), f).unwrap();
        }
        std::fs::create_dir(d.join("e.wasm")).unwrap();
        let s = scan(d).unwrap();
        assert_eq!(s.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(s["a"].config.as_ref().unwrap().0, d.join("a.yaml"));
        assert!(s["b"].config.is_none());
        assert_eq!(s["a"].wasm_print.len, 6);
        assert_eq!(orphan_configs(d, &s), vec![d.join("d.yml")]);
    }

    #[test]
    fn a_plugin_settles_once_two_scans_agree() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("a.wasm"), "part").unwrap();
        let first = scan(d).unwrap();
        assert!(
            settled(&Scan::new(), &first).is_empty(),
            "new: not settled yet"
        );
        std::fs::write(d.join("a.wasm"), "partial, longer").unwrap();
        let second = scan(d).unwrap();
        assert!(settled(&first, &second).is_empty(), "still growing");
        let third = scan(d).unwrap();
        assert_eq!(
            settled(&second, &third).keys().copied().collect::<Vec<_>>(),
            ["a"]
        );
        std::fs::write(d.join("a.yaml"), "resync: 1m\n").unwrap();
        let fourth = scan(d).unwrap();
        assert!(
            settled(&third, &fourth).is_empty(),
            "a new config unsettles it"
        );
    }

    #[test]
    fn a_plugin_rewritten_to_the_same_size_is_unsettled_by_its_modification_time() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.wasm");
        std::fs::write(&file, "same size").unwrap();
        let set_modified = |secs: u64| {
            std::fs::File::options()
                .write(true)
                .open(&file)
                .unwrap()
                .set_modified(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs))
                .unwrap();
        };
        set_modified(1_000_000);
        let first = scan(dir.path()).unwrap();
        let second = scan(dir.path()).unwrap();
        assert_eq!(settled(&first, &second).len(), 1, "unchanged: settled");
        set_modified(1_000_001);
        let third = scan(dir.path()).unwrap();
        assert_eq!(third["a"].wasm_print.len, second["a"].wasm_print.len);
        assert!(
            settled(&second, &third).is_empty(),
            "only the modification time changed, and that unsettles it"
        );
    }
}
