//! Progress reports to the broker.

use std::sync::Arc;
use std::time::{Duration, Instant};

use shmbus::frame::{Frame, StreamId};
use shmbus::state::StreamState;

use crate::conn::Shared;

/// Counts a stream half's items and reports them to the broker now and then
/// (for `shmbusctl list` and `status`), and when the half closes.
pub(super) struct Progress {
    conn: Arc<Shared>,
    stream: StreamId,
    pub(super) bytes: u64,
    pub(super) items: u64,
    last: Instant,
    reported_bytes: u64,
}

const REPORT_EVERY: Duration = Duration::from_millis(250);

impl Progress {
    pub(super) fn new(conn: Arc<Shared>, stream: StreamId) -> Self {
        Progress {
            conn,
            stream,
            bytes: 0,
            items: 0,
            last: Instant::now(),
            reported_bytes: 0,
        }
    }

    /// Counts an item; true when a report is due.
    pub(super) fn count(&mut self, len: usize) -> bool {
        self.bytes += len as u64;
        self.items += 1;
        (self.items.is_multiple_of(1024) || self.bytes - self.reported_bytes >= 16 << 20)
            && self.last.elapsed() >= REPORT_EVERY
    }

    pub(super) fn report(&mut self, state: StreamState, credit_outstanding: u64) {
        self.last = Instant::now();
        self.reported_bytes = self.bytes;
        let _ = self.conn.inner.send(&Frame::StreamProgress {
            stream: self.stream,
            state: state.name().to_string(),
            bytes: self.bytes,
            credit_outstanding,
        });
    }
}
