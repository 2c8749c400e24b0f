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

/// From this write size on, the bare ring also runs publishing and
/// releasing whole writes only: the ceiling for a transport whose unit is
/// the item, as shmbus's is (a consumer sees an item once it is committed
/// whole, and hands it back whole).
pub const WHOLE_WRITES_FROM: usize = 1 << 20;

/// The rings of the whole-write bare ring: two, four and eight writes.
pub fn whole_write_rings(size: usize) -> impl Iterator<Item = u32> {
    [2, 4, 8]
        .into_iter()
        .map(move |n| size * n)
        .filter(|&r| r <= 32 << 20)
        .map(|r| r as u32)
}

/// The Unix socket baseline's buffer request.
pub const UDS_BUFFER: usize = 4 << 20;

/// The bare ring's sizes: it runs once with each that holds at least one
/// write, and the best of them in each round is the `×bare_ring` ceiling.
pub const BARE_RING_SWEEP: [u32; 4] = [256 << 10, 1 << 20, 4 << 20, 16 << 20];

/// The bare ring sizes swept for a write size.
pub fn bare_rings(size: usize) -> impl Iterator<Item = u32> {
    BARE_RING_SWEEP
        .into_iter()
        .filter(move |&r| r as usize >= size)
}

/// shmbus's ring for a write size: eight writes' worth, at least 2 MiB (a
/// record carries at most half a ring, a charge at most half the mark),
/// and 8 MiB for writes under 4 KiB. With bytes credit of half the ring, a
/// write is then at most a quarter of the credit: the receiver's re-grant,
/// once less than half the mark is outstanding, overlaps the sender's next
/// writes instead of waiting for the last byte in flight. The sizes are the
/// best of a sweep on a 2-vCPU machine with 2 MiB of L2 per core: for
/// 64-byte writes the consumer is the slower side and the producer sleeps
/// each time it has used its credit, so a longer window means fewer
/// wake-ups (8 MiB: 43-44 M items/s, 2 MiB: 35-36, side by side); from 4 KiB
/// to 64 KiB a ring that stays in the two cores' caches wins (2 MiB: 13.7 GB/s
/// at 4 KiB, 8 MiB: 7.7; 512 KiB to 8 MiB tried); 8 MiB for 1 MiB writes
/// (4 to 64 MiB tried), 32 MiB for 4 MiB writes (16 to 64 MiB tried).
/// Large writes take turns in two slots of the ring whatever its size
/// (`shmbus::ring::HOT_RECORD`); a ring of eight gives credit for four, so
/// a re-grant (below half the mark) comes while two are still in flight.
pub fn ring_for(size: usize) -> u32 {
    if size < 4096 {
        return 8 << 20;
    }
    (size * 8).next_power_of_two().max(2 << 20) as u32
}

/// Whether a write of `size` bytes fits `ring` and its bytes credit (half
/// the ring, of which one item may be charged half; a record may take half
/// the ring).
pub fn fits(size: usize, ring: u32) -> bool {
    size <= ring as usize / 4
}

