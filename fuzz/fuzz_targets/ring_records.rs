//! The ring reader facing a hostile peer that mostly follows the format:
//! the input is a program of operations that append well-framed (or subtly
//! broken) records, publish positions, poke header fields and run the real
//! consumer in between, so the fuzzer reaches record parsing, padding and
//! wrap-around, credit accounting, batched releases and the result slot —
//! deeper than raw bytes over the ring do. Errors are fine, panics and
//! out-of-bounds accesses are not.
#![no_main]

use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;

use libfuzzer_sys::fuzz_target;
use shmbus::credit::CreditSpec;
use shmbus::ring::{RingConsumer, RingProducer, HEADER_SIZE, RECORD_HEADER};

/// Header offsets a hostile peer may write at run time.
const FIELDS: [u64; 9] = [128, 136, 256, 264, 384, 512, 640, 1024, 1028];

struct Peer {
    file: std::fs::File,
    capacity: u64,
    pos: u64,
}

impl Peer {
    fn put(&self, off: u64, bytes: &[u8]) {
        let _ = self.file.write_all_at(bytes, off);
    }

    /// Appends a record at the peer's position, padding to the end first
    /// when it would not fit (as the real producer does).
    fn append(&mut self, len: usize, kind: u32, charge: u64, fill: u8) {
        let total = ((RECORD_HEADER + len + RECORD_HEADER - 1) & !(RECORD_HEADER - 1)) as u64;
        let off = self.pos % self.capacity;
        if off + total > self.capacity {
            let pad = self.capacity - off;
            self.header(off, (pad as usize - RECORD_HEADER) as u32, 5, 0);
            self.pos += pad;
        }
        let off = self.pos % self.capacity;
        if off + total > self.capacity {
            return;
        }
        self.header(off, len as u32, kind, charge);
        let data = vec![fill; len];
        self.put(HEADER_SIZE as u64 + off + RECORD_HEADER as u64, &data);
        self.pos += total;
    }

    fn header(&self, off: u64, len: u32, kind: u32, charge: u64) {
        let mut h = [0u8; RECORD_HEADER];
        h[0..4].copy_from_slice(&len.to_le_bytes());
        h[4..8].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&charge.to_le_bytes());
        self.put(HEADER_SIZE as u64 + off, &h);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&head, program)) = data.split_first() else {
        return;
    };
    let credit = match head % 3 {
        0 => CreditSpec::items(16),
        1 => CreditSpec::bytes(4096),
        _ => CreditSpec::custom(3000),
    };
    let capacity: u32 = if head & 4 == 0 { 4096 } else { 8192 };
    let fd = shmbus::ring::create_memfd("fuzz", capacity, credit.high_water_mark).unwrap();
    let mut peer = Peer {
        file: std::fs::File::from(fd.as_fd().try_clone_to_owned().unwrap()),
        capacity: capacity as u64,
        pos: 0,
    };
    let mut consumer =
        RingConsumer::open(fd.as_fd().try_clone_to_owned().unwrap(), capacity, credit).unwrap();
    let slot = consumer.result_slot();
    let mut held = Vec::new();
    let mut broken = false;
    for op in program.chunks_exact(4) {
        let (a, b, c) = (op[1], op[2], op[3]);
        let wide = u16::from_le_bytes([a, b]) as usize;
        match op[0] % 7 {
            0 => {
                let len = wide % 2100;
                let charge = match head % 3 {
                    0 => 1,
                    1 => len as u64,
                    _ => c as u64 * 16,
                };
                peer.append(len, 1, charge, c);
            }
            1 => peer.append(wide % 64, [2, 3, 4, 5, 9][c as usize % 5], (b & 1) as u64, a),
            2 => {
                // Publish, now and then a little off.
                let skew = if b & 1 == 1 { (a as u64) * 16 } else { 0 };
                peer.put(128, &(peer.pos + skew).to_le_bytes());
            }
            3 if !broken => {
                for _ in 0..(a % 8) + 1 {
                    match consumer.try_next() {
                        Ok(Some(rec)) => {
                            assert_eq!(consumer.data(&rec).len(), rec.len);
                            if b & 1 == 0 {
                                if consumer.release(&rec).is_err() {
                                    broken = true;
                                    break;
                                }
                            } else {
                                held.push(rec);
                            }
                        }
                        Ok(None) => break,
                        Err(_) => {
                            broken = true;
                            break;
                        }
                    }
                }
                if c & 1 == 1 {
                    let _ = consumer.flush_release();
                }
            }
            4 => {
                let off = FIELDS[a as usize % FIELDS.len()];
                let v = u64::from_le_bytes([b, c, a, b, c, 0, 0, b & 1]);
                peer.put(off, &v.to_le_bytes()[..if off >= 384 { 4 } else { 8 }]);
            }
            5 if !broken => {
                // Release what was held, in order (or twice, a misuse that
                // must be refused, not corrupt anything).
                for rec in held.drain(..) {
                    if consumer.release(&rec).is_err() {
                        broken = true;
                        break;
                    }
                }
                let _ = consumer.prepare_sleep();
                consumer.woke();
            }
            6 => {
                let _ = slot.take();
                let _ = consumer.cancel();
            }
            _ => {}
        }
    }
    // The producer side over whatever the peer left in the header.
    let mut producer = RingProducer::open(fd, capacity, credit).unwrap();
    for i in 0..32usize {
        let len = (i * 131) % 1500;
        let charge = if head % 3 == 1 { len as u64 } else { 1 };
        match producer.try_reserve(len, charge) {
            Ok(Ok(s)) => {
                producer.slot_buf(&s).fill(3);
                producer.commit(&s, len, charge);
                let _ = producer.publish();
            }
            Ok(Err(_)) => {
                let _ = producer.prepare_sleep();
                break;
            }
            Err(_) => break,
        }
    }
    let _ = producer.result_slot().post(b"ok");
    let _ = producer.cancelled_state();
});
