//! Local receiver → far bridge: items packed into messages, each sent once
//! the far bridge has room for it.

use shmbus_client::{AsyncReceiver, Receiver, TryRecv};
use tokio::sync::watch;

use super::Out;
use crate::wire::items::{self, Packer};
use crate::wire::Data;

/// Local receiver → far bridge: the items as they come, packed into
/// messages ([`items`]) that go once the far side has room for them, then
/// the stream's end or error. Returns how the stream ended (`Err` with the
/// local error when it failed). When `cancelled` turns true the local
/// stream is cancelled at once, even while this waits for room: its
/// producer may be waiting for credit that only a receive would give.
///
/// A message goes out when it is full or when no further item is ready:
/// items that come faster than the link share messages, and an item that
/// comes alone is not held back for company.
pub async fn pump_out(
    rx: Receiver,
    out: &Out,
    grants: watch::Receiver<u64>,
    cancelled: Option<watch::Receiver<bool>>,
) -> Result<(), String> {
    let mut rx = rx;
    rx.set_wait_policy(super::NO_SPIN);
    let mut rx = AsyncReceiver::new(rx).map_err(|e| e.to_string())?;
    let mut link = Link {
        out,
        grants,
        cancelled,
        sent: 0,
        packer: Packer::new(),
    };
    let ended = loop {
        let step = {
            let next = if link.packer.is_empty() {
                let item = rx.recv_in_place().await;
                item.map(|i| i.map_or(TryRecv::End, TryRecv::Item))
            } else {
                rx.get_mut().try_recv_in_place()
            };
            // An item's bytes are copied into the message as it is taken,
            // so that its room in the port goes back at once. With nothing
            // more ready, what is packed goes now.
            match next {
                Ok(TryRecv::Item(item)) => link.pack_item(&item).await,
                Ok(TryRecv::Empty) => link.send_packed().await,
                Ok(TryRecv::End) => break Ok(()),
                Err(e) => break Err(e.to_string()),
            }
        };
        if let Err(stop) = step {
            return stop.apply(&mut rx);
        }
    };
    if let Err(stop) = link.send_packed().await {
        return stop.apply(&mut rx);
    }
    match ended {
        Ok(()) => out.send_data(&Data::End).await,
        Err(e) => {
            out.send_data(&Data::Error(e.clone())).await?;
            Err(e)
        }
    }
}

/// Why [`pump_out`] stopped early.
enum Stop {
    /// The far caller cancelled.
    Cancelled,
    /// The link failed.
    Failed(String),
}

impl Stop {
    /// Ends the local stream as the stop requires, and says why.
    fn apply(self, rx: &mut AsyncReceiver) -> Result<(), String> {
        match self {
            Stop::Cancelled => {
                rx.get_mut().cancel();
                Err("cancelled by the far caller".into())
            }
            Stop::Failed(e) => Err(e),
        }
    }
}

/// The sending side of a `data` key: the message being packed and the
/// window it goes out under.
struct Link<'a> {
    out: &'a Out,
    /// Charge the far bridge has written on ([`Ctl::Consumed`](crate::wire::Ctl)).
    grants: watch::Receiver<u64>,
    cancelled: Option<watch::Receiver<bool>>,
    /// Charge sent so far.
    sent: u64,
    packer: Packer,
}

impl Link<'_> {
    /// Packs an item, first sending the message packed so far when the
    /// item does not fit in it.
    async fn pack_item(&mut self, item: &[u8]) -> Result<(), Stop> {
        if !self.packer.pack(item) {
            self.send_packed().await?;
            let packed = self.packer.pack(item);
            debug_assert!(packed, "an empty message takes any item");
        }
        Ok(())
    }

    /// Sends the message packed so far, if any, once it fits the window.
    async fn send_packed(&mut self) -> Result<(), Stop> {
        if self.packer.is_empty() {
            return Ok(());
        }
        let charge = items::charge(self.packer.len());
        loop {
            let consumed = *self.grants.borrow_and_update();
            if items::within_window(self.sent, consumed, charge) {
                break;
            }
            let cancelled = async {
                match self.cancelled.as_mut() {
                    Some(c) => {
                        let _ = c.wait_for(|c| *c).await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = self.grants.changed() => if r.is_err() {
                    return Err(Stop::Failed("the far bridge stopped granting credit".into()));
                },
                _ = cancelled => return Err(Stop::Cancelled),
            }
        }
        self.out
            .put(self.packer.take())
            .await
            .map_err(Stop::Failed)?;
        self.sent += charge;
        Ok(())
    }
}
