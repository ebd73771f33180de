//! Building the control plane: the Go program in `tests/controlplane/`, built once per
//! change of its sources and cached under `$REKON_CACHE`.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Instant;

use sha2::{Digest, Sha256};

use super::{Error, LOG_TAIL_LINES, chain, describe_exit, io_error, tail_of_file};

/// The directory holding the Go program's sources.
pub fn source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("controlplane")
}

/// `$REKON_CACHE`, or `$HOME/.cache/rekon`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("REKON_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map_or_else(std::env::temp_dir, PathBuf::from);
    home.join(".cache").join("rekon")
}

/// The path of an up-to-date control plane binary, building it first if its sources
/// changed since the cached build (or `$REKON_CONTROLPLANE_BIN` when set). The result is
/// computed once per process. Concurrent test binaries serialize on a lock file; the
/// binary is built under a temporary name and renamed into place.
pub fn binary() -> Result<PathBuf, Error> {
    // The outcome is kept for the whole process: a failed build is not retried per test.
    // Errors are kept as text, since later callers need a copy.
    static BINARY: Mutex<Option<Result<PathBuf, String>>> = Mutex::new(None);
    let mut outcome = BINARY.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(earlier) = outcome.as_ref() {
        return earlier
            .clone()
            .map_err(|reason| Error::BuildFailedEarlier { reason });
    }
    let result = match std::env::var_os("REKON_CONTROLPLANE_BIN").filter(|b| !b.is_empty()) {
        Some(bin) => Ok(PathBuf::from(bin)),
        None => build_if_stale(&source_dir(), &cache_dir().join("bin"), find_go),
    };
    *outcome = Some(result.as_ref().map(Clone::clone).map_err(|e| chain(e)));
    result
}

