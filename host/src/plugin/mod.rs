//! Plugins: turning a `.wasm` file into a [`Loaded`] plugin, and calling it.
//!
//! Loading checks, in order: that the file is a WebAssembly *component* (not a core
//! module or something else), that it targets an accepted `rekon:plugin` version, that it
//! exports the whole `guest` interface, that it imports nothing outside WASI 0.2 and
//! rekon's `host`; then it compiles (or takes the cached artifact), links, and asks the
//! plugin for its [`Metadata`], which must be well formed. Each refusal is an [`Error`]
//! that names the file and the reason in one line.

mod artifacts;
mod metadata;
mod policy;

pub use artifacts::{Artifacts, Origin};
pub use policy::accepted_versions;

use crate::contract::{Export, GuestError, Gvk, Metadata, ObjectKey, Output, Request};
use crate::sandbox::{self, CacheGrant, CacheView, Call, Clock, Limits, PluginPre, Sandbox};
use crate::write::check;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why a plugin file was refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Not WebAssembly at all.
    #[error("not a WebAssembly file (it starts with {magic})")]
    NotWasm {
        /// The first bytes, hex.
        magic: String,
    },
    /// A core module, not a component.
    #[error(
        "a core WebAssembly module, not a component: build the plugin for the wasm32-wasip2 target"
    )]
    CoreModule,
    /// wasmtime could not compile it.
    #[error("does not compile: {source}")]
    Compile {
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// It targets a contract version this host does not accept.
    #[error("targets {found}, but this host accepts {accepted}")]
    UnsupportedVersion {
        /// The version found.
        found: String,
        /// The versions accepted.
        accepted: String,
    },
    /// It does not export the plugin interface.
    #[error("is not a rekon plugin: {reason}")]
    NotAPlugin {
        /// Why.
        reason: String,
    },
    /// The plugin interface lacks a function.
    #[error("is missing the export {name}")]
    MissingExport {
        /// The missing function.
        name: String,
    },
    /// It imports something outside WASI 0.2 and rekon's interfaces.
    #[error(
        "imports {name}, which is outside WASI 0.2 and rekon:plugin; plugins get no other capability"
    )]
    ForbiddenImport {
        /// The import.
        name: String,
    },
    /// Linking failed for another reason.
    #[error("cannot be linked: {source}")]
    Link {
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// `metadata()` failed.
    #[error("metadata() failed: {source}")]
    MetadataCall {
        /// The cause.
        #[source]
        source: sandbox::Error,
    },
    /// `metadata()` returned something unusable.
    #[error("declares invalid metadata: {reason}")]
    InvalidMetadata {
        /// Why.
        reason: String,
    },
}

impl Error {
    /// A bounded label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Read { .. } => "read",
            Error::NotWasm { .. } => "not_wasm",
            Error::CoreModule => "core_module",
            Error::Compile { .. } => "compile",
            Error::UnsupportedVersion { .. } => "unsupported_version",
            Error::NotAPlugin { .. } => "not_a_plugin",
            Error::MissingExport { .. } => "missing_export",
            Error::ForbiddenImport { .. } => "forbidden_import",
            Error::Link { .. } => "link",
            Error::MetadataCall { .. } => "metadata_call",
            Error::InvalidMetadata { .. } => "invalid_metadata",
        }
    }
}

/// A refused file: its path and why.
#[derive(Debug, thiserror::Error)]
#[error("plugin {path} refused: {error}")]
pub struct Refused {
    /// The file.
    pub path: PathBuf,
    /// Why.
    #[source]
    pub error: Error,
}

/// Why one call into a loaded plugin produced no usable output.
#[derive(Debug, thiserror::Error)]
pub enum Fault {
    /// The sandbox stopped the call (trap, timeout, memory cap...).
    #[error("{0}")]
    Sandbox(#[source] sandbox::Error),
    /// The plugin returned output the host refuses.
    #[error("returned invalid output: {0}")]
    InvalidOutput(#[source] check::Error),
    /// The plugin itself reported an error.
    #[error("reported an error: {0}")]
    Guest(#[source] GuestError),
}

impl Fault {
    /// A bounded label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Fault::Sandbox(e) => e.metric_label(),
            Fault::InvalidOutput(e) => e.metric_label(),
            Fault::Guest(GuestError::Transient(_)) => "guest_transient",
            Fault::Guest(GuestError::Permanent(_)) => "guest_permanent",
        }
    }
}

/// Loads plugin files into a [`Sandbox`].
#[derive(Debug, Clone)]
pub struct Loader {
    sandbox: Sandbox,
    artifacts: Artifacts,
    limits: Limits,
}

impl Loader {
    /// A loader compiling into `sandbox`, caching artifacts as `artifacts` says, giving
    /// plugins `limits` by default.
    pub fn new(sandbox: Sandbox, artifacts: Artifacts, limits: Limits) -> Self {
        Self {
            sandbox,
            artifacts,
            limits,
        }
    }

