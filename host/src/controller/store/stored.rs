//! One cached object: its compact JSON, once, plus where in that JSON the indexed fields
//! are.
//!
//! An object arrives from the watch as a [`DynamicObject`]. [`Stored::encode`] drops
//! `metadata.managedFields` (as controller-runtime's `TransformStripManagedFields` does),
//! writes the rest as compact JSON, and records the byte ranges of the namespace, name,
//! uid, resourceVersion, controller owner uid and labels inside that JSON. Nothing is held
//! twice: the accessors slice the JSON. Labels are parsed on demand from their range,
//! which is a few dozen bytes, not the whole object.

use kube::api::{ApiResource, DynamicObject};
use serde::de::{self, DeserializeOwned, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// A byte range inside [`Stored::text`]; `len == 0` means absent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Span {
    start: u32,
    len: u32,
}

impl Span {
    fn range(self) -> std::ops::Range<usize> {
        let start = self.start as usize;
        start..start + self.len as usize
    }

    fn is_absent(self) -> bool {
        self.len == 0
    }
}

const HAS_GENERATION: u8 = 1;
const DELETING: u8 = 2;
/// The labels could not be located as one range (a key or value needed JSON escapes);
/// [`Stored::labels`] parses them from the whole object instead.
const LABELS_FROM_OBJECT: u8 = 4;

/// One cached object, immutable. Shared as `Arc<Stored>` between the store's indexes, the
/// change subscribers and whoever read it.
///
/// # Guarantees
/// - [`json`](Self::json) is the object as the API server sent it, minus
///   `metadata.managedFields`, as compact JSON with `apiVersion` and `kind` set (list
///   responses omit them for built-in kinds; the store adds them).
/// - The other accessors read the same JSON; they never disagree with it.
pub struct Stored {
    /// The compact JSON (`..json_len`), followed by the unescaped text of any indexed
    /// string that needed JSON escapes (never for names, namespaces, uids and
    /// resourceVersions an API server issues, but handled).
    text: Box<str>,
    json_len: u32,
    namespace: Span,
    name: Span,
    uid: Span,
    resource_version: Span,
    owner_uid: Span,
    /// The `metadata.labels` object, braces included.
    labels: Span,
    generation: i64,
    flags: u8,
}

/// Why an object from the watch was not stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Rejected {
    /// `metadata.name` is missing or empty.
    #[error("the object has no metadata.name")]
    NoName,
    /// The object's body is not a JSON object.
    #[error("the object is not a JSON object")]
    NotAnObject,
    /// Too large to index with 32-bit offsets (etcd refuses objects this big anyway).
    #[error("the object is larger than 4 GiB")]
    TooLarge,
}

