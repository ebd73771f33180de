//! Kubernetes Events (events.k8s.io/v1) about primaries: the ones plugins return and the
//! host's own (failures, conflicts).
//!
//! Identical events (same plugin, object, type, reason, action and note) within
//! [`DEDUP_WINDOW`] of the previous one are recorded once, as client-go's event recorder
//! does: the first repeat patches the existing Event's `series` (`count` 2,
//! `lastObservedTime`), later ones at most every [`SERIES_INTERVAL`] with the count so far.
//! A user sees that it happened again, and a hot-looping failure cannot flood the API
//! server. The recent events are kept in a cache of at most [`MAX_RECENT`] entries.
//!
//! An Event lives in the namespace of the object it regards; for a cluster-scoped object
//! (a Namespace primary, say) in `default`.

use crate::contract::{Event, EventType};
use crate::fence::{Fence, Fenced};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event as KubeEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long after an event an identical one counts as a repeat (in the first Event's
/// `series`) rather than a new Event.
pub const DEDUP_WINDOW: Duration = Duration::from_secs(300);

/// After the first repeat, how often at most a series' count is written.
pub const SERIES_INTERVAL: Duration = Duration::from_secs(30);

/// How many recent events the recorder remembers; past it, the least recently seen is
/// forgotten (a repeat of it then makes a new Event).
pub const MAX_RECENT: usize = 4096;

/// Why an Event was not recorded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed the create.
    #[error("recording the event failed: {0}")]
    Api(#[source] kube::Error),
    /// This process may not write now (leader Lease).
    #[error("event not recorded: {0}")]
    Fenced(#[source] Fenced),
    /// No answer within the request deadline.
    #[error("recording the event got no answer within {0:?}")]
    Timeout(Duration),
}

impl Error {
    /// A bounded label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Api(_) => "api",
            Error::Fenced(_) => "fenced",
            Error::Timeout(_) => "timeout",
        }
    }
}

/// Records events.
#[derive(Clone)]
pub struct Recorder {
    client: kube::Client,
    instance: String,
    recent: Arc<Mutex<Recent>>,
    fence: Fence,
    deadline: Duration,
}

impl Recorder {
    /// A recorder reporting as `rekon.dev/<plugin>` from `instance` (e.g. the pod name),
    /// unfenced, with a 30 s deadline per Event.
    pub fn new(client: kube::Client, instance: &str) -> Self {
        Self {
            client,
            instance: instance.to_owned(),
            recent: Arc::default(),
            fence: Fence::open(),
            deadline: Duration::from_secs(30),
        }
    }

    /// Records only while `fence` admits writes; each Event is sent within `deadline`.
    pub fn guarded(mut self, fence: Fence, deadline: Duration) -> Self {
        self.fence = fence;
        self.deadline = deadline;
        self
    }

