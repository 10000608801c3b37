//! FUSE operation latency of any daemon, seen from the kernel: the
//! `fuse:fuse_request_send` and `fuse:fuse_request_end` tracepoints
//! (Linux 6.15+). A request's latency is from the moment the kernel
//! queued it to its reply, so it includes the time it waited for a
//! daemon thread, which is what a daemon's own timers cannot see and
//! what a node starting many containers feels. The same measure for
//! ringstar and the peer: neither daemon is asked anything.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde::Serialize;

const TRACEFS: &str = "/sys/kernel/tracing";
const EVENTS: [&str; 2] = ["fuse_request_send", "fuse_request_end"];
/// Per-CPU trace buffer: ~100 bytes an event, so room for ~300k events a
/// CPU, more than 50 containers of the largest image make.
const BUFFER_KB: u32 = 32 << 10;

/// One operation's latencies over a sample, in microseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct OpLatency {
    pub count: usize,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

/// The latencies of every operation a sample's FUSE connections saw.
#[derive(Debug, Clone, Default)]
pub struct Latencies {
    /// Per operation name (`LOOKUP`, `READ`, ...), every request's
    /// microseconds.
    pub by_op: BTreeMap<String, Vec<f64>>,
    /// Events the trace buffer dropped (a sample with any is suspect).
    pub lost: u64,
}

impl Latencies {
    /// Count and percentiles per operation.
    pub fn summary(&self) -> BTreeMap<String, OpLatency> {
        self.by_op
            .iter()
            .map(|(op, v)| (op.clone(), percentiles(v)))
            .collect()
    }

    pub fn merge(&mut self, other: &Latencies) {
        for (op, v) in &other.by_op {
            self.by_op.entry(op.clone()).or_default().extend(v);
        }
        self.lost += other.lost;
    }
}

/// Count, p50, p99 and max of `v` (microseconds).
pub fn percentiles(v: &[f64]) -> OpLatency {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| {
        if s.is_empty() {
            return 0.0;
        }
        s[((s.len() - 1) as f64 * q).round() as usize]
    };
    OpLatency {
        count: s.len(),
        p50_us: at(0.5),
        p99_us: at(0.99),
        max_us: at(1.0),
    }
}

/// The two FUSE tracepoints, recording from [`FuseTrace::start`] to
/// [`FuseTrace::finish`]. One at a time per machine (tracefs is global).
#[derive(Debug)]
pub struct FuseTrace {
    dir: PathBuf,
}

impl FuseTrace {
    /// Clears the trace buffer and turns the FUSE request events on.
    pub fn start() -> anyhow::Result<FuseTrace> {
        let dir = PathBuf::from(TRACEFS);
        if !dir.join("events").exists() {
            let _ = std::process::Command::new("mount")
                .args(["-t", "tracefs", "nodev", TRACEFS])
                .status();
        }
        if !dir.join("events/fuse/fuse_request_send").exists() {
            bail!(
                "{TRACEFS}/events/fuse has no fuse_request_send (Linux 6.15+ and tracefs needed)"
            );
        }
        let t = FuseTrace { dir };
        t.write("tracing_on", "0")?;
        t.write("buffer_size_kb", &BUFFER_KB.to_string())?;
        t.write("trace", "")?;
        for e in EVENTS {
            t.write(&format!("events/fuse/{e}/enable"), "1")?;
        }
        t.write("tracing_on", "1")?;
        Ok(t)
    }

    fn write(&self, file: &str, value: &str) -> anyhow::Result<()> {
        std::fs::write(self.dir.join(file), value)
            .with_context(|| format!("writing {value:?} to {TRACEFS}/{file}"))
    }

    /// Stops recording and returns the latencies of requests on the
    /// `connections` (FUSE device numbers, see [`fuse_connections_below`]).
    pub fn finish(self, connections: &HashSet<u32>) -> anyhow::Result<Latencies> {
        self.write("tracing_on", "0")?;
        let text = std::fs::read_to_string(self.dir.join("trace"))
            .with_context(|| format!("reading {TRACEFS}/trace"))?;
        // The events go off, and the buffer is cleared, as `self` drops.
        let mut lat = parse(&text, connections);
        lat.lost += overruns(&text);
        Ok(lat)
    }

    fn off(&self) -> anyhow::Result<()> {
        for e in EVENTS {
            self.write(&format!("events/fuse/{e}/enable"), "0")?;
        }
        self.write("trace", "")
    }
}

impl Drop for FuseTrace {
    fn drop(&mut self) {
        let _ = self.off();
    }
}

/// Events lost on every CPU, from the trace's header
/// ("entries-in-buffer/entries-written: A/B").
fn overruns(text: &str) -> u64 {
    text.lines()
        .take(10)
        .find_map(|l| l.split("entries-in-buffer/entries-written:").nth(1))
        .and_then(|rest| {
            let pair = rest.split_whitespace().next()?;
            let (a, b) = pair.split_once('/')?;
            Some(b.parse::<u64>().ok()?.saturating_sub(a.parse().ok()?))
        })
        .unwrap_or(0)
}

