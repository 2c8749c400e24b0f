//! Far bridge → local sender: items messages written on to the local port,
//! each message granted back once it is.

use shmbus_client::{AsyncSender, Sender};
use zenoh::bytes::ZBytes;

use super::{malformed, In, Incoming, Out};
use crate::wire::items::{self, Records};
use crate::wire::{Ctl, Data, WINDOW_BYTES};

/// Far bridge → local sender: items written on, each written message
/// granted back on `ctl`; the stream's end or error passed on. Toward a
/// caller (`until_result`), goes on to the call's result, which follows
/// the stream on the same key, and returns it; otherwise returns at the
/// stream's end. `None` when the key ends first.
///
/// The far bridge is not trusted: a message it sends beyond the room
/// granted to it, an item larger than the local port takes, or a record
/// that does not parse fails the local stream (with that reason) and this
/// relay, before anything of the offending item is committed.
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
        Some(mut tx) => {
            tx.set_wait_policy(super::NO_SPIN);
            Some(AsyncSender::new(tx).map_err(|e| e.to_string())?)
        }
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
    let mut window = Window::default();
    while let Some(msg) = data.next_data().await {
        match msg? {
            Incoming::Items(message) => {
                let Some(t) = tx.as_mut() else {
                    return Err("the far bridge sent items on a stream with no receiver".into());
                };
                if let Err(e) = write_items(t, &mut window, message).await {
                    let _ = t.fail(&e).await;
                    return Err(e);
                }
                // Published in batches while more messages wait; at once
                // when none does (the local receiver must not wait for a
                // batch that is not coming).
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
        window.grant(ctl, data.is_idle()).await?;
    }
    Ok(None)
}

/// The receiving side's window: the charge of the items messages written
/// on, and how much of it was granted back.
#[derive(Default)]
struct Window {
    received: u64,
    granted: u64,
}

impl Window {
    /// Whether an items message of `len` bytes may come now: within what
    /// was granted ([`items::within_window`], the rule the sender follows).
    fn admit(&self, len: usize) -> Result<(), String> {
        let charge = items::charge(len);
        if items::within_window(self.received, self.granted, charge) {
            return Ok(());
        }
        Err(format!(
            "the far bridge sent {} bytes beyond the {WINDOW_BYTES} it was granted",
            self.received + charge - self.granted - WINDOW_BYTES
        ))
    }

    /// Grants what is written on: the far side may send that much more.
    /// Grants go once half the window is written, or when nothing more
    /// waits (`idle`: the far side may be waiting for them).
    async fn grant(&mut self, ctl: &Out, idle: bool) -> Result<(), String> {
        let due = self.received - self.granted;
        if due > 0 && (due >= WINDOW_BYTES / 2 || idle) {
            self.granted = self.received;
            ctl.send(&Ctl::Consumed(self.granted)).await?;
        }
        Ok(())
    }
}

/// Writes an items message's items on to the local sender, each copied
/// straight from the pieces Zenoh received it in; counts the message as
/// received once all are written. The message must fit `window`.
async fn write_items(
    tx: &mut AsyncSender,
    window: &mut Window,
    message: ZBytes,
) -> Result<(), String> {
    window.admit(message.len())?;
    let max_item = tx.get_mut().max_item();
    let mut records = Records::new(message.slices());
    while let Some(len) = records.next_len() {
        let len = fits(len.map_err(malformed)?, max_item)?;
        let mut slot = tx.reserve(len).await.map_err(|e| e.to_string())?;
        records
            .read_item(&mut slot.buf()[..len])
            .map_err(malformed)?;
        slot.commit(len).map_err(|e| e.to_string())?;
    }
    window.received += items::charge(message.len());
    Ok(())
}

/// An item's length, if the local port takes items that large.
fn fits(len: u64, max_item: usize) -> Result<usize, String> {
    usize::try_from(len)
        .ok()
        .filter(|&n| n <= max_item)
        .ok_or_else(|| {
            format!(
                "the far bridge sent an item of {len} bytes; this stream takes at most {max_item}"
            )
        })
}

#[cfg(test)]
mod tests {
    use super::{fits, Window};
    use crate::wire::items::{charge, MIN_CHARGE};
    use crate::wire::WINDOW_BYTES;

    #[test]
    fn messages_beyond_the_window_or_items_beyond_the_port_are_refused() {
        let mut w = Window::default();
        assert!(w.admit(1 << 20).is_ok(), "alone in flight");
        w.received = WINDOW_BYTES - MIN_CHARGE;
        assert!(w.admit(10).is_ok());
        let e = w.admit(MIN_CHARGE as usize + 1).unwrap_err();
        assert!(e.contains("1 bytes beyond"), "{e}");
        w.granted = w.received;
        assert!(w.admit(2 * WINDOW_BYTES as usize).is_ok());
        assert_eq!(charge(1), MIN_CHARGE);
        assert_eq!(fits(1 << 20, 1 << 20), Ok(1 << 20));
        let e = fits((1 << 20) + 1, 1 << 20).unwrap_err();
        assert!(e.contains("at most 1048576"), "{e}");
    }
}
