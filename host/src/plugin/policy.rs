//! What a component may import and must export to be a rekon plugin.
//!
//! Imports: WASI 0.2 (`wasi:io`, `wasi:cli`, `wasi:clocks`, `wasi:random`,
//! `wasi:filesystem`, `wasi:sockets`, all linked closed) and `rekon:plugin` at an accepted
//! version. Exports: `rekon:plugin/guest` at an accepted version, with every function of
//! the contract. Anything else is refused by name before the component is linked.

use super::Error;
use crate::contract::WIT_VERSION;
use wasmtime::component::types::ComponentItem;

/// WASI 0.2 packages the host links (with a closed context).
const WASI_PACKAGES: &[&str] = &[
    "wasi:io",
    "wasi:cli",
    "wasi:clocks",
    "wasi:random",
    "wasi:filesystem",
    "wasi:sockets",
];

/// Functions the `guest` export must have.
const GUEST_FUNCTIONS: &[&str] = &["metadata", "reconcile", "finalize", "map-to-primaries"];

/// The WIT versions this host accepts, for messages: `0.1.x`.
pub fn accepted_versions() -> String {
    let (major, minor) = major_minor(WIT_VERSION).unwrap_or((0, 0));
    format!("rekon:plugin@{major}.{minor}.x")
}

/// A WIT interface name: `ns:pkg/iface@version`.
struct Name<'a> {
    package: &'a str,
    interface: &'a str,
    version: Option<&'a str>,
}

fn parse(name: &str) -> Option<Name<'_>> {
    let (path, version) = match name.split_once('@') {
        Some((p, v)) => (p, Some(v)),
        None => (name, None),
    };
    let (package, interface) = path.split_once('/')?;
    Some(Name {
        package,
        interface,
        version,
    })
}

fn major_minor(version: &str) -> Option<(u64, u64)> {
    let mut parts = version.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Semver compatibility as Cargo reads it: same major, and same minor while major is 0.
fn compatible(version: &str) -> bool {
    match (major_minor(version), major_minor(WIT_VERSION)) {
        (Some((a, b)), Some((c, d))) => a == c && (a != 0 || b == d),
        _ => false,
    }
}

/// Checks a compiled component's imports and exports.
///
/// # Errors
/// [`Error::UnsupportedVersion`], [`Error::NotAPlugin`], [`Error::MissingExport`] or
/// [`Error::ForbiddenImport`], each naming the offending item.
pub(super) fn check(
    engine: &wasmtime::Engine,
    component: &wasmtime::component::Component,
) -> Result<String, Error> {
    let ty = component.component_type();
    let mut guest = None;
    for (name, item) in ty.exports(engine) {
        let Some(n) = parse(name) else { continue };
        if n.package == "rekon:plugin" && n.interface == "guest" {
            let version = n.version.unwrap_or("").to_owned();
            if !compatible(&version) {
                return Err(Error::UnsupportedVersion {
                    found: format!("rekon:plugin@{version}"),
                    accepted: accepted_versions(),
                });
            }
            guest = Some((version, item));
        }
    }
    let Some((version, item)) = guest else {
        return Err(Error::NotAPlugin {
            reason: format!(
                "it exports no `rekon:plugin/guest` interface (a plugin built with rekon-sdk exports {})",
                accepted_versions()
            ),
        });
    };
    if let ComponentItem::ComponentInstance(instance) = item.ty {
        let names: Vec<&str> = instance.exports(engine).map(|(n, _)| n).collect();
        if let Some(missing) = GUEST_FUNCTIONS.iter().find(|f| !names.contains(f)) {
            return Err(Error::MissingExport {
                name: format!("rekon:plugin/guest@{version}#{missing}"),
            });
        }
    }
    for (name, _) in ty.imports(engine) {
        let allowed = match parse(name) {
            Some(n) if n.package == "rekon:plugin" => {
                let version = n.version.unwrap_or("");
                if !compatible(version) {
                    return Err(Error::UnsupportedVersion {
                        found: format!("rekon:plugin@{version}"),
                        accepted: accepted_versions(),
                    });
                }
                matches!(n.interface, "host" | "types")
            }
            Some(n) => {
                WASI_PACKAGES.contains(&n.package)
                    && n.version.is_some_and(|v| v.starts_with("0.2."))
            }
            None => false,
        };
        if !allowed {
            return Err(Error::ForbiddenImport {
                name: name.to_owned(),
            });
        }
    }
    Ok(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compatible_with_0_1_0_are_0_1_patches_only() {
        assert!(compatible("0.1.0"));
        assert!(compatible("0.1.7"));
        assert!(!compatible("0.2.0"));
        assert!(!compatible("1.0.0"));
        assert!(!compatible("nonsense"));
        assert_eq!(accepted_versions(), "rekon:plugin@0.1.x");
    }

    #[test]
    fn interface_names_split_into_package_interface_and_version() {
        let n = parse("wasi:cli/stdout@0.2.6").unwrap();
        assert_eq!(
            (n.package, n.interface, n.version),
            ("wasi:cli", "stdout", Some("0.2.6"))
        );
        assert!(parse("plain").is_none());
    }
}
