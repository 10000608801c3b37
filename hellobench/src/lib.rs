//! The HelloBench startup harness: realistic images built offline from
//! Debian packages ([`rootfs`], [`images`]), a world of registry, WAN
//! proxy, containerd and snapshotters reset for every sample ([`world`]),
//! and the report ([`report`]). The `hellobench` binary drives them.

pub mod fullread;
pub mod fusetrace;
pub mod images;
pub mod report;
pub mod rootfs;
pub mod scale;
pub mod scale_report;
pub mod world;
