//! `rekon new NAME`: a plugin crate to start from, which builds, tests and runs as is.
//!
//! The files come from templates under `host/templates/new/`, embedded in the binary.
//! The crate depends on `rekon-sdk` by path — the SDK is not published — so it is
//! created against the `guest-sdk` directory of the rekon source tree this binary was
//! built from, or the one `--sdk` names. It has a `[workspace]` table of its own, so it
//! builds wherever it is put.
//!
//! The primary kind is a custom resource (`GROUP/VERSION/KIND`, with a CRD) or a
//! built-in kind ([`BUILTINS`]: `v1/Namespace`, `apps/v1/Deployment`, …), which gets the
//! decorator template: no CRD, a ConfigMap child for each opted-in object, as the
//! `netdefaults` example does.

use clap::Args;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Arguments of `rekon new`.
#[derive(Debug, Clone, Args)]
pub struct NewArgs {
    /// Plugin and crate name: lowercase letters, digits and '-', starting with a letter.
    pub name: String,
    /// Directory to create the crate in (default: ./NAME). Must not exist, or be empty.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// The primary kind: a custom resource, GROUP/VERSION/KIND (default:
    /// example.dev/v1alpha1/ followed by NAME in UpperCamelCase), or a built-in kind, VERSION/KIND or
    /// GROUP/VERSION/KIND (v1/Namespace, v1/ConfigMap, apps/v1/Deployment…), which makes
    /// a decorator: no CRD, a ConfigMap for each opted-in object.
    #[arg(long)]
    pub kind: Option<String>,
    /// The rekon-sdk source directory (rekon's `guest-sdk`) to depend on (default: the one
    /// of the rekon source tree this binary was built from).
    #[arg(long, env = "REKON_SDK")]
    pub sdk: Option<PathBuf>,
}

/// Why `rekon new` wrote nothing (or, for [`Error::Write`], stopped part-way).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The name cannot name a plugin and a crate.
    #[error("invalid plugin name {name:?}: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The kind is neither GROUP/VERSION/KIND of a custom resource nor a built-in kind
    /// the templates know.
    #[error("invalid --kind {kind:?}: {reason}")]
    InvalidKind {
        /// The kind given.
        kind: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The target directory exists and holds files.
    #[error("{} already exists and is not empty; choose another --dir or remove it", path.display())]
    NotEmpty {
        /// The directory.
        path: PathBuf,
    },
    /// The SDK directory holds no `Cargo.toml`.
    #[error(
        "no rekon-sdk at {} (no Cargo.toml there); pass --sdk with the path of rekon's guest-sdk directory",
        path.display()
    )]
    SdkMissing {
        /// The directory.
        path: PathBuf,
    },
    /// A directory or file could not be created or written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The template files: (path in the new crate, template text).
const TEMPLATES: &[(&str, &str)] = &[
    (
        "Cargo.toml",
        include_str!("../../templates/new/Cargo.toml.tmpl"),
    ),
    ("README.md", include_str!("../../templates/new/README.md")),
    (".gitignore", include_str!("../../templates/new/gitignore")),
    ("crd.yaml", include_str!("../../templates/new/crd.yaml")),
    ("src/lib.rs", include_str!("../../templates/new/src/lib.rs")),
    (
        "src/tests.rs",
        include_str!("../../templates/new/src/tests.rs"),
    ),
    (
        "cases/01-gets-a-config-map.yaml",
        include_str!("../../templates/new/cases/01-gets-a-config-map.yaml"),
    ),
    (
        "cases/02-without-a-message.yaml",
        include_str!("../../templates/new/cases/02-without-a-message.yaml"),
    ),
];

