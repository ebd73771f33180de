//! What a plugin is given for one reconcile: [`Request`].

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::{DynamicObject, Error, Gvk, Kind, ObjectKey, decode};

/// The primary object, the related objects the host's cache holds for it, and the
/// operator's settings for the plugin — all as the host sent them (JSON), decoded on
/// demand into the types you ask for.
///
/// ```no_run
/// # use rekon_sdk::{Request, Error};
/// use rekon_sdk::k8s_openapi::api::apps::v1::Deployment;
/// # #[derive(serde::Deserialize)] struct WebApp {}
/// # #[derive(serde::Deserialize, Default)] struct Settings {}
/// # fn f(req: Request) -> Result<(), Error> {
/// let app: WebApp = req.primary()?;                          // your own type
/// let deployments = req.related::<Deployment>()?;             // related Deployments only
/// let mine = req.related_named::<Deployment>(req.name())?;    // one of them, by name
/// let settings: Settings = req.settings()?;                   // `{}` when none are set
/// # Ok(()) }
/// ```
///
/// The primary's identity (`name`, `namespace`, `generation`, …) is available without
/// decoding the whole object.
#[derive(Clone, Debug)]
pub struct Request {
    primary: String,
    head: Head,
    related: Vec<(Head, String)>,
    settings: String,
}

/// The identifying part of an object: enough to filter and name it without decoding it.
#[derive(Clone, Debug, Default, Deserialize)]
struct Head {
    #[serde(rename = "apiVersion", default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    metadata: HeadMeta,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct HeadMeta {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    generation: Option<i64>,
    deletion_timestamp: Option<String>,
}

impl Head {
    fn parse(json: &str, what: &str) -> Result<Self, Error> {
        serde_json::from_str(json).map_err(|e| {
            Error::permanent(format!(
                "the host sent {what} that is not a Kubernetes object: {e}"
            ))
        })
    }

    fn describe(&self) -> String {
        match (&self.metadata.namespace, &self.metadata.name) {
            (Some(ns), Some(name)) => format!("{} {ns}/{name}", self.kind),
            (None, Some(name)) => format!("{} {name}", self.kind),
            (_, None) => format!("unnamed {}", self.kind),
        }
    }
}

/// The namespace and name of an object's JSON (empty if it does not parse).
pub(crate) fn key_of(json: &str) -> ObjectKey {
    let head = serde_json::from_str::<Head>(json).unwrap_or_default();
    ObjectKey {
        namespace: head.metadata.namespace,
        name: head.metadata.name.unwrap_or_default(),
    }
}

impl Request {
    /// A request from the JSON texts the host sends: the primary, the related objects,
    /// and the settings (an empty string counts as `{}`).
    ///
    /// Plugins receive requests ready-made; this is for the SDK's adapter and for tests
    /// (see [`testing::request`](crate::testing::request) for a friendlier builder).
    ///
    /// # Errors
    ///
    /// A permanent [`Error`] if the primary or a related object is not a JSON object
    /// (the settings are checked when [`settings`](Self::settings) is called).
    pub fn from_json(
        primary: String,
        related: Vec<String>,
        settings: String,
    ) -> Result<Self, Error> {
        let head = Head::parse(&primary, "a primary")?;
        let related = related
            .into_iter()
            .map(|json| Ok((Head::parse(&json, "a related object")?, json)))
            .collect::<Result<_, Error>>()?;
        Ok(Self {
            primary,
            head,
            related,
            settings,
        })
    }

    /// Decodes the primary object into `T`: your custom resource type, a k8s-openapi
    /// type, [`DynamicObject`] or [`serde_json::Value`].
    ///
    /// # Errors
    ///
    /// A permanent [`Error`] naming the object if it does not fit `T` (an invalid spec
    /// does not become valid on retry).
    pub fn primary<T: DeserializeOwned>(&self) -> Result<T, Error> {
        decode::from_str(&self.primary).map_err(|reason| {
            Error::permanent(format!(
                "{} does not fit {}: {reason}",
                self.head.describe(),
                decode::short_type_name::<T>()
            ))
        })
    }

    /// The primary's JSON text as the host sent it.
    pub fn primary_json(&self) -> &str {
        &self.primary
    }

    /// The primary's kind, from its `apiVersion` and `kind`.
    pub fn gvk(&self) -> Gvk {
        Gvk::from_api_version(&self.head.api_version, self.head.kind.clone())
    }

    /// The primary's name (empty if it has none, which the host never sends).
    pub fn name(&self) -> &str {
        self.head.metadata.name.as_deref().unwrap_or_default()
    }

    /// The primary's namespace, `None` when cluster-scoped.
    pub fn namespace(&self) -> Option<&str> {
        self.head.metadata.namespace.as_deref()
    }

