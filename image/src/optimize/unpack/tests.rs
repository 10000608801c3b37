use std::path::Path;

use ringstar_testkit::images::TarBuilder;

use super::*;

fn unpack(root: &Path, layers: &[Vec<u8>]) -> Result<Provenance, ImageError> {
    let mut u = Unpacker::new(root)?;
    for (i, l) in layers.iter().enumerate() {
        u.apply(i, &l[..])?;
    }
    Ok(u.into_provenance())
}

#[test]
fn layers_apply_in_order_with_whiteouts_and_opaque_directories() {
    let root = tempfile::tempdir().unwrap();
    let mut base = TarBuilder::default();
    base.dir("etc/")
        .file("etc/one", 0o644, b"one")
        .file("etc/removed", 0o644, b"gone")
        .file("etc/replaced", 0o644, b"old")
        .dir("opq/")
        .file("opq/old", 0o644, b"old")
        .dir("tree/")
        .dir("tree/sub/")
        .file("tree/sub/deep", 0o755, b"deep")
        .symlink("etc/link", "one")
        .hardlink("etc/hard", "etc/one");
    let mut top = TarBuilder::default();
    top.file("etc/.wh.removed", 0o644, b"")
        .file("etc/replaced", 0o600, b"new")
        // The marker after a file of the same layer: only lower
        // layers' files go.
        .file("opq/new", 0o644, b"new")
        .file("opq/.wh..wh..opq", 0o644, b"")
        .file(".wh.tree", 0o644, b"")
        .file("made/parents/file", 0o644, b"x");
    let prov = unpack(root.path(), &[base.finish(), top.finish()]).unwrap();
    let r = root.path();
    assert_eq!(std::fs::read(r.join("etc/one")).unwrap(), b"one");
    assert!(!r.join("etc/removed").exists());
    assert_eq!(std::fs::read(r.join("etc/replaced")).unwrap(), b"new");
    assert_eq!(
        std::fs::read_link(r.join("etc/link")).unwrap(),
        Path::new("one")
    );
    assert_eq!(std::fs::read(r.join("etc/hard")).unwrap(), b"one");
    assert!(!r.join("opq/old").exists());
    assert!(r.join("opq/new").exists());
    assert!(!r.join("tree").exists());
    assert!(r.join("made/parents/file").exists());
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(r.join("etc/replaced")).unwrap();
    assert_eq!(m.mode() & 0o777, 0o600);
    assert_eq!(m.mtime(), 1_700_000_000);
    assert_eq!(prov.layer_of("etc/one"), Some(0));
    assert_eq!(prov.layer_of("etc/hard"), Some(0));
    assert_eq!(prov.layer_of("etc/replaced"), Some(1));
    assert_eq!(prov.layer_of("etc/link"), None, "a symlink is not a file");
}

/// A layer that tries to write outside the root: through `..`, an
/// absolute symlink, a relative symlink climbing out, and a hard link to
/// a file outside. Whatever the unpack returns, nothing outside changes.
#[test]
fn no_name_in_a_layer_reaches_outside_the_root() {
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret");
    std::fs::write(&secret, b"host file").unwrap();
    let out = outside.path().display().to_string();
    let root = tempfile::tempdir().unwrap();
    let dots = TarBuilder::default()
        .file("../../../../escaped-by-dots", 0o644, b"x")
        .finish();
    unpack(root.path(), &[dots]).unwrap();
    assert!(
        root.path().join("escaped-by-dots").exists(),
        "`..` stops at the root"
    );
    let layers: Vec<Vec<u8>> = vec![
        TarBuilder::default()
            .symlink("abs", &out)
            .file("abs/secret", 0o644, b"overwritten")
            .finish(),
        TarBuilder::default()
            .symlink("rel", "../../../../../../../..")
            .file(&format!("rel{out}/secret"), 0o644, b"overwritten")
            .finish(),
        TarBuilder::default()
            .symlink("target", &format!("{out}/secret"))
            .file("target", 0o644, b"overwritten")
            .finish(),
        TarBuilder::default()
            .hardlink("stolen", &format!("{out}/secret"))
            .finish(),
        TarBuilder::default()
            .symlink("dir", &out)
            .file("dir/.wh.secret", 0o644, b"")
            .finish(),
    ];
    for layer in layers {
        let root = tempfile::tempdir().unwrap();
        let _ = unpack(root.path(), &[layer]);
        assert_eq!(std::fs::read(&secret).unwrap(), b"host file");
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 1);
    }
}

/// A header declaring more payload than the stream has is an error, not
/// an allocation of that size or a short file.
#[test]
fn a_lying_size_is_an_error() {
    let mut t = TarBuilder::default().file("f", 0o644, b"data").finish();
    // Size field (octal, at 124) claims 64 GiB.
    t[124..136].copy_from_slice(b"1000000000000\0"[..12].as_ref());
    let sum: u32 = t[..512]
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                b' ' as u32
            } else {
                b as u32
            }
        })
        .sum();
    t[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let root = tempfile::tempdir().unwrap();
    assert!(unpack(root.path(), &[t]).is_err());
}
