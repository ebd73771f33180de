//! rekon's integration tests: one binary, one local control plane per run.
//!
//! Set `REKON_TEST_LOG` (an `EnvFilter`, e.g. `rekon_host=debug`) to see the host's logs.

mod chaos;
mod container;
mod controller;
mod deploy;
mod dev;
mod docs;
mod events;
mod examples;
mod fencing;
mod isolation;
mod lifecycle;
mod operator;
mod proxy;
mod sandbox;
mod scaffold;
mod smoke;
mod stale_view;
mod sweep;
mod thrash;
mod write_safety;

/// Installs a log subscriber once when `REKON_TEST_LOG` is set; tests call it first.
pub fn logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Ok(filter) = std::env::var("REKON_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
    });
}
