//! Items on a `data` key, without I/O: packed into messages, and the credit
//! rule both bridges follow.
//!
//! A sending bridge packs the items its local port has ready, back to back,
//! into one message of up to [`PACK_BYTES`]; an item larger than that goes
//! alone. Zenoh cuts a message into batches of 64 KiB and hands the
//! receiving bridge the batches' pieces, which it copies into its local
//! port item by item, never joining them. So many small items cost one
//! message, and every batch on the link but a message's last is full.
//!
//! An items message is the tag [`ITEMS`](super::ITEMS) and then records,
//! each an item's length (LEB128, at most 10 bytes) and its bytes.

use super::WINDOW_BYTES;

/// Items ready together are packed into one message up to this size.
pub const PACK_BYTES: usize = 1 << 20;

/// Every message counts as at least this many bytes against the window, so
/// that at most `WINDOW_BYTES / MIN_CHARGE` (128) messages are ever in
/// flight on a `data` key, and a subscriber's queue (256 messages) cannot
/// fill however small the messages are.
pub const MIN_CHARGE: u64 = WINDOW_BYTES / 128;

/// What an items message of `len` bytes counts against the window.
pub fn charge(len: usize) -> u64 {
    (len as u64).max(MIN_CHARGE)
}

/// Whether a message charged `charge` may go (or, on the receiving side,
/// be accepted) after `sent` bytes of charge, when `consumed` of them were
/// granted back: within the window, or alone in flight.
pub fn within_window(sent: u64, consumed: u64, charge: u64) -> bool {
    sent + charge <= consumed + WINDOW_BYTES || sent == consumed
}

/// The longest LEB128 length.
const MAX_LEN_BYTES: usize = 10;

/// Builds one items message at a time.
#[derive(Debug)]
pub struct Packer {
    buf: Vec<u8>,
}

impl Default for Packer {
    fn default() -> Self {
        Packer::new()
    }
}

impl Packer {
    /// An empty message.
    pub fn new() -> Packer {
        Packer {
            buf: vec![super::ITEMS],
        }
    }

    /// True when no item is packed yet.
    pub fn is_empty(&self) -> bool {
        self.buf.len() == 1
    }

    /// The message's length so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Packs `item`, if it fits: into an empty message always, else within
    /// [`PACK_BYTES`]. False when it does not fit: send this message and
    /// pack it into a new one.
    pub fn pack(&mut self, item: &[u8]) -> bool {
        if !self.is_empty() && self.buf.len() + MAX_LEN_BYTES + item.len() > PACK_BYTES {
            return false;
        }
        if self.is_empty() {
            // Room for the whole message at once: it is never moved.
            self.buf
                .reserve_exact((PACK_BYTES - 1).max(MAX_LEN_BYTES + item.len()));
        }
        let mut v = item.len() as u64;
        while v >= 0x80 {
            self.buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
        self.buf.extend_from_slice(item);
        true
    }

    /// The message packed so far, leaving this packer empty.
    pub fn take(&mut self) -> Vec<u8> {
        std::mem::take(self).buf
    }
}

/// Reads an items message's records from the pieces it arrived in, without
/// joining them: a record's length and bytes may straddle pieces.
pub struct Records<'a, I> {
    pieces: I,
    piece: &'a [u8],
}

