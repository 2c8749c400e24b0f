//! The tokio stream halves (`AsyncReceiver`, `AsyncSender`, feature
//! `tokio`) against real processes and a real broker: async callers with
//! blocking services and the reverse, over shared memory and the socket,
//! on the multi-thread and the current-thread runtime; futures dropped
//! while they wait lose and duplicate nothing; a deadline ends a wait the
//! peer never ends.

use std::time::{Duration, Instant};

use shmbus_client::{
    AsyncReceiver, AsyncSender, Connection, CreditSpec, Error, MethodSpec, StreamMode, Transport,
    TransportPreference,
};
use shmbus_tests::{fnv1a, pattern, tokio_runtimes, Broker, Peer};

const SEC: Duration = Duration::from_secs(1);
const TRANSPORTS: [TransportPreference; 2] = [
    TransportPreference::SharedMemory,
    TransportPreference::Socket,
];

/// Starts a call on a blocking thread (the connection's calls block).
async fn start(
    conn: &Connection,
    service: &str,
    method: &str,
    args: (u64, u64),
    transport: TransportPreference,
    credit: CreditSpec,
) -> shmbus_client::Call {
    let conn = conn.clone();
    let (service, method) = (service.to_string(), method.to_string());
    tokio::task::spawn_blocking(move || {
        conn.call(&service, &method)
            .args_typed(&args)
            .unwrap()
            .transport(transport)
            .credit(credit)
            .start()
            .unwrap()
    })
    .await
    .unwrap()
}

async fn finish(call: shmbus_client::Call) -> shmbus_client::Result<Vec<u8>> {
    tokio::task::spawn_blocking(move || call.finish())
        .await
        .unwrap()
}

#[test]
fn an_async_caller_downloads_from_a_blocking_service_everywhere() {
    let broker = Broker::start();
    let _peer = Peer::serve(&broker, &["deadlines", "dl"]);
    let conn = broker.connect();
    for (name, rt) in tokio_runtimes() {
        for transport in TRANSPORTS {
            rt.block_on(async {
                // Few credits: the receiver waits, and the sender waits on it.
                let mut call = start(
                    &conn,
                    "dl",
                    "drip",
                    (20_000, 0),
                    transport,
                    CreditSpec::items(8),
                )
                .await;
                let want = match transport {
                    TransportPreference::Socket => Transport::Socket,
                    _ => Transport::SharedMemory,
                };
                assert_eq!(call.transport(), Some(want));
                let mut rx = AsyncReceiver::new(call.take_receiver().unwrap()).unwrap();
                let mut next = 0u64;
                while let Some(n) = rx.recv::<u64>().await.unwrap() {
                    assert_eq!(n, next, "{name} {transport:?}");
                    next += 1;
                }
                assert_eq!(next, 20_000, "{name} {transport:?}");
                assert_eq!(finish(call).await.unwrap(), b"drip");
            });
        }
    }
}

#[test]
fn an_async_caller_uploads_to_a_blocking_service_everywhere() {
    let broker = Broker::start();
    let _peer = Peer::serve(&broker, &["sink", "store"]);
    let conn = broker.connect();
    let data = pattern(7, 6 << 20);
    let expected = format!("{},{}", data.len(), fnv1a(0, &data));
    for (name, rt) in tokio_runtimes() {
        for transport in TRANSPORTS {
            rt.block_on(async {
                let mut call = start(
                    &conn,
                    "store",
                    "sink",
                    (0, 0),
                    transport,
                    CreditSpec::bytes(256 << 10),
                )
                .await;
                let mut tx = AsyncSender::new(call.take_sender().unwrap()).unwrap();
                // Items queued, sent (flushed) and reserved in place.
                for (i, chunk) in data.chunks(48 << 10).enumerate() {
                    match i % 3 {
                        0 => tx.feed_bytes(chunk).await.unwrap(),
                        1 => tx.send_bytes(chunk).await.unwrap(),
                        _ => {
                            let mut slot = tx.reserve(chunk.len()).await.unwrap();
                            slot.buf()[..chunk.len()].copy_from_slice(chunk);
                            slot.commit(chunk.len()).unwrap();
                        }
                    }
                }
                tx.finish().await.unwrap();
                let got = finish(call).await.unwrap();
                assert_eq!(
                    String::from_utf8(got).unwrap(),
                    expected,
                    "{name} {transport:?}"
                );
            });
        }
    }
}

