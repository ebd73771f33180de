//! {{name}}: a rekon decorator plugin. It has no custom resource of its own: its primary
//! is the built-in `{{kind}}` (`{{api_version}}`), objects someone else creates, and it
//! adds to them.
//!
//! - A {{kind}} labelled `{{label}}=enabled` gets a ConfigMap `<its name>-{{name}}`
//!   {{child_where}}, holding the {{kind}}'s name. The host makes the {{kind}} its
//!   controller owner, so it goes away with it.
//! - Every other {{kind}} — no label, another value, or the label removed — gets nothing,
//!   and loses what it had: every output asks the host to prune, so owned children the
//!   output does not apply are deleted.
//!
//! No CRD: the kind is built in. `cases/` holds `rekon test` cases.

{{imports}}
use rekon_sdk::{Error, Metadata, Output, Plugin, Request};

/// The label that opts a {{kind}} in, with the value [`ENABLED`].
pub const LABEL: &str = "{{label}}";

/// The value of [`LABEL`] that opts a {{kind}} in.
pub const ENABLED: &str = "enabled";

/// The name of the ConfigMap a {{kind}} named `primary` gets.
pub fn child_name(primary: &str) -> String {
    format!("{primary}-{{name}}")
}

/// The plugin.
pub struct {{kind}}Decorator;

impl Plugin for {{kind}}Decorator {
    fn metadata() -> Metadata {
        // Reconcile {{kind}}s; own ConfigMaps (watch them by owner reference, write them).
        Metadata::new::<{{kind}}>("{{name}}", env!("CARGO_PKG_VERSION")).owns::<ConfigMap>()
    }

    fn reconcile(req: Request) -> Result<Output, Error> {
        let primary: {{kind}} = req.primary()?;
        let labels = primary.metadata.labels.unwrap_or_default();
        // State the desired result every time: prune deletes what is no longer applied.
        let out = Output::new().prune();
        if labels.get(LABEL).map(String::as_str) != Some(ENABLED) {
            return Ok(out);
        }
        let config_map = ConfigMap {
            // {{child_meta_comment}}
            metadata: req.child_meta(child_name(req.name())),
            data: Some([("{{singular}}".to_owned(), req.name().to_owned())].into()),
            ..ConfigMap::default()
        };
        Ok(out.apply(&config_map))
    }
}

rekon_sdk::export_plugin!({{kind}}Decorator);

#[cfg(test)]
mod tests;
