//! The two halves of a stream direction, independent of transport:
//! [`Sender`] (bytes, typed items, zero-copy slots, `io::Write`) and
//! [`Receiver`] (bytes, typed items, in-place items, `io::Read` + `BufRead`).

use std::io::{self, BufRead, Read, Write};
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;
use shmbus::credit::{max_charge, CreditSpec, SizeStrategy};
use shmbus::frame::{Frame, StreamId, Transport};
use shmbus::state::{CloseCause, StreamEvent, StreamLifecycle, StreamState};

use crate::conn::Shared;
use crate::error::{Error, Result};
use crate::port::wait::WaitPolicy;
use crate::port::{Ending, RxEvent, RxPort, TxPort};

/// A function giving an item's credit charge, for [`SizeStrategy::Custom`].
pub type SizeFn = Box<dyn Fn(&[u8]) -> u64 + Send>;

fn lifecycle_opened() -> StreamLifecycle {
    let mut life = StreamLifecycle::new();
    life.apply(StreamEvent::Open).expect("IDLE → OPENING");
    life.apply(StreamEvent::PortEstablished)
        .expect("OPENING → ACTIVE");
    life
}

/// The sending half of a stream direction.
pub struct Sender {
    port: Option<TxPort>,
    life: StreamLifecycle,
    stream: StreamId,
    credit: CreditSpec,
    size_fn: Option<SizeFn>,
    typed_guess: usize,
    cancelled: Arc<AtomicBool>,
    scratch: Vec<u8>,
    progress: Progress,
}

