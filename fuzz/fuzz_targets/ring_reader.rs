//! The ring reader and writer facing arbitrary shared memory: the input is
//! written over a real sealed memfd ring (header, positions, credit, record
//! headers, data), then both sides read it. Every access must stay in
//! bounds; errors are fine, panics are not.
#![no_main]

use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;

use libfuzzer_sys::fuzz_target;
use shmbus::credit::CreditSpec;
use shmbus::ring::{RingConsumer, RingProducer, HEADER_SIZE};

const CAPACITY: u32 = 4096;

fuzz_target!(|data: &[u8]| {
    let strategy = data.first().copied().unwrap_or(0) % 3;
    let credit = match strategy {
        0 => CreditSpec::items(64),
        1 => CreditSpec::bytes(4096),
        _ => CreditSpec::custom(1000),
    };
    let fd = shmbus::ring::create_memfd("fuzz", CAPACITY, credit.high_water_mark).unwrap();
    let file = std::fs::File::from(fd.as_fd().try_clone_to_owned().unwrap());
    // Keep the static header (magic, version, capacity, hwm) so the ring
    // opens; everything the peer writes at run time comes from the input.
    let body = data.get(1..).unwrap_or(&[]);
    let (header, ring) = body.split_at(body.len().min(HEADER_SIZE - 128));
    let _ = file.write_all_at(header, 128);
    let _ = file.write_all_at(&ring[..ring.len().min(CAPACITY as usize)], HEADER_SIZE as u64);
    // Half the time, make the published write position plausible (aligned,
    // within a ring) so the fuzzer reaches record parsing and credit checks.
    if data.get(1).is_some_and(|b| b & 1 == 0) {
        let units = u64::from(data.get(2).copied().unwrap_or(0));
        let _ = file.write_all_at(&(units * 16).to_le_bytes(), 128);
        let _ = file.write_all_at(&0u64.to_le_bytes(), 256);
    }
    let mut consumer = RingConsumer::open(fd.as_fd().try_clone_to_owned().unwrap(), CAPACITY, credit).unwrap();
    for _ in 0..64 {
        match consumer.try_next() {
            Ok(Some(rec)) => {
                let d = consumer.data(&rec);
                assert!(d.len() == rec.len);
                if consumer.release(&rec).is_err() {
                    break;
                }
            }
            Ok(None) | Err(_) => break,
        }
    }
    let mut producer = RingProducer::open(fd, CAPACITY, credit).unwrap();
    for i in 0..64usize {
        let len = (i * 37) % 700;
        match producer.try_reserve(len, 1) {
            Ok(Ok(slot)) => {
                producer.slot_buf(&slot).fill(7);
                producer.commit(&slot, len, 1);
                let _ = producer.publish();
            }
            Ok(Err(_)) | Err(_) => break,
        }
    }
});
