//! The caller side of a shmbus measurement: one process per measurement,
//! which consumes, pings, sets up or idles and reports an [`Outcome`].

use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use shmbus_client::{Call, Connection, StreamMode};

use super::{method, preference, start, typed_encoded, typed_payload, BoxError, Reply};
use crate::checksum::{combine, fill, Checksum};
use crate::job::{Job, Outcome, Scenario};
use crate::os::{cpu_ns, mono_ns, rss_kib};
use crate::stats::Latencies;

/// Runs one job against the bench service and returns what it measured.
pub fn run(socket: &Path, job: &Job) -> Result<Outcome, BoxError> {
    let conn = Connection::connect(socket)?;
    match job.scenario {
        Scenario::Throughput => {
            let (bytes, items, sum, end, reply, opened) = consume(&conn, job)?;
            Ok(Outcome {
                late_ns: late(job, opened),
                bytes,
                items,
                secs: end.saturating_sub(job.start_at) as f64 / 1e9,
                checksum: sum,
                peer: Some((reply.checksum, reply.bytes)),
                ..Outcome::default()
            })
        }
        Scenario::Fanout => fanout(&conn, job),
        Scenario::Latency => latency(&conn, job),
        Scenario::Setup => setup(&conn, job),
        Scenario::Idle => idle(&conn, job),
        Scenario::Blob => super::blob::caller(&conn, job),
        Scenario::Bridge | Scenario::Crash | Scenario::Soak | Scenario::Flood => {
            Err("this scenario runs other scenarios' jobs or its own peers".into())
        }
    }
}

fn finish(call: Call) -> Result<Reply, BoxError> {
    Ok(postcard::from_bytes(&call.finish()?)?)
}

/// How late after the common start `t` was, if it was.
fn late(job: &Job, t: u64) -> Option<u64> {
    (t > job.start_at).then(|| t - job.start_at)
}

/// One download stream to its end: (bytes, items, checksum, end time,
/// reply, time the stream was open).
fn consume(conn: &Connection, job: &Job) -> Result<(u64, u64, u64, u64, Reply, u64), BoxError> {
    let name = if job.typed {
        method::TYPED
    } else {
        method::STREAM
    };
    let mut call = start(conn, job, name, StreamMode::Download)?;
    let opened = mono_ns();
    if job.asynchronous {
        let rx = call.take_receiver().ok_or("download without a receiver")?;
        let (sum, items) = consume_async(rx, job)?;
        let end = mono_ns();
        let bytes = if job.typed {
            items * typed_encoded(job.size) as u64
        } else {
            sum.len()
        };
        return Ok((bytes, items, sum.value(), end, finish(call)?, opened));
    }
    let rx = call.receiver().ok_or("download without a receiver")?;
    let mut sum = Checksum::default();
    let mut items = 0u64;
    if job.typed {
        let want = typed_payload(job.size);
        while let Some(item) = rx.recv_borrowed::<&serde_bytes::Bytes>()? {
            if item.len() != want {
                return Err(format!("typed item of {} bytes, {want} expected", item.len()).into());
            }
            sum.update(item);
            items += 1;
        }
    } else if job.copied {
        let mut own = vec![0u8; job.size];
        loop {
            let n = std::io::Read::read(rx, &mut own)?;
            if n == 0 {
                break;
            }
            sum.update(&own[..n]);
            items += 1;
        }
    } else {
        while let Some(item) = rx.recv_in_place()? {
            sum.update(&item);
            items += 1;
        }
    }
    let end = mono_ns();
    let bytes = if job.typed {
        items * typed_encoded(job.size) as u64
    } else {
        sum.len()
    };
    Ok((bytes, items, sum.value(), end, finish(call)?, opened))
}

/// The stream through the tokio API, on a current-thread runtime:
/// `recv_in_place` for bytes, `recv_borrowed` for typed items.
fn consume_async(rx: shmbus_client::Receiver, job: &Job) -> Result<(Checksum, u64), BoxError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut rx = shmbus_client::AsyncReceiver::new(rx)?;
        let mut sum = Checksum::default();
        let mut items = 0u64;
        if job.typed {
            let want = typed_payload(job.size);
            while let Some(item) = rx.recv_borrowed::<&serde_bytes::Bytes>().await? {
                if item.len() != want {
                    return Err(
                        format!("typed item of {} bytes, {want} expected", item.len()).into(),
                    );
                }
                sum.update(item);
                items += 1;
            }
        } else {
            while let Some(item) = rx.recv_in_place().await? {
                sum.update(&item);
                items += 1;
            }
        }
        Ok((sum, items))
    })
}

