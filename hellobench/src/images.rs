//! The benchmark's images and their variants, made as a user makes them:
//! `org` (plain gzip, what a normal pull gets) is built here from Debian
//! root filesystems and pushed; `esgz-noopt` is `ringstar image convert`
//! of it, `esgz` is `ringstar image optimize` of it (the workload run
//! once under runc, the files it opens first, then `.prefetch.landmark`),
//! and `esgz-ctr` is the reference's `ctr-remote image optimize` of it,
//! to compare the two optimizers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use ringstar_image::media::Descriptor;
use ringstar_image::{ImageStore, LayerFormat, RootRef, RunConfig, build_image, push_image};
use ringstar_testkit::images::busybox_layers;

use crate::rootfs;
use crate::world::{Snap, World};

pub const VARIANTS: &[&str] = &["org", "esgz-noopt", "esgz", "esgz-ctr"];

/// How long an optimizer lets a workload run (they exit much sooner; a
/// loaded machine compiles hello.c slowly).
const OPTIMIZE_PERIOD_S: &str = "60";

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
    world: &mut World,
    cache: &Path,
    spec: &Spec,
    variants: &[String],
) -> anyhow::Result<Pushed> {
    let marker = cache.join(format!("pushed-{}.json", spec.name));
    if let Some(pushed) = Pushed::cached(&marker, variants)? {
        return Ok(pushed);
    }
    let registry = world.registry.addr.clone();
    let repo = format!("{registry}/bench/{}", spec.name);
    eprintln!("hellobench: {}: building and pushing :org", spec.name);
    let tars = layer_tars(cache, spec)?;
    let run = RunConfig {
        cmd: spec.cmd.clone(),
        ..RunConfig::default()
    };
    let image = build_image(&tars, &LayerFormat::Gzip, &run)?;
    let fetcher = ringstar_fetcher::Fetcher::new(Default::default())?;
    let store = ImageStore::repository(&fetcher, &registry, &format!("bench/{}", spec.name));
    push_image(&store, &image, "org").with_context(|| format!("pushing {repo}:org"))?;
    let org = format!("{repo}:org");
    for variant in variants.iter().filter(|v| *v != "org") {
        eprintln!("hellobench: {}: making :{variant}", spec.name);
        let target = format!("{repo}:{variant}");
        match variant.as_str() {
            "esgz-noopt" => world.ringstar_image(&["convert", "--plain-http", &org, &target])?,
            "esgz" => world.ringstar_image(&[
                "optimize",
                "--plain-http",
                "--period",
                OPTIMIZE_PERIOD_S,
                &org,
                &target,
            ])?,
            "esgz-ctr" => ctr_remote_optimize(world, &org, &target)?,
            other => anyhow::bail!("no variant {other:?} ({})", VARIANTS.join(", ")),
        };
    }
    let mut digests = HashMap::new();
    let mut sizes = HashMap::new();
    for variant in variants {
        let layers = layers_of(&store, variant)?;
        digests.insert(
            variant.clone(),
            layers.iter().map(|l| l.digest.to_string()).collect(),
        );
        sizes.insert(variant.clone(), layers.iter().map(|l| l.size).sum());
    }
    let pushed = Pushed {
        layers: tars.len(),
        digests,
        sizes,
    };
    pushed.save(&marker)?;
    Ok(pushed)
}

/// `ctr-remote image optimize` of `org` into `target`, as
/// shared/bench-env makes its `:esgz` images: pulled into a containerd of
/// its own (no lazy snapshotter), optimized with the workload of the
/// image's config, pushed.
fn ctr_remote_optimize(world: &mut World, org: &str, target: &str) -> anyhow::Result<String> {
    world.reset(Snap::Legacy, true)?;
    world.ctr_remote(&["image", "pull", "--plain-http", org])?;
    world.ctr_remote(&[
        "image",
        "optimize",
        "--oci",
        "--net-host",
        "--period",
        OPTIMIZE_PERIOD_S,
        org,
        target,
    ])?;
    let out = world.ctr_remote(&["image", "push", "--plain-http", target])?;
    world.stop();
    Ok(out)
}

/// The layers of `variant` as the registry holds it (this machine's
/// platform, for an index).
fn layers_of(store: &ImageStore, variant: &str) -> anyhow::Result<Vec<Descriptor>> {
    let root = store.root(&RootRef::Tag(variant.to_string()))?;
    let doc = ringstar_image::platform::manifest_for(
        store,
        &root,
        &ringstar_image::platform::host_platform(),
    )?;
    let manifest: serde_json::Value = serde_json::from_slice(&doc.bytes)?;
    Ok(serde_json::from_value(manifest["layers"].clone())?)
}

/// An image's layers as tars (base first): busybox's made here, the
/// others' built from Debian into `cache`.
fn layer_tars(cache: &Path, spec: &Spec) -> anyhow::Result<Vec<Vec<u8>>> {
    if spec.name == "busybox" {
        return Ok(busybox_layers(Path::new("/bin/busybox"))?);
    }
    let dirs = layer_dirs(cache, spec.name)?;
    eprintln!("hellobench: {}: writing layer tars", spec.name);
    dirs.iter().map(|d| rootfs::tar_of_dir(d)).collect()
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
