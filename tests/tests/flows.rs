//! Every flow of the streaming protocol, end to end: a real broker, a real
//! service process, and this test process as the caller. Each flow runs over
//! both transports.

use std::time::Duration;

use shmbus_client::{
    CreditSpec, Error, ErrorCode, StreamMode, StreamState, Transport, TransportPreference, TryRecv,
};
use shmbus_tests::{
    blocked_in_poll, both_transports, fnv1a, pattern, pref, wait_until, Broker, Peer,
};

const SEC: Duration = Duration::from_secs(1);
const SEED_PATH: [StreamState; 5] = [
    StreamState::Idle,
    StreamState::Opening,
    StreamState::Active,
    StreamState::Closing,
    StreamState::Closed,
];

both_transports!(
    pollable_descriptors_wake_an_event_loop,
    download_with_slow_consumer_blocks_the_producer_at_the_high_water_mark,
    bidirectional_echo,
    upload_to_the_service,
    stream_error_delivers_items_then_the_error,
    cancellation_aborts_the_call,
    batch_collects_a_whole_stream,
    zero_copy_slots_and_in_place_reads,
    custom_size_strategy_returns_what_the_sender_charged,
    typed_items_decode_borrowing_from_the_receivers_copy,
);

fn download_with_slow_consumer_blocks_the_producer_at_the_high_water_mark(t: Transport) {
    let broker = Broker::start();
    let mut peer = Peer::serve(&broker, &["numbers", "nums"]);
    let conn = broker.connect();
    let hwm = 8u64;
    let mut call = conn
        .call("nums", "numbers")
        .mode(StreamMode::Download)
        .args_typed(&200u64)
        .unwrap()
        .credit(CreditSpec::items(hwm))
        .transport(pref(t))
        .start()
        .unwrap();
    assert_eq!(call.transport(), Some(t));
    let rx = call.receiver().unwrap();
    let mut next = 0u64;
    for checkpoint in [10u64, 50, 120] {
        while next < checkpoint {
            assert_eq!(rx.recv::<u64>().unwrap(), Some(next));
            next += 1;
        }
        // Wait until the producer has run as far as the credit granted so
        // far allows (it cannot send past it), then look.
        let limit = next + rx.credit_outstanding();
        let mut sent = 0u64;
        wait_until(10 * SEC, || {
            sent = peer.latest("sent").map_or(0, |s| s.parse().unwrap());
            sent >= limit
        });
        assert!(
            sent <= next + hwm,
            "producer sent {sent} with {next} consumed and hwm {hwm}"
        );
        assert!(
            sent >= next + hwm / 2,
            "producer stopped early: sent {sent}, consumed {next}"
        );
    }
    while let Some(v) = rx.recv::<u64>().unwrap() {
        assert_eq!(v, next);
        next += 1;
    }
    assert_eq!(next, 200);
    assert_eq!(rx.history(), SEED_PATH);
    call.finish().unwrap();
    let history = peer.expect_line("history", 10 * SEC);
    assert_eq!(history, "[Idle, Opening, Active, Closing, Closed]");
}

fn bidirectional_echo(t: Transport) {
    let broker = Broker::start();
    let _peer = Peer::serve(&broker, &["echo", "echo"]);
    let conn = broker.connect();
    let mut call = conn
        .call("echo", "echo")
        .mode(StreamMode::Bidirectional)
        .credit(CreditSpec::items(15))
        .transport(pref(t))
        .start()
        .unwrap();
    let mut tx = call.take_sender().unwrap();
    let mut rx = call.take_receiver().unwrap();
    for word in ["Hello", "World"] {
        tx.send_bytes(word.as_bytes()).unwrap();
        assert_eq!(
            rx.recv_bytes().unwrap().unwrap(),
            format!("Echo: {word}").into_bytes()
        );
    }
    // Many in flight at once, more than the high-water mark.
    let writer = std::thread::spawn(move || {
        for i in 0..500u32 {
            tx.send_bytes(&i.to_le_bytes()).unwrap();
        }
        tx.finish().unwrap();
        tx
    });
    for i in 0..500u32 {
        let mut expect = b"Echo: ".to_vec();
        expect.extend_from_slice(&i.to_le_bytes());
        assert_eq!(rx.recv_bytes().unwrap().unwrap(), expect);
    }
    assert_eq!(rx.recv_bytes().unwrap(), None);
    let tx = writer.join().unwrap();
    assert_eq!(tx.history(), SEED_PATH);
    assert_eq!(rx.history(), SEED_PATH);
    call.finish().unwrap();
}

