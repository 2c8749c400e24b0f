//! The shared-memory port: a ring per direction plus its doorbell.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use shmbus::blob::{Blob, DEFAULT_BLOB_LIMIT};
use shmbus::credit::CreditSpec;
use shmbus::ring::{
    Control, Record, RecordKind, ResultSlot, RingConsumer, RingProducer, Slot, BLOB_RECORD,
};

use super::wait::{Doorbell, Spinner, WaitPolicy};
use super::{Ending, RxEvent};
use crate::error::{Error, Result};

/// Producing side over shared memory.
pub(crate) struct ShmTx {
    ring: RingProducer,
    bell: Doorbell,
    slot: Option<Slot>,
    cancelled: Arc<AtomicBool>,
    pub(crate) policy: WaitPolicy,
    /// The call's deadline: no wait outlasts it.
    pub(crate) call_deadline: Option<Instant>,
    spinner: Spinner,
    /// A non-blocking call left the sleep flag set: the next one clears
    /// it and drains the doorbell (otherwise neither is needed).
    armed: bool,
    /// A non-blocking blob send found the doorbell socket full: an event
    /// loop waits for it to turn writable.
    fd_blocked: bool,
}

impl ShmTx {
    pub(crate) fn open(
        link: OwnedFd,
        memfd: OwnedFd,
        capacity: u32,
        credit: CreditSpec,
        cancelled: Arc<AtomicBool>,
    ) -> Result<Self> {
        let ring = RingProducer::open(memfd, capacity, credit)?;
        Ok(ShmTx {
            ring,
            bell: Doorbell::new(link),
            slot: None,
            cancelled,
            policy: WaitPolicy::default(),
            call_deadline: None,
            spinner: Spinner::default(),
            armed: false,
            fd_blocked: false,
        })
    }

    pub(crate) fn max_item(&self) -> usize {
        self.ring.max_record()
    }

    pub(crate) fn result_slot(&self) -> ResultSlot {
        self.ring.result_slot()
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        self.ring.is_cancelled() || self.cancelled.load(Ordering::Acquire)
    }

    pub(crate) fn credit_available(&self) -> u64 {
        self.ring.credit().available()
    }

    /// Reserves room for `max_len` bytes charged up to `charge`, waiting for
    /// credit and space. Returns the room to fill in place.
    #[inline]
    pub(crate) fn begin(&mut self, max_len: usize, charge: u64) -> Result<&mut [u8]> {
        // The common case inline, where the caller keeps the result in
        // registers; waiting out of line.
        if !self.ring.cancelled_state()? && !self.cancelled.load(Ordering::Acquire) {
            if let Ok(slot) = self.ring.try_reserve(max_len, charge)? {
                let slot = self.slot.insert(slot);
                return Ok(self.ring.slot_buf(slot));
            }
        }
        self.begin_waiting(max_len, charge)
    }

    #[inline(never)]
    fn begin_waiting(&mut self, max_len: usize, charge: u64) -> Result<&mut [u8]> {
        self.slot = None;
        let mut deadline = None;
        loop {
            if self.ring.cancelled_state()? || self.cancelled.load(Ordering::Acquire) {
                return Err(Error::Cancelled);
            }
            if let Ok(slot) = self.ring.try_reserve(max_len, charge)? {
                let slot = self.slot.insert(slot);
                return Ok(self.ring.slot_buf(slot));
            }
            if deadline.is_none() {
                deadline = self.policy.deadline_with(self.call_deadline);
            }
            self.wait(max_len, charge, deadline)?;
        }
    }

    /// Sends a blob: waits for credit and room for its record, sends its
    /// descriptor on the doorbell socket, then writes and publishes the
    /// record, so the descriptor is there before the consumer sees it.
    pub(crate) fn send_blob(&mut self, blob: &Blob, charge: u64) -> Result<()> {
        self.begin(BLOB_RECORD, charge)?;
        let deadline = self.policy.deadline_with(self.call_deadline);
        if let Err(e) = self.bell.send_fd(blob.fd(), deadline) {
            self.slot = None;
            return Err(e);
        }
        let slot = self.slot.take().expect("begun above");
        self.ring.commit_blob(&slot, blob.len() as u64, charge);
        self.publish();
        Ok(())
    }

