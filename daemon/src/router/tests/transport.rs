//! How a stream's transport is chosen, and what a port that cannot be made does.

use super::*;

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
