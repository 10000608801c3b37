//! The snapshotter proper, with containerd's semantics
//! (snapshotter-protocol.md §2–4): overlayfs snapshots in
//! `<root>/snapshots/<id>/{fs,work}`, and remote snapshots whose `fs` is a
//! layer directory of the FUSE mount. Blocking; the gRPC side runs each
//! call on a blocking thread.

use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use ringstar_layerfs::resolve::LayerSource;

pub use crate::dirs::DiskUsage;
use crate::dirs::{disk_usage, make_dirs};
use crate::error::{
    AlreadyExists, FailedPrecondition, Internal, InvalidArgument, SnapError, Unavailable,
};
use crate::filter::{Fields, Filters};
use crate::metadata::{CommitAs, Kind, Metadata, NewSnapshot, Record, RemoteRef};
use crate::remote::{self, Remote, labels};

/// A mount for containerd (`containerd.types.Mount`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    pub kind: String,
    pub source: String,
    pub options: Vec<String>,
}

/// A snapshot as containerd sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotInfo {
    pub name: String,
    pub record: Record,
}

impl Fields for SnapshotInfo {
    fn field(&self, path: &[String]) -> Option<String> {
        match path.first()?.as_str() {
            "kind" => Some(self.record.kind.as_str().into()),
            "name" => Some(self.name.clone()),
            "parent" => Some(self.record.parent.clone()),
            "labels" if path.len() > 1 => self.record.labels.get(&path[1..].join(".")).cloned(),
            _ => None,
        }
    }
}

#[derive(Debug)]
pub struct Snapshots {
    root: PathBuf,
    meta: Metadata,
    remote: Arc<Remote>,
}

