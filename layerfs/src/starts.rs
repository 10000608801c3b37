//! Start records: which chunks of which files a container of an image
//! read first, in order, kept in the daemon's state directory, so that
//! the next cold start of that image on this node (its content evicted,
//! or the store wiped) fetches them first, in that order, instead of
//! waiting for each miss (#17).
//!
//! A snapshotter never sees a container's command, so a record is keyed
//! by the image (its layers' digests, uppermost first) and holds the
//! first start's reads for [`RECORD_FOR`]. The record names layers by
//! digest and files by path, so it means the same on any node and could
//! be published next to the image (an OCI referrer) as it is.
//!
//! Reads are noted while a recording is on (an atomic check otherwise);
//! a writer thread closes recordings when their time is up and writes
//! them (temporary file, then rename), so no FUSE thread writes files.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use ringstar_core::digest::Hasher;
use ringstar_core::{Digest, NodeId};
use serde::{Deserialize, Serialize};

use crate::layer::RemoteLayer;

/// How long after its first read a start is recorded.
pub const RECORD_FOR: Duration = Duration::from_secs(10);
/// A record file bigger than this is not read (a record is a few KB).
pub const MAX_RECORD_BYTES: u64 = 4 << 20;
/// Files one record holds at most.
pub const MAX_RECORD_FILES: usize = 20_000;
/// How often the writer looks for recordings whose time is up.
const WRITER_TICK: Duration = Duration::from_millis(500);

/// What a record file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartRecord {
    pub version: u32,
    /// The image's layer digests (`sha256:…`), uppermost first.
    pub layers: Vec<String>,
    /// Files in the order of their first read.
    pub files: Vec<RecordedFile>,
}

/// One file a start read: its layer (an index into `layers`), its path
/// in that layer, and the chunks read, in the order first read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedFile {
    pub layer: usize,
    pub path: String,
    pub chunks: Vec<u32>,
}

/// The record of one image being taken.
#[derive(Debug)]
pub(crate) struct Recording {
    key: String,
    /// The image's layers by their ids in this process, uppermost first.
    layer_ids: Vec<u64>,
    /// The same layers, for their trees when the record is written.
    image: Vec<Weak<RemoteLayer>>,
    layers: Vec<String>,
    state: Mutex<RecordingState>,
}

#[derive(Debug, Default)]
struct RecordingState {
    first_read: Option<Instant>,
    files: Vec<NotedFile>,
    /// (layer index, node) → index into `files`.
    index: HashMap<(usize, NodeId), usize>,
    seen: HashSet<(usize, NodeId, u32)>,
    closed: bool,
}

/// A file read, as noted on the read path: by node, its path found only
/// when the record is written (off the FUSE threads: a path is a scan of
/// each ancestor's entries, and an image's huge directory must not slow
/// another image's reads).
#[derive(Debug)]
struct NotedFile {
    layer: usize,
    node: NodeId,
    chunks: Vec<u32>,
}

impl Recording {
    /// Notes a read of chunks `chunks` of `node` in `layer`.
    pub(crate) fn note(&self, layer: &RemoteLayer, node: NodeId, chunks: std::ops::Range<usize>) {
        let Some(li) = self.layer_ids.iter().position(|&id| id == layer.id) else {
            return;
        };
        let mut st = self.state.lock().expect("recording");
        if st.closed {
            return;
        }
        st.first_read.get_or_insert_with(Instant::now);
        for c in chunks {
            let c = c as u32;
            if !st.seen.insert((li, node, c)) {
                continue;
            }
            let at = match st.index.get(&(li, node)) {
                Some(&at) => at,
                None if st.files.len() < MAX_RECORD_FILES => {
                    st.files.push(NotedFile {
                        layer: li,
                        node,
                        chunks: Vec::new(),
                    });
                    let at = st.files.len() - 1;
                    st.index.insert((li, node), at);
                    at
                }
                None => return,
            };
            st.files[at].chunks.push(c);
        }
    }

