//! `rekon check PLUGIN.wasm`.

use crate::contract::KeyMapping;
use crate::plugin::{Artifacts, Loaded, Loader};
use crate::sandbox::{self, Sandbox};
use std::fmt::Write as _;
use std::path::Path;

/// Loads `path` and renders its declaration, permissions and limits.
///
/// # Errors
/// The refusal, naming the file and the reason, or a sandbox setup failure.
pub fn check(path: &Path, artifact_dir: Option<&Path>) -> anyhow::Result<String> {
    let sandbox = Sandbox::new(sandbox::Config {
        pool_instances: 4,
        ..Default::default()
    })?;
    let artifacts = artifact_dir.map(Artifacts::in_dir).unwrap_or_default();
    let loader = Loader::new(sandbox, artifacts, sandbox::Limits::default());
    let started = std::time::Instant::now();
    let plugin = loader.load_file(path)?;
    Ok(render(&plugin, started.elapsed()))
}

fn render(p: &Loaded, took: std::time::Duration) -> String {
    let m = &p.metadata;
    let mut out = String::new();
    let list = |kinds: Vec<String>| {
        if kinds.is_empty() {
            "-".to_owned()
        } else {
            kinds.join(", ")
        }
    };
    let _ = writeln!(out, "plugin     {} {}", m.name, m.version);
    let _ = writeln!(
        out,
        "component  sha256:{} (rekon:plugin@{}, {:?} in {} ms)",
        &p.digest[..16],
        p.wit_version,
        p.origin,
        took.as_millis()
    );
    let _ = writeln!(out, "primary    {}", m.primary);
    let watches = m
        .watches
        .iter()
        .map(|w| {
            let how = match &w.mapping {
                KeyMapping::OwnerReference => "by owner reference".to_owned(),
                KeyMapping::Label(l) => format!("by label {l}"),
                KeyMapping::Custom => "by map-to-primaries".to_owned(),
            };
            format!("{} ({how})", w.kind)
        })
        .collect();
    let _ = writeln!(out, "watches    {}", list(watches));
    let _ = writeln!(
        out,
        "reads      {}",
        list(m.reads.iter().map(ToString::to_string).collect())
    );
    let _ = writeln!(
        out,
        "writes     {}",
        list(m.writes.iter().map(ToString::to_string).collect())
    );
    let _ = writeln!(
        out,
        "resync     {}",
        m.resync_seconds
            .map_or("host default".to_owned(), |s| format!("{s}s"))
    );
    let _ = writeln!(out, "finalizer  {}", m.finalizer.as_deref().unwrap_or("-"));
    let _ = writeln!(out, "permissions:");
    for r in crate::rbac::rules(m) {
        let group = if r.group.is_empty() { "\"\"" } else { &r.group };
        let _ = writeln!(
            out,
            "  {group:<20} {:<28} {}",
            r.resource,
            r.verbs.join(",")
        );
    }
    let l = &p.limits;
    let _ = writeln!(
        out,
        "limits     memory {} MiB, {:?} per call, output {} MiB, object {} KiB, log {} KiB, \
         {} events, {} conditions",
        l.memory_bytes >> 20,
        l.time_budget,
        l.output_bytes >> 20,
        l.object_bytes >> 10,
        l.log_bytes >> 10,
        l.max_events,
        l.max_conditions
    );
    out
}
