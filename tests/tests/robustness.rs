//! Dead peers, hostile peers and malformed input, against a real broker.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use shmbus::frame::{CallRequest, ErrorCode, Frame, MethodSpec, StreamMode, TransportPreference};
use shmbus_client::{CreditSpec, Error, Transport};
use shmbus_tests::{pref, wait_for_service, Broker, Peer, RawClient};

const SEC: Duration = Duration::from_secs(1);

#[test]
fn sigkill_of_the_producer_fails_the_consumer_within_100ms_shm() {
    producer_killed(Transport::SharedMemory);
}

#[test]
fn sigkill_of_the_producer_fails_the_consumer_within_100ms_socket() {
    producer_killed(Transport::Socket);
}

fn producer_killed(t: Transport) {
    let broker = Broker::start();
    let conn = broker.connect();
    let mut peer = Peer::serve(&broker, &["numbers", "nums", "--delay-us", "2000"]);
    let baseline = broker.fd_baseline();
    let mut call = conn
        .call("nums", "numbers")
        .mode(StreamMode::Download)
        .args_typed(&u64::MAX)
        .unwrap()
        .credit(CreditSpec::items(64))
        .transport(pref(t))
        .start()
        .unwrap();
    let rx = call.receiver().unwrap();
    for i in 0..20u64 {
        assert_eq!(rx.recv::<u64>().unwrap(), Some(i));
    }
    // The consumer is now asleep waiting for the next item.
    let killed = Instant::now();
    peer.kill();
    let end = loop {
        match rx.recv::<u64>() {
            Ok(Some(_)) => continue,
            other => break other,
        }
    };
    let took = killed.elapsed();
    assert!(matches!(end, Err(Error::PeerGone(_))), "got {end:?}");
    assert!(took < Duration::from_millis(100), "error took {took:?}");
    match call.finish() {
        Err(Error::Remote(e)) => assert_eq!(e.code, ErrorCode::PeerGone),
        other => panic!("expected peer gone, got {other:?}"),
    }
    // The broker freed the call and the dead peer's connection.
    broker.wait_fds(baseline - 1);
    assert!(conn.list().unwrap().streams.is_empty());
}

#[test]
fn sigkill_of_the_consumer_fails_the_producer_within_100ms_shm() {
    consumer_killed("shm");
}

#[test]
fn sigkill_of_the_consumer_fails_the_producer_within_100ms_socket() {
    consumer_killed("socket");
}

fn consumer_killed(transport: &str) {
    let broker = Broker::start();
    let mut service = Peer::serve(&broker, &["endless", "long"]);
    let baseline = broker.fd_baseline();
    let mut consumer = Peer::start(&broker, &["consume", "long", "endless", transport]);
    consumer.expect_line("received 1000", 10 * SEC);
    let killed = Instant::now();
    consumer.kill();
    // The port notices the dead peer; the broker's cancel may race it.
    let line = service.expect_line("", 10 * SEC);
    let took = killed.elapsed();
    assert!(
        line.starts_with("send-failed peer gone") || line.starts_with("cancelled-after"),
        "{line}"
    );
    assert!(took < Duration::from_millis(100), "error took {took:?}");
    broker.wait_fds(baseline);
}

#[test]
fn shared_memory_streams_bypass_the_broker_socket() {
    let broker = Broker::start();
    let _peer = Peer::serve(&broker, &["numbers", "nums"]);
    let conn = broker.connect();
    let before = conn.socket_bytes_read();
    let count = 2_000_000u64;
    let mut call = conn
        .call("nums", "numbers")
        .mode(StreamMode::Download)
        .args_typed(&count)
        .unwrap()
        .credit(CreditSpec::items(4096))
        .transport(TransportPreference::SharedMemory)
        .start()
        .unwrap();
    let rx = call.receiver().unwrap();
    let mut payload = 0u64;
    while let Some(item) = rx.recv_in_place().unwrap() {
        payload += item.len() as u64;
    }
    let service_read = u64::from_le_bytes(call.finish().unwrap().try_into().unwrap());
    let caller_read = conn.socket_bytes_read() - before;
    assert!(payload > 4_000_000, "payload {payload}");
    // Control frames only: well under 1% of the payload on either side.
    assert!(
        caller_read * 100 < payload,
        "caller read {caller_read} of {payload}"
    );
    assert!(
        service_read * 100 < payload,
        "service read {service_read} of {payload}"
    );
}

