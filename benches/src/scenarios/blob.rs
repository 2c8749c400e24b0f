//! Blob: a sealed blob handed over whole, from the moment the sender calls
//! `send_blob` until the receiver holds a readable view, against the same
//! bytes streamed over shared memory into the receiver's own buffer; and
//! the sender's sealing cost, apart.

use serde_json::{Map, Value};
use shmbus::credit::CreditSpec;

use super::spec::{job, median_u64, percentile as p, put, values, Context, Group, Spec, Variant};
use crate::cli::{human_size, Options};
use crate::job::{Outcome, Scenario, Transport};
use crate::stats::{median, range};

/// The ring of every blob job: room for four 1 MiB chunks of the streamed
/// comparison (the streaming scenario's best ring for 1 MiB writes).
const RING: u32 = 4 << 20;

/// Chunk of the streamed comparison: 1 MiB writes, shmbus's fastest
/// streaming size (the throughput scenario).
pub const STREAM_CHUNK: usize = 1 << 20;

/// The blob scenario.
pub struct Blob;

impl Spec for Blob {
    fn scenario(&self) -> Scenario {
        Scenario::Blob
    }

    fn groups(&self, o: &Options, ctx: &Context) -> Vec<Group> {
        o.blob_sizes
            .iter()
            .map(|&size| {
                let make = |t: Transport, blob: bool| {
                    let mut j = job(ctx, o, Scenario::Blob, t);
                    j.size = size;
                    j.ring = RING;
                    j.credit = CreditSpec::items(16);
                    j.blob = blob;
                    Variant {
                        transport: t,
                        job: j,
                    }
                };
                let mut variants = Vec::new();
                if o.has(Transport::Shm) {
                    variants.push(make(Transport::Shm, true));
                }
                if o.has(Transport::Socket) {
                    variants.push(make(Transport::Socket, true));
                }
                if o.has(Transport::Shm) {
                    variants.push(make(Transport::Shm, false));
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
            "handoff: each round the caller asks (one item on a bidirectional stream); the service reads the clock (CLOCK_MONOTONIC, shared by both processes), sends it as an item and then the blob with send_blob; the caller takes it with recv_blob, reads its first byte, and reads the clock: p50 of the difference".into(),
            "shm blob, socket blob: one sealed blob, made once per run, handed over every round; the caller checksums every byte of the first one it gets (an untimed round before the measurement), and checks the first and last 64 KiB of each later one against the pattern".into(),
            format!("shm streamed: the same bytes sent from the sealed mapping in {} writes (feed_bytes, then one flush) over shared memory, copied by the caller into its own buffer (allocated and touched beforehand), every byte checksummed; the time until the last byte is in", human_size(STREAM_CHUNK)),
            format!("ring {} and items credit 16 for every row; ×streamed: blob p50 / streamed p50 of the same size and round (below 1: the blob is faster)", human_size(RING as usize)),
            "seal µs: the sender's own cost, apart from the handoff: BlobWriter::seal (unmap the filled writable mapping, F_ADD_SEALS, map read-only), once per run".into(),
        ]
    }

    fn columns(&self) -> Vec<(&'static str, usize)> {
        vec![
            ("p50 µs median [min, max]", 26),
            ("p99 µs", 10),
            ("rounds", 8),
            ("seal µs", 10),
        ]
    }

    fn cells(&self, runs: &[&Outcome]) -> Vec<String> {
        vec![
            range(&values(runs, |o| p(o, 0)), 1e-3, 1),
            median(&values(runs, |o| p(o, 1)), 1e-3, 1),
            median(&values(runs, |o| Some(o.items as f64)), 1.0, 0),
            median(&values(runs, |o| o.seal_ns.map(|n| n as f64)), 1e-3, 1),
        ]
    }

    fn headline(&self, o: &Outcome) -> Option<f64> {
        p(o, 0)
    }

    fn fields(&self, v: &Variant, runs: &[&Outcome]) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("blob".into(), v.job.blob.into());
        put(&mut m, "p50_ns", median_u64(runs, |o| p(o, 0)));
        put(&mut m, "p99_ns", median_u64(runs, |o| p(o, 1)));
        put(
            &mut m,
            "seal_ns",
            median_u64(runs, |o| o.seal_ns.map(|n| n as f64)),
        );
        m
    }
}
