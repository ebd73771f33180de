//! `rekon release-finalizer PLUGIN`: let go of the finalizer of a plugin that was removed.
//!
//! The host records which finalizer it added for a plugin in the annotation
//! `finalizers.rekon.dev/<plugin>` ([`crate::controller::finalizer::annotation`]). Once the
//! plugin's file is gone, no controller finalizes its objects: those being deleted stay
//! Terminating (the host reported each with a Warning Event `FinalizerOrphaned`). This
//! command finds every object whose recorded finalizer is still in its
//! `metadata.finalizers` and removes it (with the annotation), each with a merge patch
//! preconditioned on the resourceVersion it read, so that a concurrent change is never
//! overwritten (a conflict re-reads and decides again). Nothing is cleaned up: the
//! plugin's `finalize` is not called.

use crate::controller::finalizer;
use clap::Args;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use kube::discovery::{Discovery, Scope, verbs};
use serde_json::{Value, json};
use std::fmt::Write as _;
use std::path::PathBuf;

/// How many times one object is re-read and patched again after a conflict.
const ATTEMPTS: usize = 5;

/// Arguments of `rekon release-finalizer`.
#[derive(Debug, Clone, Args)]
pub struct ReleaseArgs {
    /// The removed plugin's name (as in `rekon check`, not the file name).
    pub plugin: String,
    /// Only objects of this kind: `Kind` (any group) or `Kind.group` (e.g. `WebApp` or
    /// `WebApp.rekon.dev`; `ConfigMap.` for the core group). Default: every kind that
    /// can be listed and patched.
    #[arg(long)]
    pub kind: Option<String>,
    /// Only objects in this namespace (cluster-scoped kinds are then skipped).
    #[arg(long)]
    pub namespace: Option<String>,
    /// Print what would be released, write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Kubeconfig file; in-cluster config or the default kubeconfig when absent.
    #[arg(long, env = "REKON_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
}

/// Why `rekon release-finalizer` stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The plugin name cannot be part of an annotation key.
    #[error("invalid plugin name {name:?}: {reason}")]
    InvalidPlugin {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Discovery failed.
    #[error("discovering the API server's kinds")]
    Discovery(#[source] kube::Error),
    /// `--kind` names no kind the API server serves.
    #[error(
        "--kind {kind:?}: no such kind is served that can be listed and patched (is its CRD installed?)"
    )]
    UnknownKind {
        /// The kind given.
        kind: String,
    },
    /// Listing a kind failed.
    #[error("listing {kind}")]
    List {
        /// The kind (`Kind.group`).
        kind: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// Patching (or re-reading) an object failed; the objects before it were released.
    #[error("releasing {finalizer:?} of {object}")]
    Patch {
        /// `Kind namespace/name`.
        object: String,
        /// The finalizer.
        finalizer: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// Every attempt on one object met a conflict.
    #[error(
        "releasing {finalizer:?} of {object}: still conflicting after {ATTEMPTS} attempts; run it again"
    )]
    Conflicts {
        /// `Kind namespace/name`.
        object: String,
        /// The finalizer.
        finalizer: String,
    },
}

/// Finds and (unless `--dry-run`) releases the plugin's recorded finalizers; returns the
/// report, one line per object.
///
/// # Errors
/// [`Error`]: a bad plugin name or `--kind`, or the API server failing (objects released
/// before the failure stay released; running again is safe).
pub async fn release_finalizer(args: &ReleaseArgs, client: kube::Client) -> Result<String, Error> {
    check_plugin(&args.plugin)?;
    let key = finalizer::annotation(&args.plugin);
    let discovery = Discovery::new(client.clone())
        .run()
        .await
        .map_err(Error::Discovery)?;
    let mut kinds: Vec<(ApiResource, bool)> = Vec::new();
    for group in discovery.groups() {
        for (resource, caps) in group.recommended_resources() {
            let usable = caps.supports_operation(verbs::LIST)
                && caps.supports_operation(verbs::PATCH)
                && !resource.plural.contains('/');
            let namespaced = caps.scope == Scope::Namespaced;
            let wanted = args
                .kind
                .as_deref()
                .is_none_or(|k| kind_matches(k, &resource));
            if usable && wanted && (namespaced || args.namespace.is_none()) {
                kinds.push((resource, namespaced));
            }
        }
    }
    if let Some(kind) = &args.kind
        && kinds.is_empty()
    {
        return Err(Error::UnknownKind { kind: kind.clone() });
    }
    let mut report = String::new();
    let mut count = 0;
    for (resource, namespaced) in &kinds {
        let api: Api<DynamicObject> = match (&args.namespace, namespaced) {
            (Some(ns), true) => Api::namespaced_with(client.clone(), ns, resource),
            _ => Api::all_with(client.clone(), resource),
        };
        let kind_name = if resource.group.is_empty() {
            resource.kind.clone()
        } else {
            format!("{}.{}", resource.kind, resource.group)
        };
        let list = api
            .list_metadata(&ListParams::default())
            .await
            .map_err(|source| Error::List {
                kind: kind_name.clone(),
                source,
            })?;
        for item in list.items {
            let Some(recorded) = item.metadata.annotations.as_ref().and_then(|a| a.get(&key))
            else {
                continue;
            };
            let held = item
                .metadata
                .finalizers
                .as_ref()
                .is_some_and(|f| f.contains(recorded));
            if !held {
                continue;
            }
            let name = item.metadata.name.clone().unwrap_or_default();
            let ns = item.metadata.namespace.clone();
            let object = match &ns {
                Some(ns) => format!("{kind_name} {ns}/{name}"),
                None => format!("{kind_name} {name}"),
            };
            let deleting = if item.metadata.deletion_timestamp.is_some() {
                " (being deleted)"
            } else {
                ""
            };
            let api: Api<DynamicObject> = match &ns {
                Some(ns) => Api::namespaced_with(client.clone(), ns, resource),
                None => Api::all_with(client.clone(), resource),
            };
            let recorded = recorded.clone();
            if args.dry_run {
                let _ = writeln!(report, "would release {recorded:?} of {object}{deleting}");
            } else {
                release_one(&api, &name, &key, &recorded, &object).await?;
                let _ = writeln!(report, "released {recorded:?} of {object}{deleting}");
            }
            count += 1;
        }
    }
    let verb = if args.dry_run {
        "would release"
    } else {
        "released"
    };
    let _ = writeln!(
        report,
        "{verb} {count} finalizer(s) recorded for plugin {}",
        args.plugin
    );
    Ok(report)
}

