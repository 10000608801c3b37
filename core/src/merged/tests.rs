use super::*;
use crate::layer::Compression;
use crate::toc::Limits;
use serde_json::json;

const D: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

fn tree(entries: serde_json::Value) -> LayerTree {
    let doc = json!({ "version": 1, "entries": entries });
    let json = serde_json::to_vec(&doc).unwrap();
    crate::toc::parse(&json, 1 << 20, Compression::Gzip, Limits::default()).unwrap()
}

/// A one-byte file; each at its own blob offset, as a real layer has them.
fn file(name: &str) -> serde_json::Value {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let offset = NEXT.fetch_add(1, Ordering::Relaxed) * 100;
    json!({"name": name, "type": "reg", "size": 1, "offset": offset, "digest": D, "chunkDigest": D})
}

/// A Debian-like base (merged /usr, /lib64 -> usr/lib64 style links),
/// and an upper layer adding a program, replacing a library and
/// deleting another.
fn stack() -> (LayerTree, LayerTree) {
    let base = tree(json!([
        {"name": "lib", "type": "symlink", "linkName": "usr/lib"},
        {"name": "lib64", "type": "symlink", "linkName": "usr/lib64"},
        {"name": "usr/lib/x86_64-linux-gnu/", "type": "dir"},
        file("usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"),
        file("usr/lib/x86_64-linux-gnu/libc.so.6"),
        file("usr/lib/x86_64-linux-gnu/libz.so.1.2.13"),
        {"name": "usr/lib/x86_64-linux-gnu/libz.so.1", "type": "symlink", "linkName": "libz.so.1.2.13"},
        file("usr/lib/x86_64-linux-gnu/libgone.so.1"),
        {"name": "usr/lib64/ld-linux-x86-64.so.2", "type": "symlink", "linkName": "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"},
        file("opt/old/a"),
        {"name": "loop", "type": "symlink", "linkName": "loop"},
    ]));
    let upper = tree(json!([
        file("usr/bin/prog"),
        file("usr/lib/x86_64-linux-gnu/libc.so.6"),
        {"name": "usr/lib/x86_64-linux-gnu/.wh.libgone.so.1", "type": "reg", "size": 0},
        {"name": "opt/old/.wh..wh..opq", "type": "reg", "size": 0},
        file("opt/old/b"),
    ]));
    (base, upper)
}

#[test]
fn symlinks_across_layers_and_the_upper_copy_wins() {
    let (base, upper) = stack();
    let layers = [&upper, &base];
    let view = MergedView::new(&layers);
    let (l, n) = view.resolve_file("/lib64/ld-linux-x86-64.so.2").unwrap();
    assert_eq!(l, 1);
    assert_eq!(
        base.path_of(n),
        "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
    );
    let (l, _) = view
        .resolve_file("/lib/x86_64-linux-gnu/libc.so.6")
        .unwrap();
    assert_eq!(l, 0, "the upper layer's libc");
    let (l, n) = view
        .resolve_file("/usr/lib/x86_64-linux-gnu/libz.so.1")
        .unwrap();
    assert_eq!(
        (l, base.path_of(n).as_str()),
        (1, "usr/lib/x86_64-linux-gnu/libz.so.1.2.13")
    );
    assert_eq!(view.resolve_file("/usr/bin/prog").map(|(l, _)| l), Some(0));
    assert_eq!(
        view.resolve_file("/usr/bin/../bin/./prog").map(|(l, _)| l),
        Some(0)
    );
}

#[test]
fn whiteouts_opaque_dirs_loops_and_dirs_resolve_to_nothing() {
    let (base, upper) = stack();
    let layers = [&upper, &base];
    let view = MergedView::new(&layers);
    assert_eq!(
        view.resolve_file("/usr/lib/x86_64-linux-gnu/libgone.so.1"),
        None
    );
    assert_eq!(
        view.resolve_file("/opt/old/a"),
        None,
        "hidden by the opaque dir"
    );
    assert!(view.resolve_file("/opt/old/b").is_some());
    assert_eq!(view.resolve_file("/loop"), None);
    assert_eq!(view.resolve_file("/usr/lib"), None, "a directory");
    assert_eq!(view.resolve_file("/nope/x"), None);
    // Without the upper layer the deleted library is there.
    let only_base = [&base];
    assert!(
        MergedView::new(&only_base)
            .resolve_file("/lib/x86_64-linux-gnu/libgone.so.1")
            .is_some()
    );
}
