//! One client connection's socket state: on the way in, the bytes and
//! descriptors received and not yet cut into frames ([`FrameReader`], which
//! does no I/O), and on the way out the queue of encoded frames.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, OwnedFd};

use mio::net::UnixStream;
use shmbus::frame::{self, Frame, FrameError, FRAME_HEADER_LEN};
use shmbus::sys::{self, PeerCredentials};

/// Bytes read per receive call.
const READ_CHUNK: usize = 64 * 1024;
/// Receive calls per turn, so one busy peer cannot starve the others.
const READ_BUDGET: usize = 16;

/// A frame with the descriptors that came with it.
pub type Received = (Frame, Vec<OwnedFd>);

struct Outgoing {
    bytes: Vec<u8>,
    sent: usize,
    fds: Vec<OwnedFd>,
}

/// Why reading from a connection stopped.
#[derive(Debug)]
pub enum ReadError {
    /// The peer closed the connection.
    Closed,
    /// The peer broke the protocol; it gets this message before the close.
    Violation(String),
    /// The socket failed.
    Io(io::Error),
}

impl From<FrameError> for ReadError {
    fn from(e: FrameError) -> Self {
        ReadError::Violation(e.to_string())
    }
}

/// Cuts received bytes and descriptors into frames, checking them in the
/// order `PROTOCOL.md` (2.2) gives. No I/O: [`Conn`] feeds it what a
/// receive returned; a fuzz target can feed it anything.
#[derive(Default)]
pub struct FrameReader {
    buf: Vec<u8>,
    fds: VecDeque<OwnedFd>,
}

impl FrameReader {
    /// The descriptors received and not yet claimed by a frame, for a
    /// receive to append to.
    pub fn fds_mut(&mut self) -> &mut VecDeque<OwnedFd> {
        &mut self.fds
    }

    /// Appends the complete frames in the bytes received so far (`more`
    /// just arrived) to `frames`, each with the descriptors it declares.
    /// Stops at the first violation: a frame over `max_frame` or declaring
    /// more descriptors than arrived or than its kind carries, a body that
    /// does not decode, or descriptors left over that no frame declared.
    pub fn push(
        &mut self,
        more: &[u8],
        max_frame: u32,
        frames: &mut Vec<Received>,
    ) -> Result<(), ReadError> {
        self.buf.extend_from_slice(more);
        let mut start = 0;
        while let Some((header, body)) = frame::split_frame(&self.buf[start..], max_frame)? {
            let n = header.fds as usize;
            if self.fds.len() < n {
                return Err(ReadError::Violation(format!(
                    "frame declares {n} descriptors, {} arrived",
                    self.fds.len()
                )));
            }
            let fds: Vec<OwnedFd> = self.fds.drain(..n).collect();
            let frame = frame::decode(&self.buf[start + body.start..start + body.end], n)?;
            frames.push((frame, fds));
            start += body.end;
        }
        self.buf.drain(..start);
        if self.buf.is_empty() && !self.fds.is_empty() {
            return Err(ReadError::Violation(format!(
                "{} descriptors arrived that no frame declared",
                self.fds.len()
            )));
        }
        // A partial frame's header was already checked against the maximum,
        // so the buffer never holds more than one frame plus one read.
        debug_assert!(
            self.buf.len() <= FRAME_HEADER_LEN + max_frame as usize + more.len().max(READ_CHUNK)
        );
        Ok(())
    }
}

/// A connected peer's socket.
pub struct Conn {
    /// The socket.
    pub sock: UnixStream,
    /// Who the kernel says is on the other end.
    pub creds: PeerCredentials,
    reader: FrameReader,
    out: VecDeque<Outgoing>,
    queued: usize,
    /// Set once an error frame is queued: close when the queue drains.
    pub closing: bool,
    /// Whether the socket is registered for writability as well.
    pub want_write: bool,
    /// The peer hung up; report it once the frames before it are handled.
    eof: bool,
}

impl Conn {
    /// Wraps an accepted socket.
    pub fn new(sock: UnixStream, creds: PeerCredentials) -> Self {
        Conn {
            sock,
            creds,
            reader: FrameReader::default(),
            out: VecDeque::new(),
            queued: 0,
            closing: false,
            want_write: false,
            eof: false,
        }
    }

    /// Reads what is available and returns the complete frames, each with its
    /// descriptors, and whether more may be waiting (the read budget ran out:
    /// call again before sleeping, since readiness is edge-triggered). Stops at
    /// the first violation; descriptors that arrived with a rejected frame are
    /// closed when the connection is dropped. A hang-up is reported only after
    /// every frame that arrived before it was returned.
    ///
    /// `chunk` is receive space shared by every connection, zeroed once
    /// (zeroing 64 KiB per readable event cost microseconds each time).
    pub fn read_frames(
        &mut self,
        max_frame: u32,
        chunk: &mut Vec<u8>,
    ) -> Result<(Vec<Received>, bool), ReadError> {
        let mut frames = Vec::new();
        if self.eof {
            return Err(ReadError::Closed);
        }
        if chunk.len() < READ_CHUNK {
            chunk.resize(READ_CHUNK, 0);
        }
        let chunk = &mut chunk[..READ_CHUNK];
        for _ in 0..READ_BUDGET {
            match sys::recv_with_fds(self.sock.as_fd(), chunk, self.reader.fds_mut(), false) {
                Ok(0) => {
                    self.reader.push(&[], max_frame, &mut frames)?;
                    self.eof = true;
                    if frames.is_empty() {
                        return Err(ReadError::Closed);
                    }
                    return Ok((frames, true));
                }
                Ok(n) => self.reader.push(&chunk[..n], max_frame, &mut frames)?,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok((frames, false)),
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    return Err(ReadError::Violation(e.to_string()))
                }
                Err(e) => return Err(ReadError::Io(e)),
            }
        }
        Ok((frames, true))
    }

    /// Queues a frame. Returns false when the peer has fallen too far behind.
    pub fn queue(&mut self, frame: &Frame, fds: Vec<OwnedFd>, max_queued: usize) -> bool {
        let mut bytes = Vec::new();
        frame::encode(frame, &mut bytes);
        self.queued += bytes.len();
        self.out.push_back(Outgoing {
            bytes,
            sent: 0,
            fds,
        });
        self.queued <= max_queued
    }

    /// Writes as much as the socket takes. Returns whether the queue is now
    /// empty, and how many descriptors went out.
    pub fn flush(&mut self) -> io::Result<(bool, usize)> {
        let mut delivered = 0;
        while let Some(front) = self.out.front_mut() {
            let fds: Vec<_> = if front.sent == 0 {
                front.fds.iter().map(|f| f.as_fd()).collect()
            } else {
                Vec::new()
            };
            match sys::send_with_fds(self.sock.as_fd(), &front.bytes[front.sent..], &fds, false) {
                Ok(n) => {
                    front.sent += n;
                    // The descriptors went with the first byte: close our copies.
                    delivered += front.fds.len();
                    front.fds.clear();
                    if front.sent == front.bytes.len() {
                        self.queued -= front.bytes.len();
                        self.out.pop_front();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok((false, delivered)),
                Err(e) => return Err(e),
            }
        }
        Ok((true, delivered))
    }

    /// True when frames wait to be written.
    pub fn has_pending(&self) -> bool {
        !self.out.is_empty()
    }
}
