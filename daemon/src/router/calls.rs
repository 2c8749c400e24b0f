//! A call's life in the broker. A `call` frame is checked
//! ([`Router::check_call`]), its stream opened ([`Router::open_stream`],
//! which asks the port maker through [`Router::make_port`]), and routed
//! ([`Router::route_call`]). Then come `cancel` and `stream-progress`
//! frames, until the service's `result` (or a disconnect, or the broker's
//! stop) finishes it ([`Router::finish_call`]).

use std::time::Instant;

use shmbus::frame::{
    CallId, CallRequest, ErrorCode, FallbackReason, Frame, MonitorKind, RemoteError, StreamId,
    StreamInfo, StreamMode, StreamOpen, Transport, TransportPreference,
};
use shmbus::state::StreamState;
use shmbus::sys::PeerCredentials;
use tracing::{debug, info, warn};

use super::{
    remote, send, violation, ConnId, LiveCall, Output, PortFds, PortMaker, PortSpec, Router,
};
use crate::quota::Resource;

/// A call that passed its checks: who serves it and how it streams.
struct Admitted {
    /// The service's connection.
    service_conn: ConnId,
    /// The method's mode (a mode the caller named is the same).
    mode: StreamMode,
    /// The caller, as the kernel reported it.
    caller: PeerCredentials,
}

/// The stream of a call about to be routed: its port made, its quotas
/// charged.
struct OpenedStream {
    /// The caller's `stream-open` (under the caller's call id).
    open: StreamOpen,
    /// The port's descriptors, for each side.
    fds: PortFds,
    /// The stream quota charged: (uid, ring bytes).
    charge: (u32, u64),
}

impl<P: PortMaker> Router<P> {
    /// A `call` frame from `conn`: checked, its stream (if the method
    /// streams) opened, then routed to the service. A refused call is
    /// answered with an error `result` alone.
    pub(super) fn call(&mut self, conn: ConnId, req: CallRequest, now: Instant) -> Vec<Output> {
        if self.by_caller.contains_key(&(conn, req.call)) {
            return violation(conn, format!("call id {} reused while live", req.call));
        }
        if req.time_left_us == Some(0) {
            return self.refuse_call(
                conn,
                req.call,
                remote(
                    ErrorCode::DeadlineExceeded,
                    "the call's deadline passed before the broker routed it",
                ),
            );
        }
        let admitted = match self.check_call(conn, &req, now) {
            Ok(admitted) => admitted,
            Err(error) => return self.refuse_call(conn, req.call, error),
        };
        let stream = if admitted.mode == StreamMode::Unary {
            None
        } else {
            match self.open_stream(conn, &admitted, &req, now) {
                Ok(stream) => Some(stream),
                Err(error) => return self.refuse_call(conn, req.call, error),
            }
        };
        self.route_call(conn, req, admitted, stream, now)
    }

    /// The error `result` refusing call `call` of `conn`. A connection
    /// refused for its limits is remembered for [`Router::take_refused`].
    fn refuse_call(&mut self, conn: ConnId, call: CallId, error: RemoteError) -> Vec<Output> {
        if error.code == ErrorCode::LimitsExceeded {
            self.refused.insert(conn);
        }
        vec![send(
            conn,
            Frame::Result {
                call,
                outcome: Err(error),
            },
        )]
    }

    /// Whether `conn` may make this call, in the order `PROTOCOL.md` gives:
    /// the broker is not stopping, the service and the method exist, the
    /// mode asked for (if any) is the method's, policy lets the caller's uid
    /// call it, and the connection is below its live calls.
    fn check_call(
        &mut self,
        conn: ConnId,
        req: &CallRequest,
        now: Instant,
    ) -> Result<Admitted, RemoteError> {
        if self.draining {
            return Err(remote(
                ErrorCode::ShuttingDown,
                "the broker is shutting down",
            ));
        }
        let Some(service) = self.services.get(&req.service) else {
            return Err(remote(
                ErrorCode::NoSuchService,
                format!("no service named {}", req.service),
            ));
        };
        let Some(&mode) = service.methods.get(&req.method) else {
            return Err(remote(
                ErrorCode::NoSuchMethod,
                format!("service {} has no method {}", req.service, req.method),
            ));
        };
        if let Some(asked) = req.mode {
            if asked != mode {
                return Err(remote(
                    ErrorCode::NoSuchMethod,
                    format!(
                        "method {}.{} streams as {mode:?}, not {asked:?}",
                        req.service, req.method
                    ),
                ));
            }
        }
        let service_conn = service.owner;
        let owner = self.peers[&service_conn].creds.uid;
        let caller = &self.peers[&conn];
        let creds = caller.creds;
        if let Err(msg) = self.limits.policy.may_call(&req.service, creds.uid, owner) {
            if let Some(more) = self.log_limit.admit(creds.uid, now) {
                warn!(pid = creds.pid, uid = creds.uid, service = %req.service, "call denied: {msg}{more}");
            }
            return Err(remote(ErrorCode::Denied, msg));
        }
        if caller.live_calls >= self.limits.max_calls_per_connection {
            return Err(remote(
                ErrorCode::LimitsExceeded,
                "too many live calls on one connection",
            ));
        }
        Ok(Admitted {
            service_conn,
            mode,
            caller: creds,
        })
    }

