//! Deadlines across real processes: a real broker, a `shmbus-testpeer
//! deadlines` service process, and this test process as the caller. A
//! deadline passing before the call is routed, in the middle of a stream
//! (on both transports), while the result is on its way, with the service
//! blocked on credit, with the caller blocked on credit, and on a unary
//! call: each ends with `DeadlineExceeded` on the side that waits, and the
//! service is told.

use std::time::{Duration, Instant};

use shmbus_client::{Connection, CreditSpec, Error, ErrorCode, TransportPreference};
use shmbus_tests::{send_signal, Broker, Peer};

const SEC: Duration = Duration::from_secs(1);
/// How late a deadline may be reported on a loaded 2-CPU machine.
const SLACK: Duration = Duration::from_millis(1500);

fn setup() -> (Broker, Peer, Connection) {
    let broker = Broker::start();
    let peer = Peer::serve(&broker, &["deadlines", "dl"]);
    let conn = broker.connect();
    (broker, peer, conn)
}

#[test]
fn a_deadline_already_past_fails_the_call_before_the_service_hears_of_it() {
    let (_broker, mut peer, conn) = setup();
    let r = conn
        .call("dl", "nap")
        .args_typed(&(0u64, 0u64))
        .unwrap()
        .deadline(Instant::now() - Duration::from_millis(1))
        .unary();
    assert!(matches!(r, Err(Error::DeadlineExceeded)), "{r:?}");
    // The next call, without a deadline, is the first the service sees.
    let r = conn
        .call("dl", "drip")
        .args_typed(&(1u64, 0u64))
        .unwrap()
        .collect::<u64>()
        .unwrap();
    assert_eq!(r, vec![0]);
    assert_eq!(peer.expect_line("incoming", 10 * SEC), "drip");
    assert_eq!(peer.expect_line("time-left", 10 * SEC), "none");
    assert_eq!(
        peer.seen_lines()
            .iter()
            .filter(|l| l.starts_with("incoming"))
            .count(),
        1,
        "the expired call reached the service"
    );
}

fn mid_stream(transport: TransportPreference) {
    let (_broker, mut peer, conn) = setup();
    let timeout = Duration::from_millis(400);
    let started = Instant::now();
    let mut call = conn
        .call("dl", "drip")
        .args_typed(&(1000u64, 20u64))
        .unwrap()
        .transport(transport)
        .timeout(timeout)
        .start()
        .unwrap();
    let rx = call.receiver().unwrap();
    let mut got = 0u64;
    let err = loop {
        match rx.recv::<u64>() {
            Ok(Some(n)) => {
                assert_eq!(n, got, "items in order, none lost");
                got += 1;
            }
            Ok(None) => panic!("the stream ended instead of failing"),
            Err(e) => break e,
        }
    };
    let at = started.elapsed();
    assert!(matches!(err, Error::DeadlineExceeded), "{err:?}");
    assert!(got >= 3, "items before the deadline arrived: {got}");
    assert!(
        at >= timeout - Duration::from_millis(5),
        "failed early: {at:?}"
    );
    assert!(at < timeout + SLACK, "failed late: {at:?}");
    assert!(matches!(call.finish(), Err(Error::DeadlineExceeded)));
    // The service heard of the deadline, then of its passing.
    let left: u64 = peer.expect_line("time-left-ms", 10 * SEC).parse().unwrap();
    assert!(left <= 400 && left > 100, "time left {left} ms");
    let failed = peer.expect_line("send-failed", 10 * SEC);
    assert_eq!(failed, "deadline exceeded");
}

#[test]
fn a_deadline_mid_stream_over_shared_memory_fails_both_sides() {
    mid_stream(TransportPreference::SharedMemory);
}

#[test]
fn a_deadline_mid_stream_over_the_socket_fails_both_sides() {
    mid_stream(TransportPreference::Socket);
}

#[test]
fn a_deadline_passing_while_the_result_is_on_its_way_fails_the_call() {
    let (_broker, mut peer, conn) = setup();
    let mut call = conn
        .call("dl", "late")
        .args_typed(&(5u64, 800u64))
        .unwrap()
        .timeout(Duration::from_millis(300))
        .start()
        .unwrap();
    let rx = call.receiver().unwrap();
    let mut items = Vec::new();
    while let Some(n) = rx.recv::<u64>().unwrap() {
        items.push(n);
    }
    assert_eq!(items, vec![0, 1, 2, 3, 4], "the whole stream arrived");
    peer.expect_line("stream-finished", 10 * SEC);
    let started = Instant::now();
    let r = call.finish();
    assert!(matches!(r, Err(Error::DeadlineExceeded)), "{r:?}");
    assert_eq!(r.unwrap_err().code(), Some(ErrorCode::DeadlineExceeded));
    assert!(started.elapsed() < SLACK);
}

/// A call to the service's endless `flood` with credit for 4 items and
/// 300 ms to live.
fn flood_for_300ms(conn: &Connection) -> shmbus_client::Call {
    conn.call("dl", "flood")
        .args_typed(&(0u64, 0u64))
        .unwrap()
        .credit(CreditSpec::items(4))
        .timeout(Duration::from_millis(300))
        .start()
        .unwrap()
}

