//! The state directory at each layer's root (snapshotter-protocol.md §6):
//! `.stargz-snapshotter/<blob digest>.json`, how much of the layer is
//! fetched and its last error.

use ringstar_core::Digest;

use crate::layer::RemoteLayer;

/// The state directory's name at each layer's root.
pub const STATE_DIR: &str = ".stargz-snapshotter";

/// The state file's name in the state directory.
pub(crate) fn state_file_name(digest: &Digest) -> String {
    format!("{digest}.json")
}

/// The state file's content.
pub(crate) fn state_json(layer: &RemoteLayer) -> Vec<u8> {
    let fetched = layer.fetched_size();
    let percent = layer.fetched_percent();
    let mut v = serde_json::Map::new();
    if let Some(e) = layer.last_error() {
        v.insert("error".into(), e.into());
    }
    v.insert("digest".into(), layer.digest.to_string().into());
    v.insert("size".into(), layer.blob_size.into());
    v.insert("fetchedSize".into(), fetched.into());
    v.insert("fetchedPercent".into(), percent.into());
    let mut out = serde_json::to_vec(&v).expect("json");
    out.push(b'\n');
    out
}

/// The state file's bytes from `offset` into `buf`; how many.
pub(crate) fn read_state_file(layer: &RemoteLayer, offset: u64, buf: &mut [u8]) -> usize {
    let json = state_json(layer);
    let from = (offset as usize).min(json.len());
    let n = (json.len() - from).min(buf.len());
    buf[..n].copy_from_slice(&json[from..from + n]);
    n
}