    /// [`send_blob`](Self::send_blob) without waiting: `Ok(false)` when
    /// credit, room or the socket is short (nothing was sent; see
    /// [`wants_write`](Self::wants_write)).
    pub(crate) fn try_send_blob(&mut self, blob: &Blob, charge: u64) -> Result<bool> {
        self.fd_blocked = false;
        if self.try_begin(BLOB_RECORD, charge)?.is_none() {
            return Ok(false);
        }
        if !self.bell.try_send_fd(blob.fd())? {
            self.slot = None;
            self.fd_blocked = true;
            return Ok(false);
        }
        let slot = self.slot.take().expect("begun above");
        self.ring.commit_blob(&slot, blob.len() as u64, charge);
        self.publish();
        Ok(true)
    }

    /// A blob's descriptor waits for the doorbell socket to take it.
    pub(crate) fn wants_write(&self) -> bool {
        self.fd_blocked
    }

    /// Credit the current reservation may charge.
    #[inline]
    pub(crate) fn commit(&mut self, len: usize, charge: u64) {
        // By reference: the fields are loaded one by one, where moving
        // the slot out would copy it through memory just written.
        let slot = self.slot.as_ref().expect("commit follows begin");
        self.ring.commit(slot, len, charge);
        self.slot = None;
    }

    #[inline]
    pub(crate) fn reserved(&mut self) -> Option<&mut [u8]> {
        let slot = self.slot.as_ref()?;
        Some(self.ring.slot_buf(slot))
    }

    pub(crate) fn abandon(&mut self) {
        self.slot = None;
    }

    /// Makes committed items visible, waking the consumer if it sleeps.
    #[inline]
    pub(crate) fn publish(&mut self) {
        if self.ring.publish() {
            self.bell.ring();
        }
    }

    /// After a commit: publish once a batch has built up; `flush`, a wait
    /// and the close publish the rest.
    #[inline]
    pub(crate) fn publish_batched(&mut self) {
        if self.ring.unpublished() >= self.ring.publish_batch() {
            self.publish();
        }
    }

    /// Waits until credit, room or cancellation may have changed.
    fn wait(&mut self, max_len: usize, charge: u64, deadline: Option<Instant>) -> Result<()> {
        self.publish();
        if self.bell.peer_closed() {
            return Err(Error::PeerGone(
                "the receiving peer closed the stream".into(),
            ));
        }
        let ring = &mut self.ring;
        let policy = self.policy.for_record(max_len);
        let moved = self.spinner.spin(policy, || -> Result<Option<()>> {
            if ring.is_cancelled() {
                return Ok(Some(()));
            }
            // A trial reservation, abandoned: only asks whether one would succeed.
            Ok(ring.try_reserve(max_len, charge)?.ok().map(|_| ()))
        })?;
        if moved.is_some() {
            return Ok(());
        }
        let slept = self.sleep(deadline);
        self.spinner.woke(policy, self.bell.take_rung_at());
        slept
    }

    /// Sleeps on the doorbell unless the consumer moved since the last look.
    fn sleep(&mut self, deadline: Option<Instant>) -> Result<()> {
        if self.ring.prepare_sleep() {
            let slept = self.bell.sleep(deadline);
            self.ring.woke();
            slept?;
        } else {
            // Something moved; also notice a consumer that has died meanwhile.
            self.bell.drain();
        }
        Ok(())
    }

    /// Like [`begin`](Self::begin) but never waits: `None` when blocked, with
    /// the sleep flag armed so the doorbell becomes readable when the
    /// consumer makes room or credit (for event loops).
    #[inline]
    pub(crate) fn try_begin(&mut self, max_len: usize, charge: u64) -> Result<Option<&mut [u8]>> {
        // The common case inline, as in `begin`: nothing armed, room there.
        if !self.armed && !self.ring.cancelled_state()? && !self.cancelled.load(Ordering::Acquire) {
            if let Ok(slot) = self.ring.try_reserve(max_len, charge)? {
                let slot = self.slot.insert(slot);
                return Ok(Some(self.ring.slot_buf(slot)));
            }
        }
        self.try_begin_slow(max_len, charge)
    }

    #[inline(never)]
    fn try_begin_slow(&mut self, max_len: usize, charge: u64) -> Result<Option<&mut [u8]>> {
        self.slot = None;
        self.disarm();
        for _ in 0..2 {
            if self.is_cancelled() {
                return Err(Error::Cancelled);
            }
            if let Ok(slot) = self.ring.try_reserve(max_len, charge)? {
                let slot = self.slot.insert(slot);
                return Ok(Some(self.ring.slot_buf(slot)));
            }
            if self.bell.peer_closed() {
                return Err(Error::PeerGone(
                    "the receiving peer closed the stream".into(),
                ));
            }
            self.publish();
            if self.ring.prepare_sleep() {
                self.armed = true;
                return Ok(None);
            }
        }
        Ok(None)
    }

