// The fuse_request fuzz target's checks, shared (by `include!`) with
// fusedev/tests/fuzz_regressions.rs.

/// A FUSE request from the kernel side of /dev/fuse (classic framing), and
/// the same bytes split as the ring delivers them.
pub fn fuse_request(data: &[u8]) {
    let _ = ringstar_fusedev::request::decode_classic(data);
    if data.len() >= 40 {
        let (header, body) = data.split_at(40);
        if let Ok((h, _)) = <ringstar_fusedev::abi::InHeader as zerocopy::FromBytes>::read_from_prefix(header) {
            let split = body.len().min(128);
            let _ = ringstar_fusedev::request::decode(&h, &body[..split], &body[split..]);
        }
    }
}
