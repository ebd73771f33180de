//! A plugin crate as `rekon dev`'s directory: building its component with cargo and
//! noticing edits to its files.
//!
//! A plugin crate is a Cargo package with a `cdylib` library target (Rust today; other
//! languages get their own builder once they exist). It is built with
//! `cargo build --release --target wasm32-wasip2`, cargo's progress and diagnostics on
//! stderr as usual; the component cargo reports is the plugin. Its files are watched
//! (the crate directory and its subdirectories, except the target directory and hidden
//! ones); a path dependency outside the crate is not.

use super::Error;
use notify::Watcher;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, BufReader};

/// A plugin crate.
#[derive(Debug, Clone)]
pub struct PluginCrate {
    dir: PathBuf,
    manifest: PathBuf,
    name: String,
    target_dir: PathBuf,
}

/// `$CARGO` or `cargo`.
fn cargo() -> std::ffi::OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

impl PluginCrate {
    /// The plugin crate in `dir`: `Ok(None)` when `dir` has no `Cargo.toml`.
    ///
    /// # Errors
    /// [`Error::NotAPluginCrate`] when cargo cannot describe it or it has no `cdylib`
    /// library.
    pub fn detect(dir: &Path) -> Result<Option<PluginCrate>, Error> {
        let manifest = dir.join("Cargo.toml");
        if !manifest.is_file() {
            return Ok(None);
        }
        let manifest = manifest
            .canonicalize()
            .map_err(Error::io(format!("resolving {}", manifest.display())))?;
        let not_plugin = |reason: String| Error::NotAPluginCrate {
            manifest: manifest.clone(),
            reason,
        };
        let out = std::process::Command::new(cargo())
            .args([
                "metadata",
                "--no-deps",
                "--format-version",
                "1",
                "--manifest-path",
            ])
            .arg(&manifest)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| Error::Spawn {
                program: "cargo".into(),
                source,
            })?;
        if !out.status.success() {
            return Err(not_plugin(format!(
                "`cargo metadata` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let meta: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| not_plugin(format!("`cargo metadata` printed no JSON: {e}")))?;
        let package = meta["packages"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["manifest_path"].as_str().map(Path::new) == Some(manifest.as_path()))
            .ok_or_else(|| {
                not_plugin("it is a virtual workspace manifest; run `rekon dev` on a member".into())
            })?;
        let is_cdylib = package["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|t| {
                t["kind"]
                    .as_array()
                    .is_some_and(|k| k.iter().any(|k| k == "cdylib"))
            });
        if !is_cdylib {
            return Err(not_plugin(
                "it has no cdylib library (a rekon plugin has `crate-type = [\"cdylib\", \"rlib\"]` \
                 under [lib]; `rekon new` makes one)"
                    .into(),
            ));
        }
        Ok(Some(PluginCrate {
            dir: manifest
                .parent()
                .expect("a manifest has a directory")
                .to_owned(),
            name: package["name"].as_str().unwrap_or_default().to_owned(),
            target_dir: PathBuf::from(meta["target_directory"].as_str().unwrap_or_default()),
            manifest,
        }))
    }

    /// The package name (the plugin file is `NAME.wasm`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The crate directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Builds the component, cargo's progress and diagnostics on stderr. Dropping the
    /// future stops cargo and what it started (SIGTERM to its process group).
    ///
    /// # Errors
    /// [`Error::CrateBuildFailed`] (the diagnostics were shown), [`Error::NoComponent`],
    /// [`Error::Spawn`].
    pub async fn build(&self) -> Result<PathBuf, Error> {
        let mut command = tokio::process::Command::new(cargo());
        command
            .args(["build", "--release", "--target", "wasm32-wasip2"])
            .args([
                "--message-format",
                "json-render-diagnostics",
                "--manifest-path",
            ])
            .arg(&self.manifest)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        // Its own process group: stopped with everything it started (rustc), and only by us.
        #[cfg(unix)]
        command.process_group(0);
        let mut child = command.spawn().map_err(|source| Error::Spawn {
            program: "cargo".into(),
            source,
        })?;
        let _group = GroupGuard(child.id());
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let mut component = None;
        while let Ok(Some(line)) = lines.next_line().await {
            let Ok(message) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            let ours = message["reason"] == "compiler-artifact"
                && message["manifest_path"].as_str().map(Path::new)
                    == Some(self.manifest.as_path());
            if !ours {
                continue;
            }
            let wasm = message["filenames"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|f| f.as_str())
                .find(|f| f.ends_with(".wasm"));
            if let Some(wasm) = wasm {
                component = Some(PathBuf::from(wasm));
            }
        }
        let status = child.wait().await.map_err(|source| Error::Spawn {
            program: "cargo".into(),
            source,
        })?;
        if !status.success() {
            return Err(Error::CrateBuildFailed {
                name: self.name.clone(),
                status: super::controlplane::describe_exit(status),
            });
        }
        component.ok_or_else(|| Error::NoComponent {
            name: self.name.clone(),
        })
    }

    /// Whether a change at `path` may change the component: a file of the crate, not in
    /// the target directory, not hidden, not an editor's backup.
    pub fn is_source(&self, path: &Path) -> bool {
        let Ok(relative) = path.strip_prefix(&self.dir) else {
            return false;
        };
        if path.starts_with(&self.target_dir) {
            return false;
        }
        let hidden = relative
            .components()
            .any(|c| c.as_os_str().to_string_lossy().starts_with('.'));
        let name = relative
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let backup = name.ends_with('~') || name.ends_with(".swp") || name.ends_with(".tmp");
        !relative.as_os_str().is_empty() && !hidden && !backup
    }

    /// Watches the crate's files: every path that changed is sent on the returned
    /// channel while the watcher lives.
    ///
    /// # Errors
    /// A directory cannot be listed or watched.
    pub fn watch(
        &self,
    ) -> Result<
        (
            notify::RecommendedWatcher,
            tokio::sync::mpsc::UnboundedReceiver<PathBuf>,
        ),
        Error,
    > {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                // Opening, reading and closing a file are reported too (inotify), and
                // every build reads the sources: only a creation, a change or a removal
                // counts.
                if let Ok(event) = event
                    && !matches!(event.kind, notify::EventKind::Access(_))
                {
                    for path in event.paths {
                        let _ = tx.send(path);
                    }
                }
            })
            .map_err(|e| Error::Io {
                action: format!("watching {}", self.dir.display()),
                source: std::io::Error::other(e),
            })?;
        let watch = |w: &mut notify::RecommendedWatcher, path: &Path, mode| {
            w.watch(path, mode).map_err(|e| Error::Io {
                action: format!("watching {}", path.display()),
                source: std::io::Error::other(e),
            })
        };
        // The crate directory itself, and each subdirectory but the target and hidden
        // ones (watching the target directory would report every build's own writes).
        watch(&mut watcher, &self.dir, notify::RecursiveMode::NonRecursive)?;
        let entries = std::fs::read_dir(&self.dir)
            .map_err(Error::io(format!("listing {}", self.dir.display())))?;
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            if path.is_dir() && self.is_source(&path) && !self.target_dir.starts_with(&path) {
                watch(&mut watcher, &path, notify::RecursiveMode::Recursive)?;
            }
        }
        Ok((watcher, rx))
    }
}