/// Items credit for typed items of `size` bytes in `ring`: half a ring of
/// records.
pub fn items_credit(size: usize, ring: u32) -> u64 {
    ((ring as usize / 2) / (size + shmbus::ring::RECORD_HEADER)).max(2) as u64
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
            .filter(|&size| o.throughput_ring.is_none_or(|r| fits(size, r)))
            .map(|size| {
                let ring = o.throughput_ring.unwrap_or_else(|| ring_for(size));
                let make = |t: Transport, typed: bool| {
                    let mut j = job(ctx, o, Scenario::Throughput, t);
                    j.size = size;
                    j.typed = typed;
                    j.ring = ring;
                    // The Unix socket baseline's buffers: 4 MiB, the most
                    // that helps a stream (shmbus's own fallback asks for
                    // what its broker gives a link of this ring).
                    j.sock_buf = if t == Transport::Uds {
                        UDS_BUFFER
                    } else {
                        link_buffer(ring)
                    };
                    j.credit = if typed {
                        CreditSpec::items(items_credit(size, ring))
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
                // The tokio API on both peers, where its targets are.
                if o.asynchronous && o.has(Transport::Shm) {
                    for typed in [false, true] {
                        let listed = if typed { &o.typed_sizes } else { &o.sizes };
                        let wanted = if typed {
                            size == 64
                        } else {
                            size == 64 << 10 || size == 1 << 20
                        };
                        if wanted && listed.contains(&size) {
                            let mut v = make(Transport::Shm, typed);
                            v.job.asynchronous = true;
                            variants.push(v);
                        }
                    }
                }
                // Bytes with the copies typed items make, to tell the cost
                // of the copies from the cost of encoding.
                if o.has(Transport::Shm) && o.typed_sizes.contains(&size) {
                    let mut v = make(Transport::Shm, false);
                    v.job.copied = true;
                    variants.push(v);
                }
                for v in baselines(o, |t| make(t, false).job) {
                    if v.transport != Transport::BareRing {
                        variants.push(v);
                        continue;
                    }
                    variants.extend(bare_rings(size).map(|r| {
                        let mut v = v.clone();
                        v.job.ring = r;
                        v
                    }));
                    // The same with a copy on each side: the ceiling
                    // for owned items (typed, or shm copied).
                    if o.typed_sizes.contains(&size) {
                        variants.extend(bare_rings(size).map(|r| {
                            let mut v = v.clone();
                            v.job.ring = r;
                            v.job.copied = true;
                            v
                        }));
                    }
                    if size >= WHOLE_WRITES_FROM {
                        variants.extend(whole_write_rings(size).map(|r| {
                            let mut v = v.clone();
                            v.job.ring = r;
                            v.job.whole_writes = true;
                            v
                        }));
                    }
                }
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
            "shm copied (at the typed sizes): bytes with a copy on each side, as typed items have: the producer fills its own buffer and calls send_bytes, the consumer reads each item into its own buffer (io::Read)"
                .into(),
            "async (bytes at 64 KiB and 1 MiB, typed at 64 B; --api): the tokio API on both peers, each on a current-thread runtime: AsyncSender::reserve + fill + commit (typed: feed, send above 4 KiB), AsyncReceiver::recv_in_place (typed: recv_borrowed); ×sync is against the same row with the blocking API"
                .into(),
        ];
        let mut sizes: Vec<usize> = o.sizes.iter().chain(&o.typed_sizes).copied().collect();
        sizes.sort_unstable();
        sizes.dedup();
        if let Some(ring) = o.throughput_ring {
            n.push(format!(
                "shmbus ring {} (--ring) for every write size; bytes credit = half the ring",
                human_size(ring as usize)
            ));
        } else {
            let rings: Vec<String> = sizes
                .iter()
                .map(|&s| format!("{}→{}", human_size(s), human_size(ring_for(s) as usize)))
                .collect();
            n.push(format!(
                "shmbus ring per write size ({}); bytes credit = half the ring",
                rings.join(", ")
            ));
        }
        if !o.typed_sizes.is_empty() {
            let credits: Vec<String> = o
                .typed_sizes
                .iter()
                .map(|&s| {
                    let ring = o.throughput_ring.unwrap_or_else(|| ring_for(s));
                    format!("{}: {} items", human_size(s), items_credit(s, ring))
                })
                .collect();
            n.push(format!(
                "typed: serde_bytes payloads, postcard-encoded to the item size (size→payload: {}); feed below {} (flush at the end), send above; received with recv_borrowed (copied out of the port, decoded borrowing the copy); items credit ({})",
                o.typed_sizes.iter().map(|&s| format!("{}→{}", s, typed_payload(s))).collect::<Vec<_>>().join(", "),
                human_size(FEED_BELOW),
                credits.join(", ")
            ));
        }
        n.push(format!(
            "baselines: one write of the size each (uds, pipe: write(2) from a buffer; bare_ring: filled in place, rings of {} that hold a write, positions published and released every ring/8 clamped to 4-64 KiB, and every 64 writes; from {} on also \"whole\": published only after each whole write and released whole, rings of 2, 4 and 8 writes; at the typed sizes also \"copied\": filled in the producer's own buffer and copied in, copied out into the consumer's own buffer and summed there, ×bare_ring_copied against the best of those); reads up to max(size, 64 KiB); ×bare_ring is against the best bare ring of each round",
            BARE_RING_SWEEP.map(|r| human_size(r as usize)).join(", "),
            human_size(WHOLE_WRITES_FROM)
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
        if v.transport.is_bus() {
            m.insert(
                "api".into(),
                (if v.job.asynchronous { "async" } else { "sync" }).into(),
            );
        }
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
