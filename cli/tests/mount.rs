//! `ringstar mount`: one layer served from a real registry until SIGINT.

use ringstar_core::tar::{Entry, EntryType};
use ringstar_core::writer::WriterOptions;
use ringstar_testkit::Registry;
use ringstar_testkit::mounted::{content, estargz, tar_of};

fn entry(name: &str, kind: EntryType) -> Entry {
    Entry {
        name: name.into(),
        entry_type: Some(kind),
        mode: 0o755,
        mtime: 1_700_000_000,
        ..Entry::default()
    }
}

#[test]
fn the_mount_command_serves_one_layer_until_interrupted() {
    let reg = Registry::start();
    let data = content(123_456, 7);
    let (blob, toc) = estargz(
        &tar_of(
            &[
                ("etc/os-release", b"ID=ringstar\n"),
                ("usr/bin/tool", &data),
            ],
            &[entry("usr/bin/sh", EntryType::Symlink)],
        ),
        &WriterOptions::default(),
    );
    let digest = reg.push("library/demo", &blob);
    let mnt = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ringstar"))
        .args(["mount", "--ref"])
        .arg(format!("{}/library/demo:latest", reg.addr))
        .args(["--digest", &digest, "--toc-digest", &toc, "--store"])
        .arg(store.path())
        .arg(mnt.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert!(line.starts_with("mounted "), "{line:?}");
    assert_eq!(
        std::fs::read(mnt.path().join("etc/os-release")).unwrap(),
        b"ID=ringstar\n"
    );
    assert_eq!(
        std::fs::read(mnt.path().join("usr/bin/tool")).unwrap(),
        data
    );
    // SIGINT unmounts and exits cleanly.
    let pid = child.id() as i32;
    let _ = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(mnt.path().to_str().unwrap()),
        "still mounted"
    );
}