/// One way of breaking the protocol.
type Offence = Box<dyn Fn(&mut RawClient)>;

#[test]
fn malformed_frames_close_only_the_offender() {
    let broker = Broker::start();
    let _peer = Peer::serve(&broker, &["numbers", "nums", "--delay-us", "200"]);
    let conn = broker.connect();
    let baseline = broker.fd_baseline();
    let mut call = conn
        .call("nums", "numbers")
        .mode(StreamMode::Download)
        .args_typed(&2000u64)
        .unwrap()
        .credit(CreditSpec::items(16))
        .start()
        .unwrap();

    let offenders: Vec<Offence> = vec![
        // Random bytes.
        Box::new(|c| {
            c.send_raw(
                &[
                    14, 0, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10,
                ],
                &[],
            )
            .unwrap()
        }),
        // An absurd length prefix: refused before any allocation.
        Box::new(|c| c.send_raw(&[0xff, 0xff, 0xff, 0xff, 0], &[]).unwrap()),
        // A wrong protocol version.
        Box::new(|c| {
            c.send(&Frame::Hello {
                version: 99,
                caps: Default::default(),
            })
        }),
        // A valid frame in the wrong state: a call before hello.
        Box::new(|c| c.send(&Frame::List { request: 1 })),
        // Descriptors on a frame that takes none.
        Box::new(|c| {
            let mut b = Vec::new();
            shmbus::frame::encode(
                &Frame::Hello {
                    version: shmbus::frame::PROTOCOL_VERSION,
                    caps: Default::default(),
                },
                &mut b,
            );
            b[4] = 1;
            let memfd = shmbus::ring::create_memfd("x", 4096, 1).unwrap();
            c.send_raw(&b, &[memfd.as_fd()]).unwrap();
        }),
        // More descriptors than declared.
        Box::new(|c| {
            let mut b = Vec::new();
            shmbus::frame::encode(
                &Frame::Hello {
                    version: shmbus::frame::PROTOCOL_VERSION,
                    caps: Default::default(),
                },
                &mut b,
            );
            let memfd = shmbus::ring::create_memfd("x", 4096, 1).unwrap();
            c.send_raw(&b, &[memfd.as_fd(), memfd.as_fd()]).unwrap();
        }),
    ];
    for offend in &offenders {
        for _ in 0..20 {
            let mut c = RawClient::connect(&broker);
            offend(&mut c);
            match c.recv() {
                Some((Frame::Error(e), _)) => assert_eq!(e.code, ErrorCode::ProtocolViolation),
                other => panic!("expected an error frame, got {other:?}"),
            }
            assert!(c.recv().is_none(), "connection closed after the error");
        }
    }
    // A frame that streams from a client to the broker after hello.
    let mut c = RawClient::hello(&broker, true);
    c.send(&Frame::StreamProgress {
        stream: 1,
        state: shmbus::state::StreamState::Active,
        bytes: 0,
        credit_outstanding: 0,
    });
    c.send(&Frame::Welcome {
        version: shmbus::frame::PROTOCOL_VERSION,
        caps: Default::default(),
        max_frame: 1,
    });
    assert!(matches!(c.recv(), Some((Frame::Error(_), _))));
    drop(c);

    // The legitimate stream never noticed.
    let rx = call.receiver().unwrap();
    let mut next = 0u64;
    while let Some(v) = rx.recv::<u64>().unwrap() {
        assert_eq!(v, next);
        next += 1;
    }
    assert_eq!(next, 2000);
    call.finish().unwrap();
    broker.wait_fds(baseline);
}

#[test]
fn a_truncated_frame_then_hangup_is_harmless() {
    let broker = Broker::start();
    let baseline = broker.fd_baseline();
    for cut in [1usize, 4, 5, 9] {
        let mut c = RawClient::connect(&broker);
        let mut b = Vec::new();
        shmbus::frame::encode(
            &Frame::Hello {
                version: shmbus::frame::PROTOCOL_VERSION,
                caps: Default::default(),
            },
            &mut b,
        );
        c.sock.write_all(&b[..cut.min(b.len() - 1)]).unwrap();
    }
    broker.wait_fds(baseline);
    let conn = broker.connect();
    assert_eq!(conn.list().unwrap().services.len(), 0);
}

