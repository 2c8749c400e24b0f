//! The router driven as frames in, outputs out (see [`super::testing`]):
//! every flow of `PROTOCOL.md`, refusals and quotas, policy, peer loss,
//! shutdown, hostile frames and the log limiter, each output checked whole
//! (frame, destination, descriptors). No sockets but inert ones, no threads,
//! no clock.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shmbus::credit::CreditSpec;
use shmbus::frame::{
    BrokerStatus, CallId, Capabilities, ErrorCode, FallbackReason, Frame, MethodSpec, MonitorEvent,
    MonitorKind, StreamId, StreamInfo, StreamMode, StreamOpen, Transport, TransportPreference,
    PROTOCOL_VERSION,
};
use shmbus::state::StreamState;
use StreamMode::{Bidirectional, Download, Unary, Upload};

use super::testing::{error, request, Bus, Out};
use super::{ConnId, PortSpec};
use crate::config::Limits;
use crate::log_limit::{BURST, WINDOW};
use crate::policy::{Policy, ServiceRule, Uids};
use crate::quota::{Quota, Usage};

const UID: u32 = 1000;
const RING: u32 = shmbus::DEFAULT_RING_SIZE;
const HWM: u64 = shmbus::DEFAULT_HIGH_WATER_MARK;
const METHODS: &[(&str, StreamMode)] = &[
    ("one", Unary),
    ("down", Download),
    ("up", Upload),
    ("both", Bidirectional),
];

/// A bus with a caller (conn 1) and a service "svc" (conn 2) of the same
/// uid, so that the personal service may be called.
fn bus_with(limits: Limits) -> (Bus, ConnId, ConnId) {
    let mut bus = Bus::new(limits);
    let caller = bus.connect(UID);
    let service = bus.connect(UID);
    bus.serve(service, "svc", METHODS);
    (bus, caller, service)
}

fn bus() -> (Bus, ConnId, ConnId) {
    bus_with(Limits::default())
}

/// The stream-open the broker sends for a call with default settings.
fn open(stream: StreamId, call: CallId, mode: StreamMode) -> StreamOpen {
    StreamOpen {
        stream,
        call,
        mode,
        transport: Transport::SharedMemory,
        fallback: None,
        ring_size: RING,
        credit: CreditSpec::bytes(HWM),
    }
}

/// The incoming frame for broker call `call` of `method` from conn `caller`
/// of [`UID`], with no arguments.
fn incoming(call: CallId, method: &str, caller: ConnId, open: Option<StreamOpen>) -> Frame {
    Frame::Incoming {
        call,
        service: "svc".into(),
        method: method.into(),
        args: Vec::new(),
        open,
        caller_pid: Bus::creds(caller, UID).pid,
        caller_uid: UID,
    }
}

/// What a streaming call with default settings outputs: incoming (with
/// the service's descriptors) first, then stream-open (with the caller's).
fn opened(
    bus: &mut Bus,
    (caller, service): (ConnId, ConnId),
    (call, broker_call, stream): (CallId, CallId, StreamId),
    method: &str,
    mode: StreamMode,
) -> Vec<Out> {
    let port = bus.last_port();
    assert_eq!(port.spec.stream, stream);
    let theirs = StreamOpen {
        call: broker_call,
        ..open(stream, call, mode)
    };
    vec![
        Out::send_fds(
            service,
            incoming(broker_call, method, caller, Some(theirs)),
            &port.service,
        ),
        Out::send_fds(
            caller,
            Frame::StreamOpen(open(stream, call, mode)),
            &port.caller,
        ),
    ]
}

fn event(stream: StreamId, method: &str, caller: ConnId, kind: MonitorKind) -> Frame {
    Frame::Event(MonitorEvent {
        stream,
        service: "svc".into(),
        method: method.into(),
        caller_pid: Bus::creds(caller, UID).pid,
        bytes: 0,
        kind,
    })
}

fn usage(streams: usize, ring_bytes: u64) -> Usage {
    Usage {
        connections: 2,
        services: 1,
        streams,
        ring_bytes,
        fds_in_flight: 0,
    }
}

fn quota(f: impl FnOnce(&mut Quota)) -> Limits {
    let mut limits = Limits::default();
    f(&mut limits.quotas.default);
    limits
}

// ---------------------------------------------------------------- flows

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

