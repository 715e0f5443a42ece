//! A second, schema-free reading of a device file that remembers where
//! every value sits, so that errors found after deserialization (unknown
//! keys, semantic checks) can name a line and column.

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use std::fmt;
use std::ops::Range;

/// One value of the document, with its byte span when toml knows it.
/// Tables that only exist implicitly (`policy` in `[[policy.rule]]`) have none.
#[derive(Debug)]
pub(crate) struct Node {
    pub span: Option<Range<usize>>,
    pub kind: Kind,
}

#[derive(Debug)]
pub(crate) enum Kind {
    Leaf,
    Table(Vec<(String, Node)>),
    Array(Vec<Node>),
}

/// One step of a path into the document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

/// `interfaces[1].addresses[0]`, as users read a location.
pub(crate) struct PathDisplay<'p, 'a>(pub &'p [Seg<'a>]);

impl fmt::Display for PathDisplay<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

// toml hands out spans through a private protocol: a struct with this name
// is answered with a map of start, end and value (this is how
// `toml::Spanned` works). Speaking it directly, rather than through
// `toml::Spanned`, lets a value without a span (an implicit table) come
// through as a plain table instead of failing the whole reading. If toml
// ever changes these names, values simply arrive without spans and errors
// fall back to the nearest located parent; the tests would show it.
const SPANNED_NAME: &str = "$__serde_spanned_private_Spanned";
const SPANNED_START: &str = "$__serde_spanned_private_start";
const SPANNED_END: &str = "$__serde_spanned_private_end";
const SPANNED_VALUE: &str = "$__serde_spanned_private_value";
const SPANNED_FIELDS: &[&str] = &[SPANNED_START, SPANNED_END, SPANNED_VALUE];

/// Reads `text` into a tree of located values. Fails on the same syntax
/// errors as the typed reading, and on values the tree cannot represent
/// (datetimes); callers then go without locations.
pub(crate) fn read(text: &str) -> Result<Node, toml::de::Error> {
    let kind: Kind = toml::from_str(text)?;
    Ok(Node {
        span: Some(0..text.len()),
        kind,
    })
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_struct(SPANNED_NAME, SPANNED_FIELDS, NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any TOML value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let Some(first) = map.next_key::<String>()? else {
            return Ok(Node {
                span: None,
                kind: Kind::Table(Vec::new()),
            });
        };
        if first != SPANNED_START {
            // An implicit table: no span, and `first` is its first real key.
            let value: Node = map.next_value()?;
            return Ok(Node {
                span: None,
                kind: Kind::Table(rest_of_table(first, value, map)?),
            });
        }
        let mut start: usize = map.next_value()?;
        let mut end = start;
        let mut kind = Kind::Leaf;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                SPANNED_START => start = map.next_value()?,
                SPANNED_END => end = map.next_value()?,
                _ => kind = map.next_value::<KindSeed>()?.0,
            }
        }
        Ok(Node {
            span: Some(start..end),
            kind,
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Node, A::Error> {
        Ok(Node {
            span: None,
            kind: KindVisitor.visit_seq(seq)?,
        })
    }

    // Any scalar that arrives without a span.
    fn visit_bool<E>(self, _: bool) -> Result<Node, E> {
        Ok(leaf())
    }
    fn visit_i64<E>(self, _: i64) -> Result<Node, E> {
        Ok(leaf())
    }
    fn visit_u64<E>(self, _: u64) -> Result<Node, E> {
        Ok(leaf())
    }
    fn visit_f64<E>(self, _: f64) -> Result<Node, E> {
        Ok(leaf())
    }
    fn visit_str<E>(self, _: &str) -> Result<Node, E> {
        Ok(leaf())
    }
}

fn leaf() -> Node {
    Node {
        span: None,
        kind: Kind::Leaf,
    }
}

fn rest_of_table<'de, A: MapAccess<'de>>(
    first: String,
    value: Node,
    mut map: A,
) -> Result<Vec<(String, Node)>, A::Error> {
    let mut entries = vec![(first, value)];
    while let Some(key) = map.next_key::<String>()? {
        entries.push((key, map.next_value()?));
    }
    Ok(entries)
}

/// The unlocated content of a value (inside the spanned wrapper).
struct KindSeed(Kind);

impl<'de> Deserialize<'de> for KindSeed {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(KindVisitor).map(KindSeed)
    }
}

impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(KindVisitor)
    }
}

struct KindVisitor;

impl<'de> Visitor<'de> for KindVisitor {
    type Value = Kind;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any TOML value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Kind, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            entries.push((key, map.next_value()?));
        }
        // toml passes a datetime as a one-key map with a private key; it is
        // a single value, not a table the user wrote.
        if entries.len() == 1 && entries[0].0.starts_with("$__toml_private") {
            return Ok(Kind::Leaf);
        }
        Ok(Kind::Table(entries))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Kind, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Kind::Array(items))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Kind, E> {
        Ok(Kind::Leaf)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Kind, E> {
        Ok(Kind::Leaf)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Kind, E> {
        Ok(Kind::Leaf)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Kind, E> {
        Ok(Kind::Leaf)
    }
    fn visit_str<E>(self, _: &str) -> Result<Kind, E> {
        Ok(Kind::Leaf)
    }
}

impl Node {
    /// This node's span, or its first located descendant's.
    pub fn any_span(&self) -> Option<Range<usize>> {
        if let Some(span) = &self.span {
            return Some(span.clone());
        }
        match &self.kind {
            Kind::Leaf => None,
            Kind::Table(entries) => entries.iter().find_map(|(_, n)| n.any_span()),
            Kind::Array(items) => items.iter().find_map(Node::any_span),
        }
    }

    pub fn child(&self, seg: Seg<'_>) -> Option<&Node> {
        match (&self.kind, seg) {
            (Kind::Table(entries), Seg::Key(key)) => {
                entries.iter().find(|(k, _)| k == key).map(|(_, n)| n)
            }
            (Kind::Array(items), Seg::Index(i)) => items.get(i),
            _ => None,
        }
    }

    /// Where `path` is, or failing that its nearest located ancestor.
    pub fn locate(&self, path: &[Seg<'_>]) -> Option<Range<usize>> {
        let mut node = self;
        let mut best = self.any_span();
        for seg in path {
            match node.child(*seg) {
                Some(next) => {
                    node = next;
                    if let Some(span) = node.any_span() {
                        best = Some(span);
                    }
                }
                None => break,
            }
        }
        best
    }

    /// The path of the innermost value whose span contains `offset`.
    pub fn path_at(&self, offset: usize) -> Vec<Seg<'_>> {
        let mut path = Vec::new();
        let mut node = self;
        'descend: loop {
            match &node.kind {
                Kind::Leaf => break,
                Kind::Table(entries) => {
                    for (key, child) in entries {
                        if child.covers(offset) {
                            path.push(Seg::Key(key.as_str()));
                            node = child;
                            continue 'descend;
                        }
                    }
                    break;
                }
                Kind::Array(items) => {
                    for (i, child) in items.iter().enumerate() {
                        if child.covers(offset) {
                            path.push(Seg::Index(i));
                            node = child;
                            continue 'descend;
                        }
                    }
                    break;
                }
            }
        }
        path
    }

    /// Whether `offset` falls inside this value (implicit tables cover
    /// whatever their children cover).
    fn covers(&self, offset: usize) -> bool {
        match &self.span {
            Some(span) => span.contains(&offset) || (span.is_empty() && span.start == offset),
            None => match &self.kind {
                Kind::Leaf => false,
                Kind::Table(entries) => entries.iter().any(|(_, n)| n.covers(offset)),
                Kind::Array(items) => items.iter().any(|n| n.covers(offset)),
            },
        }
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}