    /// Clears the sleep flag and drains the doorbell that a non-blocking
    /// call armed, if one did: a per-item system call otherwise.
    #[inline]
    fn disarm(&mut self) {
        if std::mem::take(&mut self.armed) {
            self.ring.woke();
            self.bell.drain();
        }
    }

    /// Writes the closing record (end, error or cancel acknowledgement).
    /// Without `blocking`, makes one attempt that never waits (drop and
    /// cancel paths); the closing doorbell then tells the consumer.
    pub(crate) fn close(&mut self, how: &Ending, blocking: bool) -> Result<()> {
        let kind = match how {
            Ending::End => Control::End,
            Ending::Error(m) => Control::Error(m),
            Ending::Cancelled => Control::Cancelled,
        };
        let deadline = self.policy.deadline_with(self.call_deadline);
        loop {
            if self.ring.try_write_control(&kind)? {
                self.publish();
                return Ok(());
            }
            self.publish();
            if !blocking {
                return Ok(());
            }
            if self.bell.peer_closed() {
                return Err(Error::PeerGone(
                    "the receiving peer closed the stream".into(),
                ));
            }
            self.sleep(deadline)?;
        }
    }

    /// One attempt at the closing record that never waits: true once it
    /// is written and published; false with the sleep flag armed, so the
    /// doorbell turns readable when the consumer makes room.
    pub(crate) fn try_close(&mut self, how: &Ending) -> Result<bool> {
        let kind = match how {
            Ending::End => Control::End,
            Ending::Error(m) => Control::Error(m),
            Ending::Cancelled => Control::Cancelled,
        };
        self.disarm();
        for _ in 0..2 {
            if self.ring.try_write_control(&kind)? {
                self.publish();
                return Ok(true);
            }
            self.publish();
            if self.bell.peer_closed() {
                return Err(Error::PeerGone(
                    "the receiving peer closed the stream".into(),
                ));
            }
            if self.ring.prepare_sleep() {
                self.armed = true;
                return Ok(false);
            }
        }
        Ok(false)
    }

    pub(crate) fn doorbell(&self) -> std::os::fd::BorrowedFd<'_> {
        self.bell.fd()
    }

    /// A handle on this end of the doorbell that keeps it open after the
    /// port is gone.
    pub(crate) fn share_link(&self) -> Arc<OwnedFd> {
        self.bell.share()
    }
}

/// Consuming side over shared memory.
pub(crate) struct ShmRx {
    ring: RingConsumer,
    bell: Doorbell,
    held: Option<Record>,
    /// The last item's length: what the next wait is likely for.
    last_len: usize,
    pub(crate) policy: WaitPolicy,
    /// The call's deadline: no wait outlasts it.
    pub(crate) call_deadline: Option<Instant>,
    spinner: Spinner,
    /// A non-blocking call left the sleep flag set: the next one clears
    /// it and drains the doorbell (otherwise neither is needed).
    armed: bool,
    /// The largest blob accepted.
    pub(crate) blob_limit: u64,
}

impl ShmRx {
    pub(crate) fn max_item(&self) -> usize {
        self.ring.max_record()
    }

    pub(crate) fn credit_spec(&self) -> CreditSpec {
        self.ring.credit().spec()
    }

    pub(crate) fn open(
        link: OwnedFd,
        memfd: OwnedFd,
        capacity: u32,
        credit: CreditSpec,
    ) -> Result<Self> {
        let ring = RingConsumer::open(memfd, capacity, credit)?;
        Ok(ShmRx {
            ring,
            bell: Doorbell::new(link).keeping_fds(),
            held: None,
            last_len: 0,
            policy: WaitPolicy::default(),
            call_deadline: None,
            spinner: Spinner::default(),
            armed: false,
            blob_limit: DEFAULT_BLOB_LIMIT,
        })
    }

    pub(crate) fn result_slot(&self) -> ResultSlot {
        self.ring.result_slot()
    }

    #[inline(always)]
    fn event(&mut self, rec: Record) -> Result<RxEvent> {
        let ev = match &rec.kind {
            RecordKind::Data => {
                self.last_len = rec.len;
                RxEvent::Item
            }
            RecordKind::End => RxEvent::End,
            RecordKind::Cancelled => RxEvent::Cancelled,
            RecordKind::Error => RxEvent::Error(self.ring.error_message(&rec)),
            RecordKind::Blob(size) => self.blob(*size)?,
        };
        self.held = Some(rec);
        Ok(ev)
    }

