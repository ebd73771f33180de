//! The optional config file beside a plugin: `NAME.yaml` next to `NAME.wasm`.
//!
//! ```yaml
//! namespaces: [team-a, team-b]   # reconcile primaries in these namespaces only
//! resync: 5m                     # overrides the plugin's declared resync period
//! concurrency: 8                 # concurrent reconciles of this plugin
//! sandboxShare: 4                # sandbox slots its calls hold at most (default: fair share)
//! limits:                        # per-call sandbox limits (defaults: rekon check shows them)
//!   memory: 128Mi
//!   timeBudget: 500ms
//!   outputBytes: 4Mi
//!   objectBytes: 1Mi
//!   logBytes: 64Ki
//!   events: 16                   # events per output
//!   conditions: 32               # status conditions per output
//! settings:                      # any JSON-like value, handed to the plugin with each call
//!   replicasFloor: 2
//! adopt: [v1/Service]            # consent: applies may take over existing objects of these kinds
//! ```
//!
//! Every key is optional; an unknown key is refused with the key, the file and the line.

use crate::contract::Gvk;
use crate::sandbox::Limits;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A plugin's operator-side settings.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PluginConfig {
    /// Reconcile primaries in these namespaces only (cluster-scoped primaries are not
    /// filtered). `None`: every namespace the host watches.
    #[serde(default)]
    pub namespaces: Option<Vec<String>>,
    /// Resync period, overriding the plugin's declaration.
    #[serde(default, deserialize_with = "de_duration")]
    pub resync: Option<Duration>,
    /// Concurrent reconciles of this plugin.
    #[serde(default)]
    pub concurrency: Option<usize>,
    /// The most sandbox slots this plugin's calls hold at once. Without it, the host's
    /// slots are shared fairly between the plugins that have work, any of them using what
    /// the others leave.
    #[serde(default)]
    pub sandbox_share: Option<usize>,
    /// Sandbox limits, each overriding the host's default.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Handed to the plugin as JSON with every call (`Request::settings` in the SDK).
    #[serde(default)]
    pub settings: Option<serde_json::Value>,
    /// Kinds (`apiVersion/Kind`, e.g. `v1/Service`, `apps/v1/Deployment`) whose existing
    /// objects, not controlled by the primary, the plugin's applies may take over. Without
    /// this, such an apply is refused with a `NotOwned` Warning Event.
    #[serde(default)]
    pub adopt: Vec<String>,
}

/// Per-call limits in a config file; absent keys keep the default.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LimitsConfig {
    /// Linear memory cap (`64Mi`, `1Gi`, or bytes).
    #[serde(default, deserialize_with = "de_bytes")]
    pub memory: Option<usize>,
    /// Wall time per call (`2s`, `500ms`).
    #[serde(default, deserialize_with = "de_duration")]
    pub time_budget: Option<Duration>,
    /// Cap on one call's whole output.
    #[serde(default, deserialize_with = "de_bytes")]
    pub output_bytes: Option<usize>,
    /// Cap on one object in the output.
    #[serde(default, deserialize_with = "de_bytes")]
    pub object_bytes: Option<usize>,
    /// Cap on captured log text per call.
    #[serde(default, deserialize_with = "de_bytes")]
    pub log_bytes: Option<usize>,
    /// Cap on the events in one output.
    #[serde(default)]
    pub events: Option<usize>,
    /// Cap on the status conditions in one output.
    #[serde(default)]
    pub conditions: Option<usize>,
}

/// A config file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("plugin config {}: {reason}", path.display())]
pub struct ConfigError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong (serde's message names the key and the line).
    pub reason: String,
}

