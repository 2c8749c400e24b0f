//! Test payloads: checksums, pseudo-random bytes and files, and the
//! pattern blobs are filled with, all deterministic so that both peers of
//! a test can produce and check them.

use std::path::Path;

/// FNV-1a over bytes: the checksum peers report to each other.
pub fn fnv1a(mut h: u64, data: &[u8]) -> u64 {
    if h == 0 {
        h = 0xcbf2_9ce4_8422_2325;
    }
    for &b in data {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Fills a blob's bytes with a pattern of `seed`: each 8-byte word holds
/// its index mixed with the seed (a tail shorter than a word, its low bytes).
pub fn fill_blob(seed: u64, buf: &mut [u8]) {
    let mut words = buf.chunks_exact_mut(8);
    for (i, w) in (&mut words).enumerate() {
        w.copy_from_slice(&blob_word(seed, i).to_le_bytes());
    }
    let i = buf.len() / 8;
    let tail = buf.len() % 8;
    let last = blob_word(seed, i).to_le_bytes();
    buf[i * 8..].copy_from_slice(&last[..tail]);
}

/// True when `buf` holds exactly what [`fill_blob`] writes for `seed`.
pub fn blob_holds(seed: u64, buf: &[u8]) -> bool {
    let words = buf.chunks_exact(8);
    let tail = words.remainder();
    let n = buf.len() / 8;
    words
        .enumerate()
        .all(|(i, w)| w == blob_word(seed, i).to_le_bytes())
        && tail == &blob_word(seed, n).to_le_bytes()[..tail.len()]
}

fn blob_word(seed: u64, i: usize) -> u64 {
    (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ seed.rotate_left(32)
}

/// Deterministic pseudo-random bytes for test payloads, from `seed`.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Writes `len` pseudo-random bytes to `path`.
pub fn write_random_file(path: &Path, len: usize) {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut block = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for chunk in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(block.len());
        f.write_all(&block[..n]).expect("write");
        left -= n;
    }
    f.flush().expect("flush");
}
