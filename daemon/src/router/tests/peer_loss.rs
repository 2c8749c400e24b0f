//! Peers that leave mid-call, and the broker's shutdown.

use super::*;

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
