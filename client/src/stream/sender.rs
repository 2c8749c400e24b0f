//! The sending half.

use std::io::{self, Write};
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use shmbus::credit::{max_charge, CreditSpec, SizeStrategy};
use shmbus::frame::{StreamId, Transport};
use shmbus::state::{CloseCause, StreamLifecycle, StreamState};

use super::progress::Progress;
use super::{close, lifecycle_opened, passed};
use crate::conn::CallLink;
use crate::error::{Error, Result};
use crate::port::wait::WaitPolicy;
use crate::port::{Ending, TxPort};

/// A function giving an item's credit charge, for [`SizeStrategy::Custom`].
pub type SizeFn = Box<dyn Fn(&[u8]) -> u64 + Send>;
/// The sending half of a stream direction.
///
/// Items go out in order with [`send`](Self::send) (typed, postcard),
/// [`send_bytes`](Self::send_bytes), [`reserve`](Self::reserve) (zero
/// copy) or through [`Write`]; each waits for credit when the receiver is
/// behind. End the direction with [`finish`](Self::finish) (stream-end) or
/// [`fail`](Self::fail) (stream-error); a sender dropped without either
/// ends it with an error. On the caller's side, [`Call::finish`](crate::Call::finish)
/// finishes a sender still in the call; on the service's side,
/// [`IncomingCall::reply`](crate::IncomingCall::reply) does.
pub struct Sender {
    port: Option<TxPort>,
    life: StreamLifecycle,
    stream: StreamId,
    pub(super) credit: CreditSpec,
    size_fn: Option<SizeFn>,
    typed_guess: usize,
    cancelled: Arc<AtomicBool>,
    scratch: Vec<u8>,
    progress: Progress,
    /// The open reservation's length and charge (a [`SendSlot`] is only a
    /// borrow of its sender, one word that moves in a register).
    reserved: (usize, u64),
    /// The call's deadline.
    deadline: Option<Instant>,
}

impl Sender {
    pub(crate) fn new(
        port: TxPort,
        stream: StreamId,
        credit: CreditSpec,
        cancelled: Arc<AtomicBool>,
        conn: CallLink,
    ) -> Self {
        Sender {
            port: Some(port),
            life: lifecycle_opened(),
            stream,
            credit,
            size_fn: None,
            typed_guess: 256,
            cancelled,
            scratch: Vec::new(),
            progress: Progress::new(conn, stream),
            reserved: (0, 0),
            deadline: None,
        }
    }

