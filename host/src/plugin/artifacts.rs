//! Compiled components cached on disk, so a restart does not recompile.
//!
//! An artifact is keyed by the sha256 of the component's bytes and by the engine's
//! compatibility hash (wasmtime version and every setting that changes generated code),
//! and stored with the sha256 of the artifact itself. Only files this host wrote under
//! that key, whose checksum still matches, are ever deserialized.
//!
//! A loaded artifact is *mapped*, not copied onto the heap, so the compiled code a plugin
//! never runs stays out of memory (an idle plugin costs the pages it touched, not the
//! artifact's full size; BENCHMARKS.md has the figures). What is mapped is a private copy: the verified bytes are written to an
//! unlinked file in the cache directory that no other process can open. Mapping the cache
//! file itself would let anyone who changes or truncates it in place crash the host
//! (`SIGBUS`) or change the code it runs. Where no such file can be made, the artifact is
//! deserialized from memory as before.

use super::Error;
use crate::sandbox::Sandbox;
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
    ///
    /// # Guarantees
    /// Compiles under the sandbox's [`compiling`](Sandbox::compiling) guard: one compile
    /// at a time in the process, its freed memory returned after it, and only the mapped
    /// artifact kept.
    pub fn component(
        &self,
        sandbox: &Sandbox,
        bytes: &[u8],
        digest: &str,
    ) -> Result<(Component, Origin), Error> {
        let engine = sandbox.engine();
        let Some(dir) = &self.dir else {
            let turn = sandbox.compiling();
            let artifact = turn.precompile(bytes).map_err(compile_error)?;
            drop(turn);
            return Ok((
                deserialize(engine, &artifact).map_err(compile_error)?,
                Origin::Compiled,
            ));
        };
        let path = dir.join(format!("{digest}-{:016x}.cwasm", engine_key(engine)));
        if let Some(component) = read_cached(engine, &path) {
            return Ok((component, Origin::Cached));
        }
        let turn = sandbox.compiling();
        // Whoever held the turn before may have compiled these very bytes.
        if let Some(component) = read_cached(engine, &path) {
            return Ok((component, Origin::Cached));
        }
        let artifact = turn.precompile(bytes).map_err(compile_error)?;
        drop(turn);
        if let Err(e) = write_cached(&artifact, &path) {
            tracing::warn!(path = %path.display(), error = %e, "could not cache compiled plugin");
        }
        // Run the mapped artifact, never a compiled copy on the heap, so a plugin costs as
        // little memory after its first start as after a restart.
        match load(engine, dir, artifact) {
            Ok(component) => Ok((component, Origin::Compiled)),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "compiled plugin refused by the engine; compiling it in place");
                Ok((compile(engine, bytes)?, Origin::Compiled))
            }
        }
    }
}

fn compile(engine: &wasmtime::Engine, bytes: &[u8]) -> Result<Component, Error> {
    Component::new(engine, bytes).map_err(compile_error)
}

fn compile_error(e: wasmtime::Error) -> Error {
    Error::Compile {
        source: crate::sandbox::boxed(e),
    }
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
    match load(engine, path.parent().unwrap_or(Path::new(".")), artifact) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cached plugin artifact refused; recompiling");
            None
        }
    }
}

/// Loads `artifact` mapped from a private copy in `dir`, or from memory when no private
/// copy can be made.
fn load(engine: &wasmtime::Engine, dir: &Path, artifact: Vec<u8>) -> wasmtime::Result<Component> {
    match private_copy(dir, &artifact) {
        Ok(copy) => {
            drop(artifact);
            deserialize_mapped(engine, &copy)
        }
        Err(e) => {
            tracing::debug!(dir = %dir.display(), error = %e, "no private copy to map; loading the artifact from memory");
            deserialize(engine, &artifact)
        }
    }
}

