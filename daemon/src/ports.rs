//! Creating stream ports: per direction a socket pair (the doorbell, or the
//! whole data path on the socket transport) and, for shared memory, a sealed
//! memfd ring. The broker never maps a ring; it writes the header with
//! `pwrite`, seals the memfd, hands the descriptors out and closes its copies.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;

use shmbus::credit::CreditSpec;
use shmbus::frame::{StreamId, StreamMode, Transport};
use shmbus::sys;

/// The descriptors of a stream port, in the order stream-open lists them.
pub struct PortFds {
    /// For the caller.
    pub caller: Vec<OwnedFd>,
    /// For the service.
    pub service: Vec<OwnedFd>,
}

/// Socket buffer size asked for on socket-transport links.
fn link_buffer(ring_size: u32) -> usize {
    (ring_size as usize).clamp(256 * 1024, 4 << 20)
}

/// Builds the port of one stream.
pub fn create(
    stream: StreamId,
    mode: StreamMode,
    transport: Transport,
    ring_size: u32,
    credit: CreditSpec,
) -> io::Result<PortFds> {
    let mut fds = PortFds {
        caller: Vec::new(),
        service: Vec::new(),
    };
    for (i, _dir) in mode.directions().iter().enumerate() {
        let (a, b) = UnixStream::pair()?;
        if transport == Transport::Socket {
            // Best effort: the kernel caps these at its configured maximum.
            let _ = sys::set_socket_buffers(&a, link_buffer(ring_size));
            let _ = sys::set_socket_buffers(&b, link_buffer(ring_size));
        }
        fds.caller.push(a.into());
        fds.service.push(b.into());
        if transport == Transport::SharedMemory {
            let name = format!("shmbus-stream-{stream}-{i}");
            let memfd = sys::create_ring_memfd(&name, ring_size, credit.high_water_mark)?;
            fds.caller.push(memfd.try_clone()?);
            fds.service.push(memfd);
        }
    }
    Ok(fds)
}
