//! The benchmark's images and their variants: `org` (plain gzip, what a
//! normal pull gets), `esgz-noopt` (eStargz by ringstar's writer, nothing
//! prioritized) and `esgz` (the files the workload reads first, then
//! `.prefetch.landmark`). The prioritized files are recorded by running
//! the workload once in a chroot of the image under strace.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context as _;
use ringstar_core::writer::WriterOptions;
use ringstar_image::{Image, ImageStore, LayerFormat, RunConfig, build_image, push_image};
use ringstar_testkit::images::busybox_layers;

use crate::rootfs::{self, fresh_overlay_dirs, mount_overlay, resolve_in_root, sh, umount_below};

pub const VARIANTS: &[&str] = &["org", "esgz-noopt", "esgz"];

/// One benchmark image.
#[derive(Debug, Clone)]
pub struct Spec {
    pub name: &'static str,
    pub cmd: Vec<String>,
    /// What the workload's output must contain.
    pub expect: &'static str,
}

pub fn spec(name: &str) -> anyhow::Result<Spec> {
    let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    Ok(match name {
        "busybox" => Spec {
            name: "busybox",
            cmd: s(&["sh", "-c", "echo hello"]),
            expect: "hello",
        },
        "minbase" => Spec {
            name: "minbase",
            cmd: s(&["sh", "-c", "echo hello"]),
            expect: "hello",
        },
        "python3" => Spec {
            name: "python3",
            cmd: s(&["python3", "-c", "print(\"hello\")"]),
            expect: "hello",
        },
        "gcc" => Spec {
            name: "gcc",
            cmd: s(&[
                "sh",
                "-c",
                "cd /tmp && gcc -o hello /src/hello.c && ./hello",
            ]),
            expect: "hello",
        },
        "node" => Spec {
            name: "node",
            cmd: s(&["node", "-e", "console.log(\"hello\")"]),
            expect: "hello",
        },
        other => anyhow::bail!("no image {other:?} (busybox, minbase, python3, gcc, node)"),
    })
}

/// The image's layer directories (base first), built once into `cache`.
fn layer_dirs(cache: &Path, name: &str) -> anyhow::Result<Vec<PathBuf>> {
    let base = rootfs::build_base(cache, "bookworm", &debian_mirror())?;
    Ok(match name {
        "minbase" => vec![base],
        "python3" => vec![
            base.clone(),
            rootfs::build_app(cache, &base, "python3", &["python3"])?,
        ],
        "node" => vec![
            base.clone(),
            rootfs::build_app(cache, &base, "node", &["nodejs"])?,
        ],
        "gcc" => {
            let app = rootfs::build_app(cache, &base, "gcc", &["gcc", "libc6-dev"])?;
            let src = cache.join("rootfs/gcc-src");
            std::fs::create_dir_all(src.join("src"))?;
            std::fs::write(
                src.join("src/hello.c"),
                "#include <stdio.h>\nint main(void) { printf(\"hello\\n\"); return 0; }\n",
            )?;
            vec![base, app, src]
        }
        other => anyhow::bail!("no layer dirs for {other}"),
    })
}

/// The mirror apt on this machine uses (debootstrap needs one).
fn debian_mirror() -> String {
    let sources = std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default()
        + &std::fs::read_dir("/etc/apt/sources.list.d")
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                    .collect::<String>()
            })
            .unwrap_or_default();
    sources
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(str::split_whitespace)
        .find(|w| {
            (w.starts_with("http://") || w.starts_with("https://"))
                && w.contains("debian")
                && !w.contains("security")
        })
        .unwrap_or("http://deb.debian.org/debian")
        .trim_end_matches('/')
        .to_string()
}

