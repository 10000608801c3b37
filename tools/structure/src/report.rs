//! Printing a report: violations grouped by rule, totals, a table per crate.

use std::fmt::Write;
use std::time::Duration;

use crate::check::{Report, Rule};

/// The whole report as text.
pub fn render(report: &Report, elapsed: Duration) -> String {
    let mut out = String::new();
    for rule in Rule::ALL {
        let broken: Vec<_> = report
            .violations
            .iter()
            .filter(|v| v.rule == rule)
            .collect();
        if broken.is_empty() {
            continue;
        }
        let _ = writeln!(out, "{} ({})", rule.title(), broken.len());
        for v in broken {
            let _ = writeln!(out, "  {}:{}: {}", v.file, v.line, v.what);
            for detail in &v.details {
                let _ = writeln!(out, "      {detail}");
            }
        }
        out.push('\n');
    }
    out.push_str(&totals(report));
    out.push('\n');
    out.push_str(&table(report));
    let files: usize = report.crates.iter().map(|c| c.files).sum();
    let _ = writeln!(
        out,
        "checked {} crates, {files} files in {:.2} s",
        report.crates.len(),
        elapsed.as_secs_f64()
    );
    out
}

fn totals(report: &Report) -> String {
    let counts: Vec<String> = Rule::ALL
        .iter()
        .enumerate()
        .map(|(i, rule)| {
            let n = report.violations.iter().filter(|v| v.rule == *rule).count();
            format!("rule {}: {n}", i + 1)
        })
        .collect();
    format!(
        "{} violations ({})\n",
        report.violations.len(),
        counts.join(", ")
    )
}

fn table(report: &Report) -> String {
    let header = [
        "crate",
        "files",
        "lines",
        "fns",
        "largest file",
        "longest fn",
        "file edges",
        "violations",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for c in &report.crates {
        rows.push(vec![
            c.name.clone(),
            c.files.to_string(),
            c.lines.to_string(),
            c.functions.to_string(),
            c.largest_file.to_string(),
            c.longest_fn.to_string(),
            c.edges.to_string(),
            c.violations.to_string(),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|col| {
            rows.iter()
                .map(|r| r[col].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(col, (cell, &w))| {
                if col == 0 {
                    format!("{cell:<w$}")
                } else {
                    format!("{cell:>w$}")
                }
            })
            .collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
    }
    out
}