impl Stored {
    /// Encodes an object from the watch: strips `metadata.managedFields`, sets `apiVersion`
    /// and `kind` from `resource`, writes compact JSON and locates the indexed fields.
    ///
    /// # Errors
    /// [`Rejected`] when the object has no name or its body is not a JSON object.
    pub(crate) fn encode(mut obj: DynamicObject, resource: &ApiResource) -> Result<Self, Rejected> {
        obj.metadata.managed_fields = None;
        let mut json = Vec::with_capacity(1024);
        json.extend_from_slice(b"{\"apiVersion\":");
        write_json(&mut json, &resource.api_version);
        json.extend_from_slice(b",\"kind\":");
        write_json(&mut json, &resource.kind);
        json.extend_from_slice(b",\"metadata\":");
        let meta_start = json.len();
        write_json(&mut json, &obj.metadata);
        let meta_end = json.len();
        match &obj.data {
            serde_json::Value::Object(fields) => {
                for (key, value) in fields {
                    if matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                        continue;
                    }
                    json.push(b',');
                    write_json(&mut json, key);
                    json.push(b':');
                    write_json(&mut json, value);
                }
            }
            serde_json::Value::Null => {}
            _ => return Err(Rejected::NotAnObject),
        }
        json.push(b'}');
        drop(obj);
        // serde_json writes UTF-8 only.
        let json = String::from_utf8(json).map_err(|_| Rejected::NotAnObject)?;
        Self::index(json, meta_start..meta_end)
    }

    /// Locates the indexed fields in `json`, whose `metadata` object is at `meta`.
    fn index(mut text: String, meta: std::ops::Range<usize>) -> Result<Self, Rejected> {
        let json_len = u32::try_from(text.len()).map_err(|_| Rejected::TooLarge)?;
        let head: MetaHead<'_> =
            serde_json::from_str(&text[meta]).map_err(|_| Rejected::NotAnObject)?;
        let base = text.as_ptr() as usize;
        let at = |field: Option<Text<'_>>| match field {
            None => Located::Absent,
            Some(Text::Borrowed("")) => Located::Absent,
            Some(Text::Borrowed(s)) => Located::At(s.as_ptr() as usize - base, s.len()),
            Some(Text::Owned(s)) if s.is_empty() => Located::Absent,
            Some(Text::Owned(s)) => Located::Spilled(s),
        };
        let owner = head
            .owner_references
            .unwrap_or_default()
            .into_iter()
            .find(|r| r.controller == Some(true))
            .map(|r| r.uid);
        let fields = [
            at(head.namespace),
            at(head.name),
            at(head.uid),
            at(head.resource_version),
            at(owner),
        ];
        let mut flags = 0;
        let labels = match head.labels {
            None | Some(LabelsHead::Empty) => Located::Absent,
            Some(LabelsHead::Range { first, end }) => {
                // Compact JSON: `{"` precedes the first key, `"}` follows the last value.
                let (start, end) = (first - 2 - base, end + 2 - base);
                let bytes = text.as_bytes();
                if bytes.get(start) == Some(&b'{') && bytes.get(end - 1) == Some(&b'}') {
                    Located::At(start, end - start)
                } else {
                    flags |= LABELS_FROM_OBJECT;
                    Located::Absent
                }
            }
            Some(LabelsHead::Escaped) => {
                flags |= LABELS_FROM_OBJECT;
                Located::Absent
            }
        };
        if head.generation.is_some() {
            flags |= HAS_GENERATION;
        }
        if head.deletion_timestamp.is_some() {
            flags |= DELETING;
        }
        let generation = head.generation.unwrap_or_default();
        let mut spans = [Span::default(); 5];
        for (span, field) in spans.iter_mut().zip(fields) {
            *span = field.into_span(&mut text)?;
        }
        let labels = labels.into_span(&mut text)?;
        let [namespace, name, uid, resource_version, owner_uid] = spans;
        if name.is_absent() {
            return Err(Rejected::NoName);
        }
        Ok(Self {
            // A fresh allocation of exactly the text's size, rather than shrinking the
            // encoding buffer in place: shrinking leaves the buffer's tail as a small free
            // chunk beside every long-lived object, and a store replacing objects all day
            // accumulated ~700 B of such holes per object (sustain bench).
            text: Box::from(text.as_str()),
            json_len,
            namespace,
            name,
            uid,
            resource_version,
            owner_uid,
            labels,
            generation,
            flags,
        })
    }

    fn slice(&self, span: Span) -> Option<&str> {
        if span.is_absent() {
            None
        } else {
            self.text.get(span.range())
        }
    }

    /// The object as compact JSON bytes (without `metadata.managedFields`).
    pub fn json(&self) -> &[u8] {
        self.json_str().as_bytes()
    }

    /// The object as compact JSON text (without `metadata.managedFields`).
    pub fn json_str(&self) -> &str {
        self.text.get(..self.json_len as usize).unwrap_or_default()
    }

    /// The object parsed into a JSON value (a fresh allocation each call).
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::from_str(self.json_str())
            .expect("a stored object is JSON that serde_json wrote")
    }

    /// The object deserialized into a type, e.g. a `k8s_openapi` struct.
    ///
    /// # Errors
    /// When the object does not fit `T`.
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.json_str())
    }

    /// `metadata.namespace`; `None` for cluster-scoped objects.
    pub fn namespace(&self) -> Option<&str> {
        self.slice(self.namespace)
    }

    /// `metadata.name`.
    pub fn name(&self) -> &str {
        self.slice(self.name).unwrap_or_default()
    }

    /// `metadata.uid`, if set (the API server always sets it).
    pub fn uid(&self) -> Option<&str> {
        self.slice(self.uid)
    }

    /// `metadata.resourceVersion`, if set (the API server always sets it).
    pub fn resource_version(&self) -> Option<&str> {
        self.slice(self.resource_version)
    }

    /// `metadata.generation`, if set.
    pub fn generation(&self) -> Option<i64> {
        (self.flags & HAS_GENERATION != 0).then_some(self.generation)
    }

    /// `metadata.labels`, parsed from the object on each call.
    pub fn labels(&self) -> BTreeMap<String, String> {
        if self.flags & LABELS_FROM_OBJECT != 0 {
            #[derive(Deserialize)]
            struct Object {
                metadata: Labels,
            }
            #[derive(Deserialize)]
            struct Labels {
                #[serde(default)]
                labels: BTreeMap<String, String>,
            }
            return serde_json::from_str::<Object>(self.json_str())
                .map(|o| o.metadata.labels)
                .unwrap_or_default();
        }
        self.slice(self.labels)
            .and_then(|text| serde_json::from_str(text).ok())
            .unwrap_or_default()
    }

    /// The uid in the `ownerReferences` entry that has `controller: true`, if any.
    pub fn controller_owner_uid(&self) -> Option<&str> {
        self.slice(self.owner_uid)
    }

    /// Whether `metadata.deletionTimestamp` is set.
    pub fn is_deleting(&self) -> bool {
        self.flags & DELETING != 0
    }

    /// The namespace as the indexes key it: empty for cluster-scoped objects.
    pub(crate) fn namespace_key(&self) -> &str {
        self.namespace().unwrap_or_default()
    }

    /// Heap bytes this object holds: the shared allocation and the text.
    pub(crate) fn heap_bytes(&self) -> usize {
        // An `Arc` allocation holds two counters before the value.
        2 * size_of::<usize>() + size_of::<Self>() + self.text.len()
    }
}

