//! Building the control plane: the Go program in `tests/controlplane/`, built once per
//! change of its sources and cached under `$REKON_CACHE` — by the code `rekon dev` uses
//! too ([`rekon_host::dev::controlplane`]), so either one's build serves the other.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rekon_host::dev::controlplane::{Progress, build_if_stale, find_go};
pub use rekon_host::dev::controlplane::{cache_dir, source_hash};

use super::{Error, chain};

/// The directory holding the Go program's sources.
pub fn source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("controlplane")
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
        None => build_if_stale(
            &source_dir(),
            &cache_dir().join("bin"),
            find_go,
            Progress::Quiet,
        )
        .map_err(Error::from),
    };
    *outcome = Some(result.as_ref().map(Clone::clone).map_err(|e| chain(e)));
    result
}