impl Sender {
    pub(crate) fn new(
        port: TxPort,
        stream: StreamId,
        credit: CreditSpec,
        cancelled: Arc<AtomicBool>,
        conn: Arc<Shared>,
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
        }
    }

    /// Broker-wide stream id.
    pub fn stream_id(&self) -> StreamId {
        self.stream
    }

    /// Shared memory or socket.
    pub fn transport(&self) -> Option<Transport> {
        self.port.as_ref().map(|p| p.transport())
    }

    /// Current state in the seed's state machine.
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

    fn charge_for(&self, data: &[u8]) -> u64 {
        match self.credit.strategy {
            SizeStrategy::Items => 1,
            SizeStrategy::Bytes => data.len() as u64,
            SizeStrategy::Custom => self.size_fn.as_ref().map_or(1, |f| f(data)),
        }
    }

    fn port(&mut self) -> Result<&mut TxPort> {
        self.port.as_mut().ok_or(Error::Closed)
    }

    /// Counts a committed item and reports progress when due.
    fn sent(&mut self, len: usize) {
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

    /// Maps a port failure onto the stream: a cancellation is acknowledged
    /// with stream-cancel; other failures close the port.
    fn failed(&mut self, e: Error) -> Error {
        match e {
            Error::Cancelled => {
                self.cancelled.store(true, Ordering::Release);
                // The receiver may have stopped reading: never wait here.
                self.close_with(Ending::Cancelled, CloseCause::Cancel, false);
                Error::Cancelled
            }
            Error::TooLarge(_) => e,
            other => {
                let msg = other.to_string();
                if let Some(p) = &mut self.port {
                    p.abandon();
                }
                self.port = None;
                let _ = self.life.apply(StreamEvent::Close(CloseCause::Failed(msg)));
                let _ = self.life.apply(StreamEvent::Cleanup);
                other
            }
        }
    }

    /// Queues an item; it becomes visible at once on shared memory, and on
    /// the socket when a batch fills or at [`flush`](Self::flush).
    pub fn feed_bytes(&mut self, data: &[u8]) -> Result<()> {
        let charge = self.charge_for(data);
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
        let charge = self.charge_for(data);
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
        if self.credit.strategy == SizeStrategy::Custom {
            let mut scratch = std::mem::take(&mut self.scratch);
            scratch.clear();
            let scratch = postcard::to_extend(value, scratch)?;
            let r = self.feed_bytes(&scratch);
            self.scratch = scratch;
            return r;
        }
        let hwm = self.credit.high_water_mark;
        let strategy = self.credit.strategy;
        let r = (|| -> Result<usize> {
            loop {
                let max_item = self.port()?.max_item();
                let guess = self.typed_guess.min(max_item);
                let charge = match strategy {
                    SizeStrategy::Bytes => (guess as u64).min(max_charge(hwm)),
                    _ => 1,
                };
                let port = self.port()?;
                let buf = port.begin(guess, charge)?;
                match postcard::to_slice(value, buf) {
                    Ok(used) => {
                        let len = used.len();
                        let actual = match strategy {
                            SizeStrategy::Bytes => len as u64,
                            _ => 1,
                        };
                        if actual > charge {
                            port.abandon();
                            return Err(Error::TooLarge(format!(
                                "item of {len} bytes exceeds half the high-water mark {hwm}"
                            )));
                        }
                        port.commit(len, actual)?;
                        port.after_commit();
                        return Ok(len);
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
            Ok(len) => {
                self.sent(len);
                Ok(())
            }
            Err(e) => Err(self.failed(e)),
        }
    }

    /// Sends a typed item and makes it visible now.
    pub fn send<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        self.feed(value)?;
        self.flush()
    }

    /// Reserves `len` bytes in the port to fill in place (zero copy).
    /// Waits for credit as for `len` bytes; commit with [`SendSlot::commit`].
    pub fn reserve(&mut self, len: usize) -> Result<SendSlot<'_>> {
        let charge = match self.credit.strategy {
            SizeStrategy::Items => 1,
            SizeStrategy::Bytes => len as u64,
            SizeStrategy::Custom => self
                .size_fn
                .as_ref()
                .map_or(1, |_| self.credit.high_water_mark.min(len as u64).max(1)),
        };
        if let Err(e) = self.port().and_then(|p| p.begin(len, charge).map(|_| ())) {
            return Err(self.failed(e));
        }
        Ok(SendSlot {
            sender: self,
            len,
            charge,
            done: false,
        })
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
        let _ = self.life.apply(StreamEvent::Close(cause));
        let _ = self.life.apply(StreamEvent::Cleanup);
        self.progress.report(self.life.state(), 0);
    }

    /// Ends the stream normally (stream-end).
    pub fn finish(&mut self) -> Result<()> {
        let Some(port) = self.port.as_mut() else {
            return Err(if self.life.cause() == Some(&CloseCause::Cancel) {
                Error::Cancelled
            } else {
                Error::Closed
            });
        };
        if port.is_cancelled() {
            self.close_with(Ending::Cancelled, CloseCause::Cancel, false);
            return Err(Error::Cancelled);
        }
        let r = port.close(&Ending::End, true);
        self.port = None;
        let _ = self.life.apply(StreamEvent::Close(CloseCause::End));
        let _ = self.life.apply(StreamEvent::Cleanup);
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

    fn write_chunk(&self, len: usize) -> usize {
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
pub struct SendSlot<'a> {
    sender: &'a mut Sender,
    len: usize,
    charge: u64,
    done: bool,
}

impl SendSlot<'_> {
    /// The reserved bytes.
    pub fn buf(&mut self) -> &mut [u8] {
        let port = self.sender.port.as_mut().expect("slot holds an open port");
        port.reserved().expect("slot holds a reservation")
    }

    /// Commits the first `used` bytes as one item and publishes it.
    pub fn commit(mut self, used: usize) -> Result<()> {
        assert!(used <= self.len, "committed more than reserved");
        self.done = true;
        let charge = match self.sender.credit.strategy {
            SizeStrategy::Items => 1,
            SizeStrategy::Bytes => used as u64,
            SizeStrategy::Custom => {
                let data = self.buf();
                let data = data[..used].to_vec();
                let c = self.sender.size_fn.as_ref().map_or(1, |f| f(&data));
                c.min(self.charge)
            }
        };
        let port = self.sender.port.as_mut().expect("open");
        port.commit(used, charge)?;
        port.after_commit();
        self.sender.sent(used);
        Ok(())
    }
}

impl Drop for SendSlot<'_> {
    fn drop(&mut self) {
        if !self.done {
            if let Some(p) = self.sender.port.as_mut() {
                p.abandon();
            }
        }
    }
}

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
}

impl FailKind {
    fn error(&self) -> Error {
        match self {
            FailKind::Stream(m) => Error::Stream(m.clone()),
            FailKind::Cancelled => Error::Cancelled,
            FailKind::PeerGone(m) => Error::PeerGone(m.clone()),
            FailKind::Protocol(m) => Error::Protocol(m.clone()),
        }
    }
}

/// Counts a stream half's items and reports them to the broker now and then
/// (for `shmbusctl list` and `status`), and when the half closes.
struct Progress {
    conn: Arc<Shared>,
    stream: StreamId,
    bytes: u64,
    items: u64,
    last: Instant,
    reported_bytes: u64,
}

const REPORT_EVERY: Duration = Duration::from_millis(250);

impl Progress {
    fn new(conn: Arc<Shared>, stream: StreamId) -> Self {
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
    fn count(&mut self, len: usize) -> bool {
        self.bytes += len as u64;
        self.items += 1;
        (self.items.is_multiple_of(1024) || self.bytes - self.reported_bytes >= 16 << 20)
            && self.last.elapsed() >= REPORT_EVERY
    }

    fn report(&mut self, state: StreamState, credit_outstanding: u64) {
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

/// The receiving half of a stream direction.
pub struct Receiver {
    port: Option<RxPort>,
    life: StreamLifecycle,
    stream: StreamId,
    holding: bool,
    offset: usize,
    finished: Option<Finished>,
    progress: Progress,
    scratch: Vec<u8>,
}

impl Receiver {
    pub(crate) fn new(port: RxPort, stream: StreamId, conn: Arc<Shared>) -> Self {
        let mut r = Receiver {
            port: Some(port),
            life: lifecycle_opened(),
            stream,
            holding: false,
            offset: 0,
            finished: None,
            progress: Progress::new(conn, stream),
            scratch: Vec::new(),
        };
        r.report();
        r
    }

    /// Broker-wide stream id.
    pub fn stream_id(&self) -> StreamId {
        self.stream
    }

    /// Shared memory or socket, while the port is open.
    pub fn transport(&self) -> Option<Transport> {
        self.port.as_ref().map(|p| p.transport())
    }

    /// Current state in the seed's state machine.
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
        let credit = self.credit_outstanding();
        self.progress.report(self.life.state(), credit);
    }

    fn finish_with(&mut self, how: Finished, cause: CloseCause) {
        self.port = None;
        self.holding = false;
        self.finished = Some(how);
        let _ = self.life.apply(StreamEvent::Close(cause));
        let _ = self.life.apply(StreamEvent::Cleanup);
        self.report();
    }

    fn release_held(&mut self) -> Result<()> {
        if self.holding {
            self.holding = false;
            self.offset = 0;
            if let Some(p) = self.port.as_mut() {
                if let Err(e) = p.release() {
                    return Err(self.fail_port(e));
                }
            }
        }
        Ok(())
    }

    fn fail_port(&mut self, e: Error) -> Error {
        let kind = match &e {
            Error::PeerGone(m) => FailKind::PeerGone(m.clone()),
            Error::Cancelled => FailKind::Cancelled,
            other => FailKind::Protocol(other.to_string()),
        };
        self.finish_with(Finished::Failed(kind), CloseCause::Failed(e.to_string()));
        e
    }

    /// Advances to the next item and holds it; `Ok(false)` at stream-end.
    fn advance(&mut self, block: bool) -> Result<Option<bool>> {
        self.release_held()?;
        if let Some(f) = &self.finished {
            return match f {
                Finished::End => Ok(Some(false)),
                Finished::Failed(k) => Err(k.error()),
            };
        }
        let port = self.port.as_mut().ok_or(Error::Closed)?;
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
            Ok(Some(RxEvent::End)) => {
                self.finish_with(Finished::End, CloseCause::End);
                Ok(Some(false))
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

    /// The next item, in place; released when the returned guard drops.
    /// `None` at stream-end.
    pub fn recv_in_place(&mut self) -> Result<Option<InPlace<'_>>> {
        match self.advance(true)? {
            Some(true) => Ok(Some(InPlace { rx: self })),
            _ => Ok(None),
        }
    }

    /// Like [`recv_in_place`](Self::recv_in_place) without waiting:
    /// `Ok(None)` also when nothing has arrived yet (see [`is_finished`](Self::is_finished)).
    pub fn try_recv_in_place(&mut self) -> Result<Option<InPlace<'_>>> {
        match self.advance(false)? {
            Some(true) => Ok(Some(InPlace { rx: self })),
            _ => Ok(None),
        }
    }

    /// True once stream-end was seen.
    pub fn is_finished(&self) -> bool {
        matches!(self.finished, Some(Finished::End))
    }

    /// The next item, copied out. `None` at stream-end.
    pub fn recv_bytes(&mut self) -> Result<Option<Vec<u8>>> {
        Ok(self.recv_in_place()?.map(|item| item.to_vec()))
    }

    /// The next typed item, decoded in place. `None` at stream-end.
    ///
    /// The item is copied out of the port first: decoding validates (UTF-8,
    /// lengths) and then reads again, which must not see bytes a hostile
    /// peer changed in between.
    pub fn recv<T: DeserializeOwned>(&mut self) -> Result<Option<T>> {
        let mut scratch = std::mem::take(&mut self.scratch);
        let got = match self.recv_in_place()? {
            Some(item) => {
                scratch.clear();
                scratch.extend_from_slice(&item);
                true
            }
            None => false,
        };
        let r = if got {
            Some(postcard::from_bytes(&scratch))
        } else {
            None
        };
        let out = r.transpose().map_err(Error::from);
        self.scratch = scratch;
        out
    }

    /// Asks the sender to stop (stream-cancel). Items already sent are dropped.
    pub fn cancel(&mut self) {
        let _ = self.release_held();
        if let Some(p) = self.port.as_mut() {
            p.cancel();
        }
    }

    fn held(&self) -> &[u8] {
        match (&self.port, self.holding) {
            (Some(p), true) => p.item(),
            _ => &[],
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if self.finished.is_none() {
            self.cancel();
            self.finish_with(Finished::Failed(FailKind::Cancelled), CloseCause::Cancel);
        }
    }
}

/// An item held in place; dropping it releases its room and credit.
pub struct InPlace<'a> {
    rx: &'a mut Receiver,
}

impl InPlace<'_> {
    /// The item's credit charge.
    pub fn charge(&self) -> u64 {
        self.rx.port.as_ref().map_or(0, |p| p.charge())
    }
}

impl std::ops::Deref for InPlace<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.rx.held()
    }
}

impl Drop for InPlace<'_> {
    fn drop(&mut self) {
        // A failed release closes the stream; the next call reports it.
        let _ = self.rx.release_held();
    }
}

impl BufRead for Receiver {
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

impl Read for Receiver {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let avail = self.fill_buf()?;
        let n = avail.len().min(buf.len());
        buf[..n].copy_from_slice(&avail[..n]);
        self.consume(n);
        Ok(n)
    }
}