impl<'a, I: Iterator<Item = &'a [u8]>> Records<'a, I> {
    /// The records of a message given as its pieces, tag included.
    pub fn new(pieces: I) -> Self {
        let mut r = Records { pieces, piece: &[] };
        let _tag = r.byte();
        r
    }

    fn byte(&mut self) -> Option<u8> {
        while self.piece.is_empty() {
            self.piece = self.pieces.next()?;
        }
        let b = self.piece[0];
        self.piece = &self.piece[1..];
        Some(b)
    }

    /// The next item's length; `None` at the message's end. A length that
    /// does not parse is an error.
    pub fn next_len(&mut self) -> Option<Result<u64, String>> {
        let mut v = 0u64;
        for i in 0..MAX_LEN_BYTES {
            let b = match self.byte() {
                Some(b) => b,
                None if i == 0 => return None,
                None => break,
            };
            if i == MAX_LEN_BYTES - 1 && b > 1 {
                break;
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Some(Ok(v));
            }
        }
        Some(Err("an item length that does not parse".into()))
    }

    /// Copies the item whose length [`next_len`](Self::next_len) gave into
    /// `out`, which is that long. An error when the message ends first.
    pub fn read_item(&mut self, mut out: &mut [u8]) -> Result<(), String> {
        while !out.is_empty() {
            while self.piece.is_empty() {
                self.piece = self
                    .pieces
                    .next()
                    .ok_or("an item that runs past the end of its message")?;
            }
            let n = self.piece.len().min(out.len());
            out[..n].copy_from_slice(&self.piece[..n]);
            (self.piece, out) = (&self.piece[n..], &mut out[n..]);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Packs `items` as a sending bridge does, a message at a time.
    fn pack_all(items: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let (mut messages, mut p) = (Vec::new(), Packer::new());
        for item in items {
            if !p.pack(item) {
                messages.push(p.take());
                assert!(p.pack(item), "an empty message takes any item");
            }
        }
        if !p.is_empty() {
            messages.push(p.take());
        }
        messages
    }

    /// Reads a message's items as a receiving bridge does, from pieces.
    fn unpack(pieces: &[&[u8]]) -> Result<Vec<Vec<u8>>, String> {
        let mut records = Records::new(pieces.iter().copied());
        let mut items = Vec::new();
        while let Some(len) = records.next_len() {
            let mut item = vec![0; len? as usize];
            records.read_item(&mut item)?;
            items.push(item);
        }
        Ok(items)
    }

    #[test]
    fn items_of_every_size_survive_packing_and_any_cut() {
        let sizes = [0, 1, 127, 128, 300, 4096, 65_536, PACK_BYTES, 3, 2 << 20, 5];
        let items: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| (0..n).map(|j| (i * 31 + j) as u8).collect())
            .collect();
        let messages = pack_all(&items);
        // Small items share a message; one as large as a pack goes alone,
        // and so does one larger.
        assert_eq!(
            messages.len(),
            5,
            "{:?}",
            messages.iter().map(Vec::len).collect::<Vec<_>>()
        );
        assert!(messages.iter().all(|m| m[0] == crate::wire::ITEMS));
        let mut got = Vec::new();
        for m in &messages {
            assert_eq!(unpack(&[m]).unwrap(), unpack(&[&m[..1], &m[1..]]).unwrap());
            got.extend(unpack(&[m]).unwrap());
        }
        assert_eq!(got, items);
        // Cut anywhere into pieces, the first even empty or the tag alone,
        // a message reads the same.
        let m = &messages[0];
        for cut in [0, 1, 2, 3, 130, m.len() - 1, m.len()] {
            let cut2 = (cut + 7).min(m.len());
            let pieces = [&m[..cut], &m[cut..cut2], &[][..], &m[cut2..]];
            assert_eq!(unpack(&pieces).unwrap(), items[..7], "cut at {cut}");
        }
        let small = pack_all(&vec![vec![1u8; 64]; 1000]);
        assert_eq!(small.len(), 1);
    }

    #[test]
    fn records_that_lie_are_refused() {
        let e = unpack(&[&[0, 5, 1, 2]]).unwrap_err();
        assert!(e.contains("runs past"), "{e}");
        let e = unpack(&[&[0, 0x80]]).unwrap_err();
        assert!(e.contains("does not parse"), "{e}");
        let too_long = [
            0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
        ];
        let e = unpack(&[&too_long]).unwrap_err();
        assert!(e.contains("does not parse"), "{e}");
        let max = [
            0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ];
        assert_eq!(
            Records::new([&max[..]].into_iter()).next_len(),
            Some(Ok(u64::MAX))
        );
        assert_eq!(unpack(&[&[0]]).unwrap(), Vec::<Vec<u8>>::new());
    }

    #[test]
    fn the_window_bounds_bytes_and_messages() {
        let w = WINDOW_BYTES;
        assert!(within_window(0, 0, 4 * w));
        assert!(within_window(w - 10, 0, 10));
        assert!(!within_window(w - 10, 0, 11));
        // Tiny messages count as MIN_CHARGE: 128 of them fill the window.
        let sent = 128 * charge(10);
        assert!(!within_window(sent, 0, charge(10)));
        assert_eq!(charge(PACK_BYTES), PACK_BYTES as u64);
    }
}