/// The decorator template's files, for a built-in primary kind.
const DECORATOR_TEMPLATES: &[(&str, &str)] = &[
    (
        "Cargo.toml",
        include_str!("../../templates/new/Cargo.toml.tmpl"),
    ),
    (
        "README.md",
        include_str!("../../templates/new/decorator/README.md"),
    ),
    (".gitignore", include_str!("../../templates/new/gitignore")),
    (
        "src/lib.rs",
        include_str!("../../templates/new/decorator/src/lib.rs"),
    ),
    (
        "src/tests.rs",
        include_str!("../../templates/new/decorator/src/tests.rs"),
    ),
    (
        "cases/01-labelled-gets-a-config-map.yaml",
        include_str!("../../templates/new/decorator/cases/01-labelled-gets-a-config-map.yaml"),
    ),
    (
        "cases/02-unlabelled-gets-nothing.yaml",
        include_str!("../../templates/new/decorator/cases/02-unlabelled-gets-nothing.yaml"),
    ),
];

/// A built-in kind the decorator template can reconcile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Builtin {
    /// API group, empty for the core group.
    pub group: &'static str,
    /// API version.
    pub version: &'static str,
    /// Kind.
    pub kind: &'static str,
    /// The k8s-openapi module holding its type, under `k8s_openapi::api`.
    pub module: &'static str,
    /// Whether its objects live in a namespace (`Namespace` is the one that does not:
    /// its children go into the namespace it names).
    pub namespaced: bool,
}

const fn builtin(
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    module: &'static str,
    namespaced: bool,
) -> Builtin {
    Builtin {
        group,
        version,
        kind,
        module,
        namespaced,
    }
}

/// The built-in kinds `rekon new --kind` takes: those of the core, apps, batch and
/// networking groups a decorator is usually about. Other cluster-scoped kinds have no
/// namespace for a ConfigMap child, so they are not offered.
pub const BUILTINS: &[Builtin] = &[
    builtin("", "v1", "Namespace", "core::v1", false),
    builtin("", "v1", "ConfigMap", "core::v1", true),
    builtin("", "v1", "Secret", "core::v1", true),
    builtin("", "v1", "Service", "core::v1", true),
    builtin("", "v1", "ServiceAccount", "core::v1", true),
    builtin("", "v1", "Pod", "core::v1", true),
    builtin("", "v1", "PersistentVolumeClaim", "core::v1", true),
    builtin("apps", "v1", "Deployment", "apps::v1", true),
    builtin("apps", "v1", "StatefulSet", "apps::v1", true),
    builtin("apps", "v1", "DaemonSet", "apps::v1", true),
    builtin("apps", "v1", "ReplicaSet", "apps::v1", true),
    builtin("batch", "v1", "Job", "batch::v1", true),
    builtin("batch", "v1", "CronJob", "batch::v1", true),
    builtin("networking.k8s.io", "v1", "Ingress", "networking::v1", true),
    builtin(
        "networking.k8s.io",
        "v1",
        "NetworkPolicy",
        "networking::v1",
        true,
    ),
];

/// Names a generated kind must not take: the template's own type names and imports,
/// and the Rust prelude's, which a struct of that name would shadow.
const RESERVED_KINDS: &[&str] = &[
    "ConfigMap",
    "ObjectMeta",
    "Condition",
    "Error",
    "Kind",
    "Metadata",
    "Output",
    "Plugin",
    "Request",
    "Serialize",
    "Deserialize",
    "Obj",
    "Option",
    "Some",
    "None",
    "Result",
    "Ok",
    "Err",
    "String",
    "Vec",
    "Box",
    "Self",
    "Clone",
    "Copy",
    "Default",
    "Debug",
    "Drop",
    "Eq",
    "PartialEq",
    "Ord",
    "PartialOrd",
    "Send",
    "Sync",
    "Sized",
    "From",
    "Into",
    "Iterator",
    "ToOwned",
    "ToString",
];

/// Rust keywords (strict and reserved) and crate names cargo refuses or that would clash
/// with the generated crate's own dependencies.
const RESERVED_NAMES: &[&str] = &[
    "as",
    "async",
    "await",
    "box",
    "break",
    "const",
    "continue",
    "crate",
    "do",
    "dyn",
    "else",
    "enum",
    "extern",
    "false",
    "final",
    "fn",
    "for",
    "gen",
    "if",
    "impl",
    "in",
    "let",
    "loop",
    "macro",
    "match",
    "mod",
    "move",
    "mut",
    "override",
    "priv",
    "pub",
    "ref",
    "return",
    "self",
    "static",
    "struct",
    "super",
    "trait",
    "true",
    "try",
    "type",
    "typeof",
    "unsafe",
    "unsized",
    "use",
    "virtual",
    "where",
    "while",
    "yield",
    "abstract",
    "become",
    "alloc",
    "core",
    "std",
    "test",
    "proc-macro",
    "rekon-sdk",
    "serde",
    "serde-json",
];

