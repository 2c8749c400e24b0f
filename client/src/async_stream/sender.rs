//! [`AsyncSender`]: a [`Sender`] driven by tokio.

use std::future::poll_fn;
use std::task::{Context, Poll};

use serde::Serialize;

use super::{DeadlineTimer, Readiness, Want};
use crate::error::{Error, Result};
use crate::stream::{SendSlot, Sender};

/// The sending half of a stream direction, for tokio: the async twin of
/// [`Sender`]. Make one with [`AsyncSender::new`] inside a runtime, from a
/// sender taken from a call (either side, either transport);
/// [`into_inner`](Self::into_inner) gives the blocking half back.
///
/// Credit is the backpressure, as with [`Sender`]: a send waits, without
/// blocking the thread, until the receiver has granted enough. Cancel
/// safety: an item is queued whole or not at all, so a send or reserve
/// dropped while it waits has sent nothing; a flush or finish dropped
/// midway leaves what it wrote written, and calling it again goes on
/// where it stopped. The port never blocks in a write, even over the
/// socket: a batch the socket does not take yet waits for it to turn
/// writable.
///
/// ```no_run
/// # async fn demo(call: &mut shmbus_client::IncomingCall) -> shmbus_client::Result<()> {
/// use shmbus_client::AsyncSender;
///
/// let mut tx = AsyncSender::new(call.take_sender().expect("a download"))?;
/// for i in 0..1000u64 {
///     tx.send(&i).await?;
/// }
/// tx.finish().await?;
/// # Ok(())
/// # }
/// ```
pub struct AsyncSender {
    ready: Option<Readiness>,
    timer: DeadlineTimer,
    tx: Sender,
    /// The length of the item the current operation waits to queue (0
    /// when unknown): a wait for a large one spins longer.
    len: usize,
}

impl AsyncSender {
    /// Registers the sender's port with the current tokio runtime (which
    /// must have its I/O driver, and its time driver for calls with a
    /// deadline). Fails outside a runtime.
    pub fn new(mut tx: Sender) -> Result<AsyncSender> {
        tx.set_nonblocking(true);
        let ready = match tx.pollable_fd() {
            Some(fd) => Some(Readiness::new(fd)?),
            None => None,
        };
        Ok(AsyncSender {
            ready,
            timer: DeadlineTimer::new(),
            tx,
            len: 0,
        })
    }

    /// The blocking half, to use it as such again.
    pub fn into_inner(mut self) -> Sender {
        self.tx.set_nonblocking(false);
        self.tx
    }

    /// The blocking half, for what needs no waiting (state, counters,
    /// [`Sender::fail`]).
    pub fn get_mut(&mut self) -> &mut Sender {
        &mut self.tx
    }

    /// Drives `attempt` (a non-blocking step of the sender) until it is
    /// done, or the call's deadline passes.
    fn drive<T>(
        &mut self,
        cx: &mut Context<'_>,
        mut attempt: impl FnMut(&mut Sender) -> Result<Option<T>>,
    ) -> Poll<Result<T>> {
        let Some(ready) = &self.ready else {
            // An ended half: the step reports how it ended.
            return Poll::Ready(attempt(&mut self.tx).and_then(|r| r.ok_or(Error::Closed)));
        };
        let spin = self.tx.wait_spin(self.len);
        let tx = &mut self.tx;
        let step = || -> Result<std::result::Result<T, Want>> {
            Ok(match attempt(tx)? {
                Some(v) => Ok(v),
                None if tx.wants_write() => Err(Want::Writable),
                None => Err(Want::Readable),
            })
        };
        let r = match ready.poll(cx, spin, step) {
            Poll::Ready(r) => r,
            Poll::Pending => match self.timer.poll(cx, self.tx.deadline()) {
                Poll::Ready(()) => Err(self.tx.expire()),
                Poll::Pending => return Poll::Pending,
            },
        };
        if self.tx.pollable_fd().is_none() {
            // The half closed its port: let the peer see it closed too.
            self.ready = None;
        }
        Poll::Ready(r)
    }

    /// Sends a sealed blob (as [`Sender::send_blob`]), waiting for credit
    /// without blocking the thread. Cancel safe: dropped while it waits,
    /// it has sent nothing.
    pub async fn send_blob(&mut self, blob: &crate::Blob) -> Result<()> {
        self.len = 0;
        poll_fn(|cx| self.drive(cx, |tx| Ok(tx.try_send_blob(blob)?.then_some(())))).await
    }

