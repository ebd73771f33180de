//! The store's two indexes, both ordered sets of `Arc<Stored>` keyed by fields read from
//! the object itself, so no key string is held twice:
//! - [`ByName`]: (namespace, name). Point lookups, and one namespace is a contiguous range.
//! - [`ByOwner`]: (controller owner uid, namespace, name). One owner's children are a
//!   contiguous range.
//!
//! Lookups use a borrowed probe (`(&str, &str)`) through `Borrow<dyn …Key>`, the usual way
//! to query a `BTreeSet` by a composite key without building an owned one.

use super::stored::Stored;
use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::collections::btree_set;
use std::ops::Bound;
use std::sync::Arc;

/// An object in the (namespace, name) index. Cluster-scoped objects have namespace "".
#[derive(Clone)]
pub(super) struct ByName(pub(super) Arc<Stored>);

/// Anything with a (namespace, name) key.
pub(super) trait NameKey {
    fn name_key(&self) -> (&str, &str);
}

impl NameKey for ByName {
    fn name_key(&self) -> (&str, &str) {
        (self.0.namespace_key(), self.0.name())
    }
}

impl NameKey for (&str, &str) {
    fn name_key(&self) -> (&str, &str) {
        (self.0, self.1)
    }
}

impl<'a> Borrow<dyn NameKey + 'a> for ByName {
    fn borrow(&self) -> &(dyn NameKey + 'a) {
        self
    }
}

impl PartialEq for dyn NameKey + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.name_key() == other.name_key()
    }
}
impl Eq for dyn NameKey + '_ {}
impl PartialOrd for dyn NameKey + '_ {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for dyn NameKey + '_ {
    fn cmp(&self, other: &Self) -> Ordering {
        self.name_key().cmp(&other.name_key())
    }
}

impl PartialEq for ByName {
    fn eq(&self, other: &Self) -> bool {
        self.name_key() == other.name_key()
    }
}
impl Eq for ByName {}
impl PartialOrd for ByName {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for ByName {
    fn cmp(&self, other: &Self) -> Ordering {
        self.name_key().cmp(&other.name_key())
    }
}

/// An object with a controller owner, in the owner index.
#[derive(Clone)]
pub(super) struct ByOwner(pub(super) Arc<Stored>);

/// Anything with an (owner uid, namespace, name) key.
pub(super) trait OwnerKey {
    fn owner_key(&self) -> (&str, &str, &str);
}

impl OwnerKey for ByOwner {
    fn owner_key(&self) -> (&str, &str, &str) {
        let owner = self.0.controller_owner_uid().unwrap_or_default();
        (owner, self.0.namespace_key(), self.0.name())
    }
}

impl OwnerKey for (&str, &str, &str) {
    fn owner_key(&self) -> (&str, &str, &str) {
        (self.0, self.1, self.2)
    }
}

impl<'a> Borrow<dyn OwnerKey + 'a> for ByOwner {
    fn borrow(&self) -> &(dyn OwnerKey + 'a) {
        self
    }
}

impl PartialEq for dyn OwnerKey + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.owner_key() == other.owner_key()
    }
}
impl Eq for dyn OwnerKey + '_ {}
impl PartialOrd for dyn OwnerKey + '_ {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for dyn OwnerKey + '_ {
    fn cmp(&self, other: &Self) -> Ordering {
        self.owner_key().cmp(&other.owner_key())
    }
}

impl PartialEq for ByOwner {
    fn eq(&self, other: &Self) -> bool {
        self.owner_key() == other.owner_key()
    }
}
impl Eq for ByOwner {}
impl PartialOrd for ByOwner {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for ByOwner {
    fn cmp(&self, other: &Self) -> Ordering {
        self.owner_key().cmp(&other.owner_key())
    }
}

/// Both indexes and what they hold.
#[derive(Default)]
pub(super) struct Indexes {
    by_name: BTreeSet<ByName>,
    by_owner: BTreeSet<ByOwner>,
    /// Heap bytes of the stored objects (not of the index nodes).
    bytes: usize,
}

impl Indexes {
    /// The object at (namespace, name).
    pub(super) fn get(&self, namespace: &str, name: &str) -> Option<&Arc<Stored>> {
        self.by_name
            .get(&(namespace, name) as &dyn NameKey)
            .map(|e| &e.0)
    }

    /// Inserts or replaces the object at its key; returns the one it replaced.
    pub(super) fn insert(&mut self, obj: Arc<Stored>) -> Option<Arc<Stored>> {
        let old = self.remove(obj.namespace_key(), obj.name());
        self.bytes += obj.heap_bytes();
        if obj.controller_owner_uid().is_some() {
            self.by_owner.insert(ByOwner(obj.clone()));
        }
        self.by_name.insert(ByName(obj));
        old
    }

    /// Removes the object at (namespace, name) from both indexes.
    pub(super) fn remove(&mut self, namespace: &str, name: &str) -> Option<Arc<Stored>> {
        let ByName(old) = self.by_name.take(&(namespace, name) as &dyn NameKey)?;
        self.bytes -= old.heap_bytes();
        if let Some(owner) = old.controller_owner_uid() {
            self.by_owner
                .remove(&(owner, old.namespace_key(), old.name()) as &dyn OwnerKey);
        }
        Some(old)
    }

    /// Every object, ordered by (namespace, name).
    pub(super) fn all(&self) -> impl Iterator<Item = &Arc<Stored>> {
        self.by_name.iter().map(|e| &e.0)
    }

    /// The objects in one namespace ("" for cluster-scoped), ordered by name.
    pub(super) fn in_namespace<'a>(
        &'a self,
        namespace: &'a str,
    ) -> impl Iterator<Item = &'a Arc<Stored>> + 'a {
        let from = (namespace, "");
        let range: btree_set::Range<'a, ByName> = self
            .by_name
            .range::<dyn NameKey, _>((Bound::Included(&from as &dyn NameKey), Bound::Unbounded));
        range
            .take_while(move |e| e.0.namespace_key() == namespace)
            .map(|e| &e.0)
    }

    /// The objects whose controller owner has `uid`, ordered by (namespace, name).
    pub(super) fn owned_by<'a>(
        &'a self,
        uid: &'a str,
    ) -> impl Iterator<Item = &'a Arc<Stored>> + 'a {
        let from = (uid, "", "");
        self.by_owner
            .range::<dyn OwnerKey, _>((Bound::Included(&from as &dyn OwnerKey), Bound::Unbounded))
            .take_while(move |e| e.0.controller_owner_uid() == Some(uid))
            .map(|e| &e.0)
    }

    /// How many objects are held.
    pub(super) fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Heap bytes of the objects plus an estimate for the index entries (one pointer and
    /// a share of a B-tree node each).
    pub(super) fn approx_bytes(&self) -> usize {
        const ENTRY: usize = 2 * size_of::<usize>();
        self.bytes + ENTRY * (self.by_name.len() + self.by_owner.len())
    }
}
