//! ringstar-testkit: the test and benchmark harness, never compiled into
//! a release binary. Debian's
//! docker-registry on a free loopback port, blob pushes through the
//! registry API, certificates made with openssl, a counting TCP forwarder
//! and a delay proxy that models a shared WAN link, blob storage behind a
//! registry's redirects, a log capture, and a panic injected into the
//! fetch task.
//!
//! Modules: `registry` (the registry and its access log), `certs`
//! (openssl certificates, server-side TLS), `delay_proxy`, `fault_proxy`,
//! `token_server`, `blob_storage` (storage behind redirects), `logs` (log
//! capture), `faults` (panics injected into the fetcher), `helpers` (free
//! ports, a one-shot HTTP exchange, request parsing, credentials); every
//! public item is re-exported here. `mounted`, `images` and `containerd`
//! are public modules of their own.

#![allow(clippy::missing_panics_doc)]

pub mod containerd;
pub mod images;
pub mod mounted;
pub mod podman;
pub mod prometheus;

mod blob_storage;
mod certs;
mod delay_proxy;
mod fault_proxy;
mod faults;
mod helpers;
mod logs;
mod registry;
mod token_server;

pub use blob_storage::BlobStorage;
pub use certs::{make_certs, tls_server_config, tls_stream};
pub use delay_proxy::DelayProxy;
pub use fault_proxy::{Fault, FaultProxy};
pub use faults::{inject_panics, stop_panics};
pub use helpers::{
    entry_order, free_port, http, reference_reads, static_credentials, write_executable,
};
pub use logs::{LogCapture, capture_logs};
pub use registry::{AccessLogEntry, Registry, RegistryAuth, access_log_entries, write_htpasswd};
pub use token_server::{TokenRequest, TokenServer, TokenServerOptions};
