//! The rules on small workspaces written to a temporary folder.

use std::fs;
use std::path::Path;

use tempfile::TempDir;

use crate::check::{Report, Rule, Violation, check_workspace};
use crate::lengths::functions;
use crate::string_errors::string_errors;
use crate::syntax::Source;

const PACKAGE: &str = "[package]\nname = \"demo\"\n";

/// A workspace with one crate, `demo/`, holding `files` (paths under demo/).
fn workspace(files: &[(&str, &str)]) -> TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    write(dir.path(), "demo/Cargo.toml", PACKAGE);
    for (path, text) in files {
        write(dir.path(), &format!("demo/{path}"), text);
    }
    dir
}

fn write(root: &Path, path: &str, text: &str) {
    let path = root.join(path);
    fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    fs::write(path, text).expect("write");
}

fn check(files: &[(&str, &str)]) -> Report {
    let dir = workspace(files);
    check_workspace(dir.path()).expect("check")
}

fn broken(report: &Report, rule: Rule) -> Vec<&Violation> {
    report
        .violations
        .iter()
        .filter(|v| v.rule == rule)
        .collect()
}

/// `n` physical lines of comments.
fn lines(n: usize) -> String {
    "// filler\n".repeat(n)
}

/// A function spanning exactly `n` lines, signature to closing brace.
fn function(name: &str, n: usize) -> String {
    format!(
        "pub fn {name}() {{\n{}}}\n",
        "    let _ = 1;\n".repeat(n - 2)
    )
}

#[test]
fn a_file_of_601_lines_is_flagged_and_600_is_not() {
    let report = check(&[
        ("src/lib.rs", "mod small;\n"),
        ("src/small.rs", &lines(600)),
    ]);
    assert!(broken(&report, Rule::FileLength).is_empty());

    let report = check(&[("src/lib.rs", &lines(601))]);
    let found = broken(&report, Rule::FileLength);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].file, "demo/src/lib.rs");
    assert_eq!(found[0].what, "601 lines");
}

#[test]
fn inline_test_modules_count_but_test_files_do_not() {
    let inline = format!(
        "pub fn f() {{}}\n#[cfg(test)]\nmod tests {{\n{}}}\n",
        lines(600)
    );
    let report = check(&[("src/lib.rs", &inline)]);
    assert_eq!(broken(&report, Rule::FileLength).len(), 1);

    let report = check(&[
        ("src/lib.rs", "#[cfg(test)]\nmod helpers;\nmod a;\n"),
        ("src/helpers.rs", &lines(700)),
        ("src/a.rs", "#[cfg(test)]\nmod tests;\n"),
        ("src/a/tests.rs", &lines(700)),
        ("tests/big.rs", &lines(700)),
        ("benches/big.rs", &lines(700)),
    ]);
    assert!(report.violations.is_empty(), "{:?}", report.violations);
}

#[test]
fn a_function_of_81_lines_is_flagged_and_80_is_not() {
    let text = format!(
        "{}\nstruct S;\nimpl S {{\n{}}}\n",
        function("short", 80),
        function("long", 81)
    );
    let report = check(&[("src/lib.rs", &text)]);
    let found = broken(&report, Rule::FnLength);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].line, 84);
    assert!(
        found[0].what.starts_with("fn S::long is 81 lines"),
        "{}",
        found[0].what
    );
}

#[test]
fn function_length_runs_from_the_signature_to_the_closing_brace() {
    let text = "/// doc\n#[inline]\npub(crate)\nfn f(\n    a: u8,\n) -> u8 {\n    a\n}\n";
    let source = Source::parse(text.into()).expect("parse");
    let found = functions(&source.ast);
    assert_eq!((found[0].first_line, found[0].last_line), (3, 8));
}

#[test]
fn test_functions_and_nested_functions() {
    let text = format!(
        "#[test]\n{}#[cfg(test)]\nmod tests {{\n{}}}\ntrait T {{\n    fn d() {{\n        fn inner() {{}}\n    }}\n    fn no_body();\n}}\n",
        function("a_test", 90),
        function("helper", 90),
    );
    let source = Source::parse(text).expect("parse");
    let names: Vec<String> = functions(&source.ast).into_iter().map(|f| f.name).collect();
    assert_eq!(names, ["T::d", "T::d::inner"]);
}

#[test]
fn a_cycle_between_two_files_is_flagged() {
    let report = check(&[
        ("src/lib.rs", "mod a;\nmod b;\n"),
        ("src/a.rs", "use crate::b::B;\npub struct A(B);\n"),
        (
            "src/b.rs",
            "pub struct B;\nfn f() -> Option<crate::a::A> { None }\n",
        ),
    ]);
    let found = broken(&report, Rule::ImportCycle);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].what, "cycle demo/src/a.rs ↔ demo/src/b.rs");
    assert_eq!(found[0].details.len(), 2);
}

