//! Micro benchmarks of control frames (`shmbus::frame`): encoding a call
//! and an acknowledgement, and splitting and decoding them again.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_main, Criterion};
use shmbus::credit::CreditSpec;
use shmbus::frame::{self, CallRequest, Frame, StreamMode, TransportPreference, DEFAULT_MAX_FRAME};

fn frames() -> Vec<(&'static str, Frame)> {
    vec![
        (
            "call",
            Frame::Call(CallRequest {
                call: 42,
                service: "numbers".into(),
                method: "count".into(),
                args: vec![7; 64],
                mode: Some(StreamMode::Download),
                credit: CreditSpec::items(64),
                transport: TransportPreference::Auto,
                ring_size: Some(1 << 20),
                time_left_us: Some(2_000_000),
            }),
        ),
        ("ack", Frame::Ack { request: 7 }),
    ]
}

fn encode_decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame");
    g.sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for (name, f) in frames() {
        let mut out = Vec::with_capacity(256);
        g.bench_function(format!("encode/{name}"), |b| {
            b.iter(|| {
                out.clear();
                frame::encode(black_box(&f), &mut out);
                black_box(out.len())
            })
        });
        let mut wire = Vec::new();
        frame::encode(&f, &mut wire);
        g.bench_function(format!("decode/{name}"), |b| {
            b.iter(|| {
                let (header, body) = frame::split_frame(black_box(&wire), DEFAULT_MAX_FRAME)
                    .expect("valid header")
                    .expect("complete frame");
                black_box(frame::decode(&wire[body], header.fds as usize).expect("valid frame"))
            })
        });
    }
    g.finish();
}

/// The group `criterion_main!` runs (its generated function lives here).
mod group {
    criterion::criterion_group!(benches, super::encode_decode);
}

criterion_main!(group::benches);