    /// Opens the stream of an admitted streaming call: settles its credit
    /// and ring size, charges the caller's uid the stream and its ring
    /// bytes, makes the port, and charges each side's uid the descriptors
    /// queued toward it. On a refusal nothing stays charged and the port's
    /// descriptors are closed.
    fn open_stream(
        &mut self,
        caller: ConnId,
        call: &Admitted,
        req: &CallRequest,
        now: Instant,
    ) -> Result<OpenedStream, RemoteError> {
        let mut credit = req.credit;
        if credit.high_water_mark == 0 {
            credit.high_water_mark = self.limits.default_high_water_mark;
        }
        credit
            .validate()
            .map_err(|e| remote(ErrorCode::LimitsExceeded, e.to_string()))?;
        let ring_size = req.ring_size.unwrap_or(self.limits.default_ring_size);
        if !shmbus::ring::valid_capacity(ring_size) || ring_size > self.limits.max_ring_size {
            return Err(remote(
                ErrorCode::LimitsExceeded,
                format!(
                    "ring size {ring_size} must be a power of two between {} and {}",
                    shmbus::ring::MIN_CAPACITY,
                    self.limits.max_ring_size
                ),
            ));
        }
        // Quota: the caller's uid pays for the stream and its rings.
        let creds = call.caller;
        let ring_bytes = ring_size as u64 * call.mode.directions().len() as u64;
        if let Err(msg) = self.ledger.charge(
            &self.limits.quotas,
            creds.uid,
            Resource::Streams,
            ring_bytes,
        ) {
            if let Some(more) = self.log_limit.admit(creds.uid, now) {
                warn!(
                    pid = creds.pid,
                    uid = creds.uid,
                    "stream refused: {msg}{more}"
                );
            }
            return Err(remote(ErrorCode::LimitsExceeded, msg));
        }
        let charge = (creds.uid, ring_bytes);
        let spec = PortSpec {
            stream: self.next_stream,
            mode: call.mode,
            transport: Transport::SharedMemory,
            ring_size,
            credit,
        };
        self.next_stream += 1;
        let (open, fds) = match self.make_port(caller, call.service_conn, req, spec, now) {
            Ok(made) => made,
            Err(e) => {
                self.ledger.release(charge.0, Resource::Streams, charge.1);
                return Err(e);
            }
        };
        // Quota: descriptors queued toward each side until delivered.
        if let Err(msg) = self.charge_fds(caller, fds.caller.len()) {
            self.ledger.release(charge.0, Resource::Streams, charge.1);
            return Err(remote(ErrorCode::LimitsExceeded, msg));
        }
        if let Err(msg) = self.charge_fds(call.service_conn, fds.service.len()) {
            self.fds_delivered(caller, fds.caller.len());
            self.ledger.release(charge.0, Resource::Streams, charge.1);
            return Err(remote(ErrorCode::LimitsExceeded, msg));
        }
        Ok(OpenedStream { open, fds, charge })
    }

