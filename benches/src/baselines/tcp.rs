//! The TCP baseline: a connection on 127.0.0.1, the bridge's ceiling (a
//! bridged stream crosses such a connection between the two bridges).

use std::io;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;

/// A connected pair on loopback with Nagle off on both ends (the round
/// trips write small messages). `buf` is the socket buffer size asked for
/// on both ends, or 0 to leave the kernel's autotuning alone.
pub fn pair(buf: usize) -> io::Result<(OwnedFd, OwnedFd)> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let a = TcpStream::connect(listener.local_addr()?)?;
    let (b, _) = listener.accept()?;
    for s in [&a, &b] {
        s.set_nodelay(true)?;
        if buf > 0 {
            // Linux sizes the window scale at the handshake for the largest
            // buffer allowed, so asking after connecting still takes.
            shmbus::sys::set_socket_buffers(s, buf)?;
        }
    }
    Ok((a.into(), b.into()))
}
