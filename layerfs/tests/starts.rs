//! Start records end to end (#17): a container's first reads of an image
//! are recorded; after the store is gone (a new node, or eviction), the
//! next start of the image fetches those chunks, in that order, before
//! anything reads them. Our writer's layer, Debian's docker-registry, a
//! real mount.

use ringstar_testkit::mounted as common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use ringstar_core::writer::WriterOptions;
use ringstar_layerfs::chunks::{BlobChunk, FileChunk};
use ringstar_layerfs::starts::StartRecords;
use ringstar_layerfs::{LoaderConfig, RemoteLayer};
use ringstar_testkit::Registry;

use common::{Mounted, content, estargz, no_background, tar_of};

fn present(layer: &RemoteLayer, path: &str, chunk: usize) -> bool {
    let tree = layer.tree();
    let node = tree.lookup_path(path).unwrap();
    layer.is_present(BlobChunk::of(tree, node, FileChunk(chunk)))
}

/// Files with incompressible padding between them, so that no read-ahead
/// window reaches a neighbour; `big` has two chunks.
fn image(reg: &Registry) -> (String, String) {
    let pad = content(512 << 10, 1);
    let big = content(3 << 20, 2);
    let (a, b, c) = (content(10_000, 3), content(10_000, 4), content(10_000, 5));
    let tar = tar_of(
        &[
            ("app/a", &a),
            ("app/pad1", &pad),
            ("app/b", &b),
            ("app/pad2", &pad),
            ("app/c", &c),
            ("app/pad3", &pad),
            ("app/big", &big),
        ],
        &[],
    );
    let opts = WriterOptions {
        chunk_size: 2 << 20,
        ..WriterOptions::default()
    };
    let (blob, toc) = estargz(&tar, &opts);
    (reg.push("s/img", &blob), toc)
}

fn mount(
    reg: &Registry,
    records: &std::path::Path,
    layer: &(String, String),
) -> (tempfile::TempDir, Mounted, Arc<RemoteLayer>) {
    let store = tempfile::tempdir().unwrap();
    let m = Mounted::new(
        store.path(),
        1 << 30,
        LoaderConfig {
            start_records: Some(records.to_path_buf()),
            ..no_background()
        },
    );
    let l = m
        .add(&reg.addr, "s/img", "l", &layer.0, Some(&layer.1))
        .unwrap();
    // As the daemon does when a container's snapshot is mounted.
    let image = [l.clone()];
    l.set_image(&image);
    m.loader.image_mounted(&image);
    (store, m, l)
}

#[test]
fn a_second_cold_start_fetches_what_the_first_read_in_order() {
    let reg = Registry::start();
    let layer = image(&reg);
    let records = tempfile::tempdir().unwrap();
    {
        let (_store, m, _l) = mount(&reg, records.path(), &layer);
        for path in ["l/app/c", "l/app/a"] {
            std::fs::read(m.path(path)).unwrap();
        }
        // The second chunk of big only.
        use std::os::unix::fs::FileExt;
        let big = std::fs::File::open(m.path("l/app/big")).unwrap();
        big.read_exact_at(&mut [0u8; 16], (2 << 20) + 5).unwrap();
        m.loader.starts.as_ref().unwrap().flush();
    }
    let digest = layer.0.parse().unwrap();
    let record = StartRecords::open(records.path())
        .unwrap()
        .load(&[digest])
        .expect("a record");
    let files: Vec<(&str, &[u32])> = record
        .files
        .iter()
        .map(|f| (f.path.as_str(), f.chunks.as_slice()))
        .collect();
    assert_eq!(
        files,
        [("app/c", &[0][..]), ("app/a", &[0]), ("app/big", &[1])]
    );

    // A new store: the next start of the image is cold.
    let (_store, _m, l) = mount(&reg, records.path(), &layer);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(present(&l, "app/c", 0) && present(&l, "app/a", 0) && present(&l, "app/big", 1)) {
        assert!(Instant::now() < deadline, "the record was not replayed");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!present(&l, "app/b", 0), "b was never read");
    assert!(
        !present(&l, "app/big", 0),
        "only big's second chunk was read"
    );
}

/// Warm starts replay nothing, and a start with a record records no
/// second one.
#[test]
fn a_warm_start_replays_nothing() {
    let reg = Registry::start();
    let layer = image(&reg);
    let records = tempfile::tempdir().unwrap();
    let (_store, m, l) = mount(&reg, records.path(), &layer);
    std::fs::read(m.path("l/app/a")).unwrap();
    let starts = m.loader.starts.as_ref().unwrap();
    starts.flush();
    let image = [l.clone()];
    assert!(!m.loader.replay(&image, &starts.load(&[l.digest]).unwrap()));
}
