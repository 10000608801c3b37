use super::*;
use crate::limits::MAX_CHUNK_SPAN;
use crate::tree::NodeId;
use base64::Engine as _;
use serde_json::json;

fn parse_entries(entries: serde_json::Value) -> Result<LayerTree, Error> {
    let doc = json!({ "version": 1, "entries": entries, "unknownKey": [1, 2] });
    let json = serde_json::to_vec(&doc).unwrap();
    let tree = parse(&json, 1 << 20, Compression::Gzip, Limits::default());
    // The streaming parser agrees with the in-memory one.
    let streamed = parse_reader(&json[..], 1 << 20, Compression::Gzip, Limits::default());
    match (&tree, &streamed) {
        (Ok(a), Ok(b)) => assert_eq!(a.walk(), b.walk()),
        (Err(a), Err(b)) => assert_eq!(
            a.to_string().split(" at line ").next(),
            b.to_string().split(" at line ").next()
        ),
        _ => panic!("parse and parse_reader disagree: {tree:?} vs {streamed:?}"),
    }
    tree
}

fn reason(entries: serde_json::Value) -> String {
    parse_entries(entries)
        .expect_err("must be refused")
        .to_string()
}

const D: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

#[test]
fn hostile_numbers_are_refused_with_a_reason() {
    for (entries, needle) in [
        (
            json!([{"name": "a", "type": "reg", "size": 5, "offset": -3}]),
            "not positive",
        ),
        (
            json!([{"name": "a", "type": "reg", "size": 5, "offset": 1u64 << 40}]),
            "does not lie before",
        ),
        (json!([{"name": "a", "type": "reg", "size": -5}]), "size -5"),
        (
            json!([{"name": "a", "type": "reg", "size": 100, "offset": 10, "chunkSize": 10}]),
            "cover 10 bytes",
        ),
        (
            json!([{"name": "a", "type": "reg", "size": 20, "offset": 10, "chunkSize": 10},
                   {"name": "a", "type": "chunk", "offset": 20, "chunkOffset": 5, "chunkSize": 15}]),
            "gap or overlap",
        ),
        (
            json!([{"name": "a", "type": "reg", "size": 20, "offset": 10, "chunkSize": 10},
                   {"name": "a", "type": "chunk", "offset": 20, "chunkOffset": 30}]),
            "outside the file",
        ),
        (
            json!([{"name": "a", "type": "chunk", "offset": 20, "chunkOffset": 5}]),
            "before any file",
        ),
        (
            json!([{"name": "a", "type": "reg", "size": 3}]),
            "no offset",
        ),
        (
            json!([{"name": "a", "type": "char", "devMajor": 1u64 << 40}]),
            "out of range",
        ),
        (json!([{"name": "a", "type": "reg", "uid": -1}]), "uid -1"),
        (json!([{"name": "a", "type": "socket"}]), "unknown type"),
        (
            json!([{"name": "./", "type": "reg"}]),
            "root must be a directory",
        ),
        (
            json!([{"name": "x", "type": "dir", "xattrs": {"user.a": "!!"}}]),
            "xattr user.a",
        ),
        (
            json!([{"name": "a", "type": "reg", "digest": "md5:00"}]),
            "digest",
        ),
        (
            json!([{"name": "a", "type": "hardlink", "linkName": "b"},
                {"name": "b", "type": "hardlink", "linkName": "a"}]),
            "cycle",
        ),
        (
            json!([{"name": "d", "type": "dir"}, {"name": "l", "type": "hardlink", "linkName": "d"}]),
            "directory",
        ),
        (
            json!([{"name": "f", "type": "reg"}, {"name": "f/child", "type": "reg"}]),
            "not a directory",
        ),
        (
            json!([{"name": "d", "type": "dir", "size": 4}]),
            "only regular files",
        ),
    ] {
        let got = reason(entries.clone());
        assert!(got.contains(needle), "{entries}: {got}");
    }
}

#[test]
fn absurd_counts_hit_the_limit_not_memory() {
    let entries: Vec<_> = (0..50)
        .map(|i| json!({"name": format!("f{i}"), "type": "reg"}))
        .collect();
    let doc = serde_json::to_vec(&json!({ "entries": entries })).unwrap();
    let err = parse(&doc, 1 << 20, Compression::Gzip, Limits { max_entries: 10 }).unwrap_err();
    assert!(matches!(err, Error::Limit(_)), "{err}");
}

