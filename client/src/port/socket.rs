//! The socket port: a dedicated Unix socket per direction between the two
//! peers, items batched into stream-data messages, credit in stream-credit
//! messages (see [`shmbus::link`]).

use std::collections::VecDeque;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use shmbus::blob::{Blob, DEFAULT_BLOB_LIMIT};
use shmbus::credit::{CreditSpec, RecvCredit, SendCredit};
use shmbus::link::{self, LinkEncoder, LinkMessage, ITEM_HEADER, MESSAGE_HEADER};
use shmbus::sys;

use super::result::LinkTail;
use super::wait::{stall_left, WaitPolicy};
use super::{Ending, RxEvent};
use crate::error::{Error, Result};

/// Port geometry shared by both sides.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SocketGeometry {
    /// Largest item.
    pub max_item: usize,
    /// Bytes batched before a write.
    pub window: usize,
    /// Largest message body accepted.
    pub max_body: usize,
}

impl SocketGeometry {
    pub(crate) fn for_ring_size(ring_size: u32) -> Self {
        let ring = ring_size as usize;
        // The receiver parses whole messages: a window of 128 KiB keeps it
        // busy while the next one is written (1 MiB windows ran at 0.5-0.7x
        // a tuned Unix socket for 64 KiB writes; 128 KiB at 1.0x).
        let window = ring.clamp(64 * 1024, 128 * 1024);
        let max_item = shmbus::ring::max_record(ring_size);
        SocketGeometry {
            max_item,
            window,
            max_body: window + max_item + ITEM_HEADER + 64,
        }
    }
}

fn gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset | io::ErrorKind::NotConnected
    )
}