/// The files `cmd` opens or executes when run in a chroot of `layers`
/// (base first), in first-use order, each assigned to the topmost layer
/// that has it: what the `esgz` variant puts first.
fn record_prioritized(
    layers: &[PathBuf],
    spec: &Spec,
    scratch: &Path,
) -> anyhow::Result<Vec<Vec<String>>> {
    if !Path::new("/usr/bin/strace").exists() {
        anyhow::bail!("strace is needed to record the workload's files (apt-get install strace)");
    }
    let (upper, work, merged) = (
        scratch.join("upper"),
        scratch.join("work"),
        scratch.join("merged"),
    );
    fresh_overlay_dirs(&upper, &work, &merged)?;
    let lower: Vec<&Path> = layers.iter().rev().map(PathBuf::as_path).collect();
    mount_overlay(&lower, &upper, &work, &merged)?;
    let trace = scratch.join("trace");
    let out = trace_workload(&merged, &trace, spec);
    let result = out.and_then(|out| {
        anyhow::ensure!(
            out.contains(spec.expect),
            "the workload printed {out:?} in the chroot"
        );
        let text = std::fs::read_to_string(&trace)?;
        Ok(files_per_layer(&text, &merged, layers))
    });
    umount_below(&merged);
    let _ = std::fs::remove_dir_all(scratch);
    result
}

/// Runs the workload in a chroot of `merged` under strace, which writes
/// the files it opens and executes to `trace`; its output.
fn trace_workload(merged: &Path, trace: &Path, spec: &Spec) -> anyhow::Result<String> {
    std::fs::create_dir_all(merged.join("proc"))?;
    std::fs::create_dir_all(merged.join("tmp"))?;
    sh(Command::new("mount")
        .args(["-t", "proc", "proc"])
        .arg(merged.join("proc")))?;
    sh(Command::new("strace")
        .args(["-f", "-qq", "-e", "trace=open,openat,execve,execveat", "-o"])
        .arg(trace)
        .arg("chroot")
        .arg(merged)
        .args([
            "env",
            "-i",
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME=/root",
        ])
        .args(&spec.cmd))
}

/// The files a strace `text` shows opened or executed successfully,
/// resolved inside `merged`, first use first, per topmost layer holding
/// each as a regular file.
fn files_per_layer(text: &str, merged: &Path, layers: &[PathBuf]) -> Vec<Vec<String>> {
    let mut seen = BTreeSet::new();
    let mut per_layer = vec![Vec::new(); layers.len()];
    for path in text.lines().filter_map(traced_path) {
        let Some(rel) = resolve_in_root(merged, path) else {
            continue;
        };
        if !seen.insert(rel.clone()) {
            continue;
        }
        // The topmost layer holding it as a regular file.
        if let Some(i) = (0..layers.len()).rev().find(|&i| {
            std::fs::symlink_metadata(layers[i].join(&rel)).is_ok_and(|m| m.file_type().is_file())
        }) {
            per_layer[i].push(rel.display().to_string());
        }
    }
    per_layer
}

/// The absolute path a strace line's call succeeded on, if it did.
fn traced_path(line: &str) -> Option<&str> {
    let start = line.find('"')?;
    let rest = &line[start + 1..];
    let end = rest.find('"')?;
    let path = &rest[..end];
    let ok = line
        .rsplit_once(" = ")
        .is_some_and(|(_, r)| !r.trim_start().starts_with('-'));
    (ok && path.starts_with('/')).then_some(path)
}

/// An image's variants, built and pushed to `registry` as
/// `bench/<name>:<variant>` unless the cache says they already are.
#[derive(Debug)]
pub struct Pushed {
    pub layers: usize,
    /// Layer blob digests per variant (the registry's log is read for
    /// requests of these).
    pub digests: HashMap<String, Vec<String>>,
    pub sizes: HashMap<String, u64>,
}

pub fn prepare(
    cache: &Path,
    registry: &str,
    spec: &Spec,
    variants: &[String],
) -> anyhow::Result<Pushed> {
    let marker = cache.join(format!("pushed-{}.json", spec.name));
    if let Some(pushed) = Pushed::cached(&marker, variants)? {
        return Ok(pushed);
    }
    let layers = LayerTars::of(cache, spec, variants)?;
    let run = RunConfig {
        cmd: spec.cmd.clone(),
        ..RunConfig::default()
    };
    let mut digests = HashMap::new();
    let mut sizes = HashMap::new();
    for variant in variants {
        eprintln!("hellobench: {}: building and pushing :{variant}", spec.name);
        let image = layers.image(variant, &run)?;
        let fetcher = ringstar_fetcher::Fetcher::new(Default::default())?;
        let store = ImageStore::repository(&fetcher, registry, &format!("bench/{}", spec.name));
        push_image(&store, &image, variant)
            .with_context(|| format!("pushing {}:{variant}", spec.name))?;
        digests.insert(
            variant.clone(),
            image.layers.iter().map(|l| l.digest.to_string()).collect(),
        );
        sizes.insert(
            variant.clone(),
            image.layers.iter().map(|l| l.blob.len() as u64).sum(),
        );
    }
    let pushed = Pushed {
        layers: layers.tars.len(),
        digests,
        sizes,
    };
    pushed.save(&marker)?;
    Ok(pushed)
}

