//! Who reads the broker socket. One thread at a time holds the frame
//! reader and routes every frame it reads. A thread waiting for its own
//! reply takes the reader when it is free, so its reply needs no hand-over;
//! the connection's reader thread reads only while no thread waits, woken
//! by a one-shot watch that is armed whenever the reader is free. A thread
//! making a call takes the reader before it sends, so the reply does not
//! wake the reader thread as well.

use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};

use super::mailbox::Mailbox;
use super::reader::{FrameReader, Next};
use super::BrokerLink;

/// The frame reader, lent to the one thread that reads. Taking it saves a
/// waiting thread the hand-over from the reader thread: one wake-up fewer
/// on every call, stream-open and incoming call.
pub(super) struct ReadToken {
    /// `None` while a thread reads.
    pub(super) reader: Option<FrameReader>,
    /// The connection failed or ended: nobody reads it again.
    pub(super) dead: bool,
}

/// The reader, taken by a thread before it sends a request whose reply it
/// will wait for ([`BrokerLink::lead`]). The reader thread's watch is then
/// disarmed before the request goes out, so the reply wakes only the
/// waiting thread, not the reader thread as well (on another CPU, that
/// wake-up costs an interrupt, and CPU time the peers need). Dropped
/// unused, it hands the reader back.
pub(crate) struct HeldReader {
    inner: Arc<BrokerLink>,
    reader: Option<FrameReader>,
}

impl Drop for HeldReader {
    fn drop(&mut self) {
        if let Some(reader) = self.reader.take() {
            self.inner.put_token(reader, true);
        }
    }
}

/// What a thread asking for the reader got.
enum Lead {
    Reader(FrameReader),
    /// Another thread reads and will route this one's frames.
    Busy,
    Dead,
}

impl BrokerLink {
    /// Waits for what the broker sends to `rx`. When no other thread reads
    /// the socket, this one does (routing whatever else arrives meanwhile)
    /// until its own reply is in; else the reader reads and hands it over.
    pub(crate) fn wait_for<T>(
        self: &Arc<Self>,
        rx: &Mailbox<T>,
    ) -> std::result::Result<T, mpsc::RecvError> {
        self.wait_holding(None, rx)
    }

    /// Takes the reader ahead of a request, when no other thread reads;
    /// pass it to [`wait_holding`](Self::wait_holding) once the request is sent.
    pub(crate) fn lead(self: &Arc<Self>) -> HeldReader {
        let reader = match self.take_token() {
            Lead::Reader(r) => Some(r),
            Lead::Busy | Lead::Dead => None,
        };
        HeldReader {
            inner: self.clone(),
            reader,
        }
    }

    /// [`wait_for`](Self::wait_for) with the reader this thread took
    /// beforehand, if any.
    pub(crate) fn wait_holding<T>(
        self: &Arc<Self>,
        held: Option<HeldReader>,
        rx: &Mailbox<T>,
    ) -> std::result::Result<T, mpsc::RecvError> {
        let held = held.and_then(|mut h| h.reader.take());
        let take = |rx: &Mailbox<T>| match rx.try_recv() {
            Ok(v) => Some(Ok(v)),
            Err(mpsc::TryRecvError::Disconnected) => Some(Err(mpsc::RecvError)),
            Err(mpsc::TryRecvError::Empty) => None,
        };
        if let Some(r) = take(rx) {
            if let Some(reader) = held {
                self.put_token(reader, true);
            }
            return r;
        }
        let mut reader = match held.map_or_else(|| self.take_token(), Lead::Reader) {
            Lead::Reader(r) => r,
            Lead::Busy | Lead::Dead => return rx.recv(),
        };
        let mut alive = true;
        let got = loop {
            if let Some(r) = take(rx) {
                break Some(r);
            }
            match reader.next_frame(true) {
                Ok(Next::Frame(frame, fds)) => {
                    self.bytes_read.store(reader.bytes_read, Ordering::Relaxed);
                    if self.dispatch(frame, fds).is_err() {
                        alive = false;
                        break None;
                    }
                }
                Ok(Next::WouldBlock) => {}
                Ok(Next::End) | Err(_) => {
                    alive = false;
                    break None;
                }
            }
        };
        // Whole frames already read go out now: nothing would wake the
        // reader thread for them. What is still in the socket fires the
        // watch as soon as it is armed.
        alive = alive && self.drain_buffered(&mut reader);
        self.put_token(reader, alive);
        match got {
            Some(r) => r,
            // The connection ended; the reader thread's clean-up ends the wait.
            None => rx.recv(),
        }
    }

    /// Takes the reader if it is free, and stops the reader thread's watch.
    fn take_token(&self) -> Lead {
        let mut t = self.token.lock().unwrap();
        if t.dead {
            return Lead::Dead;
        }
        match t.reader.take() {
            Some(r) => {
                // Harmless if it fails: the reader thread, woken, finds the
                // reader taken and waits again.
                let _ = self.watch.disarm();
                Lead::Reader(r)
            }
            None => Lead::Busy,
        }
    }

    /// Hands the reader back and arms the reader thread's watch, which fires
    /// at once when input is already waiting. A failed connection is shut
    /// down first, so the reader thread wakes to its end and cleans up.
    fn put_token(&self, reader: FrameReader, alive: bool) {
        let mut t = self.token.lock().unwrap();
        if !alive {
            t.dead = true;
            reader.shut_down();
        }
        t.reader = Some(reader);
        if self.watch.arm().is_err() {
            // Nothing could wake the reader thread: end the connection here.
            t.dead = true;
            drop(t);
            self.close_all();
        }
    }

    /// Routes every frame readable without waiting; false once the
    /// connection failed or ended.
    fn drain(self: &Arc<Self>, reader: &mut FrameReader) -> bool {
        loop {
            match reader.next_frame(false) {
                Ok(Next::Frame(frame, fds)) => {
                    self.bytes_read.store(reader.bytes_read, Ordering::Relaxed);
                    if self.dispatch(frame, fds).is_err() {
                        return false;
                    }
                }
                Ok(Next::WouldBlock) => return true,
                Ok(Next::End) | Err(_) => return false,
            }
        }
    }

    /// Routes the whole frames already read into the reader's buffer; false
    /// once the connection failed.
    fn drain_buffered(self: &Arc<Self>, reader: &mut FrameReader) -> bool {
        loop {
            match reader.buffered_frame() {
                Ok(Some((frame, fds))) => {
                    if self.dispatch(frame, fds).is_err() {
                        return false;
                    }
                }
                Ok(None) => return true,
                Err(_) => return false,
            }
        }
    }
}

/// The reader thread: routes what arrives while no other thread reads.
pub(super) fn read_loop(inner: Arc<BrokerLink>) {
    while inner.watch.wait().is_ok() {
        let mut reader = match inner.take_token() {
            Lead::Reader(r) => r,
            // A waiting thread reads now; it arms the watch when done.
            Lead::Busy => continue,
            Lead::Dead => break,
        };
        if !inner.drain(&mut reader) {
            break;
        }
        inner.put_token(reader, true);
    }
    inner.close_all();
}
