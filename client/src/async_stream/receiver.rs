//! [`AsyncReceiver`]: a [`Receiver`] driven by tokio.

use std::future::poll_fn;
use std::task::{Context, Poll};

use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::{DeadlineTimer, Readiness, Want};
use crate::error::Result;
use crate::stream::{InPlace, Receiver, TryRecv};

/// The receiving half of a stream direction, for tokio: the async twin of
/// [`Receiver`]. Make one with [`AsyncReceiver::new`] inside a runtime,
/// from a receiver taken from a call (either side, either transport);
/// [`into_inner`](Self::into_inner) gives the blocking half back.
///
/// Every receive waits without blocking the thread, and is cancel safe:
/// dropped while it waits, it has taken nothing out of the stream (the
/// next receive gets the item it would have got). Over shared memory, as
/// with [`Receiver::recv_in_place`], an in-place view is the ring's memory.
///
/// ```no_run
/// # async fn demo(call: &mut shmbus_client::Call) -> shmbus_client::Result<()> {
/// use shmbus_client::AsyncReceiver;
///
/// let mut rx = AsyncReceiver::new(call.take_receiver().expect("a download"))?;
/// let mut sum = 0u64;
/// while let Some(n) = rx.recv::<u64>().await? {
///     sum += n;
/// }
/// # let _ = sum;
/// # Ok(())
/// # }
/// ```
pub struct AsyncReceiver {
    ready: Option<Readiness>,
    timer: DeadlineTimer,
    rx: Receiver,
}

impl AsyncReceiver {
    /// Registers the receiver's port with the current tokio runtime (which
    /// must have its I/O driver, and its time driver for calls with a
    /// deadline). Fails outside a runtime.
    pub fn new(rx: Receiver) -> Result<AsyncReceiver> {
        let ready = match rx.pollable_fd() {
            Some(fd) => Some(Readiness::new(fd)?),
            // An ended half: every receive answers at once.
            None => None,
        };
        Ok(AsyncReceiver {
            ready,
            timer: DeadlineTimer::new(),
            rx,
        })
    }

    /// The blocking half, to use it as such again.
    pub fn into_inner(self) -> Receiver {
        self.rx
    }

    /// The blocking half, for what needs no waiting (state, counters,
    /// [`Receiver::cancel`]).
    pub fn get_mut(&mut self) -> &mut Receiver {
        &mut self.rx
    }

    /// Moves to the next item (held) or the end: `Ready(true)` for an
    /// item, `Ready(false)` at stream-end.
    fn poll_advance(&mut self, cx: &mut Context<'_>) -> Poll<Result<bool>> {
        let Some(ready) = &self.ready else {
            return Poll::Ready(self.rx.try_advance().map(|r| r.unwrap_or(false)));
        };
        let spin = self.rx.wait_spin();
        let rx = &mut self.rx;
        let attempt = || -> Result<std::result::Result<bool, Want>> {
            Ok(match rx.try_advance()? {
                Some(item) => Ok(item),
                None if rx.wants_write() => Err(Want::Writable),
                None => Err(Want::Readable),
            })
        };
        let r = match ready.poll(cx, spin, attempt) {
            Poll::Ready(r) => r,
            Poll::Pending => match self.timer.poll(cx, self.rx.deadline()) {
                Poll::Ready(()) => Err(self.rx.expire()),
                Poll::Pending => return Poll::Pending,
            },
        };
        if self.rx.pollable_fd().is_none() {
            // The half closed its port: let the peer see it closed too.
            self.ready = None;
        }
        Poll::Ready(r)
    }

