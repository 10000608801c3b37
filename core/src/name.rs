//! Entry name cleaning: `clean(name) = strip_leading("/", path_clean("/" +
//! name))`, exactly as the reference reader does it. Cleaning against a
//! rooted path is what keeps every name inside the layer: `..` at the root
//! stays at the root.

/// Cleans a TOC or tar entry name into a root-relative path with no `.`,
/// `..`, empty or trailing components. The root itself is `""`.
pub fn clean(name: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}

/// Why a cleaned name cannot be listed, if it cannot: a component with a
/// NUL byte (no file name can hold one: the kernel would cut it short, and
/// FUSE replies separate names by NUL), or a whiteout of `.` or `..`
/// (`.wh..`, `.wh...`, or a bare `.wh.`), which would show as a second `.`
/// or `..` in its directory. Every component counts, so nothing can sit
/// under such a name either.
pub fn refused(clean_name: &str) -> Option<&'static str> {
    if clean_name.contains('\0') {
        return Some("a NUL byte in the name");
    }
    // Most names hold no whiteout at all: one substring search, then
    // the components only for those that do.
    if !clean_name.contains(".wh.") {
        return None;
    }
    clean_name
        .split('/')
        .any(|part| matches!(part, ".wh." | ".wh.." | ".wh..."))
        .then_some("a whiteout of \".\" or \"..\" (or of nothing)")
}

/// The parent of a cleaned name (`""` for top-level names and the root).
pub fn parent(clean_name: &str) -> &str {
    match clean_name.rfind('/') {
        Some(i) => &clean_name[..i],
        None => "",
    }
}

/// The last component of a cleaned name.
pub fn base(clean_name: &str) -> &str {
    match clean_name.rfind('/') {
        Some(i) => &clean_name[i + 1..],
        None => clean_name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleans_like_the_reference() {
        for (raw, want) in [
            ("./a/", "a"),
            ("/a", "a"),
            ("../a", "a"),
            ("a//", "a"),
            ("bar/../bar///////////////////foo", "bar/foo"),
            ("./", ""),
            ("/", ""),
            ("", ""),
            ("../../../escape", "escape"),
            ("a/../../b", "b"),
            ("a/./b/.", "a/b"),
            ("...", "..."),
        ] {
            assert_eq!(clean(raw), want, "{raw:?}");
        }
    }

    #[test]
    fn refuses_nul_and_dot_whiteouts_in_any_component() {
        for bad in [
            "a\0b",
            "d/x\0",
            ".wh..",
            "d/.wh...",
            "d/.wh.",
            ".wh../child",
        ] {
            assert!(refused(bad).is_some(), "{bad:?}");
        }
        for good in [
            "a",
            ".wh.x",
            "d/.wh..wh..opq",
            "...",
            ".wh....",
            "d/.wh.a.b",
        ] {
            assert_eq!(refused(good), None, "{good:?}");
        }
    }

    #[test]
    fn parent_and_base() {
        assert_eq!(parent("a/b/c"), "a/b");
        assert_eq!(parent("a"), "");
        assert_eq!(base("a/b/c"), "c");
        assert_eq!(base("a"), "a");
    }
}