/// Removes `recorded` from the finalizers of `name` and the annotation `key`, with a
/// resourceVersion precondition; a conflict re-reads the object and tries again.
async fn release_one(
    api: &Api<DynamicObject>,
    name: &str,
    key: &str,
    recorded: &str,
    object: &str,
) -> Result<(), Error> {
    let failed = |source| Error::Patch {
        object: object.to_owned(),
        finalizer: recorded.to_owned(),
        source,
    };
    for _ in 0..ATTEMPTS {
        let Some(current) = api.get_metadata_opt(name).await.map_err(failed)? else {
            return Ok(()); // gone meanwhile
        };
        let finalizers = current.metadata.finalizers.unwrap_or_default();
        if !finalizers.iter().any(|f| f == recorded) {
            return Ok(()); // released meanwhile
        }
        let rest: Vec<&String> = finalizers.iter().filter(|f| *f != recorded).collect();
        let patch = json!({"metadata": {
            "resourceVersion": current.metadata.resource_version,
            "finalizers": rest,
            "annotations": {key: Value::Null},
        }});
        match api
            .patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => return Err(failed(e)),
        }
    }
    Err(Error::Conflicts {
        object: object.to_owned(),
        finalizer: recorded.to_owned(),
    })
}

/// Whether `--kind` names this resource: `Kind` (any group, case-insensitive) or
/// `Kind.group`.
fn kind_matches(wanted: &str, resource: &ApiResource) -> bool {
    match wanted.split_once('.') {
        Some((kind, group)) => kind.eq_ignore_ascii_case(&resource.kind) && group == resource.group,
        None => wanted.eq_ignore_ascii_case(&resource.kind),
    }
}

/// A plugin name must make `finalizers.rekon.dev/<plugin>` a valid annotation key.
fn check_plugin(name: &str) -> Result<(), Error> {
    let bad = |reason: &str| Error::InvalidPlugin {
        name: name.to_owned(),
        reason: reason.to_owned(),
    };
    if name.is_empty() || name.len() > 63 {
        return Err(bad("it must be 1 to 63 characters long"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        || !name.starts_with(|c: char| c.is_ascii_alphanumeric())
        || !name.ends_with(|c: char| c.is_ascii_alphanumeric())
    {
        return Err(bad(
            "only letters, digits, '-', '_' and '.', starting and ending with a letter or digit",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_match_by_name_or_name_and_group() {
        let r = ApiResource {
            group: "rekon.dev".into(),
            version: "v1alpha1".into(),
            api_version: "rekon.dev/v1alpha1".into(),
            kind: "WebApp".into(),
            plural: "webapps".into(),
        };
        assert!(kind_matches("WebApp", &r));
        assert!(kind_matches("webapp", &r));
        assert!(kind_matches("WebApp.rekon.dev", &r));
        assert!(!kind_matches("WebApp.apps", &r));
        assert!(!kind_matches("WebApp.", &r));
        assert!(!kind_matches("Deployment", &r));
    }

    #[test]
    fn a_plugin_name_must_fit_an_annotation_key() {
        assert!(check_plugin("webapp").is_ok());
        assert!(check_plugin("stamp-fin").is_ok());
        for bad in ["", "a/b", "-x", "x y", &"a".repeat(64)] {
            let e = check_plugin(bad).unwrap_err().to_string();
            assert!(e.contains("invalid plugin name"), "{e}");
        }
    }
}
