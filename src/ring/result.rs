//! The call's result, carried peer to peer in a ring's header so that a
//! stream's outcome does not depend on the broker.
//!
//! The service writes it once, whichever end of the ring it is; the caller
//! reads it only when the broker cannot deliver the result frame (it died).

use super::sync::Ordering;

use super::{
    violation, RingError, SharedRing, MAX_RING_RESULT, OFF_RESULT, OFF_RESULT_LEN, OFF_RESULT_STATE,
};

/// `result_state`: nothing written yet.
const EMPTY: u32 = 0;
/// `result_state`: `result_len` bytes at `OFF_RESULT` are the result.
const WRITTEN: u32 = 1;

/// A view of a ring's result area.
pub struct ResultSlot {
    ring: SharedRing,
}

impl ResultSlot {
    pub(super) fn new(ring: SharedRing) -> Self {
        ResultSlot { ring }
    }

    /// Writes the result; false when it is too large for the slot or one was
    /// already written (then the result travels only through the broker).
    pub fn post(&self, result: &[u8]) -> bool {
        if result.len() > MAX_RING_RESULT {
            return false;
        }
        let state = self.ring.u32_at(OFF_RESULT_STATE);
        if state.load(Ordering::Relaxed) != EMPTY {
            return false;
        }
        self.ring.copy_in(OFF_RESULT, result);
        self.ring
            .u32_at(OFF_RESULT_LEN)
            .store(result.len() as u32, Ordering::Relaxed);
        // Release: publishes the bytes and length above; pairs with the
        // Acquire load in `take`.
        state.store(WRITTEN, Ordering::Release);
        true
    }

    /// The result, once the service wrote it; a local, length-checked copy.
    pub fn take(&self) -> Result<Option<Vec<u8>>, RingError> {
        // Acquire: pairs with the Release store in `post`, so the length and
        // bytes read below are the ones written before it.
        match self.ring.u32_at(OFF_RESULT_STATE).load(Ordering::Acquire) {
            EMPTY => Ok(None),
            WRITTEN => {
                let len = self.ring.u32_at(OFF_RESULT_LEN).load(Ordering::Relaxed) as usize;
                if len > MAX_RING_RESULT {
                    return Err(violation(format!("result length {len} out of range")));
                }
                let mut out = vec![0u8; len];
                self.ring.copy_out(OFF_RESULT, &mut out);
                Ok(Some(out))
            }
            other => Err(violation(format!("result state {other}"))),
        }
    }
}