    /// Closes the recording if its time is up: what it noted.
    fn close_if_due(&self, now: Instant) -> Option<Vec<NotedFile>> {
        let mut st = self.state.lock().expect("recording");
        let due = st
            .first_read
            .is_some_and(|t| now.duration_since(t) >= RECORD_FOR);
        if st.closed || !due {
            return None;
        }
        st.closed = true;
        Some(std::mem::take(&mut st.files))
    }

    /// The record of what was noted, files by path (layers that are gone
    /// meanwhile leave their files out).
    fn record(&self, noted: Vec<NotedFile>) -> StartRecord {
        let image: Vec<Option<Arc<RemoteLayer>>> = self.image.iter().map(Weak::upgrade).collect();
        let files = noted
            .into_iter()
            .filter_map(|f| {
                let layer = image.get(f.layer)?.as_ref()?;
                Some(RecordedFile {
                    layer: f.layer,
                    path: layer.tree().path_of(f.node),
                    chunks: f.chunks,
                })
            })
            .collect();
        StartRecord {
            version: 1,
            layers: self.layers.clone(),
            files,
        }
    }
}

/// The records of a daemon: where they are kept, and the recordings on.
#[derive(Debug)]
pub struct StartRecords {
    dir: PathBuf,
    recording: Mutex<HashMap<String, Arc<Recording>>>,
    /// The same recordings by the id of each layer they record.
    by_layer: Mutex<HashMap<u64, Arc<Recording>>>,
    /// Recordings on: the read path's cheap check.
    on: AtomicUsize,
    stopped: AtomicBool,
}

