//! `shmbus-testpeer`: service and caller roles for the end-to-end tests,
//! each a real process talking to a real broker. It reports what it sees as
//! lines on stdout (`key value`), which the tests read.
//!
//! Roles:
//! - `numbers NAME [--delay-us N]`: method `numbers` (download) streams u64
//!   0..count (count = args), printing `sent i` after each send;
//! - `echo NAME`: method `echo` (bidirectional) answers each item with `Echo: item`;
//! - `sink NAME [--delay-us N]`: method `sink` (upload) replies with
//!   `count,fnv` of all bytes, pausing after each item with the flag;
//! - `failing NAME [--answer-ok 1]`: method `fail` (download) sends `args`
//!   items then stream-error, then fails the call (or answers `fine`);
//! - `endless NAME`: method `endless` (download) sends until cancelled;
//! - `unary NAME`: method `add` (unary) returns the sum of two u64;
//! - `consume NAME METHOD TRANSPORT`: calls NAME.METHOD and reads the stream;
//! - `call-deadline NAME METHOD MS`: a download call with a deadline MS
//!   from now and items credit 2, whose receiver reads nothing; prints
//!   `finish E` with the call's outcome;
//! - `blobs NAME [--exit 1]`: method `blobs` (download) sends, for each
//!   size in its `Vec<u64>` args, the item `i` (u64) then a sealed blob of
//!   that size filled with `fill_blob(i)`, then stream-end; with `--exit 1`
//!   the process exits as soon as the call is answered. Method `take`
//!   (upload) receives items and blobs with `recv_any` and answers
//!   `items N blobs M bytes B good|bad`;
//! - `deadlines NAME`: methods for calls with a deadline (`serve_deadlines`),
//!   each printing `incoming METHOD`, `time-left-ms N` (or `time-left none`)
//!   and how it ended.

use std::io::Write;
use std::time::Duration;

use shmbus_client::{
    BlobWriter, Connection, CreditSpec, Error, IncomingCall, MethodSpec, Received, StreamMode,
    TransportPreference,
};
use shmbus_tests::fnv1a;

static CONN: std::sync::OnceLock<Connection> = std::sync::OnceLock::new();

fn say(line: String) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let role = args.first().map(String::as_str).unwrap_or("");
    let name = args.get(1).cloned().unwrap_or_default();
    let conn = Connection::connect_default().expect("connect");
    let _ = CONN.set(conn.clone());
    let result = match role {
        "numbers" => {
            let delay = flag(&args, "--delay-us").map(Duration::from_micros);
            serve(&conn, &name, "numbers", StreamMode::Download, move |c| {
                numbers(c, delay)
            })
        }
        "echo" => serve(&conn, &name, "echo", StreamMode::Bidirectional, echo),
        "sink" => {
            let delay = flag(&args, "--delay-us").map(Duration::from_micros);
            serve(&conn, &name, "sink", StreamMode::Upload, move |c| {
                sink(c, delay)
            })
        }
        "failing" => {
            let answer_ok = flag(&args, "--answer-ok").is_some_and(|v| v != 0);
            serve(&conn, &name, "fail", StreamMode::Download, move |c| {
                failing(c, answer_ok)
            })
        }
        "endless" => {
            let stall = flag(&args, "--stall-ms").map(Duration::from_millis);
            serve(&conn, &name, "endless", StreamMode::Download, move |c| {
                endless(c, stall)
            })
        }
        "unary" => serve(&conn, &name, "add", StreamMode::Unary, add),
        "seq" => serve_seq(&conn, &name),
        "deadlines" => serve_deadlines(&conn, &name),
        "blobs" => serve_blobs(&conn, &name, flag(&args, "--exit") == Some(1)),
        "consume" => consume(&conn, &name, &args[2], &args[3]),
        "call-add" => conn
            .call(&name, "add")
            .args_typed(&(2u64, 3u64))
            .and_then(|c| c.unary())
            .map(|r| {
                say(format!(
                    "result {}",
                    u64::from_le_bytes(r.try_into().unwrap_or_default())
                ))
            }),
        "call-deadline" => call_deadline(&conn, &name, &args[2], args[3].parse().unwrap_or(300)),
        "hold" => hold(
            &conn,
            &name,
            &args[2],
            args[3].parse().unwrap_or(1),
            args[4].parse().unwrap_or(1 << 16),
        ),
        "connections" => connections(args[1].parse().unwrap_or(1)),
        other => {
            eprintln!("unknown role {other:?}");
            std::process::exit(2);
        }
    };
    if let Err(e) = result {
        say(format!("error {e}"));
        std::process::exit(1);
    }
}