/// The sha256 of the files that determine the binary: `*.go`, `go.mod`, `go.sum` and
/// `build.sh`, with their names.
pub fn source_hash(dir: &Path) -> Result<String, Error> {
    let entries = fs::read_dir(dir).map_err(io_error(format!("listing {}", dir.display())))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_error(format!("listing {}", dir.display())))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".go") || matches!(name.as_str(), "go.mod" | "go.sum" | "build.sh") {
            files.push(name);
        }
    }
    files.sort();
    let mut hasher = Sha256::new();
    for name in files {
        let path = dir.join(&name);
        let data = fs::read(&path).map_err(io_error(format!("reading {}", path.display())))?;
        hasher.update((name.len() as u64).to_le_bytes());
        hasher.update(name.as_bytes());
        hasher.update((data.len() as u64).to_le_bytes());
        hasher.update(&data);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Builds `src` into `bin_dir/rekon-controlplane` unless the hash file there says the
/// binary was built from the same sources. `locate_go` is only asked when a build is due.
fn build_if_stale(
    src: &Path,
    bin_dir: &Path,
    locate_go: impl FnOnce() -> Option<PathBuf>,
) -> Result<PathBuf, Error> {
    let binary = bin_dir.join("rekon-controlplane");
    let hash_file = bin_dir.join("rekon-controlplane.sha256");
    let hash = source_hash(src)?;
    let up_to_date =
        || binary.is_file() && fs::read_to_string(&hash_file).is_ok_and(|h| h.trim() == hash);
    if up_to_date() {
        return Ok(binary);
    }

    fs::create_dir_all(bin_dir).map_err(io_error(format!("creating {}", bin_dir.display())))?;
    let lock_path = bin_dir.join("rekon-controlplane.lock");
    let lock =
        File::create(&lock_path).map_err(io_error(format!("creating {}", lock_path.display())))?;
    lock.lock()
        .map_err(io_error(format!("locking {}", lock_path.display())))?;
    // Another process may have built it while we waited for the lock.
    if up_to_date() {
        return Ok(binary);
    }

    let go = locate_go().ok_or_else(|| Error::GoMissing {
        source_dir: src.to_path_buf(),
    })?;
    let tmp = bin_dir.join(format!(
        "rekon-controlplane.building.{}",
        std::process::id()
    ));
    let build_log = bin_dir.join("rekon-controlplane.build.log");
    let log =
        File::create(&build_log).map_err(io_error(format!("creating {}", build_log.display())))?;
    let log_err = log
        .try_clone()
        .map_err(io_error(format!("opening {}", build_log.display())))?;
    eprintln!(
        "rekon-tests: building the control plane from {} (sources changed or first use; a cold build takes minutes), log: {}",
        src.display(),
        build_log.display()
    );
    let began = Instant::now();
    let status = Command::new("bash")
        .arg(src.join("build.sh"))
        .arg(&tmp)
        .env("GO", &go)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .status()
        .map_err(|source| Error::SpawnFailed {
            binary: PathBuf::from("bash"),
            source,
        })?;
    if !status.success() {
        let _ = fs::remove_file(&tmp);
        if status.code() == Some(3) {
            return Err(Error::GoMissing {
                source_dir: src.to_path_buf(),
            });
        }
        return Err(Error::BuildFailed {
            source_dir: src.to_path_buf(),
            status: describe_exit(status),
            log_tail: tail_of_file(&build_log, LOG_TAIL_LINES),
        });
    }
    fs::rename(&tmp, &binary).map_err(io_error(format!(
        "moving the built control plane {} to {}",
        tmp.display(),
        binary.display()
    )))?;
    let tmp_hash = bin_dir.join(format!("rekon-controlplane.sha256.{}", std::process::id()));
    fs::write(&tmp_hash, format!("{hash}\n"))
        .map_err(io_error(format!("writing {}", tmp_hash.display())))?;
    fs::rename(&tmp_hash, &hash_file)
        .map_err(io_error(format!("writing {}", hash_file.display())))?;
    eprintln!(
        "rekon-tests: built the control plane in {:.0?}",
        began.elapsed()
    );
    Ok(binary)
}

/// `$GO`, else `go` on `PATH`, else `/usr/local/go/bin/go`: the first that exists.
fn find_go() -> Option<PathBuf> {
    if let Some(go) = std::env::var_os("GO").filter(|g| !g.is_empty()) {
        return Some(PathBuf::from(go));
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("go"));
    on_path
        .chain(std::iter::once(PathBuf::from("/usr/local/go/bin/go")))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A copy of the Go sources in a temporary directory, to break at will.
    fn copy_of_sources() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("a temporary directory");
        for entry in fs::read_dir(source_dir()).expect("the Go sources are listable") {
            let entry = entry.expect("a directory entry");
            if entry.file_type().expect("a file type").is_file() {
                fs::copy(entry.path(), dir.path().join(entry.file_name()))
                    .expect("copying a source");
            }
        }
        dir
    }

    #[test]
    fn a_missing_go_toolchain_is_named_in_the_error() {
        let src = copy_of_sources();
        let bin = tempfile::tempdir().expect("a temporary directory");
        let err = build_if_stale(src.path(), bin.path(), || None).expect_err("no Go, no build");
        assert!(matches!(err, Error::GoMissing { .. }), "{err:?}");
        assert!(err.to_string().contains("no Go toolchain found"), "{err}");
    }

    #[test]
    fn a_go_path_that_does_not_run_is_reported_as_go_missing() {
        let src = copy_of_sources();
        let bin = tempfile::tempdir().expect("a temporary directory");
        let err = build_if_stale(src.path(), bin.path(), || {
            Some(PathBuf::from("/nonexistent/go"))
        })
        .expect_err("a Go that does not exist cannot build");
        assert!(matches!(err, Error::GoMissing { .. }), "{err:?}");
    }

    #[test]
    fn a_failing_build_quotes_the_compiler_output() {
        let src = copy_of_sources();
        fs::write(
            src.path().join("broken.go"),
            // An error in the import clause fails while go loads packages, before it
            // compiles any dependency (a body-level error would first build all of
            // Kubernetes on a cold cache).
            "package main\n\nimport (\n\tthis is not Go\n)\n",
        )
        .expect("writing a broken source");
        let bin = tempfile::tempdir().expect("a temporary directory");
        let err = build_if_stale(src.path(), bin.path(), find_go)
            .expect_err("a syntax error fails the build");
        let Error::BuildFailed {
            log_tail, status, ..
        } = &err
        else {
            panic!("expected BuildFailed, got {err:?}")
        };
        assert_eq!(status, "exit status 4");
        assert!(
            log_tail.contains("broken.go"),
            "the compiler's complaint is quoted: {log_tail}"
        );
        assert!(
            !bin.path().join("rekon-controlplane").exists(),
            "no binary is left behind"
        );
    }

    #[test]
    fn the_source_hash_changes_with_any_source() {
        let src = copy_of_sources();
        let before = source_hash(src.path()).expect("hashing");
        assert_eq!(
            before,
            source_hash(src.path()).expect("hashing"),
            "the hash is stable"
        );
        fs::write(src.path().join("extra.go"), "package main\n").expect("adding a source");
        let after = source_hash(src.path()).expect("hashing");
        assert_ne!(before, after);
        fs::write(src.path().join("notes.txt"), "not a source").expect("adding a non-source");
        assert_eq!(
            after,
            source_hash(src.path()).expect("hashing"),
            "other files do not count"
        );
    }
}
