//! The bench service: one process, registered once, serving every shmbus
//! measurement's calls (a thread per call, as the README's example does).

use std::io::{Read, Write};
use std::path::Path;

use shmbus_client::{Connection, IncomingCall, MethodSpec, StreamMode};

use super::{method, typed_encoded, typed_payload, BoxError, Reply, FEED_BELOW};
use crate::checksum::{fill, Checksum};
use crate::job::Job;
use crate::os::{cpu_ns, mono_ns, sleep_until};

/// Registers `name` on the broker at `socket`, prints `ready`, and serves
/// until the broker goes away or standard input closes.
pub fn run(socket: &Path, name: &str) -> Result<(), BoxError> {
    let conn = Connection::connect(socket)?;
    let methods = [
        MethodSpec::new(method::STREAM, StreamMode::Download),
        MethodSpec::new(method::TYPED, StreamMode::Download),
        MethodSpec::new(method::ECHO, StreamMode::Bidirectional),
        MethodSpec::new(method::FIRST, StreamMode::Download),
        MethodSpec::new(method::IDLE, StreamMode::Bidirectional),
        MethodSpec::new(method::BLOB, StreamMode::Bidirectional),
    ];
    let service = conn.register(name, &methods)?;
    // The orchestrator holds our standard input: its end means stop.
    std::thread::spawn(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        std::process::exit(0);
    });
    println!("ready");
    std::io::stdout().flush()?;
    while let Some(call) = service.next()? {
        if call.method() == method::FIRST {
            // Inline: the setup figure is the bus's, not a thread spawn's.
            report(first(call));
        } else {
            std::thread::spawn(move || report(handle(call)));
        }
    }
    Ok(())
}

fn report(r: Result<(), BoxError>) {
    if let Err(e) = r {
        eprintln!("shmbus-bench service: {e}");
    }
}

fn handle(call: IncomingCall) -> Result<(), BoxError> {
    let job: Job = call.args_typed()?;
    match call.method() {
        method::STREAM => stream(call, &job),
        method::TYPED => typed(call, &job),
        method::ECHO => echo(call, &job),
        method::IDLE => idle(call, &job),
        method::BLOB => super::blob::serve(call, &job),
        other => Err(format!("unknown method {other}").into()),
    }
}

fn reply(call: IncomingCall, r: Reply) -> Result<(), BoxError> {
    call.reply(postcard::to_stdvec(&r)?)?;
    Ok(())
}

/// Bytes: reserve, generate in place, commit, from the common start for
/// the job's duration.
fn stream(mut call: IncomingCall, job: &Job) -> Result<(), BoxError> {
    if job.asynchronous {
        return produce_async(call, job);
    }
    let tx = call.sender().ok_or("download without a sender")?;
    tx.set_wait_policy(job.wait.policy());
    sleep_until(job.start_at);
    let end = job.start_at + job.duration_ns;
    let (mut pos, mut n) = (0u64, 0u64);
    let mut own = vec![0u8; if job.copied { job.size } else { 0 }];
    loop {
        if job.copied {
            // As typed items: queued below FEED_BELOW, sent at once above.
            fill(&mut own, pos);
            if job.size < FEED_BELOW {
                tx.feed_bytes(&own)?;
            } else {
                tx.send_bytes(&own)?;
            }
        } else {
            let mut slot = tx.reserve(job.size)?;
            fill(&mut slot.buf()[..job.size], pos);
            slot.commit(job.size)?;
        }
        pos += job.size as u64;
        n += 1;
        if (job.size >= 4096 || n % 64 == 0) && mono_ns() >= end {
            break;
        }
    }
    tx.finish()?;
    let r = Reply {
        bytes: pos,
        checksum: Checksum::of_pattern(pos).value(),
        cpu_ns: None,
        seal_ns: None,
    };
    reply(call, r)
}

/// Typed items: postcard-encoded byte payloads, `feed` below
/// [`FEED_BELOW`] (flushed at the end), `send` otherwise.
fn typed(mut call: IncomingCall, job: &Job) -> Result<(), BoxError> {
    if job.asynchronous {
        return produce_async(call, job);
    }
    let tx = call.sender().ok_or("download without a sender")?;
    let mut payload = vec![0u8; typed_payload(job.size)];
    sleep_until(job.start_at);
    let end = job.start_at + job.duration_ns;
    let (mut pos, mut n) = (0u64, 0u64);
    loop {
        fill(&mut payload, pos);
        let item = serde_bytes::Bytes::new(&payload);
        if job.size < FEED_BELOW {
            tx.feed(item)?;
        } else {
            tx.send(item)?;
        }
        pos += payload.len() as u64;
        n += 1;
        if (job.size >= 4096 || n % 64 == 0) && mono_ns() >= end {
            break;
        }
    }
    tx.flush()?;
    tx.finish()?;
    let r = Reply {
        bytes: n * typed_encoded(job.size) as u64,
        checksum: Checksum::of_pattern(pos).value(),
        cpu_ns: None,
        seal_ns: None,
    };
    reply(call, r)
}

