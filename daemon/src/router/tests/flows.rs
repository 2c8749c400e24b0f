//! Every flow of `PROTOCOL.md`: unary, the three stream modes, errors, cancel, batch collect, unknown names.

use super::*;

#[test]
fn unary_call_goes_to_the_service_and_its_result_back_under_the_callers_id() {
    let (mut bus, caller, service) = bus();
    let mut req = request(7, "svc", "one");
    req.args = b"args".to_vec();
    let out = bus.call(caller, req);
    assert_eq!(
        out,
        [Out::send(
            service,
            Frame::Incoming {
                call: 1,
                service: "svc".into(),
                method: "one".into(),
                args: b"args".to_vec(),
                open: None,
                caller_pid: 1001,
                caller_uid: UID,
                time_left_us: None,
            }
        )]
    );
    assert!(bus.ports().asked.is_empty(), "no port for a unary call");
    assert_eq!(bus.router.live_calls(), 1);
    assert_eq!(bus.router.usage(UID), usage(0, 0), "no stream quota");
    let out = bus.answer(service, 1, Ok(b"answer"));
    assert_eq!(out, [Out::result(caller, 7, Ok(b"answer"))]);
    assert_eq!(bus.router.live_calls(), 0);
}

#[test]
fn download_opens_one_direction_over_shared_memory() {
    let (mut bus, caller, service) = bus();
    let mut req = request(7, "svc", "down");
    req.mode = Some(Download);
    let out = bus.call(caller, req);
    let expected = opened(&mut bus, (caller, service), (7, 1, 1), "down", Download);
    assert_eq!(out, expected);
    let port = bus.last_port();
    assert_eq!(
        port.spec,
        PortSpec {
            stream: 1,
            mode: Download,
            transport: Transport::SharedMemory,
            ring_size: RING,
            credit: CreditSpec::bytes(HWM),
        },
        "a high-water mark of 0 takes the broker's default"
    );
    assert_eq!((port.caller.len(), port.service.len()), (2, 2));
    assert_eq!(bus.router.live_streams(), 1);
    assert_eq!(bus.router.usage(UID), usage(1, RING as u64));
    let out = bus.answer(service, 1, Ok(b""));
    assert_eq!(out, [Out::result(caller, 7, Ok(b""))]);
    assert_eq!(
        bus.router.usage(UID),
        usage(0, 0),
        "the quota is given back"
    );
    assert_eq!(bus.router.live_streams(), 0);
}

#[test]
fn upload_opens_the_direction_toward_the_service() {
    let (mut bus, caller, service) = bus();
    let mut req = request(3, "svc", "up");
    req.mode = Some(Upload);
    req.credit = CreditSpec::items(16);
    req.ring_size = Some(1 << 16);
    let out = bus.call(caller, req);
    let port = bus.last_port();
    let mine = StreamOpen {
        ring_size: 1 << 16,
        credit: CreditSpec::items(16),
        ..open(1, 3, Upload)
    };
    assert_eq!(
        out,
        [
            Out::send_fds(
                service,
                incoming(
                    1,
                    "up",
                    caller,
                    Some(StreamOpen {
                        call: 1,
                        ..mine.clone()
                    })
                ),
                &port.service
            ),
            Out::send_fds(caller, Frame::StreamOpen(mine), &port.caller),
        ]
    );
    assert_eq!(port.spec.ring_size, 1 << 16);
    assert_eq!(bus.router.usage(UID), usage(1, 1 << 16));
    let out = bus.answer(service, 1, Ok(b"got it"));
    assert_eq!(out, [Out::result(caller, 3, Ok(b"got it"))]);
}

#[test]
fn bidirectional_opens_both_directions_and_charges_both_rings() {
    let (mut bus, caller, service) = bus();
    let out = bus.call(caller, request(9, "svc", "both"));
    let expected = opened(
        &mut bus,
        (caller, service),
        (9, 1, 1),
        "both",
        Bidirectional,
    );
    assert_eq!(out, expected);
    let port = bus.last_port();
    assert_eq!((port.caller.len(), port.service.len()), (4, 4));
    assert_eq!(bus.router.usage(UID), usage(1, 2 * RING as u64));
    assert_eq!(
        bus.answer(service, 1, Ok(b"")),
        [Out::result(caller, 9, Ok(b""))]
    );
    assert_eq!(bus.router.usage(UID), usage(0, 0));
}

