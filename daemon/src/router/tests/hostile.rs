//! Hostile frames, and what list and status report.

use super::*;

#[test]
fn the_first_frame_must_be_hello_in_this_version() {
    let mut bus = Bus::default();
    let a = bus.try_connect(UID).unwrap();
    assert_eq!(
        bus.call(a, request(1, "svc", "one")),
        [Out::violation(a, "call before hello")]
    );
    let b = bus.try_connect(UID).unwrap();
    let hello = Frame::Hello {
        version: PROTOCOL_VERSION + 1,
        caps: Capabilities::default(),
    };
    assert_eq!(
        bus.input(b, hello),
        [Out::violation(
            b,
            &format!(
                "protocol version {} unsupported; this broker speaks {PROTOCOL_VERSION}",
                PROTOCOL_VERSION + 1
            )
        )]
    );
    // A second hello is a frame the broker does not accept.
    let c = bus.connect(UID);
    let hello = Frame::Hello {
        version: PROTOCOL_VERSION,
        caps: Capabilities::default(),
    };
    assert_eq!(
        bus.input(c, hello),
        [Out::violation(
            c,
            "hello frame is not accepted by the broker"
        )]
    );
}

#[test]
fn frames_only_the_broker_sends_close_the_connection() {
    let (mut bus, caller, _) = bus();
    let open = open(1, 1, Download);
    let frames = [
        Frame::Welcome {
            version: PROTOCOL_VERSION,
            caps: Capabilities::default(),
            max_frame: 4096,
        },
        Frame::Ack { request: 1 },
        Frame::Refused {
            request: 1,
            error: error(ErrorCode::Denied, "no"),
        },
        incoming(1, "one", caller, None),
        Frame::StreamOpen(open),
        Frame::ListReply {
            request: 1,
            snapshot: bus.router.snapshot(),
        },
        Frame::StatusReply {
            request: 1,
            status: bus.router.status(bus.now),
        },
        event(1, "down", caller, MonitorKind::End),
        Frame::ShuttingDown { grace_ms: 1 },
        Frame::Error(error(ErrorCode::Failed, "x")),
    ];
    for frame in frames {
        let kind = frame.kind();
        assert_eq!(
            bus.input(caller, frame),
            [Out::violation(
                caller,
                &format!("{kind} frame is not accepted by the broker")
            )]
        );
    }
}

#[test]
fn a_call_id_reused_while_live_is_a_violation() {
    let (mut bus, caller, service) = bus();
    bus.call(caller, request(1, "svc", "down"));
    let asked = bus.ports().asked.len();
    assert_eq!(
        bus.call(caller, request(1, "svc", "one")),
        [Out::violation(caller, "call id 1 reused while live")]
    );
    assert_eq!(bus.ports().asked.len(), asked, "no port made");
    bus.answer(service, 1, Ok(b""));
    assert_eq!(bus.call(caller, request(1, "svc", "one")).len(), 1);
}

#[test]
fn results_only_from_the_service_of_a_call() {
    let (mut bus, caller, service) = bus();
    let other = bus.connect(UID);
    bus.call(caller, request(7, "svc", "one"));
    assert_eq!(
        bus.answer(caller, 1, Ok(b"")),
        [Out::violation(
            caller,
            "result for call 1 that it does not serve"
        )]
    );
    assert_eq!(
        bus.answer(other, 1, Ok(b"")),
        [Out::violation(
            other,
            "result for call 1 that it does not serve"
        )]
    );
    assert_eq!(
        bus.answer(service, 2, Ok(b"")),
        [Out::violation(
            service,
            "result for call 2 that it does not serve"
        )],
        "an id the broker never gave out"
    );
    bus.answer(service, 1, Ok(b""));
    assert!(
        bus.answer(service, 1, Ok(b"")).is_empty(),
        "an ended call: ignored"
    );
    assert!(
        bus.answer(other, 1, Ok(b"")).is_empty(),
        "an ended call: ignored, whoever sends it"
    );
}

#[test]
fn frames_from_unknown_connections_are_dropped() {
    let mut bus = Bus::default();
    assert!(bus.input(99, Frame::List { request: 1 }).is_empty());
    assert!(bus.disconnect(99).is_empty());
    bus.router.fds_delivered(99, 3);
}

#[test]
fn descriptors_sent_with_a_frame_are_closed() {
    let (mut bus, caller, _) = bus();
    let (mut mine, theirs) = UnixStream::pair().unwrap();
    let out = bus.router.handle(
        caller,
        Frame::List { request: 1 },
        vec![theirs.into()],
        bus.now,
    );
    assert_eq!(out.len(), 1);
    mine.set_nonblocking(true).unwrap();
    let mut byte = [0];
    assert_eq!(mine.read(&mut byte).unwrap(), 0, "the other end is closed");
}

