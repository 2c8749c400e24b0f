//! One call's streams between a local stream half and the far bridge, with
//! credit end to end: a bridge publishes an item only while the far bridge
//! has granted room for it, and grants more only once it has written what
//! came on to its local port. Each bridge therefore holds at most
//! [`WINDOW_BYTES`] per direction, and a slow consumer on one host slows
//! the producer on the other.

use shmbus_client::{AsyncReceiver, AsyncSender, Receiver, Sender};
use tokio::sync::watch;
use zenoh::qos::CongestionControl;
use zenoh::Session;

use crate::wire::{self, Ctl, Data, WINDOW_BYTES};

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

    /// Sends one message.
    pub async fn send<T: serde::Serialize>(&self, msg: &T) -> Result<(), String> {
        self.publisher
            .put(wire::encode(msg))
            .await
            .map_err(|e| format!("zenoh put: {e}"))
    }
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
        Some(
            wire::decode(&bytes).map_err(|e| format!("malformed message from the far bridge: {e}")),
        )
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

/// Local receiver → far bridge: each item as [`Data::Item`] once the far
/// side has room for it, then the stream's end or error. Returns how the
/// stream ended (`Err` with the local error when it failed). When
/// `cancelled` turns true the local stream is cancelled at once, even
/// while this waits for room: its producer may be waiting for credit that
/// only a receive would give.
pub async fn pump_out(
    rx: Receiver,
    out: &Out,
    mut grants: watch::Receiver<u64>,
    mut cancelled: Option<watch::Receiver<bool>>,
) -> Result<(), String> {
    let mut rx = AsyncReceiver::new(rx).map_err(|e| e.to_string())?;
    let mut sent = 0u64;
    loop {
        let item = match rx.recv_in_place().await {
            Ok(Some(item)) => item.to_vec(),
            Ok(None) => return out.send(&Data::End).await,
            Err(e) => {
                out.send(&Data::Error(e.to_string())).await?;
                return Err(e.to_string());
            }
        };
        // Room for it: within the window, or alone in flight.
        let len = item.len() as u64;
        loop {
            let consumed = *grants.borrow_and_update();
            if sent + len <= consumed + WINDOW_BYTES || sent == consumed {
                break;
            }
            let stop = async {
                match cancelled.as_mut() {
                    Some(c) => {
                        let _ = c.wait_for(|c| *c).await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = grants.changed() => if r.is_err() {
                    return Err("the far bridge stopped granting credit".into());
                },
                _ = stop => {
                    rx.get_mut().cancel();
                    return Err("cancelled by the far caller".into());
                }
            }
        }
        out.send(&Data::Item(item)).await?;
        sent += len;
    }
}

/// Far bridge → local sender: items written on, each written item granted
/// back on `ctl`; the stream's end or error passed on. Toward a caller
/// (`until_result`), goes on to the call's result, which follows the
/// stream on the same key, and returns it; otherwise returns at the
/// stream's end. `None` when the key ends first.
pub async fn pump_in(
    tx: Option<Sender>,
    data: &In,
    ctl: &Out,
    until_result: bool,
) -> Result<Option<Result<Vec<u8>, shmbus::frame::RemoteError>>, String> {
    let mut tx = match tx {
        Some(tx) => Some(AsyncSender::new(tx).map_err(|e| e.to_string())?),
        None => None,
    };
    let (mut consumed, mut granted) = (0u64, 0u64);
    while let Some(msg) = data.next::<Data>().await {
        match msg? {
            Data::Item(bytes) => {
                let Some(t) = tx.as_mut() else {
                    return Err("the far bridge sent items on a stream with no receiver".into());
                };
                t.send_bytes(&bytes).await.map_err(|e| e.to_string())?;
                consumed += bytes.len() as u64;
            }
            Data::End => {
                if let Some(mut t) = tx.take() {
                    t.finish().await.map_err(|e| e.to_string())?;
                }
                if !until_result {
                    return Ok(None);
                }
            }
            Data::Error(m) => {
                if let Some(mut t) = tx.take() {
                    let _ = t.fail(&m).await;
                }
                if !until_result {
                    return Ok(None);
                }
            }
            Data::Result(r) => return Ok(Some(r)),
        }
        // Grant what is written on: the far side may send that much more.
        if consumed > granted {
            granted = consumed;
            ctl.send(&Ctl::Consumed(consumed)).await?;
        }
    }
    Ok(None)
}
