//! The pipe baseline: one pipe per direction, at the kernel's default size.

use std::io;
use std::os::fd::OwnedFd;

use nix::fcntl::{fcntl, FcntlArg, OFlag};

/// A pipe: (read end, write end), both close-on-exec.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(OFlag::O_CLOEXEC)?)
}

/// The capacity of a fresh pipe, as `F_GETPIPE_SZ` reports it.
pub fn default_size() -> io::Result<usize> {
    let (r, _w) = pipe()?;
    Ok(fcntl(&r, FcntlArg::F_GETPIPE_SZ)? as usize)
}
