//! The adapter between the contract's wire types and the typed API.
//!
//! [`export_plugin!`](crate::export_plugin) forwards each export to the functions here.
//! They are public for programs that implement the bindings'
//! [`Guest`](crate::bindings::exports::rekon::plugin::guest::Guest) trait themselves —
//! for instance a test plugin that answers most calls through its [`Plugin`] and a few
//! with deliberately malformed output — and for hosts that want to call a plugin
//! natively (benchmarks) with exactly the conversions the component performs.

use std::time::Duration;

use crate::output::{EventType, Mutation, Target};
use crate::plugin::{Mapping, Metadata};
use crate::{Condition, DynamicObject, Error, Gvk, Output, Plugin, Request, condition};

/// The contract's wire types (`rekon:plugin/types`).
pub use crate::bindings::rekon::plugin::types as wit;

/// The plugin's metadata in wire form.
pub fn metadata<P: Plugin + ?Sized>() -> wit::PluginMetadata {
    metadata_to_wit(P::metadata())
}

/// Runs [`Plugin::reconcile`] on a wire request.
///
/// # Errors
///
/// The plugin's error, a permanent error if the request is not valid JSON, or the
/// output's [problem](Output::problem).
pub fn reconcile<P: Plugin + ?Sized>(
    request: wit::Request,
) -> Result<wit::Output, wit::ReconcileError> {
    call(request, P::reconcile)
}

/// Runs [`Plugin::finalize`] on a wire request.
///
/// # Errors
///
/// As [`reconcile`].
pub fn finalize<P: Plugin + ?Sized>(
    request: wit::Request,
) -> Result<wit::Output, wit::ReconcileError> {
    call(request, P::finalize)
}

/// Runs [`Plugin::map_to_primaries`] on a wire object. An object that does not parse
/// maps to nothing, with an error in the host's log.
pub fn map_to_primaries<P: Plugin + ?Sized>(kind: wit::Gvk, object: String) -> Vec<wit::ObjectKey> {
    install_panic_hook();
    let kind = Gvk::new(kind.group, kind.version, kind.kind);
    match serde_json::from_str::<DynamicObject>(&object) {
        Ok(object) => P::map_to_primaries(&kind, &object)
            .into_iter()
            .map(|k| wit::ObjectKey {
                namespace: k.namespace,
                name: k.name,
            })
            .collect(),
        Err(e) => {
            crate::error!("map-to-primaries got an object that does not parse; mapping it to nothing"; kind = kind, error = e);
            Vec::new()
        }
    }
}

fn call(
    request: wit::Request,
    f: impl FnOnce(Request) -> Result<Output, Error>,
) -> Result<wit::Output, wit::ReconcileError> {
    install_panic_hook();
    let request = Request::from_json(request.primary, request.related, request.settings)
        .map_err(error_to_wit)?;
    f(request).and_then(output_to_wit).map_err(error_to_wit)
}

/// Converts an [`Output`] to wire form.
///
/// # Errors
///
/// The output's [problem](Output::problem), if it has one.
pub fn output_to_wit(output: Output) -> Result<wit::Output, Error> {
    if let Some(problem) = output.problem() {
        return Err(problem.clone());
    }
    Ok(wit::Output {
        mutations: output.mutations().iter().map(mutation_to_wit).collect(),
        requeue_after_ms: output
            .requeue()
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        events: output
            .events()
            .iter()
            .map(|e| wit::Event {
                event_type: match e.event_type {
                    EventType::Normal => wit::EventType::Normal,
                    EventType::Warning => wit::EventType::Warning,
                },
                reason: e.reason.clone(),
                note: e.note.clone(),
            })
            .collect(),
        conditions: output.conditions().iter().map(condition_to_wit).collect(),
        prune: output.prunes(),
    })
}

/// Converts an [`Error`] to wire form.
pub fn error_to_wit(error: Error) -> wit::ReconcileError {
    match error {
        Error::Transient(m) => wit::ReconcileError::Transient(m),
        Error::Permanent(m) => wit::ReconcileError::Permanent(m),
    }
}

fn mutation_to_wit(mutation: &Mutation) -> wit::Mutation {
    match mutation {
        Mutation::Apply(v) => wit::Mutation::Apply(json_text(v)),
        Mutation::Create(v) => wit::Mutation::Create(json_text(v)),
        Mutation::Update(v) => wit::Mutation::Update(json_text(v)),
        Mutation::MergePatch { target, patch } => wit::Mutation::MergePatch(wit::MergePatch {
            target: target_to_wit(target),
            patch: json_text(patch),
        }),
        Mutation::Delete(target) => wit::Mutation::Delete(target_to_wit(target)),
        Mutation::UpdateStatus(v) => wit::Mutation::UpdateStatus(json_text(v)),
    }
}

