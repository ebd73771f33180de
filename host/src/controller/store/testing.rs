//! Fixture builders for the store's tests: `cm("web").ns("shop").rv(3).owned_by("p")`.

use crate::contract::Gvk;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, OwnerReference, Time};
use kube::api::{ApiResource, DynamicObject, TypeMeta};
use serde_json::json;

/// An object under construction.
pub(crate) struct Obj {
    resource: ApiResource,
    obj: DynamicObject,
    uid_set: bool,
}

/// A ConfigMap named `name`.
pub(crate) fn cm(name: &str) -> Obj {
    Obj::new(ApiResource::erase::<ConfigMap>(&()), name)
}

/// A Namespace (cluster-scoped) named `name`.
pub(crate) fn ns_kind(name: &str) -> Obj {
    Obj::new(ApiResource::erase::<Namespace>(&()), name)
}

impl Obj {
    fn new(resource: ApiResource, name: &str) -> Self {
        let mut obj = DynamicObject::new(name, &resource);
        // As in list responses for built-in kinds: no apiVersion/kind on the items.
        obj.types = None::<TypeMeta>;
        obj.data = json!({});
        if name.is_empty() {
            obj.metadata.name = None;
        }
        Self {
            resource,
            obj,
            uid_set: false,
        }
    }

    pub(crate) fn resource(&self) -> ApiResource {
        self.resource.clone()
    }

    pub(crate) fn gvk(&self) -> Gvk {
        Gvk::new(
            &self.resource.group,
            &self.resource.version,
            &self.resource.kind,
        )
    }

    pub(crate) fn ns(mut self, namespace: &str) -> Self {
        self.obj.metadata.namespace = Some(namespace.into());
        self
    }

    pub(crate) fn rv(mut self, rv: u64) -> Self {
        self.obj.metadata.resource_version = Some(rv.to_string());
        self
    }

    pub(crate) fn uid(mut self, uid: &str) -> Self {
        self.obj.metadata.uid = Some(uid.into());
        self.uid_set = true;
        self
    }

    pub(crate) fn generation(mut self, generation: i64) -> Self {
        self.obj.metadata.generation = Some(generation);
        self
    }

    pub(crate) fn deleting(mut self) -> Self {
        self.obj.metadata.deletion_timestamp = Some(Time("2024-01-02T03:04:05Z".parse().unwrap()));
        self
    }

    pub(crate) fn label(mut self, key: &str, value: &str) -> Self {
        self.obj
            .metadata
            .labels
            .get_or_insert_default()
            .insert(key.into(), value.into());
        self
    }

    pub(crate) fn annotation(mut self, key: &str, value: &str) -> Self {
        self.obj
            .metadata
            .annotations
            .get_or_insert_default()
            .insert(key.into(), value.into());
        self
    }

    pub(crate) fn data(mut self, key: &str, value: &str) -> Self {
        let data = self.obj.data.as_object_mut().unwrap();
        data.entry("data").or_insert_with(|| json!({}))[key] = json!(value);
        self
    }

    /// A controller owner reference to `uid`.
    pub(crate) fn owned_by(self, uid: &str) -> Self {
        self.owner(uid, true)
    }

    pub(crate) fn owner(mut self, uid: &str, controller: bool) -> Self {
        self.obj
            .metadata
            .owner_references
            .get_or_insert_default()
            .push(OwnerReference {
                api_version: "example.dev/v1".into(),
                kind: "App".into(),
                name: format!("owner-{uid}"),
                uid: uid.into(),
                controller: Some(controller),
                block_owner_deletion: Some(true),
            });
        self
    }

    pub(crate) fn managed_fields(mut self) -> Self {
        self.obj.metadata.managed_fields = Some(vec![ManagedFieldsEntry {
            manager: Some("kubectl".into()),
            operation: Some("Apply".into()),
            api_version: Some("v1".into()),
            fields_type: Some("FieldsV1".into()),
            ..Default::default()
        }]);
        self
    }

    pub(crate) fn build(mut self) -> DynamicObject {
        if !self.uid_set {
            let ns = self.obj.metadata.namespace.clone().unwrap_or_default();
            let name = self.obj.metadata.name.clone().unwrap_or_default();
            self.obj.metadata.uid = Some(format!("uid-{ns}-{name}"));
        }
        self.obj
    }
}

/// A change as one line (`applied a@5`, `deleted b`, `relisted`), for asserting sequences.
pub(crate) fn describe(change: super::Change) -> String {
    match change {
        super::Change::Upserted { object: o, .. } => format!(
            "applied {}@{}",
            o.name(),
            o.resource_version().unwrap_or("-")
        ),
        super::Change::Deleted(o) => format!("deleted {}", o.name()),
        super::Change::Relisted => "relisted".to_owned(),
    }
}
