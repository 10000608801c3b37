use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::sync::{Arc, Barrier, mpsc};
use std::time::Duration;

use super::files::parse_name;
use super::*;

fn file(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn chunks_of(data: &[u8], size: usize) -> Vec<StoreChunk> {
    data.chunks(size)
        .enumerate()
        .map(|(i, c)| StoreChunk {
            offset: (i * size) as u64,
            len: c.len() as u64,
            digest: Digest::of(c),
        })
        .collect()
}

fn key_of(data: &[u8], chunks: &[StoreChunk]) -> FileKey {
    FileKey::new(Digest::of(data), data.len() as u64, chunks).unwrap()
}

/// Puts chunk `c` of `data`, verified, under `key`.
fn put(store: &Store, key: &FileKey, c: &StoreChunk, data: &[u8]) {
    let part = &data[c.offset as usize..(c.offset + c.len) as usize];
    store.put(key, c.verify(part).unwrap()).unwrap();
}

fn read_all(store: &Store, key: &FileKey, chunks: &[StoreChunk]) -> Result<Vec<u8>, Vec<usize>> {
    let mut buf = vec![0u8; key.size() as usize];
    store.read(key, chunks, 0, &mut buf).map(|()| buf)
}

#[test]
fn chunks_become_a_complete_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 1 << 30).unwrap();
    let data = file(10_000, 1);
    let chunks = chunks_of(&data, 3000);
    let key = key_of(&data, &chunks);
    let mut buf = vec![0u8; 100];
    assert_eq!(store.read(&key, &chunks, 0, &mut buf), Err(vec![0]));
    put(&store, &key, &chunks[1], &data);
    // A read inside chunk 1 hits; one that crosses into chunk 2 misses
    // only chunk 2.
    assert_eq!(store.read(&key, &chunks, 3500, &mut buf), Ok(()));
    assert_eq!(&buf[..], &data[3500..3600]);
    assert_eq!(store.read(&key, &chunks, 5950, &mut buf), Err(vec![2]));
    for (i, c) in chunks.iter().enumerate() {
        if i != 1 {
            put(&store, &key, c, &data);
        }
    }
    assert!(store.is_complete(key.content()));
    let names = |d: &str| fs::read_dir(dir.path().join(d)).unwrap().count();
    assert_eq!((names("complete"), names("partial")), (1, 0));
    assert_eq!(read_all(&store, &key, &chunks).unwrap(), data);
    // Another layer cutting the same file differently reads it too.
    let other = chunks_of(&data, 4096);
    let other_key = key_of(&data, &other);
    store.read(&other_key, &other, 4000, &mut buf).unwrap();
    assert_eq!(&buf[..], &data[4000..4100]);
    let mut f = store.open_complete(key.content(), 10_000).unwrap();
    let mut back = Vec::new();
    std::io::Read::read_to_end(&mut f, &mut back).unwrap();
    assert_eq!(back, data);
    assert_eq!(store.usage().bytes, 10_000);
}

#[test]
fn a_layout_must_tile_its_file() {
    let data = file(8000, 9);
    let chunks = chunks_of(&data, 4000);
    let d = Digest::of(&data);
    assert!(FileKey::new(d, 8000, &chunks).is_some());
    assert!(
        FileKey::new(d, 8000, &chunks[..1]).is_none(),
        "a gap at the end"
    );
    assert!(
        FileKey::new(d, 8000, &[chunks[1], chunks[0]]).is_none(),
        "out of order"
    );
    let mut overlapping = chunks.clone();
    overlapping[1].offset = 3000;
    assert!(FileKey::new(d, 8000, &overlapping).is_none());
    let mut empty = chunks.clone();
    empty.insert(
        1,
        StoreChunk {
            offset: 4000,
            len: 0,
            digest: Digest::empty(),
        },
    );
    assert!(FileKey::new(d, 8000, &empty).is_none());
    assert!(FileKey::new(Digest::empty(), 0, &[]).is_some());
}

#[test]
fn only_verified_bytes_go_in() {
    let data = file(4000, 5);
    let chunks = chunks_of(&data, 4000);
    assert!(chunks[0].verify(&data).is_some());
    let mut wrong = data.clone();
    wrong[7] ^= 1;
    assert!(chunks[0].verify(&wrong).is_none());
    assert!(chunks[0].verify(&data[..3999]).is_none());
}