/// A service that, once a stream is open, writes hostile values into the
/// ring header: the caller gets a protocol error on that stream only.
#[test]
fn hostile_ring_header_is_a_protocol_error_on_that_stream_only() {
    let broker = Broker::start();
    let _good = Peer::serve(&broker, &["numbers", "nums"]);
    let mut evil = RawClient::hello(&broker, true);
    evil.send(&Frame::Register {
        request: 1,
        service: "evil".into(),
        methods: vec![MethodSpec {
            name: "m".into(),
            mode: StreamMode::Download,
        }],
    });
    assert!(matches!(evil.recv(), Some((Frame::Ack { request: 1 }, _))));
    let conn = broker.connect();
    for (what, offset, value) in [
        ("write position beyond capacity", 128u64, 1u64 << 40),
        ("misaligned write position", 128, 24),
        ("record longer than published", 128, 32),
    ] {
        let caller = std::thread::spawn({
            let conn = conn.clone();
            move || {
                let mut call = conn
                    .call("evil", "m")
                    .mode(StreamMode::Download)
                    .credit(CreditSpec::bytes(4096))
                    .ring_size(4096)
                    .start()
                    .unwrap();
                let r = call.receiver().unwrap().recv_bytes();
                (r, call)
            }
        });
        let (frame, fds) = evil.recv().expect("incoming call");
        let Frame::Incoming {
            call,
            open: Some(open),
            ..
        } = frame
        else {
            panic!("{frame:?}")
        };
        assert_eq!(open.transport, shmbus::Transport::SharedMemory);
        let mut fds = fds.into_iter();
        let mut link = std::os::unix::net::UnixStream::from(fds.next().unwrap());
        let memfd = std::fs::File::from(fds.next().unwrap());
        use std::os::unix::fs::FileExt;
        if what == "record longer than published" {
            // A data record claiming 1 MiB at offset 0.
            let mut h = [0u8; 16];
            h[0..4].copy_from_slice(&(1u32 << 20).to_le_bytes());
            h[4..8].copy_from_slice(&1u32.to_le_bytes());
            memfd.write_all_at(&h, 4096).unwrap();
        }
        memfd.write_all_at(&value.to_le_bytes(), offset).unwrap();
        // The peer cannot resize the ring: the seals forbid it.
        assert!(memfd.set_len(1 << 20).is_err());
        assert!(memfd.set_len(100).is_err());
        // Ring the doorbell so the caller looks now. It may have looked
        // already (the service hears of the call first) and closed the port.
        let _ = link.write_all(&[1]);
        let (r, call_handle) = caller.join().unwrap();
        assert!(matches!(r, Err(Error::Protocol(_))), "{what}: got {r:?}");
        evil.send(&Frame::Result {
            call,
            outcome: Ok(Vec::new()),
        });
        drop(call_handle);
    }
    // Other streams and the broker are unaffected.
    let mut call = conn
        .call("nums", "numbers")
        .mode(StreamMode::Download)
        .args_typed(&100u64)
        .unwrap()
        .start()
        .unwrap();
    let rx = call.receiver().unwrap();
    let mut n = 0;
    while rx.recv::<u64>().unwrap().is_some() {
        n += 1;
    }
    assert_eq!(n, 100);
    call.finish().unwrap();
}

#[test]
fn a_caller_that_vanishes_cancels_the_service_call() {
    let broker = Broker::start();
    let mut service = Peer::serve(&broker, &["endless", "long"]);
    let baseline = broker.fd_baseline();
    {
        let conn = broker.connect();
        let mut call = conn
            .call("long", "endless")
            .mode(StreamMode::Download)
            .credit(CreditSpec::items(4))
            .start()
            .unwrap();
        assert!(call.receiver().unwrap().recv::<u64>().unwrap().is_some());
    }
    let line = service.expect_line("", 10 * SEC);
    assert!(
        line.starts_with("cancelled-after") || line.starts_with("send-failed"),
        "{line}"
    );
    broker.wait_fds(baseline);
}

