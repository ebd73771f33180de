//! The running plugins follow the plugin directory.
//!
//! Each pass ([`PluginSet::sync`]) scans the directory and acts on plugins whose files
//! have settled (see [`super::dir`]):
//! - a new `NAME.wasm` is loaded, checked and started;
//! - a changed one (or a changed `NAME.yaml`) is loaded and checked *first*; only a
//!   plugin that passes replaces the running version. If its declaration and options are
//!   unchanged the swap is in place — reconciles already running finish on the old
//!   version, the next ones use the new — otherwise the old controller is stopped and the
//!   new one started;
//! - a file that fails leaves whatever ran before running; the refusal is logged, counted
//!   and recorded as a Kubernetes Warning Event, once per version of the file;
//! - a plugin that passed its checks but could not start (its CRD is missing, RBAC
//!   forbids a kind) is retried every `retry` period and whenever its files change;
//! - a removed file stops its controller, waiting for in-flight reconciles.

use super::config::PluginConfig;
use super::dir::{self, Files, Scan};
use crate::contract::{Event, EventType, Metadata};
use crate::controller::{Host, PluginOptions};
use crate::metrics::Metrics;
use crate::plugin::{Loaded, Loader};
use crate::write::events::Recorder;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where refusals are reported as Kubernetes Events.
#[derive(Clone)]
pub struct Reporter {
    /// Records the events.
    pub recorder: Recorder,
    /// The object they are about (the host's Pod, or its Lease), as JSON.
    pub regarding: Value,
}

/// What happened to one plugin in a pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// Started for the first time (or again after a failed start).
    Started {
        /// The plugin's name.
        plugin: String,
    },
    /// A new version replaced the running one.
    Replaced {
        /// The plugin's name.
        plugin: String,
        /// Whether the controller was restarted (declaration or options changed).
        restarted: bool,
    },
    /// Its file was removed; the controller stopped.
    Stopped {
        /// The plugin's name.
        plugin: String,
    },
    /// The file or its config was refused; what ran before keeps running.
    Refused {
        /// The plugin file's stem.
        file: String,
        /// Why, in one line.
        reason: String,
    },
}

struct Active {
    plugin: String,
    files: Files,
    digest: String,
    config: PluginConfig,
    metadata: Metadata,
}

/// Why a plugin's files were refused, in one line, and when to try them again.
struct Refusal {
    reason: String,
    /// `Some`: the plugin passed its checks but did not start; retried at this time.
    /// `None`: tried again only when its files change.
    retry_at: Option<Instant>,
}

impl Refusal {
    /// A refusal that stands until the files change.
    fn for_good(reason: String) -> Self {
        Self {
            reason,
            retry_at: None,
        }
    }
}

struct Failed {
    files: Files,
    /// `Some`: the plugin passed its checks but did not start; retried at this time.
    retry_at: Option<Instant>,
}

/// The plugins of one directory, kept in step with it.
pub struct PluginSet {
    host: Host,
    metrics: Arc<Metrics>,
    loader: Loader,
    dir: PathBuf,
    reporter: Option<Reporter>,
    retry: Duration,
    previous: Scan,
    active: BTreeMap<String, Active>,
    failed: BTreeMap<String, Failed>,
    orphans_reported: Vec<PathBuf>,
}

