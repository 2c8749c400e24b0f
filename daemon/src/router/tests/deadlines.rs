//! Deadlines: the time left travels to the service, the broker fails the
//! call when it passes (cancel to the service, `DeadlineExceeded` to the
//! caller), a call already past it is refused, and a call that finishes in
//! time leaves no deadline behind.

use super::*;

const MS: Duration = Duration::from_millis(1);

fn with_deadline(call: CallId, method: &str, left: Duration) -> shmbus::frame::CallRequest {
    let mut req = request(call, "svc", method);
    req.time_left_us = Some(left.as_micros() as u64);
    req
}

#[test]
fn the_time_left_reaches_the_service_and_the_broker_fails_the_call_when_it_passes() {
    let (mut bus, caller, service) = bus();
    let out = bus.call(caller, with_deadline(7, "one", 300 * MS));
    let Out::Send {
        frame: Frame::Incoming { time_left_us, .. },
        ..
    } = &out[0]
    else {
        panic!("{out:?}")
    };
    assert_eq!(*time_left_us, Some(300_000));
    assert_eq!(bus.router.next_deadline(), Some(bus.now + 300 * MS));
    // Not yet.
    bus.advance(299 * MS);
    assert_eq!(bus.expire(), []);
    bus.advance(MS);
    assert_eq!(
        bus.expire(),
        [
            Out::cancel(service, 1),
            Out::error_result(
                caller,
                7,
                ErrorCode::DeadlineExceeded,
                "the call's deadline passed"
            ),
        ]
    );
    assert_eq!(bus.router.live_calls(), 0);
    assert_eq!(bus.router.next_deadline(), None);
    // The service's late answer goes nowhere.
    assert_eq!(bus.answer(service, 1, Ok(b"late")), []);
}

#[test]
fn a_stream_past_its_deadline_gives_its_quota_back_and_tells_the_monitor() {
    let (mut bus, caller, service) = bus();
    let monitor = bus.connect(UID);
    bus.input(monitor, Frame::Monitor { request: 1 });
    bus.call(caller, with_deadline(7, "down", 50 * MS));
    assert_eq!(bus.router.usage(UID).streams, 1);
    bus.advance(60 * MS);
    let out = bus.expire();
    assert_eq!(out[0], Out::cancel(service, 1));
    let gone = error(ErrorCode::DeadlineExceeded, "the call's deadline passed");
    assert_eq!(
        out[1],
        Out::send(
            monitor,
            event(1, "down", caller, MonitorKind::Error(gone.clone()))
        )
    );
    assert_eq!(out[2], Out::result(caller, 7, Err(gone)));
    assert_eq!(out.len(), 3);
    assert_eq!(bus.router.usage(UID).streams, 0);
    assert_eq!(bus.router.live_streams(), 0);
}

#[test]
fn a_call_whose_deadline_passed_before_routing_never_reaches_the_service() {
    let (mut bus, caller, _service) = bus();
    let out = bus.call(caller, with_deadline(7, "down", Duration::ZERO));
    assert_eq!(
        out,
        [Out::error_result(
            caller,
            7,
            ErrorCode::DeadlineExceeded,
            "the call's deadline passed before the broker routed it"
        )]
    );
    assert!(bus.ports().asked.is_empty(), "no port made");
    assert_eq!(bus.router.live_calls(), 0);
}

#[test]
fn deadlines_fire_soonest_first_and_finished_calls_leave_none_behind() {
    let (mut bus, caller, service) = bus();
    bus.call(caller, with_deadline(1, "one", 30 * MS));
    bus.call(caller, with_deadline(2, "one", 10 * MS));
    bus.call(caller, with_deadline(3, "one", 20 * MS));
    bus.call(caller, request(4, "svc", "one"));
    assert_eq!(bus.router.next_deadline(), Some(bus.now + 10 * MS));
    // Call 3 (broker call 3) answers in time: its deadline goes with it.
    assert_eq!(
        bus.answer(service, 3, Ok(b"ok")),
        [Out::result(caller, 3, Ok(b"ok"))]
    );
    bus.advance(40 * MS);
    let out = bus.expire();
    let results: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            Out::Send {
                frame: Frame::Result { call, .. },
                ..
            } => Some(*call),
            _ => None,
        })
        .collect();
    assert_eq!(results, [2, 1], "soonest first; the answered call is gone");
    assert_eq!(
        bus.router.live_calls(),
        1,
        "the call without a deadline lives on"
    );
    assert_eq!(bus.router.next_deadline(), None);
    // A disconnect takes its calls' deadlines too.
    bus.call(caller, with_deadline(5, "one", 10 * MS));
    bus.disconnect(caller);
    assert_eq!(bus.router.next_deadline(), None);
}
