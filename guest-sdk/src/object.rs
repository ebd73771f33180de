//! Kubernetes objects as a plugin sees them: kinds ([`Gvk`], [`Kind`]), untyped objects
//! ([`DynamicObject`]), primary keys ([`ObjectKey`]) and the conversion of any of them to
//! wire JSON ([`ToObject`]).

use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::Error;

/// A Kubernetes kind: API group (empty for the core group), version and kind.
///
/// `apps/v1 Deployment` is `Gvk { group: "apps", version: "v1", kind: "Deployment" }`;
/// `v1 ConfigMap` has an empty group.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Gvk {
    /// API group, empty for the core group.
    pub group: String,
    /// API version within the group, e.g. `v1`.
    pub version: String,
    /// Kind, e.g. `Deployment`.
    pub kind: String,
}

impl Gvk {
    /// A kind from its three parts.
    pub fn new(
        group: impl Into<String>,
        version: impl Into<String>,
        kind: impl Into<String>,
    ) -> Self {
        Self {
            group: group.into(),
            version: version.into(),
            kind: kind.into(),
        }
    }

    /// The kind of a Rust type: `Gvk::of::<Deployment>()`.
    pub fn of<K: Kind + ?Sized>() -> Self {
        Self::new(K::GROUP, K::VERSION, K::KIND)
    }

    /// A kind from an object's `apiVersion` (`apps/v1`, or `v1` for the core group) and
    /// `kind`.
    pub fn from_api_version(api_version: &str, kind: impl Into<String>) -> Self {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        Self::new(group, version, kind)
    }

    /// The `apiVersion` of objects of this kind: `group/version`, or `version` for the
    /// core group.
    pub fn api_version(&self) -> String {
        api_version(&self.group, &self.version)
    }

    /// Whether an object with this `apiVersion` and `kind` is of this kind.
    pub fn matches(&self, api_version: &str, kind: &str) -> bool {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        self.kind == kind && self.group == group && self.version == version
    }
}

impl fmt::Display for Gvk {
    /// `apps/v1 Deployment`, `v1 ConfigMap`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.api_version(), self.kind)
    }
}

pub(crate) fn api_version(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    }
}

/// A Rust type standing for one Kubernetes kind.
///
/// Every [`k8s_openapi`] resource type implements it already (through
/// [`k8s_openapi::Resource`]). For your own custom resource, say which kind it is:
///
/// ```no_run
/// # use serde::{Deserialize, Serialize};
/// # use rekon_sdk::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
/// #[derive(Serialize, Deserialize)]
/// struct WebApp {
///     metadata: ObjectMeta,
///     spec: serde_json::Value,
/// }
///
/// impl rekon_sdk::Kind for WebApp {
///     const GROUP: &'static str = "rekon.dev";
///     const VERSION: &'static str = "v1alpha1";
///     const KIND: &'static str = "WebApp";
/// }
/// ```
///
/// The type then works everywhere a kind is needed: `req.primary::<WebApp>()`,
/// `Metadata::new::<WebApp>(…)`, `Output::apply(&webapp)` (which fills in
/// `apiVersion` and `kind` when the type does not serialise them).
pub trait Kind {
    /// API group, empty for the core group.
    const GROUP: &'static str;
    /// API version within the group.
    const VERSION: &'static str;
    /// Kind name.
    const KIND: &'static str;
    /// Whether objects of this kind live in a namespace. k8s-openapi types say; your own
    /// kinds default to `true` (a custom resource's CRD is usually `scope: Namespaced`):
    /// set it to `false` for a cluster-scoped one.
    const NAMESPACED: bool = true;

    /// This kind as a [`Gvk`].
    fn gvk() -> Gvk {
        Gvk::new(Self::GROUP, Self::VERSION, Self::KIND)
    }

    /// The `apiVersion` of objects of this kind.
    fn api_version() -> String {
        api_version(Self::GROUP, Self::VERSION)
    }
}

impl<T: k8s_openapi::Resource> Kind for T
where
    T::Scope: Scope,
{
    const GROUP: &'static str = T::GROUP;
    const VERSION: &'static str = T::VERSION;
    const KIND: &'static str = T::KIND;
    const NAMESPACED: bool = <T::Scope as Scope>::NAMESPACED;
}

/// k8s-openapi's resource scopes as a constant, for [`Kind::NAMESPACED`].
pub trait Scope {
    /// Whether the resources of this scope live in a namespace.
    const NAMESPACED: bool;
}

impl Scope for k8s_openapi::NamespaceResourceScope {
    const NAMESPACED: bool = true;
}

impl Scope for k8s_openapi::ClusterResourceScope {
    const NAMESPACED: bool = false;
}

impl Scope for k8s_openapi::SubResourceScope {
    // Subresources (Scale, TokenRequest…) are addressed through a namespaced parent.
    const NAMESPACED: bool = true;
}

/// An object of a kind known only at run time: `apiVersion`, `kind`, typed `metadata`,
/// and every other top-level field (`spec`, `status`, `data`, …) kept as JSON in `rest`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DynamicObject {
    /// `group/version`, or `version` for the core group.
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    /// Kind name.
    pub kind: String,
    /// Standard object metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// All other top-level fields.
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

impl DynamicObject {
    /// An empty object of this kind with this name.
    pub fn new(gvk: &Gvk, name: impl Into<String>) -> Self {
        Self {
            api_version: gvk.api_version(),
            kind: gvk.kind.clone(),
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            rest: Map::new(),
        }
    }

