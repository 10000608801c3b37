//! The containerd calls of a pull, on a runtime of their own: every
//! request carries the namespace and the pull's lease (containerd's
//! `containerd-namespace` and `containerd-lease` headers).

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::diff_client::DiffClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::{
    ApplyRequest, CreateImageRequest, CreateRequest, DeleteRequest, Image, Info,
    UpdateImageRequest, UpdateRequest, WriteAction, WriteContentRequest,
};
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::{Code, Request, Status};
use ringstar_core::Digest;

use super::{Plan, PulledLayer, RpullOptions, chain_ids, prepare_labels};
use crate::ImageError;
use crate::media::Descriptor;
use crate::store::ImageStore;

/// How long a pull's lease keeps what it made from containerd's GC if
/// the pull dies before deleting it (containerd's own default).
const LEASE_EXPIRY: Duration = Duration::from_secs(24 * 3600);
/// Bytes per content write message.
const WRITE_PIECE: usize = 1 << 20;

fn status(what: &str, s: Status) -> ImageError {
    ImageError::Containerd(format!("{what}: {}: {}", s.code(), s.message()))
}

/// A connection to containerd, with the namespace and lease to use.
pub(super) struct Containerd {
    channel: Channel,
    namespace: String,
    lease: String,
    snapshotter: String,
}

/// A piece of a content write.
fn write_message(
    reference: &str,
    digest: &Digest,
    total: u64,
    offset: u64,
    data: &[u8],
) -> WriteContentRequest {
    WriteContentRequest {
        action: WriteAction::Write as i32,
        r#ref: reference.to_string(),
        total: total as i64,
        expected: digest.to_string(),
        offset: offset as i64,
        data: data.to_vec(),
        ..Default::default()
    }
}

/// The commit ending a content write.
fn commit_message(
    reference: &str,
    digest: &Digest,
    total: u64,
    labels: HashMap<String, String>,
) -> WriteContentRequest {
    WriteContentRequest {
        action: WriteAction::Commit as i32,
        r#ref: reference.to_string(),
        total: total as i64,
        offset: total as i64,
        expected: digest.to_string(),
        labels,
        ..Default::default()
    }
}