#[test]
fn broker_ids_count_up_and_stay_apart_from_each_callers_ids() {
    let (mut bus, caller, service) = bus();
    let other = bus.connect(UID);
    bus.call(caller, request(5, "svc", "down"));
    let out = bus.call(other, request(5, "svc", "down"));
    let expected = opened(&mut bus, (other, service), (5, 2, 2), "down", Download);
    assert_eq!(out, expected, "the same caller id on another connection");
    assert_eq!(
        bus.answer(service, 2, Ok(b"b")),
        [Out::result(other, 5, Ok(b"b"))]
    );
    assert_eq!(
        bus.answer(service, 1, Ok(b"a")),
        [Out::result(caller, 5, Ok(b"a"))]
    );
}

#[test]
fn a_stream_error_ends_the_call_with_the_services_error_and_an_error_event() {
    let (mut bus, caller, service) = bus();
    let watcher = bus.connect(UID);
    assert_eq!(
        bus.input(watcher, Frame::Monitor { request: 4 }),
        [Out::send(watcher, Frame::Ack { request: 4 })]
    );
    let out = bus.call(caller, request(7, "svc", "down"));
    let mut expected = opened(&mut bus, (caller, service), (7, 1, 1), "down", Download);
    expected.push(Out::send(
        watcher,
        event(
            1,
            "down",
            caller,
            MonitorKind::Open {
                transport: Transport::SharedMemory,
                fallback: None,
            },
        ),
    ));
    assert_eq!(out, expected);
    let failed = error(ErrorCode::Failed, "processing failed");
    let out = bus.answer(service, 1, Err(failed.clone()));
    assert_eq!(
        out,
        [
            Out::send(
                watcher,
                event(1, "down", caller, MonitorKind::Error(failed.clone()))
            ),
            Out::result(caller, 7, Err(failed)),
        ]
    );
    assert_eq!(bus.router.status(bus.now).bytes_moved, 0);
}

#[test]
fn a_finished_stream_ends_with_an_end_event_and_its_bytes_count() {
    let (mut bus, caller, service) = bus();
    let watcher = bus.connect(UID);
    bus.input(watcher, Frame::Monitor { request: 1 });
    bus.call(caller, request(7, "svc", "down"));
    // Both halves report; the larger count wins.
    for (from, bytes) in [(service, 300), (caller, 200)] {
        let out = bus.input(
            from,
            Frame::StreamProgress {
                stream: 1,
                state: StreamState::Active,
                bytes,
                credit_outstanding: 10,
            },
        );
        assert!(out.is_empty());
    }
    let out = bus.answer(service, 1, Ok(b"ok"));
    let Frame::Event(mut end) = event(1, "down", caller, MonitorKind::End) else {
        unreachable!()
    };
    end.bytes = 300;
    assert_eq!(
        out,
        [
            Out::send(watcher, Frame::Event(end)),
            Out::result(caller, 7, Ok(b"ok")),
        ]
    );
    assert_eq!(bus.router.status(bus.now).bytes_moved, 300);
}

#[test]
fn cancel_by_the_caller_goes_to_the_service_which_still_answers() {
    let (mut bus, caller, service) = bus();
    let watcher = bus.connect(UID);
    bus.input(watcher, Frame::Monitor { request: 1 });
    bus.call(caller, request(7, "svc", "down"));
    let out = bus.input(caller, Frame::Cancel { call: 7 });
    assert_eq!(
        out,
        [
            Out::send(watcher, event(1, "down", caller, MonitorKind::Cancel)),
            Out::cancel(service, 1),
        ]
    );
    assert_eq!(bus.router.live_calls(), 1, "the call waits for the result");
    // Only the caller can cancel its call; unknown ids are ignored.
    assert!(bus.input(service, Frame::Cancel { call: 7 }).is_empty());
    assert!(bus.input(service, Frame::Cancel { call: 1 }).is_empty());
    assert!(bus.input(caller, Frame::Cancel { call: 8 }).is_empty());
    let aborted = error(ErrorCode::Aborted, "cancelled by the caller");
    let out = bus.answer(service, 1, Err(aborted.clone()));
    assert_eq!(
        out,
        [
            Out::send(
                watcher,
                event(1, "down", caller, MonitorKind::Error(aborted.clone()))
            ),
            Out::result(caller, 7, Err(aborted)),
        ]
    );
    // After the end, a cancel is ignored.
    assert!(bus.input(caller, Frame::Cancel { call: 7 }).is_empty());
    assert_eq!(bus.router.usage(UID).streams, 0);
}

