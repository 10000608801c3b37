//! The takeover journal: what a process that takes over this mount's FUSE
//! connection must know that only this process decided (#16) — which slot
//! each layer has (its inode numbers' high word), which io mode the
//! kernel fixed for each open inode (and the backing id of a passthrough
//! one: ids belong to the connection and outlive us), and a generation
//! that keeps file handles of one process apart from the next one's.
//!
//! Appended one JSON line per event (one `write(2)` of an `O_APPEND` file,
//! never under a lock), each with a sequence number taken under the lock
//! that decided the event, so replay orders them even when two threads'
//! writes land out of order. An event is written before the kernel can
//! act on it (before the OPEN reply, before the layer is shown), so a
//! kill at any point leaves a journal that is right or errs on the safe
//! side (an inode kept in a mode it left). A mode ends when our last open
//! of the inode is released: the kernel has ended it already by then.
//!
//! The journal compacts itself past [`COMPACT_AT`] bytes: new events go
//! to `<path>.next` from then on, the current state is written there too,
//! and it is renamed over `<path>`; replay reads both, so a kill in the
//! middle loses nothing.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use serde::{Deserialize, Serialize};

/// Journal size past which it is rewritten as its current state.
pub const COMPACT_AT: u64 = 8 << 20;

/// The io mode the kernel fixed for an open inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum IoMode {
    /// Page-cache reads through the daemon.
    Cached,
    /// FUSE passthrough with this backing id.
    Passthrough(i32),
}

/// One journal line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Line {
    /// A process started on this connection with this generation.
    Generation { generation: u32 },
    /// Layer `name` has `slot` (`None`: removed).
    Slot {
        seq: u64,
        name: String,
        slot: Option<u32>,
    },
    /// Inode `ino` is in `mode` (`None`: no longer open).
    Mode {
        seq: u64,
        ino: u64,
        mode: Option<IoMode>,
    },
}

/// What earlier processes on this connection left: the state a new one
/// starts from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inherited {
    /// Layer name → slot.
    pub slots: HashMap<String, u32>,
    /// Inode → the mode its opens (which this process never saw) hold.
    pub modes: HashMap<u64, IoMode>,
    /// The highest generation seen (0: none).
    pub generation: u32,
}

impl Inherited {
    /// The first slot no earlier process used.
    pub fn next_slot(&self) -> u32 {
        self.slots.values().max().map_or(1, |m| m + 1)
    }
}

/// Why the journal cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("takeover journal {path}: {source}")]
pub struct JournalError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// The latest value of each key, by sequence number.
#[derive(Debug, Default)]
struct State {
    slots: HashMap<String, (u64, Option<u32>)>,
    modes: HashMap<u64, (u64, Option<IoMode>)>,
    generation: u32,
}

impl State {
    fn apply(&mut self, line: Line) {
        match line {
            Line::Generation { generation } => self.generation = self.generation.max(generation),
            Line::Slot { seq, name, slot } => {
                let e = self.slots.entry(name).or_insert((0, None));
                if seq >= e.0 {
                    *e = (seq, slot);
                }
            }
            Line::Mode { seq, ino, mode } => {
                let e = self.modes.entry(ino).or_insert((0, None));
                if seq >= e.0 {
                    *e = (seq, mode);
                }
            }
        }
    }

    fn lines(&self) -> Vec<Line> {
        let mut out = vec![Line::Generation {
            generation: self.generation,
        }];
        for (name, &(seq, slot)) in &self.slots {
            if slot.is_some() {
                out.push(Line::Slot {
                    seq,
                    name: name.clone(),
                    slot,
                });
            }
        }
        for (&ino, &(seq, mode)) in &self.modes {
            if mode.is_some() {
                out.push(Line::Mode { seq, ino, mode });
            }
        }
        out
    }

    fn inherited(&self) -> Inherited {
        Inherited {
            slots: self
                .slots
                .iter()
                .filter_map(|(n, (_, s))| Some((n.clone(), (*s)?)))
                .collect(),
            modes: self
                .modes
                .iter()
                .filter_map(|(i, (_, m))| Some((*i, (*m)?)))
                .collect(),
            generation: self.generation,
        }
    }
}

