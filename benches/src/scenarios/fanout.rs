//! Fan-out: many concurrent streams through one broker, from one caller
//! process (a thread per stream) to the service process (a thread per call);
//! aggregate throughput, the broker's CPU time and resident memory.

use serde_json::{Map, Value};
use shmbus::credit::CreditSpec;

use super::spec::{baselines, job, median_u64, put, values, Context, Group, Spec, Variant};
use super::throughput::{bytes_per_sec, items_per_sec};
use crate::baselines::uds::link_buffer;
use crate::cli::{human_size, Options};
use crate::job::{Outcome, Scenario, Transport};
use crate::stats::{median, range};

/// Bytes per write on every stream.
pub const WRITE: usize = 64 << 10;

/// The fan-out scenario.
pub struct Fanout;

impl Spec for Fanout {
    fn scenario(&self) -> Scenario {
        Scenario::Fanout
    }

    fn groups(&self, o: &Options, ctx: &Context) -> Vec<Group> {
        o.streams
            .iter()
            .map(|&n| {
                let make = |t: Transport| {
                    let mut j = job(ctx, o, Scenario::Fanout, t);
                    j.size = WRITE;
                    j.streams = n;
                    j.ring = o.fanout_ring;
                    j.sock_buf = link_buffer(o.fanout_ring);
                    j.credit = CreditSpec::bytes(o.fanout_ring as u64 / 2);
                    j
                };
                let mut variants: Vec<Variant> = [Transport::Shm, Transport::Socket]
                    .into_iter()
                    .filter(|&t| o.has(t))
                    .map(|t| Variant {
                        transport: t,
                        job: make(t),
                    })
                    .collect();
                variants.extend(baselines(o, make));
                Group {
                    title: format!("{n}"),
                    variants,
                }
            })
            .collect()
    }

    fn notes(&self, o: &Options) -> Vec<String> {
        vec![
            format!(
                "N streams at once, {} writes, {} ring and bytes credit {} per stream; one consumer process (a thread per stream), one producer process",
                human_size(WRITE),
                human_size(o.fanout_ring as usize),
                human_size(o.fanout_ring as usize / 2)
            ),
            "GB/s = all streams' bytes / time from the common start to the last stream's end".into(),
            "broker CPU: utime+stime from /proc/<broker>/stat over the run, 10 ms ticks (calls set up and torn down); RSS: VmRSS with every stream open".into(),
            "baselines: N socket pairs / pipes / bare rings, a thread per stream on each side (bare ring peers yield once they spun 65536 times)".into(),
        ]
    }

    fn columns(&self) -> Vec<(&'static str, usize)> {
        vec![
            ("GB/s median [min, max]", 24),
            ("broker CPU ms", 13),
            ("broker RSS MiB", 14),
        ]
    }

    fn cells(&self, runs: &[&Outcome]) -> Vec<String> {
        vec![
            range(&values(runs, bytes_per_sec), 1e-9, 2),
            median(
                &values(runs, |o| o.broker_cpu_ns.map(|c| c as f64)),
                1e-6,
                0,
            ),
            median(
                &values(runs, |o| o.broker_rss_kib.map(|k| k as f64)),
                1.0 / 1024.0,
                1,
            ),
        ]
    }

    fn headline(&self, o: &Outcome) -> Option<f64> {
        bytes_per_sec(o)
    }

    fn fields(&self, v: &Variant, runs: &[&Outcome]) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("streams".into(), v.job.streams.into());
        put(&mut m, "bytes_per_sec", median_u64(runs, bytes_per_sec));
        put(&mut m, "items_per_sec", median_u64(runs, items_per_sec));
        put(
            &mut m,
            "broker_cpu_ns",
            median_u64(runs, |o| o.broker_cpu_ns.map(|c| c as f64)),
        );
        put(
            &mut m,
            "broker_rss_kib",
            median_u64(runs, |o| o.broker_rss_kib.map(|c| c as f64)),
        );
        m
    }
}
