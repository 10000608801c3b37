//! Puts: claim a partial file under the index lock, open or create its
//! files with the lock released (the entry marked `opening`, so other
//! puts wait for them instead of opening them again), write the chunk
//! and its journal record unlocked, then record it under the lock.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;

use super::files::{Released, remove_all};
use super::index::{Entry, Index, Partial, PartialFiles, Record, State};
use super::keys::{FileKey, StoreChunk, Verified};
use super::{Store, journal};
use crate::digest::Digest;

/// A put's hold on a partial entry: its life, data file and journal.
type Writer = (u64, PartialFiles);

/// What a put may do with a partial entry, decided under the lock.
enum Claim {
    /// Nothing to write: complete, being promoted, or the chunk is in.
    Nothing,
    /// Write through these files (counted as a writer).
    Write(Writer),
    /// Another put is opening the files: wait for it.
    Wait,
    /// Open (or, `create`, make) life `id`'s files; counted as a writer
    /// and marked `opening`.
    Open { id: u64, create: bool },
}

impl Store {
    /// Stores a verified chunk of `file`. When the file's chunks are all
    /// in, the whole file is hashed against its content digest and, if it
    /// matches, made complete.
    pub fn put(&self, file: &FileKey, chunk: Verified<'_>) -> io::Result<()> {
        let c = *chunk.chunk();
        if c.offset.checked_add(c.len).is_none_or(|e| e > file.size) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "chunk outside its file",
            ));
        }
        if c.offset == 0 && c.len == file.size && self.put_whole(file, &chunk)? {
            return Ok(());
        }
        let Some((id, (data_file, journal))) = self.writer(file, &c)? else {
            return Ok(());
        };
        let written = data_file
            .write_all_at(chunk.data(), c.offset)
            .and_then(|()| journal::append(&journal, &c));
        drop(journal);
        let promote = self.record(file, id, &c, written.is_ok());
        written?;
        if promote {
            self.promote(file, id, &data_file)?;
        }
        self.evict(Some(&file.layout));
        Ok(())
    }

    /// A chunk that is its whole file (most files: eStargz cuts files at
    /// 4 MiB) goes straight to `complete/`: one file created and written,
    /// none of the partial file, journal, rename and unlink a file of many
    /// chunks needs. Creating files is most of what storing costs (#23).
    /// A crash mid-write can leave it torn: a complete file from an earlier
    /// run is hashed before its first use. Returns false, having done
    /// nothing, when the chunk's bytes do not hash to the file's content
    /// digest (a lying TOC: the partial path keeps such a file readable by
    /// its chunk, never complete) or a partial entry of its layout exists.
    fn put_whole(&self, file: &FileKey, chunk: &Verified<'_>) -> io::Result<bool> {
        let id = {
            let mut index = self.lock();
            if index.complete(file).is_some() {
                return Ok(true);
            }
            if index.entries.contains_key(&file.layout) {
                return Ok(false);
            }
            index.new_id()
        };
        if chunk.chunk().digest != file.content && Digest::of(chunk.data()) != file.content {
            return Ok(false);
        }
        let path = self.complete_path(&file.content, id);
        self.pause_before_file_io();
        let written = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)
            .and_then(|mut f| f.write_all(chunk.data()));
        if let Err(e) = written {
            remove_all([path]);
            return Err(e);
        }
        let mut released = Released::default();
        let replaced = {
            let mut index = self.lock();
            if index.complete(file).is_some() {
                // Another put of the same content got there first.
                released.paths.push(path);
                None
            } else {
                self.install_complete(&mut index, file, id, &mut released)
            }
        };
        if let Some(old) = replaced {
            released.files.extend(self.forget_file(&file.content, old));
        }
        released.finish();
        self.evict(Some(&file.content));
        Ok(true)
    }

    /// Under the lock, after a put's write: counts the writer out, records
    /// the chunk if it was written, and says whether the file is now
    /// covered and this put is to promote it (marked `promoting`).
    fn record(&self, file: &FileKey, id: u64, c: &StoreChunk, written: bool) -> bool {
        let mut index = self.lock();
        let index = &mut *index;
        let mut charge = 0;
        let mut promote = false;
        if let Some((p, now)) = index.partial(file)
            && now == id
        {
            p.writers -= 1;
            if written {
                let record = Record {
                    digest: c.digest,
                    verified: true,
                };
                if p.records.insert((c.offset, c.len), record).is_none() {
                    charge = c.len;
                }
            }
            promote = p.writers == 0 && !p.promoting && !p.mismatched && p.covered(file.size);
            if promote {
                p.promoting = true;
            }
        }
        if let Some(e) = index.entries.get_mut(&file.layout) {
            e.charged += charge;
        }
        index.used += charge;
        index.touch(&file.layout);
        promote
    }

    /// The data file and journal of `file`'s partial entry, counted as a
    /// writer; `None` when there is nothing to write (complete, being
    /// promoted, or the chunk is in). Files are created and opened with
    /// the index unlocked.
    fn writer(&self, file: &FileKey, chunk: &StoreChunk) -> io::Result<Option<Writer>> {
        let mut index = self.lock();
        let (id, create) = loop {
            match claim(&mut index, file, chunk)? {
                Claim::Nothing => return Ok(None),
                Claim::Write(writer) => return Ok(Some(writer)),
                Claim::Wait => index = self.opened.wait(index).expect("store index"),
                Claim::Open { id, create } => break (id, create),
            }
        };
        drop(index);
        let (dp, jp) = self.partial_paths(&file.layout, id);
        self.pause_before_file_io();
        let files = if create {
            journal::create(file, &dp, &jp)
        } else {
            journal::open(&dp, &jp)
        };
        let result = self.publish(file, id, files);
        if result.is_err() && create {
            // Whatever part of them was made is nobody's (unique names).
            remove_all([dp, jp]);
        }
        result.map(Some)
    }

    /// Under the lock: hands the files the claiming put opened to the
    /// entry it marked `opening`, or on failure undoes the claim (a new
    /// entry goes), and wakes the puts waiting for them.
    fn publish(
        &self,
        file: &FileKey,
        id: u64,
        files: io::Result<PartialFiles>,
    ) -> io::Result<Writer> {
        let mut index = self.lock();
        let mut unused: Option<PartialFiles> = None;
        let result = match index.partial(file) {
            // A claimed entry is busy: never evicted nor promoted, so it is
            // still this life.
            Some((p, now)) if now == id => {
                p.opening = false;
                match files {
                    Ok(files) => Ok((id, p.files.get_or_insert(files).clone())),
                    Err(e) => {
                        p.writers -= 1;
                        if p.writers == 0 && p.records.is_empty() && p.files.is_none() {
                            // A new entry that never got files (charged
                            // nothing).
                            index.entries.remove(&file.layout);
                        }
                        Err(e)
                    }
                }
            }
            _ => {
                unused = files.ok();
                Err(io::Error::other(
                    "store entry went away while its files were opened",
                ))
            }
        };
        self.opened.notify_all();
        drop(index);
        drop(unused);
        result
    }
}

