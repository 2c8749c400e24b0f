//! The syscall boundary: memfds and seals, descriptor passing, peer
//! credentials, socket tuning and polling. Every function returns owned
//! descriptors and `io::Error`s; descriptors received from a peer are wrapped
//! in [`OwnedFd`] the moment they arrive, so every rejection path closes them.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::time::Duration;

use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::sys::socket::{self, sockopt, ControlMessage, MsgFlags};

use crate::frame::MAX_FDS_PER_FRAME;

mod blob;
pub use blob::{
    blob_seals, check_blob, copy_into, create_blob_memfd, fd_size, required_blob_seals, seal_blob,
};

/// Nanoseconds on `CLOCK_MONOTONIC`: one clock for every process of the
/// machine, so a time one process sends another means the same to both.
/// (0 if the clock cannot be read, which Linux never does.)
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        (t.tv_sec() as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(t.tv_nsec() as u64)
    })
}

/// The seals every stream port carries.
pub fn ring_seals() -> SealFlag {
    SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL
}

/// Creates a memfd of `size` bytes that starts with `head` (written with
/// `pwrite`, so the caller never maps it), sealed with [`ring_seals`].
pub fn create_sealed_memfd(name: &str, size: u64, head: &[u8]) -> io::Result<OwnedFd> {
    let fd = memfd_create(name, MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)?;
    let file = File::from(fd);
    file.set_len(size)?;
    file.write_all_at(head, 0)?;
    let fd = OwnedFd::from(file);
    fcntl(&fd, FcntlArg::F_ADD_SEALS(ring_seals()))?;
    Ok(fd)
}

/// Fails unless the descriptor carries at least the stream-port seals.
pub fn check_ring_seals(fd: &OwnedFd) -> io::Result<()> {
    let seals = fcntl(fd, FcntlArg::F_GET_SEALS).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("descriptor is not a sealable memfd ({e})"),
        )
    })?;
    let seals = SealFlag::from_bits_truncate(seals);
    if !seals.contains(ring_seals()) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("memfd seals {seals:?} lack shrink/grow/seal"),
        ));
    }
    Ok(())
}

/// Credentials of the process at the other end of a Unix socket, from the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCredentials {
    /// Process id.
    pub pid: i32,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// Reads SO_PEERCRED.
pub fn peer_credentials(sock: &impl AsFd) -> io::Result<PeerCredentials> {
    let c = socket::getsockopt(sock, sockopt::PeerCredentials)?;
    Ok(PeerCredentials {
        pid: c.pid(),
        uid: c.uid(),
        gid: c.gid(),
    })
}

/// Sets both socket buffer sizes (the kernel may clamp them).
pub fn set_socket_buffers(sock: &impl AsFd, bytes: usize) -> io::Result<()> {
    socket::setsockopt(sock, sockopt::SndBuf, &bytes)?;
    socket::setsockopt(sock, sockopt::RcvBuf, &bytes)?;
    Ok(())
}

/// Sends `bytes`, attaching `fds` to the first byte. Returns bytes written;
/// the descriptors went with them when the result is non-zero.
/// With `blocking` false the call never waits (`WouldBlock` instead).
pub fn send_with_fds(
    sock: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
    blocking: bool,
) -> io::Result<usize> {
    let mut flags = MsgFlags::MSG_NOSIGNAL;
    if !blocking {
        flags |= MsgFlags::MSG_DONTWAIT;
    }
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let iov = [IoSlice::new(bytes)];
    let cmsg = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage] = if raw.is_empty() { &[] } else { &cmsg };
    retry(|| socket::sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, flags, None))
}

/// Runs a system call again for as long as a signal interrupts it (EINTR).
fn retry<T>(mut call: impl FnMut() -> nix::Result<T>) -> io::Result<T> {
    loop {
        match call() {
            Err(nix::errno::Errno::EINTR) => continue,
            r => return r.map_err(io::Error::from),
        }
    }
}

/// Receives into `buf`, appending any descriptors that arrived to `fds` as
/// owned descriptors. Returns 0 at end of stream. Fails (after closing every
/// descriptor that arrived) when the control data was truncated or when more
/// descriptors are queued than a frame can use.
/// With `blocking` false the call never waits (`WouldBlock` instead).
pub fn recv_with_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut VecDeque<OwnedFd>,
    blocking: bool,
) -> io::Result<usize> {
    recv_with_fds_upto(sock, buf, fds, blocking, 2 * MAX_FDS_PER_FRAME)
}