/// Fan-out: one thread per stream on one connection; aggregate throughput,
/// the broker's CPU time over the run and its memory with every stream open.
fn fanout(conn: &Connection, job: &Job) -> Result<Outcome, BoxError> {
    let broker = job.broker_pid;
    // Best effort: another user's broker may not let us read /proc.
    let cpu0 = broker.and_then(|p| cpu_ns(Some(p)).ok());
    let opened = Arc::new(Barrier::new(job.streams + 1));
    let threads: Vec<_> = (0..job.streams)
        .map(|_| {
            let (conn, job, opened) = (conn.clone(), job.clone(), opened.clone());
            std::thread::spawn(move || -> Result<_, String> {
                let call = start(&conn, &job, method::STREAM, StreamMode::Download);
                let open_at = mono_ns();
                opened.wait();
                let mut call = call.map_err(|e| e.to_string())?;
                let rx = call.receiver().ok_or("no receiver")?;
                let mut sum = Checksum::default();
                while let Some(item) = rx.recv_in_place().map_err(|e| e.to_string())? {
                    sum.update(&item);
                }
                let end = mono_ns();
                let reply = finish(call).map_err(|e| e.to_string())?;
                Ok((sum.len(), sum.value(), end, reply, open_at))
            })
        })
        .collect();
    opened.wait();
    let rss = broker.and_then(|p| rss_kib(p).ok());
    let mut results = Vec::new();
    for t in threads {
        results.push(t.join().map_err(|_| "stream thread panicked")??);
    }
    let cpu1 = broker.and_then(|p| cpu_ns(Some(p)).ok());
    let last = results.iter().map(|r| r.2).max().unwrap_or(job.start_at);
    let bytes = results.iter().map(|r| r.0).sum::<u64>();
    Ok(Outcome {
        bytes,
        items: bytes / job.size as u64,
        secs: last.saturating_sub(job.start_at) as f64 / 1e9,
        checksum: combine(results.iter().map(|r| r.1)),
        peer: Some((
            combine(results.iter().map(|r| r.3.checksum)),
            results.iter().map(|r| r.3.bytes).sum(),
        )),
        broker_cpu_ns: cpu0.zip(cpu1).map(|(a, b)| b - a),
        broker_rss_kib: rss,
        late_ns: late(job, results.iter().map(|r| r.4).max().unwrap_or(0)),
        ..Outcome::default()
    })
}

/// Latency: reserve + fill + commit + flush a message, wait for its echo
/// in place, for the job's duration.
fn latency(conn: &Connection, job: &Job) -> Result<Outcome, BoxError> {
    let mut call = start(conn, job, method::ECHO, StreamMode::Bidirectional)?;
    if job.asynchronous {
        return latency_async(call, job);
    }
    let mut tx = call.take_sender().ok_or("no sender")?;
    let mut rx = call.take_receiver().ok_or("no receiver")?;
    let (mut sent, mut got, mut lat) = (Checksum::default(), Checksum::default(), Latencies::new());
    let begin = mono_ns();
    let (warm, end) = (begin + job.duration_ns / 10, begin + job.duration_ns);
    let mut pos = 0u64;
    loop {
        let t0 = Instant::now();
        let mut slot = tx.reserve(job.size)?;
        let buf = &mut slot.buf()[..job.size];
        fill(buf, pos);
        sent.update(buf);
        slot.commit(job.size)?;
        tx.flush()?;
        let item = rx.recv_in_place()?.ok_or("echo ended early")?;
        got.update(&item);
        drop(item);
        let dt = t0.elapsed().as_nanos() as u64;
        pos += job.size as u64;
        let now = mono_ns();
        if now >= warm {
            lat.record(dt);
        }
        if now >= end {
            break;
        }
    }
    tx.finish()?;
    while let Some(item) = rx.recv_in_place()? {
        got.update(&item);
    }
    drop((tx, rx));
    let reply = finish(call)?;
    if (reply.checksum, reply.bytes) != (sent.value(), sent.len()) {
        return Err("the echo service saw other bytes than were sent".into());
    }
    Ok(Outcome::timed(
        &got,
        &lat,
        begin,
        (sent.value(), sent.len()),
    ))
}

/// Latency through the tokio API, on a current-thread runtime: the same
/// round trips as [`latency`], each awaited.
fn latency_async(mut call: Call, job: &Job) -> Result<Outcome, BoxError> {
    let tx = call.take_sender().ok_or("no sender")?;
    let rx = call.take_receiver().ok_or("no receiver")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (sent, got, lat, begin) = rt.block_on(async {
        let mut tx = shmbus_client::AsyncSender::new(tx)?;
        let mut rx = shmbus_client::AsyncReceiver::new(rx)?;
        let (mut sent, mut got, mut lat) =
            (Checksum::default(), Checksum::default(), Latencies::new());
        let begin = mono_ns();
        let (warm, end) = (begin + job.duration_ns / 10, begin + job.duration_ns);
        let mut pos = 0u64;
        loop {
            let t0 = Instant::now();
            let mut slot = tx.reserve(job.size).await?;
            let buf = &mut slot.buf()[..job.size];
            fill(buf, pos);
            sent.update(buf);
            slot.commit(job.size)?;
            tx.flush().await?;
            {
                let item = rx.recv_in_place().await?.ok_or("echo ended early")?;
                got.update(&item);
            }
            let dt = t0.elapsed().as_nanos() as u64;
            pos += job.size as u64;
            let now = mono_ns();
            if now >= warm {
                lat.record(dt);
            }
            if now >= end {
                break;
            }
        }
        tx.finish().await?;
        while let Some(item) = rx.recv_in_place().await? {
            got.update(&item);
        }
        Ok::<_, BoxError>((sent, got, lat, begin))
    })?;
    let reply = finish(call)?;
    if (reply.checksum, reply.bytes) != (sent.value(), sent.len()) {
        return Err("the echo service saw other bytes than were sent".into());
    }
    Ok(Outcome::timed(
        &got,
        &lat,
        begin,
        (sent.value(), sent.len()),
    ))
}

