//! Samples out: every sample as CSV and JSON, a summary of medians with
//! ringstar/peer and ringstar/overlayfs ratios (geomean over images), and
//! an SVG of stacked pull/create/run bars like the reference's charts.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub date: String,
    pub net: String,
    pub image: String,
    pub variant: String,
    pub snapshotter: String,
    pub rep: u32,
    pub pull_s: f64,
    pub create_s: f64,
    pub run_s: f64,
    pub total_s: f64,
    pub registry_requests: usize,
    pub registry_mbytes: f64,
    pub lazy_layers: usize,
    pub layers: usize,
    pub image_mbytes: f64,
}

pub fn write_samples(dir: &Path, samples: &[Sample]) -> anyhow::Result<()> {
    let mut csv = String::from(
        "date,net,image,variant,snapshotter,rep,pull_s,create_s,run_s,total_s,registry_requests,registry_mbytes,lazy_layers,layers,image_mbytes\n",
    );
    for s in samples {
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{},{:.3},{:.3},{:.3},{:.3},{},{:.2},{},{},{:.2}",
            s.date,
            s.net,
            s.image,
            s.variant,
            s.snapshotter,
            s.rep,
            s.pull_s,
            s.create_s,
            s.run_s,
            s.total_s,
            s.registry_requests,
            s.registry_mbytes,
            s.lazy_layers,
            s.layers,
            s.image_mbytes
        );
    }
    std::fs::write(dir.join("samples.csv"), csv)?;
    std::fs::write(
        dir.join("samples.json"),
        serde_json::to_vec_pretty(samples)?,
    )?;
    Ok(())
}

/// Seconds since the epoch, as a sample's date.
pub fn now_s() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    secs.to_string()
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn geomean(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    (v.iter().map(|x| x.ln()).sum::<f64>() / v.len() as f64).exp()
}

/// Medians of one (net, image, snapshotter, variant) cell.
#[derive(Debug, Clone, Copy)]
pub struct Cell {
    pub pull: f64,
    pub create: f64,
    pub run: f64,
    pub total: f64,
    pub requests: f64,
    pub mbytes: f64,
    pub n: usize,
}

type Key = (String, String, String, String);

pub fn cells(samples: &[Sample]) -> BTreeMap<Key, Cell> {
    let mut groups: BTreeMap<Key, Vec<&Sample>> = BTreeMap::new();
    for s in samples {
        groups
            .entry((
                s.net.clone(),
                s.image.clone(),
                s.snapshotter.clone(),
                s.variant.clone(),
            ))
            .or_default()
            .push(s);
    }
    groups
        .into_iter()
        .map(|(k, v)| {
            let m = |f: fn(&Sample) -> f64| median(v.iter().map(|s| f(s)).collect());
            (
                k,
                Cell {
                    pull: m(|s| s.pull_s),
                    create: m(|s| s.create_s),
                    run: m(|s| s.run_s),
                    total: m(|s| s.total_s),
                    requests: m(|s| s.registry_requests as f64),
                    mbytes: m(|s| s.registry_mbytes),
                    n: v.len(),
                },
            )
        })
        .collect()
}

/// The markdown summary: medians, then ratios with geomeans.
pub fn summary(samples: &[Sample]) -> String {
    let cells = cells(samples);
    let mut out = String::new();
    write_medians(&mut out, &cells);
    write_ratios(&mut out, &cells);
    out
}

/// The table of every cell's medians.
fn write_medians(out: &mut String, cells: &BTreeMap<Key, Cell>) {
    let _ = writeln!(
        out,
        "| network | image | snapshotter | variant | pull | create | run | **total** | reqs | MB | n |"
    );
    let _ = writeln!(out, "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for ((net, image, snap, variant), c) in cells {
        let _ = writeln!(
            out,
            "| {net} | {image} | {snap} | {variant} | {:.2} | {:.2} | {:.2} | **{:.2}** | {:.0} | {:.1} | {} |",
            c.pull, c.create, c.run, c.total, c.requests, c.mbytes, c.n
        );
    }
}

/// The table of ringstar's median totals over the peer's and
/// overlayfs's, per network and eStargz variant.
fn write_ratios(out: &mut String, cells: &BTreeMap<Key, Cell>) {
    let nets: Vec<String> = {
        let mut v: Vec<String> = cells.keys().map(|k| k.0.clone()).collect();
        v.dedup();
        v
    };
    let images: Vec<String> = {
        let mut v: Vec<String> = cells.keys().map(|k| k.1.clone()).collect();
        v.sort();
        v.dedup();
        v
    };
    let _ = writeln!(
        out,
        "\nRatios of median totals (lower is better for ringstar):\n"
    );
    let _ = writeln!(
        out,
        "| network | variant | image | ringstar | peer | overlayfs | ringstar/peer | ringstar/overlayfs |"
    );
    let _ = writeln!(out, "|---|---|---|---:|---:|---:|---:|---:|");
    for net in &nets {
        for variant in ["esgz-noopt", "esgz", "esgz-ctr"] {
            write_ratio_group(out, cells, net, variant, &images);
        }
    }
    write_optimizer_comparison(out, cells, &nets, &images);
}

