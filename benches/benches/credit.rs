//! Micro benchmarks of credit accounting (`shmbus::credit`): one item
//! charged by the sender, received and consumed by the receiver, and the
//! re-granted limit applied back, for item and byte credit.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_main, Criterion};
use shmbus::credit::{CreditSpec, RecvCredit, SendCredit};

fn one_item(c: &mut Criterion) {
    let mut g = c.benchmark_group("credit");
    g.sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for (name, spec, len, charge) in [
        ("items", CreditSpec::items(64), 64usize, 1u64),
        ("bytes", CreditSpec::bytes(1 << 20), 4096, 4096),
    ] {
        let mut tx = SendCredit::new(spec);
        let mut rx = RecvCredit::new(spec);
        g.bench_function(name, |b| {
            b.iter(|| {
                assert!(tx.check(black_box(charge)).expect("fits the mark"));
                tx.charge(charge);
                rx.on_receive(len, charge).expect("within credit");
                if let Some(limit) = rx.on_consume(charge).expect("received") {
                    tx.update_limit(limit).expect("valid limit");
                }
                black_box(tx.available())
            })
        });
    }
    g.finish();
}

/// The group `criterion_main!` runs (its generated function lives here).
mod group {
    criterion::criterion_group!(benches, super::one_item);
}

criterion_main!(group::benches);
