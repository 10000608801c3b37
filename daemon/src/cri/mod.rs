//! The CRI keychain (`[cri_keychain]`): ringstar as kubelet's image
//! service, forwarding to containerd's and keeping the credentials of
//! each `PullImage` for the layers of the image pulled.

pub mod keychain;
pub mod proxy;

pub use keychain::CriKeychain;
pub use proxy::CriProxy;