    /// Bounds every wait by the call's deadline.
    pub(crate) fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.deadline = deadline;
        if let Some(p) = &mut self.port {
            p.set_deadline(deadline);
        }
    }

    /// The call's deadline, if it has one: a send that must wait past it
    /// fails with [`Error::DeadlineExceeded`].
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Broker-wide stream id.
    pub fn stream_id(&self) -> StreamId {
        self.stream
    }

    /// Shared memory or socket.
    pub fn transport(&self) -> Option<Transport> {
        self.port.as_ref().map(|p| p.transport())
    }

    /// Current state in the stream state machine (see `PROTOCOL.md`).
    pub fn state(&self) -> StreamState {
        self.life.state()
    }

    /// Every state this direction passed through, in order.
    pub fn history(&self) -> &[StreamState] {
        self.life.history()
    }

    /// Sets the charge function used with [`SizeStrategy::Custom`].
    pub fn set_size_fn(&mut self, f: impl Fn(&[u8]) -> u64 + Send + 'static) {
        self.size_fn = Some(Box::new(f));
    }

    /// Chooses how long a blocked send spins before sleeping.
    pub fn set_wait_policy(&mut self, policy: WaitPolicy) {
        if let Some(p) = &mut self.port {
            p.set_wait_policy(policy);
        }
    }

    /// The stream's credit, as the caller chose it.
    pub fn credit(&self) -> CreditSpec {
        self.credit
    }

    /// Largest item this stream can carry.
    pub fn max_item(&self) -> usize {
        self.port.as_ref().map_or(0, |p| p.max_item())
    }

    /// Credit currently available to send.
    pub fn credit_available(&self) -> u64 {
        self.port.as_ref().map_or(0, |p| p.credit_available())
    }

    /// True once the receiver or the caller cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
            || self.port.as_ref().is_some_and(|p| p.is_cancelled())
    }

    /// A descriptor that becomes readable when the receiver may have made
    /// room or credit, or went away: for event loops.
    pub fn pollable_fd(&self) -> Option<BorrowedFd<'_>> {
        self.port.as_ref().map(|p| p.pollable())
    }

    #[inline]
    pub(super) fn port(&mut self) -> Result<&mut TxPort> {
        // Not `ok_or(Error::Closed)`, which builds and drops an error per call.
        match self.port.as_mut() {
            Some(p) => Ok(p),
            None => Err(Error::Closed),
        }
    }

    /// Counts a committed item and reports progress when due.
    #[inline]
    pub(super) fn sent(&mut self, len: usize) {
        if self.progress.count(len) {
            let credit = self.credit_available();
            self.progress.report(self.life.state(), credit);
        }
    }

    /// Items sent so far.
    pub fn items_sent(&self) -> u64 {
        self.progress.items
    }

    /// Payload bytes sent so far.
    pub fn bytes_sent(&self) -> u64 {
        self.progress.bytes
    }

    /// Fails the half because its call's deadline passed: the receiver is
    /// told why (the broker cancels the call at its deadline too).
    pub(crate) fn expire(&mut self) -> Error {
        self.cancelled.store(true, Ordering::Release);
        self.abort("the call's deadline passed");
        Error::DeadlineExceeded
    }

    /// Maps a port failure onto the stream: a cancellation is acknowledged
    /// with stream-cancel; other failures close the port.
    pub(super) fn failed(&mut self, e: Error) -> Error {
        if matches!(e, Error::Stalled | Error::Cancelled) && passed(self.deadline) {
            return self.expire();
        }
        match e {
            Error::Cancelled => {
                self.cancelled.store(true, Ordering::Release);
                // The receiver may have stopped reading: never wait here.
                self.close_with(Ending::Cancelled, CloseCause::Cancel, false);
                Error::Cancelled
            }
            Error::TooLarge(_) => e,
            Error::Stalled => {
                // Tell the receiver why, without waiting for it.
                self.abort("the sender gave up: the receiver made no progress (stall timeout)");
                Error::Stalled
            }
            other => {
                let msg = other.to_string();
                if let Some(p) = &mut self.port {
                    p.abandon();
                }
                self.port = None;
                close(&mut self.life, CloseCause::Failed(msg));
                other
            }
        }
    }

    /// Queues an item; it becomes visible to the receiver when a batch fills
    /// (a few KiB), when the sender must wait for credit or room, or at
    /// [`flush`](Self::flush). [`send_bytes`](Self::send_bytes) flushes.
    pub fn feed_bytes(&mut self, data: &[u8]) -> Result<()> {
        let charge = item_charge(&self.credit, self.size_fn.as_ref(), data.len(), Some(data));
        let r = (|| {
            let port = self.port()?;
            port.begin(data.len(), charge)?.copy_from_slice(data);
            port.commit(data.len(), charge)?;
            port.after_commit();
            Ok(())
        })();
        match r {
            Ok(()) => {
                self.sent(data.len());
                Ok(())
            }
            Err(e) => Err(self.failed(e)),
        }
    }

    /// Like [`feed_bytes`](Self::feed_bytes) but never waits: `Ok(false)`
    /// when credit or room is short. [`pollable_fd`](Self::pollable_fd) then
    /// turns readable once it is worth trying again.
    pub fn try_feed_bytes(&mut self, data: &[u8]) -> Result<bool> {
        let charge = item_charge(&self.credit, self.size_fn.as_ref(), data.len(), Some(data));
        let r = (|| {
            let port = self.port()?;
            let Some(buf) = port.try_begin(data.len(), charge)? else {
                return Ok(false);
            };
            buf.copy_from_slice(data);
            port.commit(data.len(), charge)?;
            port.after_commit();
            Ok(true)
        })();
        match r {
            Ok(true) => {
                self.sent(data.len());
                Ok(true)
            }
            Ok(false) => Ok(false),
            Err(e) => Err(self.failed(e)),
        }
    }

    /// Sends an item and makes it visible to the receiver now.
    pub fn send_bytes(&mut self, data: &[u8]) -> Result<()> {
        self.feed_bytes(data)?;
        self.flush()
    }

    /// Queues a typed item, encoded with postcard straight into the port.
    pub fn feed<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        self.feed_typed(value, true).map(|_| ())
    }

    /// Like [`feed`](Self::feed) but never waits: `Ok(false)` when credit
    /// or room is short (nothing was queued). [`pollable_fd`](Self::pollable_fd)
    /// then turns readable once it is worth trying again.
    pub fn try_feed<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<bool> {
        self.feed_typed(value, false)
    }

    /// Encodes `value` into the port, waiting for room with `block`;
    /// false when it would have had to wait.
    fn feed_typed<T: Serialize + ?Sized>(&mut self, value: &T, block: bool) -> Result<bool> {
        if self.credit.strategy == SizeStrategy::Custom {
            let mut scratch = std::mem::take(&mut self.scratch);
            scratch.clear();
            let scratch = postcard::to_extend(value, scratch)?;
            let r = if block {
                self.feed_bytes(&scratch).map(|()| true)
            } else {
                self.try_feed_bytes(&scratch)
            };
            self.scratch = scratch;
            return r;
        }
        let credit = self.credit;
        let hwm = credit.high_water_mark;
        let r = (|| -> Result<Option<usize>> {
            loop {
                let max_item = self.port()?.max_item();
                let guess = self.typed_guess.min(max_item);
                // The room may be larger than the encoding: reserve no more
                // credit than any one item may take.
                let charge = item_charge(&credit, None, guess, None).min(max_charge(hwm));
                let port = self.port()?;
                let buf = if block {
                    port.begin(guess, charge)?
                } else {
                    match port.try_begin(guess, charge)? {
                        Some(buf) => buf,
                        None => return Ok(None),
                    }
                };
                match postcard::to_slice(value, buf) {
                    Ok(used) => {
                        let len = used.len();
                        let actual = item_charge(&credit, None, len, None);
                        if actual > charge {
                            port.abandon();
                            return Err(Error::TooLarge(format!(
                                "item of {len} bytes exceeds half the high-water mark {hwm}"
                            )));
                        }
                        port.commit(len, actual)?;
                        port.after_commit();
                        return Ok(Some(len));
                    }
                    Err(postcard::Error::SerializeBufferFull) => {
                        port.abandon();
                        if guess >= max_item {
                            return Err(Error::TooLarge(format!(
                                "encoded item exceeds the stream's largest item ({max_item} bytes)"
                            )));
                        }
                        self.typed_guess = guess.saturating_mul(4);
                    }
                    Err(e) => {
                        port.abandon();
                        return Err(e.into());
                    }
                }
            }
        })();
        match r {
            Ok(Some(len)) => {
                self.sent(len);
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(e) => Err(self.failed(e)),
        }
    }

    /// Sends a typed item (postcard, encoded straight into the port) and
    /// makes it visible now. Waits while the receiver has not granted
    /// enough credit. [`feed`](Self::feed) queues without flushing, for
    /// many small items.
    ///
    /// ```no_run
    /// # fn demo(call: &mut shmbus_client::IncomingCall) -> shmbus_client::Result<()> {
    /// #[derive(serde::Serialize)]
    /// struct Reading {
    ///     sensor: u16,
    ///     celsius: f32,
    /// }
    /// let tx = call.sender().expect("a download");
    /// for sensor in 0..4 {
    ///     tx.send(&Reading { sensor, celsius: 21.5 })?;
    /// }
    /// tx.finish()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn send<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        self.feed(value)?;
        self.flush()
    }

    /// Reserves `len` bytes in the port to fill in place (zero copy).
    /// Waits for credit as for `len` bytes; commit with [`SendSlot::commit`]
    /// (any prefix of the room), or drop the slot to send nothing.
    ///
    /// Over shared memory the room is in the ring, which the receiving
    /// process can write too, protocol or not: a hostile receiver can
    /// change the bytes you put there, before or after the commit, and so
    /// only what it receives itself. The item's length and charge are what
    /// this side commits; the sender never relies on reading the room back
    /// (a custom size function is given a copy), so keep data you need to
    /// read again in your own memory, not only in the slot.
    ///
    /// ```no_run
    /// # fn demo(tx: &mut shmbus_client::Sender, file: &mut std::fs::File) -> shmbus_client::Result<()> {
    /// use std::io::Read;
    /// loop {
    ///     let mut slot = tx.reserve(64 * 1024)?;
    ///     let n = file.read(slot.buf())?; // read straight into the port
    ///     if n == 0 {
    ///         break; // the empty slot is dropped: nothing sent
    ///     }
    ///     slot.commit(n)?;
    /// }
    /// tx.finish()?;
    /// # Ok(())
    /// # }
    /// ```
    #[inline]
    pub fn reserve(&mut self, len: usize) -> Result<SendSlot<'_>> {
        let charge = item_charge(&self.credit, self.size_fn.as_ref(), len, None);
        if let Err(e) = self.port().and_then(|p| p.begin(len, charge).map(|_| ())) {
            return Err(self.failed(e));
        }
        self.reserved = (len, charge);
        Ok(SendSlot { sender: self })
    }

    /// Like [`reserve`](Self::reserve) but never waits: `Ok(None)` when
    /// credit or room is short. [`pollable_fd`](Self::pollable_fd) then
    /// turns readable once it is worth trying again.
    pub fn try_reserve(&mut self, len: usize) -> Result<Option<SendSlot<'_>>> {
        Ok(self
            .try_begin_slot(len)?
            .then_some(SendSlot { sender: self }))
    }

    /// Reserves room for [`SendSlot::for_reserved`] without waiting; false
    /// when credit or room is short.
    pub(crate) fn try_begin_slot(&mut self, len: usize) -> Result<bool> {
        let charge = item_charge(&self.credit, self.size_fn.as_ref(), len, None);
        match self
            .port()
            .and_then(|p| p.try_begin(len, charge).map(|b| b.is_some()))
        {
            Ok(true) => {
                self.reserved = (len, charge);
                Ok(true)
            }
            Ok(false) => Ok(false),
            Err(e) => Err(self.failed(e)),
        }
    }

    /// Makes everything queued visible to the receiver without waiting:
    /// `Ok(false)` when a socket port could not take all of it yet (see
    /// [`wants_write`](Self::wants_write)).
    pub fn try_flush(&mut self) -> Result<bool> {
        match self.port.as_mut() {
            Some(p) => p.try_flush().map_err(|e| self.failed(e)),
            None if self.life.cause() == Some(&CloseCause::Cancel) => Err(Error::Cancelled),
            None => Err(Error::Closed),
        }
    }

    /// Ends the stream normally (stream-end) without waiting: `Ok(false)`
    /// when the closing message could not go out yet; call again once
    /// [`pollable_fd`](Self::pollable_fd) is ready ([`wants_write`](Self::wants_write)
    /// says whether writable, else readable).
    pub fn try_finish(&mut self) -> Result<bool> {
        self.try_end(Ending::End, CloseCause::End)
    }

    /// Ends the stream with stream-error without waiting, as
    /// [`try_finish`](Self::try_finish) ends it normally: `Ok(false)` when
    /// the message could not go out yet.
    pub fn try_fail(&mut self, message: &str) -> Result<bool> {
        self.try_end(
            Ending::Error(message.to_string()),
            CloseCause::Error(message.to_string()),
        )
    }

    fn try_end(&mut self, how: Ending, cause: CloseCause) -> Result<bool> {
        let port = self.port_to_end()?;
        match port.try_close(&how) {
            Ok(false) => Ok(false),
            Ok(true) => {
                self.port = None;
                close(&mut self.life, cause);
                self.progress.report(self.life.state(), 0);
                Ok(true)
            }
            Err(e) => Err(self.failed(e)),
        }
    }

    /// True when a non-blocking call returned "not now" because the port
    /// waits for its descriptor to turn writable (a socket port with bytes
    /// it has not taken yet); otherwise it waits for it to turn readable.
    pub fn wants_write(&self) -> bool {
        self.port.as_ref().is_some_and(|p| p.wants_write())
    }

    /// How long an event loop re-tries an item of `len` bytes before it
    /// waits on the reactor (see [`Receiver::wait_spin`](crate::Receiver)).
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn wait_spin(&self, len: usize) -> std::time::Duration {
        self.port
            .as_ref()
            .map_or(std::time::Duration::ZERO, |p| p.wait_spin(len))
    }

    /// Never blocks in a write, even when a batch fills (`true`): for a
    /// sender an event loop drives.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn set_nonblocking(&mut self, nonblocking: bool) {
        if let Some(p) = &mut self.port {
            p.set_nonblocking(nonblocking);
        }
    }

    /// Makes everything queued visible to the receiver.
    pub fn flush(&mut self) -> Result<()> {
        match self.port.as_mut() {
            Some(p) => p.flush().map_err(|e| self.failed(e)),
            None if self.life.cause() == Some(&CloseCause::Cancel) => Err(Error::Cancelled),
            None => Err(Error::Closed),
        }
    }

    fn close_with(&mut self, how: Ending, cause: CloseCause, blocking: bool) {
        if let Some(mut port) = self.port.take() {
            port.abandon();
            let _ = port.close(&how, blocking);
        }
        close(&mut self.life, cause);
        self.progress.report(self.life.state(), 0);
    }

    /// The port, to write stream-end to: an error when the stream already
    /// ended, or was cancelled (acknowledged here).
    fn port_to_end(&mut self) -> Result<&mut TxPort> {
        let cancelled = match self.port.as_ref() {
            None if self.life.cause() == Some(&CloseCause::Cancel) => return Err(Error::Cancelled),
            None => return Err(Error::Closed),
            Some(port) => port.is_cancelled(),
        };
        if cancelled {
            self.close_with(Ending::Cancelled, CloseCause::Cancel, false);
            return Err(Error::Cancelled);
        }
        self.port()
    }

    /// Ends the stream normally (stream-end).
    pub fn finish(&mut self) -> Result<()> {
        let r = self.port_to_end()?.close(&Ending::End, true);
        self.port = None;
        close(&mut self.life, CloseCause::End);
        self.progress.report(self.life.state(), 0);
        r
    }

    /// Ends the stream with stream-error; the receiver gets every item sent
    /// before it, then this message.
    pub fn fail(&mut self, message: &str) -> Result<()> {
        if self.port.is_none() {
            return Err(Error::Closed);
        }
        self.close_with(
            Ending::Error(message.to_string()),
            CloseCause::Error(message.to_string()),
            true,
        );
        Ok(())
    }

    /// Ends the stream with stream-error without ever waiting: one attempt,
    /// then the port closes (the receiver sees the peer gone if the error
    /// did not fit).
    pub(crate) fn abort(&mut self, message: &str) {
        self.close_with(
            Ending::Error(message.to_string()),
            CloseCause::Error(message.to_string()),
            false,
        );
    }

    pub(crate) fn is_open(&self) -> bool {
        self.port.is_some()
    }

    /// How much of a `len`-byte write one item takes (for writers).
    pub(crate) fn write_chunk(&self, len: usize) -> usize {
        let max = self.max_item().clamp(1, 1 << 20);
        let mut chunk = len.min(max);
        if self.credit.strategy == SizeStrategy::Bytes {
            let quarter = (self.credit.high_water_mark as usize / 4).max(1);
            chunk = chunk.min(quarter);
            let avail = self.credit_available() as usize;
            if avail < chunk && avail >= chunk.min(4096) {
                chunk = avail;
            }
        }
        chunk.max(1)
    }
}

