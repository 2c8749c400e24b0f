//! Calls beside the streaming flows: unary calls and batches, clear errors
//! for unknown services, methods and modes, and the fall-back from shared
//! memory to the socket, with its reason. A real broker, a real service
//! process, and this test process as the caller.

use std::time::Duration;

use shmbus_client::{ErrorCode, FallbackReason, StreamMode, Transport, TransportPreference};
use shmbus_tests::{wait_for_service, Broker, Peer};

const SEC: Duration = Duration::from_secs(1);

#[test]
fn unary_call_and_batch_on_a_unary_method() {
    let broker = Broker::start();
    let mut peer = Peer::serve(&broker, &["unary", "math"]);
    let conn = broker.connect();
    let sum = conn
        .call("math", "add")
        .args_typed(&(2u64, 40u64))
        .unwrap()
        .unary()
        .unwrap();
    assert_eq!(u64::from_le_bytes(sum.try_into().unwrap()), 42);
    assert_eq!(
        peer.expect_line("caller-pid", 10 * SEC),
        std::process::id().to_string(),
        "the service sees the caller's pid from SO_PEERCRED"
    );
    let batch = conn
        .call("math", "add")
        .args_typed(&(1u64, 1u64))
        .unwrap()
        .collect_bytes()
        .unwrap();
    assert_eq!(batch, vec![2u64.to_le_bytes().to_vec()]);
    // Many concurrent calls on one connection.
    let handles: Vec<_> = (0..16u64)
        .map(|i| {
            let conn = conn.clone();
            std::thread::spawn(move || {
                let r = conn
                    .call("math", "add")
                    .args_typed(&(i, i))
                    .unwrap()
                    .unary()
                    .unwrap();
                u64::from_le_bytes(r.try_into().unwrap())
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(h.join().unwrap(), 2 * i as u64);
    }
}

#[test]
fn unknown_service_method_and_mode_are_clear_errors() {
    let broker = Broker::start();
    let _peer = Peer::serve(&broker, &["unary", "math"]);
    let conn = broker.connect();
    let e = conn.call("nope", "add").unary().unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NoSuchService));
    let e = conn.call("math", "sub").unary().unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NoSuchMethod));
    let e = conn
        .call("math", "add")
        .mode(StreamMode::Download)
        .start()
        .err()
        .unwrap();
    assert_eq!(e.code(), Some(ErrorCode::NoSuchMethod));
}

#[test]
fn fallback_to_the_socket_and_why() {
    let broker = Broker::start();
    let _peer = Peer::serve(&broker, &["numbers", "nums"]);
    let plain = broker.connect_without_shm();
    let mut call = plain
        .call("nums", "numbers")
        .mode(StreamMode::Download)
        .args_typed(&10u64)
        .unwrap()
        .start()
        .unwrap();
    assert_eq!(call.transport(), Some(Transport::Socket));
    assert_eq!(
        call.fallback_reason(),
        Some(&FallbackReason::PeerWithoutSharedMemory("caller".into()))
    );
    let rx = call.receiver().unwrap();
    let mut n = 0;
    while rx.recv::<u64>().unwrap().is_some() {
        n += 1;
    }
    assert_eq!(n, 10);
    call.finish().unwrap();

    let e = plain
        .call("nums", "numbers")
        .mode(StreamMode::Download)
        .transport(TransportPreference::SharedMemory)
        .start()
        .err()
        .unwrap();
    assert_eq!(e.code(), Some(ErrorCode::SharedMemoryUnavailable));

    let conn = broker.connect();
    wait_for_service(&conn, "nums");
    let call = conn
        .call("nums", "numbers")
        .mode(StreamMode::Download)
        .args_typed(&0u64)
        .unwrap()
        .transport(TransportPreference::Socket)
        .start()
        .unwrap();
    assert_eq!(call.fallback_reason(), Some(&FallbackReason::Requested));
    let call = conn
        .call("nums", "numbers")
        .mode(StreamMode::Download)
        .args_typed(&0u64)
        .unwrap()
        .start()
        .unwrap();
    assert_eq!(call.transport(), Some(Transport::SharedMemory));
    assert_eq!(call.fallback_reason(), None);
}

#[test]
fn memfd_setup_failure_falls_back_to_the_socket() {
    // A broker whose files may not exceed 1 MiB cannot size a 2 MiB ring.
    let broker = Broker::start_limited(&[], Some(1 << 20));
    let _peer = Peer::serve(&broker, &["numbers", "nums"]);
    let conn = broker.connect();
    let run = |ring: u32, pref: TransportPreference| {
        conn.call("nums", "numbers")
            .mode(StreamMode::Download)
            .args_typed(&50u64)
            .unwrap()
            .ring_size(ring)
            .transport(pref)
            .start()
    };
    let mut call = run(2 << 20, TransportPreference::Auto).unwrap();
    assert_eq!(call.transport(), Some(Transport::Socket));
    assert!(
        matches!(call.fallback_reason(), Some(FallbackReason::SetupFailed(m)) if m.contains("large")),
        "{:?}",
        call.fallback_reason()
    );
    let rx = call.receiver().unwrap();
    let mut n = 0;
    while rx.recv::<u64>().unwrap().is_some() {
        n += 1;
    }
    assert_eq!(n, 50);
    call.finish().unwrap();
    let e = run(2 << 20, TransportPreference::SharedMemory)
        .err()
        .unwrap();
    assert_eq!(e.code(), Some(ErrorCode::SharedMemoryUnavailable));
    let call = run(64 << 10, TransportPreference::Auto).unwrap();
    assert_eq!(call.transport(), Some(Transport::SharedMemory));
}
