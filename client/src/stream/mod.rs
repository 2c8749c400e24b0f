//! The two halves of a stream direction, independent of transport:
//! [`Sender`] (bytes, typed items, zero-copy slots, `io::Write`) and
//! [`Receiver`] (bytes, typed items, in-place items, `io::Read` + `BufRead`).

mod progress;
mod receiver;
mod sender;

use shmbus::state::{StreamEvent, StreamLifecycle};

pub use receiver::{InPlace, Receiver};
pub use sender::{SendSlot, Sender, SizeFn};

/// A lifecycle that has been through IDLE → OPENING → ACTIVE: a half exists
/// only once its port is established.
fn lifecycle_opened() -> StreamLifecycle {
    let mut life = StreamLifecycle::new();
    life.apply(StreamEvent::Open).expect("IDLE → OPENING");
    life.apply(StreamEvent::PortEstablished)
        .expect("OPENING → ACTIVE");
    life
}