    /// Records `event` about `regarding` (an object as JSON), reported by `plugin`.
    ///
    /// # Errors
    /// [`Error`]; callers log it: a lost event never fails a reconcile.
    pub async fn record(
        &self,
        plugin: &str,
        regarding: &Value,
        event: &Event,
    ) -> Result<(), Error> {
        self.fence.check().map_err(Error::Fenced)?;
        let s = |p: &str| {
            regarding
                .pointer(p)
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let uid = s("/metadata/uid").unwrap_or_default();
        let key = format!(
            "{plugin}\0{uid}\0{:?}\0{}\0{}",
            event.event_type, event.reason, event.note
        );
        let namespace = s("/metadata/namespace").unwrap_or_else(|| "default".to_owned());
        let seen = self.recent().observe(&key, Instant::now());
        match seen {
            Seen::New => {}
            Seen::Counted => return Ok(()),
            Seen::Repeat { name, count } => {
                match self.patch_series(&namespace, &name, count).await {
                    Err(Error::Api(kube::Error::Api(e))) if e.code == 404 => {
                        // The Event expired (the API server's TTL): start afresh.
                        self.recent().forget(&key);
                        self.recent().observe(&key, Instant::now());
                    }
                    other => return other,
                }
            }
        }
        let name = s("/metadata/name").unwrap_or_default();
        // client-go's naming: the object's name and the time in hex nanoseconds.
        let event_name = format!("{name}.{:x}", jiff::Timestamp::now().as_nanosecond());
        let ev = KubeEvent {
            metadata: ObjectMeta {
                name: Some(event_name.clone()),
                namespace: Some(namespace.clone()),
                ..Default::default()
            },
            event_time: Some(MicroTime(jiff::Timestamp::now())),
            type_: Some(
                match event.event_type {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .to_owned(),
            ),
            reason: Some(event.reason.clone()),
            action: Some(event.reason.clone()),
            note: Some(truncate(&event.note, 1000)),
            reporting_controller: Some(format!("rekon.dev/{plugin}")),
            reporting_instance: Some(self.instance.clone()),
            regarding: Some(ObjectReference {
                api_version: s("/apiVersion"),
                kind: s("/kind"),
                name: Some(name),
                namespace: s("/metadata/namespace"),
                uid: Some(uid),
                resource_version: s("/metadata/resourceVersion"),
                ..Default::default()
            }),
            ..Default::default()
        };
        let api = Api::<KubeEvent>::namespaced(self.client.clone(), &namespace);
        let created = match tokio::time::timeout(
            self.deadline,
            api.create(&PostParams::default(), &ev),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(Error::Api(e)),
            Err(_) => Err(Error::Timeout(self.deadline)),
        };
        match &created {
            Ok(()) => self.recent().created(&key, event_name),
            // Not recorded: the next identical event tries again.
            Err(_) => self.recent().forget(&key),
        }
        created
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, Recent> {
        self.recent.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the `series` of the Event `name`: `count` occurrences, the last one now.
    async fn patch_series(&self, namespace: &str, name: &str, count: u32) -> Result<(), Error> {
        // Checked again: the fence may have closed since `record` began.
        self.fence.check().map_err(Error::Fenced)?;
        let api = Api::<KubeEvent>::namespaced(self.client.clone(), namespace);
        let patch = serde_json::json!({
            "series": {
                "count": count,
                "lastObservedTime": MicroTime(jiff::Timestamp::now()),
            }
        });
        let params = PatchParams::default();
        let patch = Patch::Merge(&patch);
        let sent = api.patch(name, &params, &patch);
        match tokio::time::timeout(self.deadline, sent).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(Error::Api(e)),
            Err(_) => Err(Error::Timeout(self.deadline)),
        }
    }
}

/// What [`Recent::observe`] found for an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// Not seen within the window: create an Event.
    New,
    /// A repeat whose Event `name` should now show `count` occurrences.
    Repeat {
        /// The Event's name.
        name: String,
        /// Occurrences so far, this one included (2 at the first repeat).
        count: u32,
    },
    /// A repeat counted but not written now (the Event is being created, or its series
    /// was written less than [`SERIES_INTERVAL`] ago): the next write carries it.
    Counted,
}

/// The recently recorded events, keyed by what makes two events identical: bounded to
/// [`MAX_RECENT`] entries, each forgotten [`DEDUP_WINDOW`] after it was last seen.
#[derive(Debug, Default)]
pub struct Recent {
    entries: HashMap<String, Entry>,
}

#[derive(Debug)]
struct Entry {
    /// The Event's name, once created.
    name: Option<String>,
    count: u32,
    last_seen: Instant,
    /// When the Event or its series was last written.
    last_written: Instant,
}

impl Recent {
    /// Notes an occurrence of the event `key` at `now` and says what to write.
    pub fn observe(&mut self, key: &str, now: Instant) -> Seen {
        self.entries
            .retain(|_, e| now.saturating_duration_since(e.last_seen) < DEDUP_WINDOW);
        if let Some(e) = self.entries.get_mut(key) {
            e.count = e.count.saturating_add(1);
            e.last_seen = now;
            return match &e.name {
                Some(name)
                    if e.count == 2
                        || now.saturating_duration_since(e.last_written) >= SERIES_INTERVAL =>
                {
                    e.last_written = now;
                    Seen::Repeat {
                        name: name.clone(),
                        count: e.count,
                    }
                }
                _ => Seen::Counted,
            };
        }
        if self.entries.len() >= MAX_RECENT
            && let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.last_seen)
                .map(|(k, _)| k.clone())
        {
            self.entries.remove(&oldest);
        }
        self.entries.insert(
            key.to_owned(),
            Entry {
                name: None,
                count: 1,
                last_seen: now,
                last_written: now,
            },
        );
        Seen::New
    }

    /// Records that the Event for `key` was created as `name`.
    pub fn created(&mut self, key: &str, name: String) {
        if let Some(e) = self.entries.get_mut(key) {
            e.name = Some(name);
        }
    }

    /// Forgets `key`: its next occurrence makes a new Event.
    pub fn forget(&mut self, key: &str) {
        self.entries.remove(key);
    }

    /// How many events are remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        s.to_owned()
    } else {
        format!("{}…", &s[..s.floor_char_boundary(max - 3)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn created(recent: &mut Recent, key: &str, now: Instant) {
        assert_eq!(recent.observe(key, now), Seen::New);
        recent.created(key, format!("{key}.ev"));
    }

    #[test]
    fn an_identical_event_within_the_window_is_a_series_of_one_event() {
        let t0 = Instant::now();
        let mut recent = Recent::default();
        created(&mut recent, "a", t0);
        assert_eq!(
            recent.observe("a", t0 + Duration::from_secs(1)),
            Seen::Repeat {
                name: "a.ev".into(),
                count: 2
            },
            "the first repeat writes the series at once, count 2"
        );
        assert_eq!(
            recent.observe("a", t0 + Duration::from_secs(2)),
            Seen::Counted
        );
        assert_eq!(
            recent.observe("a", t0 + Duration::from_secs(3)),
            Seen::Counted
        );
        assert_eq!(
            recent.observe("a", t0 + Duration::from_secs(1) + SERIES_INTERVAL),
            Seen::Repeat {
                name: "a.ev".into(),
                count: 5
            },
            "later repeats are written at most every SERIES_INTERVAL, with the count so far"
        );
        assert_eq!(recent.len(), 1);
    }

    #[test]
    fn another_event_or_one_after_the_window_is_a_new_event() {
        let t0 = Instant::now();
        let mut recent = Recent::default();
        created(&mut recent, "a", t0);
        assert_eq!(
            recent.observe("b", t0),
            Seen::New,
            "another note: another key"
        );
        // The window runs from the last occurrence: a series goes on while it repeats.
        let t1 = t0 + DEDUP_WINDOW - Duration::from_secs(1);
        assert!(matches!(
            recent.observe("a", t1),
            Seen::Repeat { count: 2, .. }
        ));
        assert_eq!(recent.observe("a", t1 + DEDUP_WINDOW), Seen::New);
    }

    #[test]
    fn a_repeat_while_the_event_is_being_created_is_counted_and_written_later() {
        let t0 = Instant::now();
        let mut recent = Recent::default();
        assert_eq!(recent.observe("a", t0), Seen::New);
        assert_eq!(recent.observe("a", t0), Seen::Counted);
        recent.created("a", "a.ev".into());
        assert_eq!(
            recent.observe("a", t0 + SERIES_INTERVAL),
            Seen::Repeat {
                name: "a.ev".into(),
                count: 3
            }
        );
        recent.forget("a");
        assert_eq!(recent.observe("a", t0 + SERIES_INTERVAL), Seen::New);
    }

    #[test]
    fn the_cache_is_bounded_and_forgets_the_least_recently_seen() {
        let t0 = Instant::now();
        let mut recent = Recent::default();
        for i in 0..MAX_RECENT + 10 {
            let at = t0 + Duration::from_millis(i as u64);
            created(&mut recent, &format!("k{i}"), at);
        }
        assert_eq!(recent.len(), MAX_RECENT);
        let later = t0 + Duration::from_secs(1);
        assert_eq!(
            recent.observe("k0", later),
            Seen::New,
            "the oldest was forgotten"
        );
        assert!(matches!(
            recent.observe(&format!("k{}", MAX_RECENT + 9), later),
            Seen::Repeat { count: 2, .. }
        ));
    }
}
