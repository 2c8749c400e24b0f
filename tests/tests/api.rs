//! The client API as a first-time user relies on it: finishing a call never
//! waits on the caller's own stream, a call without `.mode()` has the
//! method's halves, errors keep their variant through `Read`/`Write`, a
//! wrong item type is an error, a cancel stops at once and can come from a
//! handle, and a collected batch can be capped. Real broker, real service
//! processes, over both transports.

use std::io::{Read, Write};
use std::sync::mpsc;
use std::time::Duration;

use shmbus_client::{CreditSpec, Error, ErrorCode, MethodSpec, StreamMode, Transport, TryRecv};
use shmbus_tests::{both_transports, fnv1a, pref, Broker, Peer};

const SEC: Duration = Duration::from_secs(1);

/// Runs `f` on its own thread and fails the test if it has not returned
/// within `limit`: the bugs these tests catch are hangs.
fn within<T: Send + 'static>(
    limit: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => v,
        Err(_) => panic!("{what}: still waiting after {limit:?}"),
    }
}

both_transports!(
    finishing_an_upload_ends_the_calls_own_sender,
    finishing_a_bidirectional_call_ends_and_drains_its_halves,
    start_without_mode_comes_back_with_the_methods_halves,
    errors_through_read_keep_their_variant,
    a_cancelled_read_to_end_returns_instead_of_retrying,
    a_wrong_item_type_is_a_codec_error,
    a_cancel_handle_stops_taken_halves_from_another_thread,
    a_failed_stream_and_the_calls_result_are_separate,
    collect_limit_cancels_a_stream_past_its_limit,
);

fn finishing_an_upload_ends_the_calls_own_sender(t: Transport) {
    let broker = Broker::start();
    let _peer = Peer::serve(&broker, &["sink", "store"]);
    let conn = broker.connect();
    let mut call = conn
        .call("store", "sink")
        .transport(pref(t))
        .start()
        .unwrap();
    let data = vec![7u8; 300_000];
    call.sender().unwrap().write_all(&data).unwrap();
    // No Sender::finish: finishing the call ends the stream it still holds.
    let result = within(10 * SEC, "Call::finish of an upload", move || call.finish());
    let expect = format!("{},{}", data.len(), fnv1a(0, &data));
    assert_eq!(String::from_utf8(result.unwrap()).unwrap(), expect);
}

fn finishing_a_bidirectional_call_ends_and_drains_its_halves(t: Transport) {
    let broker = Broker::start();
    let _peer = Peer::serve(&broker, &["echo", "echo"]);
    let conn = broker.connect();
    let mut call = conn
        .call("echo", "echo")
        .credit(CreditSpec::items(4))
        .transport(pref(t))
        .start()
        .unwrap();
    // More echoes than the credit lets the service send unread; none read.
    let tx = call.sender().unwrap();
    for i in 0..3u32 {
        tx.send_bytes(&i.to_le_bytes()).unwrap();
    }
    let result = within(10 * SEC, "Call::finish of an echo", move || call.finish());
    assert_eq!(result.unwrap(), Vec::<u8>::new());
}

