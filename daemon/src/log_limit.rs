//! Keeping one user's refused requests from flooding the log.
//!
//! Every refusal (a call denied by policy, a stream or connection over its
//! quota, a connection closed for a protocol violation) is worth a warning,
//! but a client retrying in a loop would otherwise write thousands of lines a
//! second. [`LogLimit`] lets a few warnings per uid through in each window and
//! counts the rest; the next warning let through says how many were held
//! back, so the journal still shows that they happened and how often.
//!
//! It never reads the clock: the time comes in with each question, from the
//! event loop (through the router, for the router's warnings).

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Warnings logged per uid in one window.
pub const BURST: u32 = 5;
/// Length of a window.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Uids remembered before quiet ones are forgotten.
const MAX_UIDS: usize = 1024;

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    logged: u32,
    held: u64,
}

/// Per-uid warning budget. See the module documentation.
#[derive(Debug, Default)]
pub struct LogLimit {
    by_uid: HashMap<u32, Window>,
}

impl LogLimit {
    /// Whether a warning about `uid` may be logged at `now`: `Some` with
    /// the end of its line ([`held_back`]), or `None` to hold it back.
    pub fn admit(&mut self, uid: u32, now: Instant) -> Option<String> {
        self.admit_at(uid, now).map(held_back)
    }

    /// Whether a warning about `uid` may be logged at `now`: `Some(held)`
    /// with the number of warnings about it held back since the last one
    /// logged, or `None` to hold this one back.
    pub fn admit_at(&mut self, uid: u32, now: Instant) -> Option<u64> {
        if self.by_uid.len() >= MAX_UIDS && !self.by_uid.contains_key(&uid) {
            self.forget_quiet(now);
        }
        let w = self.by_uid.entry(uid).or_insert(Window {
            start: now,
            logged: 0,
            held: 0,
        });
        if now.saturating_duration_since(w.start) >= WINDOW {
            w.start = now;
            w.logged = 0;
        }
        if w.logged < BURST {
            w.logged += 1;
            Some(std::mem::take(&mut w.held))
        } else {
            w.held += 1;
            None
        }
    }

    /// Drops uids whose window ended with nothing held back: they would
    /// start afresh anyway. Uids still holding a count are kept, so no
    /// count is lost; if every remembered uid holds one, the map grows
    /// past its mark (one entry per distinct uid, a bounded number).
    fn forget_quiet(&mut self, now: Instant) {
        self.by_uid
            .retain(|_, w| w.held > 0 || now.saturating_duration_since(w.start) < WINDOW);
    }
}

/// The end of a warning line let through by [`LogLimit::admit`]: how many
/// like it were held back before it, if any.
pub fn held_back(held: u64) -> String {
    match held {
        0 => String::new(),
        n => format!(" ({n} earlier warnings for this uid not logged)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_logged_then_the_rest_is_counted_and_reported() {
        let mut l = LogLimit::default();
        let t0 = Instant::now();
        for _ in 0..BURST {
            assert_eq!(l.admit_at(7, t0), Some(0));
        }
        for _ in 0..40 {
            assert_eq!(l.admit_at(7, t0 + Duration::from_secs(1)), None);
        }
        // Another uid has its own budget.
        assert_eq!(l.admit_at(8, t0), Some(0));
        // The next window's first warning carries the count held back.
        assert_eq!(l.admit_at(7, t0 + WINDOW), Some(40));
        assert_eq!(l.admit_at(7, t0 + WINDOW), Some(0));
    }

    #[test]
    fn quiet_uids_are_forgotten_but_counts_are_kept() {
        let mut l = LogLimit::default();
        let t0 = Instant::now();
        for _ in 0..=BURST {
            l.admit_at(1, t0);
        }
        for uid in 2..MAX_UIDS as u32 + 1 {
            l.admit_at(uid, t0);
        }
        assert_eq!(l.by_uid.len(), MAX_UIDS);
        // A new uid after the window: the quiet ones go, uid 1 (one held) stays.
        let later = t0 + WINDOW;
        assert_eq!(l.admit_at(5000, later), Some(0));
        assert_eq!(l.by_uid.len(), 2);
        assert_eq!(l.admit_at(1, later), Some(1));
    }
}