/// A bidirectional call to the test peer's echo, with default credit.
fn echo_call(conn: &shmbus_client::Connection, t: Transport) -> shmbus_client::Call {
    conn.call("echo", "echo")
        .mode(StreamMode::Bidirectional)
        .transport(pref(t))
        .start()
        .unwrap()
}

fn typed_items_decode_borrowing_from_the_receivers_copy(t: Transport) {
    let broker = Broker::start();
    let _peer = Peer::serve(&broker, &["echo", "echo"]);
    let conn = broker.connect();
    let mut call = echo_call(&conn, t);
    let mut tx = call.take_sender().unwrap();
    let mut rx = call.take_receiver().unwrap();
    let words = ["alpha", "", "gamma δ", "a longer word than the others"];
    for (i, word) in words.iter().enumerate() {
        tx.send(&(*word, i as u32)).unwrap();
    }
    tx.finish().unwrap();
    // The echo puts six bytes ("Echo: ") in front; a fixed-size array
    // decodes them, then the string borrows from the receiver's copy.
    let mut i = 0;
    while let Some((prefix, word, n)) = rx.recv_borrowed::<([u8; 6], &str, u32)>().unwrap() {
        assert_eq!(&prefix, b"Echo: ");
        assert_eq!((word, n), (words[i], i as u32));
        i += 1;
    }
    assert_eq!(i, words.len());
    call.finish().unwrap();
}

fn upload_to_the_service(t: Transport) {
    let broker = Broker::start();
    let mut peer = Peer::serve(&broker, &["sink", "sink"]);
    let conn = broker.connect();
    let mut call = conn
        .call("sink", "sink")
        .mode(StreamMode::Upload)
        .credit(CreditSpec::bytes(256 * 1024))
        .transport(pref(t))
        .start()
        .unwrap();
    let tx = call.sender().unwrap();
    let (mut count, mut hash) = (0u64, 0u64);
    for i in 0..2000u64 {
        let item = pattern(i, (i as usize * 131) % 5000);
        count += item.len() as u64;
        hash = fnv1a(hash, &item);
        tx.send_bytes(&item).unwrap();
    }
    tx.finish().unwrap();
    let reply = String::from_utf8(call.finish().unwrap()).unwrap();
    assert_eq!(reply, format!("{count},{hash}"));
    assert_eq!(
        peer.expect_line("history", 10 * SEC),
        "[Idle, Opening, Active, Closing, Closed]"
    );
}

fn stream_error_delivers_items_then_the_error(t: Transport) {
    let broker = Broker::start();
    let _peer = Peer::serve(&broker, &["failing", "proc"]);
    let conn = broker.connect();
    let mut call = conn
        .call("proc", "fail")
        .mode(StreamMode::Download)
        .args_typed(&5u64)
        .unwrap()
        .transport(pref(t))
        .start()
        .unwrap();
    let rx = call.receiver().unwrap();
    for i in 0..5u64 {
        assert_eq!(rx.recv::<u64>().unwrap(), Some(i));
    }
    match rx.recv::<u64>() {
        Err(Error::Stream(m)) => assert_eq!(m, "Processing failed"),
        other => panic!("expected the stream error, got {other:?}"),
    }
    // The error sticks.
    assert!(matches!(rx.recv::<u64>(), Err(Error::Stream(_))));
    assert_eq!(rx.history(), SEED_PATH);
    match call.finish() {
        Err(Error::Remote(e)) => {
            assert_eq!(e.code, ErrorCode::Failed);
            assert_eq!(e.message, "Stream processing failed");
        }
        other => panic!("expected an error result, got {other:?}"),
    }
}

