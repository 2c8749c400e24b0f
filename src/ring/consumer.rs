//! The consuming side of one direction.

use super::sync::{fence, Ordering};
use std::os::fd::OwnedFd;

use super::*;
use crate::credit::{CreditSpec, RecvCredit};

/// What a record carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// An item.
    Data,
    /// stream-end: the producer finished.
    End,
    /// stream-error; its message is [`RingConsumer::error_message`].
    Error,
    /// stream-cancel: the producer acknowledges a cancellation and stops.
    Cancelled,
    /// A blob of this many bytes, whose descriptor came on the port's
    /// socket.
    Blob(u64),
}

/// A validated record handed to the consumer; release it when done. It is
/// small and `Copy`: a consumer moves one per item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// What it carries.
    pub kind: RecordKind,
    /// Payload length.
    pub len: usize,
    /// Credit the producer charged for it.
    pub charge: u64,
    data_off: usize,
    end_pos: u64,
}

/// The consuming side of one direction.
pub struct RingConsumer {
    ring: SharedRing,
    read_pos: u64,
    released: u64,
    published: u64,
    write_pos_cache: u64,
    credit: RecvCredit,
    /// Under loom only: makes [`prepare_sleep`](Self::prepare_sleep) skip
    /// its re-check, the fault the loom suite injects to show that loom
    /// reports the lost wake-up (`loom_tests`).
    #[cfg(loom)]
    pub(super) skip_sleep_recheck: bool,
}

impl RingConsumer {
    /// Maps a ring to consume from it.
    pub fn open(fd: OwnedFd, capacity: u32, credit: CreditSpec) -> Result<Self, RingError> {
        let ring = SharedRing::map(fd, capacity, credit.high_water_mark)?;
        Ok(Self::with_ring(ring, credit))
    }

    pub(super) fn with_ring(ring: SharedRing, credit: CreditSpec) -> Self {
        RingConsumer {
            ring,
            read_pos: 0,
            released: 0,
            published: 0,
            write_pos_cache: 0,
            credit: RecvCredit::new(credit),
            #[cfg(loom)]
            skip_sleep_recheck: false,
        }
    }

    /// The largest record the producer can write in this ring.
    pub fn max_record(&self) -> usize {
        super::max_record(self.ring.capacity)
    }

    /// The ring's result area, for the call's outcome.
    pub fn result_slot(&self) -> super::ResultSlot {
        super::ResultSlot::new(self.ring.view())
    }

    /// Credit state.
    pub fn credit(&self) -> &RecvCredit {
        &self.credit
    }

    #[inline]
    fn refresh_write_pos(&mut self) -> Result<(), RingError> {
        // SYNC: Acquire pairs with the Release store in `RingProducer::publish`.
        let pos = self.ring.u64_at(OFF_WRITE_POS).load(Ordering::Acquire);
        let cap = self.ring.capacity as u64;
        if pos < self.write_pos_cache
            || pos.saturating_sub(self.released) > cap
            || !pos.is_multiple_of(RECORD_HEADER as u64)
        {
            return Err(violation(format!(
                "write position {pos} invalid (last {}, released {}, capacity {cap})",
                self.write_pos_cache, self.released
            )));
        }
        self.write_pos_cache = pos;
        Ok(())
    }

    /// True when the producer published a record not yet read.
    #[inline]
    pub fn has_published(&mut self) -> Result<bool, RingError> {
        if self.read_pos == self.write_pos_cache {
            self.refresh_write_pos()?;
        }
        Ok(self.read_pos != self.write_pos_cache)
    }

    /// The next record, validated, or `None` when nothing is published yet.
    /// Records must be released in the order they were returned.
    #[inline(always)]
    pub fn try_next(&mut self) -> Result<Option<Record>, RingError> {
        loop {
            if self.read_pos == self.write_pos_cache {
                // The next record's header line is fetched alongside the
                // write position, so a record that is in costs one miss in
                // a row, not two.
                self.ring
                    .prefetch((self.read_pos & self.ring.mask()) as usize);
                self.refresh_write_pos()?;
                if self.read_pos == self.write_pos_cache {
                    return Ok(None);
                }
            }
            let cap = self.ring.capacity as usize;
            let off = (self.read_pos & self.ring.mask()) as usize;
            let avail = self.write_pos_cache - self.read_pos;
            let h = self.ring.read_record_header(off);
            let len = u32::from_le_bytes(h[0..4].try_into().unwrap()) as usize;
            let kind = u32::from_le_bytes(h[4..8].try_into().unwrap());
            let charge = u64::from_le_bytes(h[8..16].try_into().unwrap());
            let total = align_record(len);
            if total > avail || off + total as usize > cap {
                return Err(violation(format!(
                    "record of {len} bytes at offset {off} overruns the published data"
                )));
            }
            let data_off = off + RECORD_HEADER;
            let end_pos = self.read_pos + total;
            let kind = match kind {
                KIND_PAD => {
                    if off + total as usize != cap {
                        return Err(violation("padding record does not reach the end"));
                    }
                    self.read_pos = end_pos;
                    continue;
                }
                KIND_DATA => {
                    self.credit.on_receive(len, charge)?;
                    RecordKind::Data
                }
                KIND_BLOB => {
                    if len != BLOB_RECORD {
                        return Err(violation(format!("blob record of {len} bytes")));
                    }
                    let mut size = [0u8; BLOB_RECORD];
                    self.ring.copy_out(HEADER_SIZE + data_off, &mut size);
                    let size = u64::from_le_bytes(size);
                    self.credit.on_receive_blob(size, charge)?;
                    RecordKind::Blob(size)
                }
                KIND_END => RecordKind::End,
                KIND_CANCELLED => RecordKind::Cancelled,
                KIND_ERROR => RecordKind::Error,
                other => return Err(violation(format!("unknown record kind {other}"))),
            };
            if matches!(
                kind,
                RecordKind::End | RecordKind::Error | RecordKind::Cancelled
            ) && charge != 0
            {
                return Err(violation("control record carries credit"));
            }
            self.read_pos = end_pos;
            return Ok(Some(Record {
                kind,
                len,
                charge,
                data_off,
                end_pos,
            }));
        }
    }

