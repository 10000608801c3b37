//! Prometheus metrics, gathered at each scrape from the counters the
//! parts keep (nothing is counted twice, and an idle daemon does no
//! work for them). Names follow the reference's where it measures the
//! same thing and its name passes `promtool check metrics` (the layer
//! sizes, as gauges: the reference declares them counters without
//! `_total`); the rest are `ringstar_*`, in base units.
//!
//! | metric | labels | from |
//! |---|---|---|
//! | `ringstar_fuse_requests_total` | operation | every FUSE request |
//! | `ringstar_fuse_operation_duration_seconds` | operation | time to answer or defer |
//! | `stargz_fs_layer_fetched_size_bytes` | digest, mountpoint | as the reference's |
//! | `stargz_fs_layer_prefetch_size_bytes` | digest, mountpoint | as the reference's |
//! | `stargz_fs_layer_size_bytes` | digest, mountpoint | as the reference's |
//! | `ringstar_layer_fetched_percent` | digest, mountpoint | the state file's `fetchedPercent` |
//! | `ringstar_layer_{prefetch,background_fetch}_duration_seconds` | | each layer's, once done |
//! | `ringstar_layer_reads_total` | | READs the daemon answered |
//! | `ringstar_loader_*_total` | | chunk fetches, bytes, failures |
//! | `ringstar_loader_in_flight` | | chunks being fetched now |
//! | `ringstar_registry_{requests,bytes,errors}_total` | host | every HTTP request |
//! | `ringstar_store_{bytes,capacity_bytes,files}` | | the content store |
//! | `ringstar_store_evictions_total` | | entries evicted |
//! | `ringstar_layers_unpacked` | | complete layers unpacked for new overlays |

use std::sync::atomic::Ordering;

use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};

use std::sync::Arc;

use ringstar_layerfs::RemoteLayer;

use crate::remote::Remote;

/// Buckets of the fetch durations (seconds): the reference's, from
/// 1 ms to 16 s, doubling.
const SECONDS_BUCKETS: [f64; 15] = [
    0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096,
    8.192, 16.384,
];

/// The metrics text (Prometheus text format 0.0.4).
pub fn render(remote: &Remote) -> String {
    let families = gather(remote);
    let mut out = String::new();
    if let Err(e) = prometheus::TextEncoder::new().encode_utf8(&families, &mut out) {
        tracing::warn!(error = %e, "encoding the metrics");
    }
    out
}

/// Every family, from the parts' counters now.
pub fn gather(remote: &Remote) -> Vec<MetricFamily> {
    let mut out = fuse_families(remote);
    out.extend(layer_families(remote));
    out.extend(loader_families(remote));
    out.extend(registry_families(remote));
    out.extend(store_families(remote));
    out.retain(|f| !f.get_metric().is_empty());
    out
}

fn fuse_families(remote: &Remote) -> Vec<MetricFamily> {
    let ops = remote.fuse_ops();
    let counts = ops
        .iter()
        .map(|o| counter(&[("operation", o.name)], o.count as f64))
        .collect();
    let latency = ops
        .iter()
        .filter(|o| o.timed > 0)
        .map(|o| histogram(&[("operation", o.name)], o.timed, o.sum_seconds, &o.buckets))
        .collect();
    vec![
        family(
            "ringstar_fuse_requests_total",
            "FUSE requests served, by operation.",
            MetricType::COUNTER,
            counts,
        ),
        family(
            "ringstar_fuse_operation_duration_seconds",
            "Time the daemon took to answer a FUSE request, or to hand a read that misses to the loader, by operation.",
            MetricType::HISTOGRAM,
            latency,
        ),
    ]
}

type Pick = dyn Fn(&RemoteLayer) -> Option<(u64, std::time::Duration)>;

/// One histogram over the layers known now: each finished prefetch (or
/// background fetch, as `pick` says) is one observation.
fn fetch_durations(layers: &[Arc<RemoteLayer>], pick: &Pick) -> Vec<Metric> {
    let secs: Vec<f64> = layers
        .iter()
        .filter_map(|l| pick(l).map(|(_, t)| t.as_secs_f64()))
        .collect();
    let buckets: Vec<(f64, u64)> = SECONDS_BUCKETS
        .iter()
        .map(|&b| (b, secs.iter().filter(|&&s| s <= b).count() as u64))
        .collect();
    vec![histogram(
        &[],
        secs.len() as u64,
        secs.iter().sum(),
        &buckets,
    )]
}

fn layer_families(remote: &Remote) -> Vec<MetricFamily> {
    let mountpoint = remote.mountpoint().display().to_string();
    let layers: Vec<_> = remote
        .layers()
        .into_iter()
        .filter_map(|v| v.layer)
        .collect();
    let per_layer = |f: &dyn Fn(&RemoteLayer) -> f64| -> Vec<Metric> {
        layers
            .iter()
            .map(|l| {
                let digest = l.digest.to_string();
                gauge(&[("digest", &digest), ("mountpoint", &mountpoint)], f(l))
            })
            .collect()
    };
    let prefetched = |l: &RemoteLayer| l.prefetch_record().map_or(0, |(b, _)| b) as f64;
    vec![
        family(
            "stargz_fs_layer_fetched_size_bytes",
            "Total fetched size of the layer",
            MetricType::GAUGE,
            per_layer(&|l| l.fetched_size() as f64),
        ),
        family(
            "stargz_fs_layer_prefetch_size_bytes",
            "Total prefetched size of the layer",
            MetricType::GAUGE,
            per_layer(&prefetched),
        ),
        family(
            "stargz_fs_layer_size_bytes",
            "Total size of the layer",
            MetricType::GAUGE,
            per_layer(&|l| l.blob_size as f64),
        ),
        family(
            "ringstar_layer_fetched_percent",
            "The state file's fetchedPercent: 100 once every file of the layer is stored.",
            MetricType::GAUGE,
            per_layer(&|l| l.fetched_percent()),
        ),
        family(
            "ringstar_layer_prefetch_duration_seconds",
            "How long each layer's prefetch took (the layers in the daemon now).",
            MetricType::HISTOGRAM,
            fetch_durations(&layers, &|l| l.prefetch_record()),
        ),
        family(
            "ringstar_layer_background_fetch_duration_seconds",
            "How long each layer's background fetch took (the layers in the daemon now).",
            MetricType::HISTOGRAM,
            fetch_durations(&layers, &|l| l.background_record()),
        ),
    ]
}