#[test]
fn raw_call_frames_are_validated() {
    let broker = Broker::start();
    let mut c = RawClient::hello(&broker, true);
    let mut req = CallRequest {
        call: 7,
        service: "none".into(),
        method: "m".into(),
        args: vec![],
        mode: Some(StreamMode::Unary),
        credit: CreditSpec::items(1),
        transport: TransportPreference::Auto,
        ring_size: None,
        time_left_us: None,
    };
    c.send(&Frame::Call(req.clone()));
    match c.recv() {
        Some((
            Frame::Result {
                call: 7,
                outcome: Err(e),
            },
            _,
        )) => assert_eq!(e.code, ErrorCode::NoSuchService),
        other => panic!("{other:?}"),
    }
    let mut svc = RawClient::hello(&broker, true);
    svc.send(&Frame::Register {
        request: 1,
        service: "s".into(),
        methods: vec![MethodSpec {
            name: "m".into(),
            mode: StreamMode::Download,
        }],
    });
    assert!(matches!(svc.recv(), Some((Frame::Ack { .. }, _))));
    req.service = "s".into();
    req.mode = Some(StreamMode::Download);
    for (hwm, ring) in [(1u64 << 50, None), (1, Some(12345u32)), (1, Some(1 << 30))] {
        req.call += 1;
        req.credit = CreditSpec::items(hwm);
        req.ring_size = ring;
        c.send(&Frame::Call(req.clone()));
        match c.recv() {
            Some((
                Frame::Result {
                    outcome: Err(e), ..
                },
                _,
            )) => assert_eq!(e.code, ErrorCode::LimitsExceeded),
            other => panic!("{other:?}"),
        }
    }
    // A result for a call the connection does not serve is a violation.
    c.send(&Frame::Result {
        call: 999_999,
        outcome: Ok(vec![]),
    });
    assert!(matches!(c.recv(), Some((Frame::Error(_), _))));
    let mut buf = [0u8; 1];
    assert_eq!(c.sock.read(&mut buf).unwrap_or(0), 0);
    let conn = broker.connect();
    wait_for_service(&conn, "s");
}

#[test]
fn a_peer_that_registers_and_hangs_up_at_once_leaves_nothing_behind() {
    let broker = Broker::start();
    let baseline = broker.fd_baseline();
    for i in 0..20 {
        let mut c = RawClient::hello(&broker, true);
        // The frame and the hang-up reach the broker together.
        c.send(&Frame::Register {
            request: 1,
            service: format!("svc-{i}"),
            methods: vec![MethodSpec {
                name: "m".into(),
                mode: StreamMode::Unary,
            }],
        });
        c.sock.shutdown(std::net::Shutdown::Both).unwrap();
    }
    broker.wait_fds(baseline);
    let conn = broker.connect();
    shmbus_tests::wait_until(Duration::from_secs(5), || {
        conn.list().unwrap().services.is_empty()
    });
}

#[test]
fn too_many_methods_are_refused() {
    let broker = Broker::start();
    let mut c = RawClient::hello(&broker, true);
    let methods = (0..65)
        .map(|i| MethodSpec {
            name: format!("m{i}"),
            mode: StreamMode::Unary,
        })
        .collect();
    c.send(&Frame::Register {
        request: 1,
        service: "wide".into(),
        methods,
    });
    match c.recv() {
        Some((Frame::Refused { error, .. }, _)) => {
            assert_eq!(error.code, ErrorCode::LimitsExceeded)
        }
        other => panic!("{other:?}"),
    }
}

fn sig(pid: u32, s: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), s).unwrap();
}

#[test]
fn a_stopped_consumer_stalls_only_its_producer_and_the_stall_timeout_ends_it() {
    for transport in ["shm", "socket"] {
        let broker = Broker::start();
        // The service gives up on a receiver that makes no progress for 300 ms.
        let mut service = Peer::serve(&broker, &["endless", "long", "--stall-ms", "300"]);
        let mut victim = Peer::start(&broker, &["consume", "long", "endless", transport]);
        victim.expect_line("received 1000", 10 * SEC);
        let mut other = Peer::start(&broker, &["consume", "long", "endless", transport]);
        other.expect_line("received 1000", 10 * SEC);
        sig(victim.pid(), nix::sys::signal::Signal::SIGSTOP);
        let stopped = Instant::now();
        let at_stop: u64 = other.latest("received").unwrap().parse().unwrap();
        // The stalled stream's producer blocks on credit, then gives up.
        let line = service.expect_line("send-failed", 10 * SEC);
        let took = stopped.elapsed();
        assert!(line.contains("stalled"), "{transport}: {line}");
        assert!(
            took >= Duration::from_millis(250) && took < 3 * SEC,
            "{transport}: {took:?}"
        );
        // The other stream kept flowing meanwhile and still does.
        let before: u64 = other.latest("received").unwrap().parse().unwrap();
        assert!(
            before > at_stop,
            "{transport}: other stream stuck at {at_stop} during the stall"
        );
        let after: u64 = other.expect_line("received", 10 * SEC).parse().unwrap();
        assert!(
            after > before,
            "{transport}: other stream stuck at {before}"
        );
        // The stopped consumer, once resumed, learns why its stream ended.
        sig(victim.pid(), nix::sys::signal::Signal::SIGCONT);
        let err = victim.expect_line("stream-error", 10 * SEC);
        assert!(
            err.contains("stall") || err.contains("peer gone"),
            "{transport}: {err}"
        );
    }
}

