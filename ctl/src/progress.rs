//! `cat --progress`: bytes and rate on stderr.

use std::io::{self, Write};
use std::time::{Duration, Instant};

use crate::size::human;

/// Bytes and rate on stderr; a bar when the total is known and stderr is a terminal.
pub struct Progress {
    total: Option<u64>,
    bytes: u64,
    start: Instant,
    last: Instant,
    tty: bool,
}

impl Progress {
    /// A meter for a stream of `total` bytes, when known.
    pub fn new(total: Option<u64>) -> Self {
        let now = Instant::now();
        Progress {
            total,
            bytes: 0,
            start: now,
            last: now,
            tty: io::IsTerminal::is_terminal(&io::stderr()),
        }
    }

    /// Counts `n` more bytes, redrawing now and then.
    pub fn add(&mut self, n: usize) {
        self.bytes += n as u64;
        let every = if self.tty { 100 } else { 1000 };
        if self.last.elapsed() >= Duration::from_millis(every) {
            self.last = Instant::now();
            self.show(false);
        }
    }

    fn line(&self) -> String {
        let secs = self.start.elapsed().as_secs_f64().max(1e-9);
        let rate = format!("{}/s", human(self.bytes as f64 / secs));
        match self.total {
            Some(t) if t > 0 => {
                let frac = (self.bytes as f64 / t as f64).min(1.0);
                let filled = (frac * 30.0).round() as usize;
                format!(
                    "[{}{}] {:>3.0}% {} / {}  {rate}",
                    "#".repeat(filled),
                    ".".repeat(30 - filled),
                    frac * 100.0,
                    human(self.bytes as f64),
                    human(t as f64)
                )
            }
            _ => format!("{}  {rate}", human(self.bytes as f64)),
        }
    }

    fn show(&self, last: bool) {
        let mut err = io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[K{}", self.line());
            if last {
                let _ = writeln!(err);
            }
        } else {
            let _ = writeln!(err, "{}", self.line());
        }
        let _ = err.flush();
    }

    /// The final line.
    pub fn done(&mut self) {
        self.show(true);
    }
}