/// Sends SIGTERM to a process group when dropped (cargo and the compilers it started).
struct GroupGuard(Option<u32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        #[cfg(unix)]
        if let Some(pid) = self
            .0
            .and_then(|id| rustix::process::Pid::from_raw(id as i32))
        {
            // Fails harmlessly (ESRCH) once the group is gone.
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::TERM);
        }
    }
}

/// Puts `wasm` into `dir` as `NAME.wasm` (written to a hidden file, then renamed, so the
/// host never loads half a file). Answers whether it changed; identical bytes are left
/// alone, so an unchanged build does not reload the plugin.
///
/// # Errors
/// The component cannot be read, or the plugin directory written.
pub fn publish(wasm: &Path, dir: &Path, name: &str) -> Result<bool, Error> {
    let bytes = std::fs::read(wasm).map_err(Error::io(format!("reading {}", wasm.display())))?;
    let target = dir.join(format!("{name}.wasm"));
    if std::fs::read(&target).is_ok_and(|old| old == bytes) {
        return Ok(false);
    }
    let tmp = dir.join(format!(".{name}.wasm.tmp"));
    std::fs::write(&tmp, &bytes).map_err(Error::io(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, &target).map_err(Error::io(format!(
        "renaming {} to {}",
        tmp.display(),
        target.display()
    )))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a_crate() -> PluginCrate {
        PluginCrate {
            dir: PathBuf::from("/w/p"),
            manifest: PathBuf::from("/w/p/Cargo.toml"),
            name: "p".into(),
            target_dir: PathBuf::from("/w/p/target"),
        }
    }

    #[test]
    fn sources_are_the_crates_files_but_target_hidden_and_backups() {
        let c = a_crate();
        for yes in [
            "/w/p/src/lib.rs",
            "/w/p/Cargo.toml",
            "/w/p/crd.yaml",
            "/w/p/wit/x.wit",
        ] {
            assert!(c.is_source(Path::new(yes)), "{yes}");
        }
        for no in [
            "/w/p/target/release/p.wasm",
            "/w/p/.git/index",
            "/w/p/src/.lib.rs.swp",
            "/w/p/src/lib.rs~",
            "/w/other/src/lib.rs",
            "/w/p",
        ] {
            assert!(!c.is_source(Path::new(no)), "{no}");
        }
    }

    /// The next path the watcher reports within `within`, if any.
    async fn next_change(
        rx: &mut tokio::sync::mpsc::UnboundedReceiver<PathBuf>,
        within: std::time::Duration,
    ) -> Option<PathBuf> {
        tokio::time::timeout(within, rx.recv()).await.ok().flatten()
    }

    #[tokio::test]
    async fn reading_the_sources_is_not_a_change_and_writing_them_is() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().canonicalize().unwrap();
        std::fs::create_dir(dir.join("src")).unwrap();
        std::fs::write(dir.join("Cargo.toml"), "[package]\n").unwrap();
        std::fs::write(dir.join("src/lib.rs"), "// v1\n").unwrap();
        let krate = PluginCrate {
            manifest: dir.join("Cargo.toml"),
            target_dir: dir.join("target"),
            name: "p".into(),
            dir: dir.clone(),
        };
        let (_watcher, mut rx) = krate.watch().unwrap();
        // What every build does: cargo reads the manifest and the sources.
        std::fs::read(dir.join("Cargo.toml")).unwrap();
        std::fs::read(dir.join("src/lib.rs")).unwrap();
        std::fs::read_dir(dir.join("src")).unwrap().for_each(drop);
        let read = next_change(&mut rx, std::time::Duration::from_millis(500)).await;
        assert_eq!(
            read, None,
            "a read is reported as a change: a build would start the next"
        );
        std::fs::write(dir.join("src/lib.rs"), "// v2\n").unwrap();
        let written = next_change(&mut rx, std::time::Duration::from_secs(10)).await;
        assert_eq!(written, Some(dir.join("src/lib.rs")));
    }

    #[test]
    fn publishing_identical_bytes_changes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let built = tmp.path().join("built.wasm");
        let dir = tmp.path().join("plugins");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(&built, b"one").unwrap();
        assert!(publish(&built, &dir, "p").unwrap());
        assert!(!publish(&built, &dir, "p").unwrap());
        std::fs::write(&built, b"two").unwrap();
        assert!(publish(&built, &dir, "p").unwrap());
        assert_eq!(std::fs::read(dir.join("p.wasm")).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["p.wasm"], "no temporary file is left");
    }

    #[test]
    fn a_directory_without_cargo_toml_is_not_a_crate_and_a_crate_without_cdylib_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(PluginCrate::detect(tmp.path()).unwrap().is_none());
        std::fs::write(
            tmp.path().join("Cargo.toml"),
            "[package]\nname = \"plain\"\nversion = \"0.1.0\"\nedition = \"2024\"\n[workspace]\n",
        )
        .unwrap();
        std::fs::create_dir(tmp.path().join("src")).unwrap();
        std::fs::write(tmp.path().join("src/lib.rs"), "").unwrap();
        let err = PluginCrate::detect(tmp.path()).unwrap_err();
        assert!(err.to_string().contains("no cdylib library"), "{err}");
    }
}