impl fmt::Debug for Stored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stored")
            .field("namespace", &self.namespace())
            .field("name", &self.name())
            .field("resource_version", &self.resource_version())
            .field("bytes", &self.json_len)
            .finish_non_exhaustive()
    }
}

/// Compares two resourceVersions the way the host's read-your-writes check needs:
/// numerically when both parse as `u64` (etcd revisions, which every etcd-backed API
/// server returns), otherwise only equality is known.
///
/// Returns whether `have` is at `want` or newer.
pub(crate) fn at_or_after(have: &str, want: &str) -> bool {
    match (have.parse::<u64>(), want.parse::<u64>()) {
        (Ok(have), Ok(want)) => have >= want,
        _ => have == want,
    }
}

/// Shares an encoded object.
pub(crate) fn shared(stored: Stored) -> Arc<Stored> {
    Arc::new(stored)
}

fn write_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    // Writing into a Vec cannot fail, and these values have only string map keys.
    serde_json::to_writer(out, value).expect("serialising to a Vec with string keys cannot fail");
}

/// Where an indexed string is.
enum Located {
    Absent,
    At(usize, usize),
    Spilled(String),
}

impl Located {
    fn into_span(self, text: &mut String) -> Result<Span, Rejected> {
        let (start, len) = match self {
            Located::Absent => return Ok(Span::default()),
            Located::At(start, len) => (start, len),
            Located::Spilled(s) => {
                let start = text.len();
                text.push_str(&s);
                (start, s.len())
            }
        };
        Ok(Span {
            start: u32::try_from(start).map_err(|_| Rejected::TooLarge)?,
            len: u32::try_from(len).map_err(|_| Rejected::TooLarge)?,
        })
    }
}

/// The metadata fields the store indexes, borrowed from the JSON where possible.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MetaHead<'a> {
    #[serde(borrow, default)]
    name: Option<Text<'a>>,
    #[serde(borrow, default)]
    namespace: Option<Text<'a>>,
    #[serde(borrow, default)]
    uid: Option<Text<'a>>,
    #[serde(borrow, default)]
    resource_version: Option<Text<'a>>,
    #[serde(default)]
    generation: Option<i64>,
    #[serde(default)]
    deletion_timestamp: Option<IgnoredAny>,
    #[serde(default)]
    labels: Option<LabelsHead>,
    #[serde(borrow, default)]
    owner_references: Option<Vec<OwnerHead<'a>>>,
}

#[derive(Deserialize)]
struct OwnerHead<'a> {
    #[serde(borrow)]
    uid: Text<'a>,
    #[serde(default)]
    controller: Option<bool>,
}

/// A JSON string: borrowed from the input when it has no escapes.
enum Text<'a> {
    Borrowed(&'a str),
    Owned(String),
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for TextVisitor<'a> {
            type Value = Text<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text::Borrowed(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text::Owned(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text::Owned(v))
            }
        }
        deserializer.deserialize_str(TextVisitor(std::marker::PhantomData))
    }
}

/// Where the labels object is, as addresses: the first key's start and the last value's
/// end, both unescaped strings borrowed from the JSON.
enum LabelsHead {
    Empty,
    Range { first: usize, end: usize },
    Escaped,
}

