//! A rekon test plugin for the write-safety tests. Its primaries are ConfigMaps labelled
//! `rekon.dev/replicas`; the label's value picks the behaviour:
//!
//! - `generate`: keep `data.size` child ConfigMaps, as a ReplicaSet keeps Pods. Missing
//!   ones are created with `generateName: <primary>-` (all in one output); extras are
//!   deleted, newest first. The children are found in the snapshot by owner reference,
//!   so a stale cache would show here as duplicates or repeated deletes.
//! - `create-existing`: create the ConfigMap named `data.target` on every reconcile,
//!   whether or not it exists (the host must not loop on its AlreadyExists).
//! - `probe`: apply two children `<name>-a` and `<name>-b`, in that order, and record a
//!   Normal event `Probed`: a conflict on the first must drop the second and the event.
//! - `claim-update`, `claim-patch`, `claim-delete`: the ConfigMap named `data.target`,
//!   related to the primary by an owner reference, is claimed while nobody has claimed
//!   it (no `data.claimed-by`): replaced with `data.claimed-by: <primary>` (update), merge
//!   patched to it (patch), or deleted (delete). A target claimed by anyone is left alone,
//!   so a write decided on a stale view and retried blindly would show, where a decision
//!   made again on the fresh state writes nothing.
//! - `seal`: apply the primary itself with `data.sealed` set to `data.round`, unless it
//!   already is (the host must never bring a deleted primary back with that apply).
//! - `census`: write nothing, record a Normal event `Census` whose note lists the names of
//!   the children (ConfigMaps it controls) its snapshot shows, sorted: what the host's
//!   cache showed that reconcile.
//!
//! ConfigMaps without the label (the children among them) are left alone.

use rekon_sdk::k8s_openapi::api::core::v1::ConfigMap;
use rekon_sdk::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use rekon_sdk::{Error, Metadata, Output, Plugin, Request, Target};
use std::time::Duration;

/// The label that makes a ConfigMap a primary; its value is the mode.
pub const LABEL: &str = "rekon.dev/replicas";

/// The plugin.
pub struct Replicas;

impl Plugin for Replicas {
    fn metadata() -> Metadata {
        Metadata::new::<ConfigMap>("replicas", env!("CARGO_PKG_VERSION"))
            .owns::<ConfigMap>()
            .resync(Duration::from_secs(3600))
    }

    fn reconcile(req: Request) -> Result<Output, Error> {
        let primary: ConfigMap = req.primary()?;
        let labels = primary.metadata.labels.clone().unwrap_or_default();
        let data = primary.data.clone().unwrap_or_default();
        match labels.get(LABEL).map(String::as_str) {
            Some("generate") => {
                let size: usize = data.get("size").and_then(|s| s.parse().ok()).unwrap_or(0);
                generate(&req, size)
            }
            Some("probe") => {
                let child = |suffix: &str| ConfigMap {
                    metadata: req.child_meta(format!("{}-{suffix}", req.name())),
                    data: Some([("from".to_owned(), req.name().to_owned())].into()),
                    ..ConfigMap::default()
                };
                Ok(Output::new().apply(&child("a")).apply(&child("b")).event(
                    rekon_sdk::EventType::Normal,
                    "Probed",
                    "applied a and b",
                ))
            }
            Some(mode @ ("claim-update" | "claim-patch" | "claim-delete")) => {
                let target = data.get("target").cloned().unwrap_or_default();
                claim(&req, mode, &target)
            }
            Some("seal") => {
                let round = data.get("round").cloned().unwrap_or_default();
                if data.get("sealed") == Some(&round) {
                    return Ok(Output::new());
                }
                Ok(Output::new().apply(rekon_sdk::serde_json::json!({
                    "apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": { "name": req.name(), "namespace": req.namespace() },
                    "data": { "sealed": round },
                })))
            }
            Some("census") => {
                let mut names: Vec<String> = req
                    .related::<ConfigMap>()?
                    .into_iter()
                    .filter(|c| rekon_sdk::owner::is_controlled_by(&c.metadata, &req))
                    .filter_map(|c| c.metadata.name)
                    .collect();
                names.sort();
                Ok(Output::new().event(
                    rekon_sdk::EventType::Normal,
                    "Census",
                    format!("children: {}", names.join(",")),
                ))
            }
            Some("create-existing") => {
                let target = data.get("target").cloned().unwrap_or_default();
                let cm = ConfigMap {
                    metadata: ObjectMeta {
                        owner_references: Some(vec![req.owner_reference()]),
                        ..req.child_meta(target)
                    },
                    ..ConfigMap::default()
                };
                Ok(Output::new().create(&cm))
            }
            _ => Ok(Output::new()),
        }
    }
}

/// Claims the related ConfigMap `target` the way `mode` says, unless someone holds it.
fn claim(req: &Request, mode: &str, target: &str) -> Result<Output, Error> {
    let Some(mut t) = req.related_named::<ConfigMap>(target)? else {
        return Ok(Output::new());
    };
    if t.data.as_ref().is_some_and(|d| d.contains_key(CLAIMED_BY)) {
        return Ok(Output::new());
    }
    let me = req.name().to_owned();
    Ok(match mode {
        "claim-update" => {
            t.data
                .get_or_insert_default()
                .insert(CLAIMED_BY.to_owned(), me);
            Output::new().update(&t)
        }
        "claim-patch" => {
            let patch = rekon_sdk::serde_json::json!({ "data": { (CLAIMED_BY): me } });
            Output::new().merge_patch(&t, patch)
        }
        _ => Output::new().delete(&t),
    })
}

/// The key of a claimed target's data naming who claimed it.
pub const CLAIMED_BY: &str = "claimed-by";

/// Keeps `size` children: creates the missing ones with generated names, deletes the
/// newest extras.
fn generate(req: &Request, size: usize) -> Result<Output, Error> {
    let mut children: Vec<ConfigMap> = req
        .related::<ConfigMap>()?
        .into_iter()
        .filter(|c| rekon_sdk::owner::is_controlled_by(&c.metadata, req))
        .filter(|c| c.metadata.deletion_timestamp.is_none())
        .collect();
    // Oldest first: by creation time, then name.
    children.sort_by(|a, b| {
        (&a.metadata.creation_timestamp, &a.metadata.name)
            .cmp(&(&b.metadata.creation_timestamp, &b.metadata.name))
    });
    let mut out = Output::new();
    for _ in children.len()..size {
        let cm = ConfigMap {
            metadata: ObjectMeta {
                generate_name: Some(format!("{}-", req.name())),
                namespace: req.namespace().map(str::to_owned),
                owner_references: Some(vec![req.owner_reference()]),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        };
        out = out.create(&cm);
    }
    for extra in children.iter().skip(size).rev() {
        out = out.delete(Target::of(extra)?);
    }
    Ok(out)
}

rekon_sdk::export_plugin!(Replicas);
