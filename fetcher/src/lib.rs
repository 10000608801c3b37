//! ringstar-fetcher: everything ringstar reads from a registry.
//!
//! - [`reference`]: image references with Docker Hub's defaults.
//! - [`hosts`]: mirrors and origins per registry host.
//! - [`client`]: the HTTP/1.1 + HTTP/2 client on its own runtime thread,
//!   range reads with timeouts and bounded retries, the blob tail in one
//!   round trip, a [`ringstar_core::BlobRead`] over a registry blob.
//! - [`repository`]: a repository at an endpoint and its distribution
//!   API URLs (manifests, blobs, uploads).
//! - [`urls`]: how URLs are shown (presigned queries redacted), where a
//!   redirect may go and which token realm may receive credentials.
//!
//! It knows nothing of FUSE or the tree.

pub mod auth;
pub mod client;
pub mod hosts;
pub mod reference;
pub mod repository;
pub mod urls;

pub use auth::{CredentialSource, Credentials, DockerConfig, StaticCredentials};
pub use client::{
    BlobLocation, BlobReader, BlobUpload, FetchError, FetchedManifest, Fetcher, FetcherConfig,
    HostStats, Mounted, RemoteBlob, UPLOAD_CHUNK,
};
pub use hosts::{Endpoint, MirrorConfig, ResolverConfig};
pub use reference::{ParseReferenceError, Reference};
pub use repository::Repository;