impl PluginSet {
    /// Plugins of `dir`, run by `host`, loaded by `loader`; refusals also go to
    /// `reporter` when given. Loads, refusals and start failures are counted in `metrics`.
    pub fn new(
        host: Host,
        loader: Loader,
        dir: PathBuf,
        reporter: Option<Reporter>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            host,
            metrics,
            loader,
            dir,
            reporter,
            retry: Duration::from_secs(30),
            previous: Scan::new(),
            active: BTreeMap::new(),
            failed: BTreeMap::new(),
            orphans_reported: Vec::new(),
        }
    }

    /// The directory.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Whether every plugin file has been acted on: nothing is still settling or waiting
    /// to retry a start.
    pub fn is_settled(&self) -> bool {
        dir::scan(&self.dir).is_ok_and(|now| {
            now == self.previous
                && now.keys().all(|stem| {
                    self.active.contains_key(stem)
                        || self.failed.get(stem).is_some_and(|f| f.retry_at.is_none())
                })
        })
    }

    /// One pass over the directory. Returns what changed and whether some file has not
    /// settled yet (the caller should pass again soon).
    ///
    /// # Errors
    /// The directory cannot be read (running plugins are left alone).
    pub async fn sync(&mut self) -> std::io::Result<(Vec<Transition>, bool)> {
        let current = dir::scan(&self.dir)?;
        let settled: BTreeMap<String, Files> = dir::settled(&self.previous, &current)
            .into_iter()
            .map(|(s, f)| (s.to_owned(), f.clone()))
            .collect();
        let unsettled = settled.len() < current.len();
        self.previous = current;
        let mut changes = Vec::new();

        let orphans = dir::orphan_configs(&self.dir, &self.previous);
        for path in &orphans {
            if !self.orphans_reported.contains(path) {
                tracing::warn!(file = %path.display(), "config file without a NAME.wasm beside it; ignored");
            }
        }
        self.orphans_reported = orphans;

        let gone: Vec<String> = self
            .active
            .keys()
            .filter(|stem| !self.previous.contains_key(*stem))
            .cloned()
            .collect();
        for stem in gone {
            if let Some(a) = self.active.remove(&stem) {
                tracing::info!(plugin = %a.plugin, file = %a.files.wasm.display(), "plugin file removed; stopping its controller");
                self.host.remove(&a.plugin).await;
                changes.push(Transition::Stopped { plugin: a.plugin });
            }
        }
        self.failed
            .retain(|stem, _| self.previous.contains_key(stem));

        for (stem, files) in settled {
            if self.active.get(&stem).is_some_and(|a| a.files == files) {
                continue;
            }
            if let Some(f) = self.failed.get(&stem)
                && f.files == files
                && f.retry_at.is_none_or(|at| Instant::now() < at)
            {
                continue;
            }
            if let Some(change) = self.load_and_start(&stem, files).await {
                changes.push(change);
            }
        }
        Ok((changes, unsettled))
    }

    /// Loads `files` and starts or swaps the plugin. `None` when nothing changed.
    async fn load_and_start(&mut self, stem: &str, files: Files) -> Option<Transition> {
        let config = match self.read_config(&files) {
            Ok(c) => c,
            Err(refusal) => return Some(self.refuse(stem, files, refusal).await),
        };
        let (bytes, digest) = match self.read_wasm(&files) {
            Ok(read) => read,
            Err(refusal) => return Some(self.refuse(stem, files, refusal).await),
        };
        if let Some(a) = self.active.get_mut(stem)
            && a.digest == digest
            && a.config == config
        {
            a.files = files; // touched, not changed
            return None;
        }
        let loaded = match self.load(&files, bytes, &config).await {
            Ok(l) => l,
            Err(refusal) => return Some(self.refuse(stem, files, refusal).await),
        };
        let plugin = loaded.name().to_owned();
        let metadata = (*loaded.metadata).clone();
        let change = match self
            .start_or_swap(stem, &files, loaded, &plugin, &metadata, &config)
            .await
        {
            Ok(c) => c,
            Err(refusal) => return Some(self.refuse(stem, files, refusal).await),
        };
        let active = Active {
            plugin,
            files,
            digest,
            config,
            metadata,
        };
        self.record_active(stem, active, &change).await;
        Some(change)
    }

    /// The plugin's `NAME.yaml`, or the defaults when there is none.
    fn read_config(&self, files: &Files) -> Result<PluginConfig, Refusal> {
        match &files.config {
            Some((path, _)) => PluginConfig::read(path).map_err(|e| {
                self.metrics.plugin_refused_because("config");
                Refusal::for_good(e.to_string())
            }),
            None => Ok(PluginConfig::default()),
        }
    }

    /// The bytes of the `.wasm` file and their sha256, in hex.
    fn read_wasm(&self, files: &Files) -> Result<(Vec<u8>, String), Refusal> {
        let bytes = std::fs::read(&files.wasm).map_err(|e| {
            self.metrics.plugin_refused_because("read");
            Refusal::for_good(format!("cannot read {}: {e}", files.wasm.display()))
        })?;
        let digest = hex::encode(Sha256::digest(&bytes));
        Ok((bytes, digest))
    }

    /// Loads and checks the plugin (on a blocking thread), with the limits of its config.
    async fn load(
        &self,
        files: &Files,
        bytes: Vec<u8>,
        config: &PluginConfig,
    ) -> Result<Loaded, Refusal> {
        let loader = self.loader.clone();
        let loaded = tokio::task::spawn_blocking(move || loader.load_bytes(&bytes)).await;
        let mut loaded = match loaded {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => {
                self.metrics.plugin_refused(&e);
                let reason = format!("{}: {e}", files.wasm.display());
                return Err(Refusal::for_good(reason));
            }
            Err(e) => {
                self.metrics.plugin_refused_because("panic");
                let reason = format!("{}: loading panicked: {e}", files.wasm.display());
                return Err(Refusal::for_good(reason));
            }
        };
        self.metrics.plugin_loaded(loaded.origin);
        loaded.source = Some(files.wasm.clone());
        loaded.limits = config.limits(&loaded.limits);
        Ok(loaded)
    }

    /// Runs `loaded` as `plugin`: swapped into its running controller in place when the
    /// declaration and config are unchanged, otherwise in a new controller that, once
    /// ready, replaces the running one (if any). A failure to start leaves the running
    /// one in place and is retried after `retry`.
    async fn start_or_swap(
        &mut self,
        stem: &str,
        files: &Files,
        loaded: Loaded,
        plugin: &str,
        metadata: &Metadata,
        config: &PluginConfig,
    ) -> Result<Transition, Refusal> {
        let options = PluginOptions {
            namespaces: config.namespaces.clone(),
            resync: config.resync,
            concurrency: config.concurrency,
            sandbox_share: config.sandbox_share,
            settings: config.settings_json(),
            adopt: config.adopt_kinds(),
        };

        let in_place = self.active.get(stem).is_some_and(|r| {
            r.plugin == plugin && same_declaration(&r.metadata, metadata) && r.config == *config
        });
        let change = match self.host.get(plugin).filter(|_| in_place) {
            Some(running) => {
                running.replace_plugin(loaded);
                Transition::Replaced {
                    plugin: plugin.to_owned(),
                    restarted: false,
                }
            }
            None => {
                // The new controller is made ready first; only then does the running one
                // (if any) stop. A failure leaves the running one in place.
                let replacing = self
                    .active
                    .get(stem)
                    .map(|a| a.plugin.clone())
                    .filter(|p| self.host.get(p).is_some());
                let prepared = match self
                    .host
                    .prepare(loaded, options, replacing.as_deref())
                    .await
                {
                    Ok(p) => p,
                    Err(e) => {
                        self.metrics.plugin_start_failed(&e);
                        return Err(Refusal {
                            reason: format!("{}: {e}", files.wasm.display()),
                            retry_at: Some(Instant::now() + self.retry),
                        });
                    }
                };
                let old = self.active.remove(stem);
                if let Some(old) = &old {
                    tracing::info!(plugin = %old.plugin, "declaration or options changed; the new controller is ready, swapping");
                }
                self.host.launch(prepared).await;
                match old {
                    Some(_) => Transition::Replaced {
                        plugin: plugin.to_owned(),
                        restarted: true,
                    },
                    None => Transition::Started {
                        plugin: plugin.to_owned(),
                    },
                }
            }
        };
        Ok(change)
    }

    /// Logs and reports `change`, and records `active` as what runs for `stem`.
    async fn record_active(&mut self, stem: &str, active: Active, change: &Transition) {
        let (reason, how) = match change {
            Transition::Started { .. } => ("PluginStarted", ""),
            Transition::Replaced {
                restarted: true, ..
            } => ("PluginReplaced", ", controller restarted"),
            _ => ("PluginReplaced", ", in place"),
        };
        let note = format!(
            "{} {} ({}){how}",
            active.plugin,
            active.metadata.version,
            &active.digest[..12]
        );
        tracing::info!(file = %active.files.wasm.display(), "{reason}: {note}");
        self.report(stem, EventType::Normal, reason, note).await;
        self.active.insert(stem.to_owned(), active);
        self.failed.remove(stem);
    }

    async fn refuse(&mut self, stem: &str, files: Files, refusal: Refusal) -> Transition {
        let Refusal { reason, retry_at } = refusal;
        let kept = self.active.get(stem).map(|a| a.plugin.clone());
        tracing::error!(file = %files.wasm.display(), kept_running = ?kept, reason = %reason, "plugin refused");
        let note = match &kept {
            Some(p) => format!("{reason} (the running version of {p} is kept)"),
            None => reason.clone(),
        };
        self.report(stem, EventType::Warning, "PluginRefused", note)
            .await;
        self.failed
            .insert(stem.to_owned(), Failed { files, retry_at });
        Transition::Refused {
            file: stem.to_owned(),
            reason,
        }
    }

    async fn report(&self, stem: &str, event_type: EventType, reason: &str, note: String) {
        let Some(r) = &self.reporter else { return };
        let event = Event {
            event_type,
            reason: reason.to_owned(),
            note,
        };
        if let Err(e) = r.recorder.record(stem, &r.regarding, &event).await {
            tracing::warn!(error = %e, reason, "could not record the event");
        }
    }
}

/// Whether two declarations watch and write the same things (the version may differ).
fn same_declaration(a: &Metadata, b: &Metadata) -> bool {
    Metadata {
        version: String::new(),
        ..a.clone()
    } == Metadata {
        version: String::new(),
        ..b.clone()
    }
}