#[expect(
    unsafe_code,
    reason = "wasmtime requires unsafe to load precompiled code"
)]
fn deserialize(engine: &wasmtime::Engine, artifact: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: `artifact` was produced by this host's compiler (`Compiling::precompile`,
    // an engine of this engine's configuration): just now, or
    // read back from the cache under a key that includes the engine's compatibility hash
    // after its sha256 was checked against the checksum written beside it; wasmtime
    // additionally verifies the engine configuration embedded in the artifact.
    unsafe { Component::deserialize(engine, artifact) }
}

/// `artifact` in an unlinked file in `dir` (`O_TMPFILE` where the filesystem has it):
/// nobody else can open, change or truncate it, and its pages are page cache the kernel
/// may drop, not heap.
fn private_copy(dir: &Path, artifact: &[u8]) -> std::io::Result<std::fs::File> {
    use std::io::Write;
    let mut file = tempfile::tempfile_in(dir)?;
    file.write_all(artifact)?;
    file.flush()?;
    Ok(file)
}

#[expect(
    unsafe_code,
    reason = "wasmtime requires unsafe to load precompiled code"
)]
fn deserialize_mapped(
    engine: &wasmtime::Engine,
    copy: &std::fs::File,
) -> wasmtime::Result<Component> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // The unlinked file is reachable by path only through our own descriptor table.
        let path = format!("/proc/self/fd/{}", copy.as_raw_fd());
        // SAFETY: as for `deserialize`, and the file is our private copy of those verified
        // bytes: unlinked, reachable only through this process's descriptor, written once
        // before this call and never again, so the mapping cannot change under wasmtime.
        unsafe { Component::deserialize_file(engine, path) }
    }
    #[cfg(not(target_os = "linux"))]
    {
        use std::io::{Read, Seek};
        let mut bytes = Vec::new();
        let mut copy = copy;
        copy.rewind()?;
        copy.read_to_end(&mut bytes)?;
        deserialize(engine, &bytes)
    }
}

/// Writes `artifact` to `path` atomically (a temporary file renamed into place), with its
/// checksum beside it.
fn write_cached(artifact: &[u8], path: &Path) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(artifact)?;
    std::fs::write(checksum_path(path), hex::encode(Sha256::digest(artifact)))?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The smallest component: a preamble and nothing else.
    const EMPTY_COMPONENT: &[u8] = b"\0asm\x0d\0\x01\0";

    fn engine(epoch_interruption: bool) -> wasmtime::Engine {
        let mut config = wasmtime::Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(epoch_interruption);
        wasmtime::Engine::new(&config).unwrap()
    }

    /// A sandbox whose engine generates different code with and without inlining.
    fn sandbox(inlining: bool) -> Sandbox {
        Sandbox::new(crate::sandbox::Config {
            inlining,
            pooling: false,
            ..Default::default()
        })
        .unwrap()
    }

    fn origin(artifacts: &Artifacts, sandbox: &Sandbox) -> Origin {
        artifacts
            .component(sandbox, EMPTY_COMPONENT, "digest")
            .unwrap()
            .1
    }

    #[test]
    fn engines_that_generate_different_code_have_different_keys() {
        assert_ne!(engine_key(&engine(true)), engine_key(&engine(false)));
        assert_eq!(engine_key(&engine(true)), engine_key(&engine(true)));
    }

    #[test]
    fn artifacts_of_two_engine_configurations_are_cached_side_by_side() {
        let dir = tempfile::tempdir().unwrap();
        let artifacts = Artifacts::in_dir(dir.path());
        let (inlined, plain) = (sandbox(true), sandbox(false));
        assert_ne!(
            engine_key(inlined.engine()),
            engine_key(plain.engine()),
            "inlining changes the generated code"
        );
        assert_eq!(origin(&artifacts, &inlined), Origin::Compiled);
        assert_eq!(origin(&artifacts, &plain), Origin::Compiled);
        // Neither replaced the other: same component bytes, two keys.
        assert_eq!(origin(&artifacts, &inlined), Origin::Cached);
        assert_eq!(origin(&artifacts, &plain), Origin::Cached);
        let cached = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
            })
            .count();
        assert_eq!(cached, 2);
    }
}