fn cancellation_aborts_the_call(t: Transport) {
    let broker = Broker::start();
    let mut peer = Peer::serve(&broker, &["endless", "long"]);
    let conn = broker.connect();
    let mut call = conn
        .call("long", "endless")
        .mode(StreamMode::Download)
        .credit(CreditSpec::items(32))
        .transport(pref(t))
        .start()
        .unwrap();
    let rx = call.receiver().unwrap();
    for i in 0..100u64 {
        assert_eq!(rx.recv::<u64>().unwrap(), Some(i));
    }
    // Give the service time to fill its credit window, so that items are in
    // flight when the call is cancelled (the check below holds either way).
    std::thread::sleep(Duration::from_millis(50));
    call.cancel().unwrap();
    // The service's next send fails as cancelled; it acknowledges with stream-cancel.
    let after: u64 = peer
        .expect_line("cancelled-after", 10 * SEC)
        .parse()
        .unwrap();
    assert!(after >= 100);
    assert_eq!(
        peer.expect_line("history", 10 * SEC),
        "[Idle, Opening, Active, Closing, Closed]"
    );
    // Items in flight when the call was cancelled are dropped: none arrives.
    let rx = call.receiver().unwrap();
    let end = rx.recv::<u64>();
    assert!(matches!(end, Err(Error::Cancelled)), "got {end:?}");
    match call.finish() {
        Err(Error::Remote(e)) => {
            assert_eq!(e.code, ErrorCode::Aborted);
            assert_eq!(e.to_string(), "call aborted: cancelled by the caller");
        }
        other => panic!("expected aborted, got {other:?}"),
    }
}

fn batch_collects_a_whole_stream(t: Transport) {
    let broker = Broker::start();
    let _peer = Peer::serve(&broker, &["numbers", "nums"]);
    let conn = broker.connect();
    let items = conn
        .call("nums", "numbers")
        .args_typed(&1000u64)
        .unwrap()
        .credit(CreditSpec::items(16))
        .transport(pref(t))
        .collect_bytes()
        .unwrap();
    let values: Vec<u64> = items
        .iter()
        .map(|b| postcard::from_bytes(b).unwrap())
        .collect();
    assert_eq!(values, (0..1000).collect::<Vec<_>>());
    // The same stream, typed.
    let typed: Vec<u64> = conn
        .call("nums", "numbers")
        .args_typed(&1000u64)
        .unwrap()
        .transport(pref(t))
        .collect()
        .unwrap();
    assert_eq!(typed, values);
}

fn zero_copy_slots_and_in_place_reads(t: Transport) {
    let broker = Broker::start();
    let _peer = Peer::serve(&broker, &["sink", "sink"]);
    let conn = broker.connect();
    let mut call = conn
        .call("sink", "sink")
        .mode(StreamMode::Upload)
        .credit(CreditSpec::bytes(64 * 1024))
        .transport(pref(t))
        .start()
        .unwrap();
    let tx = call.sender().unwrap();
    let (mut count, mut hash) = (0u64, 0u64);
    for i in 0..300u64 {
        let want = 1000 + (i as usize % 7) * 100;
        let mut slot = tx.reserve(4096).unwrap();
        let data = pattern(i, want);
        slot.buf()[..want].copy_from_slice(&data);
        slot.commit(want).unwrap();
        count += want as u64;
        hash = fnv1a(hash, &data);
    }
    tx.finish().unwrap();
    let reply = String::from_utf8(call.finish().unwrap()).unwrap();
    assert_eq!(reply, format!("{count},{hash}"));
}