impl Containerd {
    /// Connects, takes a lease, runs `f`, and lets the lease go.
    pub(super) fn run<T, F, Fut>(opts: &RpullOptions, f: F) -> Result<T, ImageError>
    where
        F: FnOnce(Containerd) -> Fut,
        Fut: std::future::Future<Output = Result<T, ImageError>>,
    {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let channel = containerd_client::connect(&opts.address)
                .await
                .map_err(|e| {
                    ImageError::Containerd(format!("connecting to {}: {e}", opts.address.display()))
                })?;
            let nanos = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos();
            let c = Containerd {
                channel,
                namespace: opts.namespace.clone(),
                lease: format!("ringstar-rpull-{nanos}"),
                snapshotter: opts.snapshotter.clone(),
            };
            let expire = time::OffsetDateTime::now_utc() + LEASE_EXPIRY;
            let expire = expire
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default();
            let create = CreateRequest {
                id: c.lease.clone(),
                labels: [("containerd.io/gc.expire".to_string(), expire)].into(),
            };
            LeasesClient::new(c.channel.clone())
                .create(c.request(create, false))
                .await
                .map_err(|s| status("creating a lease", s))?;
            let (lease, channel, ns) = (c.lease.clone(), c.channel.clone(), c.namespace.clone());
            let result = f(c).await;
            let delete = DeleteRequest { id: lease, sync: false };
            let mut req = Request::new(delete);
            if let Ok(v) = ns.parse() {
                req.metadata_mut().insert("containerd-namespace", v);
            }
            if let Err(s) = LeasesClient::new(channel).delete(req).await {
                tracing::warn!(error = %s.message(), "could not delete the pull's lease (it expires)");
            }
            result
        })
    }

    /// `msg` with the namespace, and the lease when `leased`.
    fn request<T>(&self, msg: T, leased: bool) -> Request<T> {
        let mut req = Request::new(msg);
        if let Ok(v) = self.namespace.parse() {
            req.metadata_mut().insert("containerd-namespace", v);
        }
        if leased && let Ok(v) = self.lease.parse() {
            req.metadata_mut().insert("containerd-lease", v);
        }
        req
    }

    /// The pull: documents into the content store, each layer prepared
    /// (remote) or applied, the config's snapshot label, the image.
    pub(super) async fn pull(
        &self,
        src: &ImageStore,
        plan: &Plan<'_>,
    ) -> Result<Vec<PulledLayer>, ImageError> {
        self.write_documents(plan).await?;
        let chains = chain_ids(plan.diff_ids);
        let mut out = Vec::with_capacity(plan.layers.len());
        for (i, layer) in plan.layers.iter().enumerate() {
            let parent = if i == 0 {
                String::new()
            } else {
                chains[i - 1].to_string()
            };
            let remote = self.unpack_layer(src, plan, i, &parent, &chains[i]).await?;
            tracing::info!(layer = %layer.digest, chain = %chains[i], remote, "layer unpacked");
            out.push(PulledLayer {
                digest: layer.digest,
                chain_id: chains[i],
                remote,
            });
        }
        if let Some(top) = chains.last() {
            let key = format!("containerd.io/gc.ref.snapshot.{}", self.snapshotter);
            self.label_content(&plan.config.digest, &[(key, top.to_string())])
                .await?;
        }
        self.create_image(plan).await?;
        Ok(out)
    }

    /// The root (index), manifest and config, with the GC labels that
    /// keep each one's children.
    async fn write_documents(&self, plan: &Plan<'_>) -> Result<(), ImageError> {
        self.write_content(
            &format!("config-{}", plan.config.digest),
            plan.config_bytes,
            HashMap::new(),
        )
        .await?;
        let mut labels: HashMap<String, String> = HashMap::new();
        labels.insert(
            "containerd.io/gc.ref.content.config".into(),
            plan.config.digest.to_string(),
        );
        for (i, l) in plan.layers.iter().enumerate() {
            labels.insert(
                format!("containerd.io/gc.ref.content.l.{i}"),
                l.digest.to_string(),
            );
        }
        self.write_content(
            &format!("manifest-{}", plan.manifest.digest),
            &plan.manifest.bytes,
            labels,
        )
        .await?;
        if plan.root.digest != plan.manifest.digest {
            let index: serde_json::Value = serde_json::from_slice(&plan.root.bytes)?;
            let listed: Vec<Descriptor> =
                serde_json::from_value(index.get("manifests").cloned().unwrap_or_default())?;
            let labels = listed
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    (
                        format!("containerd.io/gc.ref.content.m.{i}"),
                        d.digest.to_string(),
                    )
                })
                .collect();
            self.write_content(
                &format!("index-{}", plan.root.digest),
                &plan.root.bytes,
                labels,
            )
            .await?;
        }
        Ok(())
    }

    /// Writes `data` under ingest `reference` with `labels`; content
    /// already there gets the labels.
    async fn write_content(
        &self,
        reference: &str,
        data: &[u8],
        labels: HashMap<String, String>,
    ) -> Result<(), ImageError> {
        let digest = Digest::of(data);
        let total = data.len() as u64;
        let mut msgs: Vec<WriteContentRequest> = data
            .chunks(WRITE_PIECE)
            .enumerate()
            .map(|(i, piece)| {
                write_message(reference, &digest, total, (i * WRITE_PIECE) as u64, piece)
            })
            .collect();
        msgs.push(commit_message(reference, &digest, total, labels.clone()));
        self.send_content(reference, &digest, tokio_stream::iter(msgs), labels)
            .await
    }

    /// Streams blob `digest` (`total` bytes) of `src` into the content
    /// store under `reference`, a piece at a time (never held whole),
    /// with `labels`.
    async fn stream_content(
        &self,
        src: &ImageStore,
        reference: &str,
        digest: &Digest,
        total: u64,
        labels: HashMap<String, String>,
    ) -> Result<(), ImageError> {
        let (tx, rx) = tokio::sync::mpsc::channel::<WriteContentRequest>(4);
        let (src, d, r, l) = (src.clone(), *digest, reference.to_string(), labels.clone());
        let reader = tokio::task::spawn_blocking(move || -> Result<(), ImageError> {
            use std::io::Read;
            let mut blob = src.open_blob(&d)?;
            let mut buf = vec![0u8; WRITE_PIECE];
            let mut offset = 0u64;
            loop {
                let mut n = 0;
                while n < buf.len() {
                    match blob.read(&mut buf[n..])? {
                        0 => break,
                        k => n += k,
                    }
                }
                if n == 0 {
                    break;
                }
                let msg = write_message(&r, &d, total, offset, &buf[..n]);
                if tx.blocking_send(msg).is_err() {
                    // containerd ended the write: its answer says why.
                    return Ok(());
                }
                offset += n as u64;
            }
            // Past the end only when every byte was the digest's (the
            // reader checks): then the commit.
            let _ = tx.blocking_send(commit_message(&r, &d, total, l));
            Ok(())
        });
        let sent = self
            .send_content(
                reference,
                digest,
                tokio_stream::wrappers::ReceiverStream::new(rx),
                labels,
            )
            .await;
        let read = reader
            .await
            .map_err(|e| ImageError::Containerd(format!("reading {digest}: {e}")))?;
        read.and(sent)
    }

    /// One content write of `msgs`; content already there (containerd
    /// says so) gets `labels`.
    async fn send_content(
        &self,
        reference: &str,
        digest: &Digest,
        msgs: impl tokio_stream::Stream<Item = WriteContentRequest> + Send + 'static,
        labels: HashMap<String, String>,
    ) -> Result<(), ImageError> {
        let mut content = ContentClient::new(self.channel.clone());
        match content.write(self.request(msgs, true)).await {
            Ok(resp) => {
                let mut answers = resp.into_inner();
                loop {
                    match answers.message().await {
                        Ok(Some(_)) => {}
                        Ok(None) => return Ok(()),
                        Err(s) if s.code() == Code::AlreadyExists => break,
                        Err(s) => return Err(status(&format!("writing {reference}"), s)),
                    }
                }
            }
            Err(s) if s.code() == Code::AlreadyExists => {}
            Err(s) => return Err(status(&format!("writing {reference}"), s)),
        }
        let pairs: Vec<(String, String)> = labels.into_iter().collect();
        self.label_content(digest, &pairs).await
    }

    /// Sets `labels` on content `digest`.
    async fn label_content(
        &self,
        digest: &Digest,
        labels: &[(String, String)],
    ) -> Result<(), ImageError> {
        if labels.is_empty() {
            return Ok(());
        }
        let update = UpdateRequest {
            info: Some(Info {
                digest: digest.to_string(),
                labels: labels.iter().cloned().collect(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: labels.iter().map(|(k, _)| format!("labels.{k}")).collect(),
            }),
        };
        ContentClient::new(self.channel.clone())
            .update(self.request(update, true))
            .await
            .map_err(|s| status(&format!("labelling {digest}"), s))?;
        Ok(())
    }
}