    /// Parses an object from its JSON form.
    ///
    /// # Errors
    ///
    /// A permanent [`Error`] if the value is not an object with `apiVersion` and `kind`.
    pub fn from_value(value: Value) -> Result<Self, Error> {
        serde_json::from_value(value)
            .map_err(|e| Error::permanent(format!("not a Kubernetes object: {e}")))
    }

    /// This object's kind.
    pub fn gvk(&self) -> Gvk {
        Gvk::from_api_version(&self.api_version, self.kind.clone())
    }

    /// The object's name, empty if it has none.
    pub fn name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or_default()
    }

    /// The object's namespace, `None` for cluster-scoped objects.
    pub fn namespace(&self) -> Option<&str> {
        self.metadata.namespace.as_deref()
    }

    /// Converts it to a typed object.
    ///
    /// # Errors
    ///
    /// A permanent [`Error`] if the object does not deserialise into `T`.
    pub fn to_typed<T: serde::de::DeserializeOwned>(&self) -> Result<T, Error> {
        let json = serde_json::to_string(self)?;
        crate::decode::from_str(&json).map_err(|reason| {
            Error::permanent(format!(
                "{} {} does not fit {}: {reason}",
                self.kind,
                ObjectKey::of(&self.metadata),
                crate::decode::short_type_name::<T>()
            ))
        })
    }
}

/// Identifies a primary object: namespace (`None` when cluster-scoped) and name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    /// Namespace, `None` for a cluster-scoped primary.
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
}

impl ObjectKey {
    /// A key from namespace and name.
    pub fn new(namespace: Option<&str>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.map(str::to_owned),
            name: name.into(),
        }
    }

    /// The key of an object: its namespace and name.
    pub fn of(meta: &ObjectMeta) -> Self {
        Self {
            namespace: meta.namespace.clone(),
            name: meta.name.clone().unwrap_or_default(),
        }
    }
}

impl fmt::Display for ObjectKey {
    /// `namespace/name`, or `name` when cluster-scoped.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{ns}/{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// Anything that becomes a complete Kubernetes object on the wire: a JSON object with
/// `apiVersion` and `kind`.
///
/// Implemented for every [`Kind`] that is [`Serialize`] (k8s-openapi types and your
/// own custom resources) and for [`DynamicObject`]. The mutation builders of
/// [`Output`](crate::Output) take any `ToObject`.
pub trait ToObject {
    /// The object's JSON, with `apiVersion` and `kind` set.
    ///
    /// # Errors
    ///
    /// A permanent [`Error`] if the value does not serialise to a JSON object, or (for
    /// untyped objects) lacks `apiVersion` or `kind`.
    fn to_object(&self) -> Result<Value, Error>;
}

impl<T: Kind + Serialize> ToObject for T {
    fn to_object(&self) -> Result<Value, Error> {
        let mut value = serde_json::to_value(self)
            .map_err(|e| Error::permanent(format!("serialising a {}: {e}", T::KIND)))?;
        let Value::Object(map) = &mut value else {
            return Err(Error::permanent(format!(
                "a {} serialised to {value}, not a JSON object",
                T::KIND
            )));
        };
        for (field, wanted) in [
            ("apiVersion", T::api_version()),
            ("kind", T::KIND.to_owned()),
        ] {
            match map.get(field) {
                None | Some(Value::Null) => {
                    map.insert(field.to_owned(), Value::String(wanted));
                }
                Some(Value::String(s)) if s.is_empty() => {
                    map.insert(field.to_owned(), Value::String(wanted));
                }
                Some(_) => {}
            }
        }
        Ok(value)
    }
}

impl ToObject for DynamicObject {
    fn to_object(&self) -> Result<Value, Error> {
        if self.api_version.is_empty() || self.kind.is_empty() {
            return Err(Error::permanent(format!(
                "object {:?} has no apiVersion or kind",
                self.metadata.name.as_deref().unwrap_or_default()
            )));
        }
        Ok(serde_json::to_value(self)?)
    }
}

/// Anything the [`Output`](crate::Output) builders and the test fixtures accept as an
/// object: a reference to a [`ToObject`] (a typed object, a [`DynamicObject`]), or a
/// [`serde_json::Value`] manifest such as `json!({"apiVersion": "v1", "kind": …})`.
///
/// A JSON manifest must carry `apiVersion`, `kind` and `metadata.name` itself; typed
/// objects get `apiVersion` and `kind` from their [`Kind`].
pub trait IntoObject {
    /// The object's JSON.
    ///
    /// # Errors
    ///
    /// A permanent [`Error`] if it is not a JSON object with string `apiVersion` and
    /// `kind`.
    fn into_object(self) -> Result<Value, Error>;
}

impl<O: ToObject + ?Sized> IntoObject for &O {
    fn into_object(self) -> Result<Value, Error> {
        self.to_object()
    }
}

impl IntoObject for Value {
    fn into_object(self) -> Result<Value, Error> {
        let has = |field: &str| {
            self.get(field)
                .and_then(Value::as_str)
                .is_some_and(|s| !s.is_empty())
        };
        if !has("apiVersion") || !has("kind") {
            let name = meta_str(&self, "name").unwrap_or_default();
            return Err(Error::permanent(format!(
                "JSON object {name:?} has no apiVersion or kind"
            )));
        }
        Ok(self)
    }
}

/// Reads `metadata.<field>` of an object's JSON as a string.
pub(crate) fn meta_str<'a>(object: &'a Value, field: &str) -> Option<&'a str> {
    object.get("metadata")?.get(field)?.as_str()
}
