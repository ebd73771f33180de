//! The Kubernetes permissions a plugin's declaration implies.
//!
//! Resource names are derived from kinds by the same rule as Kubernetes' default
//! pluralisation (lowercase; `s`, `es` after s/x/z/ch/sh, `ies` after a consonant + y),
//! which is what CRDs use unless they name their plural otherwise.

use crate::contract::{Gvk, Metadata};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use std::collections::BTreeMap;

/// One RBAC rule: verbs on a resource of an API group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// API group, empty for core.
    pub group: String,
    /// Resource (plural), possibly with a subresource: `webapps/status`.
    pub resource: String,
    /// Verbs, sorted.
    pub verbs: Vec<&'static str>,
}

const READ: &[&str] = &["get", "list", "watch"];
/// Writes, and `get`: before an apply of an object the plugin did not see, the host reads
/// it to find out whether it exists and who controls it (consent).
const WRITE: &[&str] = &["create", "get", "update", "patch", "delete"];

/// The plural resource name Kubernetes derives from a kind.
pub fn plural(kind: &str) -> String {
    let lower = kind.to_ascii_lowercase();
    if let Some(stem) = lower.strip_suffix('y')
        && !stem.ends_with(['a', 'e', 'i', 'o', 'u'])
    {
        return format!("{stem}ies");
    }
    if ["s", "x", "z", "ch", "sh"]
        .iter()
        .any(|s| lower.ends_with(s))
    {
        return format!("{lower}es");
    }
    format!("{lower}s")
}

/// The rules a plugin needs: read on every readable kind; write on writable kinds; status
/// and patch on the primary (conditions, finalizers).
pub fn rules(meta: &Metadata) -> Vec<Rule> {
    rules_with(meta, |k| plural(&k.kind))
}

/// [`rules`] with the plural of each kind given by `plural_of` (e.g. from discovery, for
/// CRDs whose plural is not the default one).
pub fn rules_with(meta: &Metadata, plural_of: impl Fn(&Gvk) -> String) -> Vec<Rule> {
    let mut acc: BTreeMap<(String, String), Vec<&'static str>> = BTreeMap::new();
    let mut add = |k: &Gvk, sub: Option<&str>, verbs: &[&'static str]| {
        let resource = match sub {
            Some(s) => format!("{}/{s}", plural_of(k)),
            None => plural_of(k),
        };
        let entry = acc.entry((k.group.clone(), resource)).or_default();
        entry.extend(verbs);
        entry.sort();
        entry.dedup();
    };
    for k in meta.readable_kinds() {
        add(&k, None, READ);
    }
    for k in &meta.writes {
        add(k, None, WRITE);
    }
    add(&meta.primary, None, &["patch", "update"]);
    add(&meta.primary, Some("status"), &["get", "patch", "update"]);
    acc.into_iter()
        .map(|((group, resource), verbs)| Rule {
            group,
            resource,
            verbs,
        })
        .collect()
}

/// What the host itself needs, whatever its plugins: Leases for leader election, Events
/// (both APIs: rekon writes `events.k8s.io/v1`), access reviews for its start-up permission
/// check, and discovery.
pub fn host_rules() -> Vec<PolicyRule> {
    let rule = |group: &str, resources: &[&str], verbs: &[&str]| PolicyRule {
        api_groups: Some(vec![group.to_owned()]),
        resources: Some(resources.iter().map(|r| (*r).to_owned()).collect()),
        verbs: verbs.iter().map(|v| (*v).to_owned()).collect(),
        ..Default::default()
    };
    vec![
        rule(
            "coordination.k8s.io",
            &["leases"],
            &["create", "get", "update"],
        ),
        rule("events.k8s.io", &["events"], &["create", "patch"]),
        rule("", &["events"], &["create", "patch"]),
        rule(
            "authorization.k8s.io",
            &["selfsubjectaccessreviews"],
            &["create"],
        ),
        PolicyRule {
            non_resource_urls: Some(
                ["/api", "/api/*", "/apis", "/apis/*", "/version"]
                    .map(str::to_owned)
                    .to_vec(),
            ),
            verbs: vec!["get".to_owned()],
            ..Default::default()
        },
    ]
}