/// Bytes or typed items through the tokio API, on a current-thread
/// runtime: `reserve` + fill + `commit` for bytes; `feed` below
/// [`FEED_BELOW`] (flushed at the end), `send` above, for typed items.
fn produce_async(mut call: IncomingCall, job: &Job) -> Result<(), BoxError> {
    let tx = call.take_sender().ok_or("download without a sender")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (pos, bytes) = rt.block_on(async {
        let mut tx = shmbus_client::AsyncSender::new(tx)?;
        sleep_until(job.start_at);
        let end = job.start_at + job.duration_ns;
        let (mut pos, mut n) = (0u64, 0u64);
        let mut payload = vec![
            0u8;
            if job.typed {
                typed_payload(job.size)
            } else {
                0
            }
        ];
        loop {
            if job.typed {
                fill(&mut payload, pos);
                let item = serde_bytes::Bytes::new(&payload);
                if job.size < FEED_BELOW {
                    tx.feed(item).await?;
                } else {
                    tx.send(item).await?;
                }
                pos += payload.len() as u64;
            } else {
                let mut slot = tx.reserve(job.size).await?;
                fill(&mut slot.buf()[..job.size], pos);
                slot.commit(job.size)?;
                pos += job.size as u64;
            }
            n += 1;
            if (job.size >= 4096 || n % 64 == 0) && mono_ns() >= end {
                break;
            }
        }
        tx.flush().await?;
        tx.finish().await?;
        let bytes = if job.typed {
            n * typed_encoded(job.size) as u64
        } else {
            pos
        };
        Ok::<_, shmbus_client::Error>((pos, bytes))
    })?;
    let r = Reply {
        bytes,
        checksum: Checksum::of_pattern(pos).value(),
        cpu_ns: None,
        seal_ns: None,
    };
    reply(call, r)
}

/// Echo: every item read in place, checksummed, and sent straight back.
fn echo(mut call: IncomingCall, job: &Job) -> Result<(), BoxError> {
    if job.asynchronous {
        return echo_async(call, job);
    }
    let mut rx = call.take_receiver().ok_or("no receiver")?;
    rx.set_wait_policy(job.wait.policy());
    let tx = call.sender().ok_or("no sender")?;
    tx.set_wait_policy(job.wait.policy());
    let mut sum = Checksum::default();
    while let Some(item) = rx.recv_in_place()? {
        sum.update(&item);
        tx.send_bytes(&item)?;
    }
    tx.finish()?;
    let r = Reply {
        bytes: sum.len(),
        checksum: sum.value(),
        cpu_ns: None,
        seal_ns: None,
    };
    reply(call, r)
}

/// Echo through the tokio API, on a current-thread runtime.
fn echo_async(mut call: IncomingCall, job: &Job) -> Result<(), BoxError> {
    let mut rx = call.take_receiver().ok_or("no receiver")?;
    rx.set_wait_policy(job.wait.policy());
    let mut tx = call.take_sender().ok_or("no sender")?;
    tx.set_wait_policy(job.wait.policy());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let sum = rt.block_on(async {
        let mut rx = shmbus_client::AsyncReceiver::new(rx)?;
        let mut tx = shmbus_client::AsyncSender::new(tx)?;
        let mut sum = Checksum::default();
        while let Some(item) = rx.recv_in_place().await? {
            sum.update(&item);
            tx.send_bytes(&item).await?;
        }
        tx.finish().await?;
        Ok::<_, shmbus_client::Error>(sum)
    })?;
    let r = Reply {
        bytes: sum.len(),
        checksum: sum.value(),
        cpu_ns: None,
        seal_ns: None,
    };
    reply(call, r)
}

/// Setup: one 1-byte item at once, then the end.
fn first(mut call: IncomingCall) -> Result<(), BoxError> {
    let tx = call.sender().ok_or("download without a sender")?;
    tx.send_bytes(&[1])?;
    call.reply(Vec::new())?;
    Ok(())
}

/// Idle: wait for the caller's end of stream with nothing flowing, then end
/// ours; reports this process's CPU time meanwhile.
fn idle(mut call: IncomingCall, job: &Job) -> Result<(), BoxError> {
    let cpu0 = cpu_ns(None)?;
    let mut rx = call.take_receiver().ok_or("no receiver")?;
    rx.set_wait_policy(job.wait.policy());
    let mut sum = Checksum::default();
    while let Some(item) = rx.recv_in_place()? {
        sum.update(&item);
    }
    let tx = call.sender().ok_or("no sender")?;
    tx.finish()?;
    let r = Reply {
        bytes: sum.len(),
        checksum: sum.value(),
        cpu_ns: Some(cpu_ns(None)? - cpu0),
        seal_ns: None,
    };
    reply(call, r)
}
