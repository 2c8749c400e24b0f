//! A progress bar on standard error, drawn only when it is a terminal.

use std::io::{IsTerminal, Write};
use std::time::Instant;

/// Counts measurements done out of a total.
pub struct Progress {
    total: usize,
    done: usize,
    started: Instant,
    enabled: bool,
}

impl Progress {
    /// A bar for `total` measurements.
    pub fn new(total: usize) -> Self {
        Progress {
            total,
            done: 0,
            started: Instant::now(),
            enabled: std::io::stderr().is_terminal(),
        }
    }

    /// Redraws the bar with what runs now.
    pub fn show(&self, what: &str) {
        if !self.enabled {
            return;
        }
        let width = 30;
        let filled = width * self.done / self.total.max(1);
        let elapsed = self.started.elapsed().as_secs();
        let _ = write!(
            std::io::stderr().lock(),
            "\r\x1b[2K[{}{}] {}/{} {:>2}:{:02} {what}",
            "#".repeat(filled),
            " ".repeat(width - filled),
            self.done,
            self.total,
            elapsed / 60,
            elapsed % 60
        );
    }

    /// Counts one measurement done.
    pub fn step(&mut self) {
        self.done += 1;
    }

    /// Erases the bar (before printing a table row).
    pub fn clear(&self) {
        if self.enabled {
            let _ = write!(std::io::stderr().lock(), "\r\x1b[2K");
        }
    }
}
