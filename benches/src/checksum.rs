//! The byte pattern every producer writes and the checksum every consumer
//! folds every received byte into (and how streams' checksums combine).
//!
//! Both are defined on stream *positions*, not on write or read boundaries:
//! a producer may generate a write in several pieces and a consumer may see
//! it split or merged differently (a pipe, a ring that wraps) and the two
//! sides still agree.

/// The pattern's 8-byte word number `i` (little endian on the wire).
#[inline]
fn word(i: u64) -> u64 {
    i.wrapping_add(1).wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// The pattern's byte at stream position `pos`.
#[inline]
fn byte_at(pos: u64) -> u8 {
    word(pos / 8).to_le_bytes()[(pos % 8) as usize]
}

/// Fills `buf` with the pattern for stream positions `pos..pos + buf.len()`.
pub fn fill(buf: &mut [u8], pos: u64) {
    let head = (((8 - pos % 8) % 8) as usize).min(buf.len());
    let (first, rest) = buf.split_at_mut(head);
    for (i, b) in first.iter_mut().enumerate() {
        *b = byte_at(pos + i as u64);
    }
    let base = (pos + head as u64) / 8;
    let mut words = rest.chunks_exact_mut(8);
    let mut n = 0u64;
    for w in &mut words {
        w.copy_from_slice(&word(base + n).to_le_bytes());
        n += 1;
    }
    let tail_pos = (base + n) * 8;
    for (i, b) in words.into_remainder().iter_mut().enumerate() {
        *b = byte_at(tail_pos + i as u64);
    }
}

/// An order-sensitive checksum (two running sums in four lanes of 64-bit
/// words) that reads every byte and does not depend on how the stream was cut.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Checksum {
    a: [u64; 4],
    b: [u64; 4],
    partial: [u8; 32],
    held: usize,
    len: u64,
}

impl Checksum {
    #[inline]
    fn block(&mut self, block: &[u8]) {
        for lane in 0..4 {
            let w = u64::from_le_bytes(block[lane * 8..lane * 8 + 8].try_into().expect("8 bytes"));
            self.a[lane] = self.a[lane].wrapping_add(w);
            self.b[lane] = self.b[lane].wrapping_add(self.a[lane]);
        }
    }

    /// Folds the next bytes of the stream in.
    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if self.held > 0 {
            let take = (32 - self.held).min(data.len());
            self.partial[self.held..self.held + take].copy_from_slice(&data[..take]);
            self.held += take;
            data = &data[take..];
            if self.held < 32 {
                return;
            }
            let block = self.partial;
            self.block(&block);
            self.held = 0;
        }
        let mut blocks = data.chunks_exact(32);
        for block in &mut blocks {
            self.block(block);
        }
        let rest = blocks.remainder();
        self.partial[..rest.len()].copy_from_slice(rest);
        self.held = rest.len();
    }

    /// Bytes folded in so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// The checksum of everything folded in so far.
    pub fn value(&self) -> u64 {
        let mut h = self.len;
        for &byte in &self.partial[..self.held] {
            h = h.wrapping_mul(31).wrapping_add(u64::from(byte));
        }
        for lane in 0..4 {
            h = h.rotate_left(17) ^ self.a[lane].wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ self.b[lane];
        }
        h
    }
}

/// Folds per-stream checksums into one, keeping which stream had which.
pub fn combine(sums: impl IntoIterator<Item = u64>) -> u64 {
    sums.into_iter().enumerate().fold(0u64, |acc, (k, c)| {
        acc.wrapping_add(c.rotate_left((k % 63) as u32 + 1))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_and_checksum_do_not_depend_on_boundaries() {
        let mut whole = vec![0u8; 1000];
        fill(&mut whole, 3);
        let mut pieces = vec![0u8; 1000];
        let mut at = 0;
        for len in [1usize, 7, 8, 33, 64, 100, 787] {
            fill(&mut pieces[at..at + len], 3 + at as u64);
            at += len;
        }
        assert_eq!(whole, pieces);
        let mut one = Checksum::default();
        one.update(&whole);
        let mut many = Checksum::default();
        for c in whole.chunks(13) {
            many.update(c);
        }
        assert_eq!(one.value(), many.value());
        whole[500] ^= 1;
        let mut changed = Checksum::default();
        changed.update(&whole);
        assert_ne!(one.value(), changed.value());
    }
}