// ------------------------------------------------------------ transport

/// The stream-open of a call from `caller` to `service` as it went out.
fn sent_open(out: &[Out], caller: ConnId) -> StreamOpen {
    out.iter()
        .find_map(|o| match o {
            Out::Send {
                to,
                frame: Frame::StreamOpen(open),
                ..
            } if *to == caller => Some(open.clone()),
            _ => None,
        })
        .expect("a stream-open to the caller")
}

#[test]
fn the_transport_follows_the_callers_wish_and_both_peers_capabilities() {
    let mut bus = Bus::default();
    let shm = bus.connect(UID);
    let plain = bus.connect_with(UID, false);
    bus.serve(shm, "shm", &[("down", Download)]);
    bus.serve(plain, "plain", &[("down", Download)]);
    let mut id = 0;
    let mut call = |bus: &mut Bus, from: ConnId, service: &str, pref: TransportPreference| {
        id += 1;
        let mut req = request(id, service, "down");
        req.transport = pref;
        bus.call(from, req)
    };
    let pwsm = |side: &str| Some(FallbackReason::PeerWithoutSharedMemory(side.into()));
    use TransportPreference::{Auto, SharedMemory, Socket};
    let cases = [
        (shm, "shm", Auto, Transport::SharedMemory, None),
        (
            shm,
            "shm",
            Socket,
            Transport::Socket,
            Some(FallbackReason::Requested),
        ),
        (plain, "shm", Auto, Transport::Socket, pwsm("caller")),
        (shm, "plain", Auto, Transport::Socket, pwsm("service")),
        (
            plain,
            "plain",
            Socket,
            Transport::Socket,
            Some(FallbackReason::Requested),
        ),
    ];
    for (from, service, pref, transport, fallback) in cases {
        let out = call(&mut bus, from, service, pref);
        let open = sent_open(&out, from);
        assert_eq!((open.transport, open.fallback), (transport, fallback));
        let port = bus.last_port();
        assert_eq!(port.spec.transport, transport);
        let per_direction = if transport == Transport::Socket { 1 } else { 2 };
        assert_eq!(port.caller.len(), per_direction);
    }
    // Shared memory or nothing.
    let before = bus.ports().asked.len();
    for (from, service, side) in [(plain, "shm", "caller"), (shm, "plain", "service")] {
        let out = call(&mut bus, from, service, SharedMemory);
        let Out::Send {
            frame: Frame::Result {
                outcome: Err(e), ..
            },
            ..
        } = &out[0]
        else {
            panic!("{out:?}")
        };
        assert_eq!(e.code, ErrorCode::SharedMemoryUnavailable);
        assert_eq!(
            e.message,
            format!(
                "shared memory required but unavailable: the {side} did not offer shared memory"
            )
        );
    }
    assert_eq!(bus.ports().asked.len(), before, "no port asked for");
    let status = bus.router.status(bus.now);
    assert_eq!(
        (status.shm_streams_total, status.socket_streams_total),
        (1, 4)
    );
    assert_eq!(bus.router.usage(UID).streams, 5);
}

#[test]
fn a_failed_shared_memory_setup_falls_back_to_the_socket_unless_required() {
    let (mut bus, caller, service) = bus();
    bus.ports().shm_fails = Some("memfd_create: out of memory".into());
    let out = bus.call(caller, request(1, "svc", "both"));
    let open = sent_open(&out, caller);
    assert_eq!(open.transport, Transport::Socket);
    assert_eq!(
        open.fallback,
        Some(FallbackReason::SetupFailed(
            "memfd_create: out of memory".into()
        ))
    );
    let asked: Vec<Transport> = bus.ports().asked.iter().map(|s| s.transport).collect();
    assert_eq!(asked, [Transport::SharedMemory, Transport::Socket]);
    let port = bus.last_port();
    assert_eq!(port.spec.stream, 1, "the same stream, on the socket");
    assert_eq!(port.caller.len(), 2);
    assert!(matches!(&out[0], Out::Send { to, fds, .. } if *to == service && *fds == port.service));

    let mut req = request(2, "svc", "down");
    req.transport = TransportPreference::SharedMemory;
    assert_eq!(
        bus.call(caller, req),
        [Out::error_result(
            caller,
            2,
            ErrorCode::SharedMemoryUnavailable,
            "shared-memory port setup failed: memfd_create: out of memory"
        )]
    );
    assert_eq!(bus.router.usage(UID), usage(1, 2 * RING as u64));
}

