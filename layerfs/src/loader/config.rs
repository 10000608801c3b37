//! How the loader fetches, and what it counts.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

/// How the loader fetches.
#[derive(Debug, Clone)]
pub struct LoaderConfig {
    /// A foreground miss also fetches the chunks that follow it in the
    /// blob, up to this many compressed bytes in all, and stores them:
    /// one request then serves a run of small neighbouring files (the
    /// reference gets the same from its 50 000-byte blob chunks).
    pub read_ahead: u64,
    /// While misses follow each other through the blob (a sequential
    /// reader), each doubles the read-ahead, up to this. Off by default
    /// (equal to `read_ahead`): container startups read programs and
    /// libraries through mmap, whose faults look sequential, and growing
    /// windows fetched 3-4x their working set (hellobench, gcc
    /// esgz-noopt on loopback: 67-86 MB and a 4-5 s run with 8 MiB, 28 MB
    /// and 1.5 s with 1 MiB, 22 MB and 1.1-1.4 s with it off). Whole-layer
    /// readers (layer-bench's cold read) gain from 8 MiB, and get it
    /// without this once proven (`planner::STREAM_PROOF`).
    pub max_read_ahead: u64,
    /// When a miss fetches a file's first chunk and it is an ELF program
    /// or library or a script, fetch what executing it opens next (its
    /// loader, libraries, interpreter) and its code, all at once, instead
    /// of one round trip per file as the loader gets to each (#17).
    pub predict: bool,
    /// Record which chunks a container of an image reads first, in this
    /// directory, and fetch them in that order when the image next
    /// starts cold (`crate::starts`). None: neither.
    pub start_records: Option<std::path::PathBuf>,
    pub background: BackgroundConfig,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        LoaderConfig {
            read_ahead: 128 << 10,
            max_read_ahead: 128 << 10,
            predict: true,
            start_records: None,
            background: BackgroundConfig::default(),
        }
    }
}

/// Background fetch settings.
#[derive(Debug, Clone)]
pub struct BackgroundConfig {
    pub enabled: bool,
    /// Compressed bytes per background request.
    pub window: u64,
    /// Background waits until no foreground fetch ran for this long.
    pub idle: Duration,
    /// Cap on background bytes per second (0: none).
    pub bytes_per_sec: u64,
}

impl Default for BackgroundConfig {
    fn default() -> Self {
        BackgroundConfig {
            enabled: true,
            window: 4 << 20,
            idle: Duration::from_secs(2),
            bytes_per_sec: 0,
        }
    }
}

/// Counters for tests, logs and the debug CLI.
#[derive(Debug, Default)]
pub struct LoaderStats {
    pub fetches: AtomicU64,
    pub fetched_bytes: AtomicU64,
    pub joined: AtomicU64,
    pub failures: AtomicU64,
    pub background_fetches: AtomicU64,
}