    /// The sandbox plugins are loaded into.
    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    /// Loads and checks one file.
    ///
    /// # Errors
    /// [`Refused`] naming the file and the reason (see [`Error`]).
    pub fn load_file(&self, path: &Path) -> Result<Loaded, Refused> {
        let refused = |error| Refused {
            path: path.to_owned(),
            error,
        };
        let bytes = std::fs::read(path).map_err(|source| {
            refused(Error::Read {
                path: path.to_owned(),
                source,
            })
        })?;
        let mut loaded = self.load_bytes(&bytes).map_err(refused)?;
        loaded.source = Some(path.to_owned());
        Ok(loaded)
    }

    /// Loads and checks a component from memory.
    ///
    /// # Errors
    /// See [`Error`].
    pub fn load_bytes(&self, bytes: &[u8]) -> Result<Loaded, Error> {
        sniff(bytes)?;
        let digest = hex::encode(Sha256::digest(bytes));
        let engine = self.sandbox.engine();
        let (component, origin) = self.artifacts.component(&self.sandbox, bytes, &digest)?;
        let wit_version = policy::check(engine, &component)?;
        let pre = self
            .sandbox
            .prepare(&component)
            .map_err(|source| Error::Link { source })?;
        let call = pre.metadata(&self.limits);
        for line in &call.logs {
            line.emit("(loading)");
        }
        let meta = call
            .result
            .map_err(|source| Error::MetadataCall { source })?;
        metadata::validate(&meta).map_err(|reason| Error::InvalidMetadata { reason })?;
        let pre = pre.named(&meta.name);
        Ok(Loaded {
            metadata: Arc::new(meta),
            digest,
            wit_version,
            origin,
            source: None,
            limits: self.limits.clone(),
            pre,
        })
    }
}

fn sniff(bytes: &[u8]) -> Result<(), Error> {
    match bytes.get(..8) {
        Some([0, b'a', b's', b'm', 0x0d, 0, 1, 0]) => Ok(()),
        Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => Err(Error::CoreModule),
        _ => Err(Error::NotWasm {
            magic: hex::encode(&bytes[..bytes.len().min(8)]),
        }),
    }
}

/// A checked, compiled plugin, ready to be called. Cheap to clone; every call runs in a
/// fresh instance.
#[derive(Clone)]
pub struct Loaded {
    /// What the plugin declared.
    pub metadata: Arc<Metadata>,
    /// sha256 of the component, hex.
    pub digest: String,
    /// The `rekon:plugin` version it targets.
    pub wit_version: String,
    /// Whether it was compiled now or taken from the artifact cache.
    pub origin: Origin,
    /// The file it came from, if any.
    pub source: Option<PathBuf>,
    /// The limits its calls run under.
    pub limits: Limits,
    pre: PluginPre,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded")
            .field("name", &self.metadata.name)
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

impl Loaded {
    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    fn scope(&self, cache: Arc<dyn CacheView>) -> CacheGrant {
        CacheGrant {
            metadata: self.metadata.clone(),
            cache,
        }
    }

    /// Calls `reconcile` or `finalize`, then checks the output against the plugin's
    /// declaration.
    pub fn decide(
        &self,
        entry: Export,
        request: &Request,
        clock: Clock,
        cache: Arc<dyn CacheView>,
    ) -> Call<Output, Fault> {
        let call = self
            .pre
            .decide(entry, request, &self.limits, clock, self.scope(cache));
        self.checked(call, request)
    }

    /// [`decide`](Self::decide) with [`Export::Reconcile`].
    pub fn reconcile(
        &self,
        request: &Request,
        clock: Clock,
        cache: Arc<dyn CacheView>,
    ) -> Call<Output, Fault> {
        self.decide(Export::Reconcile, request, clock, cache)
    }

    /// Maps an object of a custom-mapped watched kind to primary keys.
    pub fn map_to_primaries(
        &self,
        kind: &Gvk,
        object: &str,
        cache: Arc<dyn CacheView>,
    ) -> Call<Vec<ObjectKey>, Fault> {
        self.pre
            .map_to_primaries(kind, object, &self.limits, self.scope(cache))
            .map_result(|r| r.map_err(Fault::Sandbox))
    }

    fn checked(
        &self,
        call: Call<Result<sandbox::RawOutput, GuestError>>,
        request: &Request,
    ) -> Call<Output, Fault> {
        call.map_result(|r| match r {
            Err(e) => Err(Fault::Sandbox(e)),
            Ok(Err(e)) => Err(Fault::Guest(e)),
            Ok(Ok(raw)) => check::output(raw, &self.metadata, &request.primary, &self.limits)
                .map_err(Fault::InvalidOutput),
        })
    }
}
