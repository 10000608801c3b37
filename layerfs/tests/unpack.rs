//! Complete layers unpacked as plain directories (layerfs `unpack`):
//! layers written by our writer, pushed to Debian's docker-registry,
//! mounted, read whole (so the store holds them), unpacked, and read
//! through a real overlayfs mount; and what one layer's unpacking may
//! leave on a store file that another layer links.

use ringstar_testkit::mounted as common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use ringstar_core::tar;
use ringstar_core::writer::WriterOptions;
use ringstar_layerfs::unpack::Unpacked;
use ringstar_testkit::Registry;

use common::{Mounted, content, estargz, no_background, tar_of};

/// A tar of one regular file with `mode` and `xattrs`.
fn one_file(name: &str, data: &[u8], mode: u32, xattrs: &[(&str, &[u8])]) -> Vec<u8> {
    let e = tar::Entry {
        name: name.into(),
        size: data.len() as u64,
        mode,
        entry_type: Some(tar::EntryType::Reg),
        mtime: 1_700_000_000,
        xattrs: xattrs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_vec()))
            .collect(),
        ..tar::Entry::default()
    };
    let mut out = tar::encode_header(&e);
    out.extend_from_slice(data);
    out.resize(out.len() + tar::padding(data.len() as u64), 0);
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// Adds `tar` as layer `name` and reads every file, so the store has it.
fn add_read(m: &Mounted, reg: &Registry, name: &str, tar: &[u8]) {
    let (blob, toc) = estargz(tar, &WriterOptions::default());
    let digest = reg.push("u/img", &blob);
    m.add(&reg.addr, "u/img", name, &digest, Some(&toc))
        .unwrap();
    read_all(&m.path(name));
}

fn read_all(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            read_all(&e.path());
        } else if e.file_type().unwrap().is_file() {
            std::fs::read(e.path()).unwrap();
        }
    }
}

#[test]
fn overlayfs_over_unpacked_layers_applies_whiteouts_and_opaque_dirs() {
    let reg = Registry::start();
    let store = tempfile::tempdir().unwrap();
    let m = Mounted::new(store.path(), 1 << 30, no_background());
    let big = content(300_000, 7);
    let lower = tar_of(
        &[
            ("dir/a", b"lower a"),
            ("dir/b", b"lower b"),
            ("keep", &big),
            ("twin", &big),
            ("opq/old", b"hidden by opaque"),
        ],
        &[],
    );
    let upper = tar_of(
        &[
            ("dir/.wh.a", b""),
            ("new", b"upper new"),
            ("opq/.wh..wh..opq", b""),
            ("opq/fresh", b"fresh"),
        ],
        &[],
    );
    add_read(&m, &reg, "lower", &lower);
    add_read(&m, &reg, "upper", &upper);
    let unpacked_dir = tempfile::tempdir().unwrap();
    let unpacked = Unpacked::open(unpacked_dir.path()).unwrap();
    let store = &m.loader.store;
    let l = unpacked
        .unpack("lower", &m.fs.layer("lower").unwrap(), store)
        .unwrap();
    let u = unpacked
        .unpack("upper", &m.fs.layer("upper").unwrap(), store)
        .unwrap();
    // The big file is the store's inode: no second copy. Its twin (same
    // bytes, another file to the image) is not the same inode.
    let keep = std::fs::metadata(l.join("keep")).unwrap();
    let twin = std::fs::metadata(l.join("twin")).unwrap();
    assert_eq!(keep.nlink(), 2);
    assert_eq!(twin.nlink(), 1);
    assert_ne!(keep.ino(), twin.ino());

    common::with_overlay(&[&u, &l], |merged| {
        let read = |p: &str| std::fs::read(merged.join(p));
        assert!(read("dir/a").is_err(), "whiteout not applied");
        assert_eq!(read("dir/b").unwrap(), b"lower b");
        assert_eq!(read("keep").unwrap(), big);
        assert_eq!(read("twin").unwrap(), big);
        assert_eq!(read("new").unwrap(), b"upper new");
        assert!(read("opq/old").is_err(), "opaque dir shows the lower");
        assert_eq!(read("opq/fresh").unwrap(), b"fresh");
        let mut names: Vec<_> = std::fs::read_dir(merged.join("dir"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, vec!["b"]);
    });

    // Removed, it is gone; unpacking a layer not wholly stored fails
    // and leaves nothing.
    unpacked.remove("lower");
    assert!(unpacked.path("lower").is_none());
    let (blob, toc) = estargz(
        &tar_of(&[("unread", &content(100_000, 9))], &[]),
        &WriterOptions::default(),
    );
    let d = reg.push("u/img", &blob);
    let lazy = m.add(&reg.addr, "u/img", "lazy", &d, Some(&toc)).unwrap();
    assert!(unpacked.unpack("lazy", &lazy, store).is_err());
    assert!(unpacked.path("lazy").is_none());
    assert_eq!(unpacked.names(), ["upper"]);
}

/// Three layers hold the same bytes with other metadata. The first to
/// unpack links the store file and gives it its mode and xattrs; the
/// second gets a copy (two entries never share an inode); once the first
/// is removed, a third links the store file again, and nothing of the
/// first (its xattr) is left on it.
#[test]
fn a_store_file_carries_only_the_metadata_of_the_layer_linking_it() {
    let reg = Registry::start();
    let store = tempfile::tempdir().unwrap();
    let m = Mounted::new(store.path(), 1 << 30, no_background());
    let data = content(200_000, 3);
    add_read(
        &m,
        &reg,
        "first",
        &one_file("f", &data, 0o4755, &[("user.first", b"1")]),
    );
    add_read(&m, &reg, "second", &one_file("f", &data, 0o600, &[]));
    add_read(&m, &reg, "third", &one_file("f", &data, 0o644, &[]));
    let unpacked_dir = tempfile::tempdir().unwrap();
    let unpacked = Unpacked::open(unpacked_dir.path()).unwrap();
    let unpack = |name: &str| {
        unpacked
            .unpack(name, &m.fs.layer(name).unwrap(), &m.loader.store)
            .unwrap()
            .join("f")
    };
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    let first = unpack("first");
    assert_eq!(mode(&first), 0o4755);
    assert_eq!(
        xattr::get(&first, "user.first").unwrap().as_deref(),
        Some(&b"1"[..])
    );
    let linked = std::fs::metadata(&first).unwrap();
    assert_eq!(linked.nlink(), 2);

    let second = unpack("second");
    assert_eq!(mode(&second), 0o600);
    assert_eq!(std::fs::metadata(&second).unwrap().nlink(), 1, "a copy");
    assert_eq!(xattr::get(&second, "user.first").unwrap(), None);
    assert_eq!(mode(&first), 0o4755, "the first layer's file unchanged");
    assert_eq!(std::fs::read(&second).unwrap(), data);

    unpacked.remove("first");
    unpacked.empty_trash();
    let third = unpack("third");
    let md = std::fs::metadata(&third).unwrap();
    assert_eq!(md.ino(), linked.ino(), "the store's file again");
    assert_eq!(mode(&third), 0o644);
    assert_eq!(xattr::get(&third, "user.first").unwrap(), None);
    assert_eq!(std::fs::read(&third).unwrap(), data);
}