/// One ClusterRole granting what the host and every plugin in `plugins` need, one rule per
/// resource (verbs merged across plugins), sorted, so the output diffs well.
pub fn cluster_role(name: &str, plugins: &[&Metadata]) -> ClusterRole {
    let mut merged: BTreeMap<(String, String), Vec<&'static str>> = BTreeMap::new();
    for m in plugins {
        for r in rules(m) {
            let verbs = merged.entry((r.group, r.resource)).or_default();
            verbs.extend(r.verbs);
            verbs.sort_unstable();
            verbs.dedup();
        }
    }
    let mut all = host_rules();
    all.extend(
        merged
            .into_iter()
            .map(|((group, resource), verbs)| PolicyRule {
                api_groups: Some(vec![group]),
                resources: Some(vec![resource]),
                verbs: verbs.into_iter().map(str::to_owned).collect(),
                ..Default::default()
            }),
    );
    ClusterRole {
        metadata: labelled(name),
        rules: Some(all),
        ..Default::default()
    }
}

fn labelled(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        labels: Some(BTreeMap::from([(
            "app.kubernetes.io/name".to_owned(),
            "rekon".to_owned(),
        )])),
        ..Default::default()
    }
}

/// Binds the ClusterRole `name` to the ServiceAccount `namespace/service_account`.
pub fn cluster_role_binding(
    name: &str,
    namespace: &str,
    service_account: &str,
) -> ClusterRoleBinding {
    ClusterRoleBinding {
        metadata: labelled(name),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".to_owned()),
            kind: "ClusterRole".to_owned(),
            name: name.to_owned(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".to_owned(),
            name: service_account.to_owned(),
            namespace: Some(namespace.to_owned()),
            ..Default::default()
        }]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::{KeyMapping, Watch};

    fn gvk(group: &str, version: &str, kind: &str) -> Gvk {
        Gvk {
            group: group.into(),
            version: version.into(),
            kind: kind.into(),
        }
    }

    fn meta(name: &str, primary: Gvk, writes: Vec<Gvk>) -> Metadata {
        Metadata {
            name: name.into(),
            version: "1".into(),
            primary,
            watches: vec![Watch {
                kind: gvk("apps", "v1", "Deployment"),
                mapping: KeyMapping::OwnerReference,
            }],
            reads: vec![],
            writes,
            resync_seconds: None,
            finalizer: None,
        }
    }

    #[test]
    fn the_cluster_role_merges_plugins_and_adds_the_hosts_needs() {
        let a = meta(
            "a",
            gvk("rekon.dev", "v1alpha1", "WebApp"),
            vec![gvk("apps", "v1", "Deployment")],
        );
        let b = meta(
            "b",
            gvk("", "v1", "ConfigMap"),
            vec![gvk("apps", "v1", "Deployment")],
        );
        let role = cluster_role("rekon", &[&a, &b]);
        let rules = role.rules.unwrap();
        let find = |group: &str, resource: &str| {
            rules
                .iter()
                .find(|r| {
                    r.api_groups.as_deref() == Some(&[group.to_owned()][..])
                        && r.resources.as_deref() == Some(&[resource.to_owned()][..])
                })
                .map(|r| r.verbs.join(","))
        };
        assert_eq!(
            find("apps", "deployments").as_deref(),
            Some("create,delete,get,list,patch,update,watch"),
            "read (watch) and write merged into one rule"
        );
        assert_eq!(
            find("rekon.dev", "webapps/status").as_deref(),
            Some("get,patch,update")
        );
        assert_eq!(
            find("", "configmaps").as_deref(),
            Some("get,list,patch,update,watch")
        );
        assert_eq!(
            find("coordination.k8s.io", "leases").as_deref(),
            Some("create,get,update")
        );
        assert!(find("", "secrets").is_none(), "nothing undeclared");
        let binding = cluster_role_binding("rekon", "rekon-system", "rekon");
        assert_eq!(
            binding.subjects.unwrap()[0].namespace.as_deref(),
            Some("rekon-system")
        );
    }

    #[test]
    fn plurals_follow_kubernetes_defaults() {
        for (k, p) in [
            ("WebApp", "webapps"),
            ("Policy", "policies"),
            ("Ingress", "ingresses"),
            ("Gateway", "gateways"),
        ] {
            assert_eq!(plural(k), p);
        }
    }
}
