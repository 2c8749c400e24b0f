//! Bridge: calls from one broker to a service on another, through two
//! `shmbus-bridge` processes linked by Zenoh over TCP on 127.0.0.1: one
//! stream's throughput against a plain TCP loopback stream of the same
//! bytes, round trips against the same ping-pong over TCP, and call setup
//! against a call on one broker.
//!
//! The rows run the throughput, latency and setup scenarios' own jobs
//! (`job.scenario` says which), so the peers are the same processes.

use serde_json::{Map, Value};
use shmbus::credit::CreditSpec;

use super::latency;
use super::spec::{job, median_u64, percentile as p, put, values, Context, Group, Spec, Variant};
use super::throughput::{bytes_per_sec, ring_for};
use crate::cli::{human_size, Options};
use crate::job::{Job, Outcome, Scenario, Transport, Wait};
use crate::stats::{median, range};

/// The node the far broker's bridge goes by: its services are called as
/// `b/SERVICE` on the near broker.
pub const FAR_NODE: &str = "b";

/// Write sizes of the stream rows.
pub const STREAM_SIZES: [usize; 2] = [64 << 10, 1 << 20];

/// Socket buffers of the TCP baseline's second configuration (the first
/// leaves the kernel's autotuning alone).
pub const TCP_BUFFER: usize = 4 << 20;

/// The bridge scenario.
pub struct Bridge;

/// The name a service on the far broker is called by on the near one.
pub fn far_name(service: &str) -> String {
    format!("{FAR_NODE}/{service}")
}

fn variant(transport: Transport, job: Job) -> Variant {
    Variant { transport, job }
}

/// The stream rows of one write size: bridged, on one broker, and the TCP
/// baseline with autotuned and with 4 MiB buffers.
fn streams(o: &Options, ctx: &Context, size: usize) -> Group {
    let ring = ring_for(size);
    let make = |t: Transport| {
        let mut j = job(ctx, o, Scenario::Throughput, t);
        j.size = size;
        j.ring = ring;
        j.credit = CreditSpec::bytes(ring as u64 / 2);
        if t == Transport::Bridge {
            j.service = far_name(&ctx.service);
        }
        j
    };
    let mut variants = Vec::new();
    for t in [Transport::Bridge, Transport::Shm] {
        if o.has(t) {
            variants.push(variant(t, make(t)));
        }
    }
    if o.has(Transport::Tcp) {
        for buf in [0, TCP_BUFFER] {
            variants.push(variant(
                Transport::Tcp,
                Job {
                    sock_buf: buf,
                    ..make(Transport::Tcp)
                },
            ));
        }
    }
    Group {
        title: human_size(size),
        variants,
    }
}

/// The round-trip rows of one message size.
fn round_trips(o: &Options, ctx: &Context, size: usize) -> Group {
    let ring = latency::ring_for(size);
    let make = |t: Transport| {
        let mut j = job(ctx, o, Scenario::Latency, t);
        j.size = size;
        j.ring = ring;
        j.wait = Wait::Blocking;
        j.credit = CreditSpec::bytes(ring as u64 / 2);
        j.sock_buf = 0;
        if t == Transport::Bridge {
            j.service = far_name(&ctx.service);
        }
        j
    };
    let variants = [Transport::Bridge, Transport::Shm, Transport::Tcp]
        .into_iter()
        .filter(|&t| o.has(t))
        .map(|t| variant(t, make(t)))
        .collect();
    Group {
        title: format!("rt {}", human_size(size)),
        variants,
    }
}

/// The call setup rows.
fn setup(o: &Options, ctx: &Context) -> Group {
    let variants = [Transport::Bridge, Transport::Shm]
        .into_iter()
        .filter(|&t| o.has(t))
        .map(|t| {
            let mut j = job(ctx, o, Scenario::Setup, t);
            j.gap_ns = o.setup_gap_ns;
            if t == Transport::Bridge {
                j.service = far_name(&ctx.service);
            }
            variant(t, j)
        })
        .collect();
    Group {
        title: "setup".into(),
        variants,
    }
}

impl Spec for Bridge {
    fn scenario(&self) -> Scenario {
        Scenario::Bridge
    }

    fn groups(&self, o: &Options, ctx: &Context) -> Vec<Group> {
        let mut groups: Vec<Group> = STREAM_SIZES
            .into_iter()
            .map(|size| streams(o, ctx, size))
            .collect();
        groups.extend(o.latency_sizes.iter().map(|&s| round_trips(o, ctx, s)));
        groups.push(setup(o, ctx));
        groups.retain(|g| g.variants.iter().any(|v| v.transport == Transport::Bridge));
        groups
    }

    fn notes(&self, _o: &Options) -> Vec<String> {
        vec![
            format!("two brokers: the run's (A) and one of its own (B) with the bench service; bridge {FAR_NODE} on B exports it (--listen tcp/127.0.0.1:PORT), bridge a on A connects (Zenoh peers, TCP on loopback, scouting off); callers on A call {FAR_NODE}/SERVICE"),
            "bridge, shm: the throughput, latency and setup scenarios' own jobs, bridged (caller on A, service on B) and on one broker (caller and service on A)".into(),
            "size rows: one stream, the far producer's reserve + fill + commit per write through both bridges, consumer recv_in_place and checksum; shmbus ring as in throughput, bytes credit half of it; GB/s = 10^9 bytes/s".into(),
            format!("tcp: one TCP connection on 127.0.0.1 between two processes, write(2) of the size each, reads up to max(size, 64 KiB), every byte checksummed, TCP_NODELAY; auto = the kernel's buffer autotuning, {}M = SO_SNDBUF/SO_RCVBUF of {} asked; ×tcp against the best of each round", TCP_BUFFER >> 20, human_size(TCP_BUFFER)),
            "rt rows: round trips through the echo service (reserve + fill + commit + flush, echoed back), blocking waits, against the same ping-pong over one TCP connection; p50 and p99 in µs; ratios compare p50 (below 1: faster)".into(),
            "setup: a new call until its first (1-byte) item arrives, on an open broker connection".into(),
        ]
    }

    fn columns(&self) -> Vec<(&'static str, usize)> {
        vec![("GB/s or p50 µs, median [min, max]", 34), ("p99 µs", 9)]
    }

    fn cells(&self, runs: &[&Outcome]) -> Vec<String> {
        if runs.iter().any(|o| o.latency_ns.is_some()) {
            vec![
                range(&values(runs, |o| p(o, 0)), 1e-3, 1),
                median(&values(runs, |o| p(o, 1)), 1e-3, 1),
            ]
        } else {
            vec![range(&values(runs, bytes_per_sec), 1e-9, 2), String::new()]
        }
    }

    fn headline(&self, o: &Outcome) -> Option<f64> {
        match o.latency_ns {
            Some(_) => p(o, 0),
            None => bytes_per_sec(o),
        }
    }

    fn fields(&self, v: &Variant, runs: &[&Outcome]) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("measures".into(), v.job.scenario.name().into());
        match v.job.scenario {
            Scenario::Throughput => {
                put(&mut m, "bytes_per_sec", median_u64(runs, bytes_per_sec));
            }
            _ => {
                put(&mut m, "p50_ns", median_u64(runs, |o| p(o, 0)));
                put(&mut m, "p99_ns", median_u64(runs, |o| p(o, 1)));
            }
        }
        m
    }
}
