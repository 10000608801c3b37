//! Running the four rules over every crate of a workspace.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::cycles::cycles;
use crate::imports::edges;
use crate::lengths::{MAX_FILE_LINES, MAX_FN_LINES, functions};
use crate::modtree::Unit;
use crate::string_errors::string_errors;
use crate::syntax::Sources;
use crate::workspace::{Crate, RootKind, display_path, find_crates};

/// The structural rules of issue #15, in report order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rule {
    FileLength,
    FnLength,
    ImportCycle,
    StringError,
}

impl Rule {
    pub const ALL: [Rule; 4] = [
        Rule::FileLength,
        Rule::FnLength,
        Rule::ImportCycle,
        Rule::StringError,
    ];

    pub fn title(self) -> String {
        match self {
            Rule::FileLength => {
                format!("rule 1: no non-test source file over {MAX_FILE_LINES} lines")
            }
            Rule::FnLength => format!("rule 2: no non-test function over {MAX_FN_LINES} lines"),
            Rule::ImportCycle => "rule 3: no import cycle between the files of a crate".into(),
            Rule::StringError => "rule 4: no Result<_, String> in library code".into(),
        }
    }
}

/// One broken rule, at `file:line`; `details` are further lines to print under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub rule: Rule,
    pub file: String,
    pub line: usize,
    pub what: String,
    pub details: Vec<String>,
}

/// What was checked in one crate, for the summary table.
#[derive(Debug, Default)]
pub struct CrateSummary {
    pub name: String,
    pub files: usize,
    pub lines: usize,
    pub functions: usize,
    pub largest_file: usize,
    pub longest_fn: usize,
    pub edges: usize,
    pub violations: usize,
}

#[derive(Debug, Default)]
pub struct Report {
    pub crates: Vec<CrateSummary>,
    pub violations: Vec<Violation>,
}

/// How a crate's source file takes part in the rules.
#[derive(Debug, Clone, Copy, Default)]
struct Role {
    /// Non-test code of some crate root (rules 1 to 3).
    checked: bool,
    /// Non-test code of the library (rule 4).
    library: bool,
}

/// Checks every crate under `root`.
pub fn check_workspace(root: &Path) -> Result<Report> {
    let mut report = Report::default();
    let mut sources = Sources::default();
    for krate in find_crates(root)? {
        let (summary, violations) = check_crate(root, &krate, &mut sources)?;
        report.crates.push(summary);
        report.violations.extend(violations);
    }
    report
        .violations
        .sort_by(|a, b| (a.rule, &a.file, a.line).cmp(&(b.rule, &b.file, b.line)));
    Ok(report)
}

fn check_crate(
    root: &Path,
    krate: &Crate,
    sources: &mut Sources,
) -> Result<(CrateSummary, Vec<Violation>)> {
    let units = krate
        .roots
        .iter()
        .map(|r| Unit::build(r, sources))
        .collect::<Result<Vec<_>>>()?;
    let roles = roles(krate, &units);
    let mut summary = CrateSummary {
        name: krate.name.clone(),
        ..CrateSummary::default()
    };
    let mut violations = Vec::new();
    for (path, role) in &roles {
        if role.checked {
            let source = sources.get(path)?;
            let file = display_path(root, path);
            check_file(&file, &source, *role, &mut summary, &mut violations);
        }
    }
    let (edge_count, cycle_violations) = import_cycles(root, &units, &roles);
    summary.edges = edge_count;
    violations.extend(cycle_violations);
    summary.violations = violations.len();
    Ok((summary, violations))
}

/// The role of each of the crate's source files: test-only files (reached
/// only through `#[cfg(test)]`) are not checked; files no root reaches are.
fn roles(krate: &Crate, units: &[Unit]) -> BTreeMap<PathBuf, Role> {
    let mut reached: HashMap<&Path, Role> = HashMap::new();
    for unit in units {
        for file in &unit.files {
            let role = reached.entry(&file.path).or_default();
            role.checked |= !file.test_only;
            role.library |= !file.test_only && unit.root.kind == RootKind::Lib;
        }
    }
    let orphan = Role {
        checked: true,
        library: krate.has_lib(),
    };
    krate
        .files
        .iter()
        .map(|path| {
            (
                path.clone(),
                reached.get(path.as_path()).copied().unwrap_or(orphan),
            )
        })
        .collect()
}

/// Rules 1, 2 and 4 on one file.
fn check_file(
    file: &str,
    source: &crate::syntax::Source,
    role: Role,
    summary: &mut CrateSummary,
    out: &mut Vec<Violation>,
) {
    summary.files += 1;
    summary.lines += source.lines;
    summary.largest_file = summary.largest_file.max(source.lines);
    let violation = |rule, line, what| Violation {
        rule,
        file: file.to_string(),
        line,
        what,
        details: Vec::new(),
    };
    if source.lines > MAX_FILE_LINES {
        out.push(violation(
            Rule::FileLength,
            1,
            format!("{} lines", source.lines),
        ));
    }
    for f in functions(&source.ast) {
        summary.functions += 1;
        summary.longest_fn = summary.longest_fn.max(f.lines());
        if f.lines() > MAX_FN_LINES {
            let what = format!(
                "fn {} is {} lines ({}-{})",
                f.name,
                f.lines(),
                f.first_line,
                f.last_line
            );
            out.push(violation(Rule::FnLength, f.first_line, what));
        }
    }
    if role.library {
        for found in string_errors(&source.ast, &source.text) {
            out.push(violation(
                Rule::StringError,
                found.line,
                format!("`{}`", found.text),
            ));
        }
    }
}

/// Rule 3 over every crate root; returns the number of distinct file edges too.
fn import_cycles(
    root: &Path,
    units: &[Unit],
    roles: &BTreeMap<PathBuf, Role>,
) -> (usize, Vec<Violation>) {
    let included =
        |file: &crate::modtree::ModFile| roles.get(&file.path).is_some_and(|r| r.checked);
    let mut all_edges = BTreeSet::new();
    let mut seen_cycles = BTreeSet::new();
    let mut out = Vec::new();
    for unit in units {
        let found = edges(unit, &included);
        let name = |i: usize| display_path(root, &unit.files[i].path);
        all_edges.extend(found.iter().map(|e| (name(e.from), name(e.to))));
        let pairs: Vec<(usize, usize)> = found.iter().map(|e| (e.from, e.to)).collect();
        for component in cycles(unit.files.len(), &pairs) {
            let mut files: Vec<String> = component.iter().map(|&i| name(i)).collect();
            files.sort();
            if !seen_cycles.insert(files.clone()) {
                continue;
            }
            let details = found
                .iter()
                .filter(|e| component.contains(&e.from) && component.contains(&e.to))
                .map(|e| {
                    let places = if e.count > 1 {
                        format!(", {} places", e.count)
                    } else {
                        String::new()
                    };
                    format!(
                        "{}:{} → {} ({}{places})",
                        name(e.from),
                        e.line,
                        name(e.to),
                        e.written
                    )
                })
                .collect();
            out.push(Violation {
                rule: Rule::ImportCycle,
                file: files[0].clone(),
                line: 1,
                what: format!("cycle {}", files.join(" ↔ ")),
                details,
            });
        }
    }
    (all_edges.len(), out)
}