    /// The primary's namespace and name.
    pub fn key(&self) -> ObjectKey {
        ObjectKey::new(self.namespace(), self.name())
    }

    /// The primary's `metadata.generation` (bumped by the API server on every spec
    /// change); the host stamps it on conditions as `observedGeneration`.
    pub fn generation(&self) -> Option<i64> {
        self.head.metadata.generation
    }

    /// The primary's `metadata.resourceVersion` as the plugin sees it.
    pub fn resource_version(&self) -> Option<&str> {
        self.head.metadata.resource_version.as_deref()
    }

    /// The primary's `metadata.uid`.
    pub fn uid(&self) -> Option<&str> {
        self.head.metadata.uid.as_deref()
    }

    /// Whether the primary is a core `v1` `Namespace`.
    fn primary_is_namespace(&self) -> bool {
        self.head.api_version == "v1" && self.head.kind == "Namespace"
    }

    /// The namespace the primary's namespaced children and related objects live in: the
    /// primary's own namespace; for a `Namespace` primary, the namespace it names; `None`
    /// for any other cluster-scoped primary (it has no namespace to offer).
    pub fn child_namespace(&self) -> Option<&str> {
        match self.namespace() {
            Some(ns) => Some(ns),
            None if self.primary_is_namespace() => Some(self.name()),
            None => None,
        }
    }

    /// Metadata for a child object: `name` in [`child_namespace`](Self::child_namespace)
    /// (the primary's namespace; for a `Namespace` primary, the namespace it names),
    /// nothing else (the host adds the owner reference).
    ///
    /// For any other cluster-scoped primary the namespace is left unset: right for a
    /// cluster-scoped child; a namespaced child must name its namespace itself.
    pub fn child_meta(&self, name: impl Into<String>) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: self.child_namespace().map(str::to_owned),
            ..ObjectMeta::default()
        }
    }

    /// Whether the primary is being deleted (`metadata.deletionTimestamp` is set).
    pub fn is_deleting(&self) -> bool {
        self.head.metadata.deletion_timestamp.is_some()
    }

    /// The related objects of kind `T` (matched on `apiVersion` and `kind`), decoded, in
    /// the order the host sent them.
    ///
    /// # Errors
    ///
    /// A permanent [`Error`] naming the first object that does not fit `T`.
    pub fn related<T: Kind + DeserializeOwned>(&self) -> Result<Vec<T>, Error> {
        let gvk = T::gvk();
        self.related
            .iter()
            .filter(|(head, _)| gvk.matches(&head.api_version, &head.kind))
            .map(|(head, json)| decode_related(head, json))
            .collect()
    }

    /// The related object of kind `T` named `name`, if the host sent one: for a
    /// namespaced `T`, in [`child_namespace`](Self::child_namespace) (the primary's
    /// namespace; for a `Namespace` primary, the namespace it names); for a
    /// cluster-scoped `T` ([`Kind::NAMESPACED`] false), the one of that name.
    ///
    /// # Errors
    ///
    /// A permanent [`Error`] if that object does not fit `T`, or if `T` is namespaced
    /// and the primary is cluster-scoped and not a `Namespace`: there is no namespace to
    /// look in, so name it with [`related_in`](Self::related_in).
    pub fn related_named<T: Kind + DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<Option<T>, Error> {
        let namespace = if T::NAMESPACED {
            Some(self.child_namespace().ok_or_else(|| {
                Error::permanent(format!(
                    "related_named::<{}>({name:?}): {} is namespaced and the primary {} is \
                     cluster-scoped, so it has no namespace to look in; use \
                     related_in(namespace, name)",
                    decode::short_type_name::<T>(),
                    T::KIND,
                    self.head.describe()
                ))
            })?)
        } else {
            None
        };
        self.related_in(namespace, name)
    }

    /// The related object of kind `T` named `name` in `namespace` (`None`: a
    /// cluster-scoped object), if the host sent one.
    ///
    /// # Errors
    ///
    /// A permanent [`Error`] if that object does not fit `T`.
    pub fn related_in<T: Kind + DeserializeOwned>(
        &self,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<T>, Error> {
        let gvk = T::gvk();
        self.related
            .iter()
            .find(|(head, _)| {
                gvk.matches(&head.api_version, &head.kind)
                    && head.metadata.name.as_deref() == Some(name)
                    && head.metadata.namespace.as_deref() == namespace
            })
            .map(|(head, json)| decode_related(head, json))
            .transpose()
    }

    /// Every related object, untyped.
    ///
    /// # Errors
    ///
    /// A permanent [`Error`] if one lacks `apiVersion` or `kind`.
    pub fn related_dynamic(&self) -> Result<Vec<DynamicObject>, Error> {
        self.related
            .iter()
            .map(|(head, json)| decode_related(head, json))
            .collect()
    }

    /// The related objects' JSON texts as the host sent them.
    pub fn related_json(&self) -> impl Iterator<Item = &str> {
        self.related.iter().map(|(_, json)| json.as_str())
    }

    /// Decodes the operator's settings for this plugin into `T`. No settings are `{}`,
    /// so a `T` whose fields all have `#[serde(default)]` always decodes.
    ///
    /// # Errors
    ///
    /// A permanent [`Error`] if the settings do not fit `T`.
    pub fn settings<T: DeserializeOwned>(&self) -> Result<T, Error> {
        let json = if self.settings.trim().is_empty() {
            "{}"
        } else {
            &self.settings
        };
        decode::from_str(json).map_err(|reason| {
            Error::permanent(format!(
                "plugin settings do not fit {}: {reason}",
                decode::short_type_name::<T>()
            ))
        })
    }

    /// The settings' JSON text as the host sent it.
    pub fn settings_json(&self) -> &str {
        &self.settings
    }
}

