//! ringstar-core: the eStargz layer format and everything that needs no
//! FUSE, HTTP or threads.
//!
//! - [`footer`]: the three footers (eStargz, legacy stargz, zstd:chunked) and
//!   how to find the TOC from a blob's tail.
//! - [`toc`]: the `stargz.index.json` schema and its parser into a [`tree`].
//! - [`tree`]: the compact layer tree: an inode arena, one string arena,
//!   sorted children, chunk maps.
//! - [`layer`]: open a layer through [`blob::BlobRead`], verifying the TOC.
//! - [`inflate`]: bounded inflate of one chunk plus its digest check.
//! - [`whiteout`]: the overlay lower-layer view of a directory.
//! - [`writer`]: tar → eStargz.
//! - [`inspect`]: the raw per-entry listing behind `ringstar inspect`.
//! - [`limits`]: every bound put on numbers from a layer, with its reason.
//! - [`store`]: the content-addressed, crash-safe store of verified chunks.

pub mod blob;
pub mod digest;
pub mod error;
pub mod exec;
pub mod faults;
pub mod footer;
pub mod inflate;
pub mod inspect;
pub mod layer;
pub mod limits;
pub mod merged;
pub mod name;
pub mod store;
pub mod tar;
pub mod toc;
pub mod tree;
pub mod whiteout;
pub mod writer;

pub use blob::{BlobRead, BlobReader};
pub use digest::Digest;
pub use error::{ChunkError, Error};
pub use layer::{Layer, OpenOptions};
pub use tree::{FileKind, LayerTree, NodeId};
