//! Every bound the format code puts on numbers that come from a layer, in
//! one place, each with the reason for its value. A layer that exceeds one
//! is refused with a typed error (the snapshotter then falls back to a
//! normal pull), so the bounds only need to sit above what real writers
//! produce, not to be tight.

/// Most compressed bytes one chunk's member may span (`next_offset -
/// offset`), the most one chunk read ever fetches and buffers.
///
/// What real layers need: the reference writer's default chunk is 4 MiB of
/// uncompressed data; deflate and zstd expand incompressible data by well
/// under 1 % (5 bytes per 64 KiB stored block; 3 bytes per 128 KiB raw
/// block) plus a few header bytes; the member of a file's last chunk also
/// holds the 512-byte-per-entry headers of the non-regular entries that
/// follow it (tens of bytes each once compressed). 32 MiB leaves room for
/// chunk sizes up to 16 MiB and for ~100 000 trailing headers, and is what
/// the layer filesystem may size its fetch windows by.
pub const MAX_CHUNK_SPAN: u64 = 32 << 20;

/// Largest `innerOffset` accepted (uncompressed bytes before a chunk inside
/// its member). Only the packed layout (`--estargz-min-chunk-size`) writes
/// non-zero values: a member there is closed once it holds the minimum
/// chunk size in compressed bytes (tens of KiB to a few MiB), so offsets
/// inside it stay at a few MiB even for very compressible files. Every
/// read of such a chunk inflates and discards this many bytes first, so
/// the bound is also the most work one read can be made to waste.
pub const MAX_INNER_OFFSET: u64 = 64 << 20;

/// The most uncompressed bytes one compressed byte of deflate can stand
/// for: a 258-byte match coded in 2 bits (RFC 1951), so 1032:1. A chunk
/// whose `innerOffset + size` exceeds its span times this cannot be real.
pub const DEFLATE_MAX_RATIO: u64 = 1032;

/// The same for zstd: an RLE block is a 3-byte header and 1 byte standing
/// for up to a full 128 KiB block (RFC 8878 `Block_Maximum_Size`), so
/// 32768:1.
pub const ZSTD_MAX_RATIO: u64 = 32768;

/// Default cap on a TOC, compressed and decompressed alike. The TOC is
/// parsed as it inflates (memory follows its entries, not its bytes), so
/// this bounds the work of opening a layer: the reference writer's
/// pretty-printed TOC takes ~300-400 bytes per entry, so 512 MiB is well
/// over a million entries, more than any real layer has.
pub const MAX_TOC_BYTES: u64 = 512 << 20;

/// Default cap on TOC entries (chunks included): an entry costs the tree
/// ~100 bytes, so this keeps a tree under ~1 GiB.
pub const MAX_TOC_ENTRIES: usize = 8_000_000;

/// Longest JSON string (its raw bytes, escapes included) a TOC may hold.
/// The JSON parser buffers one string at a time, so this is what bounds
/// the memory of a single value. The longest legitimate strings are a
/// base64 xattr value (Linux caps values at 64 KiB, 88 KiB as base64) and
/// a path (4 KiB, at most 24 KiB escaped).
pub const MAX_TOC_STRING_BYTES: usize = 1 << 20;

/// Piece size for reading a TOC or a chunk span from a blob: reads of a
/// remote blob are range requests, so pieces are large enough that a
/// typical compressed TOC (a few MiB) is one request, and small enough
/// that what a read buffers does not follow what the layer claims.
pub const BLOB_READ_PIECE: usize = 4 << 20;