/// The journal of one process.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: RwLock<Arc<File>>,
    /// The state the journal describes (a few hundred entries: layers and
    /// open inodes), for compaction.
    state: Mutex<State>,
    seq: AtomicU64,
    bytes: AtomicU64,
    compacting: AtomicBool,
    generation: u32,
}

impl Journal {
    /// Starts this process's journal at `path`. With `resume`, replays
    /// what earlier processes wrote there first and returns it; without,
    /// the mount is new and anything there is stale.
    pub fn start(path: &Path, resume: bool) -> Result<(Journal, Inherited), JournalError> {
        let err = |source| JournalError {
            path: path.to_path_buf(),
            source,
        };
        let mut state = State::default();
        if resume {
            for p in [path.to_path_buf(), next_path(path)] {
                replay(&p, &mut state).map_err(err)?;
            }
        }
        let inherited = state.inherited();
        state.generation += 1;
        let seq = state
            .slots
            .values()
            .map(|v| v.0)
            .chain(state.modes.values().map(|v| v.0))
            .max()
            .unwrap_or(0);
        let generation = state.generation;
        // A fresh file holding the state: written aside, then renamed.
        let fresh = next_path(path);
        let file = create(&fresh).map_err(err)?;
        let body = encode(&state.lines());
        (&file).write_all(&body).map_err(err)?;
        std::fs::rename(&fresh, path).map_err(err)?;
        Ok((
            Journal {
                path: path.to_path_buf(),
                file: RwLock::new(Arc::new(file)),
                state: Mutex::new(state),
                seq: AtomicU64::new(seq + 1),
                bytes: AtomicU64::new(body.len() as u64),
                compacting: AtomicBool::new(false),
                generation,
            },
            inherited,
        ))
    }

    /// This process's generation (earlier processes' are lower).
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// The next sequence number: take it under the lock that decides the
    /// event, then [`Journal::slot`] or [`Journal::mode`] outside it.
    pub fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Records layer `name`'s slot (`None`: removed).
    pub fn slot(&self, seq: u64, name: &str, slot: Option<u32>) {
        self.append(Line::Slot {
            seq,
            name: name.to_string(),
            slot,
        });
    }

    /// Records inode `ino`'s io mode (`None`: no longer open).
    pub fn mode(&self, seq: u64, ino: u64, mode: Option<IoMode>) {
        self.append(Line::Mode { seq, ino, mode });
    }

    fn append(&self, line: Line) {
        let body = encode(std::slice::from_ref(&line));
        // The state first, then the file: a compaction that swaps files
        // in between has this event either in its snapshot or in the new
        // file (see the module doc).
        self.state.lock().expect("journal state").apply(line);
        let file = self.file.read().expect("journal file").clone();
        if let Err(e) = (&*file).write_all(&body) {
            tracing::warn!(path = %self.path.display(), error = %e, "takeover journal write failed; a takeover may misjudge this inode");
        }
        let total = self.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
        if total + body.len() as u64 >= COMPACT_AT && !self.compacting.swap(true, Ordering::AcqRel)
        {
            if let Err(e) = self.compact() {
                tracing::warn!(error = %e, "compacting the takeover journal");
            }
            self.compacting.store(false, Ordering::Release);
        }
    }

    /// Rewrites the journal as its current state.
    fn compact(&self) -> Result<(), JournalError> {
        let err = |source| JournalError {
            path: self.path.clone(),
            source,
        };
        let next = next_path(&self.path);
        let file = Arc::new(create(&next).map_err(err)?);
        *self.file.write().expect("journal file") = file.clone();
        let body = encode(&self.state.lock().expect("journal state").lines());
        (&*file).write_all(&body).map_err(err)?;
        std::fs::rename(&next, &self.path).map_err(err)?;
        self.bytes.store(body.len() as u64, Ordering::Relaxed);
        tracing::debug!(bytes = body.len(), "takeover journal compacted");
        Ok(())
    }
}

fn next_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".next");
    PathBuf::from(p)
}

fn create(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        // Appends, so that two threads' lines never overwrite each other
        // (std refuses `append` together with `truncate`).
        .custom_flags(libc::O_APPEND | libc::O_CLOEXEC)
        .open(path)
}

