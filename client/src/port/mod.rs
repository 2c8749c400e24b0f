//! Stream ports: how items move between the two peers of a stream.
//!
//! The transport is chosen once per stream by the broker and shows up here as
//! one small enum per side: [`TxPort`] for the sender, [`RxPort`] for the
//! receiver. Everything above this module is transport-agnostic.

mod result;
mod shm;
mod socket;
pub mod wait;

use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use shmbus::blob::Blob;
use shmbus::frame::{Direction, StreamOpen, Transport};

use crate::error::{Error, Result};
use result::LinkTail;
pub(crate) use result::PeerResult;
pub(crate) use shm::{ShmRx, ShmTx};
pub(crate) use socket::{SockRx, SockTx, SocketGeometry};
use wait::WaitPolicy;

/// How a sender closes its direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ending {
    /// stream-end.
    End,
    /// stream-error.
    Error(String),
    /// stream-cancel acknowledgement.
    Cancelled,
}

/// What a receiver observes next.
#[derive(Debug)]
pub(crate) enum RxEvent {
    /// An item is held; read it, then release it.
    Item,
    /// A blob, checked and mapped; its record is held (release it to
    /// return its credit).
    Blob(Blob),
    /// stream-end.
    End,
    /// stream-error.
    Error(String),
    /// The sender acknowledged a cancellation.
    Cancelled,
}

/// The sending side of one direction.
pub(crate) enum TxPort {
    Shm(ShmTx),
    Socket(SockTx),
}

/// The receiving side of one direction.
pub(crate) enum RxPort {
    Shm(ShmRx),
    Socket(SockRx),
}

/// Which end of the call this process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Caller,
    Service,
}

/// A call's ports, as [`open`] sets them up.
pub(crate) struct Ports {
    /// The sending half, if this side sends.
    pub(crate) tx: Option<TxPort>,
    /// The receiving half, if this side receives.
    pub(crate) rx: Option<RxPort>,
    /// The first direction's port carries the call's result too.
    pub(crate) result: Option<PeerResult>,
}

/// Sets up this process's ports from a stream-open and its descriptors:
/// per direction a link socket, then a memfd for shared memory.
pub(crate) fn open(
    open: &StreamOpen,
    fds: Vec<OwnedFd>,
    role: Role,
    cancelled: &Arc<AtomicBool>,
) -> Result<Ports> {
    if fds.len() != open.fd_count() {
        return Err(Error::Protocol(
            "stream-open descriptor count mismatch".into(),
        ));
    }
    open.credit
        .validate()
        .map_err(|e| Error::Protocol(e.to_string()))?;
    if !shmbus::ring::valid_capacity(open.ring_size) {
        return Err(Error::Protocol(format!(
            "ring size {} invalid",
            open.ring_size
        )));
    }
    let mut fds = fds.into_iter();
    let (mut tx, mut rx, mut result) = (None, None, None);
    for dir in open.mode.directions() {
        let link = fds.next().expect("counted");
        let memfd = match open.transport {
            Transport::SharedMemory => Some(fds.next().expect("counted")),
            Transport::Socket => None,
        };
        let sending = matches!(
            (dir, role),
            (Direction::ToCaller, Role::Service) | (Direction::ToService, Role::Caller)
        );
        let geometry = SocketGeometry::for_ring_size(open.ring_size);
        // Both peers take the first direction's port for the result, and
        // hold their end of its socket until the call is answered.
        let first = result.is_none();
        let mut socket_result = |link: OwnedFd| -> Result<_> {
            let sock = socket::link_socket(link)?;
            if !first {
                return Ok((sock, None));
            }
            let tail = (role == Role::Caller).then(|| Arc::new(Mutex::new(LinkTail::default())));
            result = Some(PeerResult::Socket {
                sock: sock.clone(),
                tail: tail.clone(),
                max_body: geometry.max_body,
            });
            Ok((sock, tail))
        };
        if sending {
            tx = Some(match memfd {
                Some(m) => {
                    let port =
                        ShmTx::open(link, m, open.ring_size, open.credit, cancelled.clone())?;
                    if first {
                        result = Some(PeerResult::Ring {
                            slot: port.result_slot(),
                            link: port.share_link(),
                        });
                    }
                    TxPort::Shm(port)
                }
                None => {
                    let (sock, tail) = socket_result(link)?;
                    TxPort::Socket(SockTx::open(
                        sock,
                        tail,
                        geometry,
                        open.credit,
                        cancelled.clone(),
                    )?)
                }
            });
        } else {
            rx = Some(match memfd {
                Some(m) => {
                    let port = ShmRx::open(link, m, open.ring_size, open.credit)?;
                    if first {
                        result = Some(PeerResult::Ring {
                            slot: port.result_slot(),
                            link: port.share_link(),
                        });
                    }
                    RxPort::Shm(port)
                }
                None => {
                    let (sock, tail) = socket_result(link)?;
                    RxPort::Socket(SockRx::open(sock, tail, geometry, open.credit)?)
                }
            });
        }
    }
    Ok(Ports { tx, rx, result })
}