fn custom_size_strategy_returns_what_the_sender_charged(t: Transport) {
    let broker = Broker::start();
    let _peer = Peer::serve(&broker, &["echo", "echo"]);
    let conn = broker.connect();
    let mut call = conn
        .call("echo", "echo")
        .mode(StreamMode::Bidirectional)
        .credit(CreditSpec::custom(100))
        .transport(pref(t))
        .start()
        .unwrap();
    let mut tx = call.take_sender().unwrap();
    // Charge an item 10 per started 8 bytes.
    tx.set_size_fn(|d| 10 * (d.len() as u64).div_ceil(8).max(1));
    let mut rx = call.take_receiver().unwrap();
    tx.send_bytes(b"0123456789abcdef").unwrap();
    let item = rx.recv_in_place().unwrap().unwrap();
    // The echo service charges its reply with the default custom charge (1).
    assert_eq!(&item[..], b"Echo: 0123456789abcdef");
    drop(item);
    assert!(tx.credit_available() <= 100 - 20);
    tx.finish().unwrap();
    assert_eq!(rx.recv_bytes().unwrap(), None);
    call.finish().unwrap();
}

#[test]
fn many_concurrent_streams_share_one_connection() {
    let broker = Broker::start();
    let _peer = Peer::serve(&broker, &["numbers", "nums"]);
    let conn = broker.connect();
    let workers: Vec<_> = (0..16u64)
        .map(|i| {
            let conn = conn.clone();
            std::thread::spawn(move || {
                let t = if i % 2 == 0 {
                    TransportPreference::SharedMemory
                } else {
                    TransportPreference::Socket
                };
                let mut call = conn
                    .call("nums", "numbers")
                    .mode(StreamMode::Download)
                    .args_typed(&(5000 + i))
                    .unwrap()
                    .credit(CreditSpec::items(32))
                    .ring_size(64 << 10)
                    .transport(t)
                    .start()
                    .unwrap();
                let next = count_in_order(call.receiver().unwrap());
                call.finish().unwrap();
                next
            })
        })
        .collect();
    for (i, w) in workers.into_iter().enumerate() {
        assert_eq!(w.join().unwrap(), 5000 + i as u64);
    }
}

/// Receives `0, 1, 2, …` to the end of the stream; returns how many.
fn count_in_order(rx: &mut shmbus_client::Receiver) -> u64 {
    let mut next = 0;
    while let Some(v) = rx.recv::<u64>().unwrap() {
        assert_eq!(v, next);
        next += 1;
    }
    next
}

/// CPU time (user + system, in clock ticks) a process has used.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[test]
fn an_idle_open_stream_sleeps_in_the_kernel() {
    for t in [Transport::SharedMemory, Transport::Socket] {
        let broker = Broker::start();
        let peer = Peer::serve(&broker, &["echo", "echo"]);
        let conn = broker.connect();
        let mut call = echo_call(&conn, t);
        call.sender().unwrap().send_bytes(b"x").unwrap();
        assert!(call.receiver().unwrap().recv_bytes().unwrap().is_some());
        // Both sides now wait with nothing flowing: the service for an item,
        // a thread of ours for nothing at all.
        let before = (cpu_ticks(peer.pid()), cpu_ticks(broker.pid()));
        std::thread::sleep(Duration::from_secs(2));
        let after = (cpu_ticks(peer.pid()), cpu_ticks(broker.pid()));
        // 2 s of spinning would be ~200 ticks; a sleeping peer uses ~0.
        assert!(
            after.0 - before.0 <= 2,
            "{t:?}: service used {} ticks idle",
            after.0 - before.0
        );
        assert!(
            after.1 - before.1 <= 2,
            "{t:?}: broker used {} ticks idle",
            after.1 - before.1
        );
        call.sender().unwrap().finish().unwrap();
        assert!(call.receiver().unwrap().recv_bytes().unwrap().is_none());
        call.finish().unwrap();
    }
}

