//! Read-only queries of the host's cache.
//!
//! The host serves these from its in-memory stores, never from the API server, and only
//! for the kinds the plugin declared ([`Metadata`](crate::Metadata): the primary, the
//! watched kinds and the `reads` kinds). Most plugins need none of this: the
//! [`Request`](crate::Request) already carries the related objects. Reach for the cache
//! to look up something the primary merely references, such as a Secret named in its
//! spec.
//!
//! ```no_run
//! use rekon_sdk::k8s_openapi::api::core::v1::Secret;
//!
//! # fn f() -> Result<(), rekon_sdk::Error> {
//! let secret = rekon_sdk::cache::get::<Secret>(Some("default"), "db-credentials")?;
//! let labelled = rekon_sdk::cache::list::<Secret>(Some("default"), Some("app=web"))?;
//! # Ok(()) }
//! ```
//!
//! On native targets the queries go to the installed
//! [`testing::FakeHost`](crate::testing::FakeHost); with none installed the cache is
//! empty.

use std::fmt;

use serde::de::DeserializeOwned;

use crate::sys::{self, Host as _};
use crate::{DynamicObject, Gvk, Kind};

/// Why a cache query failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// The host refused: the kind is not among the plugin's declared kinds.
    UndeclaredKind(String),
    /// The host refused: the label selector did not parse.
    BadSelector(String),
    /// The cached object does not fit the Rust type asked for.
    Invalid {
        /// The kind asked for.
        kind: String,
        /// The object's namespace, `None` when cluster-scoped.
        namespace: Option<String>,
        /// The object's name.
        name: String,
        /// What did not fit: the field path and serde's reason.
        message: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UndeclaredKind(m) => write!(f, "undeclared kind: {m}"),
            Self::BadSelector(m) => write!(f, "bad label selector: {m}"),
            Self::Invalid {
                kind,
                namespace,
                name,
                message,
            } => {
                let ns = namespace
                    .as_deref()
                    .map(|ns| format!("{ns}/"))
                    .unwrap_or_default();
                write!(
                    f,
                    "cached {kind} {ns}{name} does not fit its type: {message}"
                )
            }
        }
    }
}

impl std::error::Error for Error {}

/// The object of kind `T` named `name` in `namespace` (`None` for cluster-scoped kinds),
/// or `None` if the cache does not hold it.
///
/// # Errors
///
/// [`Error::UndeclaredKind`] if the plugin did not declare `T`; [`Error::Invalid`] if
/// the object does not deserialise into `T`.
pub fn get<T: Kind + DeserializeOwned>(
    namespace: Option<&str>,
    name: &str,
) -> Result<Option<T>, Error> {
    get_json(&T::gvk(), namespace, name)?
        .map(|json| decode(T::KIND, &json))
        .transpose()
}

/// The objects of kind `T`, optionally only those in `namespace` and matching the label
/// `selector` (`app=web,tier!=db`, `env in (a,b)`, `!legacy`).
///
/// # Errors
///
/// [`Error::UndeclaredKind`], [`Error::BadSelector`], or [`Error::Invalid`] if an object
/// does not deserialise into `T`.
pub fn list<T: Kind + DeserializeOwned>(
    namespace: Option<&str>,
    selector: Option<&str>,
) -> Result<Vec<T>, Error> {
    list_json(&T::gvk(), namespace, selector)?
        .iter()
        .map(|json| decode(T::KIND, json))
        .collect()
}

/// [`get`] for a kind known only at run time.
///
/// # Errors
///
/// As [`get`].
pub fn get_dynamic(
    kind: &Gvk,
    namespace: Option<&str>,
    name: &str,
) -> Result<Option<DynamicObject>, Error> {
    get_json(kind, namespace, name)?
        .map(|json| decode(&kind.kind, &json))
        .transpose()
}

/// [`list`] for a kind known only at run time.
///
/// # Errors
///
/// As [`list`].
pub fn list_dynamic(
    kind: &Gvk,
    namespace: Option<&str>,
    selector: Option<&str>,
) -> Result<Vec<DynamicObject>, Error> {
    list_json(kind, namespace, selector)?
        .iter()
        .map(|json| decode(&kind.kind, json))
        .collect()
}

fn get_json(kind: &Gvk, namespace: Option<&str>, name: &str) -> Result<Option<String>, Error> {
    crate::host()
        .get(&crate::raw::gvk_to_wit(kind), namespace, name)
        .map_err(refusal)
}

fn list_json(
    kind: &Gvk,
    namespace: Option<&str>,
    selector: Option<&str>,
) -> Result<Vec<String>, Error> {
    crate::host()
        .list(&crate::raw::gvk_to_wit(kind), namespace, selector)
        .map_err(refusal)
}

fn refusal(e: sys::CacheError) -> Error {
    match e {
        sys::CacheError::UndeclaredKind(m) => Error::UndeclaredKind(m),
        sys::CacheError::BadSelector(m) => Error::BadSelector(m),
    }
}

fn decode<T: DeserializeOwned>(kind: &str, json: &str) -> Result<T, Error> {
    crate::decode::from_str(json).map_err(|message| {
        let key = crate::request::key_of(json);
        Error::Invalid {
            kind: kind.to_owned(),
            namespace: key.namespace,
            name: key.name,
            message,
        }
    })
}