#[test]
fn a_port_that_cannot_be_made_refuses_the_call_and_charges_nothing() {
    let (mut bus, caller, service) = bus();
    bus.ports().shm_fails = Some("no memfd".into());
    bus.ports().socket_fails = true;
    assert_eq!(
        bus.call(caller, request(1, "svc", "down")),
        [Out::error_result(
            caller,
            1,
            ErrorCode::LimitsExceeded,
            "stream port setup failed: no socket for you"
        )]
    );
    assert_eq!(bus.router.usage(UID), usage(0, 0));
    assert_eq!(bus.router.live_calls(), 0);
    assert!(bus.router.take_refused(caller));
    let status = bus.router.status(bus.now);
    assert_eq!(
        (
            status.calls_total,
            status.shm_streams_total,
            status.socket_streams_total
        ),
        (0, 0, 0),
        "a refused call is not counted"
    );
    // The next call that works gets the next broker call id.
    bus.ports().socket_fails = false;
    bus.ports().shm_fails = None;
    let out = bus.call(caller, request(2, "svc", "down"));
    let expected = opened(&mut bus, (caller, service), (2, 1, 2), "down", Download);
    assert_eq!(out, expected);
}

#[test]
fn credit_and_ring_size_are_checked_before_any_port_is_made() {
    let (mut bus, caller, _) = bus();
    let mut req = request(1, "svc", "down");
    req.credit = CreditSpec::items((1 << 48) + 1);
    assert_eq!(
        bus.call(caller, req),
        [Out::error_result(
            caller,
            1,
            ErrorCode::LimitsExceeded,
            "high-water mark 281474976710657 is out of range"
        )]
    );
    for size in [3000, 4097, 128 << 20] {
        let mut req = request(2, "svc", "down");
        req.ring_size = Some(size);
        assert_eq!(
            bus.call(caller, req),
            [Out::error_result(
                caller,
                2,
                ErrorCode::LimitsExceeded,
                &format!("ring size {size} must be a power of two between 4096 and 67108864")
            )]
        );
    }
    assert!(bus.ports().asked.is_empty());
    assert_eq!(bus.router.usage(UID), usage(0, 0));
    // Credit is not a unary call's business.
    let mut req = request(3, "svc", "one");
    req.credit = CreditSpec::items(u64::MAX);
    assert_eq!(bus.call(caller, req).len(), 1);
    assert_eq!(bus.router.live_calls(), 1);
}

// --------------------------------------------------- refusals and quotas

#[test]
fn connections_per_uid_are_limited_and_given_back() {
    let mut bus = Bus::new(quota(|q| q.connections = 2));
    let a = bus.connect(UID);
    let _b = bus.connect(UID);
    assert_eq!(
        bus.try_connect(UID),
        Err(error(
            ErrorCode::LimitsExceeded,
            "uid 1000 is at its quota of 2 connections"
        ))
    );
    assert_eq!(bus.router.connections(), 2);
    bus.connect(UID + 1);
    assert!(bus.disconnect(a).is_empty());
    bus.connect(UID);
    assert_eq!(bus.router.usage(UID).connections, 2);
}

#[test]
fn services_per_uid_count_across_connections() {
    let mut bus = Bus::new(quota(|q| q.services = 2));
    let a = bus.connect(UID);
    let b = bus.connect(UID);
    bus.serve(a, "one", &[]);
    bus.serve(b, "two", &[]);
    assert_eq!(
        bus.register(b, 9, "three", &[]),
        [Out::send(
            b,
            Frame::Refused {
                request: 9,
                error: error(
                    ErrorCode::LimitsExceeded,
                    "uid 1000 is at its quota of 2 services"
                )
            }
        )]
    );
    let other = bus.connect(UID + 1);
    bus.serve(other, "three", &[]);
    // A connection's services go with it.
    assert!(bus.disconnect(a).is_empty());
    assert_eq!(bus.router.services(), 2);
    bus.serve(b, "three-again", &[]);
    assert_eq!(bus.router.usage(UID).services, 2);
}

