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

use crate::wire::{self, Ctl, Data, DataKind, WINDOW_BYTES};

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

    async fn put(&self, bytes: Vec<u8>) -> Result<(), String> {
        self.publisher
            .put(bytes)
            .await
            .map_err(|e| format!("zenoh put: {e}"))
    }
}

/// A message on a `data` key.
pub enum Incoming {
    /// An item, still in Zenoh's buffers (its bytes follow a one-byte tag).
    Item(zenoh::bytes::ZBytes),
    /// Anything else.
    Data(Data),
}

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
            Some(DataKind::Item) => Ok(Incoming::Item(payload.clone())),
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

/// Local receiver → far bridge: each item as it is once the far
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
        // The message is made (the one copy on this side) as the item is
        // taken, so that its room in the port goes back at once.
        let message = match rx.recv_in_place().await {
            Ok(Some(item)) => wire::item_message(&item),
            Ok(None) => return out.send_data(&Data::End).await,
            Err(e) => {
                out.send_data(&Data::Error(e.to_string())).await?;
                return Err(e.to_string());
            }
        };
        // Room for it: within the window, or alone in flight.
        let len = message.len() as u64 - 1;
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
        out.put(message).await?;
        sent += len;
    }
}

/// Far bridge → local sender: items written on, each written item granted
/// back on `ctl`; the stream's end or error passed on. Toward a caller
/// (`until_result`), goes on to the call's result, which follows the
/// stream on the same key, and returns it; otherwise returns at the
/// stream's end. `None` when the key ends first.
///
/// The far bridge is not trusted: an item it sends beyond the room granted
/// to it, or larger than the local port takes, fails the local stream
/// (with that reason) and this relay, before anything of it is written.
///
/// When `stop` completes first (the far node went away), the local stream
/// fails with the reason it gives, and so does this relay.
pub async fn pump_in(
    tx: Option<Sender>,
    data: &In,
    ctl: &Out,
    until_result: bool,
    stop: impl std::future::Future<Output = String>,
) -> Result<Option<Result<Vec<u8>, shmbus::frame::RemoteError>>, String> {
    let mut tx = match tx {
        Some(tx) => Some(AsyncSender::new(tx).map_err(|e| e.to_string())?),
        None => None,
    };
    let reason = {
        let relay = relay_in(&mut tx, data, ctl, until_result);
        tokio::select! {
            r = relay => return r,
            reason = stop => reason,
        }
    };
    if let Some(mut t) = tx.take() {
        let _ = t.fail(&reason).await;
    }
    Err(reason)
}

/// [`pump_in`]'s relay.
async fn relay_in(
    tx: &mut Option<AsyncSender>,
    data: &In,
    ctl: &Out,
    until_result: bool,
) -> Result<Option<Result<Vec<u8>, shmbus::frame::RemoteError>>, String> {
    let (mut received, mut granted) = (0u64, 0u64);
    while let Some(msg) = data.next_data().await {
        match msg? {
            Incoming::Item(bytes) => {
                let Some(t) = tx.as_mut() else {
                    return Err("the far bridge sent items on a stream with no receiver".into());
                };
                let len = bytes.len() - 1;
                if let Err(e) = admit(received, granted, len, t.get_mut().max_item()) {
                    let _ = t.fail(&e).await;
                    return Err(e);
                }
                let mut slot = t.reserve(len).await.map_err(|e| e.to_string())?;
                wire::copy_after_tag(bytes.slices(), &mut slot.buf()[..len]);
                slot.commit(len).map_err(|e| e.to_string())?;
                received += len as u64;
                // Published in batches while more items wait; at once when
                // none does (the local receiver must not wait for a batch
                // that is not coming).
                if data.is_idle() {
                    t.flush().await.map_err(|e| e.to_string())?;
                }
            }
            Incoming::Data(Data::End) => {
                if let Some(mut t) = tx.take() {
                    t.finish().await.map_err(|e| e.to_string())?;
                }
                if !until_result {
                    return Ok(None);
                }
            }
            Incoming::Data(Data::Error(m)) => {
                if let Some(mut t) = tx.take() {
                    let _ = t.fail(&m).await;
                }
                if !until_result {
                    return Ok(None);
                }
            }
            Incoming::Data(Data::Result(r)) => return Ok(Some(r)),
        }
        // Grant what is written on: the far side may send that much more.
        // Grants go once half the window is written, or when nothing more
        // waits (the far side may be waiting for them).
        if received > granted && (received - granted >= WINDOW_BYTES / 2 || data.is_idle()) {
            granted = received;
            ctl.send(&Ctl::Consumed(granted)).await?;
        }
    }
    Ok(None)
}

/// Whether an item of `len` bytes may come after `received` bytes, when
/// `granted` were granted back: within the window, or alone in flight (the
/// rule [`pump_out`] follows), and no larger than the local port's largest
/// item `max_item`. `Err` says why not.
fn admit(received: u64, granted: u64, len: usize, max_item: usize) -> Result<(), String> {
    if len > max_item {
        return Err(format!(
            "the far bridge sent an item of {len} bytes; this stream takes at most {max_item}"
        ));
    }
    if received + len as u64 > granted + WINDOW_BYTES && received != granted {
        return Err(format!(
            "the far bridge sent {} bytes beyond the {WINDOW_BYTES} it was granted",
            received + len as u64 - granted - WINDOW_BYTES
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::admit;
    use crate::wire::WINDOW_BYTES;

    #[test]
    fn items_beyond_the_window_or_the_port_are_refused() {
        let w = WINDOW_BYTES;
        assert!(admit(0, 0, 1 << 20, 1 << 20).is_ok());
        assert!(admit(w - 10, 0, 10, 1 << 20).is_ok());
        let e = admit(w - 10, 0, 11, 1 << 20).unwrap_err();
        assert!(e.contains("1 bytes beyond"), "{e}");
        // Alone in flight, an item may be as large as the port takes.
        assert!(admit(5 * w, 5 * w, 2 * w as usize, 2 * w as usize).is_ok());
        let e = admit(0, 0, (1 << 20) + 1, 1 << 20).unwrap_err();
        assert!(e.contains("at most 1048576"), "{e}");
    }
}