fn start_without_mode_comes_back_with_the_methods_halves(t: Transport) {
    let broker = Broker::start();
    let _numbers = Peer::serve(&broker, &["numbers", "nums"]);
    let _sink = Peer::serve(&broker, &["sink", "store"]);
    let _echo = Peer::serve(&broker, &["echo", "echo"]);
    let _add = Peer::serve(&broker, &["unary", "math"]);
    let conn = broker.connect();
    let start = |service: &str, method: &str| {
        conn.call(service, method)
            .args_typed(&3u64)
            .unwrap()
            .transport(pref(t))
            .start()
            .unwrap()
    };

    let mut down = start("nums", "numbers");
    assert!(down.sender().is_none());
    let rx = down.receiver().expect("a download has a receiver");
    assert_eq!(rx.recv::<u64>().unwrap(), Some(0));
    down.finish().unwrap();

    let mut up = start("store", "sink");
    assert!(up.receiver().is_none());
    up.sender()
        .expect("an upload has a sender")
        .send_bytes(b"abc")
        .unwrap();
    let answer = up.finish().unwrap();
    assert_eq!(
        String::from_utf8(answer).unwrap(),
        format!("3,{}", fnv1a(0, b"abc"))
    );

    let mut both = start("echo", "echo");
    assert!(both.sender().is_some() && both.receiver().is_some());
    both.finish().unwrap();

    // A unary method: start returns once the answer is in.
    let sum = conn
        .call("math", "add")
        .args_typed(&(2u64, 3u64))
        .unwrap()
        .start()
        .unwrap();
    assert_eq!(sum.finish().unwrap(), 5u64.to_le_bytes());

    // A mode that does not match fails at start, naming both modes.
    let err = conn
        .call("nums", "numbers")
        .mode(StreamMode::Upload)
        .start()
        .err()
        .expect("a mismatched mode fails at start");
    assert_eq!(err.code(), Some(ErrorCode::NoSuchMethod), "{err}");
    assert!(err.to_string().contains("Download"), "{err}");
}

fn errors_through_read_keep_their_variant(t: Transport) {
    let broker = Broker::start();
    let _failing = Peer::serve(&broker, &["failing", "bad"]);
    let mut endless = Peer::serve(&broker, &["endless", "long"]);
    let conn = broker.connect();

    let mut call = conn
        .call("bad", "fail")
        .args_typed(&5u64)
        .unwrap()
        .transport(pref(t))
        .start()
        .unwrap();
    let mut rx = call.take_receiver().unwrap();
    let mut all = Vec::new();
    // `?` from io::Result into shmbus_client::Result, as an application does.
    let mut read_all = || -> shmbus_client::Result<usize> { Ok(rx.read_to_end(&mut all)?) };
    let err = read_all().unwrap_err();
    assert!(
        matches!(&err, Error::Stream(m) if m == "Processing failed"),
        "{err:?}"
    );
    assert_eq!(all.len(), 5, "every item before the error arrived");

    let mut call = conn
        .call("long", "endless")
        .credit(CreditSpec::items(8))
        .transport(pref(t))
        .start()
        .unwrap();
    let mut rx = call.take_receiver().unwrap();
    assert!(rx.recv::<u64>().unwrap().is_some());
    endless.kill();
    let err: Error = within(10 * SEC, "read after the service died", move || {
        let mut sink = Vec::new();
        rx.read_to_end(&mut sink).unwrap_err().into()
    });
    assert!(matches!(err, Error::PeerGone(_)), "{err:?}");
}

fn a_cancelled_read_to_end_returns_instead_of_retrying(t: Transport) {
    let broker = Broker::start();
    let _peer = Peer::serve(&broker, &["endless", "long"]);
    let conn = broker.connect();
    let mut call = conn
        .call("long", "endless")
        .credit(CreditSpec::items(16))
        .transport(pref(t))
        .start()
        .unwrap();
    let mut rx = call.take_receiver().unwrap();
    let (ready_tx, ready_rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        assert!(rx.recv::<u64>().unwrap().is_some());
        ready_tx.send(()).unwrap();
        let mut sink = Vec::new();
        let err = rx.read_to_end(&mut sink).unwrap_err();
        (err.kind(), Error::from(err))
    });
    ready_rx.recv_timeout(10 * SEC).unwrap();
    call.cancel().unwrap();
    let (kind, err) = within(10 * SEC, "read_to_end after a cancel", move || {
        reader.join().unwrap()
    });
    assert!(matches!(err, Error::Cancelled), "{err:?}");
    assert_ne!(
        kind,
        std::io::ErrorKind::Interrupted,
        "io::copy would retry it forever"
    );
    let result = call.finish().unwrap_err();
    assert_eq!(result.code(), Some(ErrorCode::Aborted), "{result}");
}

