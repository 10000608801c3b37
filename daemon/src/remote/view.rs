//! What the metrics and the debug endpoint read of the remote layers:
//! the layer filesystem, the fetcher, and every layer with its state.

use std::sync::Arc;
use std::time::Duration;

use ringstar_fetcher::Fetcher;
use ringstar_layerfs::{LayerFs, RemoteLayer};

use super::{Remote, State, Visibility};

/// One layer as [`Remote::layers`] shows it.
#[derive(Debug, Clone)]
pub struct LayerView {
    pub name: String,
    pub layer: Option<Arc<RemoteLayer>>,
    pub shown: bool,
    pub state: String,
    /// Since its state last changed.
    pub age: Duration,
}

impl Remote {
    /// The layer filesystem (its loader, store and counters).
    pub fn fs(&self) -> &Arc<LayerFs> {
        &self.fs
    }

    /// The registry client.
    pub fn fetcher(&self) -> &Fetcher {
        &self.fetcher
    }

    /// Where the layers are mounted.
    pub fn mountpoint(&self) -> &std::path::Path {
        &self.mountpoint
    }

    /// Every layer known: resolved ones with whether they are in the
    /// mount, and the names of those resolving or failed, with why.
    pub fn layers(&self) -> Vec<LayerView> {
        let slots = self.slots.lock().expect("slots");
        slots
            .iter()
            .map(|(name, s)| LayerView {
                name: name.clone(),
                layer: match &s.state {
                    State::Ready(l) => Some(l.clone()),
                    _ => None,
                },
                shown: s.visibility == Visibility::Shown,
                state: match &s.state {
                    State::Resolving => "resolving".into(),
                    State::Ready(_) => "ready".into(),
                    State::Failed(e) => format!("failed: {e}"),
                },
                age: s.since.elapsed(),
            })
            .collect()
    }
}