    /// Makes the port of stream `spec.stream`: shared memory when the
    /// caller allows it, both sides offer it and setup works; else the
    /// socket, with the reason (`PROTOCOL.md`, section 8). Returns the
    /// caller's `stream-open` and the descriptors.
    fn make_port(
        &mut self,
        caller: ConnId,
        service: ConnId,
        req: &CallRequest,
        mut spec: PortSpec,
        now: Instant,
    ) -> Result<(StreamOpen, PortFds), RemoteError> {
        let shm_of = |c: ConnId| self.peers[&c].caps.is_some_and(|k| k.shared_memory);
        let mut fallback = match req.transport {
            TransportPreference::Socket => Some(FallbackReason::Requested),
            _ if !shm_of(caller) => Some(FallbackReason::PeerWithoutSharedMemory("caller".into())),
            _ if !shm_of(service) => {
                Some(FallbackReason::PeerWithoutSharedMemory("service".into()))
            }
            _ => None,
        };
        if let (Some(why), TransportPreference::SharedMemory) = (&fallback, req.transport) {
            return Err(remote(
                ErrorCode::SharedMemoryUnavailable,
                format!("shared memory required but unavailable: {why}"),
            ));
        }
        let mut fds = None;
        if fallback.is_none() {
            match self.ports.make(spec, now) {
                Ok(f) => fds = Some(f),
                Err(e) if req.transport == TransportPreference::SharedMemory => {
                    return Err(remote(
                        ErrorCode::SharedMemoryUnavailable,
                        format!("shared-memory port setup failed: {e}"),
                    ))
                }
                Err(e) => {
                    warn!(stream = spec.stream, error = %e, "shared-memory port setup failed; using the socket");
                    fallback = Some(FallbackReason::SetupFailed(e.to_string()));
                }
            }
        }
        let fds = match fds {
            Some(f) => f,
            None => {
                spec.transport = Transport::Socket;
                self.ports.make(spec, now).map_err(|e| {
                    remote(
                        ErrorCode::LimitsExceeded,
                        format!("stream port setup failed: {e}"),
                    )
                })?
            }
        };
        let open = StreamOpen {
            stream: spec.stream,
            call: req.call,
            mode: spec.mode,
            transport: spec.transport,
            fallback,
            ring_size: spec.ring_size,
            credit: spec.credit,
        };
        Ok((open, fds))
    }

    /// Routes an admitted call whose stream (if any) is open: gives it the
    /// broker's call id, sends `incoming` to the service, then `stream-open`
    /// to the caller, then the monitor `Open` event, and records it live.
    fn route_call(
        &mut self,
        conn: ConnId,
        req: CallRequest,
        call: Admitted,
        stream: Option<OpenedStream>,
        now: Instant,
    ) -> Vec<Output> {
        let broker_call = self.next_call;
        self.next_call += 1;
        self.stats.calls += 1;
        let (caller_pid, caller_uid) = (call.caller.pid, call.caller.uid);
        debug!(call = broker_call, service = %req.service, method = %req.method, pid = caller_pid, uid = caller_uid, "call");
        let mut live = LiveCall {
            caller: conn,
            caller_call: req.call,
            caller_pid,
            service_conn: call.service_conn,
            stream: None,
            charge: None,
            deadline: req
                .time_left_us
                .map(|us| now + std::time::Duration::from_micros(us)),
        };
        let mut out = Vec::with_capacity(2 + self.monitors.len());
        // The caller's stream-open goes out after the service's incoming: the
        // service has the longer way to the first item (wake, map, write).
        let mut caller_open = None;
        let mut open_event = None;
        let (service_open, service_fds) = match stream {
            None => (None, Vec::new()),
            Some(OpenedStream { open, fds, charge }) => {
                match open.transport {
                    Transport::SharedMemory => self.stats.shm_streams += 1,
                    Transport::Socket => self.stats.socket_streams += 1,
                }
                info!(stream = open.stream, transport = ?open.transport, fallback = ?open.fallback, service = %req.service, method = %req.method, "stream open");
                if !self.monitors.is_empty() {
                    open_event = Some(MonitorKind::Open {
                        transport: open.transport,
                        fallback: open.fallback.clone(),
                    });
                }
                live.charge = Some(charge);
                live.stream = Some(StreamInfo {
                    stream: open.stream,
                    service: req.service.clone(),
                    method: req.method.clone(),
                    transport: open.transport,
                    state: StreamState::Opening,
                    bytes: 0,
                    credit_outstanding: open.credit.high_water_mark,
                });
                let service_open = StreamOpen {
                    call: broker_call,
                    ..open.clone()
                };
                caller_open = Some(Output::Send {
                    to: conn,
                    frame: Frame::StreamOpen(open),
                    fds: fds.caller,
                });
                (Some(service_open), fds.service)
            }
        };
        out.push(Output::Send {
            to: call.service_conn,
            frame: Frame::Incoming {
                call: broker_call,
                service: req.service,
                method: req.method,
                args: req.args,
                open: service_open,
                caller_pid,
                caller_uid,
                // Routed in the turn the call arrived: the time left is
                // the caller's.
                time_left_us: req.time_left_us,
            },
            fds: service_fds,
        });
        // Only now the caller's stream-open: a caller holding its stream
        // knows the service has been told (the incoming call is in the
        // service's socket even if the broker dies the next moment).
        out.extend(caller_open);
        if let Some(kind) = open_event {
            out.extend(self.event(&live, kind));
        }
        self.by_caller.insert((conn, req.call), broker_call);
        if let Some(at) = live.deadline {
            self.deadlines.insert((at, broker_call));
        }
        self.calls.insert(broker_call, live);
        if let Some(p) = self.peers.get_mut(&conn) {
            p.live_calls += 1;
        }
        out
    }

