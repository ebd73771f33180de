//! Fixtures for tests against a control plane: polling until a condition holds, fresh
//! namespaces, random names, installed CRDs.

use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};

use super::Error;

/// Polls `check` until it answers `Some`, every 20 ms at first and at most every 250 ms,
/// for at most `timeout`. `what` describes the condition for the error.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut interval = Duration::from_millis(20);
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Err(Error::WaitTimeout {
                what: what.to_string(),
                timeout,
            });
        }
        tokio::time::sleep(interval.min(deadline - now)).await;
        interval = (interval * 2).min(Duration::from_millis(250));
    }
}

/// A namespace made for one test, named `PREFIX-RANDOM`. It is not deleted on drop (the
/// control plane goes away with the test binary); call [`TestNamespace::delete`] to
/// delete it explicitly.
#[derive(Clone)]
pub struct TestNamespace {
    name: String,
    client: kube::Client,
}

impl fmt::Debug for TestNamespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestNamespace")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl TestNamespace {
    /// Creates a namespace `PREFIX-RANDOM` (the prefix is lower-cased and cut to fit).
    pub async fn create(client: &kube::Client, prefix: &str) -> Result<Self, Error> {
        let name = random_name(prefix);
        let namespace: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": { "name": name, "labels": { "rekon.dev/test-namespace": "true" } }
        }))
        .expect("a literal Namespace");
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .map_err(|source| Error::Api {
                action: format!("creating test namespace {name}"),
                source,
            })?;
        Ok(Self {
            name,
            client: client.clone(),
        })
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// An [`Api`] for namespaced resources `K` in this namespace, with the client it was
    /// created with.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// Deletes the namespace (without waiting for it to be gone).
    pub async fn delete(self) -> Result<(), Error> {
        Api::<Namespace>::all(self.client)
            .delete(&self.name, &DeleteParams::default())
            .await
            .map(|_| ())
            .map_err(|source| Error::Api {
                action: format!("deleting test namespace {}", self.name),
                source,
            })
    }
}

/// `PREFIX-xxxxxxxx`: a DNS-1123 label with a random suffix, unique in this process.
pub fn random_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::hash::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u32(std::process::id());
    let mut bits = hasher.finish();
    let mut suffix = String::with_capacity(8);
    for _ in 0..8 {
        suffix.push(char::from(
            b"0123456789abcdefghijklmnopqrstuvwxyz"[(bits % 36) as usize],
        ));
        bits /= 36;
    }
    let mut prefix: String = prefix
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    prefix.truncate(63 - 9);
    let prefix = prefix.trim_matches('-');
    if prefix.is_empty() {
        suffix
    } else {
        format!("{prefix}-{suffix}")
    }
}

/// A CRD given to [`install_crd`]: YAML or JSON text, a JSON value, or a typed object.
pub trait IntoCrd {
    /// The CRD as a typed object.
    fn into_crd(self) -> Result<CustomResourceDefinition, Error>;
}

impl IntoCrd for CustomResourceDefinition {
    fn into_crd(self) -> Result<CustomResourceDefinition, Error> {
        Ok(self)
    }
}

impl IntoCrd for serde_json::Value {
    fn into_crd(self) -> Result<CustomResourceDefinition, Error> {
        serde_json::from_value(self).map_err(|e| Error::Invalid {
            what: "the CustomResourceDefinition".into(),
            source: Box::new(e),
        })
    }
}

impl IntoCrd for &str {
    fn into_crd(self) -> Result<CustomResourceDefinition, Error> {
        serde_yaml::from_str(self).map_err(|e| Error::Invalid {
            what: "the CustomResourceDefinition YAML".into(),
            source: Box::new(e),
        })
    }
}

impl IntoCrd for String {
    fn into_crd(self) -> Result<CustomResourceDefinition, Error> {
        self.as_str().into_crd()
    }
}

/// How long [`install_crd`] waits for the CRD to be established.
pub const CRD_ESTABLISHED_TIMEOUT: Duration = Duration::from_secs(30);

/// Creates or updates a CRD (server-side apply, field manager `rekon-tests`, forced) and
/// waits until it is `Established`, at most [`CRD_ESTABLISHED_TIMEOUT`].
pub async fn install_crd(
    client: &kube::Client,
    crd: impl IntoCrd,
) -> Result<CustomResourceDefinition, Error> {
    let crd = crd.into_crd()?;
    let name = crd.metadata.name.clone().ok_or_else(|| Error::Invalid {
        what: "the CustomResourceDefinition".into(),
        source: "it has no metadata.name".into(),
    })?;
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    api.patch(
        &name,
        &PatchParams::apply("rekon-tests").force(),
        &Patch::Apply(&crd),
    )
    .await
    .map_err(|source| Error::Api {
        action: format!("applying CustomResourceDefinition {name}"),
        source,
    })?;
    let established = tokio::time::timeout(
        CRD_ESTABLISHED_TIMEOUT,
        await_condition(api, &name, conditions::is_crd_established()),
    )
    .await
    .map_err(|_| Error::WaitTimeout {
        what: format!("CustomResourceDefinition {name} is Established"),
        timeout: CRD_ESTABLISHED_TIMEOUT,
    })?
    .map_err(|e| Error::WaitFailed {
        what: format!("CustomResourceDefinition {name} is Established"),
        source: Box::new(e),
    })?;
    established.ok_or_else(|| Error::WaitFailed {
        what: format!("CustomResourceDefinition {name} is Established"),
        source: "it was deleted while waiting".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_names_are_dns_labels() {
        let a = random_name("Smoke_Test");
        let b = random_name("Smoke_Test");
        assert_ne!(a, b);
        assert!(a.starts_with("smoke-test-"), "{a}");
        assert!(a.len() <= 63);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
            "{a}"
        );
        assert!(random_name(&"x".repeat(100)).len() <= 63);
    }
}
