//! Checks on what a plugin declares, so a bad declaration fails at load with a reason
//! instead of misbehaving later.

use crate::contract::{Gvk, KeyMapping, Metadata};

/// Checks a declaration.
///
/// # Errors
/// A one-line reason naming the offending field.
pub(super) fn validate(m: &Metadata) -> Result<(), String> {
    if !is_dns_label(&m.name) {
        return Err(format!(
            "name {:?} must be 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit",
            m.name
        ));
    }
    kind("primary", &m.primary)?;
    for w in &m.watches {
        kind("watches", &w.kind)?;
        if let KeyMapping::Label(l) = &w.mapping
            && l.trim().is_empty()
        {
            return Err(format!("watch of {} maps by an empty label key", w.kind));
        }
    }
    for k in &m.reads {
        kind("reads", k)?;
    }
    for k in &m.writes {
        kind("writes", k)?;
    }
    if m.resync_seconds == Some(0) {
        return Err("resync-seconds must be positive when set".into());
    }
    if let Some(f) = &m.finalizer {
        let valid = f.split_once('/').is_some_and(|(domain, name)| {
            domain.contains('.') && !name.is_empty() && f.len() <= 253
        });
        if !valid {
            return Err(format!(
                "finalizer {f:?} must be a qualified name like example.com/cleanup"
            ));
        }
    }
    Ok(())
}

fn kind(field: &str, k: &Gvk) -> Result<(), String> {
    let ok = !k.version.is_empty()
        && k.kind
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_uppercase())
        && k.kind.chars().all(|c| c.is_ascii_alphanumeric())
        && k.group
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!("{field}: {k:?} is not a valid group/version/kind"))
    }
}

fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::Watch;

    fn meta() -> Metadata {
        Metadata {
            name: "webapp".into(),
            version: "0.1.0".into(),
            primary: Gvk::new("rekon.dev", "v1alpha1", "WebApp"),
            watches: vec![Watch {
                kind: Gvk::new("apps", "v1", "Deployment"),
                mapping: KeyMapping::OwnerReference,
            }],
            reads: vec![],
            writes: vec![Gvk::new("apps", "v1", "Deployment")],
            resync_seconds: Some(300),
            finalizer: None,
        }
    }

    #[test]
    fn a_sound_declaration_passes() {
        assert_eq!(validate(&meta()), Ok(()));
    }

    #[test]
    fn bad_names_kinds_and_finalizers_are_refused_by_field() {
        let mut m = meta();
        m.name = "Web_App".into();
        assert!(validate(&m).unwrap_err().contains("name"));
        let mut m = meta();
        m.writes.push(Gvk::new("", "", "x"));
        assert!(validate(&m).unwrap_err().starts_with("writes"));
        let mut m = meta();
        m.finalizer = Some("cleanup".into());
        assert!(validate(&m).unwrap_err().contains("finalizer"));
        let mut m = meta();
        m.resync_seconds = Some(0);
        assert!(validate(&m).is_err());
    }
}
