//! The producing side of a socket port.

use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use shmbus::blob::Blob;
use shmbus::credit::{CreditSpec, SendCredit};
use shmbus::link::{self, LinkEncoder, LinkMessage};
use shmbus::sys;

use super::super::result::LinkTail;
use super::super::wait::{stall_left, WaitPolicy};
use super::super::Ending;
use super::{gone, leave_tail, write_all, SocketGeometry};
use crate::error::{Error, Result};

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