#[test]
fn a_blocking_caller_downloads_from_an_async_service() {
    let broker = Broker::start();
    let conn = broker.connect();
    let service = conn
        .register("gen", &[MethodSpec::new("numbers", StreamMode::Download)])
        .unwrap();
    for (name, rt) in tokio_runtimes() {
        for arg in ["shm", "socket"] {
            let mut caller = Peer::start(&broker, &["consume", "gen", "numbers", arg]);
            let mut call = service.next().unwrap().unwrap();
            rt.block_on(async {
                let mut tx = AsyncSender::new(call.take_sender().unwrap()).unwrap();
                for i in 0..50_000u64 {
                    tx.feed(&i).await.unwrap();
                }
                tx.finish().await.unwrap();
            });
            call.reply(Vec::new()).unwrap();
            assert_eq!(
                caller.expect_line("done", 30 * SEC),
                "50000",
                "{name} {arg}"
            );
        }
    }
}

#[test]
fn both_halves_of_a_bidirectional_call_run_concurrently() {
    let broker = Broker::start();
    let _peer = Peer::serve(&broker, &["echo", "e"]);
    let conn = broker.connect();
    for (name, rt) in tokio_runtimes() {
        for transport in TRANSPORTS {
            rt.block_on(async {
                let mut call =
                    start(&conn, "e", "echo", (0, 0), transport, CreditSpec::items(4)).await;
                let mut tx = AsyncSender::new(call.take_sender().unwrap()).unwrap();
                let mut rx = AsyncReceiver::new(call.take_receiver().unwrap()).unwrap();
                let sending = async move {
                    for i in 0..2000u32 {
                        tx.send_bytes(format!("{i}").as_bytes()).await.unwrap();
                    }
                    tx.finish().await.unwrap();
                };
                let receiving = async move {
                    let mut n = 0u32;
                    while let Some(item) = rx.recv_in_place().await.unwrap() {
                        assert_eq!(&*item, format!("Echo: {n}").as_bytes(), "{name}");
                        n += 1;
                    }
                    n
                };
                let ((), n) = tokio::join!(sending, receiving);
                assert_eq!(n, 2000);
                finish(call).await.unwrap();
            });
        }
    }
}

#[test]
fn futures_dropped_while_waiting_lose_and_duplicate_nothing() {
    let broker = Broker::start();
    // A few milliseconds between items: tokio's timers tick in milliseconds.
    let _peer = Peer::serve(&broker, &["numbers", "slow", "--delay-us", "3000"]);
    let _sink = Peer::serve(&broker, &["sink", "store", "--delay-us", "3000"]);
    let conn = broker.connect();
    for (name, rt) in tokio_runtimes() {
        for transport in TRANSPORTS {
            rt.block_on(async {
                let conn2 = conn.clone();
                let mut call = tokio::task::spawn_blocking(move || {
                    conn2
                        .call("slow", "numbers")
                        .args_typed(&200u64)
                        .unwrap()
                        .transport(transport)
                        .credit(CreditSpec::items(2))
                        .start()
                        .unwrap()
                })
                .await
                .unwrap();
                let mut rx = AsyncReceiver::new(call.take_receiver().unwrap()).unwrap();
                let (mut next, mut dropped) = (0u64, 0u32);
                loop {
                    // Most of these give up before the next item comes.
                    match tokio::time::timeout(Duration::from_millis(1), rx.recv::<u64>()).await {
                        Err(_) => dropped += 1,
                        Ok(Ok(Some(n))) => {
                            assert_eq!(n, next, "{name} {transport:?}");
                            next += 1;
                        }
                        Ok(Ok(None)) => break,
                        Ok(Err(e)) => panic!("{e}"),
                    }
                }
                assert_eq!(next, 200);
                assert!(dropped > 50, "only {dropped} receives were dropped");
                finish(call).await.unwrap();
                // Sends dropped while waiting for credit: each item goes
                // whole or not at all.
                let mut call = start(
                    &conn,
                    "store",
                    "sink",
                    (0, 0),
                    transport,
                    CreditSpec::items(2),
                )
                .await;
                let mut tx = AsyncSender::new(call.take_sender().unwrap()).unwrap();
                let (mut sent, mut hash, mut bytes, mut dropped) = (0u64, 0u64, 0u64, 0u32);
                while sent < 200 {
                    let item = sent.to_le_bytes();
                    match tokio::time::timeout(Duration::from_millis(1), tx.send_bytes(&item)).await
                    {
                        Err(_) => dropped += 1,
                        Ok(r) => {
                            r.unwrap();
                            hash = fnv1a(hash, &item);
                            bytes += 8;
                            sent += 1;
                        }
                    }
                }
                tx.finish().await.unwrap();
                let got = String::from_utf8(finish(call).await.unwrap()).unwrap();
                assert!(dropped > 50, "only {dropped} sends were dropped");
                assert_eq!(got, format!("{bytes},{hash}"), "{name} {transport:?}");
            });
        }
    }
}

