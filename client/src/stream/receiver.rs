//! The receiving half.

use std::io::{self, BufRead, Read};
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use shmbus::credit::CreditSpec;
use shmbus::frame::{StreamId, Transport};
use shmbus::state::{CloseCause, StreamLifecycle, StreamState};

use super::progress::Progress;
use super::TryRecv;
use super::{close, lifecycle_opened, passed};
use crate::conn::CallLink;
use crate::error::{decode, Error, Result};
use crate::port::wait::WaitPolicy;
use crate::port::{RxEvent, RxPort};
use shmbus::blob::Blob;

#[derive(Debug, Clone)]
enum Finished {
    End,
    Failed(FailKind),
}

#[derive(Debug, Clone)]
enum FailKind {
    Stream(String),
    Cancelled,
    PeerGone(String),
    Protocol(String),
    Stalled,
    DeadlineExceeded,
}

impl FailKind {
    fn error(&self) -> Error {
        match self {
            FailKind::Stream(m) => Error::Stream(m.clone()),
            FailKind::Cancelled => Error::Cancelled,
            FailKind::PeerGone(m) => Error::PeerGone(m.clone()),
            FailKind::Protocol(m) => Error::Protocol(m.clone()),
            FailKind::Stalled => Error::Stalled,
            FailKind::DeadlineExceeded => Error::DeadlineExceeded,
        }
    }
}

/// The receiving half of a stream direction.
///
/// Items come out in order with [`recv`](Self::recv) (typed),
/// [`recv_bytes`](Self::recv_bytes), [`recv_in_place`](Self::recv_in_place)
/// (zero copy) or through [`Read`]/[`BufRead`]; each returns `None` (or
/// 0 bytes) at stream-end and an error when the sender failed, cancelled
/// or died. Get one from [`Call::take_receiver`](crate::Call::take_receiver)
/// (or borrow it with [`Call::receiver`](crate::Call::receiver)), or on the
/// service side from [`IncomingCall::take_receiver`](crate::IncomingCall::take_receiver).
///
/// The stream's outcome is separate from the call's result: a sender that
/// fails the stream makes `recv` return [`Error::Stream`], and the call's
/// [`finish`](crate::Call::finish) still returns whatever the service
/// answered.
pub struct Receiver {
    pub(super) port: Option<RxPort>,
    life: StreamLifecycle,
    stream: StreamId,
    pub(super) holding: bool,
    /// The held item is a blob: its bytes are this sealed mapping.
    pub(super) blob: Option<Blob>,
    /// The held item was not handed out ([`recv_blob`](Self::recv_blob)
    /// found an item): the next receive hands it out.
    pub(super) unclaimed: bool,
    offset: usize,
    finished: Option<Finished>,
    progress: Progress,
    scratch: Vec<u8>,
    /// Whether the broker has heard of this half since it opened.
    announced: bool,
    /// Set by the call's [`CancelHandle`](crate::CancelHandle): the next
    /// receive cancels.
    stop: Option<Arc<AtomicBool>>,
    /// The call's deadline.
    deadline: Option<Instant>,
}

impl Receiver {
    pub(crate) fn new(port: RxPort, stream: StreamId, conn: CallLink) -> Self {
        Receiver {
            port: Some(port),
            life: lifecycle_opened(),
            stream,
            holding: false,
            blob: None,
            unclaimed: false,
            offset: 0,
            finished: None,
            progress: Progress::new(conn, stream),
            scratch: Vec::new(),
            // No report yet: it would wake the broker while both peers race
            // to the first item. The first one goes once that item was handed
            // out and nothing more is in; a stream whose end is in by then
            // is reported by its sender alone.
            announced: false,
            stop: None,
            deadline: None,
        }
    }

    /// The largest item this stream carries (0 once it is closed).
    pub fn max_item(&self) -> usize {
        self.port.as_ref().map_or(0, |p| p.max_item())
    }

    /// The stream's credit, as the caller chose it (`None` once closed).
    pub fn credit(&self) -> Option<CreditSpec> {
        self.port.as_ref().map(|p| p.credit_spec())
    }