impl<'de> Deserialize<'de> for LabelsHead {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct LabelsVisitor;
        impl<'de> Visitor<'de> for LabelsVisitor {
            type Value = LabelsHead;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of labels")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut head = LabelsHead::Empty;
                while let Some((key, value)) = map.next_entry::<Text<'de>, Text<'de>>()? {
                    head = match (head, key, value) {
                        (LabelsHead::Escaped, _, _) => LabelsHead::Escaped,
                        (LabelsHead::Empty, Text::Borrowed(k), Text::Borrowed(v)) => {
                            LabelsHead::Range {
                                first: k.as_ptr() as usize,
                                end: v.as_ptr() as usize + v.len(),
                            }
                        }
                        (LabelsHead::Range { first, .. }, Text::Borrowed(_), Text::Borrowed(v)) => {
                            LabelsHead::Range {
                                first,
                                end: v.as_ptr() as usize + v.len(),
                            }
                        }
                        _ => LabelsHead::Escaped,
                    };
                }
                Ok(head)
            }
        }
        deserializer.deserialize_map(LabelsVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::store::testing::cm;

    #[test]
    fn managed_fields_are_stripped_and_everything_else_is_kept() {
        let obj = cm("web")
            .ns("shop")
            .rv(7)
            .label("app", "web")
            .annotation("note", "kept")
            .data("key", "value")
            .managed_fields()
            .build();
        let stored = Stored::encode(obj, &cm("x").resource()).unwrap();
        let value = stored.to_value();
        assert!(value["metadata"].get("managedFields").is_none(), "{value}");
        assert_eq!(value["apiVersion"], "v1");
        assert_eq!(value["kind"], "ConfigMap");
        assert_eq!(value["metadata"]["annotations"]["note"], "kept");
        assert_eq!(value["data"]["key"], "value");
        assert_eq!(stored.namespace(), Some("shop"));
        assert_eq!(stored.name(), "web");
        assert_eq!(stored.resource_version(), Some("7"));
        assert_eq!(stored.uid(), Some("uid-shop-web"));
        assert!(
            !stored.json_str().contains(' '),
            "compact: {}",
            stored.json_str()
        );
    }

    #[test]
    fn indexed_fields_are_read_from_the_json_without_copies() {
        let obj = cm("web")
            .ns("shop")
            .label("app", "web")
            .label("tier", "")
            .owned_by("owner-1")
            .generation(3)
            .deleting()
            .build();
        let stored = Stored::encode(obj, &cm("x").resource()).unwrap();
        assert_eq!(stored.controller_owner_uid(), Some("owner-1"));
        assert_eq!(stored.generation(), Some(3));
        assert!(stored.is_deleting());
        let labels = stored.labels();
        assert_eq!(labels.get("app").map(String::as_str), Some("web"));
        assert_eq!(labels.get("tier").map(String::as_str), Some(""));
        assert_eq!(stored.text.len(), stored.json().len(), "nothing spilled");
    }

    #[test]
    fn strings_that_need_escapes_are_still_indexed() {
        let obj = cm("we\"b")
            .ns("shop")
            .uid("a\\b")
            .label("quote", "x")
            .annotation("n", "\"")
            .build();
        let mut obj = obj;
        obj.metadata
            .labels
            .get_or_insert_default()
            .insert("k\"ey".into(), "v".into());
        let stored = Stored::encode(obj, &cm("x").resource()).unwrap();
        assert_eq!(stored.name(), "we\"b");
        assert_eq!(stored.uid(), Some("a\\b"));
        assert_eq!(stored.labels().get("k\"ey").map(String::as_str), Some("v"));
        assert_eq!(stored.to_value()["metadata"]["name"], "we\"b");
    }

    #[test]
    fn only_the_controller_owner_reference_is_indexed() {
        let obj = cm("web").ns("shop").owner("plain", false).build();
        let stored = Stored::encode(obj, &cm("x").resource()).unwrap();
        assert_eq!(stored.controller_owner_uid(), None);
    }

    #[test]
    fn an_object_without_a_name_is_rejected() {
        let obj = cm("").ns("shop").build();
        let err = Stored::encode(obj, &cm("x").resource()).unwrap_err();
        assert_eq!(err, Rejected::NoName);
    }

    #[test]
    fn resource_versions_compare_numerically_only_when_both_are_numbers() {
        assert!(at_or_after("10", "9"));
        assert!(!at_or_after("9", "10"));
        assert!(at_or_after("abc", "abc"));
        assert!(!at_or_after("abd", "abc"));
        assert!(!at_or_after("10", "x"));
    }
}
