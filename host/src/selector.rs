//! Kubernetes label selectors in their string form (`app=web,tier!=db`,
//! `env in (prod,staging)`, `release notin (canary)`, `owner`, `!legacy`), as plugins
//! pass them to the cache `list` import.
//!
//! The implementation is the [`rekon_selector`] crate, which the plugin SDK uses too, so a
//! selector means the same on both sides of the sandbox; this module names its types as the
//! host uses them.

pub use rekon_selector::{Error as ParseError, Selector};