#[test]
fn registrations_are_checked_name_methods_and_limits() {
    let mut limits = Limits {
        max_methods_per_service: 2,
        max_services_per_connection: 1,
        ..Limits::default()
    };
    limits.quotas.default.services = 10;
    let mut bus = Bus::new(limits);
    let a = bus.connect(UID);
    let b = bus.connect(UID);
    let refused = |to, request, code, msg: &str| {
        vec![Out::send(
            to,
            Frame::Refused {
                request,
                error: error(code, msg),
            },
        )]
    };
    let long = "x".repeat(256);
    for name in ["", "a b", "tab\t", long.as_str()] {
        let out = bus.register(a, 1, name, &[]);
        let msg = format!("invalid service name {name:?}");
        assert_eq!(out, refused(a, 1, ErrorCode::Denied, &msg));
    }
    assert_eq!(
        bus.register(a, 2, "svc", &[("a", Unary), ("b", Unary), ("c", Unary)]),
        refused(a, 2, ErrorCode::LimitsExceeded, "more than 2 methods")
    );
    assert_eq!(
        bus.register(a, 3, "svc", &[("a", Unary), ("a", Download)]),
        refused(
            a,
            3,
            ErrorCode::Denied,
            "invalid or repeated method name \"a\""
        )
    );
    assert_eq!(
        bus.register(a, 4, "svc", &[("bad name", Unary)]),
        refused(
            a,
            4,
            ErrorCode::Denied,
            "invalid or repeated method name \"bad name\""
        )
    );
    bus.serve(a, "svc", &[("a", Unary)]);
    assert_eq!(
        bus.register(b, 5, "svc", &[]),
        refused(
            b,
            5,
            ErrorCode::NameTaken,
            "service svc is already registered"
        )
    );
    assert_eq!(
        bus.register(a, 6, "other", &[]),
        refused(
            a,
            6,
            ErrorCode::LimitsExceeded,
            "too many services on one connection"
        )
    );
    assert_eq!(bus.router.usage(UID).services, 1);
}

#[test]
fn streams_per_uid_are_limited_unary_calls_are_not() {
    let (mut bus, caller, service) = bus_with(quota(|q| q.streams = 1));
    bus.call(caller, request(1, "svc", "down"));
    assert_eq!(
        bus.call(caller, request(2, "svc", "down")),
        [Out::error_result(
            caller,
            2,
            ErrorCode::LimitsExceeded,
            "uid 1000 is at its quota of 1 streams"
        )]
    );
    assert!(bus.router.take_refused(caller), "paused for a while");
    assert!(!bus.router.take_refused(caller), "once");
    assert_eq!(
        bus.call(caller, request(3, "svc", "one")),
        [Out::send(service, incoming(2, "one", caller, None))]
    );
    bus.answer(service, 1, Ok(b""));
    let out = bus.call(caller, request(2, "svc", "down"));
    let expected = opened(&mut bus, (caller, service), (2, 3, 2), "down", Download);
    assert_eq!(out, expected, "the stream given back is available again");
}

#[test]
fn ring_bytes_per_uid_are_limited_by_ring_size_times_directions() {
    let (mut bus, caller, _) = bus_with(quota(|q| q.ring_bytes = 3 * RING as u64));
    bus.call(caller, request(1, "svc", "both"));
    assert_eq!(
        bus.call(caller, request(2, "svc", "both")),
        [Out::error_result(
            caller,
            2,
            ErrorCode::LimitsExceeded,
            &format!(
                "uid 1000 is at its quota of {} ring bytes ({} in use, {} asked)",
                3 * RING,
                2 * RING,
                2 * RING
            )
        )]
    );
    // One more direction fits.
    let out = bus.call(caller, request(3, "svc", "down"));
    assert_eq!(out.len(), 2);
    assert_eq!(bus.router.usage(UID), usage(2, 3 * RING as u64));
}

#[test]
fn descriptors_in_flight_are_limited_until_delivered() {
    let (mut bus, caller, service) = bus_with(quota(|q| q.fds_in_flight = 5));
    bus.hold_fds = true;
    // A download queues 2 descriptors to each side (same uid: 4).
    assert_eq!(bus.call(caller, request(1, "svc", "down")).len(), 2);
    assert_eq!(bus.router.usage(UID).fds_in_flight, 4);
    assert_eq!(
        bus.call(caller, request(2, "svc", "down")),
        [Out::error_result(
            caller,
            2,
            ErrorCode::LimitsExceeded,
            "uid 1000 is at its quota of 5 descriptors in flight"
        )]
    );
    // Nothing of the refused stream stays charged.
    assert_eq!(bus.router.usage(UID).fds_in_flight, 4);
    assert_eq!(bus.router.usage(UID).streams, 1);
    bus.deliver_held();
    assert_eq!(bus.router.usage(UID).fds_in_flight, 0);
    let out = bus.call(caller, request(2, "svc", "down"));
    let expected = opened(&mut bus, (caller, service), (2, 2, 3), "down", Download);
    assert_eq!(out, expected);
}

