//! The FUSE wire protocol, mounts, transports and the per-core loop (issue #3: not built yet).
