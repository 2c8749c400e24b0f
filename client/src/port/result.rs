//! The call's result, peer to peer: the service also hands its result to
//! the caller over the stream's port, so a caller whose broker died still
//! learns how the call ended. Over shared memory it goes into a ring's
//! header; over sockets it follows the stream on the first direction's
//! socket as a result message.

use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shmbus::frame::RemoteError;
use shmbus::link::{self, LinkEncoder, LinkMessage, MAX_RESULT, MESSAGE_HEADER};
use shmbus::ring::ResultSlot;
use shmbus::sys;

use super::socket::write_all;
use crate::error::{Error, Result};

/// A call's outcome, as the result frame carries it.
pub(crate) type Outcome = std::result::Result<Vec<u8>, RemoteError>;

/// How often a caller without a broker looks again while the service lives
/// but has not answered yet (its hang-up wakes the wait at once).
const RECHECK: Duration = Duration::from_millis(5);

/// How long a service may wait to write its result message into a socket
/// the caller is not reading.
const POST_TIMEOUT: Duration = Duration::from_millis(100);

/// Where the service leaves its result for the caller.
pub(crate) enum PeerResult {
    /// The result area of one of the call's rings, and a watch on the peer.
    Ring {
        slot: ResultSlot,
        /// This side's end of the ring's doorbell socket, shared with the
        /// port. The service holds it until it has answered (or dies), even
        /// once its port is gone, so the caller's end hangs up exactly when
        /// no result can come any more — not merely when the service is
        /// done with the stream itself.
        link: Arc<OwnedFd>,
    },
    /// The first direction's socket, shared with that direction's port.
    Socket {
        sock: Arc<UnixStream>,
        /// Caller side: what the port read past its last message.
        tail: Option<Arc<Mutex<LinkTail>>>,
        /// Largest message the stream may still have in the socket.
        max_body: usize,
    },
}

/// What a caller's socket port leaves for the result: a result message it
/// met, and the bytes it had read but not used when it closed.
#[derive(Default)]
pub(crate) struct LinkTail {
    pub(crate) outcome: Option<Vec<u8>>,
    pub(crate) leftover: Vec<u8>,
}

impl PeerResult {
    /// Service side: writes the outcome; false when it does not fit or a
    /// stream half still uses the socket (then only the broker carries
    /// it). Dropping `self` afterwards tells the caller that the answer is
    /// final.
    pub(crate) fn post(&self, outcome: &Outcome) -> bool {
        let Ok(bytes) = postcard::to_allocvec(outcome) else {
            return false;
        };
        match self {
            PeerResult::Ring { slot, .. } => slot.post(&bytes),
            PeerResult::Socket { sock, .. } => {
                // A half still open elsewhere may be writing this socket.
                if Arc::strong_count(sock) > 1 {
                    return false;
                }
                let mut enc = LinkEncoder::new();
                if !enc.result(&bytes) {
                    return false;
                }
                let deadline = Instant::now() + POST_TIMEOUT;
                write_all(sock, enc.bytes(), None, Some(deadline)).is_ok()
            }
        }
    }

    /// Caller side, once the broker is gone: the outcome the service left,
    /// waiting for it while the service lives (up to `stall`, if set).
    pub(crate) fn wait(&self, stall: Option<Duration>) -> Result<Outcome> {
        let deadline = stall.map(|d| Instant::now() + d);
        match self {
            PeerResult::Ring { slot, link } => loop {
                if let Some(outcome) = read_slot(slot)? {
                    return Ok(outcome);
                }
                check_deadline(deadline)?;
                if sys::wait_hangup(link.as_fd(), RECHECK)? {
                    // The service dropped its port: it wrote before, or never will.
                    return read_slot(slot)?.ok_or(Error::BrokerGone);
                }
            },
            PeerResult::Socket {
                sock,
                tail,
                max_body,
            } => {
                let tail = tail.as_ref().ok_or(Error::BrokerGone)?;
                loop {
                    if let Some(bytes) = lock(tail).outcome.take() {
                        return decode(&bytes);
                    }
                    // Read the socket only once no port reads it any more.
                    if Arc::strong_count(sock) == 1 {
                        let leftover = std::mem::take(&mut lock(tail).leftover);
                        return read_socket(sock, leftover, *max_body, deadline);
                    }
                    check_deadline(deadline)?;
                    std::thread::sleep(RECHECK);
                }
            }
        }
    }
}

fn lock(tail: &Mutex<LinkTail>) -> std::sync::MutexGuard<'_, LinkTail> {
    tail.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn check_deadline(deadline: Option<Instant>) -> Result<()> {
    if deadline.is_some_and(|d| Instant::now() >= d) {
        return Err(Error::Stalled);
    }
    Ok(())
}

fn read_slot(slot: &ResultSlot) -> Result<Option<Outcome>> {
    match slot.take()? {
        Some(bytes) => decode(&bytes).map(Some),
        None => Ok(None),
    }
}

fn decode(bytes: &[u8]) -> Result<Outcome> {
    postcard::from_bytes(bytes)
        .map_err(|e| Error::Protocol(format!("call result from the service: {e}")))
}

/// Reads the rest of the first direction's socket for the service's result
/// message: whatever else is still in it (the stream's last messages, a
/// cancel acknowledgement, credit) is skipped. The service's hang-up with
/// no result means none will come.
fn read_socket(
    sock: &UnixStream,
    mut buf: Vec<u8>,
    max_body: usize,
    deadline: Option<Instant>,
) -> Result<Outcome> {
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let mut used = 0;
        loop {
            let decoded = link::decode(&buf[used..], max_body)
                .map_err(|e| Error::Protocol(format!("socket port after the stream: {e}")))?;
            let Some((msg, n)) = decoded else { break };
            used += n;
            if let LinkMessage::Result(bytes) = msg {
                return decode(bytes);
            }
        }
        buf.drain(..used);
        match (&*sock).read(&mut chunk) {
            Ok(0) => return Err(Error::BrokerGone),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                check_deadline(deadline)?;
                sys::wait_readable(sock.as_fd(), Some(RECHECK))?;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                ) =>
            {
                return Err(Error::BrokerGone)
            }
            Err(e) => return Err(e.into()),
        }
        if buf.len() > MESSAGE_HEADER + max_body + MAX_RESULT {
            return Err(Error::Protocol(
                "socket port after the stream: message too long".into(),
            ));
        }
    }
}
