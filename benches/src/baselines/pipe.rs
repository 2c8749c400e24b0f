//! The pipe baseline: one pipe per direction, enlarged to [`PIPE_SIZE`] with
//! `F_SETPIPE_SZ` (the kernel's default of 64 KiB makes a writer of 64 KiB
//! and more wait for its reader on every write).

use std::io;
use std::os::fd::OwnedFd;

use nix::fcntl::{fcntl, FcntlArg, OFlag};

/// The capacity asked for each pipe: 1 MiB, the default `pipe-max-size`
/// an unprivileged process may ask for.
pub const PIPE_SIZE: usize = 1 << 20;

/// A pipe: (read end, write end), both close-on-exec, with a capacity of
/// [`PIPE_SIZE`] where the kernel grants it (else its default).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    // Best effort: above /proc/sys/fs/pipe-max-size an unprivileged process
    // gets EPERM, and the pipe keeps its default size.
    let _ = fcntl(&w, FcntlArg::F_SETPIPE_SZ(PIPE_SIZE as i32));
    Ok((r, w))
}

/// The capacity a pipe from [`pipe`] has, as `F_GETPIPE_SZ` reports it.
pub fn capacity() -> io::Result<usize> {
    let (r, _w) = pipe()?;
    Ok(fcntl(&r, FcntlArg::F_GETPIPE_SZ)? as usize)
}