impl TxPort {
    pub(crate) fn max_item(&self) -> usize {
        match self {
            TxPort::Shm(p) => p.max_item(),
            TxPort::Socket(p) => p.max_item(),
        }
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        match self {
            TxPort::Shm(p) => p.is_cancelled(),
            TxPort::Socket(p) => p.is_cancelled(),
        }
    }

    pub(crate) fn credit_available(&self) -> u64 {
        match self {
            TxPort::Shm(p) => p.credit_available(),
            TxPort::Socket(p) => p.credit_available(),
        }
    }

    #[inline]
    pub(crate) fn begin(&mut self, max_len: usize, charge: u64) -> Result<&mut [u8]> {
        match self {
            TxPort::Shm(p) => p.begin(max_len, charge),
            TxPort::Socket(p) => p.begin(max_len, charge),
        }
    }

    #[inline]
    pub(crate) fn commit(&mut self, len: usize, charge: u64) -> Result<()> {
        match self {
            TxPort::Shm(p) => {
                p.commit(len, charge);
                Ok(())
            }
            TxPort::Socket(p) => p.commit(len, charge),
        }
    }

    /// The room handed out by the last `begin`, if still reserved.
    #[inline]
    pub(crate) fn reserved(&mut self) -> Option<&mut [u8]> {
        match self {
            TxPort::Shm(p) => p.reserved(),
            TxPort::Socket(p) => p.reserved(),
        }
    }

    /// Abandons the room handed out by the last `begin`.
    pub(crate) fn abandon(&mut self) {
        match self {
            TxPort::Shm(p) => p.abandon(),
            TxPort::Socket(p) => p.abandon(),
        }
    }

    /// Sends a blob after the items committed so far, waiting for credit.
    pub(crate) fn send_blob(&mut self, blob: &Blob, charge: u64) -> Result<()> {
        match self {
            TxPort::Shm(p) => p.send_blob(blob, charge),
            TxPort::Socket(p) => p.send_blob(blob, charge),
        }
    }

    /// [`send_blob`](Self::send_blob) without waiting: `Ok(false)` when
    /// blocked, nothing sent.
    pub(crate) fn try_send_blob(&mut self, blob: &Blob, charge: u64) -> Result<bool> {
        match self {
            TxPort::Shm(p) => p.try_send_blob(blob, charge),
            TxPort::Socket(p) => p.try_send_blob(blob, charge),
        }
    }

    /// Makes committed items visible to the receiver now.
    #[inline]
    pub(crate) fn flush(&mut self) -> Result<()> {
        match self {
            TxPort::Shm(p) => {
                p.publish();
                Ok(())
            }
            TxPort::Socket(p) => p.flush(),
        }
    }

    /// After a commit: both transports batch; shared memory publishes each
    /// few KiB, the socket writes when its window fills; `flush` does the rest.
    #[inline]
    pub(crate) fn after_commit(&mut self) {
        if let TxPort::Shm(p) = self {
            p.publish_batched();
        }
    }

    /// Sends the closing message; without `blocking`, one attempt that never waits.
    pub(crate) fn close(&mut self, how: &Ending, blocking: bool) -> Result<()> {
        match self {
            TxPort::Shm(p) => p.close(how, blocking),
            TxPort::Socket(p) => p.close(how, blocking),
        }
    }

    /// Makes committed items visible without ever waiting: true once they
    /// are (a socket may take only part of a batch now).
    pub(crate) fn try_flush(&mut self) -> Result<bool> {
        match self {
            TxPort::Shm(p) => {
                p.publish();
                Ok(true)
            }
            TxPort::Socket(p) => p.try_flush(),
        }
    }

    /// One step of closing that never waits; true once the closing message
    /// is out. Repeat with the same `how` after waiting for readiness.
    pub(crate) fn try_close(&mut self, how: &Ending) -> Result<bool> {
        match self {
            TxPort::Shm(p) => p.try_close(how),
            TxPort::Socket(p) => p.try_close(how),
        }
    }

    /// Whether the port waits for its descriptor to turn writable (a
    /// socket with bytes it has not taken yet), besides readable.
    pub(crate) fn wants_write(&self) -> bool {
        match self {
            TxPort::Shm(p) => p.wants_write(),
            TxPort::Socket(p) => p.wants_write(),
        }
    }

    /// How long an event loop re-tries an item of `len` bytes before it
    /// waits: over shared memory, the policy's spin (stretched for a large
    /// item); over the socket, none (the kernel's wake-up is the wait).
    #[inline]
    pub(crate) fn wait_spin(&self, len: usize) -> std::time::Duration {
        match self {
            TxPort::Shm(p) => p.policy.for_record(len).spin,
            TxPort::Socket(_) => std::time::Duration::ZERO,
        }
    }

