//! A conversion's progress: a bar per layer on a terminal (indicatif), a
//! line per layer event otherwise (logs, CI).

use std::io::IsTerminal as _;
use std::time::Instant;

use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressStyle};
use ringstar_core::Digest;
use ringstar_image::convert::progress::{LayerOutcome, LayerProgress, Progress};

/// Bars when stderr is a terminal, lines otherwise.
pub struct Shown {
    bars: Option<MultiProgress>,
}

impl Shown {
    pub fn new() -> Shown {
        Shown {
            bars: std::io::stderr().is_terminal().then(MultiProgress::new),
        }
    }
}

fn short(d: &Digest) -> String {
    d.hex()[..12].to_string()
}

fn outcome_text(o: &LayerOutcome) -> String {
    match o {
        LayerOutcome::Converted { digest, size } => {
            format!("converted → {} ({})", short(digest), HumanBytes(*size))
        }
        LayerOutcome::Kept { why, copy } => format!("kept ({why}; {copy:?})"),
        LayerOutcome::Reused { digest } => format!("reused {}", short(digest)),
    }
}

impl Progress for Shown {
    fn layer_started(&self, index: usize, digest: &Digest, size: u64) -> Box<dyn LayerProgress> {
        let name = format!("layer {index} {}", short(digest));
        match &self.bars {
            Some(m) => {
                let bar = m.add(ProgressBar::new(size));
                bar.set_style(
                    ProgressStyle::with_template(
                        "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {msg}",
                    )
                    .expect("template")
                    .progress_chars("=> "),
                );
                bar.set_prefix(name);
                Box::new(Bar(bar))
            }
            None => {
                eprintln!("{name} ({}): started", HumanBytes(size));
                Box::new(Line {
                    name,
                    started: Instant::now(),
                })
            }
        }
    }
}

struct Bar(ProgressBar);

impl LayerProgress for Bar {
    fn advance(&mut self, n: u64) {
        self.0.inc(n);
    }
    fn restart(&mut self) {
        self.0.set_position(0);
        self.0.set_message("(second pass)");
    }
    fn finish(&mut self, o: &LayerOutcome) {
        self.0.finish_with_message(outcome_text(o));
    }
}

struct Line {
    name: String,
    started: Instant,
}

impl LayerProgress for Line {
    fn advance(&mut self, _: u64) {}
    fn restart(&mut self) {}
    fn finish(&mut self, o: &LayerOutcome) {
        eprintln!(
            "{}: {} in {:.1} s",
            self.name,
            outcome_text(o),
            self.started.elapsed().as_secs_f64()
        );
    }
}
