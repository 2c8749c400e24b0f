//! The producing side of one direction.

use super::sync::{fence, Ordering};
use std::os::fd::OwnedFd;

use super::*;
use crate::credit::{CreditSpec, SendCredit};

/// The producing side of one direction.
pub struct RingProducer {
    ring: SharedRing,
    write_pos: u64,
    published: u64,
    read_pos_cache: u64,
    credit: SendCredit,
}

/// A control record: how a producer ends its direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control<'a> {
    /// stream-end: the producer finished.
    End,
    /// stream-error with a message (cut to 4 KiB).
    Error(&'a str),
    /// stream-cancel: the producer acknowledges a cancellation and stops.
    Cancelled,
}

/// Why the producer cannot write now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocked {
    /// The receiver has not granted enough credit.
    Credit,
    /// The ring has no room.
    Space,
}

/// Room reserved in the ring, to be filled with [`RingProducer::slot_buf`]
/// and made a record with [`RingProducer::commit`]. Dropping it abandons it.
#[derive(Debug)]
pub struct Slot {
    at: u64,
    pad: u64,
    off: usize,
    max_len: usize,
    charge: u64,
}

impl Slot {
    /// Bytes reserved.
    pub fn len(&self) -> usize {
        self.max_len
    }

    /// True for a zero-byte reservation.
    pub fn is_empty(&self) -> bool {
        self.max_len == 0
    }
}

impl RingProducer {
    /// Maps a ring to produce into it.
    pub fn open(fd: OwnedFd, capacity: u32, credit: CreditSpec) -> Result<Self, RingError> {
        let ring = SharedRing::map(fd, capacity, credit.high_water_mark)?;
        Ok(Self::with_ring(ring, credit))
    }

    pub(super) fn with_ring(ring: SharedRing, credit: CreditSpec) -> Self {
        RingProducer {
            ring,
            write_pos: 0,
            published: 0,
            read_pos_cache: 0,
            credit: SendCredit::new(credit),
        }
    }

    /// The ring's result area, for the call's outcome.
    pub fn result_slot(&self) -> super::ResultSlot {
        super::ResultSlot::new(self.ring.view())
    }

    /// Largest payload one record can carry.
    #[inline]
    pub fn max_record(&self) -> usize {
        max_record(self.ring.capacity)
    }

    /// Credit state.
    #[inline]
    pub fn credit(&self) -> &SendCredit {
        &self.credit
    }

    /// Whether the consumer cancelled the stream: the flag must hold 0 or 1,
    /// anything else is a violation.
    #[inline]
    pub fn cancelled_state(&self) -> Result<bool, RingError> {
        // SYNC: Acquire pairs with the Release store in `RingConsumer::cancel`.
        match self.ring.u32_at(OFF_CANCELLED).load(Ordering::Acquire) {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(violation(format!("cancel flag holds {other}"))),
        }
    }

    /// True when the consumer cancelled (a hostile flag value reads as not
    /// cancelled here; [`cancelled_state`](Self::cancelled_state) reports it).
    #[inline]
    pub fn is_cancelled(&self) -> bool {
        matches!(self.cancelled_state(), Ok(true))
    }

    pub(super) fn refresh_read_pos(&mut self) -> Result<(), RingError> {
        // SYNC: Acquire pairs with the Release store in `RingConsumer::release`,
        // so the consumer is done with the bytes before we overwrite them.
        let pos = self.ring.u64_at(OFF_READ_POS).load(Ordering::Acquire);
        if pos < self.read_pos_cache
            || pos > self.published
            || !pos.is_multiple_of(RECORD_HEADER as u64)
        {
            return Err(violation(format!(
                "read position {pos} outside [{}, {}] or misaligned",
                self.read_pos_cache, self.published
            )));
        }
        self.read_pos_cache = pos;
        Ok(())
    }

    pub(super) fn refresh_credit(&mut self) -> Result<(), RingError> {
        // SYNC: Acquire pairs with the Release store of the limit in `RingConsumer::release`.
        let limit = self.ring.u64_at(OFF_CREDIT_LIMIT).load(Ordering::Acquire);
        if limit != self.credit.limit() {
            self.credit.update_limit(limit)?;
        }
        Ok(())
    }

