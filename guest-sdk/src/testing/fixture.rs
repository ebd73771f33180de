//! Small chained builders for test objects ([`Obj`]) and requests ([`request`]).

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use crate::object::IntoObject;
use crate::{DynamicObject, Error, Kind, Request, ToObject};

/// A test object of any kind, built by chaining: `obj("apps/v1", "Deployment", "web")`.
pub fn obj(api_version: &str, kind: &str, name: &str) -> Obj {
    Obj(json!({ "apiVersion": api_version, "kind": kind, "metadata": { "name": name } }))
}

/// A test object of kind `K`: `object::<WebApp>("web").ns("default").generation(2)`.
pub fn object<K: Kind + ?Sized>(name: &str) -> Obj {
    obj(&K::api_version(), K::KIND, name)
}

/// A Kubernetes object under construction, as JSON. Every method sets one thing and
/// returns the builder; it goes anywhere an object goes, by value or by reference
/// ([`request`], [`FakeHost::with`](super::FakeHost::with), `Output::apply`, …).
#[derive(Clone, Debug, PartialEq)]
pub struct Obj(Value);

impl Obj {
    /// Sets `metadata.namespace`.
    #[must_use]
    pub fn ns(self, namespace: &str) -> Self {
        self.meta("namespace", json!(namespace))
    }

    /// Sets `metadata.namespace` (same as [`ns`](Self::ns)).
    #[must_use]
    pub fn namespace(self, namespace: &str) -> Self {
        self.ns(namespace)
    }

    /// Sets `metadata.resourceVersion`.
    #[must_use]
    pub fn rv(self, resource_version: &str) -> Self {
        self.meta("resourceVersion", json!(resource_version))
    }

    /// Sets `metadata.uid`.
    #[must_use]
    pub fn uid(self, uid: &str) -> Self {
        self.meta("uid", json!(uid))
    }

    /// Sets `metadata.generation`.
    #[must_use]
    pub fn generation(self, generation: i64) -> Self {
        self.meta("generation", json!(generation))
    }

    /// Adds a label.
    #[must_use]
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.meta_map("labels").insert(key.to_owned(), json!(value));
        self
    }

    /// Adds an annotation.
    #[must_use]
    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.meta_map("annotations")
            .insert(key.to_owned(), json!(value));
        self
    }

    /// Adds a controller owner reference to `owner` (its apiVersion, kind, name and uid),
    /// as the host does for applied children.
    ///
    /// # Panics
    ///
    /// If `owner` does not serialise to a Kubernetes object.
    #[must_use]
    pub fn owned_by(mut self, owner: impl IntoObject) -> Self {
        let owner = owner
            .into_object()
            .unwrap_or_else(|e| panic!("owned_by: {e}"));
        let reference = json!({
            "apiVersion": owner["apiVersion"], "kind": owner["kind"],
            "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"].as_str().unwrap_or_default(),
            "controller": true, "blockOwnerDeletion": true,
        });
        match &mut self.0["metadata"]["ownerReferences"] {
            Value::Array(list) => list.push(reference),
            slot => *slot = json!([reference]),
        }
        self
    }

    /// Marks it as being deleted (`metadata.deletionTimestamp`).
    #[must_use]
    pub fn deleting(self, at: &str) -> Self {
        self.meta("deletionTimestamp", json!(at))
    }

    /// Sets `spec`.
    ///
    /// # Panics
    ///
    /// If `spec` does not serialise.
    #[must_use]
    pub fn spec(self, spec: impl Serialize) -> Self {
        self.field("spec", spec)
    }

    /// Sets `status`.
    ///
    /// # Panics
    ///
    /// If `status` does not serialise.
    #[must_use]
    pub fn status(self, status: impl Serialize) -> Self {
        self.field("status", status)
    }

    /// Sets `data` (ConfigMaps, Secrets).
    ///
    /// # Panics
    ///
    /// If `data` does not serialise.
    #[must_use]
    pub fn data(self, data: impl Serialize) -> Self {
        self.field("data", data)
    }

    /// Sets a top-level field.
    ///
    /// # Panics
    ///
    /// If `value` does not serialise.
    #[must_use]
    pub fn field(mut self, name: &str, value: impl Serialize) -> Self {
        let value = serde_json::to_value(value).unwrap_or_else(|e| panic!("field {name}: {e}"));
        self.0[name] = value;
        self
    }

    /// The object as JSON.
    pub fn json(&self) -> &Value {
        &self.0
    }

    /// The object as JSON.
    pub fn build(self) -> Value {
        self.0
    }

    /// The object decoded into `T`.
    ///
    /// # Panics
    ///
    /// If it does not fit `T`: a broken fixture.
    pub fn typed<T: DeserializeOwned>(&self) -> T {
        serde_json::from_value(self.0.clone()).unwrap_or_else(|e| {
            panic!(
                "fixture {} does not fit {}: {e}",
                self.0,
                std::any::type_name::<T>()
            )
        })
    }

    fn meta(mut self, field: &str, value: Value) -> Self {
        self.0["metadata"][field] = value;
        self
    }

    fn meta_map(&mut self, field: &str) -> &mut Map<String, Value> {
        let slot = &mut self.0["metadata"][field];
        if !slot.is_object() {
            *slot = json!({});
        }
        slot.as_object_mut()
            .unwrap_or_else(|| unreachable!("just made it an object"))
    }
}