fn a_wrong_item_type_is_a_codec_error(t: Transport) {
    let broker = Broker::start();
    let _peer = Peer::serve(&broker, &["numbers", "nums"]);
    let conn = broker.connect();
    let mut call = conn
        .call("nums", "numbers")
        .args_typed(&1000u64)
        .unwrap()
        .transport(pref(t))
        .start()
        .unwrap();
    let rx = call.receiver().unwrap();
    // u64 items 0..=127 are one byte each, which decodes as a u8 too; 128
    // is two bytes: a u8 leaves one over.
    for i in 0..128u8 {
        assert_eq!(rx.recv::<u8>().unwrap(), Some(i));
    }
    match rx.recv::<u8>() {
        Err(Error::Codec(m)) => assert!(m.contains("left over"), "{m}"),
        other => panic!("expected a codec error, got {other:?}"),
    }
    // The stream goes on: the next item read as its real type.
    assert_eq!(rx.recv::<u64>().unwrap(), Some(129));
    call.cancel().unwrap();
}

fn a_cancel_handle_stops_taken_halves_from_another_thread(t: Transport) {
    let broker = Broker::start();
    let mut peer = Peer::serve(&broker, &["endless", "long"]);
    let conn = broker.connect();
    let mut call = conn
        .call("long", "endless")
        .credit(CreditSpec::items(32))
        .transport(pref(t))
        .start()
        .unwrap();
    let cancel = call.cancel_handle();
    let mut rx = call.take_receiver().unwrap();
    let mut received = 0u64;
    let end = within(10 * SEC, "receiving until the handle cancels", move || {
        loop {
            match rx.recv::<u64>() {
                Ok(Some(_)) => {
                    received += 1;
                    if received == 100 {
                        let cancel = cancel.clone();
                        std::thread::spawn(move || cancel.cancel().unwrap())
                            .join()
                            .unwrap();
                    }
                }
                other => break (other, received, cancel.is_cancelled()),
            }
        }
    });
    assert!(matches!(end.0, Err(Error::Cancelled)), "{:?}", end.0);
    assert_eq!(end.1, 100, "no item arrives once the handle cancelled");
    assert!(end.2);
    peer.expect_line("cancelled-after", 10 * SEC);
    let err = call.finish().unwrap_err();
    assert_eq!(err.to_string(), "call aborted: cancelled by the caller");
}

fn a_failed_stream_and_the_calls_result_are_separate(t: Transport) {
    let broker = Broker::start();
    let _peer = Peer::serve(&broker, &["failing", "bad", "--answer-ok", "1"]);
    let conn = broker.connect();
    let mut call = conn
        .call("bad", "fail")
        .args_typed(&3u64)
        .unwrap()
        .transport(pref(t))
        .start()
        .unwrap();
    let rx = call.receiver().unwrap();
    for i in 0..3u64 {
        assert_eq!(rx.recv::<u64>().unwrap(), Some(i));
    }
    assert!(matches!(rx.recv::<u64>(), Err(Error::Stream(_))));
    assert_eq!(call.finish().unwrap(), b"fine");
}

fn collect_limit_cancels_a_stream_past_its_limit(t: Transport) {
    let broker = Broker::start();
    let mut peer = Peer::serve(&broker, &["endless", "long"]);
    let conn = broker.connect();
    let builder = conn
        .call("long", "endless")
        .transport(pref(t))
        .collect_limit(10_000);
    let err = within(
        10 * SEC,
        "collecting an endless stream with a limit",
        move || builder.collect::<u64>().unwrap_err(),
    );
    assert!(
        matches!(&err, Error::TooLarge(m) if m.contains("10000")),
        "{err:?}"
    );
    peer.expect_line("cancelled-after", 10 * SEC);
    // Within the limit, the same call collects.
    let items: Vec<u64> = {
        let _numbers = Peer::serve(&broker, &["numbers", "nums"]);
        conn.call("nums", "numbers")
            .args_typed(&100u64)
            .unwrap()
            .transport(pref(t))
            .collect_limit(10_000)
            .collect()
            .unwrap()
    };
    assert_eq!(items, (0..100).collect::<Vec<_>>());
}

