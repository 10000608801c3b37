//! containerd's snapshots gRPC API over [`Snapshots`], through the
//! `containerd-snapshots` crate's trait. Every call runs on a blocking
//! thread: the metadata database, directory work and layer resolution
//! block, and the async threads stay free to take the next call.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use containerd_snapshots::api::types::Mount;
use containerd_snapshots::{Info, Kind as ApiKind, Snapshotter, Usage};

use crate::error::{Internal, SnapError};
use crate::metadata::Kind;
use crate::snapshots::{MountSpec, SnapshotInfo, Snapshots};

#[derive(Debug, Clone)]
pub struct Service {
    inner: Arc<Snapshots>,
}

impl Service {
    pub fn new(inner: Arc<Snapshots>) -> Service {
        Service { inner }
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Snapshots) -> Result<T, SnapError> + Send + 'static,
    ) -> Result<T, SnapError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| SnapError::from(Internal::Call(e)))?
    }
}

fn info_of(i: SnapshotInfo) -> Info {
    Info {
        kind: match i.record.kind {
            Kind::View => ApiKind::View,
            Kind::Active => ApiKind::Active,
            Kind::Committed => ApiKind::Committed,
        },
        name: i.name,
        parent: i.record.parent,
        labels: i.record.labels.into_iter().collect(),
        created_at: i.record.created,
        updated_at: i.record.updated,
    }
}

fn mounts_of(m: Vec<MountSpec>) -> Vec<Mount> {
    m.into_iter()
        .map(|m| Mount {
            r#type: m.kind,
            source: m.source,
            target: String::new(),
            options: m.options,
        })
        .collect()
}

fn labels_of(l: HashMap<String, String>) -> BTreeMap<String, String> {
    l.into_iter().collect()
}

#[containerd_snapshots::tonic::async_trait]
impl Snapshotter for Service {
    type Error = SnapError;

    async fn stat(&self, key: String) -> Result<Info, SnapError> {
        self.run(move |s| s.stat(&key)).await.map(info_of)
    }

    async fn update(&self, info: Info, fieldpaths: Option<Vec<String>>) -> Result<Info, SnapError> {
        self.run(move |s| {
            s.update(
                &info.name,
                labels_of(info.labels),
                &fieldpaths.unwrap_or_default(),
            )
        })
        .await
        .map(info_of)
    }

    async fn usage(&self, key: String) -> Result<Usage, SnapError> {
        let u = self.run(move |s| s.usage(&key)).await?;
        Ok(Usage {
            inodes: u.inodes,
            size: u.size,
        })
    }

    async fn mounts(&self, key: String) -> Result<Vec<Mount>, SnapError> {
        self.run(move |s| s.mounts(&key)).await.map(mounts_of)
    }

    async fn prepare(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, SnapError> {
        self.run(move |s| s.prepare(&key, &parent, labels_of(labels)))
            .await
            .map(mounts_of)
    }

    async fn view(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, SnapError> {
        self.run(move |s| s.view(&key, &parent, labels_of(labels)))
            .await
            .map(mounts_of)
    }

    async fn commit(
        &self,
        name: String,
        key: String,
        labels: HashMap<String, String>,
    ) -> Result<(), SnapError> {
        self.run(move |s| s.commit(&name, &key, labels_of(labels)))
            .await
    }

    async fn remove(&self, key: String) -> Result<(), SnapError> {
        self.run(move |s| s.remove(&key)).await
    }

    async fn clear(&self) -> Result<(), SnapError> {
        self.run(|s| s.cleanup()).await
    }

    type InfoStream = futures::stream::Iter<std::vec::IntoIter<Result<Info, SnapError>>>;

    async fn list(
        &self,
        _snapshotter: String,
        filters: Vec<String>,
    ) -> Result<Self::InfoStream, SnapError> {
        let infos = self.run(move |s| s.list(&filters)).await?;
        Ok(futures::stream::iter(
            infos
                .into_iter()
                .map(|i| Ok(info_of(i)))
                .collect::<Vec<_>>(),
        ))
    }
}