#[test]
fn a_chunk_is_served_only_to_readers_expecting_its_digest() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 1 << 30).unwrap();
    let data = file(8000, 2);
    let chunks = chunks_of(&data, 4000);
    let key = key_of(&data, &chunks);
    put(&store, &key, &chunks[0], &data);
    // A layer that claims the same file digest but other chunk bytes.
    let mut lying = chunks.clone();
    lying[0].digest = Digest::of(b"something else");
    let lying_key = FileKey::new(*key.content(), 8000, &lying).unwrap();
    let mut buf = vec![0u8; 10];
    assert_eq!(store.read(&lying_key, &lying, 0, &mut buf), Err(vec![0]));
    assert!(!store.has_chunk(&lying_key, &lying[0]));
    // And a file whose chunks verify but whose whole is not its name
    // never becomes complete.
    let fake_key = FileKey::new(Digest::of(b"claimed"), 8000, &chunks).unwrap();
    put(&store, &fake_key, &chunks[0], &data);
    put(&store, &fake_key, &chunks[1], &data);
    assert!(!store.is_complete(fake_key.content()));
    store.read(&fake_key, &chunks, 7990, &mut buf).unwrap();
    assert_eq!(&buf[..], &data[7990..]);
}

/// The attack on the shared store (#14): a layer claims a popular
/// file's digest and size with chunking of its own, one chunk over
/// the victim's two, and writes its bytes. With partial files keyed by
/// content alone, those bytes landed on the span the victim's record
/// still called verified, and the victim's next read served them.
#[test]
fn a_layer_cannot_change_bytes_another_layer_reads_as_verified() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 1 << 30).unwrap();
    let victim = file(8000, 3);
    let victim_chunks = chunks_of(&victim, 4000);
    let victim_key = key_of(&victim, &victim_chunks);
    put(&store, &victim_key, &victim_chunks[0], &victim);
    let evil = vec![0x90u8; 8000];
    let evil_chunks = chunks_of(&evil, 8000);
    let evil_key = FileKey::new(*victim_key.content(), 8000, &evil_chunks).unwrap();
    put(&store, &evil_key, &evil_chunks[0], &evil);
    // The attacker's file is covered but not what its name says.
    assert!(!store.is_complete(victim_key.content()));
    let mut buf = vec![0u8; 4000];
    store
        .read(&victim_key, &victim_chunks, 0, &mut buf)
        .unwrap();
    assert_eq!(buf, victim[..4000]);
    // The victim's file completes with its own bytes, and then every
    // layout reads those.
    put(&store, &victim_key, &victim_chunks[1], &victim);
    assert!(store.is_complete(victim_key.content()));
    assert_eq!(
        read_all(&store, &victim_key, &victim_chunks).unwrap(),
        victim
    );
    assert_eq!(read_all(&store, &evil_key, &evil_chunks).unwrap(), victim);
    drop(store);
    let store = Store::open(dir.path(), 1 << 30).unwrap();
    assert_eq!(
        read_all(&store, &victim_key, &victim_chunks).unwrap(),
        victim
    );
}

/// Readers, writers of two layouts (one lying) and evictions at
/// once: every read that succeeds returns the victim's bytes, and
/// every complete file hashes to its name, also after a restart.
/// (Before, a read could copy from a file recreated by a put after an
/// eviction, and a put could write after a promotion had hashed.)
#[test]
fn concurrent_puts_reads_and_evictions_never_serve_wrong_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<Vec<u8>> = (0..6).map(|i| file(64 << 10, 40 + i)).collect();
    // Room for about three files: evictions all the time.
    let store = Arc::new(Store::open(dir.path(), 200 << 10).unwrap());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut threads = Vec::new();
    for t in 0..4u64 {
        let (store, files, stop) = (store.clone(), files.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let mut reads = 0u64;
            let mut n = t;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n = n
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let data = &files[(n >> 33) as usize % files.len()];
                let chunks = chunks_of(data, 16 << 10);
                let key = key_of(data, &chunks);
                if t % 2 == 0 {
                    // A liar: the same content digest, its own chunking.
                    let evil = vec![t as u8; data.len()];
                    let evil_chunks = chunks_of(&evil, 24 << 10);
                    let evil_key =
                        FileKey::new(*key.content(), data.len() as u64, &evil_chunks).unwrap();
                    for c in &evil_chunks {
                        put(&store, &evil_key, c, &evil);
                    }
                }
                for c in &chunks {
                    if (n >> 20) % 3 != 0 {
                        put(&store, &key, c, data);
                    }
                    let mut buf = vec![0u8; 5000];
                    let off = c.offset + (n >> 40) % (c.len - 1);
                    let want = (data.len() as u64 - off).min(5000) as usize;
                    if store.read(&key, &chunks, off, &mut buf).is_ok() {
                        assert_eq!(buf[..want], data[off as usize..off as usize + want]);
                        reads += 1;
                    }
                }
            }
            reads
        }));
    }
    std::thread::sleep(std::time::Duration::from_millis(1500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let reads: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(reads > 0, "no read found its chunks");
    assert!(store.usage().bytes <= 200 << 10, "{:?}", store.usage());
    drop(store);
    let _store = Store::open(dir.path(), 1 << 30).unwrap();
    for e in fs::read_dir(dir.path().join("complete")).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().into_string().unwrap();
        let (content, _, _) = parse_name(&name).unwrap();
        assert_eq!(Digest::of(&fs::read(e.path()).unwrap()), content, "{name}");
    }
}