#[test]
fn a_deadline_ends_an_async_wait_the_peer_never_ends() {
    let broker = Broker::start();
    let _peer = Peer::serve(&broker, &["deadlines", "dl"]);
    let conn = broker.connect();
    for (name, rt) in tokio_runtimes() {
        for transport in TRANSPORTS {
            rt.block_on(async {
                let conn2 = conn.clone();
                // One item, then the service sleeps for ten seconds.
                let mut call = tokio::task::spawn_blocking(move || {
                    conn2
                        .call("dl", "drip")
                        .args_typed(&(2u64, 10_000u64))
                        .unwrap()
                        .transport(transport)
                        .timeout(Duration::from_millis(400))
                        .start()
                        .unwrap()
                })
                .await
                .unwrap();
                let started = Instant::now();
                let mut rx = AsyncReceiver::new(call.take_receiver().unwrap()).unwrap();
                assert_eq!(rx.recv::<u64>().await.unwrap(), Some(0));
                let r = rx.recv::<u64>().await;
                assert!(matches!(r, Err(Error::DeadlineExceeded)), "{name}: {r:?}");
                let at = started.elapsed();
                assert!(at < Duration::from_millis(400) + 2 * SEC, "{name}: {at:?}");
                assert!(matches!(finish(call).await, Err(Error::DeadlineExceeded)));
            });
        }
    }
}

#[test]
fn the_standard_traits_move_every_byte_and_item() {
    use futures::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let broker = Broker::start();
    let _dl = Peer::serve(&broker, &["deadlines", "dl"]);
    let _sink = Peer::serve(&broker, &["sink", "store"]);
    let conn = broker.connect();
    let n = 3000u64;
    let encoded: Vec<u8> = (0..n)
        .flat_map(|i| postcard::to_stdvec(&i).unwrap())
        .collect();
    for (name, rt) in tokio_runtimes() {
        for transport in TRANSPORTS {
            rt.block_on(async {
                // AsyncRead: the typed items' bytes, in order.
                let mut call =
                    start(&conn, "dl", "drip", (n, 0), transport, CreditSpec::items(8)).await;
                let mut rx = AsyncReceiver::new(call.take_receiver().unwrap()).unwrap();
                let mut all = Vec::new();
                rx.read_to_end(&mut all).await.unwrap();
                assert_eq!(all, encoded, "{name} {transport:?}");
                finish(call).await.unwrap();
                // Stream: the typed items themselves.
                let mut call =
                    start(&conn, "dl", "drip", (n, 0), transport, CreditSpec::items(8)).await;
                let rx = AsyncReceiver::new(call.take_receiver().unwrap()).unwrap();
                let items: Vec<u64> = rx.into_stream::<u64>().map(|r| r.unwrap()).collect().await;
                assert_eq!(items, (0..n).collect::<Vec<_>>());
                finish(call).await.unwrap();
                // AsyncWrite: bytes to the sink, byte-exact.
                let data = pattern(11, 3 << 20);
                let mut call = start(
                    &conn,
                    "store",
                    "sink",
                    (0, 0),
                    transport,
                    CreditSpec::bytes(128 << 10),
                )
                .await;
                let mut tx = AsyncSender::new(call.take_sender().unwrap()).unwrap();
                tx.write_all(&data).await.unwrap();
                tx.shutdown().await.unwrap();
                let got = String::from_utf8(finish(call).await.unwrap()).unwrap();
                assert_eq!(got, format!("{},{}", data.len(), fnv1a(0, &data)));
                // Sink: typed items, whose encodings the sink hashes.
                let mut call = start(
                    &conn,
                    "store",
                    "sink",
                    (0, 0),
                    transport,
                    CreditSpec::items(4),
                )
                .await;
                let tx = AsyncSender::new(call.take_sender().unwrap()).unwrap();
                let mut sink = tx.into_sink::<u64>();
                for i in 0..n {
                    sink.feed(i).await.unwrap();
                }
                sink.close().await.unwrap();
                let got = String::from_utf8(finish(call).await.unwrap()).unwrap();
                assert_eq!(got, format!("{},{}", encoded.len(), fnv1a(0, &encoded)));
            });
        }
    }
}

