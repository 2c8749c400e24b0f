//! The consuming side of a socket port.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use shmbus::blob::{Blob, DEFAULT_BLOB_LIMIT};
use shmbus::credit::{CreditSpec, RecvCredit};
use shmbus::link::{self, LinkEncoder, LinkMessage, ITEM_HEADER, MESSAGE_HEADER};
use shmbus::sys;

use super::super::result::LinkTail;
use super::super::wait::{stall_left, WaitPolicy};
use super::super::RxEvent;
use super::{gone, leave_tail, SocketGeometry};
use crate::error::{Error, Result};

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
    pub(crate) fn max_item(&self) -> usize {
        self.geometry.max_item
    }

    pub(crate) fn credit_spec(&self) -> CreditSpec {
        self.credit.spec()
    }

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