/// Methods for deadlines, each on its own thread. Arguments are
/// `(count, delay_ms)`:
/// - `drip` (download): `count` u64 items, `delay_ms` apart, then the
///   answer `done`; prints `send-failed E` if a send fails;
/// - `late` (download): `count` items at once, stream-end, then the answer
///   `late` after `delay_ms`;
/// - `flood` (download): items until a send fails (the caller reads none),
///   printing `send-failed E`;
/// - `drain` (upload): sleeps `delay_ms` before reading, then reads to the
///   end, printing `recv-ended E` or `recv-ended ok N`;
/// - `nap` (unary): answers `awake` after `delay_ms`.
fn serve_deadlines(conn: &Connection, name: &str) -> shmbus_client::Result<()> {
    let service = conn.register(
        name,
        &[
            MethodSpec::new("drip", StreamMode::Download),
            MethodSpec::new("late", StreamMode::Download),
            MethodSpec::new("flood", StreamMode::Download),
            MethodSpec::new("drain", StreamMode::Upload),
            MethodSpec::new("nap", StreamMode::Unary),
        ],
    )?;
    say("ready".into());
    while let Some(mut call) = service.next()? {
        std::thread::spawn(move || {
            let method = call.method().to_string();
            say(format!("incoming {method}"));
            match call.time_left() {
                Some(left) => say(format!("time-left-ms {}", left.as_millis())),
                None => say("time-left none".into()),
            }
            let (count, delay_ms): (u64, u64) = call.args_typed().unwrap_or((0, 0));
            let delay = Duration::from_millis(delay_ms);
            let r = match method.as_str() {
                "drip" | "late" | "flood" => {
                    let tx = call.sender().expect("download");
                    let mut i = 0u64;
                    let failed = loop {
                        if method != "flood" && i == count {
                            break None;
                        }
                        if let Err(e) = tx.send(&i) {
                            break Some(e);
                        }
                        i += 1;
                        if method == "drip" {
                            std::thread::sleep(delay);
                        }
                    };
                    match failed {
                        Some(e) => say(format!("send-failed {e}")),
                        None => {
                            let _ = tx.finish();
                            say("stream-finished".into());
                        }
                    }
                    if method == "late" {
                        std::thread::sleep(delay);
                    }
                    call.reply(method.into_bytes())
                }
                "drain" => {
                    std::thread::sleep(delay);
                    let rx = call.receiver().expect("upload");
                    let mut n = 0u64;
                    loop {
                        match rx.recv::<u64>() {
                            Ok(Some(_)) => n += 1,
                            Ok(None) => {
                                say(format!("recv-ended ok {n}"));
                                break;
                            }
                            Err(e) => {
                                say(format!("recv-ended {e}"));
                                break;
                            }
                        }
                    }
                    call.reply(Vec::new())
                }
                _ => {
                    std::thread::sleep(delay);
                    call.reply(b"awake".to_vec())
                }
            };
            if let Err(e) = r {
                say(format!("reply-failed {e}"));
            }
        });
    }
    Ok(())
}

/// A download call with a deadline whose receiver never reads: the
/// service fills its credit and waits until the deadline ends the call.
fn call_deadline(
    conn: &Connection,
    name: &str,
    method: &str,
    ms: u64,
) -> shmbus_client::Result<()> {
    let call = conn
        .call(name, method)
        .mode(StreamMode::Download)
        .credit(CreditSpec::items(2))
        .timeout(Duration::from_millis(ms))
        .start()?;
    say("open".into());
    std::thread::sleep(Duration::from_millis(ms + 200));
    match call.finish() {
        Ok(_) => say("finish ok".into()),
        Err(e) => say(format!("finish {e}")),
    }
    Ok(())
}