fn decode_related<T: DeserializeOwned>(head: &Head, json: &str) -> Result<T, Error> {
    decode::from_str(json).map_err(|reason| {
        Error::permanent(format!(
            "related {} does not fit {}: {reason}",
            head.describe(),
            decode::short_type_name::<T>()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::Service;

    fn request(related: &[&str]) -> Request {
        Request::from_json(
            r#"{"apiVersion":"rekon.dev/v1alpha1","kind":"WebApp","metadata":{"name":"web","namespace":"default","generation":4,"resourceVersion":"7","uid":"u1"},"spec":{}}"#.into(),
            related.iter().map(|s| (*s).to_owned()).collect(),
            String::new(),
        )
        .unwrap()
    }

    const DEPLOY_WEB: &str = r#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"web","namespace":"default"},"spec":{"replicas":2,"selector":{},"template":{}}}"#;
    const DEPLOY_OTHER: &str = r#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"other","namespace":"default"}}"#;
    const SERVICE_WEB: &str =
        r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"web","namespace":"default"}}"#;
    const FOREIGN_DEPLOY: &str = r#"{"apiVersion":"extensions/v1beta1","kind":"Deployment","metadata":{"name":"web","namespace":"default"}}"#;

    #[test]
    fn identity_is_read_without_decoding_the_primary() {
        let req = request(&[]);
        assert_eq!(
            (req.name(), req.namespace(), req.generation()),
            ("web", Some("default"), Some(4))
        );
        assert_eq!(
            (req.resource_version(), req.uid(), req.is_deleting()),
            (Some("7"), Some("u1"), false)
        );
        assert_eq!(req.gvk(), Gvk::new("rekon.dev", "v1alpha1", "WebApp"));
        assert_eq!(req.key().to_string(), "default/web");
    }

    #[test]
    fn related_filters_by_api_version_and_kind() {
        let req = request(&[SERVICE_WEB, DEPLOY_WEB, FOREIGN_DEPLOY, DEPLOY_OTHER]);
        let names: Vec<_> = req
            .related::<Deployment>()
            .unwrap()
            .into_iter()
            .map(|d| d.metadata.name.unwrap())
            .collect();
        assert_eq!(names, ["web", "other"]);
        assert_eq!(req.related::<Service>().unwrap().len(), 1);
        assert_eq!(req.related_dynamic().unwrap().len(), 4);
    }

    #[test]
    fn related_named_finds_one_by_name() {
        let req = request(&[DEPLOY_OTHER, DEPLOY_WEB]);
        let web = req.related_named::<Deployment>("web").unwrap().unwrap();
        assert_eq!(web.spec.replicas, Some(2));
        assert!(
            req.related_named::<Deployment>("missing")
                .unwrap()
                .is_none()
        );
        assert!(req.related_named::<Service>("web").unwrap().is_none());
    }

    fn cluster_scoped(api_version: &str, kind: &str, related: &[&str]) -> Request {
        Request::from_json(
            format!(r#"{{"apiVersion":"{api_version}","kind":"{kind}","metadata":{{"name":"team-a","uid":"u2"}}}}"#),
            related.iter().map(|s| (*s).to_owned()).collect(),
            String::new(),
        )
        .unwrap()
    }

    const QUOTA_IN_TEAM_A: &str = r#"{"apiVersion":"v1","kind":"ResourceQuota","metadata":{"name":"default","namespace":"team-a"}}"#;
    const CLUSTER_ROLE: &str = r#"{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"ClusterRole","metadata":{"name":"team-a"}}"#;

    #[test]
    fn a_namespace_primary_finds_and_places_namespaced_children_in_the_namespace_it_names() {
        use k8s_openapi::api::core::v1::ResourceQuota;
        use k8s_openapi::api::rbac::v1::ClusterRole;
        let req = cluster_scoped("v1", "Namespace", &[QUOTA_IN_TEAM_A, CLUSTER_ROLE]);
        assert_eq!(req.namespace(), None);
        assert_eq!(req.child_namespace(), Some("team-a"));
        assert_eq!(req.child_meta("x").namespace.as_deref(), Some("team-a"));
        let quota = req.related_named::<ResourceQuota>("default").unwrap();
        assert_eq!(quota.unwrap().metadata.namespace.as_deref(), Some("team-a"));
        let role = req.related_named::<ClusterRole>("team-a").unwrap();
        assert!(
            role.is_some(),
            "a cluster-scoped kind is looked up without a namespace"
        );
        assert!(
            req.related_in::<ResourceQuota>(Some("team-b"), "default")
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn another_cluster_scoped_primary_refuses_a_namespaced_lookup_naming_the_kind() {
        use k8s_openapi::api::core::v1::ResourceQuota;
        use k8s_openapi::api::rbac::v1::ClusterRole;
        let req = cluster_scoped(
            "rbac.authorization.k8s.io/v1",
            "ClusterRole",
            &[QUOTA_IN_TEAM_A],
        );
        assert_eq!(req.child_namespace(), None);
        assert_eq!(req.child_meta("x").namespace, None);
        let err = req.related_named::<ResourceQuota>("default").unwrap_err();
        assert!(!err.is_transient());
        assert!(
            err.message().contains("ResourceQuota is namespaced")
                && err
                    .message()
                    .contains("ClusterRole team-a is cluster-scoped")
                && err.message().contains("related_in"),
            "{err}"
        );
        let found = req
            .related_in::<ResourceQuota>(Some("team-a"), "default")
            .unwrap();
        assert!(found.is_some());
        assert!(req.related_named::<ClusterRole>("x").unwrap().is_none());
    }

    #[test]
    fn a_primary_that_does_not_fit_is_a_permanent_error_naming_it() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Strict {
            spec: StrictSpec,
        }
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct StrictSpec {
            image: String,
        }
        let err = request(&[]).primary::<Strict>().unwrap_err();
        assert!(!err.is_transient());
        assert_eq!(
            err.message(),
            "WebApp default/web does not fit Strict: spec: missing field `image`"
        );
    }

    #[test]
    fn a_related_object_that_does_not_fit_is_named_with_the_field_path() {
        const BAD_REPLICAS: &str = r#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"web","namespace":"default"},"spec":{"replicas":"3","selector":{},"template":{}}}"#;
        let err = request(&[BAD_REPLICAS])
            .related::<Deployment>()
            .unwrap_err();
        assert_eq!(
            err.message(),
            r#"related Deployment default/web does not fit Deployment: spec.replicas: invalid type: string "3", expected i32"#
        );
        assert!(!err.is_transient());
        let err = request(&[BAD_REPLICAS])
            .related_named::<Deployment>("web")
            .unwrap_err();
        assert!(err.message().contains("spec.replicas"), "{err}");
    }

    #[test]
    fn a_dynamic_object_that_does_not_fit_names_itself_and_the_field() {
        let dynamic = DynamicObject::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"ports": "80"},
        }))
        .unwrap();
        let err = dynamic.to_typed::<Service>().unwrap_err();
        assert!(
            err.message().starts_with(
                r#"Service default/web does not fit Service: spec.ports: invalid type: string "80""#
            ),
            "{err}"
        );
        let fine = request(&[DEPLOY_WEB]).related_dynamic().unwrap().remove(0);
        assert!(fine.to_typed::<Deployment>().is_ok());
    }

    #[test]
    fn invalid_json_from_the_host_is_refused_at_construction() {
        let err = Request::from_json("{not json".into(), vec![], String::new()).unwrap_err();
        assert!(err.message().contains("primary"), "{err}");
        let err = Request::from_json("{}".into(), vec!["[1]".into()], String::new()).unwrap_err();
        assert!(err.message().contains("related"), "{err}");
    }

    #[test]
    fn empty_settings_decode_as_an_empty_object() {
        #[derive(serde::Deserialize, Default, PartialEq, Debug)]
        #[serde(default)]
        struct Settings {
            replicas_cap: Option<u32>,
        }
        assert_eq!(
            request(&[]).settings::<Settings>().unwrap(),
            Settings::default()
        );
        let req = Request::from_json("{}".into(), vec![], r#"{"replicas_cap":3}"#.into()).unwrap();
        assert_eq!(req.settings::<Settings>().unwrap().replicas_cap, Some(3));
        let req =
            Request::from_json("{}".into(), vec![], r#"{"replicas_cap":"x"}"#.into()).unwrap();
        assert_eq!(
            req.settings::<Settings>().unwrap_err().message(),
            r#"plugin settings do not fit Settings: replicas_cap: invalid type: string "x", expected u32"#
        );
    }
}