    /// The next typed item, decoded from a copy (as [`Receiver::recv`]);
    /// `None` at stream-end.
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<Option<T>> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// [`recv`](Self::recv) as a poll function, for hand-written futures
    /// and streams.
    pub fn poll_recv<T: DeserializeOwned>(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<T>>> {
        match self.poll_advance(cx) {
            Poll::Ready(Ok(true)) => Poll::Ready(self.rx.decode_held().map(Some)),
            Poll::Ready(Ok(false)) => Poll::Ready(Ok(None)),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    /// The next item's bytes, copied out once; `None` at stream-end.
    pub async fn recv_bytes(&mut self) -> Result<Option<Vec<u8>>> {
        Ok(self.recv_in_place().await?.map(|item| item.to_vec()))
    }

    /// The next item in place (zero copy, as [`Receiver::recv_in_place`]),
    /// released when the view is dropped; `None` at stream-end.
    pub async fn recv_in_place(&mut self) -> Result<Option<InPlace<'_>>> {
        if poll_fn(|cx| self.poll_advance(cx)).await? {
            Ok(Some(InPlace::for_held(&mut self.rx)))
        } else {
            Ok(None)
        }
    }

    /// The next typed item, decoded from the receiver's own copy and
    /// borrowing from it (as [`Receiver::recv_borrowed`]); `None` at
    /// stream-end.
    pub async fn recv_borrowed<'a, T: Deserialize<'a>>(&'a mut self) -> Result<Option<T>> {
        if poll_fn(|cx| self.poll_advance(cx)).await? {
            self.rx.decode_held().map(Some)
        } else {
            Ok(None)
        }
    }

    /// The next item, which must be a blob (as [`Receiver::recv_blob`]:
    /// an item that is not one stays next, and this fails with
    /// [`Error::NotABlob`](crate::Error::NotABlob)); `None` at stream-end.
    /// Cancel safe: dropped while it waits, it has taken nothing.
    pub async fn recv_blob(&mut self) -> Result<Option<crate::Blob>> {
        if poll_fn(|cx| self.poll_advance(cx)).await? {
            self.rx.held_blob().map(Some)
        } else {
            Ok(None)
        }
    }

    /// The next item or blob (as [`Receiver::recv_any`]); `None` at
    /// stream-end. Cancel safe: dropped while it waits, it has taken nothing.
    pub async fn recv_any(&mut self) -> Result<Option<crate::Received<'_>>> {
        if poll_fn(|cx| self.poll_advance(cx)).await? {
            self.rx.held_any().map(Some)
        } else {
            Ok(None)
        }
    }

    /// Like [`Receiver::try_recv`]: never waits.
    pub fn try_recv<T: DeserializeOwned>(&mut self) -> Result<TryRecv<T>> {
        self.rx.try_recv()
    }
}

impl From<AsyncReceiver> for Receiver {
    fn from(a: AsyncReceiver) -> Receiver {
        a.into_inner()
    }
}

impl std::fmt::Debug for AsyncReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncReceiver")
            .field("stream", &self.rx.stream_id())
            .field("state", &self.rx.state())
            .finish()
    }
}

/// Bytes in order, item boundaries ignored (as [`Receiver`]'s `BufRead`):
/// `poll_fill_buf` hands out the rest of the current item in place, which
/// over shared memory is ring memory a hostile sender can change while it
/// is held (see [`Receiver::recv_in_place`]). End of file at stream-end.
impl tokio::io::AsyncBufRead for AsyncReceiver {
    fn poll_fill_buf(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<&[u8]>> {
        let this = self.get_mut();
        // Past empty items, to the next byte or the end.
        while this.rx.unread().is_none() {
            match this.poll_advance(cx) {
                Poll::Ready(Ok(true)) => {}
                Poll::Ready(Ok(false)) => return Poll::Ready(Ok(&[])),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into_io())),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(this.rx.unread().unwrap_or_default()))
    }

    fn consume(self: std::pin::Pin<&mut Self>, amt: usize) {
        std::io::BufRead::consume(&mut self.get_mut().rx, amt);
    }
}

/// Copies each item's bytes once into the caller's buffer (as
/// [`Receiver`]'s `Read`). Cancel safe: nothing is consumed until it is
/// copied.
impl tokio::io::AsyncRead for AsyncReceiver {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        use tokio::io::AsyncBufRead;
        let avail = match self.as_mut().poll_fill_buf(cx) {
            Poll::Ready(Ok(avail)) => avail,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        };
        let n = avail.len().min(buf.remaining());
        buf.put_slice(&avail[..n]);
        self.consume(n);
        Poll::Ready(Ok(()))
    }
}

/// Typed items as a [`futures_core::Stream`]: made by
/// [`AsyncReceiver::into_stream`].
pub struct RecvStream<T> {
    rx: AsyncReceiver,
    done: bool,
    _items: std::marker::PhantomData<fn() -> T>,
}

impl AsyncReceiver {
    /// The typed items as a stream (`Result<T>` each, ending at
    /// stream-end, or after the first error).
    pub fn into_stream<T: DeserializeOwned>(self) -> RecvStream<T> {
        RecvStream {
            rx: self,
            done: false,
            _items: std::marker::PhantomData,
        }
    }
}

impl<T> RecvStream<T> {
    /// The receiver back.
    pub fn into_inner(self) -> AsyncReceiver {
        self.rx
    }
}

impl<T: DeserializeOwned> futures_core::Stream for RecvStream<T> {
    type Item = Result<T>;

    fn poll_next(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<T>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        match this.rx.poll_recv::<T>(cx) {
            Poll::Ready(Ok(Some(v))) => Poll::Ready(Some(Ok(v))),
            Poll::Ready(Ok(None)) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(Err(e)) => {
                this.done = true;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}
