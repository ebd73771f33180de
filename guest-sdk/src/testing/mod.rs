//! Native unit tests of a plugin's logic (not available on `wasm32`).
//!
//! A plugin is a function from a [`Request`](crate::Request) to an
//! [`Output`](crate::Output), so a test builds a request from fixtures, calls the
//! plugin's `reconcile` directly, and inspects the output:
//!
//! ```no_run
//! use rekon_sdk::testing::{self, FakeHost};
//! use rekon_sdk::k8s_openapi::api::apps::v1::Deployment;
//! use rekon_sdk::Plugin;
//! # struct WebAppPlugin;
//! # impl Plugin for WebAppPlugin {
//! #   fn metadata() -> rekon_sdk::Metadata { rekon_sdk::Metadata::new::<Deployment>("x", "1") }
//! #   fn reconcile(_: rekon_sdk::Request) -> Result<rekon_sdk::Output, rekon_sdk::Error> { Ok(Default::default()) }
//! # }
//!
//! let app = testing::obj("rekon.dev/v1alpha1", "WebApp", "web")
//!     .ns("default").generation(2).uid("u-1")
//!     .spec(serde_json::json!({ "image": "nginx", "replicas": 3 }));
//! let deployment = testing::object::<Deployment>("web").ns("default").owned_by(&app)
//!     .status(serde_json::json!({ "readyReplicas": 3 }));
//! let req = testing::request(&app).with_related(&deployment);
//!
//! // Without host calls, call the plugin directly; with them, inside a FakeHost.
//! let out = FakeHost::for_plugin::<WebAppPlugin>().run(|| WebAppPlugin::reconcile(req)).unwrap();
//!
//! testing::assert_applies(&out, "Deployment", "web");
//! assert_eq!(out.applied_named::<Deployment>("web").spec.replicas, Some(3));
//! testing::assert_condition(&out, "Ready", true, "Available");
//! ```
//!
//! - Fixtures: [`obj`] / [`object`] build objects by chaining ([`Obj`]); [`request`]
//!   wraps a primary, and [`Request::with_related`](crate::Request::with_related) /
//!   [`with_settings`](crate::Request::with_settings) add to it.
//! - Host calls: [`FakeHost`] stands behind [`cache`](crate::cache),
//!   [`log`](mod@crate::log) and [`clock`](crate::clock).
//! - Outputs: typed accessors on [`Output`](crate::Output) (`applied::<K>()`,
//!   `applied_named`, `status_updates`, `deletes`, …), the `assert_*` functions, and
//!   [`written_status`] for the status the host ends up writing.
//!
//! To test the compiled component in the real sandbox, use `rekon test PLUGIN.wasm
//! CASES/`.

mod fixture;
pub(crate) mod host;
mod inspect;

pub use fixture::{Obj, obj, object, request};
pub use host::{FakeHost, Installed, LogLine};
pub use inspect::{
    assert_applies, assert_condition, assert_event, assert_no_mutations, summary, written_status,
};
