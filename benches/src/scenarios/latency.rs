//! Latency: round trips through an echo on a bidirectional stream, with the
//! blocking wait and the spin mode, against the same ping-pong on each
//! baseline.

use serde_json::{Map, Value};
use shmbus::credit::CreditSpec;

use super::spec::{
    baselines, job, median_u64, percentile as p, put, values, Context, Group, Spec, Variant,
};
use crate::baselines::uds::link_buffer;
use crate::cli::{human_size, Options};
use crate::job::{Outcome, Scenario, Transport, Wait};
use crate::stats::{median, range};

/// shmbus's ring for a message size: 1 MiB, or four messages' worth.
pub fn ring_for(size: usize) -> u32 {
    (size * 4).next_power_of_two().max(1 << 20) as u32
}

/// The latency scenario.
pub struct Latency;

impl Spec for Latency {
    fn scenario(&self) -> Scenario {
        Scenario::Latency
    }

    fn groups(&self, o: &Options, ctx: &Context) -> Vec<Group> {
        o.latency_sizes
            .iter()
            .map(|&size| {
                let ring = ring_for(size);
                let make = |t: Transport, wait: Wait| {
                    let mut j = job(ctx, o, Scenario::Latency, t);
                    j.size = size;
                    j.wait = wait;
                    j.ring = ring;
                    j.sock_buf = link_buffer(ring);
                    j.credit = CreditSpec::bytes(ring as u64 / 2);
                    Variant {
                        transport: t,
                        job: j,
                    }
                };
                let mut variants = Vec::new();
                if o.has(Transport::Shm) {
                    variants.push(make(Transport::Shm, Wait::Blocking));
                    variants.push(make(Transport::Shm, Wait::Spin));
                    if o.asynchronous {
                        let mut v = make(Transport::Shm, Wait::Blocking);
                        v.job.asynchronous = true;
                        variants.push(v);
                    }
                }
                if o.has(Transport::Socket) {
                    variants.push(make(Transport::Socket, Wait::Blocking));
                }
                variants.extend(baselines(o, |t| make(t, Wait::Blocking).job));
                // The async API's ceiling: the same socket pair, through tokio.
                if o.asynchronous && o.has(Transport::Uds) {
                    let mut v = make(Transport::Uds, Wait::Blocking);
                    v.job.asynchronous = true;
                    variants.push(v);
                }
                Group {
                    title: human_size(size),
                    variants,
                }
            })
            .collect()
    }

    fn notes(&self, _o: &Options) -> Vec<String> {
        vec![
            "round trip: caller writes a message (reserve + fill + commit + flush), the echo peer reads it in place, checksums it and sends it back".into(),
            "shm blocking = WaitPolicy::BLOCKING (spin 20 µs, then sleep), shm spin = WaitPolicy::SPIN (spin 1 ms) on both peers; socket waits in the kernel".into(),
            "shm async blocking (--api): the same round trips through the tokio API on both peers (current-thread runtimes), WaitPolicy::BLOCKING; ×sync against shm blocking".into(),
            "baselines: uds (one socket pair), pipe (two pipes), bare_ring (two rings of shmbus's size, both peers spinning, each message published at once); first 10% of each run discarded as warm-up".into(),
            "uds async (--api): the same socket pair through tokio::net::UnixStream on a current-thread runtime in each process (write_all, read_exact), ×uds_tokio".into(),
            "ratios compare p50 (below 1: shmbus is faster)".into(),
        ]
    }

    fn columns(&self) -> Vec<(&'static str, usize)> {
        vec![
            ("p50 µs median [min, max]", 26),
            ("p99 µs", 9),
            ("p99.9 µs", 9),
        ]
    }

    fn cells(&self, runs: &[&Outcome]) -> Vec<String> {
        vec![
            range(&values(runs, |o| p(o, 0)), 1e-3, 2),
            median(&values(runs, |o| p(o, 1)), 1e-3, 1),
            median(&values(runs, |o| p(o, 2)), 1e-3, 1),
        ]
    }

    fn headline(&self, o: &Outcome) -> Option<f64> {
        p(o, 0)
    }

    fn fields(&self, v: &Variant, runs: &[&Outcome]) -> Map<String, Value> {
        let mut m = Map::new();
        if v.transport == Transport::Shm {
            m.insert("wait".into(), v.job.wait.name().into());
        }
        put(&mut m, "p50_ns", median_u64(runs, |o| p(o, 0)));
        put(&mut m, "p99_ns", median_u64(runs, |o| p(o, 1)));
        put(&mut m, "p999_ns", median_u64(runs, |o| p(o, 2)));
        m
    }
}