#[test]
fn the_services_descriptor_quota_refuses_the_stream_and_gives_the_callers_back() {
    let mut limits = Limits {
        policy: Policy {
            rules: vec![ServiceRule {
                pattern: "sys.*".into(),
                register: Uids::Any,
                call: Uids::Any,
            }],
        },
        ..Limits::default()
    };
    limits.quotas.per_uid.insert(
        2000,
        Quota {
            fds_in_flight: 1,
            ..Quota::default()
        },
    );
    let mut bus = Bus::new(limits);
    let caller = bus.connect(UID);
    let service = bus.connect(2000);
    bus.serve(service, "sys.files", &[("down", Download)]);
    bus.hold_fds = true;
    assert_eq!(
        bus.call(caller, request(1, "sys.files", "down")),
        [Out::error_result(
            caller,
            1,
            ErrorCode::LimitsExceeded,
            "uid 2000 is at its quota of 1 descriptors in flight"
        )]
    );
    assert_eq!(bus.router.usage(UID).fds_in_flight, 0);
    assert_eq!(bus.router.usage(UID).streams, 0);
    assert_eq!(bus.router.usage(2000).fds_in_flight, 0);
}

#[test]
fn a_per_uid_override_replaces_the_default_quota() {
    let mut limits = quota(|q| q.streams = 1);
    limits.quotas.per_uid.insert(
        UID,
        Quota {
            streams: 3,
            ..Quota::default()
        },
    );
    let (mut bus, caller, _) = bus_with(limits);
    for id in 1..=3 {
        assert_eq!(bus.call(caller, request(id, "svc", "down")).len(), 2);
    }
    assert_eq!(
        bus.call(caller, request(4, "svc", "down")),
        [Out::error_result(
            caller,
            4,
            ErrorCode::LimitsExceeded,
            "uid 1000 is at its quota of 3 streams"
        )]
    );
    // Another uid has the default.
    let other = bus.connect(7);
    bus.serve(other, "mine", &[("down", Download)]);
    assert_eq!(bus.call(other, request(1, "mine", "down")).len(), 2);
    assert_eq!(
        bus.call(other, request(2, "mine", "down")),
        [Out::error_result(
            other,
            2,
            ErrorCode::LimitsExceeded,
            "uid 7 is at its quota of 1 streams"
        )]
    );
}

#[test]
fn live_calls_per_connection_are_limited() {
    let limits = Limits {
        max_calls_per_connection: 2,
        ..Limits::default()
    };
    let (mut bus, caller, service) = bus_with(limits);
    bus.call(caller, request(1, "svc", "one"));
    bus.call(caller, request(2, "svc", "one"));
    assert_eq!(
        bus.call(caller, request(3, "svc", "one")),
        [Out::error_result(
            caller,
            3,
            ErrorCode::LimitsExceeded,
            "too many live calls on one connection"
        )]
    );
    let other = bus.connect(UID);
    assert_eq!(bus.call(other, request(3, "svc", "one")).len(), 1);
    bus.answer(service, 1, Ok(b""));
    assert_eq!(bus.call(caller, request(3, "svc", "one")).len(), 1);
}

// ---------------------------------------------------------------- policy

#[test]
fn personal_services_are_called_by_their_owners_uid_and_root() {
    let mut bus = Bus::default();
    let owner = bus.connect(UID);
    let stranger = bus.connect(UID + 1);
    let root = bus.connect(0);
    bus.serve(owner, "mine", &[("one", Unary)]);
    assert_eq!(
        bus.call(stranger, request(1, "mine", "one")),
        [Out::error_result(
            stranger,
            1,
            ErrorCode::Denied,
            "uid 1001 may not call mine: it belongs to uid 1000 and is not declared system-wide"
        )]
    );
    assert!(!bus.router.take_refused(stranger));
    assert_eq!(bus.call(root, request(1, "mine", "one")).len(), 1);
    assert_eq!(bus.call(owner, request(1, "mine", "one")).len(), 1);
    // Anyone may register a personal name.
    bus.serve(stranger, "yours", &[]);
}

