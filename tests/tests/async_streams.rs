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
