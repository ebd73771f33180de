//! Fencing (docs/design.md, invariant 10): whether this process may write now.
//!
//! With leader election, only the holder of the Lease writes, and only while its hold is
//! *known* to be valid: renewed within the renew deadline, measured by this process's own
//! clock from when the successful renew was *sent* (the request may have sat in a queue;
//! counting from its start is the conservative end). A leader whose renews stall — a
//! black-holed connection, an API server that stopped answering — is fenced once the
//! deadline passes, before a standby can take the Lease (which needs the longer lease
//! duration to pass without renewal), so two processes never write for the same key.
//!
//! Without leader election the fence is always open.
//!
//! # Guarantees
//! - [`Fence::check`] is cheap (one lock, no I/O) and is called before every write the
//!   host makes: applies, creates, updates, patches, status writes, deletes, finalizer
//!   patches and Events.
//! - Once [`revoked`](Fence::revoke) it never opens again: a process that lost its Lease
//!   exits, as controller-runtime's do.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// Whether this process may write; cheap to clone, clones share the state.
#[derive(Debug, Clone, Default)]
pub struct Fence {
    lease: Option<Arc<Leased>>,
}

#[derive(Debug)]
struct Leased {
    renew_deadline: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Clone, Copy)]
enum State {
    /// Not yet acquired.
    NotHeld,
    /// Held; the last successful renew was sent at this instant.
    Renewed(Instant),
    /// Lost for good.
    Revoked,
}

/// A write refused because this process does not currently hold its Lease.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum Fenced {
    /// The Lease was never acquired.
    #[error("this process does not hold the leader Lease")]
    NotHeld,
    /// The last renew is older than the renew deadline.
    #[error(
        "the leader Lease was last renewed {ago:?} ago, past the renew deadline of {deadline:?}"
    )]
    Expired {
        /// Since the last successful renew was sent.
        ago: Duration,
        /// The renew deadline.
        deadline: Duration,
    },
    /// Leadership was lost; the process is exiting.
    #[error("leadership was lost; this process no longer writes")]
    Revoked,
}

impl Fence {
    /// A fence that is always open (no leader election).
    pub fn open() -> Self {
        Self::default()
    }

    /// A fence for a Lease holder: closed until [`renewed`](Self::renewed), open for
    /// `renew_deadline` after each successful renew.
    pub fn leased(renew_deadline: Duration) -> Self {
        Self {
            lease: Some(Arc::new(Leased {
                renew_deadline,
                state: Mutex::new(State::NotHeld),
            })),
        }
    }

    /// Records a successful acquire or renew whose request was sent at `sent`.
    pub fn renewed(&self, sent: Instant) {
        if let Some(l) = &self.lease {
            let mut state = l.state.lock().unwrap_or_else(PoisonError::into_inner);
            match *state {
                State::Revoked => {}
                State::Renewed(prev) if prev >= sent => {}
                _ => *state = State::Renewed(sent),
            }
        }
    }

    /// Closes the fence for good (leadership lost).
    pub fn revoke(&self) {
        if let Some(l) = &self.lease {
            *l.state.lock().unwrap_or_else(PoisonError::into_inner) = State::Revoked;
        }
    }

    /// Whether this process may write now.
    ///
    /// # Errors
    /// [`Fenced`] saying why not.
    pub fn check(&self) -> Result<(), Fenced> {
        let Some(l) = &self.lease else {
            return Ok(());
        };
        match *l.state.lock().unwrap_or_else(PoisonError::into_inner) {
            State::NotHeld => Err(Fenced::NotHeld),
            State::Revoked => Err(Fenced::Revoked),
            State::Renewed(at) => {
                let ago = at.elapsed();
                if ago < l.renew_deadline {
                    Ok(())
                } else {
                    Err(Fenced::Expired {
                        ago,
                        deadline: l.renew_deadline,
                    })
                }
            }
        }
    }

    /// How long the current hold stays valid without another renew (`None` when open
    /// or not held).
    pub fn remaining(&self) -> Option<Duration> {
        let l = self.lease.as_ref()?;
        match *l.state.lock().unwrap_or_else(PoisonError::into_inner) {
            State::Renewed(at) => Some(l.renew_deadline.saturating_sub(at.elapsed())),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_open_fence_always_admits() {
        assert_eq!(Fence::open().check(), Ok(()));
        assert_eq!(Fence::open().remaining(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_leased_fence_admits_only_within_the_renew_deadline_of_the_last_renew() {
        let fence = Fence::leased(Duration::from_secs(10));
        assert_eq!(fence.check(), Err(Fenced::NotHeld));
        let sent = Instant::now();
        tokio::time::advance(Duration::from_secs(1)).await;
        fence.renewed(sent);
        assert_eq!(fence.check(), Ok(()));
        assert_eq!(fence.remaining(), Some(Duration::from_secs(9)));
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(matches!(fence.check(), Err(Fenced::Expired { .. })));
        // An older renew arriving late does not reopen it for longer than it deserves.
        fence.renewed(sent);
        assert!(fence.check().is_err());
        fence.renewed(Instant::now());
        assert_eq!(fence.check(), Ok(()));
        fence.revoke();
        assert_eq!(fence.check(), Err(Fenced::Revoked));
        fence.renewed(Instant::now());
        assert_eq!(fence.check(), Err(Fenced::Revoked), "revoked for good");
    }
}