/// Setup: a new call, timed until its first item arrives, for the duration.
fn setup(conn: &Connection, job: &Job) -> Result<Outcome, BoxError> {
    if job.asynchronous {
        return setup_async(conn, job);
    }
    let (mut got, mut lat) = (Checksum::default(), Latencies::new());
    let begin = mono_ns();
    let (warm, end) = (begin + job.duration_ns / 10, begin + job.duration_ns);
    let mut calls = 0u64;
    loop {
        if job.gap_ns > 0 {
            std::thread::sleep(std::time::Duration::from_nanos(job.gap_ns));
        }
        let t0 = Instant::now();
        let mut call = start(conn, job, method::FIRST, StreamMode::Download)?;
        let rx = call.receiver().ok_or("no receiver")?;
        let item = rx
            .recv_in_place()?
            .ok_or("stream ended before its first item")?;
        let dt = t0.elapsed().as_nanos() as u64;
        got.update(&item);
        drop(item);
        while rx.recv_in_place()?.is_some() {}
        call.finish()?;
        calls += 1;
        let now = mono_ns();
        if now >= warm {
            lat.record(dt);
        }
        if now >= end {
            break;
        }
    }
    Ok(Outcome::timed(&got, &lat, begin, (got.value(), calls)))
}

/// Setup through the tokio API, on a current-thread runtime: each call's
/// `start_async`, its receiver's registration with the reactor and its
/// first item, timed as the blocking setup is.
fn setup_async(conn: &Connection, job: &Job) -> Result<Outcome, BoxError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let (mut got, mut lat) = (Checksum::default(), Latencies::new());
        let begin = mono_ns();
        let (warm, end) = (begin + job.duration_ns / 10, begin + job.duration_ns);
        let mut calls = 0u64;
        loop {
            if job.gap_ns > 0 {
                tokio::time::sleep(Duration::from_nanos(job.gap_ns)).await;
            }
            let t0 = Instant::now();
            let mut call = conn
                .call(&job.service, method::FIRST)
                .mode(StreamMode::Download)
                .args_typed(job)?
                .transport(preference(job.transport))
                .ring_size(job.ring)
                .credit(job.credit)
                .wait_policy(job.wait.policy())
                .start_async()
                .await?;
            let rx = call.take_receiver().ok_or("no receiver")?;
            let mut rx = shmbus_client::AsyncReceiver::new(rx)?;
            {
                let item = rx
                    .recv_in_place()
                    .await?
                    .ok_or("stream ended before its first item")?;
                let dt = t0.elapsed().as_nanos() as u64;
                got.update(&item);
                if mono_ns() >= warm {
                    lat.record(dt);
                }
            }
            while rx.recv_in_place().await?.is_some() {}
            call.finish_async().await?;
            calls += 1;
            if mono_ns() >= end {
                break;
            }
        }
        Ok(Outcome::timed(&got, &lat, begin, (got.value(), calls)))
    })
}

/// Idle: a bidirectional stream open with nothing flowing for the duration;
/// both peers wait in `recv`. Reports each peer's and the broker's CPU time.
fn idle(conn: &Connection, job: &Job) -> Result<Outcome, BoxError> {
    let mut call = start(conn, job, method::IDLE, StreamMode::Bidirectional)?;
    let mut tx = call.take_sender().ok_or("no sender")?;
    let mut rx = call.take_receiver().ok_or("no receiver")?;
    let (t0, cpu0) = (mono_ns(), cpu_ns(None)?);
    let broker0 = job.broker_pid.and_then(|p| cpu_ns(Some(p)).ok());
    let reader = std::thread::spawn(move || -> Result<u64, String> {
        let mut n = 0;
        while let Some(item) = rx.recv_in_place().map_err(|e| e.to_string())? {
            n += item.len() as u64;
        }
        Ok(n)
    });
    std::thread::sleep(Duration::from_nanos(job.duration_ns));
    tx.finish()?;
    let got = reader.join().map_err(|_| "reader panicked")??;
    let cpu = cpu_ns(None)? - cpu0;
    let broker1 = job.broker_pid.and_then(|p| cpu_ns(Some(p)).ok());
    let secs = (mono_ns() - t0) as f64 / 1e9;
    let reply = finish(call)?;
    Ok(Outcome {
        bytes: got,
        secs,
        checksum: Checksum::default().value(),
        peer: Some((reply.checksum, reply.bytes)),
        cpu_ns: Some(cpu),
        peer_cpu_ns: reply.cpu_ns,
        broker_cpu_ns: broker0.zip(broker1).map(|(a, b)| b - a),
        ..Outcome::default()
    })
}
