//! Frames and their descriptors read from the broker socket, whole frames
//! parsed out of one growing buffer.

use std::collections::VecDeque;
use std::net::Shutdown;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;

use shmbus::frame::{self, Frame, FRAME_HEADER_LEN};
use shmbus::sys;

use crate::error::{Error, Result};

/// Reads frames and their descriptors from a blocking socket.
pub(crate) struct FrameReader {
    sock: UnixStream,
    /// Zeroed once as it grows; bytes `start..filled` are pending.
    buf: Vec<u8>,
    filled: usize,
    start: usize,
    fds: VecDeque<OwnedFd>,
    pub(crate) max_frame: u32,
    pub(crate) bytes_read: u64,
}

impl FrameReader {
    /// Shuts the socket down both ways: every reader and writer of the
    /// connection then sees its end.
    pub(super) fn shut_down(&self) {
        let _ = self.sock.shutdown(Shutdown::Both);
    }

    pub(crate) fn new(sock: UnixStream, max_frame: u32) -> Self {
        FrameReader {
            sock,
            buf: Vec::new(),
            filled: 0,
            start: 0,
            fds: VecDeque::new(),
            max_frame,
            bytes_read: 0,
        }
    }

    /// The next frame, or `None` at a clean end of stream.
    pub(crate) fn next(&mut self) -> Result<Option<(Frame, Vec<OwnedFd>)>> {
        match self.next_frame(true)? {
            Next::Frame(frame, fds) => Ok(Some((frame, fds))),
            Next::End | Next::WouldBlock => Ok(None),
        }
    }

    /// The next frame. Without `block`, [`Next::WouldBlock`] once neither
    /// the buffer nor the socket holds a whole frame.
    pub(crate) fn next_frame(&mut self, block: bool) -> Result<Next> {
        loop {
            if let Some((frame, fds)) = self.buffered_frame()? {
                return Ok(Next::Frame(frame, fds));
            }
            if self.start > 0 {
                self.buf.copy_within(self.start..self.filled, 0);
                self.filled -= self.start;
                self.start = 0;
            }
            let old = self.filled;
            let want = (FRAME_HEADER_LEN + self.max_frame as usize).min(old + 64 * 1024);
            let want = want.max(old + 4096);
            if self.buf.len() < want {
                self.buf.resize(want, 0);
            }
            // Never sleep inside recvmsg: a thread blocked there is woken, for
            // nothing, each time the broker drains what this process sent (the
            // kernel's write-space wake-up is not filtered by event for a
            // blocking read). poll(POLLIN) filters it, so wait there.
            let n = loop {
                let got = sys::recv_with_fds(
                    self.sock.as_fd(),
                    &mut self.buf[old..want],
                    &mut self.fds,
                    false,
                );
                match got {
                    Ok(n) => break n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if !block {
                            return Ok(Next::WouldBlock);
                        }
                        sys::wait_readable(self.sock.as_fd(), None)?;
                    }
                    Err(e) => return Err(e.into()),
                }
            };
            self.filled = old + n;
            self.bytes_read += n as u64;
            if n == 0 {
                return Ok(Next::End);
            }
        }
    }
}

impl FrameReader {
    /// The next whole frame already in the buffer, without reading.
    pub(super) fn buffered_frame(&mut self) -> Result<Option<(Frame, Vec<OwnedFd>)>> {
        let pending = &self.buf[self.start..self.filled];
        let Some((header, body)) = frame::split_frame(pending, self.max_frame)
            .map_err(|e| Error::Protocol(e.to_string()))?
        else {
            return Ok(None);
        };
        let n = header.fds as usize;
        if self.fds.len() < n {
            return Err(Error::Protocol(
                "frame arrived without its descriptors".into(),
            ));
        }
        let fds: Vec<OwnedFd> = self.fds.drain(..n).collect();
        let frame =
            frame::decode(&pending[body.clone()], n).map_err(|e| Error::Protocol(e.to_string()))?;
        self.start += body.end;
        Ok(Some((frame, fds)))
    }
}

/// What [`FrameReader::next_frame`] found.
pub(crate) enum Next {
    /// A whole frame and its descriptors.
    Frame(Frame, Vec<OwnedFd>),
    /// Nothing more without waiting.
    WouldBlock,
    /// The broker closed the connection.
    End,
}
