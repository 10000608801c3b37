//! What a conversion tells whoever shows its progress: a layer started,
//! bytes of it read, the layer done. The library draws nothing; the CLI
//! shows bars on a terminal and plain lines otherwise.

use ringstar_core::Digest;

/// How a layer was handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerOutcome {
    /// Converted to eStargz: the new blob's digest and size.
    Converted { digest: Digest, size: u64 },
    /// Already eStargz, or not a tar layer: kept, and copied, mounted or
    /// found present in the target.
    Kept {
        why: &'static str,
        copy: crate::store::Copied,
    },
    /// Converted before with the same options, and the target has it.
    Reused { digest: Digest },
}

/// Receives a conversion's events, from several threads at once.
pub trait Progress: Send + Sync {
    /// Layer `index` of a manifest (`digest`, `size` bytes) starts.
    fn layer_started(&self, index: usize, digest: &Digest, size: u64) -> Box<dyn LayerProgress>;
}

/// One layer's progress.
pub trait LayerProgress: Send {
    /// `n` more bytes of the source read.
    fn advance(&mut self, n: u64);
    /// The source is read again from its start (a second pass, for
    /// prioritized files).
    fn restart(&mut self);
    /// The layer is done.
    fn finish(&mut self, outcome: &LayerOutcome);
}

/// Shows nothing.
#[derive(Debug, Default)]
pub struct Silent;

impl Progress for Silent {
    fn layer_started(&self, _: usize, _: &Digest, _: u64) -> Box<dyn LayerProgress> {
        Box::new(Silent)
    }
}

impl LayerProgress for Silent {
    fn advance(&mut self, _: u64) {}
    fn restart(&mut self) {}
    fn finish(&mut self, _: &LayerOutcome) {}
}

/// A reader that reports what it reads.
pub(super) struct Counted<'a, R> {
    pub(super) inner: R,
    pub(super) progress: &'a std::sync::Mutex<Box<dyn LayerProgress>>,
}

impl<R: std::io::Read> std::io::Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Ok(mut p) = self.progress.lock() {
            p.advance(n as u64);
        }
        Ok(n)
    }
}
