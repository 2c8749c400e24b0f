//! The Unix stream socket baseline: socket pairs with the socket buffers
//! shmbus's socket fallback asks for, and a listener for the setup scenario
//! (connect, one-byte ping, one-byte pong, close).

use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Instant;

use crate::checksum::Checksum;
use crate::job::{Job, Outcome};
use crate::os::mono_ns;
use crate::stats::Latencies;

/// The socket buffer size shmbus's broker asks for on a socket-fallback
/// link with this ring size (`link_buffer` in daemon/src/ports.rs).
pub fn link_buffer(ring_size: u32) -> usize {
    (ring_size as usize).clamp(256 * 1024, 4 << 20)
}

/// A connected pair with both buffers set to `buf` bytes (best effort, as
/// the broker does: the kernel caps them at `net.core.[wr]mem_max`).
pub fn pair(buf: usize) -> io::Result<(OwnedFd, OwnedFd)> {
    let (a, b) = UnixStream::pair()?;
    let _ = shmbus::sys::set_socket_buffers(&a, buf);
    let _ = shmbus::sys::set_socket_buffers(&b, buf);
    Ok((a.into(), b.into()))
}

/// The send buffer the kernel actually granted for a request of `buf`
/// bytes (as `getsockopt` reports it: Linux doubles the request).
pub fn granted_buffer(buf: usize) -> io::Result<usize> {
    let (a, _b) = pair(buf)?;
    Ok(nix::sys::socket::getsockopt(
        &a,
        nix::sys::socket::sockopt::SndBuf,
    )?)
}

/// A listener on a fresh temporary path, for the setup scenario.
pub fn listener() -> io::Result<(OwnedFd, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let l = UnixListener::bind(dir.path().join("setup.sock"))?;
    Ok((l.into(), dir))
}

/// A first byte of 0 asks the server to stop.
const QUIT: u8 = 0;

fn ping_byte(i: u64) -> u8 {
    let mut b = [0u8];
    crate::checksum::fill(&mut b, i);
    b[0] | 1
}

/// Setup, server side: accept, read the ping, write it back, close.
pub fn serve(listener: OwnedFd) -> io::Result<Outcome> {
    let listener = UnixListener::from(listener);
    let mut sum = Checksum::default();
    loop {
        let (mut s, _) = listener.accept()?;
        let mut b = [0u8];
        s.read_exact(&mut b)?;
        if b[0] == QUIT {
            break;
        }
        sum.update(&b);
        s.write_all(&b)?;
    }
    Ok(Outcome {
        bytes: sum.len(),
        checksum: sum.value(),
        ..Outcome::default()
    })
}

/// Setup, client side: connect + ping + pong on a new connection each time,
/// for the job's duration.
pub fn connect_loop(job: &Job, listener: OwnedFd) -> io::Result<Outcome> {
    let path = UnixListener::from(listener)
        .local_addr()?
        .as_pathname()
        .map(|p| p.to_path_buf())
        .ok_or_else(|| io::Error::other("setup listener has no path"))?;
    let (mut sent, mut got) = (Checksum::default(), Checksum::default());
    let mut lat = Latencies::new();
    let begin = mono_ns();
    let (warm, end) = (begin + job.duration_ns / 10, begin + job.duration_ns);
    let mut i = 0u64;
    loop {
        if job.gap_ns > 0 {
            std::thread::sleep(std::time::Duration::from_nanos(job.gap_ns));
        }
        let ping = [ping_byte(i)];
        let t0 = Instant::now();
        let mut s = UnixStream::connect(&path)?;
        s.write_all(&ping)?;
        let mut pong = [0u8];
        s.read_exact(&mut pong)?;
        let dt = t0.elapsed().as_nanos() as u64;
        drop(s);
        sent.update(&ping);
        got.update(&pong);
        i += 1;
        let now = mono_ns();
        if now >= warm {
            lat.record(dt);
        }
        if now >= end {
            break;
        }
    }
    UnixStream::connect(&path)?.write_all(&[QUIT])?;
    Ok(Outcome {
        bytes: got.len(),
        items: lat.count(),
        secs: (mono_ns() - begin) as f64 / 1e9,
        checksum: got.value(),
        peer: Some((sent.value(), sent.len())),
        latency_ns: Some(lat.percentiles()),
        ..Outcome::default()
    })
}