#[test]
fn declared_services_say_who_may_register_and_call_them() {
    let limits = Limits {
        policy: Policy {
            rules: vec![
                ServiceRule {
                    pattern: "sys.*".into(),
                    register: Uids::Only(vec![100]),
                    call: Uids::Any,
                },
                ServiceRule {
                    pattern: "team.*".into(),
                    register: Uids::Any,
                    call: Uids::Only(vec![200]),
                },
            ],
        },
        ..Limits::default()
    };
    let mut bus = Bus::new(limits);
    let sys = bus.connect(100);
    let intruder = bus.connect(101);
    let member = bus.connect(200);
    assert_eq!(
        bus.register(intruder, 1, "sys.log", &[]),
        [Out::send(
            intruder,
            Frame::Refused {
                request: 1,
                error: error(
                    ErrorCode::Denied,
                    "uid 101 may not register sys.log (declared by rule \"sys.*\")"
                )
            }
        )]
    );
    bus.serve(sys, "sys.log", &[("one", Unary)]);
    assert_eq!(bus.call(intruder, request(1, "sys.log", "one")).len(), 1);
    bus.serve(intruder, "team.x", &[("one", Unary)]);
    assert_eq!(
        bus.call(intruder, request(2, "team.x", "one")),
        [Out::error_result(
            intruder,
            2,
            ErrorCode::Denied,
            "uid 101 may not call team.x (declared by rule \"team.*\")"
        )]
    );
    assert_eq!(bus.call(member, request(1, "team.x", "one")).len(), 1);
}

// ------------------------------------------------------------- peer loss

#[test]
fn a_caller_gone_mid_call_cancels_it_at_the_service_and_gives_the_quota_back() {
    let (mut bus, caller, service) = bus();
    let watcher = bus.connect(UID);
    bus.input(watcher, Frame::Monitor { request: 1 });
    bus.call(caller, request(7, "svc", "down"));
    bus.call(caller, request(8, "svc", "one"));
    let out = bus.disconnect(caller);
    assert_eq!(
        out,
        [
            Out::send(watcher, event(1, "down", caller, MonitorKind::Cancel)),
            Out::cancel(service, 1),
            Out::cancel(service, 2),
        ]
    );
    assert_eq!(bus.router.live_calls(), 0);
    let mut held = usage(0, 0);
    held.connections = 2;
    assert_eq!(bus.router.usage(UID), held);
    // The service's late answer is ignored, not a violation.
    assert!(bus.answer(service, 1, Ok(b"late")).is_empty());
    assert!(bus.answer(service, 2, Ok(b"late")).is_empty());
    assert!(bus.disconnect(caller).is_empty(), "once");
}

#[test]
fn a_service_gone_mid_call_fails_it_at_the_caller_and_unregisters() {
    let (mut bus, caller, service) = bus();
    let watcher = bus.connect(UID);
    bus.input(watcher, Frame::Monitor { request: 1 });
    bus.call(caller, request(7, "svc", "both"));
    bus.call(caller, request(8, "svc", "one"));
    let gone = error(ErrorCode::PeerGone, "the service disconnected");
    let out = bus.disconnect(service);
    assert_eq!(
        out,
        [
            Out::send(
                watcher,
                event(1, "both", caller, MonitorKind::Error(gone.clone()))
            ),
            Out::result(caller, 7, Err(gone.clone())),
            Out::result(caller, 8, Err(gone)),
        ]
    );
    assert_eq!(bus.router.services(), 0);
    assert_eq!(
        bus.router.usage(UID),
        Usage {
            connections: 2,
            ..Usage::default()
        }
    );
    assert_eq!(
        bus.call(caller, request(9, "svc", "one")),
        [Out::error_result(
            caller,
            9,
            ErrorCode::NoSuchService,
            "no service named svc"
        )]
    );
    // The caller's ids are free again.
    bus.serve(watcher, "svc", METHODS);
    assert_eq!(bus.call(caller, request(7, "svc", "one")).len(), 1);
}