/// The two optimizers side by side: each snapshotter's total on the
/// image `ringstar image optimize` made (`esgz`) over its total on the one
/// `ctr-remote image optimize` made (`esgz-ctr`), when both ran.
fn write_optimizer_comparison(
    out: &mut String,
    cells: &BTreeMap<Key, Cell>,
    nets: &[String],
    images: &[String],
) {
    let mut rows = Vec::new();
    for net in nets {
        for snap in ["ringstar", "peer"] {
            let mut ratios = Vec::new();
            for image in images {
                let get = |v: &str| {
                    cells
                        .get(&(net.clone(), image.clone(), snap.into(), v.into()))
                        .map(|c| c.total)
                };
                if let (Some(ours), Some(theirs)) = (get("esgz"), get("esgz-ctr")) {
                    ratios.push(ours / theirs);
                    rows.push(format!(
                        "| {net} | {snap} | {image} | {ours:.2} | {theirs:.2} | {:.2}× |",
                        ours / theirs
                    ));
                }
            }
            if !ratios.is_empty() {
                rows.push(format!(
                    "| {net} | {snap} | geomean | | | **{:.2}×** |",
                    geomean(&ratios)
                ));
            }
        }
    }
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\nOptimizers: median total on `ringstar image optimize`'s image (esgz) over \
         `ctr-remote image optimize`'s (esgz-ctr), same snapshotter:\n"
    );
    let _ = writeln!(
        out,
        "| network | snapshotter | image | esgz | esgz-ctr | esgz/esgz-ctr |"
    );
    let _ = writeln!(out, "|---|---|---|---:|---:|---:|");
    for r in rows {
        let _ = writeln!(out, "{r}");
    }
}

/// One network and variant's ratio rows, one per image, then their
/// geomeans.
fn write_ratio_group(
    out: &mut String,
    cells: &BTreeMap<Key, Cell>,
    net: &str,
    variant: &str,
    images: &[String],
) {
    let (mut vs_peer, mut vs_legacy) = (Vec::new(), Vec::new());
    for image in images {
        let get = |snap: &str, v: &str| {
            cells
                .get(&(net.into(), image.clone(), snap.into(), v.into()))
                .map(|c| c.total)
        };
        let Some(rs) = get("ringstar", variant) else {
            continue;
        };
        let peer = get("peer", variant);
        let legacy = get("overlayfs", "org");
        let fmt = |x: Option<f64>| x.map_or("-".into(), |x| format!("{x:.2}"));
        let rp = peer.map(|p| rs / p);
        let rl = legacy.map(|l| rs / l);
        if let Some(r) = rp {
            vs_peer.push(r);
        }
        if let Some(r) = rl {
            vs_legacy.push(r);
        }
        let _ = writeln!(
            out,
            "| {net} | {variant} | {image} | {rs:.2} | {} | {} | {} | {} |",
            fmt(peer),
            fmt(legacy),
            rp.map_or("-".into(), |r| format!("{r:.2}×")),
            rl.map_or("-".into(), |r| format!("{r:.2}×")),
        );
    }
    if !vs_peer.is_empty() || !vs_legacy.is_empty() {
        let g = |v: &[f64]| {
            if v.is_empty() {
                "-".to_string()
            } else {
                format!("**{:.2}×**", geomean(v))
            }
        };
        let _ = writeln!(
            out,
            "| {net} | {variant} | geomean | | | | {} | {} |",
            g(&vs_peer),
            g(&vs_legacy)
        );
    }
}

/// The chart's bar colours, bottom to top.
const COLORS: [(&str, &str); 3] = [
    ("pull", "#4e79a7"),
    ("create", "#f28e2b"),
    ("run", "#59a14f"),
];

/// Where things go on the chart, in pixels, and the value scale.
struct Chart {
    bar_w: f64,
    gap: f64,
    group_gap: f64,
    height: f64,
    top: f64,
    left: f64,
    width: f64,
    /// The value at the top of the plot.
    max: f64,
}

impl Chart {
    /// The y of value `v`.
    fn y(&self, v: f64) -> f64 {
        self.top + self.height - v / self.max * self.height
    }
}

/// The bars of one (network, image) group: label and medians.
type Groups = BTreeMap<(String, String), Vec<(String, Cell)>>;

