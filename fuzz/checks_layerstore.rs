// The `image_layers` fuzz target's checks, shared with
// layerstore/tests/fuzz_regressions.rs (included, not a module of its own).

/// A registry's manifest and config as the additional layer store reads
/// them (input: manifest, a NUL, config): the layers paired with their
/// DiffIDs, each layer's entry under every verification policy, its
/// `info` JSON decoding back to itself. Errors are fine; a panic is not.
pub fn image_layers(data: &[u8]) -> bool {
    use ringstar_layerstore::catalog::{Verification, image_layers, layer_entry};
    use ringstar_layerstore::info::LayerInfo;
    let (manifest, config) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(layers) = image_layers(manifest, config) else {
        return false;
    };
    for (desc, diff_id) in &layers {
        for (disable, allow_missing) in [(false, false), (false, true), (true, false)] {
            let v = Verification {
                disable,
                allow_missing,
            };
            let Ok(entry) = layer_entry("127.0.0.1:5000/fuzz:1", desc, *diff_id, v) else {
                continue;
            };
            assert_eq!(entry.digest, desc.digest);
            assert!(!disable || entry.toc_digest.is_none());
            let json = entry.info.to_json();
            let back: LayerInfo = serde_json::from_slice(&json).expect("info decodes");
            assert_eq!(back, entry.info);
        }
    }
    true
}
