//! Kubernetes Events (events.k8s.io/v1) about primaries: the ones plugins return and the
//! host's own (failures, conflicts).
//!
//! Identical events (same object, type, reason and note) within [`DEDUP_WINDOW`] are
//! recorded once, so a hot-looping failure cannot flood the API server.

use crate::contract::{Event, EventType};
use crate::fence::{Fence, Fenced};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event as KubeEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long an identical event is suppressed.
pub const DEDUP_WINDOW: Duration = Duration::from_secs(300);

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
    recent: Arc<Mutex<HashMap<String, Instant>>>,
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
        let dedup = format!(
            "{uid}\0{:?}\0{}\0{}",
            event.event_type, event.reason, event.note
        );
        {
            let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            recent.retain(|_, at| now.duration_since(*at) < DEDUP_WINDOW);
            if recent.contains_key(&dedup) {
                return Ok(());
            }
            recent.insert(dedup, now);
        }
        let namespace = s("/metadata/namespace").unwrap_or_else(|| "default".to_owned());
        let name = s("/metadata/name").unwrap_or_default();
        let ev = KubeEvent {
            metadata: ObjectMeta {
                // client-go's naming: the object's name and the time in hex nanoseconds.
                name: Some(format!(
                    "{name}.{:x}",
                    jiff::Timestamp::now().as_nanosecond()
                )),
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
        match tokio::time::timeout(self.deadline, api.create(&PostParams::default(), &ev)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(Error::Api(e)),
            Err(_) => Err(Error::Timeout(self.deadline)),
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        s.to_owned()
    } else {
        format!("{}…", &s[..s.floor_char_boundary(max - 3)])
    }
}