impl ToObject for Obj {
    fn to_object(&self) -> Result<Value, Error> {
        Ok(self.0.clone())
    }
}

impl IntoObject for Obj {
    fn into_object(self) -> Result<Value, Error> {
        Ok(self.0)
    }
}

impl From<Obj> for Value {
    fn from(o: Obj) -> Self {
        o.0
    }
}

impl From<Obj> for DynamicObject {
    /// # Panics
    ///
    /// If the builder's JSON is not an object: it always is.
    fn from(o: Obj) -> Self {
        serde_json::from_value(o.0).unwrap_or_else(|e| panic!("fixture is not an object: {e}"))
    }
}

/// A [`Request`] for `primary` with no related objects and empty settings; add them with
/// [`Request::with_related`] and [`Request::with_settings`].
///
/// # Panics
///
/// If `primary` does not serialise to a Kubernetes object.
pub fn request(primary: impl IntoObject) -> Request {
    let primary = primary
        .into_object()
        .unwrap_or_else(|e| panic!("request: {e}"));
    Request::from_json(primary.to_string(), Vec::new(), "{}".to_owned())
        .unwrap_or_else(|e| panic!("request: {e}"))
}

impl Request {
    /// Adds a related object (native tests only).
    ///
    /// # Panics
    ///
    /// If `object` does not serialise to a Kubernetes object.
    #[must_use]
    pub fn with_related(self, object: impl IntoObject) -> Self {
        let object = object
            .into_object()
            .unwrap_or_else(|e| panic!("with_related: {e}"));
        let mut related: Vec<String> = self.related_json().map(str::to_owned).collect();
        related.push(object.to_string());
        self.rebuild(related, self.settings_json().to_owned())
    }

    /// Sets the plugin settings (native tests only).
    ///
    /// # Panics
    ///
    /// If `settings` does not serialise.
    #[must_use]
    pub fn with_settings(self, settings: impl Serialize) -> Self {
        let settings =
            serde_json::to_string(&settings).unwrap_or_else(|e| panic!("with_settings: {e}"));
        let related = self.related_json().map(str::to_owned).collect();
        self.rebuild(related, settings)
    }

    fn rebuild(&self, related: Vec<String>, settings: String) -> Self {
        Self::from_json(self.primary_json().to_owned(), related, settings)
            .unwrap_or_else(|e| panic!("{e}"))
    }
}
