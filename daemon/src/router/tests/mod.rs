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
        time_left_us: None,
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

mod deadlines;
mod flows;
mod hostile;
mod log_limit;
mod peer_loss;
mod quotas;
mod transport;