/// Stacked pull/create/run bars, one group per (network, image).
pub fn svg(samples: &[Sample]) -> String {
    let cells = cells(samples);
    let max = cells
        .values()
        .map(|c| c.pull + c.create + c.run)
        .fold(0.1, f64::max);
    let mut groups: Groups = BTreeMap::new();
    for ((net, image, snap, variant), c) in &cells {
        groups
            .entry((net.clone(), image.clone()))
            .or_default()
            .push((format!("{snap} {variant}"), *c));
    }
    let (bar_w, gap, group_gap, height, top, left) = (22.0, 4.0, 26.0, 260.0, 30.0, 50.0);
    let width = left
        + groups
            .values()
            .map(|g| g.len() as f64 * (bar_w + gap) + group_gap)
            .sum::<f64>()
        + 160.0;
    let chart = Chart {
        bar_w,
        gap,
        group_gap,
        height,
        top,
        left,
        width,
        max,
    };
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{:.0}" font-family="sans-serif" font-size="10">"#,
        height + top + 120.0
    );
    svg_axis(&mut out, &chart);
    svg_bars(&mut out, &chart, &groups);
    svg_legend(&mut out, &chart);
    out.push_str("</svg>\n");
    out
}

/// The title and the value grid lines.
fn svg_axis(out: &mut String, c: &Chart) {
    let left = c.left;
    let _ = write!(
        out,
        r#"<text x="{left}" y="16" font-size="13">container startup (median seconds): pull / create / run</text>"#
    );
    for t in 0..=4 {
        let v = c.max * t as f64 / 4.0;
        let _ = write!(
            out,
            r##"<line x1="{left}" x2="{:.0}" y1="{:.1}" y2="{:.1}" stroke="#ddd"/><text x="{:.0}" y="{:.1}" text-anchor="end">{v:.1}</text>"##,
            c.width - 150.0,
            c.y(v),
            c.y(v),
            left - 4.0,
            c.y(v) + 3.0
        );
    }
}

/// Each group's stacked bars with their labels, then the group's name.
fn svg_bars(out: &mut String, c: &Chart, groups: &Groups) {
    let (bar_w, height, top) = (c.bar_w, c.height, c.top);
    let mut x = c.left + 10.0;
    for ((net, image), bars) in groups {
        let start = x;
        for (label, cell) in bars {
            let mut base = 0.0;
            for (i, v) in [cell.pull, cell.create, cell.run].into_iter().enumerate() {
                let _ = write!(
                    out,
                    r#"<rect x="{x:.1}" y="{:.1}" width="{bar_w}" height="{:.1}" fill="{}"><title>{net} {image} {label}: {} {v:.3} s</title></rect>"#,
                    c.y(base + v),
                    v / c.max * height,
                    COLORS[i].1,
                    COLORS[i].0
                );
                base += v;
            }
            let _ = write!(
                out,
                r#"<text transform="translate({:.1},{:.1}) rotate(60)">{label}</text>"#,
                x + 6.0,
                top + height + 8.0
            );
            x += bar_w + c.gap;
        }
        let _ = write!(
            out,
            r#"<text x="{:.1}" y="{:.1}" font-weight="bold">{image} ({})</text>"#,
            start,
            top + height + 110.0,
            net.split('-').next().unwrap_or(net)
        );
        x += c.group_gap;
    }
}

/// Which colour is which.
fn svg_legend(out: &mut String, c: &Chart) {
    for (i, (name, color)) in COLORS.iter().enumerate() {
        let ly = c.top + 14.0 * i as f64;
        let _ = write!(
            out,
            r#"<rect x="{:.0}" y="{ly:.0}" width="10" height="10" fill="{color}"/><text x="{:.0}" y="{:.0}">{name}</text>"#,
            c.width - 130.0,
            c.width - 115.0,
            ly + 9.0
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(net: &str, image: &str, snap: &str, variant: &str, total: f64) -> Sample {
        Sample {
            date: String::new(),
            net: net.into(),
            image: image.into(),
            variant: variant.into(),
            snapshotter: snap.into(),
            rep: 1,
            pull_s: total / 2.0,
            create_s: 0.0,
            run_s: total / 2.0,
            total_s: total,
            registry_requests: 3,
            registry_mbytes: 1.0,
            lazy_layers: 1,
            layers: 1,
            image_mbytes: 1.0,
        }
    }

    #[test]
    fn ratios_and_geomeans() {
        let samples = vec![
            s("lo", "a", "ringstar", "esgz", 1.0),
            s("lo", "a", "peer", "esgz", 2.0),
            s("lo", "a", "overlayfs", "org", 4.0),
            s("lo", "b", "ringstar", "esgz", 1.0),
            s("lo", "b", "peer", "esgz", 8.0),
            s("lo", "b", "overlayfs", "org", 4.0),
        ];
        let text = summary(&samples);
        assert!(
            text.contains("| lo | esgz | a | 1.00 | 2.00 | 4.00 | 0.50× | 0.25× |"),
            "{text}"
        );
        // geomean(0.5, 0.125) = 0.25
        assert!(
            text.contains("| lo | esgz | geomean | | | | **0.25×** | **0.25×** |"),
            "{text}"
        );
        assert!(svg(&samples).starts_with("<svg"));
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
    }
}