impl Pushed {
    /// What `marker` records as pushed, if it has every one of `variants`.
    fn cached(marker: &Path, variants: &[String]) -> anyhow::Result<Option<Pushed>> {
        let Ok(b) = std::fs::read(marker) else {
            return Ok(None);
        };
        let v: serde_json::Value = serde_json::from_slice(&b)?;
        let digests: HashMap<String, Vec<String>> = serde_json::from_value(v["digests"].clone())?;
        if !variants.iter().all(|x| digests.contains_key(x)) {
            return Ok(None);
        }
        Ok(Some(Pushed {
            layers: v["layers"].as_u64().unwrap_or(0) as usize,
            sizes: serde_json::from_value(v["sizes"].clone())?,
            digests,
        }))
    }

    /// Records in `marker` what was pushed.
    fn save(&self, marker: &Path) -> anyhow::Result<()> {
        std::fs::write(
            marker,
            serde_json::to_vec(&serde_json::json!({
                "layers": self.layers,
                "digests": self.digests,
                "sizes": self.sizes,
            }))?,
        )?;
        Ok(())
    }
}

/// An image's layers as tars (base first), with the files each puts
/// first in the `esgz` variant.
struct LayerTars {
    tars: Vec<Vec<u8>>,
    prioritized: Vec<Vec<String>>,
}

impl LayerTars {
    /// The layers of `spec`'s image: busybox's made here, the others'
    /// built from Debian into `cache` (their files recorded when
    /// `variants` has `esgz`).
    fn of(cache: &Path, spec: &Spec, variants: &[String]) -> anyhow::Result<LayerTars> {
        if spec.name == "busybox" {
            let tars = busybox_layers(Path::new("/bin/busybox"))?;
            let n = tars.len();
            let mut prioritized = vec![Vec::new(); n];
            prioritized[0] = vec!["bin/busybox".to_string()];
            return Ok(LayerTars { tars, prioritized });
        }
        let dirs = layer_dirs(cache, spec.name)?;
        eprintln!("hellobench: {}: recording the workload's files", spec.name);
        let prioritized = if variants.iter().any(|v| v == "esgz") {
            let p = record_prioritized(&dirs, spec, &cache.join(format!("record-{}", spec.name)))?;
            eprintln!(
                "hellobench: {}: the workload reads {:?} files per layer",
                spec.name,
                p.iter().map(Vec::len).collect::<Vec<_>>()
            );
            p
        } else {
            vec![Vec::new(); dirs.len()]
        };
        eprintln!("hellobench: {}: writing layer tars", spec.name);
        let tars = dirs
            .iter()
            .map(|d| rootfs::tar_of_dir(d))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(LayerTars { tars, prioritized })
    }

    /// The image of `variant` (see the module's documentation).
    fn image(&self, variant: &str, run: &RunConfig) -> anyhow::Result<Image> {
        Ok(match variant {
            "org" => build_image(&self.tars, &LayerFormat::Gzip, run)?,
            "esgz-noopt" => build_image(
                &self.tars,
                &LayerFormat::Estargz(WriterOptions::default()),
                run,
            )?,
            "esgz" => {
                // Each layer has its own prioritized files.
                let mut layers = Vec::new();
                for (i, t) in self.tars.iter().enumerate() {
                    let opts = WriterOptions {
                        prioritized: self.prioritized[i].clone(),
                        allow_missing_prioritized: true,
                        ..WriterOptions::default()
                    };
                    layers.push(ringstar_image::build_layer(
                        i,
                        t,
                        &LayerFormat::Estargz(opts),
                    )?);
                }
                ringstar_image::assemble(layers, run)
            }
            other => anyhow::bail!("no variant {other:?} (org, esgz-noopt, esgz)"),
        })
    }
}