#[test]
fn progress_is_kept_only_from_the_streams_own_peers() {
    let (mut bus, caller, service) = bus();
    let stranger = bus.connect(UID);
    bus.call(caller, request(1, "svc", "down"));
    let report = |bytes| Frame::StreamProgress {
        stream: 1,
        state: StreamState::Closing,
        bytes,
        credit_outstanding: 5,
    };
    assert!(bus.input(stranger, report(1 << 30)).is_empty());
    assert!(bus
        .input(
            caller,
            Frame::StreamProgress {
                stream: 2,
                state: StreamState::Closed,
                bytes: 1,
                credit_outstanding: 0,
            }
        )
        .is_empty());
    let stream = |bus: &Bus| bus.router.snapshot().streams[0].clone();
    assert_eq!(stream(&bus).bytes, 0);
    assert_eq!(stream(&bus).state, StreamState::Opening);
    bus.input(service, report(64));
    bus.input(caller, report(32));
    assert_eq!(
        stream(&bus),
        StreamInfo {
            stream: 1,
            service: "svc".into(),
            method: "down".into(),
            transport: Transport::SharedMemory,
            state: StreamState::Closing,
            bytes: 64,
            credit_outstanding: 5,
        }
    );
}

// ---------------------------------------------------------- list, status

#[test]
fn status_counts_and_uptime_follow_the_clock_given() {
    let (mut bus, caller, service) = bus();
    bus.advance(Duration::from_millis(1500));
    bus.call(caller, request(1, "svc", "one"));
    bus.call(caller, request(2, "svc", "down"));
    let mut req = request(3, "svc", "up");
    req.transport = TransportPreference::Socket;
    bus.call(caller, req);
    bus.input(
        service,
        Frame::StreamProgress {
            stream: 1,
            state: StreamState::Active,
            bytes: 10,
            credit_outstanding: 0,
        },
    );
    bus.answer(service, 3, Ok(b""));
    bus.input(
        caller,
        Frame::StreamProgress {
            stream: 2,
            state: StreamState::Closed,
            bytes: 99,
            credit_outstanding: 0,
        },
    );
    let out = bus.input(caller, Frame::Status { request: 8 });
    let expected = BrokerStatus {
        version: env!("CARGO_PKG_VERSION").to_string(),
        uptime_ms: 1500,
        connections: 2,
        services: 1,
        streams: 1,
        calls_total: 3,
        shm_streams_total: 1,
        socket_streams_total: 1,
        bytes_moved: 10,
    };
    assert_eq!(
        out,
        [Out::send(
            caller,
            Frame::StatusReply {
                request: 8,
                status: expected
            }
        )]
    );
    bus.advance(Duration::from_millis(500));
    assert_eq!(bus.router.status(bus.now).uptime_ms, 2000);
}

#[test]
fn list_shows_services_and_streams_in_order_within_the_frame_limit() {
    let (mut bus, caller, service) = bus();
    let other = bus.connect(UID);
    bus.serve(other, "another", &[("down", Download)]);
    bus.call(caller, request(1, "svc", "down"));
    bus.call(caller, request(2, "another", "down"));
    let Out::Send {
        frame: Frame::ListReply { request, snapshot },
        to,
        ..
    } = bus.input(service, Frame::List { request: 3 }).remove(0)
    else {
        panic!()
    };
    assert_eq!((to, request), (service, 3));
    let names: Vec<&str> = snapshot.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["another", "svc"]);
    assert_eq!(snapshot.services[1].pid, Bus::creds(service, UID).pid);
    assert_eq!(
        snapshot.services[1].methods,
        METHODS
            .iter()
            .map(|&(n, m)| MethodSpec::new(n, m))
            .collect::<Vec<_>>()
    );
    let ids: Vec<StreamId> = snapshot.streams.iter().map(|s| s.stream).collect();
    assert_eq!(ids, [1, 2]);
    assert_eq!(snapshot.connections, 3);
    // Many services and a small frame: the reply is cut to fit.
    bus.router.limits.max_frame = 4096;
    bus.router.limits.quotas.default.services = 1000;
    bus.router.limits.max_services_per_connection = 1000;
    for i in 0..200 {
        bus.serve(other, &format!("service-with-a-long-name-{i:04}"), &[]);
    }
    let Out::Send {
        frame: Frame::ListReply { snapshot, .. },
        ..
    } = bus.input(service, Frame::List { request: 4 }).remove(0)
    else {
        panic!()
    };
    assert!(postcard::to_stdvec(&snapshot).unwrap().len() + 64 <= 4096);
    assert!(!snapshot.services.is_empty() && snapshot.services.len() < 202);
    assert_eq!(snapshot.services[0].name, "another", "cut from the end");
}