/// Methods `down` (streams the sequence the arguments describe) and `up`
/// (checks that the caller streamed it exactly).
fn serve_seq(conn: &Connection, name: &str) -> shmbus_client::Result<()> {
    let service = conn.register(
        name,
        &[
            MethodSpec::new("down", StreamMode::Download),
            MethodSpec::new("up", StreamMode::Upload),
        ],
    )?;
    say("ready".into());
    while let Some(mut call) = service.next()? {
        std::thread::spawn(move || {
            let spec: shmbus_tests::SeqSpec = match call.args_typed() {
                Ok(s) => s,
                Err(e) => return call.fail(&e.to_string()),
            };
            if call.method() == "down" {
                let tx = call.sender().expect("download");
                tx.set_size_fn(shmbus_tests::SeqSpec::custom_charge);
                for i in 0..spec.count {
                    if let Err(e) = tx.send_bytes(&spec.item(i)) {
                        let m = e.to_string();
                        return call.fail(&m);
                    }
                }
                call.reply(Vec::new())
            } else {
                let rx = call.receiver().expect("upload");
                let mut i = 0;
                let verdict = loop {
                    match rx.recv_bytes() {
                        Ok(Some(item)) if item == spec.item(i) => i += 1,
                        Ok(Some(_)) => break format!("item {i} wrong"),
                        Ok(None) => break format!("ok {i}"),
                        Err(e) => break format!("error after {i}: {e}"),
                    }
                };
                call.reply(verdict.into_bytes())
            }
        });
    }
    Ok(())
}

fn serve_blobs(conn: &Connection, name: &str, exit: bool) -> shmbus_client::Result<()> {
    let service = conn.register(
        name,
        &[
            MethodSpec::new("blobs", StreamMode::Download),
            MethodSpec::new("take", StreamMode::Upload),
        ],
    )?;
    say("ready".into());
    while let Some(mut call) = service.next()? {
        if call.method() == "take" {
            let mut rx = call.take_receiver().expect("an upload");
            let (mut items, mut blobs, mut bytes, mut good) = (0u64, 0u64, 0u64, true);
            let summary = loop {
                match rx.recv_any() {
                    Ok(Some(Received::Item(_))) => items += 1,
                    Ok(Some(Received::Blob(b))) => {
                        good &= shmbus_tests::blob_holds(blobs, &b);
                        blobs += 1;
                        bytes += b.len() as u64;
                    }
                    Ok(None) => {
                        let verdict = if good { "good" } else { "bad" };
                        break format!("items {items} blobs {blobs} bytes {bytes} {verdict}");
                    }
                    Err(e) => break format!("error {e}"),
                }
            };
            say(format!("took {summary}"));
            call.reply(summary.into_bytes())?;
            continue;
        }
        let sizes: Vec<u64> = call.args_typed().unwrap_or_default();
        let mut tx = call.take_sender().expect("a download");
        let sent = (|| {
            for (i, &size) in sizes.iter().enumerate() {
                tx.send(&(i as u64))?;
                let mut w = BlobWriter::new(size)?;
                shmbus_tests::fill_blob(i as u64, w.as_mut_slice());
                tx.send_blob(&w.seal()?)?;
            }
            tx.finish()
        })();
        match sent {
            Ok(()) => call.reply(b"ok".to_vec())?,
            Err(e) => {
                say(format!("send-failed {e}"));
                call.fail(&e.to_string())?;
            }
        }
        if exit {
            say("exiting".into());
            std::process::exit(0);
        }
    }
    Ok(())
}

fn flag(args: &[String], name: &str) -> Option<u64> {
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1)?.parse().ok()
}

fn serve(
    conn: &Connection,
    name: &str,
    method: &str,
    mode: StreamMode,
    handler: impl Fn(IncomingCall) -> shmbus_client::Result<()> + Send + Sync + Clone + 'static,
) -> shmbus_client::Result<()> {
    let service = conn.register(name, &[MethodSpec::new(method, mode)])?;
    say("ready".into());
    let mut running = Vec::new();
    while let Some(call) = service.next()? {
        let handler = handler.clone();
        running.push(std::thread::spawn(move || {
            if let Err(e) = handler(call) {
                say(format!("handler-error {e}"));
            }
        }));
        running.retain(|h| !h.is_finished());
    }
    // The broker is gone; calls in flight finish over their own ports.
    for h in running {
        let _ = h.join();
    }
    Ok(())
}

fn numbers(mut call: IncomingCall, delay: Option<Duration>) -> shmbus_client::Result<()> {
    let count: u64 = call.args_typed().unwrap_or(0);
    let transport = call.transport();
    say(format!("transport {transport:?}"));
    let tx = call.sender().expect("download");
    for i in 0..count {
        if let Err(e) = tx.send(&i) {
            say(format!("send-failed {e}"));
            let e2 = e.to_string();
            return call.fail(&e2);
        }
        say(format!("sent {}", i + 1));
        if let Some(d) = delay {
            std::thread::sleep(d);
        }
    }
    tx.finish()?;
    say(format!("history {:?}", tx.history()));
    let read = call_socket_bytes();
    call.reply(read.to_le_bytes().to_vec())
}

