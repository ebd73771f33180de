//! rekon as an operator: the pieces `rekon run` puts together.
//!
//! - [`config`]: the optional `NAME.yaml` beside a plugin.
//! - [`dir`]: what the plugin directory holds and which files have settled.
//! - [`plugins`]: the running plugins follow the directory (hot reload).
//! - [`leader`]: leader election through a Lease.

pub mod config;
pub mod dir;
pub mod leader;
pub mod plugins;

pub use plugins::{PluginSet, Reporter, Transition};

use notify::Watcher;
use std::future::Future;
use std::time::Duration;

/// How the directory is followed.
#[derive(Debug, Clone)]
pub struct Follow {
    /// How long a file must stay unchanged before it is loaded.
    pub settle: Duration,
    /// Rescan this often even without a filesystem notification (notifications are not
    /// delivered on every filesystem, e.g. some network mounts).
    pub rescan: Duration,
}

impl Default for Follow {
    fn default() -> Self {
        Self {
            settle: Duration::from_millis(300),
            rescan: Duration::from_secs(5),
        }
    }
}

/// Keeps `set` in step with its directory until `stop` resolves. `on_pass` is called after
/// every pass with whether the set has settled (every file acted on).
pub async fn follow(
    set: &mut PluginSet,
    timing: &Follow,
    stop: impl Future<Output = ()>,
    mut on_pass: impl FnMut(bool),
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            let _ = tx.send(());
        }
    })
    .and_then(|mut w| {
        w.watch(set.dir(), notify::RecursiveMode::NonRecursive)
            .map(|()| w)
    });
    let _watcher = match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, dir = %set.dir().display(), every = ?timing.rescan, "cannot watch the plugin directory; rescanning periodically");
            None
        }
    };
    let mut stop = std::pin::pin!(stop);
    loop {
        let pending = match set.sync().await {
            Ok((_, pending)) => pending,
            Err(e) => {
                tracing::error!(error = %e, dir = %set.dir().display(), "cannot read the plugin directory");
                false
            }
        };
        on_pass(!pending && set.is_settled());
        let wait = if pending {
            timing.settle
        } else {
            timing.rescan
        };
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(wait) => {}
            Some(()) = rx.recv() => {
                // Let a burst of writes finish, then scan once.
                tokio::time::sleep(timing.settle).await;
                while rx.try_recv().is_ok() {}
            }
        }
    }
}