impl StartRecords {
    /// Records kept in `dir` (created), with a writer thread that lives
    /// as long as the records do.
    pub fn open(dir: &Path) -> std::io::Result<Arc<StartRecords>> {
        std::fs::create_dir_all(dir)?;
        let records = Arc::new(StartRecords {
            dir: dir.to_path_buf(),
            recording: Mutex::default(),
            by_layer: Mutex::default(),
            on: AtomicUsize::new(0),
            stopped: AtomicBool::new(false),
        });
        let weak = Arc::downgrade(&records);
        std::thread::Builder::new()
            .name("start-records".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(WRITER_TICK);
                    let Some(records) = weak.upgrade() else {
                        return;
                    };
                    if records.stopped.load(Ordering::Acquire) {
                        return;
                    }
                    records.write_due(Instant::now());
                }
            })?;
        Ok(records)
    }

    /// The key of an image: a digest of its layers' digests.
    pub fn key(layers: &[Digest]) -> String {
        let mut h = Hasher::new();
        h.update(b"ringstar start record v1");
        for d in layers {
            let s = d.to_string();
            h.update(&(s.len() as u64).to_le_bytes());
            h.update(s.as_bytes());
        }
        h.finish().hex()
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.json"))
    }

    /// The record of the image `layers` (uppermost first), if one was
    /// taken and reads back sound.
    pub fn load(&self, layers: &[Digest]) -> Option<StartRecord> {
        let names: Vec<String> = layers.iter().map(Digest::to_string).collect();
        let path = self.path(&Self::key(layers));
        let file = std::fs::File::open(&path).ok()?;
        if file.metadata().ok()?.len() > MAX_RECORD_BYTES {
            tracing::warn!(path = %path.display(), "start record too big; ignored");
            return None;
        }
        match serde_json::from_reader::<_, StartRecord>(std::io::BufReader::new(file)) {
            Ok(r) if r.version == 1 && r.layers == names && r.files.len() <= MAX_RECORD_FILES => {
                Some(r)
            }
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "unreadable start record; ignored");
                None
            }
        }
    }

    /// Starts recording the image `image` (uppermost first) unless it has
    /// a record or a recording already: its layers then note their reads.
    pub fn begin(&self, image: &[Arc<RemoteLayer>]) {
        let layers: Vec<Digest> = image.iter().map(|l| l.digest).collect();
        let key = Self::key(&layers);
        if self.path(&key).exists() {
            return;
        }
        let recording = {
            let mut on = self.recording.lock().expect("recordings");
            if on.contains_key(&key) {
                return;
            }
            let r = Arc::new(Recording {
                key: key.clone(),
                layer_ids: image.iter().map(|l| l.id).collect(),
                image: image.iter().map(Arc::downgrade).collect(),
                layers: layers.iter().map(Digest::to_string).collect(),
                state: Mutex::default(),
            });
            on.insert(key, r.clone());
            self.on.fetch_add(1, Ordering::AcqRel);
            r
        };
        let mut by_layer = self.by_layer.lock().expect("recordings");
        for id in &recording.layer_ids {
            by_layer.insert(*id, recording.clone());
        }
    }

    /// Notes a read of `[offset, offset + len)` of `node` in `layer` for
    /// the start being recorded with it, if any.
    pub fn note_read(&self, layer: &RemoteLayer, node: NodeId, offset: u64, len: u64) {
        if self.on.load(Ordering::Acquire) == 0 {
            return;
        }
        let recording = self
            .by_layer
            .lock()
            .expect("recordings")
            .get(&layer.id)
            .cloned();
        if let Some(r) = recording {
            r.note(
                layer,
                node,
                layer.tree().chunks_overlapping(node, offset, len),
            );
        }
    }

    /// Closes the recordings whose time is up and writes their records.
    fn write_due(&self, now: Instant) {
        let due: Vec<(Arc<Recording>, Vec<NotedFile>)> = {
            let mut on = self.recording.lock().expect("recordings");
            let due: Vec<_> = on
                .values()
                .filter_map(|r| r.close_if_due(now).map(|rec| (r.clone(), rec)))
                .collect();
            for (r, _) in &due {
                on.remove(&r.key);
                self.on.fetch_sub(1, Ordering::AcqRel);
            }
            due
        };
        if !due.is_empty() {
            let mut by_layer = self.by_layer.lock().expect("recordings");
            by_layer.retain(|_, r| !due.iter().any(|(d, _)| Arc::ptr_eq(r, d)));
        }
        for (recording, noted) in due {
            // Nothing read: no record, so the next start records.
            if noted.is_empty() {
                continue;
            }
            let record = recording.record(noted);
            if let Err(e) = self.write(&recording.key, &record) {
                tracing::warn!(error = %e, "could not write a start record");
            } else {
                tracing::info!(files = record.files.len(), key = %recording.key, "start recorded");
            }
        }
    }

    fn write(&self, key: &str, record: &StartRecord) -> std::io::Result<()> {
        let tmp = self.dir.join(format!(".{key}.tmp"));
        std::fs::write(&tmp, serde_json::to_vec(record)?)?;
        std::fs::rename(&tmp, self.path(key))
    }

    /// Closes every recording now and writes it (tests, shutdown).
    pub fn flush(&self) {
        let far = Instant::now() + RECORD_FOR * 2;
        for r in self.recording.lock().expect("recordings").values() {
            r.state
                .lock()
                .expect("recording")
                .first_read
                .get_or_insert_with(Instant::now);
        }
        self.write_due(far);
    }
}

impl Drop for StartRecords {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_depend_on_every_layer_and_their_order() {
        let a: Digest = format!("sha256:{}", "a".repeat(64)).parse().unwrap();
        let b: Digest = format!("sha256:{}", "b".repeat(64)).parse().unwrap();
        let ab = StartRecords::key(&[a, b]);
        assert_ne!(ab, StartRecords::key(&[b, a]));
        assert_ne!(ab, StartRecords::key(&[a]));
        assert_eq!(ab, StartRecords::key(&[a, b]));
    }

    #[test]
    fn records_read_back_and_damaged_ones_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let records = StartRecords::open(dir.path()).unwrap();
        let a: Digest = format!("sha256:{}", "a".repeat(64)).parse().unwrap();
        let record = StartRecord {
            version: 1,
            layers: vec![a.to_string()],
            files: vec![RecordedFile {
                layer: 0,
                path: "usr/bin/x".into(),
                chunks: vec![0, 2],
            }],
        };
        let key = StartRecords::key(&[a]);
        records.write(&key, &record).unwrap();
        assert_eq!(records.load(&[a]), Some(record));
        std::fs::write(records.path(&key), b"{not json").unwrap();
        assert_eq!(records.load(&[a]), None);
    }
}