/// Decides, under the lock, what a put of `chunk` does with `file`'s
/// partial entry (making a new one, marked `opening`, when there is none).
fn claim(index: &mut Index, file: &FileKey, chunk: &StoreChunk) -> io::Result<Claim> {
    if index.complete(file).is_some() {
        return Ok(Claim::Nothing);
    }
    let taken = index.entries.contains_key(&file.layout);
    match index.partial(file) {
        Some((p, id)) => {
            let done = p
                .records
                .get(&(chunk.offset, chunk.len))
                .is_some_and(|r| r.digest == chunk.digest && r.verified);
            if p.promoting || done {
                return Ok(Claim::Nothing);
            }
            if p.opening {
                return Ok(Claim::Wait);
            }
            p.writers += 1;
            match p.files.clone() {
                Some(files) => Ok(Claim::Write((id, files))),
                None => {
                    p.opening = true;
                    Ok(Claim::Open { id, create: false })
                }
            }
        }
        None if taken => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "layout digest names another file",
        )),
        None => {
            let id = index.new_id();
            let mut partial = Partial::new(file.content);
            partial.opening = true;
            partial.writers = 1;
            index.entries.insert(
                file.layout,
                Entry {
                    id,
                    size: file.size,
                    charged: 0,
                    last_use: 0,
                    state: State::Partial(partial),
                },
            );
            Ok(Claim::Open { id, create: true })
        }
    }
}
