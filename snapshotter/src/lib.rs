//! ringstar-snapshotter: the daemon's pieces, as a library so tests and
//! benchmarks drive them directly.
//!
//! - [`layerfs`]: the FUSE filesystem of remote layers, the loader that
//!   fetches, verifies and stores their chunks, prefetch and background
//!   fetch, layer resolution.
//! - [`daemon`]: the containerd proxy snapshotter (gRPC, metadata,
//!   overlayfs and remote snapshots, config).

pub mod daemon;
pub mod faults;
pub mod image;
pub mod layerfs;