/// [`recv_with_fds`] with a bound of its own on the descriptors queued in
/// `fds`: past `max_queued`, every queued descriptor is closed and the call
/// fails. One message brings at most `2 * MAX_FDS_PER_FRAME` descriptors;
/// more truncate it, and that fails too.
pub fn recv_with_fds_upto(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut VecDeque<OwnedFd>,
    blocking: bool,
    max_queued: usize,
) -> io::Result<usize> {
    let flags = libc::MSG_CMSG_CLOEXEC | if blocking { 0 } else { libc::MSG_DONTWAIT };
    const SPACE: usize = 2 * MAX_FDS_PER_FRAME * 4 + 64;
    let mut cmsg_buf = [0u64; SPACE.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg_buf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cmsg_buf) as _;
    let n = retry(|| {
        // SAFETY: msg points at live, correctly sized buffers for the duration of the call.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, flags) };
        nix::errno::Errno::result(n).map(|n| n as usize)
    })?;
    let mut arrived = Vec::new();
    // SAFETY: msg was filled by a successful recvmsg; CMSG_* walk only the
    // control bytes the kernel reported in msg_controllen.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg) as *const RawFd;
                let count = ((*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize)
                    / std::mem::size_of::<RawFd>();
                for i in 0..count {
                    let raw = std::ptr::read_unaligned(data.add(i));
                    // Each received descriptor is new and ours alone.
                    arrived.push(OwnedFd::from_raw_fd(raw));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "too many file descriptors in one message",
        ));
    }
    fds.extend(arrived);
    if fds.len() > max_queued {
        fds.clear();
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "too many file descriptors queued",
        ));
    }
    Ok(n)
}

/// Result of waiting on a descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// Readable (data or end of stream).
    Readable,
    /// The timeout passed.
    TimedOut,
}

/// Reads what is pending on a socket without waiting (`MSG_DONTWAIT`),
/// whatever the descriptor's blocking mode: `WouldBlock` when nothing is.
pub fn recv_nowait(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    retry(|| socket::recv(sock.as_raw_fd(), buf, MsgFlags::MSG_DONTWAIT))
}

/// Waits until `fd` is readable or hung up, or `timeout` passes (`None`: forever).
pub fn wait_readable(fd: BorrowedFd<'_>, timeout: Option<Duration>) -> io::Result<Readiness> {
    wait_any(fd, false, timeout)
}

/// Waits until `fd` is readable, or also writable when `writable` is set.
pub fn wait_any(
    fd: BorrowedFd<'_>,
    writable: bool,
    timeout: Option<Duration>,
) -> io::Result<Readiness> {
    let ready = wait_ready(fd, true, writable, timeout)?;
    Ok(if ready.readable || ready.writable {
        Readiness::Readable
    } else {
        Readiness::TimedOut
    })
}

/// What a descriptor turned ready for (both false: the timeout passed).
/// A hang-up or an error counts as both, so the next read or write tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ready {
    /// Readable, or hung up.
    pub readable: bool,
    /// Writable, or hung up.
    pub writable: bool,
}

/// Waits until `fd` is readable (when `readable`) or writable (when
/// `writable`), or `timeout` passes (`None`: forever).
pub fn wait_ready(
    fd: BorrowedFd<'_>,
    readable: bool,
    writable: bool,
    timeout: Option<Duration>,
) -> io::Result<Ready> {
    use nix::poll::{poll, PollFd, PollFlags};
    let mut flags = PollFlags::empty();
    flags.set(PollFlags::POLLIN, readable);
    flags.set(PollFlags::POLLOUT, writable);
    let mut pfd = [PollFd::new(fd, flags)];
    let n = retry(|| poll(&mut pfd, poll_timeout(timeout)))?;
    let revents = pfd[0].revents().unwrap_or(PollFlags::empty());
    let gone = n > 0 && revents.intersects(PollFlags::POLLHUP | PollFlags::POLLERR);
    Ok(Ready {
        readable: revents.contains(PollFlags::POLLIN) || gone,
        writable: revents.contains(PollFlags::POLLOUT) || gone,
    })
}

fn poll_timeout(timeout: Option<Duration>) -> nix::poll::PollTimeout {
    use nix::poll::PollTimeout;
    match timeout {
        None => PollTimeout::NONE,
        // Rounded up to whole milliseconds, so a short wait is no busy loop.
        Some(t) => PollTimeout::try_from(t.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32)
            .unwrap_or(PollTimeout::MAX),
    }
}

/// A one-shot readiness watch on one descriptor (an epoll instance with
/// `EPOLLONESHOT`): each arming reports readability once, and a watch that
/// is not armed wakes nobody. Arming when the descriptor is already
/// readable reports at once, so no readiness is lost between a disarm and
/// the next arm.
pub struct Watch {
    epoll: nix::sys::epoll::Epoll,
    fd: OwnedFd,
}

impl Watch {
    /// Watches a duplicate of `fd`, disarmed.
    pub fn new(fd: BorrowedFd<'_>) -> io::Result<Watch> {
        use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        let fd = fd.try_clone_to_owned()?;
        epoll.add(&fd, EpollEvent::new(EpollFlags::EPOLLONESHOT, 0))?;
        Ok(Watch { epoll, fd })
    }

    fn set(&self, flags: nix::sys::epoll::EpollFlags) -> io::Result<()> {
        use nix::sys::epoll::{EpollEvent, EpollFlags};
        let mut event = EpollEvent::new(flags | EpollFlags::EPOLLONESHOT, 0);
        Ok(self.epoll.modify(&self.fd, &mut event)?)
    }

