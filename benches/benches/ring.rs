//! Micro benchmarks of the shared-memory ring (`shmbus::ring`): one item
//! reserved, committed, published, read and released, with both ends in one
//! process over a real sealed memfd.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_main, BenchmarkId, Criterion, Throughput};
use shmbus::credit::CreditSpec;
use shmbus::ring::{RingConsumer, RingProducer};

const CAPACITY: u32 = 1 << 20;

fn ring_round_trip(c: &mut Criterion) {
    let mut g = c.benchmark_group("ring");
    g.sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for size in [64usize, 4096, 65536] {
        let credit = CreditSpec::bytes(CAPACITY as u64 / 2);
        let fd = shmbus::ring::create_memfd("ring-bench", CAPACITY, credit.high_water_mark)
            .expect("memfd");
        let mut tx =
            RingProducer::open(fd.try_clone().expect("dup"), CAPACITY, credit).expect("producer");
        let mut rx = RingConsumer::open(fd, CAPACITY, credit).expect("consumer");
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(BenchmarkId::new("reserve_commit_read_release", size), |b| {
            b.iter(|| {
                let slot = tx
                    .try_reserve(size, size as u64)
                    .expect("valid")
                    .expect("room and credit");
                tx.slot_buf(&slot)[0] = 1;
                tx.commit(&slot, size, size as u64);
                black_box(tx.publish());
                let rec = rx.try_next().expect("valid").expect("a record");
                black_box(rx.data(&rec)[0]);
                black_box(rx.release(&rec).expect("in order"));
            })
        });
    }
    g.finish();
}

/// The group `criterion_main!` runs (its generated function lives here).
mod group {
    criterion::criterion_group!(benches, super::ring_round_trip);
}

criterion_main!(group::benches);
