//! The two halves of a stream direction, independent of transport:
//! [`Sender`] (bytes, typed items, zero-copy slots, `io::Write`) and
//! [`Receiver`] (bytes, typed items, in-place items, `io::Read` + `BufRead`).

mod blob;
mod progress;
mod receiver;
mod sender;

use shmbus::state::{CloseCause, StreamEvent, StreamLifecycle};

pub use blob::Received;
pub use receiver::{InPlace, Receiver};
pub use sender::{SendSlot, Sender, SizeFn};

/// What a receive that never waits found: see
/// [`Receiver::try_recv_in_place`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum TryRecv<T> {
    /// The next item.
    Item(T),
    /// Nothing has arrived yet; the stream goes on.
    Empty,
    /// The stream ended normally (stream-end); nothing more will come.
    End,
}

impl<T> TryRecv<T> {
    /// Maps the item, keeping `Empty` and `End`.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> TryRecv<U> {
        match self {
            TryRecv::Item(t) => TryRecv::Item(f(t)),
            TryRecv::Empty => TryRecv::Empty,
            TryRecv::End => TryRecv::End,
        }
    }

    /// The item, if there was one.
    pub fn item(self) -> Option<T> {
        match self {
            TryRecv::Item(t) => Some(t),
            _ => None,
        }
    }
}

/// A lifecycle that has been through IDLE → OPENING → ACTIVE: a half exists
/// only once its port is established.
fn lifecycle_opened() -> StreamLifecycle {
    let mut life = StreamLifecycle::new();
    life.apply(StreamEvent::Open).expect("IDLE → OPENING");
    life.apply(StreamEvent::PortEstablished)
        .expect("OPENING → ACTIVE");
    life
}

/// Ends a half's lifecycle. Every half is opened first (see
/// `lifecycle_opened`) and a second close keeps the first cause, so this
/// cannot fail unless this crate has a bug, which debug builds (and so the
/// tests) catch.
fn close(life: &mut StreamLifecycle, cause: CloseCause) {
    let r = life.close(cause);
    debug_assert!(r.is_ok(), "stream half closed from an invalid state: {r:?}");
}

/// Whether `deadline` is set and has passed.
pub(crate) fn passed(deadline: Option<std::time::Instant>) -> bool {
    deadline.is_some_and(|d| std::time::Instant::now() >= d)
}