#[test]
fn structure_follows_the_reference_rules() {
    let tree = parse_entries(json!([
        {"name": "./", "type": "dir", "mode": 0o40700, "uid": 5},
        {"name": "d", "type": "dir", "mode": 0o700},
        {"name": "d/f", "type": "reg", "size": 4, "offset": 10, "digest": D, "chunkDigest": D, "userName": "u", "uid": 7},
        {"name": "d/", "type": "dir", "mode": 0o755},
        {"name": "../../../x/y", "type": "symlink", "linkName": "../../etc"},
        {"name": "h1", "type": "hardlink", "linkName": "./h2"},
        {"name": "h2", "type": "hardlink", "linkName": "d/f"},
        {"name": "g", "type": "reg", "uid": 7},
        {"name": "bar/../bar///////foo", "type": "fifo"},
    ]))
    .unwrap();
    let root = tree.node(NodeId::ROOT);
    assert_eq!((root.mode(), root.uid()), (0o700, 5));
    // The later `d/` wins and keeps the children added under the earlier one.
    let d = tree.lookup_path("d").unwrap();
    assert_eq!(tree.node(d).mode(), 0o755);
    let f = tree.lookup_path("d/f").unwrap();
    assert_eq!(tree.lookup_path("h1"), Some(f));
    assert_eq!(tree.lookup_path("h2"), Some(f));
    assert_eq!(tree.node(f).nlink(), 3);
    // Names: cleaned into the root; symlink targets kept as written.
    let y = tree.lookup_path("x/y").unwrap();
    assert_eq!(tree.link_target(y), Some("../../etc"));
    assert_eq!(tree.node(tree.lookup_path("x").unwrap()).mode(), 0o755);
    assert!(tree.lookup_path("bar/foo").is_some());
    // Paths back from nodes: a hardlinked file by its first name.
    assert_eq!(tree.path_of(y), "x/y");
    assert_eq!(tree.path_of(f), "d/f");
    assert_eq!(tree.path_of(NodeId::ROOT), "");
    // User names back-filled by uid.
    assert_eq!(tree.uname(tree.lookup_path("g").unwrap()), Some("u"));
    // Link counts: root has d, x, bar as subdirectories.
    assert_eq!(tree.node(NodeId::ROOT).nlink(), 2 + 3);
    assert_eq!(tree.node(d).nlink(), 2);
    // Chunk lookup edges.
    assert_eq!(tree.chunk_index_at(f, 0), Some(0));
    assert_eq!(tree.chunk_index_at(f, 3), Some(0));
    assert_eq!(tree.chunk_index_at(f, 4), None);
    assert_eq!(tree.chunks(f)[0].next_offset, 1 << 20);
}

#[test]
fn trailing_bytes_after_the_json_are_refused() {
    for p in [parse, |j: &[u8], d, c, l| parse_reader(j, d, c, l)] {
        assert!(
            p(
                b"{\"entries\":[]} x",
                10,
                Compression::Gzip,
                Limits::default()
            )
            .is_err()
        );
        assert!(
            p(
                b"{\"entries\":[]}\n\t ",
                10,
                Compression::Gzip,
                Limits::default()
            )
            .is_ok()
        );
    }
}

#[test]
fn impossible_inner_offsets_are_refused_at_validation() {
    // #14: 1<<46 made the inflate scratch buffer ask for 64 TiB;
    // i64::MAX overflowed its capacity. Both are refused here, as is
    // an offset the member's compressed bytes could not inflate to.
    for (inner, size, next, needle) in [
        (
            1i64 << 46,
            10i64,
            20i64,
            "innerOffset 70368744177664 exceeds",
        ),
        (i64::MAX, 10, 20, "exceeds"),
        (1 << 20, 10, 20, "inflates to at most"),
        (0, 1 << 30, 20, "inflates to at most"),
    ] {
        let got = reason(json!([
            {"name": "a", "type": "reg", "size": 1, "offset": 10, "digest": D},
            {"name": "b", "type": "reg", "size": size, "offset": 10, "innerOffset": inner},
            {"name": "c", "type": "reg", "size": 1, "offset": next},
        ]));
        assert!(got.contains(needle), "{inner}: {got}");
        assert!(got.contains("\"b\""), "names the entry: {got}");
    }
    // A packed member that could hold it is fine: 10 compressed bytes
    // of gzip stand for up to 10 320.
    parse_entries(json!([
        {"name": "a", "type": "reg", "size": 1, "offset": 10},
        {"name": "b", "type": "reg", "size": 100, "offset": 10, "innerOffset": 10_000},
        {"name": "c", "type": "reg", "size": 1, "offset": 20},
    ]))
    .unwrap();
}