#[test]
fn a_service_blocked_on_credit_is_stopped_at_the_deadline() {
    let (_broker, mut peer, conn) = setup();
    let started = Instant::now();
    let call = flood_for_300ms(&conn);
    // The caller reads nothing: the service fills its credit and waits.
    let failed = peer.expect_line("send-failed", 10 * SEC);
    assert_eq!(failed, "deadline exceeded");
    assert!(started.elapsed() < Duration::from_millis(300) + SLACK);
    let r = call.finish();
    assert!(matches!(r, Err(Error::DeadlineExceeded)), "{r:?}");
}

#[test]
fn a_result_that_reaches_a_stalled_broker_after_the_deadline_loses_to_it() {
    let (broker, mut peer, conn) = setup();
    let call = flood_for_300ms(&conn);
    assert_eq!(peer.expect_line("incoming", 10 * SEC), "flood");
    // The broker sleeps through the deadline; the service's own deadline
    // fails its send, and it answers "flood" to a broker that reads the
    // answer only once it wakes, together with the deadline.
    send_signal(broker.pid(), libc::SIGSTOP);
    let failed = peer.expect_line("send-failed", 10 * SEC);
    assert_eq!(failed, "deadline exceeded");
    std::thread::sleep(Duration::from_millis(200));
    send_signal(broker.pid(), libc::SIGCONT);
    let r = call.finish();
    assert!(matches!(r, Err(Error::DeadlineExceeded)), "{r:?}");
}

#[test]
fn a_caller_blocked_on_credit_is_stopped_at_the_deadline() {
    let (_broker, mut peer, conn) = setup();
    let mut call = conn
        .call("dl", "drain")
        .args_typed(&(0u64, 2000u64))
        .unwrap()
        .credit(CreditSpec::items(4))
        .timeout(Duration::from_millis(300))
        .start()
        .unwrap();
    let tx = call.sender().unwrap();
    let started = Instant::now();
    let mut sent = 0u64;
    let err = loop {
        match tx.send(&sent) {
            Ok(()) => sent += 1,
            Err(e) => break e,
        }
    };
    assert!(matches!(err, Error::DeadlineExceeded), "{err:?}");
    assert_eq!(sent, 4, "credit for four items, then the wait");
    assert!(started.elapsed() < Duration::from_millis(300) + SLACK);
    assert!(matches!(call.finish(), Err(Error::DeadlineExceeded)));
    // The service, reading late, gets the four items, then the reason.
    let ended = peer.expect_line("recv-ended", 10 * SEC);
    assert!(
        ended.contains("deadline") || ended.contains("cancelled"),
        "service saw {ended:?}"
    );
}

#[test]
fn a_unary_call_past_its_deadline_fails_without_waiting_for_the_answer() {
    let (_broker, mut peer, conn) = setup();
    let started = Instant::now();
    let r = conn
        .call("dl", "nap")
        .args_typed(&(0u64, 3000u64))
        .unwrap()
        .timeout(Duration::from_millis(200))
        .unary();
    let at = started.elapsed();
    assert!(matches!(r, Err(Error::DeadlineExceeded)), "{r:?}");
    assert!(at >= Duration::from_millis(195), "{at:?}");
    assert!(at < Duration::from_millis(200) + SLACK, "{at:?}");
    assert_eq!(peer.expect_line("incoming", 10 * SEC), "nap");
    let left: u64 = peer.expect_line("time-left-ms", 10 * SEC).parse().unwrap();
    assert!(left <= 200, "{left}");
    // A call with time to spare still succeeds.
    let r = conn
        .call("dl", "nap")
        .args_typed(&(0u64, 10u64))
        .unwrap()
        .timeout(10 * SEC)
        .unary()
        .unwrap();
    assert_eq!(r, b"awake");
}

/// A caller that reads only after its deadline, when the service's side
/// has already failed the stream for it: the items that came in time are
/// read, and then the failure is `DeadlineExceeded`, as when the caller
/// was waiting, not the stream error the deadline caused on the far side.
fn reading_after_the_deadline(transport: TransportPreference) {
    let (_broker, mut peer, conn) = setup();
    let mut call = conn
        .call("dl", "drip")
        .args_typed(&(1000u64, 20u64))
        .unwrap()
        .transport(transport)
        .credit(CreditSpec::items(1000))
        .timeout(Duration::from_millis(200))
        .start()
        .unwrap();
    assert_eq!(
        peer.expect_line("send-failed", 10 * SEC),
        "deadline exceeded"
    );
    let rx = call.receiver().unwrap();
    let mut got = 0u64;
    let err = loop {
        match rx.recv::<u64>() {
            Ok(Some(n)) => {
                assert_eq!(n, got);
                got += 1;
            }
            Ok(None) => panic!("the stream ended instead of failing"),
            Err(e) => break e,
        }
    };
    assert!(got >= 3, "items sent in time are read: {got}");
    assert!(matches!(err, Error::DeadlineExceeded), "{err:?}");
    assert!(matches!(call.finish(), Err(Error::DeadlineExceeded)));
}

#[test]
fn reading_after_the_deadline_over_shared_memory_is_deadline_exceeded() {
    reading_after_the_deadline(TransportPreference::SharedMemory);
}

#[test]
fn reading_after_the_deadline_over_the_socket_is_deadline_exceeded() {
    reading_after_the_deadline(TransportPreference::Socket);
}