    /// Queues a typed item (postcard, encoded straight into the port),
    /// waiting for credit or room; it becomes visible to the receiver when
    /// a batch fills or at [`flush`](Self::flush).
    pub async fn feed<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        self.len = 0;
        poll_fn(|cx| self.drive(cx, |tx| Ok(tx.try_feed(value)?.then_some(())))).await
    }

    /// Sends a typed item and makes it visible now.
    pub async fn send<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        self.feed(value).await?;
        self.flush().await
    }

    /// Queues an item's bytes (copied into the port), waiting for credit or
    /// room.
    pub async fn feed_bytes(&mut self, data: &[u8]) -> Result<()> {
        self.len = data.len();
        poll_fn(|cx| self.drive(cx, |tx| Ok(tx.try_feed_bytes(data)?.then_some(())))).await
    }

    /// Sends an item's bytes and makes them visible now.
    pub async fn send_bytes(&mut self, data: &[u8]) -> Result<()> {
        self.feed_bytes(data).await?;
        self.flush().await
    }

    /// Reserves `len` bytes in the port to fill in place (zero copy, as
    /// [`Sender::reserve`]), waiting for credit or room. Dropped before it
    /// returns, it reserved nothing; the slot, dropped uncommitted, sends
    /// nothing.
    pub async fn reserve(&mut self, len: usize) -> Result<SendSlot<'_>> {
        self.len = len;
        poll_fn(|cx| self.drive(cx, |tx| Ok(tx.try_begin_slot(len)?.then_some(())))).await?;
        Ok(SendSlot::for_reserved(&mut self.tx))
    }

    /// Makes everything queued visible to the receiver; over the socket,
    /// waits until the socket took it.
    pub async fn flush(&mut self) -> Result<()> {
        poll_fn(|cx| self.drive(cx, |tx| Ok(tx.try_flush()?.then_some(())))).await
    }

    /// Ends the stream normally (stream-end), waiting for room for the
    /// closing record (or for the socket to take it).
    pub async fn finish(&mut self) -> Result<()> {
        poll_fn(|cx| self.drive(cx, |tx| Ok(tx.try_finish()?.then_some(())))).await
    }

    /// Ends the stream with stream-error: the receiver gets every item sent
    /// before it, then `message`.
    pub async fn fail(&mut self, message: &str) -> Result<()> {
        poll_fn(|cx| self.drive(cx, |tx| Ok(tx.try_fail(message)?.then_some(())))).await
    }
}

impl From<AsyncSender> for Sender {
    fn from(a: AsyncSender) -> Sender {
        a.into_inner()
    }
}

impl std::fmt::Debug for AsyncSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncSender")
            .field("stream", &self.tx.stream_id())
            .field("state", &self.tx.state())
            .finish()
    }
}

/// Bytes in order (as [`Sender`]'s `Write`): each write becomes one item of
/// at most a quarter of the credit; `poll_flush` makes them visible and
/// `poll_shutdown` ends the stream (stream-end). Cancel safe: a write is
/// queued whole or not at all.
impl tokio::io::AsyncWrite for AsyncSender {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let this = self.get_mut();
        let n = this.tx.write_chunk(buf.len());
        this.drive(cx, |tx| Ok(tx.try_feed_bytes(&buf[..n])?.then_some(n)))
            .map_err(Error::into_io)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.get_mut()
            .drive(cx, |tx| Ok(tx.try_flush()?.then_some(())))
            .map_err(Error::into_io)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.tx.state() == shmbus::state::StreamState::Closed {
            return Poll::Ready(Ok(()));
        }
        this.drive(cx, |tx| Ok(tx.try_finish()?.then_some(())))
            .map_err(Error::into_io)
    }
}

/// Typed items as a [`futures_sink::Sink`]: made by
/// [`AsyncSender::into_sink`]. An item given to `start_send` is encoded at
/// once and goes into the port at the next `poll_ready`, `poll_flush` or
/// `poll_close`; `poll_close` ends the stream (stream-end).
pub struct SendSink<T> {
    tx: AsyncSender,
    pending: Option<Vec<u8>>,
    _items: std::marker::PhantomData<fn(T)>,
}

impl AsyncSender {
    /// The sender as a sink of typed items.
    pub fn into_sink<T: Serialize>(self) -> SendSink<T> {
        SendSink {
            tx: self,
            pending: None,
            _items: std::marker::PhantomData,
        }
    }
}

impl<T> SendSink<T> {
    /// The sender back (an item still pending is dropped).
    pub fn into_inner(self) -> AsyncSender {
        self.tx
    }

    /// Moves the pending item into the port.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let Some(item) = &self.pending else {
            return Poll::Ready(Ok(()));
        };
        match self
            .tx
            .drive(cx, |tx| Ok(tx.try_feed_bytes(item)?.then_some(())))
        {
            Poll::Ready(Ok(())) => {
                self.pending = None;
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl<T: Serialize> futures_sink::Sink<T> for SendSink<T> {
    type Error = Error;

    fn poll_ready(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.get_mut().poll_pending(cx)
    }

    fn start_send(self: std::pin::Pin<&mut Self>, item: T) -> Result<()> {
        let this = self.get_mut();
        debug_assert!(this.pending.is_none(), "start_send without poll_ready");
        this.pending = Some(postcard::to_stdvec(&item)?);
        Ok(())
    }

    fn poll_flush(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let this = self.get_mut();
        match this.poll_pending(cx) {
            Poll::Ready(Ok(())) => this.tx.drive(cx, |tx| Ok(tx.try_flush()?.then_some(()))),
            other => other,
        }
    }

    fn poll_close(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let this = self.get_mut();
        match this.poll_pending(cx) {
            Poll::Ready(Ok(())) => this.tx.drive(cx, |tx| Ok(tx.try_finish()?.then_some(()))),
            other => other,
        }
    }
}
