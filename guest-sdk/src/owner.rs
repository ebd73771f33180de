//! Owner references: who controls an object, and the reference to the primary.
//!
//! Children applied through [`Output::apply`](crate::Output::apply) get a controller
//! owner reference to the primary from the host, so most plugins never build one. These
//! helpers are for the rest: telling the primary's own children from look-alikes a user
//! or another controller created ([`is_controlled_by`]), and putting the reference on an
//! object written with [`Output::create`](crate::Output::create) or
//! [`Output::update`](crate::Output::update), which the host leaves as written
//! ([`Request::owner_reference`](crate::Request::owner_reference)).
//!
//! ```
//! use rekon_sdk::{owner, testing};
//! use rekon_sdk::k8s_openapi::api::core::v1::ConfigMap;
//!
//! let app = testing::obj("example.dev/v1", "WebApp", "web").ns("shop").uid("u-1");
//! let req = testing::request(&app);
//! let mine: ConfigMap = testing::object::<ConfigMap>("web").ns("shop").owned_by(&app).typed();
//! let stray: ConfigMap = testing::object::<ConfigMap>("web").ns("shop").typed();
//! assert!(owner::is_controlled_by(&mine.metadata, &req));
//! assert!(!owner::is_controlled_by(&stray.metadata, &req));
//! assert_eq!(req.owner_reference().uid, "u-1");
//! ```

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use crate::{Gvk, Request};

/// The object's controller: its owner reference with `controller: true`, if any (there
/// is at most one).
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
}

/// Whether the request's primary is the object's controller (its owner reference with
/// `controller: true`) — the relation the host's owner-reference mapping follows.
///
/// The reference matches by uid when the primary has one (as every object from the host
/// does), else by kind, API group and name.
pub fn is_controlled_by(meta: &ObjectMeta, primary: &Request) -> bool {
    controller_of(meta).is_some_and(|r| refers_to(r, primary))
}

/// Whether any of the object's owner references (controller or not) names the
/// request's primary, matched as in [`is_controlled_by`].
pub fn is_owned_by(meta: &ObjectMeta, primary: &Request) -> bool {
    meta.owner_references
        .iter()
        .flatten()
        .any(|r| refers_to(r, primary))
}

fn refers_to(reference: &OwnerReference, primary: &Request) -> bool {
    match primary.uid() {
        Some(uid) if !uid.is_empty() => reference.uid == uid,
        _ => {
            let gvk = primary.gvk();
            let group = Gvk::from_api_version(&reference.api_version, "").group;
            reference.kind == gvk.kind && group == gvk.group && reference.name == primary.name()
        }
    }
}

impl Request {
    /// A controller owner reference to the primary (`controller` and
    /// `blockOwnerDeletion` set), as the host puts on applied children. Add it to the
    /// metadata of objects you [`create`](crate::Output::create) or
    /// [`update`](crate::Output::update) so Kubernetes garbage-collects them with the
    /// primary.
    ///
    /// # Caveats
    ///
    /// The `uid` is empty if the primary has none — never for a primary the host sends,
    /// only for a hand-built test fixture without [`uid`](crate::testing::Obj::uid); the
    /// API server refuses such a reference.
    pub fn owner_reference(&self) -> OwnerReference {
        let gvk = self.gvk();
        OwnerReference {
            api_version: gvk.api_version(),
            kind: gvk.kind,
            name: self.name().to_owned(),
            uid: self.uid().unwrap_or_default().to_owned(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{self, obj};

    fn meta_of(o: testing::Obj) -> ObjectMeta {
        serde_json::from_value(o.build()["metadata"].clone()).unwrap()
    }

    #[test]
    fn the_owner_reference_names_the_primary_as_controller() {
        let req = testing::request(
            obj("rekon.dev/v1alpha1", "WebApp", "web")
                .ns("shop")
                .uid("u-9"),
        );
        let r = req.owner_reference();
        assert_eq!(
            (
                r.api_version.as_str(),
                r.kind.as_str(),
                r.name.as_str(),
                r.uid.as_str()
            ),
            ("rekon.dev/v1alpha1", "WebApp", "web", "u-9")
        );
        assert_eq!(
            (r.controller, r.block_owner_deletion),
            (Some(true), Some(true))
        );
    }

    #[test]
    fn control_is_matched_by_uid_when_the_primary_has_one() {
        let app = obj("rekon.dev/v1alpha1", "WebApp", "web")
            .ns("shop")
            .uid("u-1");
        let req = testing::request(&app);
        assert!(is_controlled_by(
            &meta_of(obj("v1", "Service", "web").owned_by(&app)),
            &req
        ));
        // Same name and kind, another incarnation (the primary was deleted and re-created).
        let old = obj("rekon.dev/v1alpha1", "WebApp", "web").uid("u-0");
        assert!(!is_controlled_by(
            &meta_of(obj("v1", "Service", "web").owned_by(&old)),
            &req
        ));
        assert!(!is_controlled_by(
            &meta_of(obj("v1", "Service", "web")),
            &req
        ));
    }

    #[test]
    fn without_a_uid_control_is_matched_by_group_kind_and_name() {
        let req = testing::request(obj("rekon.dev/v1alpha1", "WebApp", "web"));
        let other_version = obj("rekon.dev/v1", "WebApp", "web");
        assert!(is_controlled_by(
            &meta_of(obj("v1", "Service", "s").owned_by(&other_version)),
            &req
        ));
        let other_group = obj("other.dev/v1alpha1", "WebApp", "web");
        assert!(!is_controlled_by(
            &meta_of(obj("v1", "Service", "s").owned_by(&other_group)),
            &req
        ));
        let other_name = obj("rekon.dev/v1alpha1", "WebApp", "api");
        assert!(!is_controlled_by(
            &meta_of(obj("v1", "Service", "s").owned_by(&other_name)),
            &req
        ));
    }

    #[test]
    fn a_non_controller_owner_reference_owns_but_does_not_control() {
        let app = obj("rekon.dev/v1alpha1", "WebApp", "web").uid("u-1");
        let req = testing::request(&app);
        let mut meta = meta_of(obj("v1", "ConfigMap", "c").owned_by(&app));
        if let Some(refs) = meta.owner_references.as_mut() {
            refs[0].controller = Some(false);
        }
        assert!(is_owned_by(&meta, &req));
        assert!(!is_controlled_by(&meta, &req));
        assert!(controller_of(&meta).is_none());
    }
}