/// Writes all of `bytes` to a non-blocking socket, handing anything that
/// arrives meanwhile to `on_readable`.
pub(crate) fn write_all(
    sock: &UnixStream,
    mut bytes: &[u8],
    mut on_readable: Option<&mut dyn FnMut() -> Result<()>>,
    deadline: Option<Instant>,
) -> Result<usize> {
    let total = bytes.len();
    while !bytes.is_empty() {
        match sys::send_with_fds(sock.as_fd(), bytes, &[], false) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let left = deadline.map(stall_left).transpose()?;
                let ready = sys::wait_ready(sock.as_fd(), on_readable.is_some(), true, left)?;
                if ready.readable {
                    if let Some(f) = on_readable.as_mut() {
                        f()?;
                    }
                }
            }
            Err(e) if gone(&e) => {
                return Err(Error::PeerGone(
                    "the receiving peer closed the stream".into(),
                ))
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(total)
}

/// Opens one direction's socket for a port: non-blocking, shared with the
/// call's peer result on the first direction.
pub(crate) fn link_socket(link: OwnedFd) -> Result<Arc<UnixStream>> {
    let sock = UnixStream::from(link);
    sock.set_nonblocking(true)?;
    Ok(Arc::new(sock))
}

/// Hands what a caller's port read past its last message to the call's
/// peer result: a result message, else the unread bytes.
fn leave_tail(tail: &Option<Arc<Mutex<LinkTail>>>, unread: &[u8]) {
    if let Some(tail) = tail {
        let mut tail = tail.lock().unwrap_or_else(|p| p.into_inner());
        tail.leftover.extend_from_slice(unread);
    }
}

/// Producing side over a socket.
pub(crate) struct SockTx {
    sock: Arc<UnixStream>,
    /// Caller side, first direction: where a result message goes.
    tail: Option<Arc<Mutex<LinkTail>>>,
    enc: LinkEncoder,
    credit: SendCredit,
    geometry: SocketGeometry,
    rbuf: Vec<u8>,
    cancelled_by_peer: bool,
    cancelled: Arc<AtomicBool>,
    peer_closed: bool,
    pub(crate) policy: WaitPolicy,
    /// The call's deadline: no wait outlasts it.
    pub(crate) call_deadline: Option<Instant>,
    deadline: Option<Instant>,
    /// Never block in a write (an event loop drives this port): a full
    /// batch waits in the encoder for [`try_flush`](Self::try_flush).
    pub(crate) nonblocking: bool,
    /// The closing message is in the encoder.
    closing: bool,
    /// A non-blocking blob send found the socket full with nothing
    /// buffered: an event loop waits for it to turn writable.
    blob_blocked: bool,
}

impl SockTx {
    pub(crate) fn open(
        sock: Arc<UnixStream>,
        tail: Option<Arc<Mutex<LinkTail>>>,
        geometry: SocketGeometry,
        credit: CreditSpec,
        cancelled: Arc<AtomicBool>,
    ) -> Result<Self> {
        Ok(SockTx {
            sock,
            tail,
            enc: LinkEncoder::new(),
            credit: SendCredit::new(credit),
            geometry,
            rbuf: Vec::new(),
            cancelled_by_peer: false,
            cancelled,
            peer_closed: false,
            policy: WaitPolicy::default(),
            call_deadline: None,
            deadline: None,
            nonblocking: false,
            closing: false,
            blob_blocked: false,
        })
    }

    pub(crate) fn max_item(&self) -> usize {
        self.geometry.max_item
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancelled_by_peer || self.cancelled.load(Ordering::Acquire)
    }

    pub(crate) fn credit_available(&self) -> u64 {
        self.credit.available()
    }

    /// Reads whatever control messages (credit, cancel) have arrived;
    /// with `block`, waits until at least one arrives or the peer closes.
    fn read_control(&mut self, block: bool) -> Result<()> {
        let mut buf = [0u8; 512];
        loop {
            match (&*self.sock).read(&mut buf) {
                Ok(0) => {
                    self.peer_closed = true;
                    return Ok(());
                }
                Ok(n) => {
                    self.rbuf.extend_from_slice(&buf[..n]);
                    self.parse_control()?;
                    if block {
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !block {
                        return Ok(());
                    }
                    let left = self.deadline.map(stall_left).transpose()?;
                    sys::wait_readable(self.sock.as_fd(), left)?;
                }
                Err(e) if gone(&e) => {
                    self.peer_closed = true;
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn parse_control(&mut self) -> Result<()> {
        let mut used = 0;
        while let Some((msg, n)) = link::decode(&self.rbuf[used..], link::MAX_CONTROL_BODY)
            .map_err(|e| Error::Protocol(e.to_string()))?
        {
            used += n;
            match msg {
                LinkMessage::Credit(limit) => self.credit.update_limit(limit)?,
                LinkMessage::Cancel => self.cancelled_by_peer = true,
                LinkMessage::Result(bytes) if self.tail.is_some() => {
                    if let Some(tail) = &self.tail {
                        let mut tail = tail.lock().unwrap_or_else(|p| p.into_inner());
                        tail.outcome = Some(bytes.to_vec());
                    }
                }
                other => {
                    return Err(Error::Protocol(format!(
                        "receiver sent {other:?} on a stream it receives"
                    )))
                }
            }
        }
        self.rbuf.drain(..used);
        Ok(())
    }

    /// Waits for enough credit, then returns room for the item in the batch.
    pub(crate) fn begin(&mut self, max_len: usize, charge: u64) -> Result<&mut [u8]> {
        self.wait_credit(max_len, charge, true)?;
        Ok(self.enc.begin_item(max_len, charge))
    }

    fn wait_credit(&mut self, max_len: usize, charge: u64, block: bool) -> Result<bool> {
        if max_len > self.geometry.max_item {
            return Err(Error::TooLarge(format!(
                "item of {max_len} bytes exceeds the stream's largest item ({} bytes)",
                self.geometry.max_item
            )));
        }
        self.deadline = None;
        loop {
            if self.is_cancelled() {
                return Err(Error::Cancelled);
            }
            if self.credit.check(charge)? {
                return Ok(true);
            }
            if block && self.deadline.is_none() {
                self.deadline = self.policy.deadline_with(self.call_deadline);
            }
            if block {
                self.flush()?;
            } else {
                self.flush_without_waiting();
            }
            if self.peer_closed {
                return Err(Error::PeerGone(
                    "the receiving peer closed the stream".into(),
                ));
            }
            self.read_control(block)?;
            if !block && !self.credit.check(charge)? {
                return Ok(false);
            }
        }
    }

    /// Like [`begin`](Self::begin) but never waits. A full batch that the
    /// socket does not take now blocks it too: [`wants_write`](Self::wants_write)
    /// then says the socket must turn writable first.
    pub(crate) fn try_begin(&mut self, max_len: usize, charge: u64) -> Result<Option<&mut [u8]>> {
        if self.enc.len() >= self.geometry.window && !self.try_flush()? {
            return Ok(None);
        }
        if !self.wait_credit(max_len, charge, false)? {
            return Ok(None);
        }
        Ok(Some(self.enc.begin_item(max_len, charge)))
    }

    /// Sends a blob after the items batched so far: its message goes out
    /// with the blob's descriptor on its first byte.
    pub(crate) fn send_blob(&mut self, blob: &Blob, charge: u64) -> Result<()> {
        self.wait_credit(0, charge, true)?;
        // What is batched goes first, so the descriptor rides on the blob
        // message's own first byte.
        self.flush()?;
        self.enc.blob(blob.len() as u64, charge);
        let deadline = self.policy.deadline_with(self.call_deadline);
        loop {
            match sys::send_with_fds(self.sock.as_fd(), self.enc.bytes(), &[blob.fd()], false) {
                Ok(n) => {
                    self.enc.consume(n);
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let left = deadline.map(stall_left).transpose()?;
                    let ready = sys::wait_ready(self.sock.as_fd(), true, true, left)?;
                    if ready.readable {
                        self.read_control(false)?;
                    }
                    if self.is_cancelled() {
                        let n = self.enc.len();
                        self.enc.consume(n);
                        return Err(Error::Cancelled);
                    }
                }
                Err(e) => {
                    let n = self.enc.len();
                    self.enc.consume(n);
                    self.peer_closed = true;
                    return Err(if gone(&e) {
                        Error::PeerGone("the receiving peer closed the stream".into())
                    } else {
                        e.into()
                    });
                }
            }
        }
        self.credit.charge(charge);
        // The rest of the message, if the socket took only part of it.
        self.flush()
    }

    /// [`send_blob`](Self::send_blob) without waiting: `Ok(false)` when
    /// credit is short or the socket is full (nothing of the blob was sent).
    pub(crate) fn try_send_blob(&mut self, blob: &Blob, charge: u64) -> Result<bool> {
        self.blob_blocked = false;
        // What is batched goes first, whole.
        if !self.try_flush()? || !self.wait_credit(0, charge, false)? {
            return Ok(false);
        }
        self.enc.blob(blob.len() as u64, charge);
        match sys::send_with_fds(self.sock.as_fd(), self.enc.bytes(), &[blob.fd()], false) {
            Ok(n) => {
                self.enc.consume(n);
                self.credit.charge(charge);
                // The rest of the message, if any, goes as the socket takes it.
                self.try_flush()?;
                Ok(true)
            }
            Err(e) => {
                let n = self.enc.len();
                self.enc.consume(n);
                match e.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => {
                        self.blob_blocked = true;
                        Ok(false)
                    }
                    _ if gone(&e) => {
                        self.peer_closed = true;
                        Err(Error::PeerGone(
                            "the receiving peer closed the stream".into(),
                        ))
                    }
                    _ => Err(e.into()),
                }
            }
        }
    }

    pub(crate) fn commit(&mut self, len: usize, charge: u64) -> Result<()> {
        self.enc.finish_item(len, charge);
        self.credit.charge(charge);
        if self.enc.len() >= self.geometry.window {
            if self.nonblocking {
                self.try_flush()?;
            } else {
                self.flush()?;
            }
        }
        Ok(())
    }

    /// Writes what the socket takes now and reads the control messages
    /// that came; true once nothing is left to write.
    pub(crate) fn try_flush(&mut self) -> Result<bool> {
        while !self.enc.is_empty() {
            match sys::send_with_fds(self.sock.as_fd(), self.enc.bytes(), &[], false) {
                Ok(n) => self.enc.consume(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if gone(&e) => {
                    self.peer_closed = true;
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.read_control(false)?;
        if self.cancelled_by_peer {
            return Err(Error::Cancelled);
        }
        if self.enc.is_empty() {
            return Ok(true);
        }
        if self.peer_closed {
            return Err(Error::PeerGone(
                "the receiving peer closed the stream".into(),
            ));
        }
        Ok(false)
    }

    /// Bytes are waiting for the socket to take them: an event loop waits
    /// for it to turn writable (as well as readable, for control messages).
    pub(crate) fn wants_write(&self) -> bool {
        !self.enc.is_empty() || self.blob_blocked
    }

    /// One step of closing that never waits: the closing message goes into
    /// the encoder once, then out as the socket takes it. True once sent.
    pub(crate) fn try_close(&mut self, how: &Ending) -> Result<bool> {
        if !self.closing {
            self.closing = true;
            match how {
                Ending::End => self.enc.end(),
                Ending::Error(m) => self.enc.error(m),
                Ending::Cancelled => self.enc.cancelled(),
            }
        }
        self.try_flush()
    }

    pub(crate) fn reserved(&mut self) -> Option<&mut [u8]> {
        self.enc.begun_item()
    }

    pub(crate) fn abandon(&mut self) {
        self.enc.abandon_item();
    }

    /// Writes what the socket takes now, never waiting.
    fn flush_without_waiting(&mut self) {
        if self.enc.is_empty() {
            return;
        }
        if let Ok(n) = sys::send_with_fds(self.sock.as_fd(), self.enc.bytes(), &[], false) {
            self.enc.consume(n);
        }
    }

    /// Writes every buffered message.
    pub(crate) fn flush(&mut self) -> Result<()> {
        if self.enc.is_empty() {
            return Ok(());
        }
        let bytes = self.enc.bytes();
        let mut control = Vec::new();
        let mut closed = false;
        let sock = &*self.sock;
        let mut on_readable = || {
            let mut buf = [0u8; 512];
            match (&*sock).read(&mut buf) {
                Ok(0) => closed = true,
                Ok(n) => control.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
            if control.len() > 1 << 20 {
                return Err(Error::Protocol("receiver floods control messages".into()));
            }
            Ok(())
        };
        let written = write_all(
            sock,
            bytes,
            Some(&mut on_readable),
            self.deadline
                .or(self.policy.deadline_with(self.call_deadline)),
        );
        self.rbuf.extend_from_slice(&control);
        self.peer_closed |= closed;
        if let Err(Error::PeerGone(_)) = &written {
            // A receiver that cancelled and then closed: its cancel may be
            // unread still, and says why it is gone.
            let _ = self.parse_control().and_then(|()| self.read_control(false));
            if self.cancelled_by_peer {
                return Err(Error::Cancelled);
            }
        }
        let written = written?;
        self.enc.consume(written);
        self.parse_control()
    }

    /// Sends the closing message. Without `blocking`, makes one attempt
    /// that never waits (for drop and cancel paths).
    pub(crate) fn close(&mut self, how: &Ending, blocking: bool) -> Result<()> {
        match how {
            Ending::End => self.enc.end(),
            Ending::Error(m) => self.enc.error(m),
            Ending::Cancelled => self.enc.cancelled(),
        }
        if blocking {
            return self.flush();
        }
        let bytes = self.enc.bytes();
        let _ = sys::send_with_fds(self.sock.as_fd(), bytes, &[], false);
        Ok(())
    }

    pub(crate) fn doorbell(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

impl Drop for SockTx {
    fn drop(&mut self) {
        leave_tail(&self.tail, &self.rbuf);
    }
}

/// Consuming side over a socket.
pub(crate) struct SockRx {
    sock: Arc<UnixStream>,
    /// Caller side, first direction: where a result message goes.
    tail: Option<Arc<Mutex<LinkTail>>>,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    batch: Option<(usize, usize)>,
    held: Option<(usize, usize, u64)>,
    credit: RecvCredit,
    geometry: SocketGeometry,
    pending_credit: Option<u64>,
    pending_cancel: bool,
    unsent: Vec<u8>,
    peer_closed: bool,
    pub(crate) policy: WaitPolicy,
    /// The call's deadline: no wait outlasts it.
    pub(crate) call_deadline: Option<Instant>,
    deadline: Option<Instant>,
    /// The last message was large: read the next one's header alone, then
    /// no further than its end (see [`read_limit`](Self::read_limit)).
    large: bool,
    /// Blob descriptors read and not yet matched with their messages.
    fds: VecDeque<OwnedFd>,
    /// The largest blob accepted.
    pub(crate) blob_limit: u64,
}

/// A message at least this long is read no further than its end.
const LARGE_MESSAGE: usize = 64 * 1024;

impl SockRx {
    /// True when received bytes wait in the buffer.
    pub(crate) fn has_pending(&self) -> bool {
        self.batch.is_some() || self.start < self.end
    }

    pub(crate) fn open(
        sock: Arc<UnixStream>,
        tail: Option<Arc<Mutex<LinkTail>>>,
        geometry: SocketGeometry,
        credit: CreditSpec,
    ) -> Result<Self> {
        Ok(SockRx {
            sock,
            tail,
            buf: vec![0; 64 * 1024],
            start: 0,
            end: 0,
            large: false,
            batch: None,
            held: None,
            credit: RecvCredit::new(credit),
            geometry,
            pending_credit: None,
            pending_cancel: false,
            unsent: Vec::new(),
            peer_closed: false,
            policy: WaitPolicy::default(),
            call_deadline: None,
            deadline: None,
            fds: VecDeque::new(),
            blob_limit: DEFAULT_BLOB_LIMIT,
        })
    }

    /// The blob a blob message announces: the descriptor that came on
    /// its first byte, checked and mapped.
    #[cold]
    fn blob(&mut self, at: usize, size: u64, charge: u64) -> Result<RxEvent> {
        self.credit.on_receive_blob(size, charge)?;
        let fd = self
            .fds
            .pop_front()
            .ok_or_else(|| Error::Protocol("a blob message came without its descriptor".into()))?;
        let blob = Blob::from_received(fd, size, self.blob_limit)
            .map_err(|e| Error::Protocol(e.to_string()))?;
        self.held = Some((at, 0, charge));
        Ok(RxEvent::Blob(blob))
    }

    /// Credit or cancel messages wait for the socket to take them: an
    /// event loop waits for it to turn writable too.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn wants_write(&self) -> bool {
        !self.unsent.is_empty()
    }

    /// Writes pending credit and cancel messages without ever waiting: a
    /// sender that stops reading cannot block its receiver. Credit is an
    /// absolute limit, so only the latest one is kept.
    fn flush_control(&mut self) {
        if self.unsent.is_empty() {
            let mut enc = LinkEncoder::new();
            if let Some(limit) = self.pending_credit.take() {
                enc.credit(limit);
            }
            if std::mem::take(&mut self.pending_cancel) {
                enc.cancel();
            }
            self.unsent = enc.bytes().to_vec();
        }
        while !self.unsent.is_empty() {
            match sys::send_with_fds(self.sock.as_fd(), &self.unsent, &[], false) {
                Ok(n) => {
                    self.unsent.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Full: retried on the next call. Gone: what was sent stays readable.
                Err(_) => return,
            }
        }
    }

    /// The next event; waits when `block`, else `None` when nothing is there.
    pub(crate) fn next(&mut self, block: bool) -> Result<Option<RxEvent>> {
        debug_assert!(self.held.is_none());
        self.flush_control();
        self.deadline = if block {
            self.policy.deadline_with(self.call_deadline)
        } else {
            None
        };
        loop {
            if let Some((pos, bend)) = self.batch {
                let len = u32::from_le_bytes(self.buf[pos..pos + 4].try_into().unwrap()) as usize;
                let charge = u64::from_le_bytes(self.buf[pos + 4..pos + 12].try_into().unwrap());
                let data = pos + ITEM_HEADER;
                let next = data + len;
                // Both bounds were validated when the message was decoded.
                debug_assert!(next <= bend);
                self.batch = (next < bend).then_some((next, bend));
                self.credit.on_receive(len, charge)?;
                self.held = Some((data, len, charge));
                return Ok(Some(RxEvent::Item));
            }
            let decoded = link::decode(&self.buf[self.start..self.end], self.geometry.max_body)
                .map_err(|e| Error::Protocol(e.to_string()))?;
            if let Some((msg, used)) = decoded {
                let at = self.start;
                self.start += used;
                self.large = used >= LARGE_MESSAGE;
                let ev = match msg {
                    LinkMessage::Data(_) => {
                        self.batch = Some((at + MESSAGE_HEADER, at + used));
                        continue;
                    }
                    LinkMessage::Blob { size, charge } => self.blob(at, size, charge)?,
                    LinkMessage::End => RxEvent::End,
                    LinkMessage::Error(m) => RxEvent::Error(m),
                    LinkMessage::Cancelled => RxEvent::Cancelled,
                    LinkMessage::Result(bytes) if self.tail.is_some() => {
                        if let Some(tail) = &self.tail {
                            let mut tail = tail.lock().unwrap_or_else(|p| p.into_inner());
                            tail.outcome = Some(bytes.to_vec());
                        }
                        continue;
                    }
                    other => {
                        return Err(Error::Protocol(format!(
                            "sender sent {other:?} on a stream it sends"
                        )))
                    }
                };
                return Ok(Some(ev));
            }
            if self.peer_closed {
                return Err(Error::PeerGone(
                    "the sending peer closed the stream without ending it".into(),
                ));
            }
            if !self.read_more(block)? && !block {
                return Ok(None);
            }
        }
    }

    /// How far the next read may fill the buffer. Messages of a large-item
    /// stream are read one at a time, the header alone first and then no
    /// further than the message's end: once the message is consumed the
    /// buffer is empty and starts over at its beginning, where reading
    /// past the end would leave part of the next message to be moved to
    /// the front (a copy of up to a whole item per message).
    fn read_limit(&self) -> usize {
        let buffered = self.end - self.start;
        if buffered < MESSAGE_HEADER {
            return if self.large {
                self.start + MESSAGE_HEADER
            } else {
                self.buf.len()
            };
        }
        let head = &self.buf[self.start..self.start + 4];
        let body = u32::from_le_bytes(head.try_into().expect("4 bytes")) as usize;
        let msg_end = self.start + MESSAGE_HEADER + body;
        if body >= LARGE_MESSAGE && msg_end > self.end && msg_end <= self.buf.len() {
            msg_end
        } else {
            self.buf.len()
        }
    }

    /// Reads more bytes; false when none were available without waiting.
    fn read_more(&mut self, block: bool) -> Result<bool> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        let need = (self.geometry.max_body + MESSAGE_HEADER).max(256 * 1024);
        if self.buf.len() - self.end < 64 * 1024 {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.buf.len() - self.end < 64 * 1024 && self.buf.len() < need {
                self.buf
                    .resize(need.min(self.buf.len() * 2).max(self.end + 64 * 1024), 0);
            }
        }
        let limit = self.read_limit();
        // Every whole message was parsed before reading more: a descriptor
        // waiting now can only be for the partial message's blob.
        if self.fds.len() > 1 {
            return Err(Error::Protocol(
                "the sender passed descriptors without blob messages".into(),
            ));
        }
        loop {
            let read = sys::recv_with_fds_upto(
                self.sock.as_fd(),
                &mut self.buf[self.end..limit],
                &mut self.fds,
                false,
                1 + 2 * shmbus::frame::MAX_FDS_PER_FRAME,
            );
            match read {
                Ok(0) => {
                    self.peer_closed = true;
                    return Ok(true);
                }
                Ok(n) => {
                    self.end += n;
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !block {
                        return Ok(false);
                    }
                    let left = self.deadline.map(stall_left).transpose()?;
                    if !self.unsent.is_empty() {
                        // Credit not yet delivered: wait for room to send it too.
                        sys::wait_any(self.sock.as_fd(), true, left)?;
                        self.flush_control();
                    } else {
                        sys::wait_readable(self.sock.as_fd(), left)?;
                    }
                }
                Err(e) if gone(&e) => {
                    self.peer_closed = true;
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    return Err(Error::Protocol(format!("the sender passed {e}")))
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    pub(crate) fn item(&self) -> &[u8] {
        match self.held {
            Some((at, len, _)) => &self.buf[at..at + len],
            None => &[],
        }
    }

    pub(crate) fn charge(&self) -> u64 {
        self.held.map_or(0, |h| h.2)
    }

    pub(crate) fn release(&mut self) -> Result<()> {
        if let Some((_, _, charge)) = self.held.take() {
            if let Some(limit) = self.credit.on_consume(charge)? {
                self.pending_credit = Some(limit);
                self.flush_control();
            }
        }
        Ok(())
    }

    pub(crate) fn cancel(&mut self) {
        self.pending_cancel = true;
        self.flush_control();
    }

    pub(crate) fn credit_outstanding(&self) -> u64 {
        self.credit.outstanding()
    }

    pub(crate) fn doorbell(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

impl Drop for SockRx {
    fn drop(&mut self) {
        leave_tail(&self.tail, &self.buf[self.start..self.end]);
    }
}