    /// The message of a stream-error record (at most 4 KiB of it, invalid
    /// UTF-8 replaced), copied out of the ring; empty for other records.
    pub fn error_message(&self, record: &Record) -> String {
        if record.kind != RecordKind::Error {
            return String::new();
        }
        let mut msg = vec![0u8; record.len.min(MAX_ERROR_MESSAGE)];
        self.ring.copy_out(HEADER_SIZE + record.data_off, &mut msg);
        String::from_utf8_lossy(&msg).into_owned()
    }

    /// The record's payload, in place in the ring.
    ///
    /// The producer can rewrite these bytes while the slice is held, protocol
    /// or not: read each byte once, and check values in a copy (the module's
    /// "In-place views"). The record's length and charge are this side's
    /// own validated copies and cannot change.
    #[inline]
    pub fn data(&self, record: &Record) -> &[u8] {
        assert!(record.data_off + record.len <= self.ring.capacity as usize);
        // SAFETY: the range was computed from the local copy of the record
        // header and validated in `try_next` to lie inside the data area and
        // inside the published, unreleased region (asserted again above, as a
        // `Record` is caller-supplied); a protocol-abiding producer does not
        // touch it until `release` moves the read position past it, and a
        // hostile one can only change the bytes seen (`SharedRing::data`).
        unsafe { self.ring.data(record.data_off, record.len) }
    }

    /// Gives the record's room back and consumes its credit. The room is
    /// published in batches (a quarter of the ring) and whenever credit is
    /// re-granted; call [`flush_release`](Self::flush_release) before
    /// waiting. Returns true when the producer said it is asleep: ring the doorbell.
    #[inline]
    pub fn release(&mut self, record: &Record) -> Result<bool, RingError> {
        if record.end_pos <= self.released || record.end_pos > self.read_pos {
            return Err(violation("record released twice or out of order"));
        }
        self.released = record.end_pos;
        // The first item has passed: the descriptor is no longer needed.
        self.ring.close_memfd();
        let granted = self.credit.on_consume(record.charge)?;
        if let Some(limit) = granted {
            // SYNC: Release pairs with the Acquire load in `RingProducer::refresh_credit`.
            self.ring
                .u64_at(OFF_CREDIT_LIMIT)
                .store(limit, Ordering::Release);
        }
        let batch = self.ring.capacity as u64 / 4;
        if granted.is_some() || self.released - self.published >= batch || record.len >= HOT_RECORD
        {
            return Ok(self.flush_release());
        }
        Ok(false)
    }

    /// Publishes released room now. Returns true when the producer said it
    /// is asleep: ring the doorbell.
    #[inline]
    pub fn flush_release(&mut self) -> bool {
        if self.released != self.published {
            self.published = self.released;
            // SYNC: Release pairs with the Acquire load in `RingProducer::refresh_read_pos`:
            // our reads of the records happen before the producer reuses their bytes.
            self.ring
                .u64_at(OFF_READ_POS)
                .store(self.released, Ordering::Release);
        }
        // SYNC: pairs with the fence in `RingProducer::prepare_sleep` (also
        // for a credit limit stored by `release`).
        fence(Ordering::SeqCst);
        take_flag(self.ring.u32_at(OFF_PRODUCER_SLEEPING))
    }

    /// Tells the producer to stop (stream-cancel). Returns true when the
    /// producer is asleep: ring the doorbell.
    pub fn cancel(&self) -> bool {
        // SYNC: Release pairs with the Acquire load in `RingProducer::is_cancelled`.
        self.ring.u32_at(OFF_CANCELLED).store(1, Ordering::Release);
        // SYNC: pairs with the fence in `RingProducer::prepare_sleep`.
        fence(Ordering::SeqCst);
        take_flag(self.ring.u32_at(OFF_PRODUCER_SLEEPING))
    }

    /// Announces the intent to sleep, then re-checks. Returns true when the
    /// caller should sleep on its doorbell; false when data arrived meanwhile.
    pub fn prepare_sleep(&mut self) -> bool {
        let flag = self.ring.u32_at(OFF_CONSUMER_SLEEPING);
        flag.store(1, Ordering::Relaxed);
        // SYNC: pairs with the fence in `RingProducer::publish`.
        fence(Ordering::SeqCst);
        #[cfg(loom)]
        if self.skip_sleep_recheck {
            return true;
        }
        let pos = self.ring.u64_at(OFF_WRITE_POS).load(Ordering::Relaxed);
        if pos != self.write_pos_cache {
            flag.store(0, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Clears the sleep flag after waking.
    pub fn woke(&self) {
        self.ring
            .u32_at(OFF_CONSUMER_SLEEPING)
            .store(0, Ordering::Relaxed);
    }
}
