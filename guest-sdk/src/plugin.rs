//! The trait a plugin implements ([`Plugin`]), what it declares ([`Metadata`]), and the
//! macro that exports it ([`export_plugin!`](crate::export_plugin)).

use std::time::Duration;

use crate::{DynamicObject, Error, Gvk, Kind, ObjectKey, Output, Request};

/// A controller plugin: a pure decision function from the primary object and what the
/// host's cache knows about it to the changes it wants.
///
/// All functions are associated functions without `self`: the host instantiates the
/// component afresh for every call, so there is no state to keep between calls. Export
/// the implementation with [`export_plugin!`](crate::export_plugin).
///
/// # Guarantees the host gives
///
/// `reconcile` is never called concurrently for the same primary; it sees the cache as
/// of (at least) its own last writes; a conflict drops the rest of its mutations and
/// calls it again on fresher state. So a plugin states the desired state every time and
/// never needs to remember what it did.
pub trait Plugin {
    /// What the plugin reconciles, watches, reads and writes. Called once at load; must
    /// not call the host (no [`cache`](crate::cache), [`log`](mod@crate::log) or
    /// [`clock`](crate::clock)).
    fn metadata() -> Metadata;

    /// Decides what the primary needs, given current cached state.
    ///
    /// # Errors
    ///
    /// [`Error::Transient`] to be retried with backoff; [`Error::Permanent`] to be
    /// recorded and left until the object changes.
    fn reconcile(request: Request) -> Result<Output, Error>;

    /// Cleans up before a primary carrying the plugin's
    /// [finalizer](Metadata::finalizer) is deleted. Return an output with a
    /// [requeue](Output::requeue_after) to be called again while cleanup is in
    /// progress; the host removes the finalizer once this returns `Ok` without one.
    ///
    /// The default does nothing and succeeds.
    ///
    /// # Errors
    ///
    /// As [`reconcile`](Self::reconcile).
    fn finalize(request: Request) -> Result<Output, Error> {
        let _ = request;
        Ok(Output::new())
    }

    /// For watches with [`Mapping::Custom`]: the primaries an object of `kind` maps to.
    ///
    /// It may read the cache ([`cache::get`](crate::cache::get),
    /// [`cache::list`](crate::cache::list)) of the declared kinds, e.g. to find the
    /// primaries that use the object; `rekon test` checks it with `mapToPrimaries` cases.
    ///
    /// The default maps nothing.
    fn map_to_primaries(kind: &Gvk, object: &DynamicObject) -> Vec<ObjectKey> {
        let _ = (kind, object);
        Vec::new()
    }
}

/// How an event on a watched kind becomes primary keys to reconcile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mapping {
    /// The object's controller owner reference names the primary (in the object's
    /// namespace): the usual choice for children the plugin applies.
    OwnerReference,
    /// The label with this key names the primary (in the object's namespace).
    Label(String),
    /// The host calls [`Plugin::map_to_primaries`].
    Custom,
}

/// A kind the plugin watches besides its primary kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Watch {
    /// The watched kind.
    pub kind: Gvk,
    /// How its events map to primary keys.
    pub mapping: Mapping,
}

/// What a plugin declares about itself. The host grants nothing beyond it: reads are
/// limited to the primary, watched and `reads` kinds, writes to the `writes` kinds (and
/// the primary's status, finalizers and merge patches).
///
/// ```no_run
/// use std::time::Duration;
/// use rekon_sdk::{Metadata, Mapping};
/// use rekon_sdk::k8s_openapi::api::{apps::v1::Deployment, core::v1::{ConfigMap, Secret, Service}};
///
/// let metadata = Metadata::new::<ConfigMap>("mirror", env!("CARGO_PKG_VERSION"))
///     .owns::<Deployment>()                                    // watch by owner reference + write
///     .watch::<Service>(Mapping::Label("mirror.rekon.dev/of".into()))
///     .reads::<Secret>()
///     .resync(Duration::from_secs(300))
///     .finalizer("mirror.rekon.dev/cleanup");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metadata {
    /// Plugin name: lowercase letters, digits and `-`; unique in a host.
    pub name: String,
    /// Plugin version, free text (semver recommended).
    pub version: String,
    /// The kind the plugin reconciles.
    pub primary: Gvk,
    /// Other kinds whose changes trigger reconciles, and how.
    pub watches: Vec<Watch>,
    /// Further kinds readable through [`cache`](crate::cache).
    pub reads: Vec<Gvk>,
    /// Kinds the plugin may create, update, patch or delete.
    pub writes: Vec<Gvk>,
    /// Period after which every primary is reconciled again; `None` takes the host's
    /// default.
    pub resync: Option<Duration>,
    /// Finalizer the host adds to every primary, making it call
    /// [`Plugin::finalize`] on deletion.
    pub finalizer: Option<String>,
}

impl Metadata {
    /// A plugin named `name` at `version` reconciling objects of kind `P`, watching,
    /// reading and writing nothing else.
    pub fn new<P: Kind + ?Sized>(name: impl Into<String>, version: impl Into<String>) -> Self {
        Self::for_gvk(name, version, P::gvk())
    }

