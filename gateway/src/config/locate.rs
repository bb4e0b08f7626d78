//! Maps between key paths (`cluster.public_addresses[1].address`) and places in the TOML text,
//! so every config error can name a line and column and every hint can know which key it is about.

use std::fmt;
use std::ops::Range;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    /// A table key.
    Key(String),
    /// An array index.
    Index(usize),
}

/// A key path such as `smb.share[0].path`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPath(pub Vec<Seg>);

impl KeyPath {
    /// Parses the dotted form used in this crate's code (`smb.share[0].path`).
    pub fn parse(s: &str) -> Self {
        let mut segs = Vec::new();
        for part in s.split('.') {
            let (key, mut rest) = part.split_once('[').map_or((part, ""), |(k, r)| (k, r));
            segs.push(Seg::Key(key.to_string()));
            while let Some((idx, after)) = rest.split_once(']') {
                if let Ok(i) = idx.parse() {
                    segs.push(Seg::Index(i));
                }
                rest = after.strip_prefix('[').unwrap_or(after);
            }
        }
        Self(segs)
    }

    /// The path with array indexes removed (`smb.share.path`), for matching hints.
    pub fn shape(&self) -> String {
        let keys: Vec<&str> = self
            .0
            .iter()
            .filter_map(|s| match s {
                Seg::Key(k) => Some(k.as_str()),
                Seg::Index(_) => None,
            })
            .collect();
        keys.join(".")
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            match s {
                Seg::Key(k) if i == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// The parsed document with spans, for locating keys.
pub struct SpannedDoc<'i> {
    root: Spanned<DeTable<'i>>,
}

impl<'i> SpannedDoc<'i> {
    /// Parses `text`; `None` when it is not TOML (the deserialiser reports that itself).
    pub fn parse(text: &'i str) -> Option<Self> {
        DeTable::parse(text).ok().map(|root| Self { root })
    }

    /// Span of the value at `path`, or of the deepest existing ancestor's key when part of
    /// the path is missing (a required key absent from its table).
    pub fn span_of(&self, path: &KeyPath) -> Range<usize> {
        let mut key_span = self.root.span();
        let mut table: Option<&DeTable<'i>> = Some(self.root.get_ref());
        let mut value: Option<&Spanned<DeValue<'i>>> = None;
        for seg in &path.0 {
            let next = match (seg, table, value) {
                (Seg::Key(k), Some(t), _) => {
                    t.iter().find(|(key, _)| key.get_ref() == k).map(|(key, v)| (key.span(), v))
                }
                (Seg::Key(k), None, Some(v)) => v.get_ref().get(k.as_str()).map(|c| (c.span(), c)),
                (Seg::Index(i), _, Some(v)) => v.get_ref().get(*i).map(|c| (c.span(), c)),
                _ => None,
            };
            let Some((k, v)) = next else { return key_span };
            key_span = k;
            table = None;
            value = Some(v);
        }
        value.map_or(key_span, |v| v.span())
    }

    /// The key path of the innermost value whose text contains `offset`.
    pub fn path_at(&self, offset: usize) -> KeyPath {
        let mut path = KeyPath::default();
        descend_table(self.root.get_ref(), offset, &mut path);
        path
    }
}

fn descend_table(t: &DeTable<'_>, offset: usize, path: &mut KeyPath) {
    for (k, v) in t.iter() {
        if k.span().contains(&offset) {
            path.0.push(Seg::Key(k.get_ref().to_string()));
            return;
        }
        if covers(v, offset) {
            path.0.push(Seg::Key(k.get_ref().to_string()));
            descend_value(v.get_ref(), offset, path);
            return;
        }
    }
}

fn descend_value(v: &DeValue<'_>, offset: usize, path: &mut KeyPath) {
    match v {
        DeValue::Table(t) => descend_table(t, offset, path),
        DeValue::Array(a) => {
            if let Some((i, item)) = a.iter().enumerate().find(|(_, item)| covers(item, offset)) {
                path.0.push(Seg::Index(i));
                descend_value(item.get_ref(), offset, path);
            }
        }
        _ => {}
    }
}

/// Does the value (or, for tables and arrays of tables whose span is only their header, any
/// of their children) contain `offset`?
fn covers(v: &Spanned<DeValue<'_>>, offset: usize) -> bool {
    if v.span().contains(&offset) {
        return true;
    }
    match v.get_ref() {
        DeValue::Table(t) => t.iter().any(|(k, c)| k.span().contains(&offset) || covers(c, offset)),
        DeValue::Array(a) => a.iter().any(|c| covers(c, offset)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "[volume]\nname = \"smb\"\n\n[[smb.share]]\nname = \"pub\"\npath = \"../x\"\n";

    #[test]
    fn finds_the_value_of_a_nested_array_key() {
        let doc = SpannedDoc::parse(DOC).unwrap();
        let span = doc.span_of(&KeyPath::parse("smb.share[0].path"));
        assert_eq!(&DOC[span], "\"../x\"");
    }

    #[test]
    fn maps_an_offset_back_to_its_key_path() {
        let doc = SpannedDoc::parse(DOC).unwrap();
        let off = DOC.find("../x").unwrap();
        assert_eq!(doc.path_at(off).to_string(), "smb.share[0].path");
        assert_eq!(doc.path_at(off).shape(), "smb.share.path");
    }

    #[test]
    fn missing_key_points_at_its_table() {
        let doc = SpannedDoc::parse(DOC).unwrap();
        let span = doc.span_of(&KeyPath::parse("volume.backend"));
        assert!(DOC[span].starts_with("volume"));
    }

    #[test]
    fn parses_and_prints_paths() {
        assert_eq!(KeyPath::parse("a.b[2].c").to_string(), "a.b[2].c");
    }
}