    /// Reports the next readability (or hang-up) to [`Watch::wait`].
    pub fn arm(&self) -> io::Result<()> {
        self.set(nix::sys::epoll::EpollFlags::EPOLLIN)
    }

    /// Stops reporting until armed again.
    pub fn disarm(&self) -> io::Result<()> {
        self.set(nix::sys::epoll::EpollFlags::empty())
    }

    /// Sleeps until an armed watch fires; the watch is then disarmed.
    pub fn wait(&self) -> io::Result<()> {
        use nix::sys::epoll::{EpollEvent, EpollTimeout};
        let mut events = [EpollEvent::empty()];
        while retry(|| self.epoll.wait(&mut events, EpollTimeout::NONE))? == 0 {}
        Ok(())
    }
}

/// Moves the calling thread to the `SCHED_IDLE` class: it then runs only
/// on CPU time nothing else wants.
pub fn idle_priority_for_this_thread() -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid, initialized parameter block that outlives
    // the call; pid 0 names the calling thread, whose class alone changes.
    let r = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Waits up to `timeout` for the other end of a stream socket to close;
/// true once it has. Pending data does not end the wait.
pub fn wait_hangup(fd: BorrowedFd<'_>, timeout: Duration) -> io::Result<bool> {
    // No events asked for: POLLHUP (a closed Unix stream peer) and POLLERR
    // are always reported, and readable data does not end the wait.
    let ready = wait_ready(fd, false, false, Some(timeout))?;
    Ok(ready.readable)
}

/// Takes ownership of a listening Unix stream socket passed by the service
/// manager (socket activation) and checks that it is one.
pub fn adopt_listener(raw: RawFd) -> io::Result<std::os::unix::net::UnixListener> {
    if raw < 3 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("descriptor {raw} cannot be a passed socket"),
        ));
    }
    // SAFETY: the service manager passed `raw` (LISTEN_FDS, checked against
    // LISTEN_PID by the caller) for this process to own; nothing else in the
    // process holds it, and it is adopted exactly once at start-up.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let listening = socket::getsockopt(&fd, sockopt::AcceptConn)?;
    let kind = socket::getsockopt(&fd, sockopt::SockType)?;
    // Fails unless the socket's address family is AF_UNIX.
    socket::getsockname::<socket::UnixAddr>(fd.as_raw_fd())?;
    if !listening || kind != socket::SockType::Stream {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "passed descriptor is not a listening Unix stream socket",
        ));
    }
    Ok(std::os::unix::net::UnixListener::from(fd))
}

/// Makes a write past RLIMIT_FSIZE fail with EFBIG instead of killing the
/// process with SIGXFSZ, so a ring that cannot be sized is an error the
/// broker can answer (by falling back to the socket).
pub fn ignore_file_size_signal() -> io::Result<()> {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: installing SIG_IGN runs no handler code, so no async-signal-safety concerns.
    unsafe { signal(Signal::SIGXFSZ, SigHandler::SigIgn) }?;
    Ok(())
}

/// Counts open descriptors of a process (from /proc), for leak checks.
pub fn open_fd_count(pid: u32) -> io::Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn memfd_is_sealed_and_sized() {
        let fd = create_sealed_memfd("t", 8192, b"head").unwrap();
        check_ring_seals(&fd).unwrap();
        let file = File::from(fd);
        assert_eq!(file.metadata().unwrap().len(), 8192);
        let mut head = [0u8; 4];
        file.read_exact_at(&mut head, 0).unwrap();
        assert_eq!(&head, b"head");
        assert!(file.set_len(10).is_err(), "shrink must be sealed");
        assert!(file.set_len(1 << 20).is_err(), "grow must be sealed");
    }

    #[test]
    fn unsealed_memfd_is_refused() {
        let fd = memfd_create("plain", MFdFlags::MFD_CLOEXEC).unwrap();
        assert!(check_ring_seals(&fd).is_err());
        let fd = memfd_create("sealable", MFdFlags::MFD_ALLOW_SEALING).unwrap();
        assert!(check_ring_seals(&fd).is_err());
    }

    #[test]
    fn descriptors_pass_and_arrive_owned() {
        let (a, b) = UnixStream::pair().unwrap();
        let memfd = create_sealed_memfd("p", 4096, &[]).unwrap();
        let n = send_with_fds(a.as_fd(), b"hi", &[memfd.as_fd(), memfd.as_fd()], true).unwrap();
        assert_eq!(n, 2);
        let mut buf = [0u8; 16];
        let mut fds = VecDeque::new();
        let n = recv_with_fds(b.as_fd(), &mut buf, &mut fds, true).unwrap();
        assert_eq!(&buf[..n], b"hi");
        assert_eq!(fds.len(), 2);
        for fd in &fds {
            check_ring_seals(fd).unwrap();
        }
        let creds = peer_credentials(&a).unwrap();
        assert_eq!(creds.pid as u32, std::process::id());
    }
}
