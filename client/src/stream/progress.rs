//! Progress reports to the broker.

use std::time::{Duration, Instant};

use shmbus::frame::{Frame, StreamId};
use shmbus::state::StreamState;

use crate::conn::CallLink;

/// Counts a stream half's items and reports them to the broker now and then
/// (for `shmbusctl list` and `status`), and when the half closes.
pub(super) struct Progress {
    conn: CallLink,
    stream: StreamId,
    pub(super) bytes: u64,
    pub(super) items: u64,
    last: Instant,
    check_at: u64,
}

const REPORT_EVERY: Duration = Duration::from_millis(250);

impl Progress {
    pub(super) fn new(conn: CallLink, stream: StreamId) -> Self {
        Progress {
            conn,
            stream,
            bytes: 0,
            items: 0,
            last: Instant::now(),
            check_at: 16 << 20,
        }
    }

    /// Counts an item; true when a report is due. The clock is read only
    /// every 1024 items or 16 MiB, never per item.
    #[inline]
    pub(super) fn count(&mut self, len: usize) -> bool {
        self.bytes += len as u64;
        self.items += 1;
        if !self.items.is_multiple_of(1024) && self.bytes < self.check_at {
            return false;
        }
        self.check_at = self.bytes + (16 << 20);
        self.last.elapsed() >= REPORT_EVERY
    }

    pub(super) fn report(&mut self, state: StreamState, credit_outstanding: u64) {
        self.last = Instant::now();
        let _ = self.conn.broker.send(&Frame::StreamProgress {
            stream: self.stream,
            state,
            bytes: self.bytes,
            credit_outstanding,
        });
    }
}