#[test]
fn streams_on_shared_memory_outlive_a_killed_broker() {
    streams_outlive_a_killed_broker(TransportPreference::SharedMemory);
}

#[test]
fn streams_on_sockets_outlive_a_killed_broker() {
    streams_outlive_a_killed_broker(TransportPreference::Socket);
}

fn streams_outlive_a_killed_broker(transport: TransportPreference) {
    let mut broker = Broker::start();
    let mut service = Peer::serve(&broker, &["numbers", "nums", "--delay-us", "50"]);
    let conn = broker.connect();
    let count = 20_000u64;
    let mut call = conn
        .call("nums", "numbers")
        .mode(StreamMode::Download)
        .args_typed(&count)
        .unwrap()
        .credit(CreditSpec::items(64))
        .transport(transport)
        .start()
        .unwrap();
    let rx = call.receiver().unwrap();
    for i in 0..100u64 {
        assert_eq!(rx.recv::<u64>().unwrap(), Some(i));
    }
    broker.kill();
    // The data path is peer to peer: every item still arrives, in order.
    let mut next = 100;
    while let Some(v) = rx.recv::<u64>().unwrap() {
        assert_eq!(v, next);
        next += 1;
    }
    assert_eq!(next, count);
    assert_eq!(
        rx.history().last(),
        Some(&shmbus_client::StreamState::Closed)
    );
    // The result comes peer to peer too: the service's reply (the bytes it
    // read from its broker socket, a little-endian u64).
    let reply = call.finish().expect("result without a broker");
    assert_eq!(reply.len(), 8, "{reply:?}");
    // New calls fail clearly.
    let e = conn.call("nums", "numbers").unary().unwrap_err();
    assert!(matches!(e, Error::BrokerGone), "{e:?}");
    assert!(service.expect_line("history", 10 * SEC).contains("Closed"));
}

#[test]
fn an_upload_over_shared_memory_ends_with_its_result_after_the_broker_dies() {
    upload_ends_with_its_result_after_the_broker_dies(TransportPreference::SharedMemory);
}

#[test]
fn an_upload_over_sockets_ends_with_its_result_after_the_broker_dies() {
    upload_ends_with_its_result_after_the_broker_dies(TransportPreference::Socket);
}

fn upload_ends_with_its_result_after_the_broker_dies(transport: TransportPreference) {
    let mut broker = Broker::start();
    let _service = Peer::serve(&broker, &["sink", "sink"]);
    let conn = broker.connect();
    let mut call = conn
        .call("sink", "sink")
        .mode(StreamMode::Upload)
        .transport(transport)
        .start()
        .unwrap();
    let tx = call.sender().unwrap();
    let mut rng = shmbus_tests::Rng::new(7);
    let (mut count, mut hash) = (0u64, 0u64);
    let mut item = Vec::new();
    for i in 0..4000 {
        if i == 1000 {
            broker.kill();
        }
        item.clear();
        item.extend((0..rng.below(2000)).map(|_| rng.next_u64() as u8));
        tx.send_bytes(&item).unwrap();
        count += item.len() as u64;
        hash = shmbus_tests::fnv1a(hash, &item);
    }
    tx.finish().unwrap();
    // The service's reply ("bytes,hash" of what it received) arrives
    // although the broker died a quarter of the way through.
    let reply = String::from_utf8(call.finish().expect("result without a broker")).unwrap();
    assert_eq!(reply, format!("{count},{hash}"));
}