impl PluginConfig {
    /// Reads and checks `path`.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file, and the key and line where it can.
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        Self::parse(&text).map_err(|reason| ConfigError {
            path: path.to_owned(),
            reason,
        })
    }

    /// Parses config text.
    ///
    /// # Errors
    /// serde's message, which names an unknown key and where it is.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        let config: Self = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        if config.concurrency == Some(0) {
            return Err("concurrency: must be at least 1".to_owned());
        }
        if config.sandbox_share == Some(0) {
            return Err("sandboxShare: must be at least 1".to_owned());
        }
        if config.resync == Some(Duration::ZERO) {
            return Err(
                "resync: must be longer than 0s (a zero period would resync without pause)"
                    .to_owned(),
            );
        }
        for kind in &config.adopt {
            parse_kind(kind).map_err(|reason| format!("adopt: {reason}"))?;
        }
        if let Some(s) = &config.settings
            && !s.is_object()
        {
            return Err("settings: must be a mapping".to_owned());
        }
        Ok(config)
    }

    /// `defaults` with this file's limits applied.
    pub fn limits(&self, defaults: &Limits) -> Limits {
        let l = &self.limits;
        Limits {
            memory_bytes: l.memory.unwrap_or(defaults.memory_bytes),
            time_budget: l.time_budget.unwrap_or(defaults.time_budget),
            output_bytes: l.output_bytes.unwrap_or(defaults.output_bytes),
            object_bytes: l.object_bytes.unwrap_or(defaults.object_bytes),
            log_bytes: l.log_bytes.unwrap_or(defaults.log_bytes),
            max_events: l.events.unwrap_or(defaults.max_events),
            max_conditions: l.conditions.unwrap_or(defaults.max_conditions),
        }
    }

    /// The kinds listed under `adopt` (checked by [`parse`](Self::parse)).
    pub fn adopt_kinds(&self) -> Vec<Gvk> {
        self.adopt
            .iter()
            .filter_map(|k| parse_kind(k).ok())
            .collect()
    }

    /// The settings as the JSON text handed to the plugin (`{}` when absent).
    pub fn settings_json(&self) -> String {
        self.settings
            .as_ref()
            .map_or_else(|| "{}".to_owned(), ToString::to_string)
    }
}

/// Parses `apiVersion/Kind`: `v1/Service`, `apps/v1/Deployment`.
///
/// # Errors
/// A message naming the text and the expected form.
pub fn parse_kind(s: &str) -> Result<Gvk, String> {
    match s.trim().rsplit_once('/') {
        Some((api_version, kind))
            if !api_version.is_empty()
                && kind.starts_with(|c: char| c.is_ascii_uppercase())
                && api_version.split('/').count() <= 2 =>
        {
            Ok(Gvk::from_api_version(api_version, kind))
        }
        _ => Err(format!(
            "{s:?} is not a kind like v1/Service or apps/v1/Deployment (apiVersion/Kind)"
        )),
    }
}

/// Parses `30s`, `5m`, `250ms`, `1h` (a bare number is seconds).
///
/// # Errors
/// A message naming the text and the accepted units.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30s, 5m or 250ms"))?;
    Ok(match unit {
        "ms" => Duration::from_millis(n),
        "s" | "" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m, h)")),
    })
}

/// Parses a byte size: `65536`, `64Ki`, `64Mi`, `1Gi`, `10M`, `1G`.
///
/// # Errors
/// A message naming the text and the accepted suffixes.
pub fn parse_bytes(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: usize = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 64Mi or 1048576"))?;
    let factor: usize = match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "K" | "k" => 1000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        _ => {
            return Err(format!(
                "{s:?}: unknown suffix {unit:?} (Ki, Mi, Gi, K, M, G)"
            ));
        }
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("{s:?} is too large"))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumOrText {
    Num(u64),
    Text(String),
}

fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    match NumOrText::deserialize(d)? {
        NumOrText::Num(n) => Ok(Some(Duration::from_secs(n))),
        NumOrText::Text(t) => parse_duration(&t)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

fn de_bytes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    match NumOrText::deserialize(d)? {
        NumOrText::Num(n) => usize::try_from(n)
            .map(Some)
            .map_err(serde::de::Error::custom),
        NumOrText::Text(t) => parse_bytes(&t).map(Some).map_err(serde::de::Error::custom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_file_parses() {
        let c = PluginConfig::parse(
            "namespaces: [a, b]\nresync: 5m\nconcurrency: 8\nlimits:\n  memory: 128Mi\n  \
             timeBudget: 500ms\n  outputBytes: 4194304\n  events: 4\n  conditions: 8\n\
             settings:\n  floor: 2\n",
        )
        .unwrap();
        assert_eq!(c.namespaces, Some(vec!["a".into(), "b".into()]));
        assert_eq!(c.resync, Some(Duration::from_secs(300)));
        assert_eq!(c.concurrency, Some(8));
        let l = c.limits(&Limits::default());
        assert_eq!(l.memory_bytes, 128 << 20);
        assert_eq!(l.time_budget, Duration::from_millis(500));
        assert_eq!(l.output_bytes, 4 << 20);
        assert_eq!(l.object_bytes, Limits::default().object_bytes);
        assert_eq!((l.max_events, l.max_conditions), (4, 8));
        assert_eq!(c.settings_json(), r#"{"floor":2}"#);
    }

    #[test]
    fn an_empty_file_is_the_default() {
        assert_eq!(
            PluginConfig::parse("  \n").unwrap(),
            PluginConfig::default()
        );
        assert_eq!(PluginConfig::default().settings_json(), "{}");
    }

    #[test]
    fn unknown_keys_are_refused_by_name_and_line() {
        let e = PluginConfig::parse("resync: 1m\nreplicas: 3\n").unwrap_err();
        assert!(e.contains("unknown field `replicas`"), "{e}");
        assert!(e.contains("line 2"), "{e}");
        let e = PluginConfig::parse("limits:\n  cpu: 1\n").unwrap_err();
        assert!(e.contains("unknown field `cpu`"), "{e}");
        let e = PluginConfig::parse("limits:\n  maxEvents: 1\n").unwrap_err();
        assert!(e.contains("unknown field `maxEvents`"), "{e}");
    }

    #[test]
    fn bad_values_are_refused_with_the_reason() {
        let e = PluginConfig::parse("resync: soon\n").unwrap_err();
        assert!(e.contains("\"soon\" is not a duration"), "{e}");
        let e = PluginConfig::parse("limits:\n  memory: 12Qi\n").unwrap_err();
        assert!(e.contains("unknown suffix \"Qi\""), "{e}");
        assert!(PluginConfig::parse("concurrency: 0\n").is_err());
        let e = PluginConfig::parse("sandboxShare: 0\n").unwrap_err();
        assert!(e.contains("sandboxShare"), "{e}");
        assert!(PluginConfig::parse("settings: [1]\n").is_err());
    }

    #[test]
    fn a_sandbox_share_caps_the_plugin_and_a_misspelt_one_is_refused() {
        let c = PluginConfig::parse("sandboxShare: 4\n").unwrap();
        assert_eq!(c.sandbox_share, Some(4));
        assert_eq!(PluginConfig::default().sandbox_share, None);
        let e = PluginConfig::parse("sandboxShares: 4\n").unwrap_err();
        assert!(e.contains("unknown field `sandboxShares`"), "{e}");
    }

    #[test]
    fn the_file_is_named_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("webapp.yaml");
        std::fs::write(&path, "bogus: 1\n").unwrap();
        let e = PluginConfig::read(&path).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("plugin config {}:", path.display())),
            "{e}"
        );
        assert!(e.contains("bogus"), "{e}");
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_bytes("64Ki"), Ok(65536));
        assert_eq!(parse_bytes("10M"), Ok(10_000_000));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_duration("1d").is_err());
    }

    #[test]
    fn a_zero_resync_is_refused_naming_the_key() {
        let e = PluginConfig::parse("resync: 0s\n").unwrap_err();
        assert!(e.starts_with("resync:"), "{e}");
        let e = PluginConfig::parse("resync: 0\n").unwrap_err();
        assert!(e.starts_with("resync:"), "{e}");
    }

    #[test]
    fn adopted_kinds_parse_and_a_malformed_one_is_refused() {
        let c = PluginConfig::parse("adopt: [v1/Service, apps/v1/Deployment]\n").unwrap();
        assert_eq!(
            c.adopt_kinds(),
            [
                Gvk::new("", "v1", "Service"),
                Gvk::new("apps", "v1", "Deployment")
            ]
        );
        let e = PluginConfig::parse("adopt: [Service]\n").unwrap_err();
        assert!(e.contains("adopt:") && e.contains("\"Service\""), "{e}");
    }
}
