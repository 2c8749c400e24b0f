//! Refusals and quotas per uid, and the access policy.

use super::*;

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

#[test]
fn an_unregistered_service_frees_its_name_and_quota_and_its_calls_go_on() {
    let mut bus = Bus::new(quota(|q| q.services = 1));
    let (a, b, caller) = (bus.connect(UID), bus.connect(UID), bus.connect(UID));
    bus.serve(a, "one", &[("m", StreamMode::Unary)]);
    let out = bus.call(caller, request(7, "one", "m"));
    assert!(
        matches!(&out[..], [Out::Send { to, .. }] if *to == a),
        "{out:?}"
    );
    let unregister = |name: &str| Frame::Unregister {
        service: name.into(),
    };
    assert!(bus.input(a, unregister("one")).is_empty());
    assert_eq!(bus.router.services(), 0);
    assert_eq!(bus.router.usage(UID).services, 0);
    // The name and the uid's quota are free again.
    bus.serve(b, "one", &[("m", StreamMode::Unary)]);
    // The call delivered before goes on; a new one goes to the new owner.
    let out = bus.answer(a, 1, Ok(b"done"));
    assert_eq!(out, [Out::result(caller, 7, Ok(b"done"))]);
    let out = bus.call(caller, request(8, "one", "m"));
    assert!(
        matches!(&out[..], [Out::Send { to, .. }] if *to == b),
        "{out:?}"
    );
    // Only the owner unregisters a name: anyone else's attempt changes
    // nothing, nor does a name never registered.
    assert!(bus.input(a, unregister("one")).is_empty());
    assert!(bus.input(caller, unregister("nothing")).is_empty());
    assert_eq!(bus.router.services(), 1);
    assert_eq!(bus.router.usage(UID).services, 1);
    // A connection's unregistered services are not given back twice.
    assert!(bus.disconnect(a).is_empty());
    assert_eq!(bus.router.usage(UID).services, 1);
}
