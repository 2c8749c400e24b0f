//! Blobs on a stream: [`Sender::send_blob`] hands over a sealed memfd,
//! [`Receiver::recv_blob`] and [`Receiver::recv_any`] take one out whole.
//!
//! A blob is an item of the stream, in order with the others. Receiving it
//! any other way works too: `recv_bytes`, `recv`, `recv_in_place`, `Read`
//! and `BufRead` see its bytes (read from the sealed mapping, which no one
//! can change), so a receiver that knows nothing of blobs loses nothing.

use shmbus::blob::Blob;
use shmbus::credit::{blob_charge, max_charge, SizeStrategy};

use super::receiver::{InPlace, Receiver};
use super::sender::Sender;
use crate::error::{Error, Result};

/// What [`Receiver::recv_any`] found next.
pub enum Received<'a> {
    /// An item, in place (see [`Receiver::recv_in_place`]).
    Item(InPlace<'a>),
    /// A blob: sealed memory, now the receiver's.
    Blob(Blob),
}

impl Sender {
    /// Sends a sealed blob as the next item: the ring (or the socket
    /// batch) carries a small record, and the blob's memfd goes to the
    /// receiving process on the stream's own socket. No byte of the blob
    /// is copied. The blob stays usable here (send it again, keep reading
    /// it); the receiver holds the same memory.
    ///
    /// It costs credit as the stream's strategy says: one item under
    /// `items`, its size under `bytes` (so a blob larger than half the
    /// high-water mark can never go: [`Error::TooLarge`]), one under
    /// `custom` unless [`send_blob_charged`](Self::send_blob_charged) says
    /// otherwise. Waits for that credit; queued items go first.
    ///
    /// ```no_run
    /// # fn demo(tx: &mut shmbus_client::Sender) -> shmbus_client::Result<()> {
    /// use shmbus_client::BlobWriter;
    ///
    /// let mut frame = BlobWriter::new(8 << 20)?;
    /// frame.as_mut_slice().fill(0x80); // render into it in place
    /// let frame = frame.seal()?;
    /// tx.send_blob(&frame)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn send_blob(&mut self, blob: &Blob) -> Result<()> {
        let charge = blob_charge(self.credit.strategy, blob.len() as u64).unwrap_or(1);
        self.send_blob_with(blob, charge, true).map(|_| ())
    }

    /// Like [`send_blob`](Self::send_blob) but never waits: `Ok(false)`
    /// when credit, room or the socket is short, and nothing was sent.
    /// [`pollable_fd`](Self::pollable_fd) then turns ready (writable too
    /// when [`wants_write`](Self::wants_write) says so) once it is worth
    /// trying again.
    pub fn try_send_blob(&mut self, blob: &Blob) -> Result<bool> {
        let charge = blob_charge(self.credit.strategy, blob.len() as u64).unwrap_or(1);
        self.send_blob_with(blob, charge, false)
    }

    /// [`send_blob`](Self::send_blob) with a charge of the sender's choice
    /// on a `custom` credit stream (a blob-specific cost). Under `items`
    /// and `bytes` the strategy fixes the charge and `charge` is ignored.
    pub fn send_blob_charged(&mut self, blob: &Blob, charge: u64) -> Result<()> {
        let charge = blob_charge(self.credit.strategy, blob.len() as u64).unwrap_or(charge);
        self.send_blob_with(blob, charge, true).map(|_| ())
    }

    /// Sends the blob; without `block`, only if that needs no waiting.
    fn send_blob_with(&mut self, blob: &Blob, charge: u64, block: bool) -> Result<bool> {
        let hwm = self.credit.high_water_mark;
        if charge > max_charge(hwm) {
            let why = match self.credit.strategy {
                SizeStrategy::Bytes => format!(
                    "a blob of {} bytes costs {charge} credit under bytes credit, more than half the high-water mark of {hwm}: ask for items credit or a high-water mark of at least {}",
                    blob.len(),
                    charge.saturating_mul(2)
                ),
                _ => format!("a blob charged {charge} exceeds half the high-water mark of {hwm}"),
            };
            return Err(Error::TooLarge(why));
        }
        let r = self.port().and_then(|p| {
            if block {
                p.send_blob(blob, charge).map(|()| true)
            } else {
                p.try_send_blob(blob, charge)
            }
        });
        match r {
            Ok(sent) => {
                if sent {
                    self.sent(blob.len());
                }
                Ok(sent)
            }
            Err(e) => Err(self.failed(e)),
        }
    }
}

impl Receiver {
    /// The next item, which must be a blob: the sealed memory, now this
    /// receiver's, valid after the stream ends and after the sender exits.
    /// `None` at stream-end. Waits while nothing has arrived.
    ///
    /// When the next item is not a blob it stays next (nothing is lost)
    /// and this returns [`Error::NotABlob`]: take it with any other
    /// receive, or use [`recv_any`](Self::recv_any) on streams that mix.
    pub fn recv_blob(&mut self) -> Result<Option<Blob>> {
        if self.advance(true)? != Some(true) {
            return Ok(None);
        }
        self.held_blob().map(Some)
    }

    /// The held item as a blob (released, now the caller's), or
    /// [`Error::NotABlob`] with the item kept for the next receive.
    pub(crate) fn held_blob(&mut self) -> Result<Blob> {
        match self.blob.take() {
            Some(blob) => {
                self.release_held()?;
                Ok(blob)
            }
            None => {
                self.unclaimed = true;
                Err(Error::NotABlob {
                    len: self.held().len(),
                })
            }
        }
    }

    /// The next item, whichever kind it is: an item in place or a blob.
    /// `None` at stream-end. Waits while nothing has arrived.
    ///
    /// ```no_run
    /// # fn demo(rx: &mut shmbus_client::Receiver) -> shmbus_client::Result<()> {
    /// use shmbus_client::Received;
    ///
    /// while let Some(next) = rx.recv_any()? {
    ///     match next {
    ///         Received::Item(item) => println!("item of {} bytes", item.len()),
    ///         Received::Blob(blob) => println!("blob of {} bytes", blob.len()),
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn recv_any(&mut self) -> Result<Option<Received<'_>>> {
        if self.advance(true)? != Some(true) {
            return Ok(None);
        }
        self.held_any().map(Some)
    }

    /// The held item, whichever kind it is.
    pub(crate) fn held_any(&mut self) -> Result<Received<'_>> {
        match self.blob.take() {
            Some(blob) => {
                self.release_held()?;
                Ok(Received::Blob(blob))
            }
            None => Ok(Received::Item(InPlace { rx: self })),
        }
    }

    /// The largest blob this receiver accepts (default 4 GiB): a larger
    /// one fails the stream before anything is mapped. Credit bounds how
    /// many blobs can be in flight at once.
    pub fn set_blob_limit(&mut self, bytes: u64) {
        if let Some(p) = self.port.as_mut() {
            p.set_blob_limit(bytes);
        }
    }
}