/// The credit charge of an item: the one place it is computed.
///
/// Item and byte credit fix it ([`SizeStrategy::fixed_charge`]). Custom
/// credit asks the sender's size function for an item whose bytes are
/// known (`data`), and charges 1 without a function. For room of `len`
/// bytes reserved before its bytes exist (`data` is `None`), the result is
/// the most the item may then be charged: custom credit bounds it by the
/// high-water mark and the length (at least 1), and the committed item is
/// charged its function's value capped at that bound.
#[inline]
fn item_charge(
    credit: &CreditSpec,
    size_fn: Option<&SizeFn>,
    len: usize,
    data: Option<&[u8]>,
) -> u64 {
    if let Some(fixed) = credit.strategy.fixed_charge(len) {
        return fixed;
    }
    match (size_fn, data) {
        (None, _) => 1,
        (Some(f), Some(data)) => f(data),
        (Some(_), None) => credit.high_water_mark.min(len as u64).max(1),
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        if self.port.is_some() {
            let msg = if std::thread::panicking() {
                "sender panicked"
            } else {
                "sender dropped without finishing the stream"
            };
            self.abort(msg);
        }
    }
}

impl Write for Sender {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let n = self.write_chunk(buf.len());
        self.feed_bytes(&buf[..n]).map_err(Error::into_io)?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Sender::flush(self).map_err(Error::into_io)
    }
}

