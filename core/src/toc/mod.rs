//! `stargz.index.json`: the schema (shared by reader and writer) and the
//! streaming parser that builds a [`LayerTree`] without holding the entry
//! list in memory.

//!
//! Layout: this file holds the schema and the entry points; `stream` (the
//! serde walk over the document), `build` (each entry checked and
//! appended), `geometry` (chunk spans and tiling, once all are in) and
//! `link` (names into directories, hardlinks, link counts).

mod build;
mod geometry;
mod link;
mod stream;

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::de::DeserializeSeed;
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::footer::Compression;
use crate::limits::MAX_TOC_ENTRIES;
use crate::tree::LayerTree;
use build::Builder;
use stream::DocSeed;

/// The TOC's file name inside its tar member.
pub const TOC_NAME: &str = "stargz.index.json";

/// Limits that keep a hostile TOC from costing more than it should.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most entries (chunks included) one TOC may have.
    pub max_entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_entries: MAX_TOC_ENTRIES,
        }
    }
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

fn is_none_or_empty(v: &Option<Cow<'_, str>>) -> bool {
    v.as_deref().is_none_or(str::is_empty)
}

/// One TOC entry, field for field as the reference writes it (same order,
/// same omissions). Unknown keys are accepted and ignored.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TocEntry<'a> {
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: i64,
    #[serde(
        default,
        borrow,
        rename = "modtime",
        skip_serializing_if = "is_none_or_empty"
    )]
    pub mod_time: Option<Cow<'a, str>>,
    #[serde(
        default,
        borrow,
        rename = "linkName",
        skip_serializing_if = "is_none_or_empty"
    )]
    pub link_name: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mode: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub uid: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub gid: i64,
    #[serde(
        default,
        borrow,
        rename = "userName",
        skip_serializing_if = "is_none_or_empty"
    )]
    pub user_name: Option<Cow<'a, str>>,
    #[serde(
        default,
        borrow,
        rename = "groupName",
        skip_serializing_if = "is_none_or_empty"
    )]
    pub group_name: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub offset: i64,
    #[serde(default, rename = "innerOffset", skip_serializing_if = "is_zero")]
    pub inner_offset: i64,
    #[serde(default, rename = "devMajor", skip_serializing_if = "is_zero")]
    pub dev_major: i64,
    #[serde(default, rename = "devMinor", skip_serializing_if = "is_zero")]
    pub dev_minor: i64,
    /// Values are standard padded base64, as Go encodes `[]byte`.
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub xattrs: Option<BTreeMap<Cow<'a, str>, Cow<'a, str>>>,
    #[serde(default, borrow, skip_serializing_if = "is_none_or_empty")]
    pub digest: Option<Cow<'a, str>>,
    #[serde(default, rename = "chunkOffset", skip_serializing_if = "is_zero")]
    pub chunk_offset: i64,
    #[serde(default, rename = "chunkSize", skip_serializing_if = "is_zero")]
    pub chunk_size: i64,
    #[serde(
        default,
        borrow,
        rename = "chunkDigest",
        skip_serializing_if = "is_none_or_empty"
    )]
    pub chunk_digest: Option<Cow<'a, str>>,
}

/// The TOC document, for writing.
#[derive(Debug, Serialize)]
pub struct TocDocument<'a> {
    pub version: i32,
    pub entries: Vec<TocEntry<'a>>,
}

impl TocDocument<'_> {
    /// The JSON the reference writer emits: indented with one tab per
    /// level, no trailing newline.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let fmt = serde_json::ser::PrettyFormatter::with_indent(b"\t");
        let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
        self.serialize(&mut ser)
            .expect("serialising to a Vec cannot fail");
        out
    }
}

/// Parses TOC JSON held in memory into a tree. `data_end` is where the
/// blob's payload members end (the TOC's own offset): every chunk must lie
/// before it. `compression` is the payload's, which bounds how much a
/// chunk's compressed span can inflate to.
pub fn parse(
    json: &[u8],
    data_end: u64,
    compression: Compression,
    limits: Limits,
) -> Result<LayerTree, Error> {
    parse_with(
        serde_json::Deserializer::from_slice(json),
        data_end,
        compression,
        limits,
    )
}

/// Parses TOC JSON as it is read: entries are visited one at a time and
/// nothing holds the document, so memory follows the entries, not the
/// bytes (whitespace, ignored keys). Wrap slow readers in a `BufReader`.
pub fn parse_reader<R: std::io::Read>(
    json: R,
    data_end: u64,
    compression: Compression,
    limits: Limits,
) -> Result<LayerTree, Error> {
    parse_with(
        serde_json::Deserializer::from_reader(json),
        data_end,
        compression,
        limits,
    )
}

fn parse_with<'de, R: serde_json::de::Read<'de>>(
    mut de: serde_json::Deserializer<R>,
    data_end: u64,
    compression: Compression,
    limits: Limits,
) -> Result<LayerTree, Error> {
    let mut builder = Builder::new(limits, compression);
    let parsed = DocSeed(&mut builder)
        .deserialize(&mut de)
        .and_then(|()| de.end());
    if let Some(e) = builder.error.take() {
        return Err(e);
    }
    parsed.map_err(|e| Error::BadToc(format!("JSON: {e}")))?;
    builder.finish(data_end)
}

/// Prefixes of the xattrs overlayfs interprets on its layers
/// (`trusted.` normally, `user.` with the `userxattr` mount option):
/// opaque, redirect, metacopy, origin, ... A layer must not carry them to
/// the mount; the opaque-directory meaning comes from `.wh..wh..opq`
/// markers instead (see [`crate::whiteout`]).
pub const OVERLAY_XATTR_PREFIXES: [&str; 2] = ["trusted.overlay.", "user.overlay."];

/// Whether `name` is an overlayfs control xattr.
pub fn is_overlay_xattr(name: &str) -> bool {
    OVERLAY_XATTR_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// RFC 3339 to seconds; an absent or unparsable time is 0, as the
/// reference ignores the parse error.
fn parse_mtime(s: Option<&str>) -> i64 {
    s.and_then(|s| {
        time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
    })
    .map_or(0, |t| t.unix_timestamp())
}

/// Seconds to the TOC's RFC 3339 form (UTC, whole seconds); `None` for 0,
/// which the writer omits.
pub fn format_mtime(secs: i64) -> Option<String> {
    if secs == 0 {
        return None;
    }
    let t = time::OffsetDateTime::from_unix_timestamp(secs).ok()?;
    let f = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    t.format(&f).ok()
}

#[cfg(test)]
mod tests;