/// User plus system CPU time of `pid` (`self` for this process), in
/// clock ticks of 10 ms (`/proc/PID/stat`, fields 14 and 15).
fn cpu_ticks(pid: &str) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = stat.rsplit_once(')').unwrap().1;
    let f: Vec<u64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    f[11] + f[12]
}

#[test]
fn a_thousand_streams_on_two_workers_are_byte_exact_and_idle_for_free() {
    const STREAMS: usize = 1000;
    let broker = Broker::start();
    let peer = Peer::serve(&broker, &["deadlines", "dl"]);
    let conn = broker.connect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // Every stream: an item now, the next after 3 s of silence. The
        // calls start 50 at a time, so that all are open well within that.
        let started = std::time::Instant::now();
        let mut streams = Vec::new();
        for batch in 0..STREAMS / 50 {
            let starts = (0..50).map(|k| {
                let transport = if (batch * 50 + k) % 10 == 0 {
                    TransportPreference::Socket
                } else {
                    TransportPreference::SharedMemory
                };
                conn.call("dl", "drip")
                    .args_typed(&(2u64, 3000u64))
                    .unwrap()
                    .transport(transport)
                    .ring_size(64 << 10)
                    .credit(CreditSpec::items(4))
                    .start_async()
            });
            for call in futures::future::join_all(starts).await {
                let mut call = call.unwrap();
                let rx = AsyncReceiver::new(call.take_receiver().unwrap()).unwrap();
                streams.push((call, rx));
            }
        }
        let (first_tx, mut first_rx) = tokio::sync::mpsc::channel::<()>(STREAMS);
        let tasks: Vec<_> = streams
            .into_iter()
            .map(|(call, mut rx)| {
                let first_tx = first_tx.clone();
                tokio::spawn(async move {
                    let mut next = 0u64;
                    while let Some(n) = rx.recv::<u64>().await.unwrap() {
                        assert_eq!(n, next);
                        if next == 0 {
                            first_tx.send(()).await.unwrap();
                        }
                        next += 1;
                    }
                    assert_eq!(next, 2);
                    drop(rx);
                    call.finish_async().await
                })
            })
            .collect();
        for _ in 0..STREAMS {
            first_rx.recv().await.unwrap();
        }
        let opened = started.elapsed();
        assert!(
            opened < Duration::from_millis(2000),
            "opening {STREAMS} streams took {opened:?}: too slow to see them idle"
        );
        // All 1000 wait for their next item: this process, its runtime's
        // workers included, and the broker spend nothing meanwhile.
        let (me, broker_pid) = (cpu_ticks("self"), cpu_ticks(&broker.pid().to_string()));
        tokio::time::sleep(Duration::from_millis(700)).await;
        let (me, broker_pid) = (
            cpu_ticks("self") - me,
            cpu_ticks(&broker.pid().to_string()) - broker_pid,
        );
        assert!(me <= 2, "{me} ticks of CPU in this process while idle");
        assert_eq!(
            broker_pid, 0,
            "the broker used CPU while the streams were idle"
        );
        for t in tasks {
            t.await.unwrap().unwrap();
        }
    });
    drop(peer);
}