/// Bytes this process has read from its broker socket so far.
fn call_socket_bytes() -> u64 {
    CONN.get().map_or(0, |c| c.socket_bytes_read())
}

fn echo(mut call: IncomingCall) -> shmbus_client::Result<()> {
    let mut rx = call.take_receiver().expect("bidirectional receives");
    let tx = call.sender().expect("bidirectional sends");
    while let Some(item) = rx.recv_bytes()? {
        let mut reply = b"Echo: ".to_vec();
        reply.extend_from_slice(&item);
        tx.send_bytes(&reply)?;
    }
    tx.finish()?;
    call.reply(Vec::new())
}

fn sink(mut call: IncomingCall, delay: Option<Duration>) -> shmbus_client::Result<()> {
    let rx = call.receiver().expect("upload receives");
    let (mut count, mut hash) = (0u64, 0u64);
    while let Some(item) = rx.recv_in_place()? {
        count += item.len() as u64;
        hash = fnv1a(hash, &item);
        drop(item);
        if let Some(d) = delay {
            std::thread::sleep(d);
        }
    }
    let history = format!("{:?}", rx.history());
    say(format!("history {history}"));
    call.reply(format!("{count},{hash}").into_bytes())
}

fn failing(mut call: IncomingCall, answer_ok: bool) -> shmbus_client::Result<()> {
    let count: u64 = call.args_typed().unwrap_or(0);
    let tx = call.sender().expect("download");
    for i in 0..count {
        tx.send(&i)?;
    }
    tx.fail("Processing failed")?;
    if answer_ok {
        return call.reply(b"fine".to_vec());
    }
    call.fail("Stream processing failed")
}

fn endless(mut call: IncomingCall, stall: Option<Duration>) -> shmbus_client::Result<()> {
    let tx = call.sender().expect("download");
    if let Some(limit) = stall {
        tx.set_wait_policy(shmbus_client::WaitPolicy::BLOCKING.with_stall_timeout(limit));
    }
    let mut i = 0u64;
    loop {
        match tx.send(&i) {
            Ok(()) => i += 1,
            Err(Error::Cancelled) => {
                say(format!("cancelled-after {i}"));
                say(format!("history {:?}", tx.history()));
                break;
            }
            Err(e) => {
                say(format!("send-failed {e}"));
                break;
            }
        }
    }
    call.reply(Vec::new())
}

fn add(call: IncomingCall) -> shmbus_client::Result<()> {
    let (a, b): (u64, u64) = call.args_typed()?;
    say(format!("caller-pid {}", call.caller_pid()));
    call.reply((a + b).to_le_bytes().to_vec())
}

/// Opens `n` download streams and keeps them open until killed.
fn hold(
    conn: &Connection,
    name: &str,
    method: &str,
    n: usize,
    ring: u32,
) -> shmbus_client::Result<()> {
    let mut calls = Vec::new();
    for i in 0..n {
        let call = conn
            .call(name, method)
            .mode(StreamMode::Download)
            .args_typed(&u64::MAX)?
            .credit(CreditSpec::items(4))
            .ring_size(ring)
            .start()?;
        calls.push(call);
        say(format!("opened {}", i + 1));
    }
    say("holding".into());
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Opens `n` more connections to the broker and keeps them open until killed.
fn connections(n: usize) -> shmbus_client::Result<()> {
    let mut conns = Vec::new();
    for i in 0..n {
        conns.push(Connection::connect_default()?);
        say(format!("connected {}", i + 1));
    }
    say("holding".into());
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn consume(
    conn: &Connection,
    name: &str,
    method: &str,
    transport: &str,
) -> shmbus_client::Result<()> {
    let transport = match transport {
        "shm" => TransportPreference::SharedMemory,
        "socket" => TransportPreference::Socket,
        _ => TransportPreference::Auto,
    };
    let mut call = conn
        .call(name, method)
        .mode(StreamMode::Download)
        .args_typed(&u64::MAX)?
        .transport(transport)
        .credit(CreditSpec::items(64))
        .start()?;
    say("open".into());
    let rx = call.receiver().expect("download");
    let mut n = 0u64;
    loop {
        match rx.recv::<u64>() {
            Ok(Some(_)) => {
                n += 1;
                if n.is_multiple_of(1000) {
                    say(format!("received {n}"));
                }
            }
            Ok(None) => break,
            Err(e) => {
                say(format!("stream-error {e}"));
                return Err(e);
            }
        }
    }
    call.finish()?;
    say(format!("done {n}"));
    Ok(())
}