#[test]
fn a_connection_calling_itself_leaves_without_a_word() {
    let mut bus = Bus::default();
    let me = bus.connect(UID);
    bus.serve(me, "svc", METHODS);
    bus.call(me, request(1, "svc", "down"));
    assert!(bus.disconnect(me).is_empty());
    assert_eq!(bus.router.usage(UID), Usage::default());
    assert_eq!(bus.router.live_calls(), 0);
}

#[test]
fn descriptors_queued_toward_a_peer_that_leaves_are_given_back() {
    let (mut bus, caller, service) = bus();
    bus.hold_fds = true;
    bus.call(caller, request(1, "svc", "both"));
    assert_eq!(bus.router.usage(UID).fds_in_flight, 8);
    bus.disconnect(service);
    assert_eq!(bus.router.usage(UID).fds_in_flight, 4);
    bus.disconnect(caller);
    assert_eq!(bus.router.usage(UID), Usage::default());
    // Their late delivery changes nothing.
    bus.deliver_held();
    assert_eq!(bus.router.usage(UID), Usage::default());
}

#[test]
fn a_monitor_that_leaves_gets_no_more_events() {
    let (mut bus, caller, service) = bus();
    let watcher = bus.connect(UID);
    bus.input(watcher, Frame::Monitor { request: 1 });
    bus.disconnect(watcher);
    let out = bus.call(caller, request(1, "svc", "down"));
    let expected = opened(&mut bus, (caller, service), (1, 1, 1), "down", Download);
    assert_eq!(out, expected);
}

// -------------------------------------------------------------- shutdown

#[test]
fn draining_refuses_new_calls_while_calls_in_flight_finish() {
    let (mut bus, caller, service) = bus();
    bus.call(caller, request(1, "svc", "down"));
    bus.router.drain();
    assert_eq!(
        bus.call(caller, request(2, "svc", "one")),
        [Out::error_result(
            caller,
            2,
            ErrorCode::ShuttingDown,
            "the broker is shutting down"
        )]
    );
    assert_eq!(
        bus.answer(service, 1, Ok(b"done")),
        [Out::result(caller, 1, Ok(b"done"))]
    );
    // Registrations are still taken (the broker stops anyway).
    bus.serve(caller, "late", &[]);
}

#[test]
fn a_services_own_shutting_down_answer_gets_no_cancel_back() {
    let (mut bus, caller, service) = bus();
    bus.call(caller, request(1, "svc", "one"));
    bus.router.drain();
    let err = error(
        ErrorCode::ShuttingDown,
        "the service's own broker is stopping",
    );
    assert_eq!(
        bus.answer(service, 1, Err(err.clone())),
        [Out::result(caller, 1, Err(err))]
    );
}

#[test]
fn abort_all_ends_every_call_cancel_to_the_service_then_result_to_the_caller() {
    let (mut bus, caller, service) = bus();
    let watcher = bus.connect(UID);
    bus.input(watcher, Frame::Monitor { request: 1 });
    let other = bus.connect(UID);
    bus.call(caller, request(5, "svc", "both"));
    bus.call(other, request(6, "svc", "one"));
    bus.call(caller, request(7, "svc", "up"));
    bus.router.drain();
    let why = "the broker stopped before the call finished";
    let stop = error(ErrorCode::ShuttingDown, why);
    let out = bus.abort_all(why);
    assert_eq!(
        out,
        [
            Out::cancel(service, 1),
            Out::send(
                watcher,
                event(1, "both", caller, MonitorKind::Error(stop.clone()))
            ),
            Out::result(caller, 5, Err(stop.clone())),
            Out::cancel(service, 2),
            Out::result(other, 6, Err(stop.clone())),
            Out::cancel(service, 3),
            Out::send(
                watcher,
                event(2, "up", caller, MonitorKind::Error(stop.clone()))
            ),
            Out::result(caller, 7, Err(stop)),
        ]
    );
    assert_eq!(bus.router.live_calls(), 0);
    let mut left = usage(0, 0);
    left.connections = 4;
    assert_eq!(bus.router.usage(UID), left);
    assert!(bus.abort_all(why).is_empty());
}