    #[inline]
    fn free_for(&mut self, total: u64) -> Result<Option<u64>, RingError> {
        let cap = self.ring.capacity as u64;
        let off = self.write_pos & self.ring.mask();
        let to_end = cap - off;
        // A ring seen empty starts over at its beginning, so that a stream
        // moving bursts smaller than its ring keeps reusing the same (cached)
        // memory instead of cycling through all of it.
        //
        // Large records take turns in the first two slots of their size
        // (double buffering): the producer fills one while the consumer
        // reads the other, so both stay in memory the caches still hold
        // instead of cycling through the whole ring.
        let restart = off != 0
            && total <= off
            && (self.write_pos == self.read_pos_cache
                || (total - RECORD_HEADER as u64 >= HOT_RECORD as u64 && off > total));
        let need = if to_end < total || restart {
            to_end + total
        } else {
            total
        };
        if cap - (self.write_pos - self.read_pos_cache) < need {
            self.refresh_read_pos()?;
            if cap - (self.write_pos - self.read_pos_cache) < need {
                return Ok(None);
            }
        }
        Ok(Some(if to_end < total || restart { to_end } else { 0 }))
    }

    /// Finds room for a record of `total` bytes. Returns the padding that
    /// must precede it (written here, published only with the record) and the
    /// record's offset.
    #[inline]
    fn place(&mut self, total: u64) -> Result<Option<(u64, usize)>, RingError> {
        let Some(pad) = self.free_for(total)? else {
            return Ok(None);
        };
        if pad > 0 {
            let off = (self.write_pos & self.ring.mask()) as usize;
            self.ring
                .write_record_header(off, (pad as usize - RECORD_HEADER) as u32, KIND_PAD, 0);
        }
        Ok(Some((
            pad,
            ((self.write_pos + pad) & self.ring.mask()) as usize,
        )))
    }

    /// Reserves room for a record of up to `max_len` bytes charged up to
    /// `charge`. `Ok(Err(why))` when it must wait for credit or space.
    #[inline]
    pub fn try_reserve(
        &mut self,
        max_len: usize,
        charge: u64,
    ) -> Result<Result<Slot, Blocked>, RingError> {
        if max_len > self.max_record() {
            return Err(RingError::TooLarge {
                len: max_len,
                max: self.max_record(),
            });
        }
        if !self.credit.check(charge)? {
            self.refresh_credit()?;
            // Fresh caches of both counters: for `prepare_sleep` to compare
            // against what was just seen when blocked, and once credit came
            // back, for `free_for` to see whether the ring drained.
            self.refresh_read_pos()?;
            if !self.credit.check(charge)? {
                return Ok(Err(Blocked::Credit));
            }
        }
        let Some((pad, off)) = self.place(align_record(max_len))? else {
            self.refresh_credit()?;
            return Ok(Err(Blocked::Space));
        };
        Ok(Ok(Slot {
            at: self.write_pos,
            pad,
            off,
            max_len,
            charge,
        }))
    }

    /// The reserved bytes, to fill in place.
    ///
    /// A hostile consumer can write these bytes too, protocol or not: what
    /// it receives is then its own doing. Nothing here reads them back; the
    /// record's length and charge are the values given to `commit`.
    #[inline]
    pub fn slot_buf(&mut self, slot: &Slot) -> &mut [u8] {
        assert_eq!(slot.at, self.write_pos, "slot is stale");
        // SAFETY: [off+16, off+16+max_len) was checked free and inside the
        // data area by `try_reserve` (offsets computed locally, never read
        // from shared memory), and stays unpublished until `commit`; the
        // `&mut self` borrow makes this the only view of it in this process.
        // A hostile consumer can only change the bytes (`SharedRing::data_mut`).
        unsafe { self.ring.data_mut(slot.off + RECORD_HEADER, slot.max_len) }
    }

    /// Makes the first `len` bytes of the slot a record charged `charge` (at
    /// most the reserved charge). Visible to the consumer after [`publish`](Self::publish).
    /// A slot commits once: afterwards it is stale, and committing it again
    /// panics.
    #[inline]
    pub fn commit(&mut self, slot: &Slot, len: usize, charge: u64) {
        assert_eq!(slot.at, self.write_pos, "slot is stale");
        assert!(len <= slot.max_len && charge <= slot.charge);
        self.ring
            .write_record_header(slot.off, len as u32, KIND_DATA, charge);
        self.write_pos += slot.pad + align_record(len);
        self.credit.charge(charge);
    }