#[test]
fn restarts_keep_verified_chunks_and_drop_torn_ones() {
    let dir = tempfile::tempdir().unwrap();
    let data = file(9000, 3);
    let chunks = chunks_of(&data, 3000);
    let key = key_of(&data, &chunks);
    {
        let store = Store::open(dir.path(), 1 << 30).unwrap();
        put(&store, &key, &chunks[0], &data);
        put(&store, &key, &chunks[1], &data);
    }
    // A crash that lost chunk 1's data but kept its record, and tore
    // the next record in half.
    let partial = |ext: &str| {
        fs::read_dir(dir.path().join("partial"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|x| x == ext))
            .unwrap()
    };
    File::options()
        .write(true)
        .open(partial("data"))
        .unwrap()
        .write_all_at(&[0u8; 100], 3100)
        .unwrap();
    let mut j = File::options().append(true).open(partial("idx")).unwrap();
    j.write_all(&[7u8; 20]).unwrap();
    drop(j);
    let store = Store::open(dir.path(), 1 << 30).unwrap();
    let mut buf = vec![0u8; 3000];
    store.read(&key, &chunks, 0, &mut buf).unwrap();
    assert_eq!(&buf[..], &data[..3000]);
    assert_eq!(store.read(&key, &chunks, 3000, &mut buf), Err(vec![1]));
    put(&store, &key, &chunks[1], &data);
    put(&store, &key, &chunks[2], &data);
    assert!(store.is_complete(key.content()));
    drop(store);
    // Complete files come back complete.
    let store = Store::open(dir.path(), 1 << 30).unwrap();
    assert!(store.is_complete(key.content()));
    assert_eq!(read_all(&store, &key, &chunks).unwrap(), data);
}

/// The one file in the store's `complete/`.
fn the_complete_file(store: &std::path::Path) -> std::path::PathBuf {
    let mut files = fs::read_dir(store.join("complete")).unwrap();
    let path = files.next().unwrap().unwrap().path();
    assert!(files.next().is_none());
    path
}

#[test]
fn a_truncated_cache_file_is_absent() {
    let dir = tempfile::tempdir().unwrap();
    let data = file(5000, 4);
    let chunks = chunks_of(&data, 5000);
    let key = key_of(&data, &chunks);
    {
        let store = Store::open(dir.path(), 1 << 30).unwrap();
        put(&store, &key, &chunks[0], &data);
        assert!(store.is_complete(key.content()));
    }
    let path = the_complete_file(dir.path());
    File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(100)
        .unwrap();
    let store = Store::open(dir.path(), 1 << 30).unwrap();
    let mut buf = vec![0u8; 10];
    assert_eq!(store.read(&key, &chunks, 0, &mut buf), Err(vec![0]));
    assert!(store.open_complete(key.content(), 5000).is_none());
    // Refetched, it is whole again.
    put(&store, &key, &chunks[0], &data);
    assert!(store.is_complete(key.content()));
    store.read(&key, &chunks, 0, &mut buf).unwrap();
    assert_eq!(&buf[..], &data[..10]);
    assert!(!path.exists(), "the damaged file is gone");
    assert_eq!(store.usage().bytes, 5000);
}

#[test]
fn eviction_keeps_the_bound_and_spares_open_files() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 25_000).unwrap();
    let files: Vec<Vec<u8>> = (0..5).map(|i| file(10_000, 10 + i)).collect();
    let chunks: Vec<Vec<StoreChunk>> = files.iter().map(|f| chunks_of(f, 10_000)).collect();
    let keys: Vec<FileKey> = files
        .iter()
        .zip(&chunks)
        .map(|(f, c)| key_of(f, c))
        .collect();
    put(&store, &keys[0], &chunks[0][0], &files[0]);
    store.pin(keys[0].content());
    for i in 1..5 {
        put(&store, &keys[i], &chunks[i][0], &files[i]);
        assert!(store.usage().bytes <= 25_000, "{:?}", store.usage());
    }
    assert!(
        store.is_complete(keys[0].content()),
        "an open file was evicted"
    );
    assert!(store.is_complete(keys[4].content()));
    assert!(!store.is_complete(keys[1].content()) && !store.is_complete(keys[2].content()));
    assert_eq!(
        fs::read_dir(dir.path().join("complete")).unwrap().count(),
        2
    );
    store.unpin(keys[0].content());
    drop(store);
    // The bound holds across restarts with a smaller capacity.
    let store = Store::open(dir.path(), 10_000).unwrap();
    assert_eq!(store.usage().files, 1);
    assert!(store.is_complete(keys[4].content()), "the newest stays");
}