    /// Bounds every wait by the call's deadline.
    pub(crate) fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.deadline = deadline;
        if let Some(p) = &mut self.port {
            p.set_deadline(deadline);
        }
    }

    /// The call's deadline, if it has one: a receive that must wait past
    /// it fails with [`Error::DeadlineExceeded`].
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Makes the next receive cancel the stream once `stop` is set.
    pub(crate) fn stop_on(&mut self, stop: Arc<AtomicBool>) {
        self.stop = Some(stop);
    }

    /// Broker-wide stream id.
    pub fn stream_id(&self) -> StreamId {
        self.stream
    }

    /// Shared memory or socket, while the port is open.
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

    /// Payload bytes received so far.
    pub fn bytes_received(&self) -> u64 {
        self.progress.bytes
    }

    /// Items received so far.
    pub fn items_received(&self) -> u64 {
        self.progress.items
    }

    /// Credit granted and not yet used by the sender.
    pub fn credit_outstanding(&self) -> u64 {
        self.port.as_ref().map_or(0, |p| p.credit_outstanding())
    }

    /// Chooses how long a blocked receive spins before sleeping.
    pub fn set_wait_policy(&mut self, policy: WaitPolicy) {
        if let Some(p) = &mut self.port {
            p.set_wait_policy(policy);
        }
    }

    /// A descriptor that becomes readable when items may have arrived or the
    /// sender went away: for event loops.
    pub fn pollable_fd(&self) -> Option<BorrowedFd<'_>> {
        self.port.as_ref().map(|p| p.pollable())
    }

    fn report(&mut self) {
        self.announced = true;
        let credit = self.credit_outstanding();
        self.progress.report(self.life.state(), credit);
    }

    fn finish_with(&mut self, how: Finished, cause: CloseCause) {
        self.port = None;
        self.holding = false;
        // A normal end needs no report of a receiver that never made one:
        // the sender's own close report carries the state and byte count.
        let quiet = matches!(how, Finished::End) && !self.announced;
        self.finished = Some(how);
        close(&mut self.life, cause);
        if !quiet {
            self.report();
        }
    }

    #[inline]
    pub(super) fn release_held(&mut self) -> Result<()> {
        if self.holding {
            self.holding = false;
            self.unclaimed = false;
            self.offset = 0;
            self.blob = None;
            if let Some(p) = self.port.as_mut() {
                if let Err(e) = p.release() {
                    return Err(self.fail_port(e));
                }
            }
        }
        Ok(())
    }

    fn fail_port(&mut self, e: Error) -> Error {
        if matches!(e, Error::Stalled | Error::Cancelled) && passed(self.deadline) {
            return self.expire();
        }
        let kind = match &e {
            Error::PeerGone(m) => FailKind::PeerGone(m.clone()),
            Error::Cancelled => FailKind::Cancelled,
            Error::Stalled => {
                // Tell the sender to stop; it may be stuck too.
                if let Some(p) = self.port.as_mut() {
                    p.cancel();
                }
                FailKind::Stalled
            }
            other => FailKind::Protocol(other.to_string()),
        };
        self.finish_with(Finished::Failed(kind), CloseCause::Failed(e.to_string()));
        e
    }

    /// Advances to the next item and holds it; `Ok(false)` at stream-end.
    #[inline]
    pub(super) fn advance(&mut self, block: bool) -> Result<Option<bool>> {
        if self.holding {
            if self.unclaimed {
                self.unclaimed = false;
                return Ok(Some(true));
            }
            self.release_held()?;
        }
        if let Some(f) = &self.finished {
            return match f {
                Finished::End => Ok(Some(false)),
                Finished::Failed(k) => Err(k.error()),
            };
        }
        if self
            .stop
            .as_ref()
            .is_some_and(|s| s.load(Ordering::Acquire))
        {
            self.cancel();
            return Err(Error::Cancelled);
        }
        // Not `ok_or(Error::Closed)`: that builds the error on every call
        // and drops it out of line (2% of a 64-byte item's time).
        let Some(port) = self.port.as_mut() else {
            return Err(Error::Closed);
        };
        // Announced once an item was handed out and the next is not there
        // yet; a stream whose end is already in needs no announcement.
        if !self.announced && self.progress.items > 0 && !port.has_pending() {
            self.report();
        }
        let Some(port) = self.port.as_mut() else {
            return Err(Error::Closed);
        };
        match port.next(block) {
            Ok(None) => Ok(None),
            Ok(Some(RxEvent::Item)) => {
                self.holding = true;
                self.offset = 0;
                let len = port.item().len();
                if self.progress.count(len) {
                    self.report();
                }
                Ok(Some(true))
            }
            Ok(Some(RxEvent::Blob(blob))) => {
                self.holding = true;
                self.offset = 0;
                let len = blob.len();
                self.blob = Some(blob);
                if self.progress.count(len) {
                    self.report();
                }
                Ok(Some(true))
            }
            Ok(Some(RxEvent::End)) => {
                self.finish_with(Finished::End, CloseCause::End);
                Ok(Some(false))
            }
            // A failure that comes after the call's deadline is the
            // deadline's doing (the far side failed the stream for it, or
            // the broker cancelled the call): report it as such, whether
            // this side was waiting or read it later.
            Ok(Some(RxEvent::Error(_) | RxEvent::Cancelled)) if passed(self.deadline) => {
                Err(self.expire())
            }
            Ok(Some(RxEvent::Error(m))) => {
                self.finish_with(
                    Finished::Failed(FailKind::Stream(m.clone())),
                    CloseCause::Error(m.clone()),
                );
                Err(Error::Stream(m))
            }
            Ok(Some(RxEvent::Cancelled)) => {
                self.finish_with(Finished::Failed(FailKind::Cancelled), CloseCause::Cancel);
                Err(Error::Cancelled)
            }
            Err(e) => Err(self.fail_port(e)),
        }
    }

    /// The next item, in place: a view of the port's memory, with no copy.
    /// The item's room and credit are released when the returned guard
    /// drops. `None` at stream-end. Waits while nothing has arrived.
    ///
    /// # A sender that writes under the view
    ///
    /// Over shared memory the view is the ring itself, which the sending
    /// process can write at any moment, protocol or not. A hostile sender
    /// that rewrites the item while you hold it changes what the view
    /// shows: two reads of a byte may disagree, and a copy may mix old and
    /// new bytes (the compiler, which assumes the bytes behind a `&[u8]` do
    /// not change, may also fold or repeat reads). Everything else stays as
    /// validated when the item arrived: its length and
    /// [`charge`](InPlace::charge) are the receiver's own copies, releasing
    /// it uses them and not the ring, and the stream's accounting and every
    /// later item are unaffected. So when the sender is not trusted, read
    /// each byte once, and check a value in a copy rather than in the view
    /// (or use [`recv_bytes`](Self::recv_bytes) and [`recv`](Self::recv),
    /// which copy once and validate only the copy). Over the socket
    /// fallback the view is the receiver's own buffer, which no peer can
    /// write.
    ///
    /// ```no_run
    /// # fn demo(rx: &mut shmbus_client::Receiver) -> shmbus_client::Result<()> {
    /// let mut total = 0u64;
    /// while let Some(item) = rx.recv_in_place()? {
    ///     total += item.iter().map(|&b| b as u64).sum::<u64>();
    /// } // each item is released when `item` goes out of scope
    /// # Ok(())
    /// # }
    /// ```
    #[inline]
    pub fn recv_in_place(&mut self) -> Result<Option<InPlace<'_>>> {
        match self.advance(true)? {
            Some(true) => Ok(Some(InPlace { rx: self })),
            _ => Ok(None),
        }
    }

    /// Like [`recv_in_place`](Self::recv_in_place) but never waits. For
    /// event loops: on [`TryRecv::Empty`], wait for
    /// [`pollable_fd`](Self::pollable_fd) to turn readable and try again.
    /// The view is the ring's memory over shared memory: a hostile sender
    /// can change its bytes while it is held, and only them (see
    /// [`recv_in_place`](Self::recv_in_place)).
    ///
    /// ```no_run
    /// # fn demo(rx: &mut shmbus_client::Receiver) -> shmbus_client::Result<()> {
    /// use shmbus_client::TryRecv;
    /// loop {
    ///     match rx.try_recv_in_place()? {
    ///         TryRecv::Item(item) => println!("{} bytes", item.len()),
    ///         TryRecv::Empty => {
    ///             // Register rx.pollable_fd() with the event loop; come back when readable.
    ///             break;
    ///         }
    ///         TryRecv::End => break,
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn try_recv_in_place(&mut self) -> Result<TryRecv<InPlace<'_>>> {
        Ok(match self.advance(false)? {
            Some(true) => TryRecv::Item(InPlace { rx: self }),
            Some(false) => TryRecv::End,
            None => TryRecv::Empty,
        })
    }

    /// Like [`recv_bytes`](Self::recv_bytes) but never waits.
    pub fn try_recv_bytes(&mut self) -> Result<TryRecv<Vec<u8>>> {
        Ok(self.try_recv_in_place()?.map(|item| item.to_vec()))
    }

    /// Like [`recv`](Self::recv) but never waits.
    pub fn try_recv<T: DeserializeOwned>(&mut self) -> Result<TryRecv<T>> {
        match self.advance(false)? {
            Some(true) => {
                self.copy_held();
                Ok(TryRecv::Item(decode(&self.scratch)?))
            }
            Some(false) => Ok(TryRecv::End),
            None => Ok(TryRecv::Empty),
        }
    }

    /// Moves to the next item without waiting and holds it: `Some(true)`
    /// for an item (read it with [`InPlace::for_held`] or
    /// [`decode_held`](Self::decode_held)), `Some(false)` at stream-end,
    /// `None` when nothing is there yet (the pollable descriptor then turns
    /// readable once something is).
    /// The unread rest of the held item, if any (for a buffered reader).
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn unread(&self) -> Option<&[u8]> {
        let held = self.held();
        (self.holding && self.offset < held.len()).then(|| &held[self.offset..])
    }

    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn try_advance(&mut self) -> Result<Option<bool>> {
        self.advance(false)
    }

    /// Fails the half because its call's deadline passed (an event loop's
    /// timer saw it): the sender is told to stop.
    pub(crate) fn expire(&mut self) -> Error {
        // Tell the sender to stop (the broker cancels the call too).
        if let Some(p) = self.port.as_mut() {
            p.cancel();
        }
        self.finish_with(
            Finished::Failed(FailKind::DeadlineExceeded),
            CloseCause::Failed("deadline exceeded".into()),
        );
        Error::DeadlineExceeded
    }

    /// Whether a non-blocking receive that found nothing waits for the
    /// port's descriptor to turn writable (credit the socket has not taken
    /// yet) as well as readable.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn wants_write(&self) -> bool {
        self.port.as_ref().is_some_and(|p| p.wants_write())
    }

    /// How long an event loop re-tries before it waits on the reactor:
    /// the wait policy's spin, stretched for a large last item as the
    /// blocking wait does; none over the socket.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn wait_spin(&self) -> std::time::Duration {
        self.port
            .as_ref()
            .map_or(std::time::Duration::ZERO, |p| p.wait_spin())
    }

    /// Decodes the held item from a copy, releasing it.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn decode_held<'a, T: Deserialize<'a>>(&'a mut self) -> Result<T> {
        self.copy_held();
        decode(&self.scratch)
    }

    /// True once stream-end was seen.
    pub fn is_finished(&self) -> bool {
        matches!(self.finished, Some(Finished::End))
    }

    /// The next item, copied out once: the copy is the receiver's, which no
    /// peer can change. `None` at stream-end.
    pub fn recv_bytes(&mut self) -> Result<Option<Vec<u8>>> {
        Ok(self.recv_in_place()?.map(|item| item.to_vec()))
    }

    /// The next typed item (postcard), decoded from a copy. `None` at
    /// stream-end.
    ///
    /// The item must be exactly one `T`: an item with bytes left over after
    /// decoding is an [`Error::Codec`], so a peer sending another type is
    /// caught rather than decoded into a wrong value. The item is copied
    /// out of the port first: decoding validates (UTF-8, lengths) and then
    /// reads again, which must not see bytes a hostile peer changed in
    /// between.
    ///
    /// ```no_run
    /// # fn demo(call: &mut shmbus_client::Call) -> shmbus_client::Result<()> {
    /// let mut rx = call.take_receiver().expect("a download");
    /// let mut sum = 0u64;
    /// while let Some(n) = rx.recv::<u64>()? {
    ///     sum += n;
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn recv<T: DeserializeOwned>(&mut self) -> Result<Option<T>> {
        if !self.copy_next()? {
            return Ok(None);
        }
        Ok(Some(decode(&self.scratch)?))
    }

    /// The next typed item, decoded from the receiver's own copy of it and
    /// borrowing from that copy: `&str`, `&[u8]` or `&serde_bytes::Bytes`
    /// fields cost no allocation. The borrow ends at the next call.
    /// `None` at stream-end. Like [`recv`](Self::recv), bytes left over
    /// after decoding are an error.
    ///
    /// ```no_run
    /// # fn demo(rx: &mut shmbus_client::Receiver) -> shmbus_client::Result<()> {
    /// #[derive(serde::Deserialize)]
    /// struct Line<'a> {
    ///     host: &'a str,
    ///     level: u8,
    /// }
    /// while let Some(line) = rx.recv_borrowed::<Line<'_>>()? {
    ///     println!("{} {}", line.host, line.level);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    #[inline]
    pub fn recv_borrowed<'a, T: Deserialize<'a>>(&'a mut self) -> Result<Option<T>> {
        if !self.copy_next()? {
            return Ok(None);
        }
        Ok(Some(decode(&self.scratch)?))
    }

    /// Copies the next item into `scratch`; false at stream-end.
    #[inline]
    fn copy_next(&mut self) -> Result<bool> {
        match self.advance(true)? {
            Some(true) => {
                self.copy_held();
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Copies the held item into `scratch` and releases it.
    #[inline]
    fn copy_held(&mut self) {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        scratch.extend_from_slice(self.held());
        self.scratch = scratch;
        // A failed release closes the stream; the next call reports it.
        let _ = self.release_held();
    }

    /// Cancels the stream (stream-cancel): the sender's next send fails as
    /// cancelled, and this receiver is done at once. Items already sent and
    /// not yet received are dropped: every later receive returns
    /// [`Error::Cancelled`], and none more arrives. Does not wait for the
    /// sender. Cancelling a stream that already ended does nothing.
    ///
    /// To cancel the whole call (and make its result "call aborted"), use
    /// [`Call::cancel`](crate::Call::cancel) or a
    /// [`CancelHandle`](crate::CancelHandle).
    pub fn cancel(&mut self) {
        if self.finished.is_some() {
            return;
        }
        let _ = self.release_held();
        if let Some(p) = self.port.as_mut() {
            p.cancel();
        }
        self.finish_with(Finished::Failed(FailKind::Cancelled), CloseCause::Cancel);
    }

    #[inline]
    pub(super) fn held(&self) -> &[u8] {
        match (&self.port, self.holding) {
            (Some(p), true) => match &self.blob {
                None => p.item(),
                Some(b) => b.as_bytes(),
            },
            _ => &[],
        }
    }
}

impl Drop for Receiver {
    #[inline]
    fn drop(&mut self) {
        self.cancel();
    }
}

/// An item held in place; dropping it releases its room and credit.
///
/// It dereferences to the item's bytes in the port's memory: over shared
/// memory, the ring, which a hostile sender can rewrite while the item is
/// held. Its length and [`charge`](Self::charge) cannot change (they are
/// the receiver's validated copies), nor can the release or anything after
/// it; only the bytes seen can. Read each byte once and check values in a
/// copy when the sender is not trusted ([`Receiver::recv_in_place`] has
/// the details).
pub struct InPlace<'a> {
    pub(super) rx: &'a mut Receiver,
}

impl<'a> InPlace<'a> {
    /// The item [`Receiver::try_advance`] holds.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn for_held(rx: &'a mut Receiver) -> Self {
        InPlace { rx }
    }
}

