use super::*;

/// The test binary itself: a dynamically linked program of this machine.
fn this_program() -> Vec<u8> {
    std::fs::read(std::env::current_exe().unwrap()).unwrap()
}

fn whole(bytes: &[u8]) -> Result<Parsed, ExecError> {
    let mut p = FilePieces::new(bytes.len() as u64);
    p.add(0, bytes);
    parse_elf(&p)
}

#[test]
fn a_dynamic_program_names_its_loader_and_libraries() {
    let bytes = this_program();
    let Parsed::Done(deps) = whole(&bytes).unwrap() else {
        panic!("not parsed");
    };
    let interp = deps.interpreter.expect("PT_INTERP");
    assert!(interp.starts_with('/') && interp.contains("ld"), "{interp}");
    assert!(
        deps.needed.iter().any(|n| n.starts_with("libc.so")),
        "{:?}",
        deps.needed
    );
    assert!(!deps.hot.is_empty());
    assert!(deps.hot.iter().all(|r| r.end <= bytes.len() as u64));
}

/// Chunk by chunk, as a lazy pull delivers them: each answer names a
/// byte that is missing until the pieces held give the same result as
/// the whole file.
#[test]
fn partial_files_ask_for_the_byte_they_need() {
    let bytes = this_program();
    let Parsed::Done(want) = whole(&bytes).unwrap() else {
        panic!("not parsed");
    };
    const CHUNK: u64 = 64 << 10;
    let mut held = vec![0u64];
    let mut asked = 0;
    loop {
        let mut p = FilePieces::new(bytes.len() as u64);
        for &c in &held {
            let end = ((c + 1) * CHUNK).min(bytes.len() as u64);
            p.add(c * CHUNK, &bytes[(c * CHUNK) as usize..end as usize]);
        }
        match parse_elf(&p).unwrap() {
            Parsed::Done(got) => {
                assert_eq!(got, want);
                break;
            }
            Parsed::Incomplete { missing, hot } => {
                assert!(hot.len() <= want.hot.len());
                let c = missing / CHUNK;
                assert!(!held.contains(&c), "asked again for held chunk {c}");
                held.push(c);
                asked += 1;
                assert!(asked < 16);
            }
            Parsed::NotElf => panic!("lost the header"),
        }
    }
}

#[test]
fn other_files_and_broken_ones_are_told_apart() {
    assert_eq!(whole(b"#!/bin/sh\necho hi\n").unwrap(), Parsed::NotElf);
    assert_eq!(whole(b"").unwrap(), Parsed::NotElf);
    assert_eq!(whole(b"\x7fELF").unwrap(), Parsed::NotElf);
    // A class byte that is neither 32 nor 64 bits.
    let mut bad = this_program()[..64].to_vec();
    bad[4] = 9;
    assert!(whole(&bad).is_err());
    // Only the first bytes held of a longer file: the header is missing.
    let bytes = this_program();
    let mut p = FilePieces::new(bytes.len() as u64);
    p.add(0, &bytes[..8]);
    assert_eq!(
        parse_elf(&p).unwrap(),
        Parsed::Incomplete {
            missing: 8,
            hot: Vec::new()
        }
    );
}

/// Program headers pointing far outside the file, a string table offset
/// at the end of u64: errors, never a panic or a read out of bounds.
#[test]
fn hostile_offsets_are_errors() {
    let mut bytes = this_program();
    // e_phoff (64-bit header, offset 32) to the end of the address space.
    bytes[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(whole(&bytes).is_err());
    let mut bytes = this_program();
    // e_phnum = 0xfffe (0xffff means "see section 0").
    bytes[56..58].copy_from_slice(&0xfffeu16.to_le_bytes());
    assert!(whole(&bytes).is_err());
}

#[test]
fn shebang_lines() {
    assert_eq!(
        shebang(b"#!/usr/bin/env python3\nprint()"),
        Some(("/usr/bin/env".into(), Some("python3".into())))
    );
    assert_eq!(
        shebang(b"#! /bin/sh -e\n"),
        Some(("/bin/sh".into(), Some("-e".into())))
    );
    assert_eq!(shebang(b"#!/bin/sh"), None, "no complete line");
    assert_eq!(shebang(b"#!sh\n"), None, "relative");
    assert_eq!(shebang(b"\x7fELF"), None);
}

#[test]
fn library_dirs_start_with_the_machine_triplet() {
    let dirs = library_dirs(elf::EM_X86_64.0);
    assert_eq!(dirs[1], "/lib/x86_64-linux-gnu");
    assert!(dirs.contains(&"/usr/lib".to_string()));
    assert!(!library_dirs(0).iter().any(|d| d.contains("linux-gnu")));
}