    /// Never blocks in a write (`true`): for a port an event loop drives.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn set_nonblocking(&mut self, nonblocking: bool) {
        if let TxPort::Socket(p) = self {
            p.nonblocking = nonblocking;
        }
    }

    /// Like `begin` but never waits: `None` when blocked; the pollable
    /// descriptor then turns readable once it is worth trying again.
    pub(crate) fn try_begin(&mut self, max_len: usize, charge: u64) -> Result<Option<&mut [u8]>> {
        match self {
            TxPort::Shm(p) => p.try_begin(max_len, charge),
            TxPort::Socket(p) => p.try_begin(max_len, charge),
        }
    }

    pub(crate) fn set_wait_policy(&mut self, policy: WaitPolicy) {
        match self {
            TxPort::Shm(p) => p.policy = policy,
            TxPort::Socket(p) => p.policy = policy,
        }
    }

    /// The call's deadline, which bounds every wait.
    pub(crate) fn set_deadline(&mut self, deadline: Option<Instant>) {
        match self {
            TxPort::Shm(p) => p.call_deadline = deadline,
            TxPort::Socket(p) => p.call_deadline = deadline,
        }
    }

    pub(crate) fn transport(&self) -> Transport {
        match self {
            TxPort::Shm(_) => Transport::SharedMemory,
            TxPort::Socket(_) => Transport::Socket,
        }
    }

    pub(crate) fn pollable(&self) -> BorrowedFd<'_> {
        match self {
            TxPort::Shm(p) => p.doorbell(),
            TxPort::Socket(p) => p.doorbell(),
        }
    }
}

impl RxPort {
    pub(crate) fn max_item(&self) -> usize {
        match self {
            RxPort::Shm(p) => p.max_item(),
            RxPort::Socket(p) => p.max_item(),
        }
    }

    pub(crate) fn credit_spec(&self) -> shmbus::credit::CreditSpec {
        match self {
            RxPort::Shm(p) => p.credit_spec(),
            RxPort::Socket(p) => p.credit_spec(),
        }
    }

    /// True when an item or the stream's end is known to be in already
    /// (no syscall; false when that takes one to tell).
    pub(crate) fn has_pending(&mut self) -> bool {
        match self {
            RxPort::Shm(p) => p.has_pending(),
            RxPort::Socket(p) => p.has_pending(),
        }
    }

    #[inline]
    pub(crate) fn next(&mut self, block: bool) -> Result<Option<RxEvent>> {
        match self {
            RxPort::Shm(p) => p.next(block),
            RxPort::Socket(p) => p.next(block),
        }
    }

    #[inline]
    pub(crate) fn item(&self) -> &[u8] {
        match self {
            RxPort::Shm(p) => p.item(),
            RxPort::Socket(p) => p.item(),
        }
    }

    #[inline]
    pub(crate) fn charge(&self) -> u64 {
        match self {
            RxPort::Shm(p) => p.charge(),
            RxPort::Socket(p) => p.charge(),
        }
    }

    #[inline]
    pub(crate) fn release(&mut self) -> Result<()> {
        match self {
            RxPort::Shm(p) => p.release(),
            RxPort::Socket(p) => p.release(),
        }
    }

    pub(crate) fn cancel(&mut self) {
        match self {
            RxPort::Shm(p) => p.cancel(),
            RxPort::Socket(p) => p.cancel(),
        }
    }

    pub(crate) fn credit_outstanding(&self) -> u64 {
        match self {
            RxPort::Shm(p) => p.credit_outstanding(),
            RxPort::Socket(p) => p.credit_outstanding(),
        }
    }

    /// The largest blob this side accepts.
    pub(crate) fn set_blob_limit(&mut self, limit: u64) {
        match self {
            RxPort::Shm(p) => p.blob_limit = limit,
            RxPort::Socket(p) => p.blob_limit = limit,
        }
    }

    pub(crate) fn set_wait_policy(&mut self, policy: WaitPolicy) {
        match self {
            RxPort::Shm(p) => p.policy = policy,
            RxPort::Socket(p) => p.policy = policy,
        }
    }

    /// The call's deadline, which bounds every wait.
    pub(crate) fn set_deadline(&mut self, deadline: Option<Instant>) {
        match self {
            RxPort::Shm(p) => p.call_deadline = deadline,
            RxPort::Socket(p) => p.call_deadline = deadline,
        }
    }

    /// How long an event loop re-tries before it waits (see
    /// [`TxPort::wait_spin`]), for an item like the last one.
    #[inline]
    pub(crate) fn wait_spin(&self) -> std::time::Duration {
        match self {
            RxPort::Shm(p) => p.policy.for_record(p.last_len()).spin,
            RxPort::Socket(_) => std::time::Duration::ZERO,
        }
    }

    /// Whether the port waits for its descriptor to turn writable (a
    /// socket with credit it has not sent yet), besides readable.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn wants_write(&self) -> bool {
        match self {
            RxPort::Shm(_) => false,
            RxPort::Socket(p) => p.wants_write(),
        }
    }

    pub(crate) fn transport(&self) -> Transport {
        match self {
            RxPort::Shm(_) => Transport::SharedMemory,
            RxPort::Socket(_) => Transport::Socket,
        }
    }

    pub(crate) fn pollable(&self) -> BorrowedFd<'_> {
        match self {
            RxPort::Shm(p) => p.doorbell(),
            RxPort::Socket(p) => p.doorbell(),
        }
    }
}