/// What the templates are filled in with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vars {
    /// Plugin and crate name, e.g. `my-plugin`.
    pub name: String,
    /// API group of the primary kind, e.g. `example.dev`.
    pub group: String,
    /// API version, e.g. `v1alpha1`.
    pub version: String,
    /// Kind, e.g. `MyPlugin`.
    pub kind: String,
    /// The rekon-sdk directory the crate depends on.
    pub sdk: PathBuf,
    /// The built-in kind, for the decorator template; `None` for a custom resource.
    pub builtin: Option<Builtin>,
}

impl Vars {
    /// Checks the name and the kind (`GROUP/VERSION/KIND`, or the default derived from the
    /// name).
    ///
    /// # Errors
    /// [`Error::InvalidName`] or [`Error::InvalidKind`], saying what is wrong.
    pub fn new(name: &str, kind: Option<&str>, sdk: PathBuf) -> Result<Self, Error> {
        check_name(name).map_err(|reason| Error::InvalidName {
            name: name.to_owned(),
            reason,
        })?;
        let invalid = |k: &str, reason| Error::InvalidKind {
            kind: k.to_owned(),
            reason,
        };
        if let Some(k) = kind
            && let Some(b) = find_builtin(k).map_err(|reason| invalid(k, reason))?
        {
            return Ok(Self {
                name: name.to_owned(),
                group: b.group.to_owned(),
                version: b.version.to_owned(),
                kind: b.kind.to_owned(),
                sdk,
                builtin: Some(b),
            });
        }
        let (group, version, kind) = match kind {
            Some(k) => parse_kind(k).map_err(|reason| invalid(k, reason))?,
            None => {
                let kind = upper_camel(name);
                check_kind_name(&kind).map_err(|reason| Error::InvalidName {
                    name: name.to_owned(),
                    reason: format!("the kind derived from it, {kind}: {reason}; pass --kind"),
                })?;
                ("example.dev".to_owned(), "v1alpha1".to_owned(), kind)
            }
        };
        Ok(Self {
            name: name.to_owned(),
            group,
            version,
            kind,
            sdk,
            builtin: None,
        })
    }

    /// `group/version`, or `version` for the core group.
    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The namespace the templates' fixture primary `hello` puts its children in.
    fn child_ns(&self) -> &'static str {
        match self.builtin {
            Some(b) if !b.namespaced => "hello",
            _ => "default",
        }
    }

    /// The `use` lines of the decorator: the primary's type and ConfigMap.
    fn imports(&self) -> String {
        let Some(b) = self.builtin else {
            return String::new();
        };
        let core = "use rekon_sdk::k8s_openapi::api::core::v1::";
        match (b.module, b.kind) {
            ("core::v1", "ConfigMap") => format!("{core}ConfigMap;"),
            ("core::v1", kind) => format!("{core}{{ConfigMap, {kind}}};"),
            (module, kind) => {
                format!("use rekon_sdk::k8s_openapi::api::{module}::{kind};\n{core}ConfigMap;")
            }
        }
    }

    /// The value of one template variable.
    fn get(&self, var: &str) -> Option<String> {
        Some(match var {
            "name" => self.name.clone(),
            "crate" => self.name.replace('-', "_"),
            "group" => self.group.clone(),
            "version" => self.version.clone(),
            "kind" => self.kind.clone(),
            "api_version" => self.api_version(),
            "imports" => self.imports(),
            "label" => format!("example.dev/{}", self.name),
            "child_ns" => self.child_ns().to_owned(),
            "ns_builder" => match self.child_ns() {
                "default" => ".ns(\"default\")".to_owned(),
                _ => String::new(),
            },
            "ns_field" => match self.child_ns() {
                "default" => " namespace: default,".to_owned(),
                _ => String::new(),
            },
            "child_where" => match self.child_ns() {
                "default" => format!("in the {}'s namespace", self.kind),
                _ => "inside it".to_owned(),
            },
            "child_meta_comment" => match self.child_ns() {
                "default" => "In the primary's namespace; the host adds the owner reference.",
                _ => "In the namespace this Namespace names; the host adds the owner reference.",
            }
            .to_owned(),
            "plural" => crate::rbac::plural(&self.kind),
            "singular" => self.kind.to_ascii_lowercase(),
            "sdk_path" => toml_string(&self.sdk.to_string_lossy()),
            _ => return None,
        })
    }
}

