//! The CustomResourceDefinitions found beside the plugins: `crd.yaml` in a plugin crate or
//! a plugin directory, and any `NAME.crd.yaml` there, each file one or more YAML documents.

use super::Error;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::wait::{await_condition, conditions};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The field manager of `rekon dev`'s writes.
const MANAGER: &str = "rekon-dev";

/// How long a new CRD may take to be established.
const ESTABLISHED_TIMEOUT: Duration = Duration::from_secs(60);

/// Whether `path` names a CRD file: `crd.yaml` (or `.yml`) or `NAME.crd.yaml`.
pub fn is_crd_file(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    !name.starts_with('.')
        && ["crd.yaml", "crd.yml"]
            .iter()
            .any(|suffix| name == *suffix || name.ends_with(&format!(".{suffix}")))
}

/// The CRD files directly in `dir`, sorted.
///
/// # Errors
/// The directory cannot be read.
pub fn find(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let entries =
        std::fs::read_dir(dir).map_err(Error::io(format!("listing {}", dir.display())))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && is_crd_file(p))
        .collect();
    files.sort();
    Ok(files)
}

/// Parses a CRD file: every non-empty document must be an
/// `apiextensions.k8s.io/v1` CustomResourceDefinition with a name.
///
/// # Errors
/// [`Error::BadCrd`] naming the file, the document and the reason.
pub fn parse(file: &Path, text: &str) -> Result<Vec<CustomResourceDefinition>, Error> {
    use serde::Deserialize;
    let mut crds = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let bad = |reason: String| Error::BadCrd {
            file: file.to_owned(),
            index: i + 1,
            reason,
        };
        let value = serde_json::Value::deserialize(doc).map_err(|e| bad(e.to_string()))?;
        if value.is_null() {
            continue;
        }
        let (api_version, kind) = (&value["apiVersion"], &value["kind"]);
        if api_version != "apiextensions.k8s.io/v1" || kind != "CustomResourceDefinition" {
            return Err(bad(format!(
                "not an apiextensions.k8s.io/v1 CustomResourceDefinition but {api_version} {kind}"
            )));
        }
        let crd: CustomResourceDefinition =
            serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
        if crd.metadata.name.as_deref().unwrap_or_default().is_empty() {
            return Err(bad(
                "the CustomResourceDefinition has no metadata.name".into()
            ));
        }
        crds.push(crd);
    }
    Ok(crds)
}

/// Applies every CRD of `files` (server-side apply, field manager `rekon-dev`) and waits
/// until each is established. Answers the names installed.
///
/// # Errors
/// [`Error::BadCrd`] for a file that does not parse, [`Error::CrdInstall`] when the API
/// server refuses one or it is not established within a minute.
pub async fn install(client: &kube::Client, files: &[PathBuf]) -> Result<Vec<String>, Error> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut names = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file)
            .map_err(Error::io(format!("reading {}", file.display())))?;
        for mut crd in parse(file, &text)? {
            let name = crd.metadata.name.clone().unwrap_or_default();
            let failed = |reason: String| Error::CrdInstall {
                name: name.clone(),
                file: file.clone(),
                reason,
            };
            crd.metadata.managed_fields = None;
            crd.metadata.resource_version = None;
            api.patch(
                &name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&crd),
            )
            .await
            .map_err(|e| failed(e.to_string()))?;
            let established = tokio::time::timeout(
                ESTABLISHED_TIMEOUT,
                await_condition(api.clone(), &name, conditions::is_crd_established()),
            )
            .await
            .map_err(|_| failed(format!("not established after {ESTABLISHED_TIMEOUT:?}")))?
            .map_err(|e| failed(e.to_string()))?;
            if established.is_none() {
                return Err(failed("deleted while waiting to be established".into()));
            }
            names.push(name);
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crd_files_are_crd_yaml_and_name_crd_yaml_only() {
        for yes in ["crd.yaml", "crd.yml", "webapp.crd.yaml", "a.b.crd.yml"] {
            assert!(is_crd_file(Path::new(yes)), "{yes}");
        }
        for no in [
            "webapp.yaml",
            "mycrd.yaml",
            ".crd.yaml",
            "crd.yaml.tmp",
            "crd.json",
        ] {
            assert!(!is_crd_file(Path::new(no)), "{no}");
        }
    }

    #[test]
    fn a_document_that_is_not_a_crd_is_refused_naming_file_document_and_kind() {
        let text = "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\n\
                    metadata: {name: as.example.dev}\nspec: {group: example.dev, scope: Namespaced, \
                    names: {kind: A, plural: as}, versions: []}\n---\n\
                    apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n";
        let err = parse(Path::new("d/crd.yaml"), text).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("d/crd.yaml, document 2") && text.contains("\"v1\" \"ConfigMap\""),
            "{text}"
        );
        let one = parse(Path::new("crd.yaml"), "---\n").expect("empty documents are skipped");
        assert!(one.is_empty());
    }
}
