//! Compiled components cached on disk, so a restart does not recompile.
//!
//! An artifact is keyed by the sha256 of the component's bytes and by the engine's
//! compatibility hash (wasmtime version and every setting that changes generated code),
//! and stored with the sha256 of the artifact itself. Only files this host wrote under
//! that key, whose checksum still matches, are ever deserialized.

use super::Error;
use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use wasmtime::component::Component;

/// Where compiled artifacts live; `None` compiles every time.
#[derive(Debug, Clone, Default)]
pub struct Artifacts {
    dir: Option<PathBuf>,
}

/// How a component was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Compiled now.
    Compiled,
    /// Deserialized from the on-disk cache.
    Cached,
}

impl Artifacts {
    /// Caches artifacts in `dir` (created on first write).
    pub fn in_dir(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: Some(dir.into()),
        }
    }

    /// No cache.
    pub fn none() -> Self {
        Self { dir: None }
    }

    /// The component for `bytes`, from the cache or compiled (and then cached).
    ///
    /// # Errors
    /// [`Error::Compile`] when wasmtime rejects the component. A cache that cannot be
    /// read or written is logged and bypassed, never fatal.
    pub fn component(
        &self,
        engine: &wasmtime::Engine,
        bytes: &[u8],
        digest: &str,
    ) -> Result<(Component, Origin), Error> {
        let Some(dir) = &self.dir else {
            return Ok((compile(engine, bytes)?, Origin::Compiled));
        };
        let path = dir.join(format!("{digest}-{:016x}.cwasm", engine_key(engine)));
        if let Some(component) = read_cached(engine, &path) {
            return Ok((component, Origin::Cached));
        }
        let component = compile(engine, bytes)?;
        if let Err(e) = write_cached(&component, &path) {
            tracing::warn!(path = %path.display(), error = %e, "could not cache compiled plugin");
        }
        Ok((component, Origin::Compiled))
    }
}

fn compile(engine: &wasmtime::Engine, bytes: &[u8]) -> Result<Component, Error> {
    Component::new(engine, bytes).map_err(|e| Error::Compile {
        source: super::boxed(e),
    })
}

fn engine_key(engine: &wasmtime::Engine) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    h.finish()
}

fn checksum_path(path: &Path) -> PathBuf {
    path.with_extension("cwasm.sha256")
}

fn read_cached(engine: &wasmtime::Engine, path: &Path) -> Option<Component> {
    let artifact = std::fs::read(path).ok()?;
    let expected = std::fs::read_to_string(checksum_path(path)).ok()?;
    if hex::encode(Sha256::digest(&artifact)) != expected.trim() {
        tracing::warn!(path = %path.display(), "cached plugin artifact does not match its checksum; recompiling");
        return None;
    }
    match deserialize(engine, &artifact) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cached plugin artifact refused; recompiling");
            None
        }
    }
}

#[expect(
    unsafe_code,
    reason = "wasmtime requires unsafe to load precompiled code"
)]
fn deserialize(engine: &wasmtime::Engine, artifact: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: `artifact` was produced by `Component::serialize` of this host, stored under
    // a key that includes the engine's compatibility hash, and its sha256 was just checked
    // against the checksum written beside it; wasmtime additionally verifies the engine
    // configuration embedded in the artifact.
    unsafe { Component::deserialize(engine, artifact) }
}

fn write_cached(component: &Component, path: &Path) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let artifact = component.serialize().map_err(std::io::Error::other)?;
    let tmp = tempfile_in(dir, path)?;
    std::fs::write(&tmp, &artifact)?;
    std::fs::write(checksum_path(path), hex::encode(Sha256::digest(&artifact)))?;
    std::fs::rename(&tmp, path)
}

fn tempfile_in(dir: &Path, path: &Path) -> std::io::Result<PathBuf> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("artifact");
    Ok(dir.join(format!(".{name}.{}.tmp", std::process::id())))
}