fn encode(lines: &[Line]) -> Vec<u8> {
    let mut out = Vec::new();
    for l in lines {
        // A Line always serializes (plain strings and numbers).
        if serde_json::to_writer(&mut out, l).is_ok() {
            out.push(b'\n');
        }
    }
    out
}

/// Applies every line of `path` (absent: nothing). A line that does not
/// parse (a write cut short by a full disk) is skipped with a warning.
fn replay(path: &Path, state: &mut State) -> std::io::Result<()> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for (i, line) in std::io::BufReader::new(file).split(b'\n').enumerate() {
        let line = line?;
        match serde_json::from_slice::<Line>(&line) {
            Ok(l) => state.apply(l),
            Err(e) => {
                tracing::warn!(path = %path.display(), line = i + 1, error = %e, "skipping a takeover journal line")
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_orders_by_sequence_not_by_position() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let (j, inherited) = Journal::start(&path, true).unwrap();
        assert_eq!(inherited, Inherited::default());
        assert_eq!(j.generation(), 1);
        let (a, b, c) = (j.next_seq(), j.next_seq(), j.next_seq());
        // Written out of order: the later decision must win.
        j.mode(c, 7, None);
        j.mode(a, 7, Some(IoMode::Cached));
        j.mode(b, 9, Some(IoMode::Passthrough(3)));
        let s = j.next_seq();
        j.slot(s, "layer-a", Some(4));
        let s = j.next_seq();
        j.slot(s, "layer-b", Some(5));
        let s = j.next_seq();
        j.slot(s, "layer-b", None);
        drop(j);
        let (j2, inherited) = Journal::start(&path, true).unwrap();
        assert_eq!(j2.generation(), 2);
        assert_eq!(inherited.generation, 1);
        assert_eq!(inherited.slots, HashMap::from([("layer-a".into(), 4)]));
        assert_eq!(inherited.next_slot(), 5);
        assert_eq!(
            inherited.modes,
            HashMap::from([(9, IoMode::Passthrough(3))])
        );
        // The second process's journal starts from that state.
        drop(j2);
        let (_, again) = Journal::start(&path, true).unwrap();
        assert_eq!(again.slots, inherited.slots);
        assert_eq!(again.modes, inherited.modes);
        assert_eq!(again.generation, 2);
        // A new mount forgets it all.
        let (j, fresh) = Journal::start(&path, false).unwrap();
        assert_eq!(fresh, Inherited::default());
        assert_eq!(j.generation(), 1);
    }

    #[test]
    fn compaction_loses_nothing_and_a_torn_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let (j, _) = Journal::start(&path, false).unwrap();
        // Enough churn to compact several times; inode 1 stays open.
        let s = j.next_seq();
        j.mode(s, 1, Some(IoMode::Passthrough(1)));
        let mut n = 0u64;
        while n < 3 * COMPACT_AT / 40 {
            let s = j.next_seq();
            j.mode(s, 2 + n % 100, Some(IoMode::Cached));
            let s = j.next_seq();
            j.mode(s, 2 + n % 100, None);
            n += 1;
        }
        let s = j.next_seq();
        j.mode(s, 5000, Some(IoMode::Cached));
        assert!(std::fs::metadata(&path).unwrap().len() < COMPACT_AT);
        drop(j);
        // A write cut short at the end.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"Mode\":{\"seq\":99999999,\"ino\":1,")
            .unwrap();
        let (_, inherited) = Journal::start(&path, true).unwrap();
        assert_eq!(
            inherited.modes,
            HashMap::from([(1, IoMode::Passthrough(1)), (5000, IoMode::Cached)])
        );
    }

    #[test]
    fn a_kill_during_compaction_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let (j, _) = Journal::start(&path, false).unwrap();
        let s = j.next_seq();
        j.slot(s, "before", Some(1));
        drop(j);
        // As if the process died after swapping files, before the rename:
        // the new events are in `.next` only.
        let next = next_path(&path);
        let mut f = create(&next).unwrap();
        f.write_all(&encode(&[Line::Slot {
            seq: 10,
            name: "after".into(),
            slot: Some(2),
        }]))
        .unwrap();
        let (_, inherited) = Journal::start(&path, true).unwrap();
        assert_eq!(
            inherited.slots,
            HashMap::from([("before".into(), 1), ("after".into(), 2)])
        );
        assert!(!next.exists(), "the new journal was renamed into place");
    }
}