fn pollable_descriptors_wake_an_event_loop(t: Transport) {
    use std::os::fd::AsFd;
    let broker = Broker::start();
    let _peer = Peer::serve(&broker, &["echo", "echo"]);
    let conn = broker.connect();
    let mut call = conn
        .call("echo", "echo")
        .mode(StreamMode::Bidirectional)
        .credit(CreditSpec::items(4))
        .transport(pref(t))
        .start()
        .unwrap();
    let mut tx = call.take_sender().unwrap();
    let mut rx = call.take_receiver().unwrap();
    // SAFETY: gettid(2) has no preconditions.
    let (pid, tid) = (std::process::id(), unsafe { libc::gettid() } as u32);
    for round in 0..20u32 {
        assert!(
            matches!(rx.try_recv_in_place().unwrap(), TryRecv::Empty),
            "nothing sent yet"
        );
        let waker = std::thread::spawn(move || {
            // Send only once the test thread sleeps in poll: the item must wake it.
            wait_until(10 * SEC, || blocked_in_poll(pid, tid));
            tx.send_bytes(&round.to_le_bytes()).unwrap();
            tx
        });
        // An event loop's view: poll the descriptor, then try again.
        let fd = rx
            .pollable_fd()
            .unwrap()
            .as_fd()
            .try_clone_to_owned()
            .unwrap();
        let ready = shmbus::sys::wait_readable(fd.as_fd(), Some(Duration::from_secs(5))).unwrap();
        assert_eq!(
            ready,
            shmbus::sys::Readiness::Readable,
            "round {round}: no wake-up"
        );
        tx = waker.join().unwrap();
        let item = loop {
            if let TryRecv::Item(item) = rx.try_recv_in_place().unwrap() {
                break item.to_vec();
            }
            shmbus::sys::wait_readable(fd.as_fd(), Some(Duration::from_secs(5))).unwrap();
        };
        let mut expect = b"Echo: ".to_vec();
        expect.extend_from_slice(&round.to_le_bytes());
        assert_eq!(item, expect);
    }
    // The sending side too: fill the credit, then wait on the descriptor.
    let mut sent = 0;
    while tx.try_feed_bytes(b"fill").unwrap() {
        sent += 1;
        assert!(sent < 1000, "credit never ran out");
    }
    let fd = tx
        .pollable_fd()
        .unwrap()
        .as_fd()
        .try_clone_to_owned()
        .unwrap();
    let drain = std::thread::spawn(move || {
        for _ in 0..sent {
            rx.recv_bytes().unwrap().unwrap();
        }
        rx
    });
    tx.flush().unwrap();
    let ready = shmbus::sys::wait_readable(fd.as_fd(), Some(Duration::from_secs(5))).unwrap();
    assert_eq!(
        ready,
        shmbus::sys::Readiness::Readable,
        "sender never woken"
    );
    let mut rx = drain.join().unwrap();
    tx.finish().unwrap();
    while rx.recv_bytes().unwrap().is_some() {}
    call.finish().unwrap();
}

/// One connection both serves and calls, from several threads at once: the
/// thread waiting in `next` reads the socket for every other waiter (their
/// stream-opens and results), and hands the reading over when it returns.
#[test]
fn a_connection_serving_and_calling_from_many_threads() {
    let broker = Broker::start();
    let _peer = Peer::serve(&broker, &["numbers", "nums"]);
    let conn = broker.connect();
    let service = conn
        .register(
            "squares",
            &[shmbus_client::MethodSpec::new("square", StreamMode::Unary)],
        )
        .unwrap();
    let server = std::thread::spawn(move || {
        let mut served = 0u64;
        while let Some(call) = service.next().unwrap() {
            let n: u64 = call.args_typed().unwrap();
            call.reply((n * n).to_le_bytes().to_vec()).unwrap();
            served += 1;
            if served == 4 * 40 {
                break;
            }
        }
        served
    });
    let workers: Vec<_> = (0..4u64)
        .map(|w| {
            let conn = conn.clone();
            std::thread::spawn(move || {
                for i in 0..40u64 {
                    let n = w * 1000 + i;
                    let got = conn
                        .call("squares", "square")
                        .args_typed(&n)
                        .unwrap()
                        .unary()
                        .unwrap();
                    assert_eq!(got, (n * n).to_le_bytes());
                    let mut call = conn
                        .call("nums", "numbers")
                        .mode(StreamMode::Download)
                        .args_typed(&(i + 1))
                        .unwrap()
                        .transport(if i % 2 == 0 {
                            TransportPreference::SharedMemory
                        } else {
                            TransportPreference::Socket
                        })
                        .start()
                        .unwrap();
                    assert_eq!(count_in_order(call.receiver().unwrap()), i + 1);
                    call.finish().unwrap();
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(server.join().unwrap(), 160);
}
