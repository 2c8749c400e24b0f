//! Throughput: one stream, one direction, for the measurement's duration:
//! bytes written with `reserve`/`commit` at each write size, and typed items
//! with `items` credit, over the shm port and the socket fallback, against
//! the same writes over each baseline.

use serde_json::{Map, Value};
use shmbus::credit::CreditSpec;

use super::spec::{baselines, job, median_u64, put, values, Context, Group, Spec, Variant};
use crate::baselines::uds::link_buffer;
use crate::cli::{human_size, Options};
use crate::job::{Outcome, Scenario, Transport};
use crate::peers::{typed_payload, FEED_BELOW};
use crate::stats::{count, range};

/// The bare ring's data bytes.
pub const BARE_RING: u32 = 4 << 20;

/// shmbus's ring for a write size: 4 MiB, or eight writes' worth up to
/// 1 MiB writes, four beyond (a record carries at most half a ring, a charge
/// at most half the mark). With bytes credit of half the ring, a write up to
/// 1 MiB is then at most a quarter of the credit: the receiver's re-grant,
/// once less than half the mark is outstanding, overlaps the sender's next
/// writes instead of waiting for the last byte in flight. A 1 MiB write
/// then has 4 MiB in flight, as many as the bare ring holds.
pub fn ring_for(size: usize) -> u32 {
    let writes = if size <= 1 << 20 { 8 } else { 4 };
    (size * writes).next_power_of_two().max(4 << 20) as u32
}

/// Items credit for typed items of `size` bytes: half a ring of records.
pub fn items_credit(size: usize) -> u64 {
    ((ring_for(size) as usize / 2) / (size + shmbus::ring::RECORD_HEADER)).max(2) as u64
}

/// The throughput scenario.
pub struct Throughput;

impl Spec for Throughput {
    fn scenario(&self) -> Scenario {
        Scenario::Throughput
    }

    fn groups(&self, o: &Options, ctx: &Context) -> Vec<Group> {
        let mut sizes: Vec<usize> = o.sizes.iter().chain(&o.typed_sizes).copied().collect();
        sizes.sort_unstable();
        sizes.dedup();
        sizes
            .into_iter()
            .map(|size| {
                let ring = ring_for(size);
                let make = |t: Transport, typed: bool| {
                    let mut j = job(ctx, o, Scenario::Throughput, t);
                    j.size = size;
                    j.typed = typed;
                    j.ring = if t == Transport::BareRing {
                        BARE_RING
                    } else {
                        ring
                    };
                    j.sock_buf = link_buffer(ring);
                    j.credit = if typed {
                        CreditSpec::items(items_credit(size))
                    } else {
                        CreditSpec::bytes(ring as u64 / 2)
                    };
                    Variant {
                        transport: t,
                        job: j,
                    }
                };
                let mut variants = Vec::new();
                for typed in [false, true] {
                    let listed = if typed { &o.typed_sizes } else { &o.sizes };
                    for t in [Transport::Shm, Transport::Socket] {
                        if o.has(t) && listed.contains(&size) {
                            variants.push(make(t, typed));
                        }
                    }
                }
                variants.extend(baselines(o, |t| make(t, false).job));
                Group {
                    title: human_size(size),
                    variants,
                }
            })
            .collect()
    }

    fn notes(&self, o: &Options) -> Vec<String> {
        let mut n = vec![
            "one stream, producer and consumer in separate processes; GB/s = 10^9 bytes/s".into(),
            "bytes: Sender::reserve + fill in place + commit per write; consumer recv_in_place"
                .into(),
        ];
        let mut sizes: Vec<usize> = o.sizes.iter().chain(&o.typed_sizes).copied().collect();
        sizes.sort_unstable();
        sizes.dedup();
        let rings: Vec<String> = sizes
            .iter()
            .map(|&s| format!("{}→{}", human_size(s), human_size(ring_for(s) as usize)))
            .collect();
        n.push(format!(
            "shmbus ring per write size ({}); bytes credit = half the ring",
            rings.join(", ")
        ));
        if !o.typed_sizes.is_empty() {
            let credits: Vec<String> = o
                .typed_sizes
                .iter()
                .map(|&s| format!("{}: {} items", human_size(s), items_credit(s)))
                .collect();
            n.push(format!(
                "typed: serde_bytes payloads, postcard-encoded to the item size (size→payload: {}); feed below {} (flush at the end), send above; received with recv_borrowed (copied out of the port, decoded borrowing the copy); items credit ({})",
                o.typed_sizes.iter().map(|&s| format!("{}→{}", s, typed_payload(s))).collect::<Vec<_>>().join(", "),
                human_size(FEED_BELOW),
                credits.join(", ")
            ));
        }
        n.push(format!(
            "baselines: one write of the size each (uds, pipe: write(2) from a buffer; bare_ring: filled in place, {} ring); reads up to max(size, 64 KiB)",
            human_size(BARE_RING as usize)
        ));
        n
    }

    fn columns(&self) -> Vec<(&'static str, usize)> {
        vec![("GB/s median [min, max]", 24), ("items/s", 9)]
    }

    fn cells(&self, runs: &[&Outcome]) -> Vec<String> {
        vec![
            range(&values(runs, bytes_per_sec), 1e-9, 2),
            count(&values(runs, items_per_sec)),
        ]
    }

    fn headline(&self, o: &Outcome) -> Option<f64> {
        bytes_per_sec(o)
    }

    fn fields(&self, v: &Variant, runs: &[&Outcome]) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert(
            "kind".into(),
            (if v.job.typed { "typed" } else { "bytes" }).into(),
        );
        put(&mut m, "bytes_per_sec", median_u64(runs, bytes_per_sec));
        put(&mut m, "items_per_sec", median_u64(runs, items_per_sec));
        m
    }
}

/// Bytes per second of a run.
pub fn bytes_per_sec(o: &Outcome) -> Option<f64> {
    (o.secs > 0.0).then(|| o.bytes as f64 / o.secs)
}

/// Items (writes) per second of a run.
pub fn items_per_sec(o: &Outcome) -> Option<f64> {
    (o.secs > 0.0).then(|| o.items as f64 / o.secs)
}