/// Compact JSON text, written straight into a byte buffer: `Value::to_string` goes through
/// `fmt::Display` and a `fmt::Write` adapter, which in wasm is markedly slower
/// (BENCHMARKS.md). Serialising a `Value` cannot fail; an empty string would be
/// refused by the host as malformed.
fn json_text(v: &serde_json::Value) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn target_to_wit(t: &Target) -> wit::Target {
    wit::Target {
        api_version: t.api_version.clone(),
        kind: t.kind.clone(),
        namespace: t.namespace.clone(),
        name: t.name.clone(),
        resource_version: t.resource_version.clone(),
    }
}

fn condition_to_wit(c: &Condition) -> wit::Condition {
    wit::Condition {
        condition_type: c.condition_type.clone(),
        status: match c.status {
            condition::Status::True => wit::ConditionStatus::TrueStatus,
            condition::Status::False => wit::ConditionStatus::FalseStatus,
            condition::Status::Unknown => wit::ConditionStatus::UnknownStatus,
        },
        reason: c.reason.clone(),
        message: c.message.clone(),
    }
}

pub(crate) fn gvk_to_wit(g: &Gvk) -> wit::Gvk {
    wit::Gvk {
        group: g.group.clone(),
        version: g.version.clone(),
        kind: g.kind.clone(),
    }
}

fn metadata_to_wit(m: Metadata) -> wit::PluginMetadata {
    wit::PluginMetadata {
        name: m.name,
        version: m.version,
        primary: gvk_to_wit(&m.primary),
        watches: m
            .watches
            .iter()
            .map(|w| wit::Watch {
                kind: gvk_to_wit(&w.kind),
                mapping: match &w.mapping {
                    Mapping::OwnerReference => wit::KeyMapping::OwnerReference,
                    Mapping::Label(l) => wit::KeyMapping::Label(l.clone()),
                    Mapping::Custom => wit::KeyMapping::Custom,
                },
            })
            .collect(),
        reads: m.reads.iter().map(gvk_to_wit).collect(),
        writes: m.writes.iter().map(gvk_to_wit).collect(),
        resync_seconds: m
            .resync
            .map(|d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX)),
        finalizer: m.finalizer,
    }
}

/// On `wasm32`, routes panic messages (with their location) to the host's log at error
/// level, once per instance. Natively it leaves the panic hook alone.
fn install_panic_hook() {
    #[cfg(target_arch = "wasm32")]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            std::panic::set_hook(Box::new(|info| {
                let message = info
                    .payload()
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| info.payload().downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "(non-string panic payload)".to_owned());
                let location = info
                    .location()
                    .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
                    .unwrap_or_default();
                crate::log::write(
                    crate::log::Level::Error,
                    &format!("plugin panicked at {location}: {message}"),
                    &[
                        ("panic".to_owned(), message.clone()),
                        ("location".to_owned(), location),
                    ],
                );
            }));
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;

    struct Echo;
    impl Plugin for Echo {
        fn metadata() -> Metadata {
            Metadata::new::<ConfigMap>("echo", "1.0.0")
                .owns::<ConfigMap>()
                .resync(Duration::from_secs(90))
        }
        fn reconcile(request: Request) -> Result<Output, Error> {
            let cm: ConfigMap = request.primary()?;
            if cm.data.is_none() {
                return Err(Error::transient("no data yet"));
            }
            Ok(Output::new()
                .apply(&cm)
                .requeue_after(Duration::from_millis(1500))
                .condition(Condition::new("Ready", true, "Copied", "")))
        }
    }

    fn wire(primary: &str) -> wit::Request {
        wit::Request {
            primary: primary.into(),
            related: vec![],
            settings: "{}".into(),
        }
    }

    #[test]
    fn metadata_converts_to_wire_form() {
        let m = metadata::<Echo>();
        assert_eq!(
            (
                m.primary.group.as_str(),
                m.primary.version.as_str(),
                m.primary.kind.as_str()
            ),
            ("", "v1", "ConfigMap")
        );
        assert_eq!(
            (m.watches.len(), m.writes.len(), m.resync_seconds),
            (1, 1, Some(90))
        );
        assert!(matches!(
            m.watches[0].mapping,
            wit::KeyMapping::OwnerReference
        ));
    }

    #[test]
    fn reconcile_round_trips_through_wire_form() {
        let out = reconcile::<Echo>(wire(
            r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"a"},"data":{"k":"v"}}"#,
        ))
        .unwrap();
        assert_eq!(out.requeue_after_ms, Some(1500));
        let wit::Mutation::Apply(json) = &out.mutations[0] else {
            panic!("{:?}", out.mutations)
        };
        let applied: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(applied["data"]["k"], "v");
        assert!(matches!(
            out.conditions[0].status,
            wit::ConditionStatus::TrueStatus
        ));
    }

    #[test]
    fn errors_keep_their_kind_on_the_wire() {
        let err = reconcile::<Echo>(wire(
            r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"a"}}"#,
        ))
        .unwrap_err();
        assert!(matches!(err, wit::ReconcileError::Transient(m) if m == "no data yet"));
        let err = reconcile::<Echo>(wire("{not json")).unwrap_err();
        assert!(matches!(err, wit::ReconcileError::Permanent(m) if m.contains("primary")));
    }
}