    /// The blob a blob record announces: its descriptor, from the doorbell
    /// socket, checked and mapped.
    #[cold]
    fn blob(&mut self, size: u64) -> Result<RxEvent> {
        let Some(fd) = self.bell.take_fd() else {
            return Err(Error::Protocol(match self.bell.violation() {
                Some(v) => v.to_string(),
                None => "a blob record came without its descriptor".into(),
            }));
        };
        let blob = Blob::from_received(fd, size, self.blob_limit)
            .map_err(|e| Error::Protocol(e.to_string()))?;
        Ok(RxEvent::Blob(blob))
    }

    /// Fails when the sender passed descriptors no record accounts for: a
    /// sender sends a blob's descriptor just before its record, so with
    /// the ring read to its end at most one may wait.
    fn check_stray_fds(&self) -> Result<()> {
        if let Some(v) = self.bell.violation() {
            return Err(Error::Protocol(v.to_string()));
        }
        if self.bell.queued_fds() > 1 {
            return Err(Error::Protocol(
                "the sender passed descriptors without blob records".into(),
            ));
        }
        Ok(())
    }

    /// The last item's length.
    pub(crate) fn last_len(&self) -> usize {
        self.last_len
    }

    /// True when the sender published a record not yet read. A ring that
    /// fails validation counts as pending: the next read reports it.
    pub(crate) fn has_pending(&mut self) -> bool {
        self.ring.has_published().unwrap_or(true)
    }

    /// The next event; waits when `block`, else `None` when nothing is there.
    #[inline]
    pub(crate) fn next(&mut self, block: bool) -> Result<Option<RxEvent>> {
        debug_assert!(self.held.is_none(), "release before the next item");
        let deadline = if block {
            self.policy.deadline_with(self.call_deadline)
        } else {
            None
        };
        if !block && std::mem::take(&mut self.armed) {
            self.ring.woke();
            self.bell.drain();
        }
        loop {
            if let Some(rec) = self.ring.try_next()? {
                return self.event(rec).map(Some);
            }
            // Caught up: hand back the room released in this batch.
            if self.ring.flush_release() {
                self.bell.ring();
            }
            if self.bell.peer_closed() {
                return Err(Error::PeerGone(
                    "the sending peer closed the stream without ending it".into(),
                ));
            }
            if !block {
                self.check_stray_fds()?;
                // Arm the flag so the doorbell turns readable when data comes.
                if self.ring.prepare_sleep() {
                    self.armed = true;
                    return Ok(None);
                }
                continue;
            }
            let ring = &mut self.ring;
            // The next record is likely the size of the last one.
            let policy = self.policy.for_record(self.last_len);
            if let Some(rec) = self.spinner.spin(policy, || ring.try_next())? {
                return self.event(rec).map(Some);
            }
            self.check_stray_fds()?;
            if self.ring.prepare_sleep() {
                let slept = self.bell.sleep(deadline);
                self.ring.woke();
                slept?;
            } else {
                self.bell.drain();
            }
            self.spinner.woke(policy, self.bell.take_rung_at());
        }
    }

    /// The held item's bytes, in place in the ring.
    #[inline]
    pub(crate) fn item(&self) -> &[u8] {
        match &self.held {
            Some(rec) => self.ring.data(rec),
            None => &[],
        }
    }

    /// The held item's charge.
    #[inline]
    pub(crate) fn charge(&self) -> u64 {
        self.held.as_ref().map_or(0, |r| r.charge)
    }

    /// Releases the held item, returning its room and credit.
    #[inline]
    pub(crate) fn release(&mut self) -> Result<()> {
        if let Some(rec) = self.held.take() {
            if self.ring.release(&rec)? {
                self.bell.ring();
            }
        }
        Ok(())
    }

    /// Tells the producer to stop.
    pub(crate) fn cancel(&mut self) {
        if self.ring.cancel() {
            self.bell.ring();
        }
    }

    pub(crate) fn credit_outstanding(&self) -> u64 {
        self.ring.credit().outstanding()
    }

    pub(crate) fn doorbell(&self) -> std::os::fd::BorrowedFd<'_> {
        self.bell.fd()
    }

    /// A handle on this end of the doorbell that keeps it open after the
    /// port is gone.
    pub(crate) fn share_link(&self) -> Arc<OwnedFd> {
        self.bell.share()
    }
}