    /// Makes the slot a blob record for a blob of `blob_len` bytes charged
    /// `charge` (at most the reserved charge): the slot must have been
    /// reserved for [`BLOB_RECORD`] bytes. The blob's descriptor must be on
    /// its way to the consumer before the record is published.
    #[inline]
    pub fn commit_blob(&mut self, slot: &Slot, blob_len: u64, charge: u64) {
        assert_eq!(slot.at, self.write_pos, "slot is stale");
        assert!(slot.max_len >= BLOB_RECORD && charge <= slot.charge);
        self.ring.copy_in(
            HEADER_SIZE + slot.off + RECORD_HEADER,
            &blob_len.to_le_bytes(),
        );
        self.ring
            .write_record_header(slot.off, BLOB_RECORD as u32, KIND_BLOB, charge);
        self.write_pos += slot.pad + align_record(BLOB_RECORD);
        self.credit.charge(charge);
    }

    /// Writes a control record (end, error, cancelled-ack); charges no credit.
    /// `Ok(false)` when the ring has no room yet.
    pub fn try_write_control(&mut self, control: &Control<'_>) -> Result<bool, RingError> {
        let (code, payload): (u32, &[u8]) = match control {
            Control::End => (KIND_END, &[]),
            Control::Cancelled => (KIND_CANCELLED, &[]),
            Control::Error(msg) => (KIND_ERROR, msg.as_bytes()),
        };
        let payload = &payload[..payload.len().min(self.max_record()).min(MAX_ERROR_MESSAGE)];
        let Some((pad, off)) = self.place(align_record(payload.len()))? else {
            // `place` refreshed the read position; the credit limit too, as
            // in `try_reserve`: `prepare_sleep` compares both with what was
            // just seen, and a limit granted since the last look would
            // otherwise read as progress on every attempt, so the producer
            // would never sleep until the consumer made room.
            self.refresh_credit()?;
            return Ok(false);
        };
        self.ring
            .copy_in(HEADER_SIZE + off + RECORD_HEADER, payload);
        self.ring
            .write_record_header(off, payload.len() as u32, code, 0);
        self.write_pos += pad + align_record(payload.len());
        Ok(true)
    }

    /// Bytes committed but not yet published.
    #[inline]
    pub fn unpublished(&self) -> u64 {
        self.write_pos - self.published
    }

    /// Bytes worth batching before a publish: 4 KiB. One publish (a store,
    /// a fence and a look at the sleep flag) per 4 KiB costs little, and a
    /// consumer that keeps up starts on a batch while the next is written;
    /// with longer batches it raced through one, found the ring empty and
    /// went to sleep (64-byte items: 18.5 M/s with 64 KiB batches against
    /// 26.7 M/s with 4 KiB ones, in one window).
    #[inline]
    pub fn publish_batch(&self) -> u64 {
        4096
    }

    /// Makes committed records visible. Returns true when the consumer said
    /// it is asleep: the caller must then ring the doorbell.
    #[must_use]
    #[inline]
    pub fn publish(&mut self) -> bool {
        if self.write_pos == self.published {
            return false;
        }
        self.published = self.write_pos;
        // Statistics only: no ordering needed.
        self.ring
            .u64_at(OFF_CHARGED)
            .store(self.credit.charged(), Ordering::Relaxed);
        // SYNC: Release pairs with the Acquire load in `RingConsumer::refresh_write_pos`:
        // the records' bytes are visible before the position that covers them.
        self.ring
            .u64_at(OFF_WRITE_POS)
            .store(self.write_pos, Ordering::Release);
        // SYNC: pairs with the fence in `RingConsumer::prepare_sleep`.
        fence(Ordering::SeqCst);
        let asleep = take_flag(self.ring.u32_at(OFF_CONSUMER_SLEEPING));
        // The first item is out: the descriptor is no longer needed.
        self.ring.close_memfd();
        asleep
    }

    /// Announces the intent to sleep, then re-checks. Returns true when the
    /// caller should sleep on its doorbell; false when the consumer moved.
    pub fn prepare_sleep(&mut self) -> bool {
        let flag = self.ring.u32_at(OFF_PRODUCER_SLEEPING);
        flag.store(1, Ordering::Relaxed);
        // SYNC: pairs with the fence in `RingConsumer::release` / `cancel`.
        fence(Ordering::SeqCst);
        let read = self.ring.u64_at(OFF_READ_POS).load(Ordering::Relaxed);
        let limit = self.ring.u64_at(OFF_CREDIT_LIMIT).load(Ordering::Relaxed);
        let moved =
            read != self.read_pos_cache || limit != self.credit.limit() || self.is_cancelled();
        if moved {
            flag.store(0, Ordering::Relaxed);
        }
        !moved
    }

    /// Clears the sleep flag after waking.
    pub fn woke(&self) {
        self.ring
            .u32_at(OFF_PRODUCER_SLEEPING)
            .store(0, Ordering::Relaxed);
    }
}