    /// A `result` frame from `conn`, the service of call `call`.
    pub(super) fn result(
        &mut self,
        conn: ConnId,
        call: CallId,
        outcome: Result<Vec<u8>, RemoteError>,
    ) -> Vec<Output> {
        match self.calls.get(&call) {
            Some(live) if live.service_conn == conn => {}
            // The caller left (or the call was never ours): nothing to route.
            None if call < self.next_call => return Vec::new(),
            _ => {
                return violation(
                    conn,
                    format!("result for call {call} that it does not serve"),
                )
            }
        }
        self.finish_call(call, outcome)
    }

    /// Removes a call, gives back its quota, and sends its result to the
    /// caller (after the monitor event, for a streaming call).
    pub(super) fn finish_call(
        &mut self,
        call: CallId,
        outcome: Result<Vec<u8>, RemoteError>,
    ) -> Vec<Output> {
        let Some(live) = self.calls.remove(&call) else {
            return Vec::new();
        };
        self.forget(call, &live);
        let mut out = Vec::new();
        if let Some(s) = &live.stream {
            let why = match &outcome {
                Ok(_) => "finished".to_string(),
                Err(e) if e.code == ErrorCode::Aborted => "cancelled".to_string(),
                Err(e) => format!("failed ({:?}: {})", e.code, e.message),
            };
            info!(stream = s.stream, bytes = s.bytes, why = ?why, "stream closed");
            self.stats.finished_bytes += s.bytes;
            if !self.monitors.is_empty() {
                let kind = match &outcome {
                    Ok(_) => MonitorKind::End,
                    Err(e) => MonitorKind::Error(e.clone()),
                };
                out.extend(self.event(&live, kind));
            }
        }
        out.push(send(
            live.caller,
            Frame::Result {
                call: live.caller_call,
                outcome,
            },
        ));
        out
    }

    /// A `cancel` frame from `conn` for its call `call`: forwarded to the
    /// service; ignored for a call that is not live.
    pub(super) fn cancel(&mut self, conn: ConnId, call: CallId) -> Vec<Output> {
        match self.by_caller.get(&(conn, call)) {
            Some(&b) => {
                let live = &self.calls[&b];
                info!(call = b, stream = ?live.stream.as_ref().map(|s| s.stream), "cancel");
                let mut out = self.event(live, MonitorKind::Cancel);
                out.push(send(live.service_conn, Frame::Cancel { call: b }));
                out
            }
            None => Vec::new(),
        }
    }

    /// A `stream-progress` frame from `conn`: kept for `list` if the stream
    /// belongs to a call in which `conn` is caller or service.
    pub(super) fn progress(
        &mut self,
        conn: ConnId,
        stream: StreamId,
        state: StreamState,
        bytes: u64,
        credit: u64,
    ) {
        for live in self.calls.values_mut() {
            if live.caller != conn && live.service_conn != conn {
                continue;
            }
            if let Some(s) = live.stream.as_mut().filter(|s| s.stream == stream) {
                // Both halves report; the sender's count is never behind the receiver's.
                s.state = state;
                s.bytes = s.bytes.max(bytes);
                s.credit_outstanding = credit;
                return;
            }
        }
    }

    /// Drops finished call `id`'s bookkeeping and gives back its quota.
    pub(super) fn forget(&mut self, id: CallId, live: &LiveCall) {
        self.by_caller.remove(&(live.caller, live.caller_call));
        if let Some(at) = live.deadline {
            self.deadlines.remove(&(at, id));
        }
        if let Some(p) = self.peers.get_mut(&live.caller) {
            p.live_calls -= 1;
        }
        if let Some((uid, bytes)) = live.charge {
            self.ledger.release(uid, Resource::Streams, bytes);
        }
    }
}