/// Room reserved in a stream, filled in place. Dropping it abandons it.
///
/// Over shared memory the room is ring memory that a hostile receiver can
/// write too (see [`Sender::reserve`]): it can change only the bytes it
/// receives.
pub struct SendSlot<'a> {
    sender: &'a mut Sender,
}

impl<'a> SendSlot<'a> {
    /// The slot [`Sender::try_begin_slot`] reserved.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn for_reserved(sender: &'a mut Sender) -> Self {
        SendSlot { sender }
    }
}

impl SendSlot<'_> {
    /// The reserved bytes, in the port's memory. Over shared memory a
    /// hostile receiver can change them at any moment: write what you send
    /// here, but do not rely on reading it back (see [`Sender::reserve`]).
    #[inline]
    pub fn buf(&mut self) -> &mut [u8] {
        let port = self.sender.port.as_mut().expect("slot holds an open port");
        port.reserved().expect("slot holds a reservation")
    }

    /// Commits the first `used` bytes as one item and publishes it. With
    /// [`SizeStrategy::Custom`] credit, the size function is given a copy
    /// of those bytes.
    #[inline]
    pub fn commit(self, used: usize) -> Result<()> {
        // Committed, or failed committing: either way not abandoned on drop.
        let mut this = std::mem::ManuallyDrop::new(self);
        let sender: &mut Sender = this.sender;
        let (len, reserved_charge) = sender.reserved;
        assert!(used <= len, "committed more than reserved");
        // A size function is given a copy: the slot is ring memory, which a
        // hostile receiver could change while the function reads it.
        let custom =
            sender.credit.strategy.fixed_charge(used).is_none() && sender.size_fn.is_some();
        let port = sender.port.as_mut().expect("slot holds an open port");
        let data =
            custom.then(|| port.reserved().expect("slot holds a reservation")[..used].to_vec());
        let charge = item_charge(
            &sender.credit,
            sender.size_fn.as_ref(),
            used,
            data.as_deref(),
        )
        .min(reserved_charge);
        port.commit(used, charge)?;
        port.after_commit();
        sender.sent(used);
        Ok(())
    }
}

impl Drop for SendSlot<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.sender.port.as_mut() {
            p.abandon();
        }
    }
}
