//! Layer tars for tests, built entry by entry, and the demo's busybox
//! image.

/// Builds a tar in memory, entry by entry.
#[derive(Debug, Default)]
pub struct TarBuilder {
    out: Vec<u8>,
}

impl TarBuilder {
    fn entry(&mut self, e: ringstar_core::tar::Entry, data: &[u8]) -> &mut Self {
        self.out
            .extend_from_slice(&ringstar_core::tar::encode_header(&e));
        self.out.extend_from_slice(data);
        self.out.resize(
            self.out.len() + ringstar_core::tar::padding(data.len() as u64),
            0,
        );
        self
    }

    fn base(
        name: &str,
        kind: ringstar_core::tar::EntryType,
        mode: u32,
    ) -> ringstar_core::tar::Entry {
        ringstar_core::tar::Entry {
            name: name.to_string(),
            entry_type: Some(kind),
            mode,
            mtime: 1_700_000_000,
            ..ringstar_core::tar::Entry::default()
        }
    }

    pub fn dir(&mut self, name: &str) -> &mut Self {
        let e = Self::base(name, ringstar_core::tar::EntryType::Dir, 0o755);
        self.entry(e, &[])
    }

    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> &mut Self {
        let mut e = Self::base(name, ringstar_core::tar::EntryType::Reg, mode);
        e.size = data.len() as u64;
        self.entry(e, data)
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        let mut e = Self::base(name, ringstar_core::tar::EntryType::Symlink, 0o777);
        e.link_name = target.to_string();
        self.entry(e, &[])
    }

    pub fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        let mut e = Self::base(name, ringstar_core::tar::EntryType::Hardlink, 0o644);
        e.link_name = target.to_string();
        self.entry(e, &[])
    }

    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.out);
        out.extend_from_slice(&[0u8; 1024]);
        out
    }
}

/// The demo image's two layers, from a static busybox: the base has
/// `/bin/busybox`, its applet links and `/etc/removed.txt`; the second
/// adds `/etc/hello.txt` and deletes `/etc/removed.txt` with a whiteout.
pub fn busybox_layers(busybox: &std::path::Path) -> std::io::Result<Vec<Vec<u8>>> {
    let bin = std::fs::read(busybox)?;
    let mut base = TarBuilder::default();
    base.dir("bin/").file("bin/busybox", 0o755, &bin);
    for applet in [
        "sh", "cat", "ls", "echo", "test", "[", "sleep", "mount", "grep",
    ] {
        base.symlink(&format!("bin/{applet}"), "busybox");
    }
    base.dir("etc/")
        .file("etc/one.txt", 0o644, b"hello from layer 1\n")
        .file("etc/removed.txt", 0o644, b"the top layer deletes this\n")
        .dir("tmp/");
    let mut top = TarBuilder::default();
    top.dir("etc/")
        .file("etc/hello.txt", 0o644, b"hello from ringstar\n")
        .file("etc/.wh.removed.txt", 0o644, b"");
    Ok(vec![base.finish(), top.finish()])
}