impl Snapshots {
    /// Opens the metadata under `root` and starts restoring the remote
    /// layers its snapshots use. With `allow_invalid` false, a layer that
    /// cannot be restored fails the start (the reference's default).
    pub fn open(root: &Path, remote: Arc<Remote>, allow_invalid: bool) -> Result<Self, SnapError> {
        let dir = root.join("snapshots");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|cause| {
                SnapError::from(Internal::Io {
                    action: "creating",
                    path: dir.clone(),
                    cause,
                })
            })?;
        let meta = Metadata::open(&root.join("metadata.redb"))?;
        let me = Snapshots {
            root: root.to_path_buf(),
            meta,
            remote,
        };
        let restoring = me.restore();
        if !allow_invalid {
            for (name, source) in &restoring {
                me.remote.restored(source).map_err(|cause| {
                    SnapError::from(Internal::Restore {
                        snapshot: name.clone(),
                        layer: source.digest,
                        cause,
                    })
                })?;
            }
        } else if !restoring.is_empty() {
            let remote = me.remote.clone();
            std::thread::Builder::new()
                .name("restore".into())
                .spawn(move || {
                    for (name, source) in restoring {
                        match remote.restored(&source) {
                            Ok(()) => tracing::info!(snapshot = %name, layer = %source.digest, "remote snapshot restored"),
                            Err(e) => tracing::warn!(snapshot = %name, layer = %source.digest, reason = %e, "remote snapshot is invalid until its layer can be resolved"),
                        }
                    }
                })
                .map_err(|e| SnapError::from(Internal::Spawn(e)))?;
        }
        Ok(me)
    }

    /// Starts resolving every layer a stored remote snapshot uses.
    fn restore(&self) -> Vec<(String, LayerSource)> {
        let mut out = Vec::new();
        let records = match self.meta.all() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "reading snapshots to restore");
                return out;
            }
        };
        for (name, rec) in records {
            if rec.remote.is_none() {
                continue;
            }
            match self.source_of(&rec) {
                Ok(source) => {
                    self.remote.restore(source.clone());
                    out.push((name, source));
                }
                Err(e) => {
                    tracing::warn!(snapshot = %name, reason = %e, "remote snapshot cannot be restored")
                }
            }
        }
        out
    }

    fn source_of(&self, rec: &Record) -> Result<LayerSource, remote::LabelError> {
        remote::wanted(&rec.labels, self.remote.settings()).map(|w| w.source)
    }

    /// The name of a remote snapshot's layer in the mount: made from its
    /// labels (where its blob comes from and what it is), so it is the
    /// same after a restart whatever an older version recorded.
    fn layer_of(&self, rec: &Record) -> Option<String> {
        let remote = rec.remote.as_ref()?;
        Some(
            self.source_of(rec)
                .map_or_else(|_| remote.layer.clone(), |s| s.layer_name()),
        )
    }

    fn dir(&self, id: u64) -> PathBuf {
        self.root.join("snapshots").join(id.to_string())
    }

    /// Where a snapshot's files are: its `fs` dir, or its layer's
    /// directory in the FUSE mount (or unpacked, once complete).
    fn fs_path(&self, rec: &Record) -> PathBuf {
        match self.layer_of(rec) {
            Some(layer) => self.remote.lower_dir(&layer),
            None => self.dir(rec.id).join("fs"),
        }
    }

    pub fn stat(&self, key: &str) -> Result<SnapshotInfo, SnapError> {
        Ok(SnapshotInfo {
            name: key.to_string(),
            record: self.meta.stat(key)?,
        })
    }

    pub fn prepare(
        &self,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<MountSpec>, SnapError> {
        self.create(key, parent, labels, Kind::Active)
    }

    pub fn view(
        &self,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<MountSpec>, SnapError> {
        self.create(key, parent, labels, Kind::View)
    }

    fn create(
        &self,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
        kind: Kind,
    ) -> Result<Vec<MountSpec>, SnapError> {
        // The directories are made under a temporary name and renamed to
        // the id inside the transaction: a crash leaves either no record
        // and a stray directory (Cleanup removes it) or both.
        let staging = self.root.join("snapshots").join(format!(
            "new-{}-{}",
            std::process::id(),
            NEXT_STAGING.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let owner = self.parent_owner(parent);
        if let Err(e) = make_dirs(&staging, kind, owner) {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(SnapError::from(Internal::SnapshotDirs {
                action: "creating",
                key: key.to_string(),
                cause: e,
            }));
        }
        let created = self.meta.create(
            NewSnapshot {
                key,
                parent,
                kind,
                labels: labels.clone(),
            },
            |rec| {
                let dir = self.dir(rec.id);
                // An id not committed before (a crash) may have left its
                // directory: it is nobody's.
                let _ = std::fs::remove_dir_all(&dir);
                std::fs::rename(&staging, &dir).map_err(|cause| {
                    SnapError::from(Internal::SnapshotDirs {
                        action: "placing",
                        key: key.to_string(),
                        cause,
                    })
                })
            },
        );
        let rec = match created {
            Ok(r) => r,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&staging);
                return Err(e);
            }
        };
        if kind == Kind::Active
            && let Some(target) = labels.get(labels::TARGET)
            && let Some(done) = self.try_remote(key, target, &labels)?
        {
            return Err(done);
        }
        self.mounts_of(key, &rec)
    }

    /// The owner of `parent`'s root: a new layer's root is owned alike,
    /// as the overlayfs snapshotter does (a container's root may not be
    /// 0:0).
    fn parent_owner(&self, parent: &str) -> Option<(u32, u32)> {
        if parent.is_empty() {
            return None;
        }
        let p = self.meta.get(parent).ok()??;
        if p.remote.is_some()
            && let Ok(source) = self.source_of(&p)
        {
            // A restored layer may still be resolving.
            let _ = self.remote.check_one(&source);
        }
        let md = std::fs::metadata(self.fs_path(&p)).ok()?;
        Some((md.uid(), md.gid()))
    }

    /// Tries to serve the layer the labels name remotely. `Some(error)`:
    /// the answer to give (ALREADY_EXISTS: the target is committed);
    /// `None`: go on with a local snapshot (containerd pulls the layer).
    fn try_remote(
        &self,
        key: &str,
        target: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<Option<SnapError>, SnapError> {
        let exists = || {
            SnapError::AlreadyExists(AlreadyExists::Target {
                target: target.to_string(),
            })
        };
        if self.meta.get(target)?.is_some() {
            // Committed already (another namespace pulled it, or a pull
            // before): nothing to fetch.
            self.remove(key)?;
            return Ok(Some(exists()));
        }
        let wanted = match remote::wanted(labels, self.remote.settings()) {
            Ok(w) => w,
            Err(reason) => {
                tracing::info!(snapshot = %target, %reason, remote_snapshot_prepared = false, "not a remote layer; falling back to a normal pull");
                return Ok(None);
            }
        };
        let started = Instant::now();
        let layer = match self.remote.claim(&wanted) {
            Ok(l) => l,
            // A plain gzip layer is expected here, not a failure.
            Err(reason) if reason.is_not_estargz() => {
                tracing::info!(layer = %wanted.source.digest, %reason, remote_snapshot_prepared = false, "not an eStargz layer; falling back to a normal pull");
                return Ok(None);
            }
            Err(reason) => {
                tracing::warn!(layer = %wanted.source.digest, %reason, remote_snapshot_prepared = false, "remote layer unavailable; falling back to a normal pull");
                return Ok(None);
            }
        };
        let mut commit_labels = labels.clone();
        commit_labels.insert(labels::REMOTE.into(), labels::REMOTE_VALUE.into());
        match self.meta.commit(CommitAs {
            name: target,
            key,
            labels: commit_labels,
            size: 0,
            inodes: 0,
            remote: Some(RemoteRef {
                digest: wanted.source.digest,
                layer: layer.name.clone(),
            }),
        }) {
            Ok(_) => {
                tracing::info!(layer = %wanted.source.digest, snapshot = %target, ms = started.elapsed().as_millis() as u64, remote_snapshot_prepared = true, "remote snapshot prepared");
                Ok(Some(exists()))
            }
            Err(SnapError::AlreadyExists(_)) => {
                self.remove(key)?;
                Ok(Some(exists()))
            }
            Err(e) => Err(e),
        }
    }

    pub fn mounts(&self, key: &str) -> Result<Vec<MountSpec>, SnapError> {
        let rec = self.meta.stat(key)?;
        if rec.kind == Kind::Committed {
            return Err(SnapError::FailedPrecondition(
                FailedPrecondition::Committed {
                    key: key.to_string(),
                },
            ));
        }
        self.mounts_of(key, &rec)
    }

    fn mounts_of(&self, key: &str, rec: &Record) -> Result<Vec<MountSpec>, SnapError> {
        let parents = if rec.parent.is_empty() {
            Vec::new()
        } else {
            self.meta.chain(&rec.parent)?
        };
        let remote: Vec<LayerSource> = parents
            .iter()
            .filter(|(_, p)| p.remote.is_some())
            .map(|(name, p)| {
                self.source_of(p).map_err(|cause| {
                    SnapError::from(Unavailable::Labels {
                        snapshot: name.clone(),
                        cause,
                    })
                })
            })
            .collect::<Result<_, _>>()?;
        if !remote.is_empty() {
            self.remote.check(&remote).map_err(|cause| {
                SnapError::from(Unavailable::Layer {
                    snapshot: key.to_string(),
                    cause,
                })
            })?;
        }
        let dir = self.dir(rec.id);
        let ro = rec.kind == Kind::View;
        let bind = |source: PathBuf, ro: bool| MountSpec {
            kind: "bind".into(),
            source: source.display().to_string(),
            options: vec![if ro { "ro" } else { "rw" }.into(), "rbind".into()],
        };
        if parents.is_empty() {
            return Ok(vec![bind(dir.join("fs"), ro)]);
        }
        if ro && parents.len() == 1 {
            return Ok(vec![bind(self.fs_path(&parents[0].1), true)]);
        }
        let lower: Vec<String> = parents
            .iter()
            .map(|(_, p)| self.fs_path(p).display().to_string())
            .collect();
        let mut options = Vec::new();
        if !ro {
            options.push(format!("workdir={}", dir.join("work").display()));
            options.push(format!("upperdir={}", dir.join("fs").display()));
        }
        options.push(format!("lowerdir={}", lower.join(":")));
        Ok(vec![MountSpec {
            kind: "overlay".into(),
            source: "overlay".into(),
            options,
        }])
    }

    pub fn commit(
        &self,
        name: &str,
        key: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<(), SnapError> {
        let rec = self.meta.stat(key)?;
        if rec.kind != Kind::Active {
            return Err(SnapError::FailedPrecondition(
                FailedPrecondition::NotActive {
                    key: key.to_string(),
                    kind: rec.kind.as_str(),
                },
            ));
        }
        let usage = disk_usage(&self.dir(rec.id).join("fs"))
            .map_err(|cause| disk_usage_error(key, cause))?;
        self.meta.commit(CommitAs {
            name,
            key,
            labels,
            size: usage.size,
            inodes: usage.inodes,
            remote: None,
        })?;
        Ok(())
    }

    pub fn remove(&self, key: &str) -> Result<(), SnapError> {
        let rec = self.meta.remove(key)?;
        self.remove_dir(rec.id);
        if rec.remote.is_some() {
            let layer = self.layer_of(&rec);
            let still_used = self
                .meta
                .all()?
                .iter()
                .any(|(_, o)| o.remote.is_some() && self.layer_of(o) == layer);
            if !still_used && let Some(name) = layer {
                self.remote.release(&name);
            }
        }
        Ok(())
    }

    fn remove_dir(&self, id: u64) {
        let dir = self.dir(id);
        // Renamed first, so a crash mid-way leaves a dir Cleanup removes
        // rather than a half-deleted snapshot under its id.
        let doomed = self.root.join("snapshots").join(format!("rm-{id}"));
        let target = match std::fs::rename(&dir, &doomed) {
            Ok(()) => doomed,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(_) => dir,
        };
        if let Err(e) = std::fs::remove_dir_all(&target) {
            tracing::warn!(dir = %target.display(), error = %e, "removing a snapshot's directory; Cleanup retries");
        }
    }

    pub fn usage(&self, key: &str) -> Result<DiskUsage, SnapError> {
        let rec = self.meta.stat(key)?;
        if rec.kind == Kind::Active {
            return disk_usage(&self.dir(rec.id).join("fs"))
                .map_err(|cause| disk_usage_error(key, cause));
        }
        Ok(DiskUsage {
            size: rec.size,
            inodes: rec.inodes,
        })
    }

    /// Updates the labels (the only mutable part) as `paths` says:
    /// `labels` replaces them all, `labels.<key>` sets or deletes one,
    /// none replaces them all.
    pub fn update(
        &self,
        name: &str,
        new_labels: BTreeMap<String, String>,
        paths: &[String],
    ) -> Result<SnapshotInfo, SnapError> {
        for p in paths {
            if p != "labels" && !p.starts_with("labels.") {
                return Err(SnapError::InvalidArgument(InvalidArgument::Immutable {
                    path: p.clone(),
                    name: name.to_string(),
                }));
            }
        }
        let record = self.meta.update_labels(name, |labels| {
            if paths.is_empty() || paths.iter().any(|p| p == "labels") {
                *labels = new_labels.clone();
                return;
            }
            for p in paths {
                let k = &p["labels.".len()..];
                match new_labels.get(k) {
                    Some(v) => {
                        labels.insert(k.to_string(), v.clone());
                    }
                    None => {
                        labels.remove(k);
                    }
                }
            }
        })?;
        Ok(SnapshotInfo {
            name: name.to_string(),
            record,
        })
    }

    pub fn list(&self, filters: &[String]) -> Result<Vec<SnapshotInfo>, SnapError> {
        let filters = Filters::parse(filters)?;
        Ok(self
            .meta
            .all()?
            .into_iter()
            .map(|(name, record)| SnapshotInfo { name, record })
            .filter(|i| filters.matches(i))
            .collect())
    }

    /// Removes directories no snapshot owns (left by a crash or a failed
    /// removal) and layers no snapshot uses.
    pub fn cleanup(&self) -> Result<(), SnapError> {
        let all = self.meta.all()?;
        let ids: HashSet<String> = all.iter().map(|(_, r)| r.id.to_string()).collect();
        let used: Vec<String> = all.iter().filter_map(|(_, r)| self.layer_of(r)).collect();
        let dir = self.root.join("snapshots");
        let entries = std::fs::read_dir(&dir).map_err(|cause| {
            SnapError::from(Internal::Io {
                action: "reading",
                path: dir.clone(),
                cause,
            })
        })?;
        // This process's staging dirs belong to creates in flight.
        let mine = format!("new-{}-", std::process::id());
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if ids.contains(&name) || name.starts_with(&mine) {
                continue;
            }
            if let Err(e) = std::fs::remove_dir_all(entry.path()) {
                tracing::warn!(dir = %entry.path().display(), error = %e, "cleanup");
            }
        }
        self.remote.prune(&used);
        self.remote.prune_unpacked(&used);
        Ok(())
    }
}

fn disk_usage_error(key: &str, cause: std::io::Error) -> SnapError {
    SnapError::from(Internal::DiskUsage {
        key: key.to_string(),
        cause,
    })
}

static NEXT_STAGING: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