/// The files of the new crate: (relative path, contents), in a fixed order.
///
/// # Panics
/// If a template names a variable [`Vars`] does not define: a bug in the templates,
/// which the unit tests catch.
pub fn render(vars: &Vars) -> Vec<(PathBuf, String)> {
    let templates = if vars.builtin.is_some() {
        DECORATOR_TEMPLATES
    } else {
        TEMPLATES
    };
    templates
        .iter()
        .map(|(path, template)| (PathBuf::from(path), fill(template, vars)))
        .collect()
}

/// Replaces every `{{var}}` in `template`.
fn fill(template: &str, vars: &Vars) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .unwrap_or_else(|| panic!("unclosed {{{{ in a template: {after:.40}"));
        let var = &after[..end];
        let value = vars
            .get(var)
            .unwrap_or_else(|| panic!("unknown template variable {var:?}"));
        out.push_str(&value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

/// Creates the crate; returns what to tell the user.
///
/// # Errors
/// [`Error`]: an invalid name or kind, an existing non-empty directory, a missing SDK
/// (all before writing anything), or a write failure.
pub fn new(args: &NewArgs) -> Result<String, Error> {
    let sdk = match &args.sdk {
        Some(path) => path.clone(),
        None => default_sdk(),
    };
    let vars = Vars::new(&args.name, args.kind.as_deref(), sdk.clone())?;
    if !sdk.join("Cargo.toml").is_file() {
        return Err(Error::SdkMissing { path: sdk });
    }
    // The crate lives elsewhere: give it an absolute path to the SDK.
    let sdk = sdk.canonicalize().map_err(|source| Error::Write {
        path: sdk.clone(),
        source,
    })?;
    let vars = Vars { sdk, ..vars };
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(&args.name));
    if dir.exists() {
        let mut entries = std::fs::read_dir(&dir).map_err(|source| Error::Write {
            path: dir.clone(),
            source,
        })?;
        if entries.next().is_some() {
            return Err(Error::NotEmpty { path: dir });
        }
    }
    let files = render(&vars);
    for (path, contents) in &files {
        write(&dir.join(path), contents)?;
    }
    Ok(report(&vars, &dir, &files))
}

/// `guest-sdk` beside the `host` crate this binary was built from.
fn default_sdk() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join("guest-sdk")
}

fn write(path: &Path, contents: &str) -> Result<(), Error> {
    let fail = |source| Error::Write {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(fail)?;
    }
    std::fs::write(path, contents).map_err(fail)
}

fn report(vars: &Vars, dir: &Path, files: &[(PathBuf, String)]) -> String {
    let mut out = String::new();
    let crate_name = vars.name.replace('-', "_");
    let _ = writeln!(
        out,
        "created plugin {} (primary {} {}{}) in {}:",
        vars.name,
        vars.api_version(),
        vars.kind,
        if vars.builtin.is_some() {
            ", built in: a decorator without a CRD"
        } else {
            ""
        },
        dir.display()
    );
    for (path, _) in files {
        let _ = writeln!(out, "  {}", path.display());
    }
    let _ = writeln!(out, "rekon-sdk from {}", vars.sdk.display());
    let _ = writeln!(out, "next:");
    let _ = writeln!(out, "  cd {}", dir.display());
    let _ = writeln!(out, "  cargo test");
    let _ = writeln!(out, "  cargo build --release --target wasm32-wasip2");
    let _ = writeln!(
        out,
        "  rekon test target/wasm32-wasip2/release/{crate_name}.wasm cases"
    );
    out
}

