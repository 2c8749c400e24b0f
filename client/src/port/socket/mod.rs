//! The socket port: a dedicated Unix socket per direction between the two
//! peers, items batched into stream-data messages, credit in stream-credit
//! messages (see [`shmbus::link`]).

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use shmbus::link::ITEM_HEADER;
use shmbus::sys;

use super::result::LinkTail;
use super::wait::stall_left;
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

pub(super) fn gone(e: &io::Error) -> bool {
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
pub(super) fn leave_tail(tail: &Option<Arc<Mutex<LinkTail>>>, unread: &[u8]) {
    if let Some(tail) = tail {
        let mut tail = tail.lock().unwrap_or_else(|p| p.into_inner());
        tail.leftover.extend_from_slice(unread);
    }
}

mod rx;
mod tx;

pub(crate) use rx::SockRx;
pub(crate) use tx::SockTx;