impl InPlace<'_> {
    /// The item's credit charge, as validated when it arrived.
    #[inline]
    pub fn charge(&self) -> u64 {
        self.rx.port.as_ref().map_or(0, |p| p.charge())
    }
}

impl std::ops::Deref for InPlace<'_> {
    type Target = [u8];
    #[inline]
    fn deref(&self) -> &[u8] {
        self.rx.held()
    }
}

impl Drop for InPlace<'_> {
    #[inline]
    fn drop(&mut self) {
        // A failed release closes the stream; the next call reports it.
        let _ = self.rx.release_held();
    }
}

/// Reading through the receiver's buffer, which over shared memory is the
/// ring itself: [`fill_buf`](BufRead::fill_buf) returns the rest of the
/// current item in place, and the item is released once
/// [`consume`](BufRead::consume) has passed its end.
///
/// As with [`Receiver::recv_in_place`], a hostile sender can rewrite the
/// bytes `fill_buf` returned while you hold them; the amount left, what
/// `consume` releases and every later item come from the receiver's own
/// validated copies and cannot change. Read each byte once and check
/// values in a copy when the sender is not trusted. [`Read::read`] copies
/// once into your buffer.
impl BufRead for Receiver {
    /// The rest of the current item, in place (over shared memory, bytes a
    /// hostile sender can change while they are held; see the impl's notes).
    /// Empty at stream-end.
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while !self.holding || self.offset >= self.held().len() {
            match self.advance(true).map_err(Error::into_io)? {
                Some(true) => {}
                _ => return Ok(&[]),
            }
        }
        let off = self.offset;
        Ok(&self.held()[off..])
    }

    fn consume(&mut self, amt: usize) {
        self.offset += amt;
        if self.holding && self.offset >= self.held().len() {
            let _ = self.release_held();
        }
    }
}

/// Copies each item's bytes once into the caller's buffer.
impl Read for Receiver {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let avail = self.fill_buf()?;
        let n = avail.len().min(buf.len());
        buf[..n].copy_from_slice(&avail[..n]);
        self.consume(n);
        Ok(n)
    }
}