/// Pairs each request's send with its end, by connection and unique.
fn parse(text: &str, connections: &HashSet<u32>) -> Latencies {
    let mut sent: HashMap<(u32, u64), (f64, String)> = HashMap::new();
    let mut lat = Latencies::default();
    for line in text.lines() {
        let Some(ev) = Event::parse(line) else {
            continue;
        };
        if !connections.contains(&ev.connection) {
            continue;
        }
        match ev.op {
            Some(op) => {
                sent.insert((ev.connection, ev.unique), (ev.time_s, op));
            }
            None => {
                if let Some((t0, op)) = sent.remove(&(ev.connection, ev.unique)) {
                    lat.by_op
                        .entry(op)
                        .or_default()
                        .push((ev.time_s - t0) * 1e6);
                }
            }
        }
    }
    lat
}

/// One trace line of either event.
#[derive(Debug, PartialEq)]
struct Event {
    time_s: f64,
    connection: u32,
    unique: u64,
    /// The operation of a send (`LOOKUP`); `None` for an end.
    op: Option<String>,
}

impl Event {
    /// `  cat-123 [001] ..... 100.000001: fuse_request_send: connection
    /// 53 req 2 opcode 1 (FUSE_LOOKUP) len 52`
    fn parse(line: &str) -> Option<Event> {
        let (head, rest) = if let Some(i) = line.find(": fuse_request_send: ") {
            (&line[..i], &line[i + ": fuse_request_send: ".len()..])
        } else if let Some(i) = line.find(": fuse_request_end: ") {
            (&line[..i], &line[i + ": fuse_request_end: ".len()..])
        } else {
            return None;
        };
        let time_s = head.split_whitespace().last()?.parse().ok()?;
        let mut words = rest.split_whitespace();
        let mut field = |name: &str| {
            while let Some(w) = words.next() {
                if w == name {
                    return words.next();
                }
            }
            None
        };
        let connection = field("connection")?.parse().ok()?;
        let unique = field("req")?.parse().ok()?;
        let op = line.contains(": fuse_request_send: ").then(|| {
            let name = rest.split('(').nth(1).and_then(|s| s.split(')').next());
            name.unwrap_or("?").trim_start_matches("FUSE_").to_string()
        });
        Some(Event {
            time_s,
            connection,
            unique,
            op,
        })
    }
}

/// The device numbers (as the tracepoints print them) of the FUSE mounts
/// at or below `root`, from `/proc/self/mountinfo`.
pub fn fuse_connections_below(root: &Path) -> HashSet<u32> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    connections_in(&info, root)
}

fn connections_in(mountinfo: &str, root: &Path) -> HashSet<u32> {
    let mut out = HashSet::new();
    for line in mountinfo.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let Some(sep) = f.iter().position(|w| *w == "-") else {
            continue;
        };
        let (Some(dev), Some(mp), Some(fstype)) = (f.get(2), f.get(4), f.get(sep + 1)) else {
            continue;
        };
        if !fstype.starts_with("fuse") || !Path::new(mp).starts_with(root) {
            continue;
        }
        // The kernel's dev_t: major << 20 | minor.
        if let Some((ma, mi)) = dev.split_once(':')
            && let (Ok(ma), Ok(mi)) = (ma.parse::<u32>(), mi.parse::<u32>())
        {
            out.insert(ma << 20 | mi);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "# tracer: nop\n#\n# entries-in-buffer/entries-written: 5/7   #P:2\n\
  cat-123 [001] ..... 100.000100: fuse_request_send: connection 53 req 2 opcode 1 (FUSE_LOOKUP) len 52\n\
  cat-123 [001] ..... 100.000200: fuse_request_send: connection 53 req 4 opcode 15 (FUSE_READ) len 80\n\
  fuse-core0-9 [000] ..... 100.000400: fuse_request_end: connection 53 req 2 len 144 error 0\n\
  other-5 [000] ..... 100.000500: fuse_request_send: connection 60 req 2 opcode 1 (FUSE_LOOKUP) len 52\n\
  fuse-core1-9 [001] ..... 100.001200: fuse_request_end: connection 53 req 4 len 4096 error 0\n";

    #[test]
    fn pairs_sends_with_ends_on_the_given_connections() {
        let lat = parse(TRACE, &HashSet::from([53]));
        let s = lat.summary();
        assert_eq!(s.keys().collect::<Vec<_>>(), ["LOOKUP", "READ"]);
        assert_eq!(s["LOOKUP"].count, 1);
        assert!((s["LOOKUP"].p50_us - 300.0).abs() < 0.5);
        assert!((s["READ"].p99_us - 1000.0).abs() < 0.5);
        assert_eq!(overruns(TRACE), 2);
    }

    #[test]
    fn connections_come_from_fuse_mounts_below_the_root() {
        let info = "36 25 0:53 / /r/fuse rw,relatime - fuse.ringstar ringstar rw\n\
37 25 0:54 / /elsewhere rw - fuse.x x rw\n\
38 25 0:55 / /r/snapshots/1/fs rw - overlay overlay rw\n";
        assert_eq!(connections_in(info, Path::new("/r")), HashSet::from([53]));
    }

    #[test]
    fn percentiles_of_a_hundred() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let p = percentiles(&v);
        assert_eq!(
            (p.count, p.p50_us, p.p99_us, p.max_us),
            (100, 51.0, 99.0, 100.0)
        );
    }
}
