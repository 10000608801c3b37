//! containerd configs for tests and benchmarks.

use std::path::Path;

/// A containerd config (version 2) of its own — `root`, `state` and
/// socket under `dir`, CRI and the snapshotters a test box lacks off —
/// with each `(name, socket)` of `proxies` as a snapshot proxy plugin:
/// what tests, the demo and hellobench run containerd with.
pub fn containerd_config(dir: &Path, proxies: &[(&str, &Path)]) -> String {
    let mut out = format!(
        r#"version = 2
root = "{}"
state = "{}"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{}"
"#,
        dir.join("containerd/root").display(),
        dir.join("containerd/state").display(),
        dir.join("containerd.sock").display(),
    );
    for (name, socket) in proxies {
        out.push_str(&format!(
            "[proxy_plugins.{name}]\n  type = \"snapshot\"\n  address = \"{}\"\n",
            socket.display()
        ));
    }
    out
}
