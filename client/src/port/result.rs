//! The call's result, peer to peer: over shared memory the service also
//! writes its result into a ring's header, so a caller whose broker died
//! still learns how the call ended.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shmbus::frame::RemoteError;
use shmbus::ring::ResultSlot;
use shmbus::sys;

use crate::error::{Error, Result};

/// A call's outcome, as the result frame carries it.
pub(crate) type Outcome = std::result::Result<Vec<u8>, RemoteError>;

/// How often a caller without a broker re-reads the slot while the service
/// lives but has not answered yet (its hang-up wakes the wait at once).
const RECHECK: Duration = Duration::from_millis(5);

/// The result area of one of the call's rings, and a watch on the service.
pub(crate) struct PeerResult {
    slot: ResultSlot,
    /// This side's end of the ring's doorbell socket, shared with the
    /// port. The service holds it until it has answered (or dies), even
    /// once its port is gone, so the caller's end hangs up exactly when no
    /// result can come any more — not merely when the service is done with
    /// the stream itself.
    link: Arc<OwnedFd>,
}

impl PeerResult {
    pub(crate) fn new(slot: ResultSlot, link: Arc<OwnedFd>) -> Self {
        PeerResult { slot, link }
    }

    /// Service side: writes the outcome; false when it does not fit (then
    /// only the broker carries it). Dropping `self` afterwards tells the
    /// caller that the answer is final.
    pub(crate) fn post(&self, outcome: &Outcome) -> bool {
        postcard::to_allocvec(outcome).is_ok_and(|bytes| self.slot.post(&bytes))
    }

    /// Caller side, once the broker is gone: the outcome the service wrote,
    /// waiting for it while the service lives (up to `stall`, if set).
    pub(crate) fn wait(&self, stall: Option<Duration>) -> Result<Outcome> {
        let deadline = stall.map(|d| Instant::now() + d);
        loop {
            if let Some(outcome) = self.read()? {
                return Ok(outcome);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Error::Stalled);
            }
            if sys::wait_hangup(self.link.as_fd(), RECHECK)? {
                // The service dropped its port: it wrote before, or never will.
                return self.read()?.ok_or(Error::BrokerGone);
            }
        }
    }

    fn read(&self) -> Result<Option<Outcome>> {
        let Some(bytes) = self.slot.take()? else {
            return Ok(None);
        };
        postcard::from_bytes(&bytes)
            .map(Some)
            .map_err(|e| Error::Protocol(format!("call result in shared memory: {e}")))
    }
}
