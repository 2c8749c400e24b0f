//! The stream halves for tokio (feature `tokio`): [`AsyncReceiver`] and
//! [`AsyncSender`] wrap a [`Receiver`](crate::Receiver) or
//! [`Sender`](crate::Sender) and wait for its port's descriptor through
//! tokio's reactor ([`AsyncFd`]) instead of blocking a thread.
//!
//! No thread and no queue is added: each operation is the half's own
//! non-blocking step (`try_*`), retried when the descriptor turns ready.
//! That descriptor is the doorbell over shared memory, which the peer rings
//! only when this side said it sleeps, and the socket itself over the
//! socket port; a half that finds nothing to do arms it before it returns,
//! so no wake-up is lost. Credit stays the backpressure, exactly as in the
//! blocking API.
//!
//! Cancel safety: every operation does its work in one non-blocking step
//! that either completes or changes nothing, so a future dropped while it
//! waits loses and duplicates nothing; what each method leaves behind is on
//! its doc. A half whose call has a deadline fails a wait that reaches it
//! with [`Error::DeadlineExceeded`](crate::Error::DeadlineExceeded), as the
//! blocking API does.

use std::future::Future;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

mod receiver;
mod sender;

pub use receiver::{AsyncReceiver, RecvStream};
pub use sender::{AsyncSender, SendSink};

/// A duplicate of a half's pollable descriptor, registered with the
/// runtime's reactor. Its own descriptor: the half may close its port
/// (and that descriptor) while this one is still registered.
struct Readiness {
    fd: AsyncFd<OwnedFd>,
}

/// What an attempt that could not finish waits for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Want {
    Readable,
    /// Readable or writable: a socket port with bytes to write.
    Writable,
}

impl Readiness {
    fn new(fd: BorrowedFd<'_>) -> io::Result<Readiness> {
        let owned = fd.try_clone_to_owned()?;
        #[allow(unsafe_code)]
        // SAFETY: tokio requires the descriptor to stay open, and to be the
        // one `as_raw_fd` returns, for as long as the `AsyncFd` owns it. It
        // owns an `OwnedFd`, a descriptor of its own (a duplicate), which
        // only its drop closes and whose `as_raw_fd` never changes.
        let fd = unsafe {
            AsyncFd::register_with_interest(owned, Interest::READABLE | Interest::WRITABLE)
        }
        .map_err(|e| e.into_parts().1)?;
        Ok(Readiness { fd })
    }

    /// Drives `attempt` until it yields a value. `attempt` is a
    /// non-blocking step: `Ok(Err(want))` when it could not finish, having
    /// armed the peer's wake-up, and what readiness it then waits for.
    ///
    /// An attempt comes first (the step may well succeed at once, and the
    /// descriptor is not ready until the peer is told to wake this side).
    /// After that, readiness seen is only cleared when an attempt made
    /// since it was seen found nothing to do: an event that came in between
    /// is kept, so no wake-up is lost.
    fn poll<T>(
        &self,
        cx: &mut Context<'_>,
        spin: Duration,
        mut attempt: impl FnMut() -> crate::Result<Result<T, Want>>,
    ) -> Poll<crate::Result<T>> {
        let mut want = match attempt() {
            Ok(Ok(v)) => return Poll::Ready(Ok(v)),
            Ok(Err(w)) => w,
            Err(e) => return Poll::Ready(Err(e)),
        };
        // As the blocking API does, try again for the half's spin before
        // waiting on the reactor: a peer that keeps up answers within it,
        // and a wake-up through the kernel costs more than the spin.
        if !spin.is_zero() {
            let start = Instant::now();
            let mut round = 0u32;
            loop {
                std::hint::spin_loop();
                match attempt() {
                    Ok(Ok(v)) => return Poll::Ready(Ok(v)),
                    Ok(Err(w)) => want = w,
                    Err(e) => return Poll::Ready(Err(e)),
                }
                round += 1;
                if round.is_multiple_of(16) {
                    let spent = start.elapsed();
                    if spent >= spin {
                        break;
                    }
                    crate::port::wait::yield_if_long(spent);
                }
            }
        }
        loop {
            let ready = match want {
                Want::Readable => self.fd.poll_read_ready(cx),
                // Whichever comes first: room in the socket, or a control
                // message (credit, cancel).
                Want::Writable => match self.fd.poll_write_ready(cx) {
                    Poll::Pending => self.fd.poll_read_ready(cx),
                    ready => ready,
                },
            };
            let mut guard = match ready {
                Poll::Ready(Ok(g)) => g,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                Poll::Pending => return Poll::Pending,
            };
            match attempt() {
                Ok(Ok(v)) => return Poll::Ready(Ok(v)),
                Ok(Err(w)) => {
                    guard.clear_ready();
                    want = w;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// Whether `deadline` has passed (the wait must end).
fn due(deadline: Option<Instant>) -> bool {
    deadline.is_some_and(|d| Instant::now() >= d)
}

/// A timer for the call's deadline, registered with the runtime, so that a
/// wait ends when it passes even if the peer never moves.
struct DeadlineTimer {
    sleep: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl DeadlineTimer {
    fn new() -> Self {
        DeadlineTimer { sleep: None }
    }

    /// Ready once `deadline` has passed; otherwise arms the timer to wake
    /// `cx` then.
    fn poll(&mut self, cx: &mut Context<'_>, deadline: Option<Instant>) -> Poll<()> {
        let Some(d) = deadline else {
            return Poll::Pending;
        };
        if due(Some(d)) {
            return Poll::Ready(());
        }
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(d.into())));
        sleep.as_mut().poll(cx)
    }
}