impl Containerd {
    /// Layer `i`: nothing when its snapshot exists; prepared with the
    /// remote labels, which a lazy snapshotter answers with "already
    /// exists" (true: remote); otherwise fetched, applied and committed.
    async fn unpack_layer(
        &self,
        src: &ImageStore,
        plan: &Plan<'_>,
        i: usize,
        parent: &str,
        chain: &Digest,
    ) -> Result<bool, ImageError> {
        let mut snapshots = SnapshotsClient::new(self.channel.clone());
        let stat = |key: String| StatSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            key,
        };
        match snapshots
            .stat(self.request(stat(chain.to_string()), true))
            .await
        {
            Ok(_) => return Ok(true),
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => return Err(status("stat", s)),
        }
        let labels = prepare_labels(plan.name, plan.layers, i, chain);
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
        let key = format!("extract-{nanos}-{i} {chain}");
        let prepare = PrepareSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.clone(),
            parent: parent.to_string(),
            labels: labels.clone(),
        };
        let mounts = match snapshots.prepare(self.request(prepare, true)).await {
            Ok(r) => r.into_inner().mounts,
            Err(s) if s.code() == Code::AlreadyExists => {
                snapshots
                    .stat(self.request(stat(chain.to_string()), true))
                    .await
                    .map_err(|s| status("stat after a remote prepare", s))?;
                return Ok(true);
            }
            Err(s) => {
                return Err(status(
                    &format!("preparing layer {}", plan.layers[i].digest),
                    s,
                ));
            }
        };
        let applied = self.apply(src, plan, i, mounts).await;
        let committed = match applied {
            Ok(()) => {
                let commit = CommitSnapshotRequest {
                    snapshotter: self.snapshotter.clone(),
                    name: chain.to_string(),
                    key: key.clone(),
                    labels,
                };
                match snapshots.commit(self.request(commit, true)).await {
                    Ok(_) => Ok(()),
                    Err(s) if s.code() == Code::AlreadyExists => Ok(()),
                    Err(s) => Err(status("commit", s)),
                }
            }
            Err(e) => Err(e),
        };
        if let Err(e) = committed {
            let remove = RemoveSnapshotRequest {
                snapshotter: self.snapshotter.clone(),
                key,
            };
            let _ = snapshots.remove(self.request(remove, true)).await;
            return Err(e);
        }
        Ok(false)
    }

    /// A layer the snapshotter did not mount: its blob fetched into the
    /// content store, applied by containerd's differ onto `mounts`, its
    /// DiffID checked.
    async fn apply(
        &self,
        src: &ImageStore,
        plan: &Plan<'_>,
        i: usize,
        mounts: Vec<containerd_client::types::Mount>,
    ) -> Result<(), ImageError> {
        let layer = &plan.layers[i];
        let uncompressed = [(
            "containerd.io/uncompressed".to_string(),
            plan.diff_ids[i].to_string(),
        )];
        self.stream_content(
            src,
            &format!("layer-{}", layer.digest),
            &layer.digest,
            layer.size,
            uncompressed.into_iter().collect(),
        )
        .await?;
        let desc = containerd_client::types::Descriptor {
            media_type: layer.media_type.clone(),
            digest: layer.digest.to_string(),
            size: layer.size as i64,
            annotations: layer
                .annotations
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect(),
        };
        let apply = ApplyRequest {
            diff: Some(desc),
            mounts,
            ..Default::default()
        };
        let applied = DiffClient::new(self.channel.clone())
            .apply(self.request(apply, true))
            .await
            .map_err(|s| status(&format!("applying layer {}", layer.digest), s))?
            .into_inner()
            .applied
            .map(|d| d.digest)
            .unwrap_or_default();
        if applied != plan.diff_ids[i].to_string() {
            return Err(ImageError::Invalid(format!(
                "layer {} applied as {applied}, its DiffID is {}",
                layer.digest, plan.diff_ids[i]
            )));
        }
        Ok(())
    }

    /// The image record, made or moved to this target.
    async fn create_image(&self, plan: &Plan<'_>) -> Result<(), ImageError> {
        let image = Image {
            name: plan.name.to_string(),
            target: Some(containerd_client::types::Descriptor {
                media_type: plan.root.media_type.clone(),
                digest: plan.root.digest.to_string(),
                size: plan.root.bytes.len() as i64,
                annotations: HashMap::new(),
            }),
            ..Default::default()
        };
        let mut images = ImagesClient::new(self.channel.clone());
        let create = CreateImageRequest {
            image: Some(image.clone()),
            ..Default::default()
        };
        match images.create(self.request(create, true)).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::AlreadyExists => {
                let update = UpdateImageRequest {
                    image: Some(image),
                    ..Default::default()
                };
                images
                    .update(self.request(update, true))
                    .await
                    .map_err(|s| status("updating the image", s))?;
                Ok(())
            }
            Err(s) => Err(status("creating the image", s)),
        }
    }
}
