//! Leader election through a `coordination.k8s.io/v1` Lease, as client-go does it.
//!
//! - A candidate takes the Lease when it is free (no holder) or expired. Expiry is judged
//!   by the candidate's own clock from when it last saw the Lease change — not from the
//!   holder's `renewTime` — so clock skew between machines cannot make two leaders.
//! - The leader renews every `retry` period; every write carries the `resourceVersion`
//!   it read, so two candidates racing for a free Lease cannot both win.
//! - A leader that could not renew for `renew_deadline` considers itself deposed
//!   ([`Elector::hold`] returns) and must stop reconciling: rekon exits so that a restart
//!   begins from a clean state, as controller-runtime does. Every renew is bounded by
//!   what is left of the renew deadline, so a black-holed connection cannot stall it.
//! - The elector keeps the process's [`Fence`]: open for the renew deadline after each
//!   successful acquire or renew (counted from when it was sent), revoked when leadership
//!   is lost. Every write the host makes checks it, so a deposed leader writes nothing
//!   even before it has exited.
//! - On shutdown the leader stops renewing, then releases the Lease (clears the holder),
//!   so a standby takes over at its next retry instead of after a full lease duration
//!   ([`Holding::release`]: a renewal racing the release would take the Lease again).

use crate::fence::Fence;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use std::time::Duration;
use tokio::time::Instant;

/// Election timings.
#[derive(Debug, Clone)]
pub struct Timing {
    /// How long a Lease stays valid without renewal.
    pub lease_duration: Duration,
    /// How long the leader keeps trying to renew before it gives up leadership.
    pub renew_deadline: Duration,
    /// How often candidates retry and the leader renews.
    pub retry: Duration,
}

impl Default for Timing {
    /// client-go's defaults: 15 s, 10 s, 2 s.
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry: Duration::from_secs(2),
        }
    }
}

/// Why an election step failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed a Lease request.
    #[error("lease {namespace}/{name}: {source}")]
    Api {
        /// The Lease's namespace.
        namespace: String,
        /// The Lease's name.
        name: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
}

/// A leader renewing its Lease in the background ([`Elector::hold_in_background`]).
pub struct Holding {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Option<Elector>>,
    lost: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl Holding {
    /// Resolves when leadership is lost (the renewals stopped: see [`Elector::hold`]);
    /// pending forever after it resolved once.
    pub async fn lost(&mut self) {
        if let Some(lost) = self.lost.take()
            && lost.await.is_ok()
        {
            return;
        }
        std::future::pending().await
    }

    /// Stops the renewals, then releases the Lease ([`Elector::release`]). Releasing
    /// while a renewal may still run would let it take the freed Lease again, or make the
    /// release meet a conflict, and the Lease would stay held until it expires.
    ///
    /// # Errors
    /// [`Error::Api`] if the Lease could not be read or written.
    pub async fn release(self) -> Result<(), Error> {
        let _ = self.stop.send(());
        match self.task.await {
            Ok(Some(mut elector)) => elector.release().await,
            // Leadership was lost (or the task ended otherwise): nothing to release.
            _ => Ok(()),
        }
    }
}

/// One candidate for one Lease.
pub struct Elector {
    api: Api<Lease>,
    namespace: String,
    name: String,
    identity: String,
    timing: Timing,
    /// The Lease as last seen (holder, renew time, version) and when it was first seen so.
    observed: Option<(Observed, Instant)>,
    fence: Fence,
}

#[derive(Debug, Clone, PartialEq)]
struct Observed {
    holder: Option<String>,
    renew: Option<String>,
    version: Option<String>,
}

impl Elector {
    /// A candidate called `identity` (unique per process, e.g. the pod name) for the Lease
    /// `namespace/name`.
    pub fn new(
        client: kube::Client,
        namespace: &str,
        name: &str,
        identity: &str,
        timing: Timing,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            identity: identity.to_owned(),
            timing,
            observed: None,
            fence: Fence::open(),
        }
    }

    /// Keeps `fence` (see the module docs): opened by each successful acquire or renew
    /// for the renew deadline, revoked when leadership is lost.
    pub fn fenced(mut self, fence: Fence) -> Self {
        self.fence = fence;
        self
    }

    /// The Lease as a reference for Events (`None` until it has been read).
    pub async fn lease(&self) -> Option<Lease> {
        self.api.get_opt(&self.name).await.ok().flatten()
    }

    fn err(&self, source: kube::Error) -> Error {
        Error::Api {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            source,
        }
    }

