//! The blob scenario's two sides: the service hands over one sealed blob
//! (or streams its bytes) each time the caller asks, stamped with the
//! clock; the caller times each handoff until it holds a readable view
//! (or, streamed, until the last byte is in its own buffer).

use shmbus_client::{BlobWriter, Connection, IncomingCall, StreamMode};

use super::{method, BoxError, Reply};
use crate::checksum::{fill, Checksum};
use crate::job::{Job, Outcome};
use crate::os::mono_ns;
use crate::scenarios::blob::STREAM_CHUNK;
use crate::stats::Latencies;

/// Bytes at each end of a later blob that the caller checks.
const SAMPLE: usize = 64 << 10;

/// The caller: asks, receives, times, checks; reports the handoffs'
/// latencies (after an untimed first round) and the service's sealing cost.
pub fn caller(conn: &Connection, job: &Job) -> Result<Outcome, BoxError> {
    let mut call = super::start(conn, job, method::BLOB, StreamMode::Bidirectional)?;
    let mut tx = call.take_sender().ok_or("no sender")?;
    let mut rx = call.take_receiver().ok_or("no receiver")?;
    // The streamed copy's destination, its pages touched beforehand.
    let mut own = vec![0u8; if job.blob { 0 } else { job.size }];
    own.fill(1);
    let (mut got, mut lat) = (Checksum::default(), Latencies::new());
    // Round 0, untimed: its every byte is checksummed, which for a large
    // blob takes longer than a measurement lasts.
    let (mut begin, mut warm, mut end) = (0, 0, 0);
    let mut rounds = 0u64;
    loop {
        if rounds == 1 {
            begin = mono_ns();
            (warm, end) = (begin + job.duration_ns / 10, begin + job.duration_ns);
        }
        tx.send(&rounds)?;
        let sent_at: u64 = rx.recv()?.ok_or("the service ended early")?;
        let arrived = if job.blob {
            let blob = rx.recv_blob()?.ok_or("no blob")?;
            // A readable view: its first byte read.
            std::hint::black_box(blob.first().copied());
            let now = mono_ns();
            check(&blob, rounds, &mut got, job.size)?;
            now
        } else {
            let mut n = 0;
            while n < job.size {
                let item = rx.recv_in_place()?.ok_or("the stream ended early")?;
                let len = item.len().min(job.size - n);
                own[n..n + len].copy_from_slice(&item[..len]);
                n += item.len();
            }
            let now = mono_ns();
            check(&own, rounds, &mut got, job.size)?;
            now
        };
        if rounds > 0 && arrived >= warm {
            lat.record(arrived.saturating_sub(sent_at));
        }
        rounds += 1;
        if rounds > 1 && mono_ns() >= end && lat.count() > 0 {
            break;
        }
    }
    tx.finish()?;
    while rx.recv_in_place()?.is_some() {}
    drop((tx, rx));
    let reply: Reply = postcard::from_bytes(&call.finish()?)?;
    Ok(Outcome {
        seal_ns: reply.seal_ns,
        ..Outcome::timed(&got, &lat, begin, (reply.checksum, reply.bytes))
    })
}

/// Checks what arrived: every byte of the first round (into `got`), the
/// first and last [`SAMPLE`] bytes of later ones against the pattern.
fn check(bytes: &[u8], round: u64, got: &mut Checksum, size: usize) -> Result<(), BoxError> {
    if bytes.len() != size {
        return Err(format!("{} bytes arrived, {size} were sent", bytes.len()).into());
    }
    if round == 0 {
        got.update(bytes);
        return Ok(());
    }
    let n = SAMPLE.min(size);
    let mut want = vec![0u8; n];
    for at in [0, size - n] {
        fill(&mut want, at as u64);
        if bytes[at..at + n] != want[..] {
            return Err(format!("round {round}: bytes at {at} differ from what was sent").into());
        }
    }
    Ok(())
}

/// The service: makes and seals the blob (timing the seal), then per item
/// the caller sends, the clock and the blob (or the blob's bytes, streamed).
pub fn serve(mut call: IncomingCall, job: &Job) -> Result<(), BoxError> {
    let mut w = BlobWriter::new(job.size as u64)?;
    fill(w.as_mut_slice(), 0);
    let t0 = mono_ns();
    let blob = w.seal()?;
    let seal_ns = mono_ns() - t0;
    let mut sum = Checksum::default();
    sum.update(&blob);
    let mut tx = call.take_sender().ok_or("no sender")?;
    let mut rx = call.take_receiver().ok_or("no receiver")?;
    while rx.recv::<u64>()?.is_some() {
        tx.feed(&mono_ns())?;
        if job.blob {
            tx.send_blob(&blob)?;
        } else {
            for chunk in blob.chunks(STREAM_CHUNK) {
                tx.feed_bytes(chunk)?;
            }
            // The clock alone, for a zero-byte blob.
            tx.flush()?;
        }
    }
    tx.finish()?;
    drop((tx, rx));
    let r = Reply {
        bytes: sum.len(),
        checksum: sum.value(),
        cpu_ns: None,
        seal_ns: Some(seal_ns),
    };
    call.reply(postcard::to_stdvec(&r)?)?;
    Ok(())
}
