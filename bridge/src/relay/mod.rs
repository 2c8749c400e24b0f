//! One call's streams between a local stream half and the far bridge, with
//! credit end to end: a bridge publishes items only while the far bridge
//! has granted room for them, and grants more only once it has written what
//! came on to its local port. Each bridge therefore holds at most
//! [`WINDOW_BYTES`](crate::wire::WINDOW_BYTES) per direction, and a slow
//! consumer on one host slows the producer on the other.
//!
//! [`send`] packs a local receiver's items into messages; [`receive`]
//! writes them on to a local sender and grants them back.

use tokio::sync::watch;
use zenoh::qos::CongestionControl;
use zenoh::Session;

use crate::wire::{self, Ctl, Data, DataKind};

mod receive;
mod send;

pub use receive::pump_in;
pub use send::pump_out;

/// How a bridge waits on its local ports: it never spins. Its runtime's
/// threads share the CPUs with Zenoh's link threads and the local
/// producers and consumers, whose work a spin would take the CPU from.
const NO_SPIN: shmbus_client::WaitPolicy = shmbus_client::WaitPolicy {
    spin: std::time::Duration::ZERO,
    stall: None,
};

/// Publishes messages on one key, reliably, waiting (never dropping) when
/// Zenoh's queue is full: credit keeps what is in flight bounded.
pub struct Out {
    publisher: zenoh::pubsub::Publisher<'static>,
}

impl Out {
    /// A publisher on `key`.
    pub async fn new(session: &Session, key: String) -> Result<Out, String> {
        let publisher = session
            .declare_publisher(key)
            .congestion_control(CongestionControl::Block)
            .await
            .map_err(|e| format!("zenoh publisher: {e}"))?;
        Ok(Out { publisher })
    }

    /// Sends one message (postcard).
    pub async fn send<T: serde::Serialize>(&self, msg: &T) -> Result<(), String> {
        self.put(wire::encode(msg)).await
    }

    /// Sends one [`Data`] on a `data` key.
    pub async fn send_data(&self, d: &Data) -> Result<(), String> {
        self.put(wire::data_message(d)).await
    }

    /// Sends a message as it is.
    async fn put(&self, bytes: Vec<u8>) -> Result<(), String> {
        self.publisher
            .put(bytes)
            .await
            .map_err(|e| format!("zenoh put: {e}"))
    }
}

/// A message on a `data` key.
pub enum Incoming {
    /// Items, still in Zenoh's buffers (records after a one-byte tag, see
    /// [`wire::items`]).
    Items(zenoh::bytes::ZBytes),
    /// Anything else.
    Data(Data),
}

/// The error for a message from the far bridge that breaks the protocol.
fn malformed(e: impl std::fmt::Display) -> String {
    format!("malformed message from the far bridge: {e}")
}

/// A subscriber's messages, decoded.
pub struct In {
    subscriber:
        zenoh::pubsub::Subscriber<zenoh::handlers::FifoChannelHandler<zenoh::sample::Sample>>,
}

impl In {
    /// A subscriber on `key`.
    pub async fn new(session: &Session, key: String) -> Result<In, String> {
        let subscriber = session
            .declare_subscriber(key)
            .await
            .map_err(|e| format!("zenoh subscriber: {e}"))?;
        Ok(In { subscriber })
    }

    /// The next message; `None` when the session closed. A message that
    /// does not decode is an error naming it.
    pub async fn next<T: serde::de::DeserializeOwned>(&self) -> Option<Result<T, String>> {
        let sample = self.subscriber.recv_async().await.ok()?;
        let bytes = sample.payload().to_bytes();
        Some(wire::decode(&bytes).map_err(malformed))
    }

    /// The next message on a `data` key; `None` when the session closed.
    pub async fn next_data(&self) -> Option<Result<Incoming, String>> {
        let sample = self.subscriber.recv_async().await.ok()?;
        let payload = sample.payload();
        let first = payload.slices().find(|s| !s.is_empty()).map(|s| s[0]);
        Some(match wire::data_kind(first) {
            Some(DataKind::Items) => Ok(Incoming::Items(payload.clone())),
            Some(DataKind::Data) => wire::decode(&payload.to_bytes()[1..])
                .map(Incoming::Data)
                .map_err(malformed),
            None => Err(malformed("no such message")),
        })
    }

    /// True when no message waits: the far side has sent nothing more yet.
    pub fn is_idle(&self) -> bool {
        self.subscriber.is_empty()
    }
}

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