#[test]
fn one_process_at_a_time_and_private_dirs() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    fs::create_dir_all(root.join("complete")).unwrap();
    fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(root.join("complete"), fs::Permissions::from_mode(0o777)).unwrap();
    let store = Store::open(&root, 1 << 20).unwrap();
    for d in ["", "complete", "partial"] {
        let mode = fs::metadata(root.join(d)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "{d:?}");
    }
    assert!(matches!(
        Store::open(&root, 1 << 20),
        Err(StoreError::Locked(_))
    ));
    drop(store);
    Store::open(&root, 1 << 20).unwrap();
}

/// The fetcher's runtime thread asks `has_chunk` before every request:
/// it must not wait behind a put's file I/O (#15: the index lock was held
/// across open, ftruncate and the journal write). A put is held inside
/// its file creation; queries from another thread answer meanwhile, and a
/// second put of the same file waits for the first's files instead of
/// making its own.
#[test]
fn queries_never_wait_behind_a_puts_file_io() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), 1 << 30).unwrap());
    let data = Arc::new(file(8000, 6));
    let chunks = Arc::new(chunks_of(&data, 4000));
    let key = key_of(&data, &chunks);
    let barrier = Arc::new(Barrier::new(2));
    *store.io_pause.lock().unwrap() = Some(barrier.clone());
    let putter = |i: usize| {
        let (store, data, chunks) = (store.clone(), data.clone(), chunks.clone());
        std::thread::spawn(move || put(&store, &key, &chunks[i], &data))
    };
    let first = putter(0);
    barrier.wait(); // the first put is inside its file I/O, no lock held
    let second = putter(1);
    let (tx, rx) = mpsc::channel();
    let asking = {
        let (store, chunks) = (store.clone(), chunks.clone());
        std::thread::spawn(move || {
            let answers = (
                store.has_chunk(&key, &chunks[0]),
                store.is_complete(key.content()),
                store.usage().files,
            );
            tx.send(answers).unwrap();
        })
    };
    let answered = rx.recv_timeout(Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(50));
    barrier.wait(); // let the first put go
    first.join().unwrap();
    second.join().unwrap();
    asking.join().unwrap();
    assert_eq!(
        answered,
        Ok((false, false, 1)),
        "queries waited behind file I/O"
    );
    assert!(store.is_complete(key.content()));
    assert_eq!(read_all(&store, &key, &chunks).unwrap(), *data);
    assert_eq!(
        fs::read_dir(dir.path().join("partial")).unwrap().count(),
        0,
        "one partial file, promoted; none made twice"
    );
}

/// Promotion does not fsync: after a crash a complete file may have its
/// size but not its bytes (delayed allocation leaves zeros). It is hashed
/// before its first use in the next run, dropped, and fetched again;
/// never served, never handed to the kernel.
#[test]
fn a_complete_file_torn_by_a_crash_is_hashed_before_use_and_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let data = file(5000, 9);
    let chunks = chunks_of(&data, 2000);
    let key = key_of(&data, &chunks);
    {
        let store = Store::open(dir.path(), 1 << 30).unwrap();
        for c in &chunks {
            put(&store, &key, c, &data);
        }
        assert!(store.is_complete(key.content()));
    }
    let path = the_complete_file(dir.path());
    fs::write(&path, vec![0u8; 5000]).unwrap();
    let store = Store::open(dir.path(), 1 << 30).unwrap();
    assert!(store.open_complete(key.content(), 5000).is_none());
    assert!(!path.exists(), "the torn file is gone");
    assert_eq!(read_all(&store, &key, &chunks), Err(vec![0, 1, 2]));
    assert_eq!(store.usage().bytes, 0);
    for c in &chunks {
        put(&store, &key, c, &data);
    }
    assert_eq!(read_all(&store, &key, &chunks).unwrap(), data);
    // A good file from an earlier run is served once hashed.
    drop(store);
    let store = Store::open(dir.path(), 1 << 30).unwrap();
    assert_eq!(read_all(&store, &key, &chunks).unwrap(), data);
    assert!(store.open_complete(key.content(), 5000).is_some());
}