#[test]
fn try_recv_tells_empty_from_end() {
    let broker = Broker::start();
    let _peer = Peer::serve(&broker, &["numbers", "nums"]);
    let conn = broker.connect();
    let mut call = conn
        .call("nums", "numbers")
        .args_typed(&3u64)
        .unwrap()
        .start()
        .unwrap();
    let mut rx = call.take_receiver().unwrap();
    let mut got = Vec::new();
    within(10 * SEC, "polling until the end", move || loop {
        match rx.try_recv::<u64>().unwrap() {
            TryRecv::Item(n) => got.push(n),
            TryRecv::Empty => std::thread::sleep(Duration::from_millis(1)),
            TryRecv::End => {
                assert!(rx.is_finished());
                break assert_eq!(got, [0, 1, 2]);
            }
        }
    });
    call.finish().unwrap();
}

#[test]
fn the_types_named_in_the_api_are_exported() {
    // Each of these appears in a public signature or error of the crate.
    let _: Option<(shmbus_client::CallId, shmbus_client::StreamId)> = None;
    let _: Option<shmbus_client::Direction> = None;
    let _: Option<shmbus_client::CreditError> = None;
    let _: Option<shmbus_client::RingError> = None;
    const { assert!(shmbus_client::MAX_PEER_RESULT >= 1024) };
}

#[test]
fn a_refused_second_registration_leaves_the_first_served() {
    let broker = Broker::start();
    let conn = broker.connect();
    let add = [MethodSpec::new("add", StreamMode::Unary)];
    let service = conn.register("twice", &add).unwrap();
    match conn.register("twice", &add) {
        Err(e) => assert_eq!(e.code(), Some(ErrorCode::NameTaken), "{e}"),
        Ok(_) => panic!("a second registration of one name was accepted"),
    }
    // The first registration still receives its calls.
    adds_once(&broker, service);
}

/// A caller process calls `service`'s `add`, which answers it: the sum
/// must come back.
fn adds_once(broker: &Broker, service: shmbus_client::Service) {
    let mut adder = Peer::start(broker, &["call-add", service.name()]);
    let answered = std::thread::spawn(move || {
        let call = service.next().unwrap().unwrap();
        let (a, b): (u64, u64) = call.args_typed().unwrap();
        call.reply((a + b).to_le_bytes().to_vec()).unwrap();
    });
    assert_eq!(adder.expect_line("result", 10 * SEC), "5");
    answered.join().unwrap();
}

#[test]
fn a_dropped_service_is_unregistered_and_its_name_free_again() {
    let broker = Broker::start();
    let conn = broker.connect();
    let add = [MethodSpec::new("add", StreamMode::Unary)];
    let listed = |conn: &shmbus_client::Connection| {
        let snapshot = conn.list().unwrap();
        snapshot.services.iter().any(|s| s.name == "dropped")
    };
    let service = conn.register("dropped", &add).unwrap();
    assert!(listed(&conn));
    drop(service);
    // The broker has the unregistration before anything sent after it.
    assert!(!listed(&conn), "a dropped service is still listed");
    let other = broker.connect();
    let taken = other.register("dropped", &add).unwrap();
    drop(taken);
    // The same connection may register the name again, and is served.
    adds_once(&broker, conn.register("dropped", &add).unwrap());
}

#[test]
fn calls_waiting_for_a_dropped_service_fail_instead_of_hanging() {
    let broker = Broker::start();
    let conn = broker.connect();
    let add = [MethodSpec::new("add", StreamMode::Unary)];
    let service = conn.register("dropping", &add).unwrap();
    // Its call arrives and waits, never taken with `next`.
    let mut adder = Peer::start(&broker, &["call-add", "dropping"]);
    std::thread::sleep(SEC);
    drop(service);
    let e = adder.expect_line("error", 10 * SEC);
    assert!(e.contains("no longer served"), "{e}");
}