fn loader_families(remote: &Remote) -> Vec<MetricFamily> {
    let stats = &remote.fs().loader().stats;
    let one = |name: &str, help: &str, v: u64| {
        family(
            name,
            help,
            MetricType::COUNTER,
            vec![counter(&[], v as f64)],
        )
    };
    vec![
        one(
            "ringstar_layer_reads_total",
            "READ requests of layer files the daemon answered (passthrough reads never reach it).",
            remote.fs().reads_served(),
        ),
        one(
            "ringstar_loader_fetches_total",
            "Chunk fetches from registries.",
            stats.fetches.load(Ordering::Relaxed),
        ),
        one(
            "ringstar_loader_fetched_bytes_total",
            "Compressed bytes the loader fetched.",
            stats.fetched_bytes.load(Ordering::Relaxed),
        ),
        one(
            "ringstar_loader_failures_total",
            "Chunk fetches that failed (the read got EIO).",
            stats.failures.load(Ordering::Relaxed),
        ),
        family(
            "ringstar_loader_in_flight",
            "Chunks being fetched and inflated now.",
            MetricType::GAUGE,
            vec![gauge(&[], remote.fs().loader().in_flight().len() as f64)],
        ),
    ]
}

fn registry_families(remote: &Remote) -> Vec<MetricFamily> {
    let hosts = remote.fetcher().host_stats();
    let by_host = |f: &dyn Fn(&ringstar_fetcher::HostStats) -> u64| -> Vec<Metric> {
        hosts
            .iter()
            .map(|(h, s)| counter(&[("host", h)], f(s) as f64))
            .collect()
    };
    vec![
        family(
            "ringstar_registry_requests_total",
            "HTTP requests to registries and blob storage, by host.",
            MetricType::COUNTER,
            by_host(&|s| s.requests),
        ),
        family(
            "ringstar_registry_bytes_total",
            "Body bytes registries announced (Content-Length), by host.",
            MetricType::COUNTER,
            by_host(&|s| s.bytes),
        ),
        family(
            "ringstar_registry_errors_total",
            "Requests that failed (connection, TLS, or a status of 400 or more), by host.",
            MetricType::COUNTER,
            by_host(&|s| s.errors),
        ),
    ]
}

fn store_families(remote: &Remote) -> Vec<MetricFamily> {
    let u = remote.fs().loader().store.usage();
    vec![
        family(
            "ringstar_store_bytes",
            "Bytes of file contents in the store.",
            MetricType::GAUGE,
            vec![gauge(&[], u.bytes as f64)],
        ),
        family(
            "ringstar_store_capacity_bytes",
            "The store's bound (ringstar.store_size).",
            MetricType::GAUGE,
            vec![gauge(&[], u.capacity as f64)],
        ),
        family(
            "ringstar_store_files",
            "Files in the store.",
            MetricType::GAUGE,
            vec![gauge(&[], u.files as f64)],
        ),
        family(
            "ringstar_store_evictions_total",
            "Store entries evicted to stay within the bound.",
            MetricType::COUNTER,
            vec![counter(&[], u.evictions as f64)],
        ),
        family(
            "ringstar_layers_unpacked",
            "Complete layers unpacked under ROOT/unpacked, read by new containers without FUSE.",
            MetricType::GAUGE,
            vec![gauge(&[], remote.unpacked_count() as f64)],
        ),
    ]
}

fn family(name: &str, help: &str, kind: MetricType, metrics: Vec<Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_string());
    f.set_help(help.to_string());
    f.set_field_type(kind);
    f.set_metric(metrics);
    f
}

fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(k, v)| {
            let mut l = LabelPair::default();
            l.set_name((*k).to_string());
            l.set_value((*v).to_string());
            l
        })
        .collect()
}

fn counter(pairs: &[(&str, &str)], v: f64) -> Metric {
    let mut c = Counter::default();
    c.set_value(v);
    let mut m = Metric::default();
    m.set_label(labels(pairs));
    m.set_counter(c);
    m
}

fn gauge(pairs: &[(&str, &str)], v: f64) -> Metric {
    let mut g = Gauge::default();
    g.set_value(v);
    let mut m = Metric::default();
    m.set_label(labels(pairs));
    m.set_gauge(g);
    m
}

/// A histogram of `count` observations summing to `sum`, from
/// cumulative `(upper bound, count)` buckets (+Inf last, left out: the
/// encoder writes it from the count).
fn histogram(pairs: &[(&str, &str)], count: u64, sum: f64, buckets: &[(f64, u64)]) -> Metric {
    let mut h = Histogram::default();
    h.set_sample_count(count);
    h.set_sample_sum(sum);
    h.set_bucket(
        buckets
            .iter()
            .filter(|(le, _)| le.is_finite())
            .map(|&(le, n)| {
                let mut b = Bucket::default();
                b.set_upper_bound(le);
                b.set_cumulative_count(n);
                b
            })
            .collect(),
    );
    let mut m = Metric::default();
    m.set_label(labels(pairs));
    m.set_histogram(h);
    m
}