    /// [`new`](Self::new) for a primary kind known only at run time.
    pub fn for_gvk(name: impl Into<String>, version: impl Into<String>, primary: Gvk) -> Self {
        Self {
            name: name.into(),
            version: version.into(),
            primary,
            watches: Vec::new(),
            reads: Vec::new(),
            writes: Vec::new(),
            resync: None,
            finalizer: None,
        }
    }

    /// Watches kind `K`, mapping its events to primaries with `mapping`.
    #[must_use]
    pub fn watch<K: Kind + ?Sized>(self, mapping: Mapping) -> Self {
        self.watch_gvk(K::gvk(), mapping)
    }

    /// [`watch`](Self::watch) for a kind known only at run time.
    #[must_use]
    pub fn watch_gvk(mut self, kind: Gvk, mapping: Mapping) -> Self {
        self.watches.push(Watch { kind, mapping });
        self
    }

    /// Children of kind `K` the plugin applies: watched by owner reference and writable.
    #[must_use]
    pub fn owns<K: Kind + ?Sized>(self) -> Self {
        self.watch::<K>(Mapping::OwnerReference).writes::<K>()
    }

    /// May read kind `K` through the cache.
    #[must_use]
    pub fn reads<K: Kind + ?Sized>(mut self) -> Self {
        self.reads.push(K::gvk());
        self
    }

    /// May create, update, patch and delete objects of kind `K`.
    #[must_use]
    pub fn writes<K: Kind + ?Sized>(mut self) -> Self {
        self.writes.push(K::gvk());
        self
    }

    /// Reconciles every primary again after `period` (whole seconds) even without events.
    #[must_use]
    pub fn resync(mut self, period: Duration) -> Self {
        self.resync = Some(period);
        self
    }

    /// Asks for a finalizer on every primary, so that [`Plugin::finalize`] runs before
    /// it is deleted.
    #[must_use]
    pub fn finalizer(mut self, name: impl Into<String>) -> Self {
        self.finalizer = Some(name.into());
        self
    }

    /// Whether the plugin may read `kind` through the cache: the primary, watched and
    /// `reads` kinds.
    pub fn may_read(&self, kind: &Gvk) -> bool {
        *kind == self.primary
            || self.watches.iter().any(|w| w.kind == *kind)
            || self.reads.contains(kind)
    }
}

/// Exports a [`Plugin`] implementation as the component's `rekon:plugin/guest`.
///
/// Invoke it once, at the crate root of a `cdylib` crate:
///
/// ```no_run
/// # use rekon_sdk::{Plugin, Metadata, Request, Output, Error};
/// # use rekon_sdk::k8s_openapi::api::core::v1::ConfigMap;
/// struct Noop;
///
/// impl Plugin for Noop {
///     fn metadata() -> Metadata {
///         Metadata::new::<ConfigMap>("noop", "0.1.0")
///     }
///     fn reconcile(_: Request) -> Result<Output, Error> {
///         Ok(Output::new())
///     }
/// }
///
/// rekon_sdk::export_plugin!(Noop);
/// ```
///
/// The generated adapter decodes the host's request, calls the plugin, and encodes its
/// output. The component exports exist only on `wasm32`: natively (unit tests) the
/// crate still type-checks the adapter but exports nothing, which keeps a native
/// `cdylib` linkable. On `wasm32` the adapter also installs a panic hook that sends a panic's message and
/// location to the host's log at error level before the trap.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        const _: () = {
            #[doc(hidden)]
            pub struct RekonGuest;

            impl $crate::bindings::exports::rekon::plugin::guest::Guest for RekonGuest {
                fn metadata() -> $crate::raw::wit::PluginMetadata {
                    $crate::raw::metadata::<$plugin>()
                }
                fn reconcile(
                    request: $crate::raw::wit::Request,
                ) -> ::core::result::Result<
                    $crate::raw::wit::Output,
                    $crate::raw::wit::ReconcileError,
                > {
                    $crate::raw::reconcile::<$plugin>(request)
                }
                fn finalize(
                    request: $crate::raw::wit::Request,
                ) -> ::core::result::Result<
                    $crate::raw::wit::Output,
                    $crate::raw::wit::ReconcileError,
                > {
                    $crate::raw::finalize::<$plugin>(request)
                }
                fn map_to_primaries(
                    kind: $crate::raw::wit::Gvk,
                    object: ::std::string::String,
                ) -> ::std::vec::Vec<$crate::raw::wit::ObjectKey> {
                    $crate::raw::map_to_primaries::<$plugin>(kind, object)
                }
            }

            // Only components export: natively the export names (`rekon:plugin/guest@…`)
            // are not valid in a linker version script, so a native `cdylib` would not link.
            #[cfg(target_arch = "wasm32")]
    $crate::bindings::export_guest!(RekonGuest with_types_in $crate::bindings);
        };
    };
}