#[test]
fn chunk_spans_are_bounded() {
    let end = 2 * MAX_CHUNK_SPAN;
    let json = |second: u64| {
        serde_json::to_vec(&json!({"entries": [
            {"name": "a", "type": "reg", "size": 1, "offset": 10},
            {"name": "b", "type": "reg", "size": 1, "offset": second},
        ]}))
        .unwrap()
    };
    // a spans [10, 10 + MAX_CHUNK_SPAN + 1): one byte too many.
    let err = parse(
        &json(11 + MAX_CHUNK_SPAN),
        end,
        Compression::Gzip,
        Limits::default(),
    )
    .unwrap_err();
    assert!(
        matches!(&err, Error::BadEntry { name, reason } if name == "a" && reason.contains("spans")),
        "{err}"
    );
    // The last chunk's span ends at the data end.
    let err = parse(&json(20), end, Compression::Zstd, Limits::default()).unwrap_err();
    assert!(
        matches!(&err, Error::BadEntry { name, .. } if name == "b"),
        "{err}"
    );
    parse(
        &json(10 + MAX_CHUNK_SPAN),
        20 + MAX_CHUNK_SPAN,
        Compression::Gzip,
        Limits::default(),
    )
    .unwrap();
}

#[test]
fn overlay_xattrs_never_reach_the_tree() {
    let b64 = |v: &str| base64::engine::general_purpose::STANDARD.encode(v);
    let tree = parse_entries(json!([
        {"name": "d", "type": "dir", "xattrs": {
            "trusted.overlay.opaque": b64("y"),
            "trusted.overlay.redirect": b64("/etc"),
            "trusted.overlay.metacopy": "",
            "trusted.overlay.origin": b64("x"),
            "user.overlay.redirect": b64("/etc"),
            "user.keep": b64("1"),
            "security.capability": b64("c"),
            "user.bad\u{0}name": b64("z"),
            "": b64("z"),
        }},
    ]))
    .unwrap();
    let d = tree.lookup_path("d").unwrap();
    let names: Vec<&str> = tree.xattrs(d).map(|(k, _)| k).collect();
    assert_eq!(names, ["security.capability", "user.keep"]);
}

#[test]
fn bad_names_are_dropped_not_listed() {
    let tree = parse_entries(json!([
        {"name": "ok", "type": "reg", "size": 2, "offset": 10, "chunkSize": 1},
        {"name": "ok", "type": "chunk", "offset": 20, "chunkOffset": 1},
        {"name": "nul\u{0}name", "type": "reg", "size": 4, "offset": 30, "chunkSize": 2},
        // These chunks belonged to the dropped file, not to `ok`.
        {"name": "nul\u{0}name", "type": "chunk", "offset": 40, "chunkOffset": 2},
        {"name": "d/.wh..", "type": "reg"},
        {"name": "d/.wh...", "type": "reg"},
        {"name": "d/.wh.", "type": "reg"},
        {"name": ".wh../under", "type": "reg"},
        {"name": "dir\u{0}/child", "type": "dir"},
        {"name": "link", "type": "symlink", "linkName": "a\u{0}b"},
        {"name": "d/.wh.gone", "type": "reg"},
    ]))
    .unwrap();
    let root: Vec<&str> = tree.children(NodeId::ROOT).map(|(n, _)| n).collect();
    assert_eq!(root, ["d", "ok"]);
    let ok = tree.lookup_path("ok").unwrap();
    assert_eq!(tree.chunks(ok).len(), 2);
    let d = tree.lookup_path("d").unwrap();
    let view: Vec<(&str, bool)> = crate::whiteout::entries_from(&tree, d, 0)
        .map(|(_, e)| (e.name, e.whiteout))
        .collect();
    assert_eq!(view, [("gone", true)]);
    assert!(crate::whiteout::lookup(&tree, d, ".").is_none());
    assert!(crate::whiteout::lookup(&tree, d, "..").is_none());
}

#[test]
fn mtimes_round_trip() {
    for t in [1, 1_700_000_000, -86_400, 253_402_300_799] {
        assert_eq!(parse_mtime(format_mtime(t).as_deref()), t);
    }
    assert_eq!(format_mtime(0), None);
    assert_eq!(parse_mtime(Some("not a time")), 0);
    assert_eq!(
        parse_mtime(Some("2024-01-02T03:04:05.5+01:00")),
        1_704_161_045
    );
}