#[test]
fn abort_all_cancels_at_the_services_even_without_a_drain_first() {
    let (mut bus, caller, service) = bus();
    bus.call(caller, request(1, "svc", "one"));
    assert_eq!(
        bus.abort_all("stop"),
        [
            Out::cancel(service, 1),
            Out::error_result(caller, 1, ErrorCode::ShuttingDown, "stop"),
        ]
    );
}

// --------------------------------------------------------- hostile frames

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

// ------------------------------------------------------------ log limit

/// Collects the lines logged (at warning level and above) while `f` runs.
fn warnings(f: impl FnOnce()) -> Vec<String> {
    #[derive(Clone)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let sink = Sink(Arc::default());
    let writer = sink.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .without_time()
        .with_target(false)
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    let bytes = sink.0.lock().unwrap().clone();
    String::from_utf8(bytes)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn refusals_are_logged_a_few_per_uid_per_window_with_the_count_held_back() {
    let mut bus = Bus::default();
    let owner = bus.connect(UID);
    let stranger = bus.connect(UID + 1);
    let neighbour = bus.connect(UID + 2);
    bus.serve(owner, "mine", &[("one", Unary)]);
    let lines = warnings(|| {
        for id in 0..BURST as u64 + 3 {
            bus.advance(Duration::from_secs(1));
            bus.call(stranger, request(id, "mine", "one"));
        }
        // Another uid has its own budget.
        bus.call(neighbour, request(1, "mine", "one"));
        // A window after the first warning, the next one says how many
        // were held back.
        bus.advance(WINDOW);
        bus.call(stranger, request(99, "mine", "one"));
        bus.call(stranger, request(100, "mine", "one"));
    });
    let from = |uid: u32| {
        lines
            .iter()
            .filter(|l| l.contains(&format!("uid={uid}")))
            .collect::<Vec<_>>()
    };
    let stranger_lines = from(UID + 1);
    assert_eq!(stranger_lines.len(), BURST as usize + 2, "{lines:#?}");
    assert!(stranger_lines.iter().all(|l| l.contains("call denied")));
    assert!(stranger_lines[..BURST as usize]
        .iter()
        .all(|l| !l.contains("not logged")));
    assert!(
        stranger_lines[BURST as usize].contains("(3 earlier warnings for this uid not logged)"),
        "{}",
        stranger_lines[BURST as usize]
    );
    assert!(!stranger_lines[BURST as usize + 1].contains("not logged"));
    assert_eq!(from(UID + 2).len(), 1);
}

#[test]
fn a_window_is_measured_on_the_clock_given_not_the_wall_clock() {
    let (mut bus, caller, _) = bus_with(quota(|q| q.streams = 0));
    let lines = warnings(|| {
        for id in 0..BURST as u64 * 3 {
            bus.call(caller, request(id, "svc", "down"));
        }
    });
    assert_eq!(lines.len(), BURST as usize, "{lines:#?}");
    assert!(lines.iter().all(|l| l.contains("stream refused")));
    let lines = warnings(|| {
        bus.advance(WINDOW - Duration::from_millis(1));
        bus.call(caller, request(0, "svc", "down"));
        bus.advance(Duration::from_millis(1));
        bus.call(caller, request(0, "svc", "down"));
    });
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].contains("(11 earlier warnings for this uid not logged)"));
}

#[test]
fn connections_refused_at_the_quota_are_logged_through_the_limiter() {
    let mut bus = Bus::new(quota(|q| q.connections = 1));
    bus.connect(UID);
    let lines = warnings(|| {
        for _ in 0..20 {
            assert!(bus.try_connect(UID).is_err());
        }
    });
    assert_eq!(lines.len(), BURST as usize);
    assert!(lines[0].contains("connection refused: uid 1000 is at its quota of 1 connections"));
}

#[test]
fn refused_registrations_are_logged() {
    let limits = Limits {
        policy: Policy {
            rules: vec![ServiceRule {
                pattern: "sys.*".into(),
                register: Uids::Only(vec![0]),
                call: Uids::Any,
            }],
        },
        ..quota(|q| q.services = 1)
    };
    let mut bus = Bus::new(limits);
    let a = bus.connect(UID);
    bus.serve(a, "first", &[]);
    let lines = warnings(|| {
        bus.register(a, 1, "sys.x", &[]);
        bus.register(a, 2, "second", &[]);
    });
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(lines[0].contains("registration denied"));
    assert!(lines[1].contains("registration refused: uid 1000 is at its quota of 1 services"));
}