#[test]
fn cancel_of_a_unary_call_is_forwarded_without_events() {
    let (mut bus, caller, service) = bus();
    let watcher = bus.connect(UID);
    bus.input(watcher, Frame::Monitor { request: 1 });
    bus.call(caller, request(2, "svc", "one"));
    assert_eq!(
        bus.input(caller, Frame::Cancel { call: 2 }),
        [Out::cancel(service, 1)]
    );
}

#[test]
fn batch_collect_with_no_mode_takes_the_methods_own() {
    let (mut bus, caller, service) = bus();
    // A unary method: no stream.
    let out = bus.call(caller, request(1, "svc", "one"));
    assert_eq!(out, [Out::send(service, incoming(1, "one", caller, None))]);
    assert_eq!(
        bus.answer(service, 1, Ok(b"[payload]")),
        [Out::result(caller, 1, Ok(b"[payload]"))]
    );
    // A streaming method: the stream in the method's mode.
    for (id, method, mode) in [
        (2, "down", Download),
        (3, "up", Upload),
        (4, "both", Bidirectional),
    ] {
        let out = bus.call(caller, request(id, "svc", method));
        let stream = id - 1;
        let expected = opened(&mut bus, (caller, service), (id, id, stream), method, mode);
        assert_eq!(out, expected, "{method}");
    }
}

#[test]
fn a_mode_other_than_the_methods_is_no_such_method() {
    let (mut bus, caller, _) = bus();
    let mut req = request(1, "svc", "down");
    req.mode = Some(Upload);
    assert_eq!(
        bus.call(caller, req),
        [Out::error_result(
            caller,
            1,
            ErrorCode::NoSuchMethod,
            "method svc.down streams as Download, not Upload"
        )]
    );
    let mut req = request(2, "svc", "one");
    req.mode = Some(Download);
    assert_eq!(
        bus.call(caller, req),
        [Out::error_result(
            caller,
            2,
            ErrorCode::NoSuchMethod,
            "method svc.one streams as Unary, not Download"
        )]
    );
    assert_eq!(bus.router.live_calls(), 0);
    assert!(bus.ports().asked.is_empty());
}

#[test]
fn unknown_services_and_methods_are_refused() {
    let (mut bus, caller, _) = bus();
    assert_eq!(
        bus.call(caller, request(1, "nope", "one")),
        [Out::error_result(
            caller,
            1,
            ErrorCode::NoSuchService,
            "no service named nope"
        )]
    );
    assert_eq!(
        bus.call(caller, request(2, "svc", "nope")),
        [Out::error_result(
            caller,
            2,
            ErrorCode::NoSuchMethod,
            "service svc has no method nope"
        )]
    );
    // A refused call is not live: its id may be used again.
    assert_eq!(
        bus.call(caller, request(1, "nope", "one")),
        [Out::error_result(
            caller,
            1,
            ErrorCode::NoSuchService,
            "no service named nope"
        )]
    );
    assert!(!bus.router.take_refused(caller), "not a refusal for limits");
}

#[test]
fn a_connection_may_call_its_own_service() {
    let mut bus = Bus::default();
    let me = bus.connect(UID);
    bus.serve(me, "svc", METHODS);
    let out = bus.call(me, request(1, "svc", "both"));
    let expected = opened(&mut bus, (me, me), (1, 1, 1), "both", Bidirectional);
    assert_eq!(out, expected);
    assert_eq!(bus.answer(me, 1, Ok(b"")), [Out::result(me, 1, Ok(b""))]);
}
