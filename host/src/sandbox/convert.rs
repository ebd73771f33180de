//! Conversions between the generated bindings and `crate::contract`.
//!
//! Objects stay JSON text here ([`RawOutput`]); parsing and checking them against the
//! plugin's declaration is `write::check`'s job.

use super::bindings::types as wit;
use crate::contract::{
    Condition, ConditionStatus, Event, EventType, GuestError, Gvk, KeyMapping, Metadata, ObjectKey,
    Request, Target, Watch,
};

/// A mutation as the plugin returned it, objects still JSON text.
#[derive(Debug, Clone, PartialEq)]
pub enum RawMutation {
    /// Server-side apply of this object.
    Apply(String),
    /// Create.
    Create(String),
    /// Replace.
    Update(String),
    /// Merge patch (target, patch text).
    MergePatch(Target, String),
    /// Delete.
    Delete(Target),
    /// Status replace.
    UpdateStatus(String),
}

/// An output as the plugin returned it, before `write::check`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RawOutput {
    /// Mutations in order.
    pub mutations: Vec<RawMutation>,
    /// Requeue after, in ms.
    pub requeue_after_ms: Option<u64>,
    /// Events.
    pub events: Vec<Event>,
    /// Conditions.
    pub conditions: Vec<Condition>,
    /// Prune.
    pub prune: bool,
}

pub(super) fn gvk(g: wit::Gvk) -> Gvk {
    Gvk {
        group: g.group,
        version: g.version,
        kind: g.kind,
    }
}

pub(super) fn wit_gvk(g: &Gvk) -> wit::Gvk {
    wit::Gvk {
        group: g.group.clone(),
        version: g.version.clone(),
        kind: g.kind.clone(),
    }
}

pub(super) fn metadata(m: wit::PluginMetadata) -> Metadata {
    Metadata {
        name: m.name,
        version: m.version,
        primary: gvk(m.primary),
        watches: m
            .watches
            .into_iter()
            .map(|w| Watch {
                kind: gvk(w.kind),
                mapping: match w.mapping {
                    wit::KeyMapping::OwnerReference => KeyMapping::OwnerReference,
                    wit::KeyMapping::Label(l) => KeyMapping::Label(l),
                    wit::KeyMapping::Custom => KeyMapping::Custom,
                },
            })
            .collect(),
        reads: m.reads.into_iter().map(gvk).collect(),
        writes: m.writes.into_iter().map(gvk).collect(),
        resync_seconds: m.resync_seconds,
        finalizer: m.finalizer,
    }
}

pub(super) fn request(r: &Request) -> wit::Request {
    wit::Request {
        primary: r.primary.clone(),
        related: r.related.clone(),
        settings: r.settings.clone(),
    }
}

fn target(t: wit::Target) -> Target {
    Target {
        api_version: t.api_version,
        kind: t.kind,
        namespace: t.namespace,
        name: t.name,
        resource_version: t.resource_version,
    }
}

pub(super) fn output(o: wit::Output) -> RawOutput {
    RawOutput {
        mutations: o
            .mutations
            .into_iter()
            .map(|m| match m {
                wit::Mutation::Apply(s) => RawMutation::Apply(s),
                wit::Mutation::Create(s) => RawMutation::Create(s),
                wit::Mutation::Update(s) => RawMutation::Update(s),
                wit::Mutation::MergePatch(p) => RawMutation::MergePatch(target(p.target), p.patch),
                wit::Mutation::Delete(t) => RawMutation::Delete(target(t)),
                wit::Mutation::UpdateStatus(s) => RawMutation::UpdateStatus(s),
            })
            .collect(),
        requeue_after_ms: o.requeue_after_ms,
        events: o
            .events
            .into_iter()
            .map(|e| Event {
                event_type: match e.event_type {
                    wit::EventType::Normal => EventType::Normal,
                    wit::EventType::Warning => EventType::Warning,
                },
                reason: e.reason,
                note: e.note,
            })
            .collect(),
        conditions: o
            .conditions
            .into_iter()
            .map(|c| Condition {
                condition_type: c.condition_type,
                status: match c.status {
                    wit::ConditionStatus::TrueStatus => ConditionStatus::True,
                    wit::ConditionStatus::FalseStatus => ConditionStatus::False,
                    wit::ConditionStatus::UnknownStatus => ConditionStatus::Unknown,
                },
                reason: c.reason,
                message: c.message,
            })
            .collect(),
        prune: o.prune,
    }
}

pub(super) fn guest_error(e: wit::ReconcileError) -> GuestError {
    match e {
        wit::ReconcileError::Transient(m) => GuestError::Transient(m),
        wit::ReconcileError::Permanent(m) => GuestError::Permanent(m),
    }
}

pub(super) fn object_key(k: wit::ObjectKey) -> ObjectKey {
    ObjectKey {
        namespace: k.namespace,
        name: k.name,
    }
}
