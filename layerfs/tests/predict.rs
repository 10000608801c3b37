//! Predictions end to end (#17): a two-layer image of this machine's own
//! programs and libraries, written by our writer, pushed to Debian's
//! docker-registry and mounted for real. Reading a script's first bytes
//! (as exec does) must bring in its interpreter, that program's loader
//! and libraries from the layer below, and nothing they do not name.

use ringstar_testkit::mounted as common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use ringstar_core::tar::{Entry, EntryType};
use ringstar_core::writer::WriterOptions;
use ringstar_layerfs::chunks::{BlobChunk, FileChunk};
use ringstar_layerfs::{LoaderConfig, RemoteLayer};
use ringstar_testkit::Registry;

use common::{Mounted, content, estargz, no_background, tar_of};

/// Whether the first chunk of `path` in `layer` is stored.
fn first_chunk_in(layer: &RemoteLayer, path: &str) -> bool {
    let tree = layer.tree();
    let node = tree.lookup_path(path).unwrap();
    layer.is_present(BlobChunk::of(tree, node, FileChunk(0)))
}

fn host(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn symlink(name: &str, target: &str) -> Entry {
    Entry {
        name: name.into(),
        link_name: target.into(),
        entry_type: Some(EntryType::Symlink),
        mode: 0o777,
        ..Entry::default()
    }
}

/// Base: glibc's loader and libc where Debian has them (merged /usr, the
/// /lib64 link), a library nobody names, and incompressible padding
/// between them so that no read-ahead window reaches a neighbour. Top:
/// a program (this machine's `true`, which needs libc.so.6) and a script
/// run by it.
fn image(reg: &Registry) -> [(String, String); 2] {
    let pad = content(512 << 10, 7);
    let base = tar_of(
        &[
            (
                "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
                &host("/lib64/ld-linux-x86-64.so.2"),
            ),
            ("usr/lib/x86_64-linux-gnu/pad1", &pad),
            (
                "usr/lib/x86_64-linux-gnu/libc.so.6",
                &host("/lib/x86_64-linux-gnu/libc.so.6"),
            ),
            ("usr/lib/x86_64-linux-gnu/pad2", &pad),
            (
                "usr/lib/x86_64-linux-gnu/libunused.so.1",
                &host("/usr/bin/true"),
            ),
            ("usr/lib/x86_64-linux-gnu/pad3", &pad),
            ("etc/ld.so.cache", b"glibc-ld.so.cache1.1"),
        ],
        &[
            symlink("lib", "usr/lib"),
            symlink("lib64", "usr/lib/x86_64-linux-gnu"),
        ],
    );
    let top = tar_of(
        &[
            ("usr/local/bin/script", b"#!/usr/bin/env prog\nexit 0\n"),
            ("usr/local/bin/pad", &pad),
            ("usr/bin/env", &host("/usr/bin/true")),
            ("usr/bin/pad", &pad),
            ("usr/bin/prog", &host("/usr/bin/true")),
        ],
        &[],
    );
    [base, top].map(|tar| {
        let (blob, toc) = estargz(&tar, &WriterOptions::default());
        (reg.push("p/img", &blob), toc)
    })
}

fn mount(reg: &Registry, predict: bool) -> (tempfile::TempDir, Mounted, [Arc<RemoteLayer>; 2]) {
    let [(base_digest, base_toc), (top_digest, top_toc)] = image(reg);
    let store = tempfile::tempdir().unwrap();
    let m = Mounted::new(
        store.path(),
        1 << 30,
        LoaderConfig {
            predict,
            ..no_background()
        },
    );
    let base = m
        .add(&reg.addr, "p/img", "base", &base_digest, Some(&base_toc))
        .unwrap();
    let top = m
        .add(&reg.addr, "p/img", "top", &top_digest, Some(&top_toc))
        .unwrap();
    // As the daemon does when a container's snapshot is mounted.
    let image = [top.clone(), base.clone()];
    for l in &image {
        l.set_image(&image);
    }
    (store, m, [top, base])
}

/// Reads the first bytes of `path` (what exec reads first).
fn exec_read(m: &Mounted, path: &str) {
    use std::io::Read;
    let mut f = std::fs::File::open(m.path(path)).unwrap();
    let mut head = [0u8; 4];
    f.read_exact(&mut head).unwrap();
}

#[test]
fn a_script_brings_its_interpreter_and_the_libraries_they_need() {
    let reg = Registry::start();
    let (_store, m, [top, base]) = mount(&reg, true);
    exec_read(&m, "top/usr/local/bin/script");
    let wanted = [
        (&top, "usr/bin/env"),
        (&top, "usr/bin/prog"),
        (&base, "usr/lib/x86_64-linux-gnu/libc.so.6"),
        (&base, "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"),
        (&base, "etc/ld.so.cache"),
    ];
    // Generous: a loaded machine may take seconds; nothing here is timed.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !wanted.iter().all(|(l, p)| first_chunk_in(l, p)) {
        let missing: Vec<&str> = wanted
            .iter()
            .filter(|(l, p)| !first_chunk_in(l, p))
            .map(|(_, p)| *p)
            .collect();
        assert!(Instant::now() < deadline, "never fetched: {missing:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!first_chunk_in(
        &base,
        "usr/lib/x86_64-linux-gnu/libunused.so.1"
    ));
    for pad in [
        "usr/lib/x86_64-linux-gnu/pad1",
        "usr/lib/x86_64-linux-gnu/pad2",
    ] {
        assert!(!first_chunk_in(&base, pad), "{pad} fetched");
    }
    // The predicted files read back as they are.
    let libc = std::fs::read(m.path("base/usr/lib/x86_64-linux-gnu/libc.so.6")).unwrap();
    assert!(libc == host("/lib/x86_64-linux-gnu/libc.so.6"));
}

/// The control: with prediction off the same read fetches the script
/// alone, so the test above sees prediction and not read-ahead.
#[test]
fn without_prediction_only_the_read_file_is_fetched() {
    let reg = Registry::start();
    let (_store, m, [top, base]) = mount(&reg, false);
    exec_read(&m, "top/usr/local/bin/script");
    // Let anything that would be sent arrive.
    std::thread::sleep(Duration::from_millis(500));
    assert!(first_chunk_in(&top, "usr/local/bin/script"));
    assert!(!first_chunk_in(&top, "usr/bin/prog"));
    assert!(!first_chunk_in(&base, "usr/lib/x86_64-linux-gnu/libc.so.6"));
}
