use super::encode::{checksum, ustar_block};
use super::*;

fn sample() -> Entry {
    Entry {
        name: "dir/file.txt".into(),
        entry_type: Some(EntryType::Reg),
        mode: 0o4755,
        uid: 1000,
        gid: 100,
        uname: "user".into(),
        gname: "users".into(),
        size: 3,
        mtime: 1_700_000_000,
        ..Entry::default()
    }
}

fn archive(entries: &[(Entry, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (e, data) in entries {
        out.extend(encode_header(e));
        out.extend_from_slice(data);
        out.resize(out.len() + padding(data.len() as u64), 0);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

#[test]
fn encode_then_scan_round_trips() {
    let long = format!("{}/end", "long-name-".repeat(20));
    let entries = vec![
        (sample(), &b"abc"[..]),
        (
            Entry {
                name: long.clone(),
                entry_type: Some(EntryType::Symlink),
                link_name: format!("../{long}"),
                mode: 0o777,
                ..Entry::default()
            },
            &b""[..],
        ),
        (
            Entry {
                name: "dev/x".into(),
                entry_type: Some(EntryType::Char),
                dev_major: 3_000_000,
                dev_minor: 7,
                xattrs: vec![("user.a".into(), vec![0xff, 0, b'\n'])],
                uid: 5_000_000,
                mtime: -5,
                ..Entry::default()
            },
            &b""[..],
        ),
        (
            Entry {
                name: "spaced ünïcode ☃".into(),
                entry_type: Some(EntryType::Dir),
                mode: 0o1777,
                ..Entry::default()
            },
            &b""[..],
        ),
    ];
    let tar = archive(&entries);
    let mut s = Scanner::new(&tar, tar.len() as u64);
    for (want, data) in &entries {
        let got = s.next_entry().unwrap().unwrap();
        assert_eq!(&got.entry, want);
        assert_eq!(tar[got.data_offset as usize..][..data.len()], **data);
    }
    assert!(s.next_entry().unwrap().is_none());
}

#[test]
fn reads_gnu_long_names_and_base256() {
    let mut e = sample();
    e.name = "x".into();
    e.size = 0;
    let mut h = encode_header(&e);
    // A GNU 'L' record before it.
    let name = "a/".repeat(80) + "z";
    let mut l = ustar_block(
        b"././@LongLink",
        &Entry::default(),
        b'L',
        name.len() as u64 + 1,
        &mut Vec::new(),
    );
    l[124] = 0x80; // base-256 size
    l[124..136].fill(0);
    l[124] = 0x80;
    l[132..136].copy_from_slice(&(name.len() as u32 + 1).to_be_bytes());
    checksum(&mut l);
    let mut tar = l.to_vec();
    tar.extend_from_slice(name.as_bytes());
    tar.push(0);
    tar.resize(tar.len().div_ceil(BLOCK) * BLOCK, 0);
    tar.append(&mut h);
    let mut s = Scanner::new(&tar, tar.len() as u64);
    assert_eq!(s.next_entry().unwrap().unwrap().entry.name, name);
    assert!(s.next_entry().unwrap().is_none());
}

#[test]
fn refuses_bad_input_without_panicking() {
    let mut h = encode_header(&sample());
    h[0] ^= 1;
    assert!(matches!(parse_header(&h, 0), Err(TarError::Checksum(0))));
    assert!(parse_header(&h[..100], 0).is_err());
    // Payload running past the end.
    let mut tar = encode_header(&Entry {
        size: 1 << 40,
        ..sample()
    });
    tar.extend_from_slice(b"abc");
    assert!(Scanner::new(&tar, tar.len() as u64).next_entry().is_err());
    // Huge PAX block.
    let mut pax = ustar_block(b"p", &Entry::default(), b'x', 1 << 30, &mut Vec::new());
    checksum(&mut pax);
    assert!(matches!(
        Scanner::new(&pax[..], 512).next_entry(),
        Err(TarError::MetaTooLarge(_))
    ));
    for bad in [
        &b"5 a=b"[..],
        b"99 a=b\n",
        b"x a=b\n",
        b"6 ab\n\n",
        b"3 =\n",
    ] {
        assert!(parse_pax(bad).is_err(), "{bad:?}");
    }
    assert_eq!(
        parse_pax(b"6 a=b\n").unwrap(),
        vec![("a".to_string(), b"b".to_vec())]
    );
}