    /// Waits until this candidate holds the Lease. Transient API errors are logged and
    /// retried.
    pub async fn acquire(&mut self) {
        let mut logged_holder = None;
        loop {
            let sent = Instant::now();
            let step =
                tokio::time::timeout(self.timing.renew_deadline, self.try_acquire_or_renew());
            match step.await.unwrap_or(Ok(false)) {
                Ok(true) => {
                    self.fence.renewed(sent);
                    tracing::info!(lease = %self.name, identity = %self.identity, "became the leader");
                    return;
                }
                Ok(false) => {
                    let holder = self.observed.as_ref().and_then(|(o, _)| o.holder.clone());
                    if holder != logged_holder {
                        tracing::info!(lease = %self.name, holder = ?holder, "standing by: another instance leads");
                        logged_holder = holder;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "leader election: retrying"),
            }
            tokio::time::sleep(self.timing.retry).await;
        }
    }

    /// Keeps renewing the Lease; returns when leadership is lost (no successful renewal
    /// for the renew deadline, or another holder took it), with the fence revoked.
    ///
    /// # Guarantees
    /// Each renew is bounded by what is left of the renew deadline (counted from the last
    /// successful renew's sending), so it returns within the renew deadline of the last
    /// success whatever the API server does.
    pub async fn hold(&mut self) {
        let mut last_ok = Instant::now();
        loop {
            tokio::time::sleep(self.timing.retry).await;
            let left = self
                .fence
                .remaining()
                .unwrap_or_else(|| self.timing.renew_deadline.saturating_sub(last_ok.elapsed()));
            if left.is_zero() {
                break;
            }
            let sent = Instant::now();
            match tokio::time::timeout(left, self.try_acquire_or_renew()).await {
                Ok(Ok(true)) => {
                    last_ok = sent;
                    self.fence.renewed(sent);
                }
                Ok(Ok(false)) => {
                    self.fence.revoke();
                    tracing::error!(lease = %self.name, "leadership lost: another instance holds the lease");
                    return;
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "renewing the lease failed; retrying"),
                Err(_) => tracing::warn!(after = ?left, "renewing the lease got no answer in time"),
            }
            if last_ok.elapsed() >= self.timing.renew_deadline {
                break;
            }
        }
        self.fence.revoke();
        tracing::error!(lease = %self.name, deadline = ?self.timing.renew_deadline, "leadership lost: could not renew the lease in time");
    }

    /// Renews the Lease in a task of its own ([`Elector::hold`]) until leadership is lost
    /// or [`Holding::release`] stops it.
    pub fn hold_in_background(mut self) -> Holding {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (lost_tx, lost) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            tokio::select! {
                () = self.hold() => {
                    let _ = lost_tx.send(());
                    None
                }
                _ = stopped => Some(self),
            }
        });
        Holding {
            stop,
            task,
            lost: Some(lost),
        }
    }

    /// Gives the Lease up if this candidate holds it. A write that meets a concurrent
    /// change of the Lease (409) reads it again, a few times.
    ///
    /// # Errors
    /// [`Error::Api`] if the Lease could not be read or written.
    pub async fn release(&mut self) -> Result<(), Error> {
        let mut attempt = 1;
        loop {
            match self.release_once().await {
                Err(Error::Api { source, .. }) if is_conflict(&source) && attempt < 3 => {
                    attempt += 1;
                }
                done => return done,
            }
        }
    }

    async fn release_once(&mut self) -> Result<(), Error> {
        let Some(mut lease) = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| self.err(e))?
        else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(&self.identity) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(now());
        self.api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
            .map_err(|e| self.err(e))?;
        tracing::info!(lease = %self.name, "lease released");
        Ok(())
    }

    /// One step: take the Lease if free or expired, renew it if ours. `Ok(true)` when this
    /// candidate holds it afterwards.
    ///
    /// # Errors
    /// [`Error::Api`] on anything but a lost race (a 409, which is `Ok(false)`).
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, Error> {
        let duration_secs =
            i32::try_from(self.timing.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX);
        let Some(mut lease) = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| self.err(e))?
        else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    namespace: Some(self.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(duration_secs),
                    acquire_time: Some(now()),
                    renew_time: Some(now()),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if is_conflict(&e) => Ok(false),
                Err(e) => Err(self.err(e)),
            };
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let seen = Observed {
            holder: spec.holder_identity.clone().filter(|h| !h.is_empty()),
            renew: spec.renew_time.as_ref().map(|t| t.0.to_string()),
            version: lease.metadata.resource_version.clone(),
        };
        let first_seen = match &self.observed {
            Some((o, at)) if *o == seen => *at,
            _ => Instant::now(),
        };
        self.observed = Some((seen.clone(), first_seen));
        let ours = seen.holder.as_deref() == Some(&self.identity);
        let held_for = spec
            .lease_duration_seconds
            .map_or(self.timing.lease_duration, |s| {
                Duration::from_secs(u64::try_from(s.max(0)).unwrap_or(0))
            });
        let expired = seen.holder.is_none() || first_seen.elapsed() > held_for;
        if !ours && !expired {
            return Ok(false);
        }
        if !ours {
            spec.acquire_time = Some(now());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            spec.holder_identity = Some(self.identity.clone());
        }
        spec.lease_duration_seconds = Some(duration_secs);
        spec.renew_time = Some(now());
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(self.err(e)),
        }
    }
}

fn now() -> MicroTime {
    MicroTime(jiff::Timestamp::now())
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}