/// A crate name that is also a valid plugin name (a DNS label), and not a keyword.
fn check_name(name: &str) -> Result<(), String> {
    let first = name.chars().next();
    if name.is_empty() || name.len() > 63 {
        return Err("it must be 1-63 characters".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(format!(
            "{c:?} is not allowed: use lowercase letters, digits and '-'"
        ));
    }
    if !first.is_some_and(|c| c.is_ascii_lowercase()) {
        return Err("it must start with a lowercase letter".into());
    }
    if name.ends_with('-') {
        return Err("it must not end with '-'".into());
    }
    if RESERVED_NAMES.contains(&name) || RESERVED_NAMES.contains(&name.replace('_', "-").as_str()) {
        return Err(format!(
            "{name:?} is a Rust keyword or a name Cargo or the crate's dependencies reserve"
        ));
    }
    Ok(())
}

/// The built-in kind `s` names (`VERSION/KIND` for the core group, or
/// `GROUP/VERSION/KIND`); `Ok(None)` if it names a custom resource (a group with a dot,
/// not `*.k8s.io`).
fn find_builtin(s: &str) -> Result<Option<Builtin>, String> {
    let parts: Vec<&str> = s.split('/').collect();
    let (group, version, kind) = match parts.as_slice() {
        [version, kind] => ("", *version, *kind),
        [group, version, kind] => (*group, *version, *kind),
        _ => return Ok(None),
    };
    let custom = group.contains('.') && !group.ends_with(".k8s.io");
    if custom {
        return Ok(None);
    }
    if let Some(b) = BUILTINS
        .iter()
        .find(|b| b.group == group && b.version == version && b.kind == kind)
    {
        return Ok(Some(*b));
    }
    let known: Vec<String> = BUILTINS
        .iter()
        .map(|b| {
            if b.group.is_empty() {
                format!("{}/{}", b.version, b.kind)
            } else {
                format!("{}/{}/{}", b.group, b.version, b.kind)
            }
        })
        .collect();
    Err(format!(
        "not a built-in kind the templates know (they know {}); for a custom resource, \
         give GROUP/VERSION/KIND with a group like example.dev",
        known.join(", ")
    ))
}

/// `GROUP/VERSION/KIND` of a custom resource.
fn parse_kind(s: &str) -> Result<(String, String, String), String> {
    let parts: Vec<&str> = s.split('/').collect();
    let [group, version, kind] = parts.as_slice() else {
        return Err("expected GROUP/VERSION/KIND, e.g. example.dev/v1alpha1/Greeting".into());
    };
    let group_ok = group.contains('.')
        && group.split('.').all(|label| {
            !label.is_empty()
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        });
    if !group_ok {
        return Err(format!(
            "the group {group:?} must be a lowercase DNS name with a dot, like example.dev \
             (or a built-in kind, like v1/Namespace or apps/v1/Deployment)"
        ));
    }
    let version_ok = version.starts_with('v')
        && version
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !version_ok {
        return Err(format!(
            "the version {version:?} must look like v1, v1alpha1 or v2beta3"
        ));
    }
    check_kind_name(kind)?;
    Ok((
        (*group).to_owned(),
        (*version).to_owned(),
        (*kind).to_owned(),
    ))
}

/// An UpperCamelCase kind the template can name a Rust type after.
fn check_kind_name(kind: &str) -> Result<(), String> {
    let valid = kind.chars().next().is_some_and(|c| c.is_ascii_uppercase())
        && kind.chars().all(|c| c.is_ascii_alphanumeric());
    if !valid {
        return Err(format!(
            "the kind {kind:?} must be UpperCamelCase letters and digits, like Greeting"
        ));
    }
    if RESERVED_KINDS.contains(&kind) {
        return Err(format!(
            "the kind {kind:?} would clash with a Rust name the generated code uses"
        ));
    }
    Ok(())
}

/// `my-plugin` → `MyPlugin`.
fn upper_camel(name: &str) -> String {
    name.split('-')
        .map(|word| {
            let mut chars = word.chars();
            chars.next().map_or_else(String::new, |first| {
                first.to_ascii_uppercase().to_string() + chars.as_str()
            })
        })
        .collect()
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::case;

    fn vars(name: &str, kind: Option<&str>) -> Vars {
        Vars::new(name, kind, PathBuf::from("/src/rekon/guest-sdk")).unwrap()
    }

    fn file<'a>(files: &'a [(PathBuf, String)], path: &str) -> &'a str {
        files
            .iter()
            .find(|(p, _)| p == Path::new(path))
            .map(|(_, c)| c.as_str())
            .unwrap_or_else(|| panic!("no {path} in {files:?}"))
    }

    fn assert_no_placeholder(files: &[(PathBuf, String)]) {
        for (path, contents) in files {
            assert!(
                !contents.contains("{{") && !contents.contains("}}"),
                "{} keeps a placeholder:\n{contents}",
                path.display()
            );
        }
    }

    #[test]
    fn every_template_renders_without_placeholders_left() {
        let files = render(&vars("my-plugin", None));
        let paths: Vec<_> = files.iter().map(|(p, _)| p.display().to_string()).collect();
        assert_eq!(
            paths,
            [
                "Cargo.toml",
                "README.md",
                ".gitignore",
                "crd.yaml",
                "src/lib.rs",
                "src/tests.rs",
                "cases/01-gets-a-config-map.yaml",
                "cases/02-without-a-message.yaml"
            ]
        );
        assert_no_placeholder(&files);
    }

    #[test]
    fn the_default_kind_is_the_name_in_upper_camel_case_in_example_dev() {
        let v = vars("my-plugin", None);
        assert_eq!(
            (v.group.as_str(), v.version.as_str(), v.kind.as_str()),
            ("example.dev", "v1alpha1", "MyPlugin")
        );
        let files = render(&v);
        let lib = file(&files, "src/lib.rs");
        assert!(lib.contains("pub struct MyPlugin {"), "{lib}");
        assert!(lib.contains("pub struct MyPluginPlugin;"), "{lib}");
        assert!(lib.contains(r#"const GROUP: &'static str = "example.dev";"#));
        assert!(lib.contains(r#"Metadata::new::<MyPlugin>("my-plugin", "#));
    }

    #[test]
    fn cargo_toml_depends_on_the_sdk_by_path_and_is_its_own_workspace() {
        let files = render(&vars("greeter", Some("example.dev/v1/Greeting")));
        let manifest = file(&files, "Cargo.toml");
        assert!(manifest.contains("name = \"greeter\""), "{manifest}");
        assert!(
            manifest.contains(r#"crate-type = ["cdylib", "rlib"]"#),
            "{manifest}"
        );
        assert!(
            manifest.contains(r#"rekon-sdk = { path = "/src/rekon/guest-sdk" }"#),
            "{manifest}"
        );
        assert!(manifest.lines().any(|l| l == "[workspace]"), "{manifest}");
    }

    #[test]
    fn sdk_paths_are_escaped_as_toml_strings() {
        let v = Vars::new("x", None, PathBuf::from(r#"C:\rekon "src"\guest-sdk"#)).unwrap();
        let manifest = render(&v).remove(0).1;
        assert!(
            manifest.contains(r#"path = "C:\\rekon \"src\"\\guest-sdk""#),
            "{manifest}"
        );
    }

    #[test]
    fn the_cases_parse_as_rekon_test_cases_of_the_chosen_kind() {
        let files = render(&vars("greeter", Some("example.dev/v1/Greeting")));
        let mut cases = 0;
        for (path, contents) in files.iter().filter(|(p, _)| p.starts_with("cases")) {
            let loaded = case::parse(contents, path).unwrap();
            assert_eq!(loaded.case.primary["apiVersion"], "example.dev/v1");
            assert_eq!(loaded.case.primary["kind"], "Greeting");
            cases += 1;
        }
        assert_eq!(cases, 2);
    }

    #[test]
    fn the_crd_names_the_kind_with_its_plural() {
        let files = render(&vars("policy-bot", Some("ops.example.com/v2beta1/Policy")));
        let crd: serde_json::Value = serde_yaml::from_str(file(&files, "crd.yaml")).unwrap();
        assert_eq!(crd["metadata"]["name"], "policies.ops.example.com");
        assert_eq!(crd["spec"]["names"]["plural"], "policies");
        assert_eq!(crd["spec"]["names"]["singular"], "policy");
        assert_eq!(crd["spec"]["versions"][0]["name"], "v2beta1");
    }

    #[test]
    fn the_readme_is_ten_lines_naming_the_wasm_file() {
        let files = render(&vars("my-plugin", None));
        let readme = file(&files, "README.md");
        assert_eq!(readme.lines().count(), 10, "{readme}");
        assert!(readme.contains("target/wasm32-wasip2/release/my_plugin.wasm"));
        assert!(readme.contains("rekon run --plugins"));
    }

    #[test]
    fn invalid_names_are_refused_with_the_reason() {
        for (name, reason) in [
            ("", "1-63 characters"),
            ("My-Plugin", "'M' is not allowed"),
            ("my_plugin", "'_' is not allowed"),
            ("1plugin", "start with a lowercase letter"),
            ("plugin-", "must not end with '-'"),
            ("test", "reserve"),
            ("fn", "keyword"),
            ("serde", "reserve"),
        ] {
            let err = Vars::new(name, None, PathBuf::new()).unwrap_err();
            assert!(matches!(err, Error::InvalidName { .. }), "{err}");
            assert!(err.to_string().contains(reason), "{name}: {err}");
        }
        let err = Vars::new("option", None, PathBuf::new()).unwrap_err();
        assert!(err.to_string().contains("pass --kind"), "{err}");
    }

    #[test]
    fn invalid_kinds_are_refused_with_the_reason() {
        for (kind, reason) in [
            ("Greeting", "GROUP/VERSION/KIND"),
            ("v1/Frobnicator", "not a built-in kind the templates know"),
            ("apps/v1/Widget", "they know v1/Namespace, v1/ConfigMap"),
            ("v1/Node", "apps/v1/Deployment"),
            (
                "rbac.authorization.k8s.io/v1/ClusterRole",
                "not a built-in kind",
            ),
            ("a/b/c/d", "GROUP/VERSION/KIND"),
            ("example.dev/1/Greeting", "v1, v1alpha1"),
            ("example.dev/v1/greeting", "UpperCamelCase"),
            ("example.dev/v1/Plugin", "clash"),
        ] {
            let err = Vars::new("x", Some(kind), PathBuf::new()).unwrap_err();
            assert!(matches!(err, Error::InvalidKind { .. }), "{err}");
            assert!(err.to_string().contains(reason), "{kind}: {err}");
        }
    }

    #[test]
    fn an_existing_non_empty_directory_is_refused_and_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("keep.txt"), "mine").unwrap();
        let args = NewArgs {
            name: "greeter".into(),
            dir: Some(tmp.path().to_owned()),
            kind: None,
            sdk: Some(default_sdk()),
        };
        let err = new(&args).unwrap_err();
        assert!(matches!(err, Error::NotEmpty { .. }), "{err}");
        assert!(err.to_string().contains("not empty"), "{err}");
        let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
        assert_eq!(left.len(), 1);
    }

    #[test]
    fn an_empty_directory_is_filled_with_the_crate() {
        let tmp = tempfile::tempdir().unwrap();
        let args = NewArgs {
            name: "greeter".into(),
            dir: Some(tmp.path().to_owned()),
            kind: Some("example.dev/v1/Greeting".into()),
            sdk: Some(default_sdk()),
        };
        let report = new(&args).unwrap();
        assert!(report.contains("created plugin greeter"), "{report}");
        let manifest = std::fs::read_to_string(tmp.path().join("Cargo.toml")).unwrap();
        let sdk = default_sdk().canonicalize().unwrap();
        assert!(
            manifest.contains(&toml_string(&sdk.to_string_lossy())),
            "an absolute SDK path: {manifest}"
        );
        assert!(tmp.path().join("cases/01-gets-a-config-map.yaml").is_file());
    }

    #[test]
    fn a_missing_sdk_is_refused_before_writing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("greeter");
        let args = NewArgs {
            name: "greeter".into(),
            dir: Some(dir.clone()),
            kind: None,
            sdk: Some(tmp.path().join("nowhere")),
        };
        let err = new(&args).unwrap_err();
        assert!(err.to_string().contains("pass --sdk"), "{err}");
        assert!(!dir.exists());
    }

    #[test]
    fn a_built_in_kind_gets_the_decorator_template_without_a_crd() {
        let v = vars("decorator-x", Some("v1/Namespace"));
        assert_eq!(
            (
                v.api_version(),
                v.kind.as_str(),
                v.builtin.map(|b| b.namespaced)
            ),
            ("v1".to_owned(), "Namespace", Some(false))
        );
        let files = render(&v);
        let paths: Vec<_> = files.iter().map(|(p, _)| p.display().to_string()).collect();
        assert_eq!(
            paths,
            [
                "Cargo.toml",
                "README.md",
                ".gitignore",
                "src/lib.rs",
                "src/tests.rs",
                "cases/01-labelled-gets-a-config-map.yaml",
                "cases/02-unlabelled-gets-nothing.yaml"
            ]
        );
        assert_no_placeholder(&files);
        let lib = file(&files, "src/lib.rs");
        assert!(
            lib.contains("use rekon_sdk::k8s_openapi::api::core::v1::{ConfigMap, Namespace};"),
            "{lib}"
        );
        assert!(
            lib.contains("Metadata::new::<Namespace>(\"decorator-x\""),
            "{lib}"
        );
        assert!(!file(&files, "README.md").contains("crd.yaml"));
    }

    #[test]
    fn built_in_kinds_of_the_core_and_apps_groups_are_imported_from_their_module() {
        for (kind, import, namespaced) in [
            (
                "v1/ConfigMap",
                "use rekon_sdk::k8s_openapi::api::core::v1::ConfigMap;",
                true,
            ),
            ("v1/Service", "core::v1::{ConfigMap, Service};", true),
            (
                "apps/v1/Deployment",
                "use rekon_sdk::k8s_openapi::api::apps::v1::Deployment;",
                true,
            ),
            (
                "networking.k8s.io/v1/Ingress",
                "api::networking::v1::Ingress;",
                true,
            ),
        ] {
            let v = vars("deco", Some(kind));
            assert_eq!(v.builtin.map(|b| b.namespaced), Some(namespaced), "{kind}");
            let lib = render(&v)
                .into_iter()
                .find(|(p, _)| p == Path::new("src/lib.rs"))
                .unwrap()
                .1;
            assert!(lib.contains(import), "{kind}:\n{lib}");
        }
    }

    #[test]
    fn the_decorator_cases_parse_with_children_where_the_primary_puts_them() {
        for (kind, api_version, child_ns) in [
            ("v1/Namespace", "v1", "hello"),
            ("apps/v1/Deployment", "apps/v1", "default"),
        ] {
            let files = render(&vars("decorator-x", Some(kind)));
            let mut cases = 0;
            for (path, contents) in files.iter().filter(|(p, _)| p.starts_with("cases")) {
                let loaded = case::parse(contents, path).unwrap();
                assert_eq!(loaded.case.primary["apiVersion"], api_version);
                assert!(
                    loaded.case.primary["metadata"]["labels"]["example.dev/decorator-x"]
                        .is_string()
                );
                assert_eq!(
                    loaded.case.primary["metadata"]["namespace"].as_str(),
                    (child_ns == "default").then_some("default"),
                    "{kind}"
                );
                cases += 1;
            }
            assert_eq!(cases, 2);
            let tests = file(&files, "src/tests.rs");
            assert!(tests.contains(&format!("Some(\"{child_ns}\")")), "{tests}");
        }
    }
}