#[test]
fn cycles_through_super_paths_and_macros_are_flagged() {
    let report = check(&[
        ("src/lib.rs", "mod m;\n"),
        ("src/m/mod.rs", "mod x;\nmod y;\nmod z;\n"),
        ("src/m/x.rs", "use super::{y::{self, Y}};\n"),
        (
            "src/m/y.rs",
            "pub fn f() { println!(\"{}\", super::z::Z); }\n",
        ),
        (
            "src/m/z.rs",
            "pub fn g() -> super::super::m::x::X { todo!() }\n",
        ),
    ]);
    let found = broken(&report, Rule::ImportCycle);
    assert_eq!(found.len(), 1);
    assert_eq!(
        found[0].what,
        "cycle demo/src/m/x.rs ↔ demo/src/m/y.rs ↔ demo/src/m/z.rs"
    );
}

#[test]
fn a_parent_naming_its_children_is_not_a_cycle() {
    let report = check(&[
        (
            "src/lib.rs",
            "pub mod a;\npub use a::X;\npub use crate::a::inner::Z;\npub struct Y;\nfn f() { crate::a::g() }\n",
        ),
        (
            "src/a.rs",
            "mod inner;\npub use self::inner::Z;\nuse crate::Y;\npub struct X;\npub fn g() {}\n",
        ),
        (
            "src/a/inner.rs",
            "use super::X;\npub(crate) struct Z;\npub(super) fn h(_: crate::a::X) {}\n",
        ),
    ]);
    assert!(
        broken(&report, Rule::ImportCycle).is_empty(),
        "{:?}",
        report.violations
    );
    assert_eq!(report.crates[0].edges, 2, "a → lib and inner → a are kept");
}

#[test]
fn test_code_and_separate_crate_roots_make_no_cycle() {
    let report = check(&[
        ("src/lib.rs", "mod a;\nmod b;\n"),
        ("src/a.rs", "use crate::b::B;\n"),
        (
            "src/b.rs",
            "pub struct B;\n#[cfg(test)]\nmod tests {\n    use crate::a::A;\n}\n",
        ),
        ("src/main.rs", "mod a;\n"),
        ("src/bin/tool.rs", "fn main() {}\n"),
    ]);
    assert!(
        broken(&report, Rule::ImportCycle).is_empty(),
        "{:?}",
        report.violations
    );
}

#[test]
fn string_errors_are_flagged_in_library_code() {
    let lib = "mod inner;\npub fn f() -> Result<(), String> { Ok(()) }\n";
    let inner = "type R<T> = std::result::Result<T, &'static str>;\nfn ok() -> anyhow::Result<String> { todo!() }\n\
                 fn typed() -> Result<String, std::io::Error> { todo!() }\n\
                 #[cfg(test)]\nmod tests {\n    fn t() -> Result<(), String> { Ok(()) }\n}\n";
    let report = check(&[
        ("src/lib.rs", lib),
        ("src/inner.rs", inner),
        (
            "src/main.rs",
            "fn main() -> Result<(), String> { Ok(()) }\n",
        ),
        (
            "src/bin/tool.rs",
            "fn main() -> Result<(), String> { Ok(()) }\n",
        ),
    ]);
    let found: Vec<(String, usize, String)> = broken(&report, Rule::StringError)
        .into_iter()
        .map(|v| (v.file.clone(), v.line, v.what.clone()))
        .collect();
    assert_eq!(
        found,
        [
            (
                "demo/src/inner.rs".into(),
                1,
                "`std::result::Result<T, &'static str>`".into()
            ),
            ("demo/src/lib.rs".into(), 2, "`Result<(), String>`".into()),
        ]
    );
}

#[test]
fn binary_only_crates_may_return_string_errors() {
    let report = check(&[
        ("src/main.rs", "mod cli;\nfn main() {}\n"),
        (
            "src/cli.rs",
            "pub fn f() -> Result<(), String> { Ok(()) }\n",
        ),
    ]);
    assert!(broken(&report, Rule::StringError).is_empty());
}

#[test]
fn cfg_not_test_is_library_code() {
    let text = "#[cfg(not(test))]\nfn a() -> Result<(), String> { Ok(()) }\n\
                #[cfg(all(test, unix))]\nfn b() -> Result<(), String> { Ok(()) }\n\
                #[cfg(any(test, feature = \"x\"))]\nfn c() -> Result<(), String> { Ok(()) }\n";
    let source = Source::parse(text.into()).expect("parse");
    let lines: Vec<usize> = string_errors(&source.ast, &source.text)
        .iter()
        .map(|e| e.line)
        .collect();
    assert_eq!(lines, [2, 6]);
}
