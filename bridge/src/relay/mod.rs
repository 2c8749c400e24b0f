//! One call's streams between a local stream half and the far bridge, with
//! credit end to end: a bridge publishes items only while the far bridge
//! has granted room for them, and grants more only once it has written what
//! came on to its local port. Each bridge therefore holds at most
//! [`WINDOW_BYTES`](crate::wire::WINDOW_BYTES) per direction, and a slow
//! consumer on one host slows the producer on the other.
//!
//! [`links`] carries a call's messages over Zenoh; [`send`] packs a local
//! receiver's items into messages; [`receive`] writes them on to a local
//! sender and grants them back.

use tokio::sync::watch;

use crate::wire::Ctl;

mod links;
mod receive;
mod send;

pub use links::{In, Out, Streams};
pub use receive::pump_in;
pub use send::pump_out;

use links::Incoming;

/// How a bridge waits on its local ports: it never spins. Its runtime's
/// threads share the CPUs with Zenoh's link threads and the local
/// producers and consumers, whose work a spin would take the CPU from.
const NO_SPIN: shmbus_client::WaitPolicy = shmbus_client::WaitPolicy {
    spin: std::time::Duration::ZERO,
    stall: None,
};

/// Grants that arrive on a direction's `ctl` key, and a cancel if one does.
pub struct Grants {
    /// Bytes the far bridge has written on.
    pub consumed: watch::Receiver<u64>,
    /// Set once the far caller cancelled.
    pub cancelled: watch::Receiver<bool>,
}

/// Reads a `ctl` key until the session closes, publishing what it says; a
/// cancel too once `gone` completes (the caller's node went away).
pub fn watch_ctl(
    ctl: In,
    gone: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
) -> Grants {
    let (consumed_tx, consumed) = watch::channel(0u64);
    let (cancel_tx, cancelled) = watch::channel(false);
    tokio::spawn(async move {
        let (mut gone, mut went) = (gone, false);
        loop {
            let msg = tokio::select! {
                m = ctl.next::<Ctl>() => m,
                _ = &mut gone, if !went => {
                    went = true;
                    Some(Ok(Ctl::Cancel))
                }
            };
            let Some(Ok(msg)) = msg else {
                return;
            };
            match msg {
                Ctl::Consumed(n) => {
                    consumed_tx.send_if_modified(|c| {
                        let grew = n > *c;
                        *c = (*c).max(n);
                        grew
                    });
                }
                Ctl::Cancel => {
                    let _ = cancel_tx.send(true);
                }
            }
            if consumed_tx.is_closed() && cancel_tx.is_closed() {
                return;
            }
        }
    });
    Grants {
        consumed,
        cancelled,
    }
}

/// The error for a message from the far bridge that breaks the protocol.
fn malformed(e: impl std::fmt::Display) -> String {
    format!("malformed message from the far bridge: {e}")
}
