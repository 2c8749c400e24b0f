//! Calls: checking a call, opening its stream port, routing it to the service.

use shmbus::frame::{
    CallRequest, ErrorCode, FallbackReason, Frame, MonitorKind, RemoteError, StreamInfo,
    StreamMode, StreamOpen, Transport, TransportPreference,
};
use shmbus::state::StreamState;
use tracing::{debug, info, warn};

use super::{remote, send, violation, ConnId, LiveCall, Output, Router};
use crate::ports;
use crate::quota::Resource;

impl Router {
    pub(super) fn call(&mut self, conn: ConnId, req: CallRequest) -> Vec<Output> {
        if self.by_caller.contains_key(&(conn, req.call)) {
            return violation(conn, format!("call id {} reused while live", req.call));
        }
        let fail = |code, msg: String| {
            vec![send(
                conn,
                Frame::Result {
                    call: req.call,
                    outcome: Err(remote(code, msg)),
                },
            )]
        };
        if self.draining {
            return fail(
                ErrorCode::ShuttingDown,
                "the broker is shutting down".into(),
            );
        }
        let Some(service) = self.services.get(&req.service) else {
            return fail(
                ErrorCode::NoSuchService,
                format!("no service named {}", req.service),
            );
        };
        let Some(&mode) = service.methods.get(&req.method) else {
            return fail(
                ErrorCode::NoSuchMethod,
                format!("service {} has no method {}", req.service, req.method),
            );
        };
        if let Some(asked) = req.mode {
            if asked != mode {
                return fail(
                    ErrorCode::NoSuchMethod,
                    format!(
                        "method {}.{} streams as {mode:?}, not {asked:?}",
                        req.service, req.method
                    ),
                );
            }
        }
        let owner = self.peers[&service.owner].creds.uid;
        let creds = self.peers[&conn].creds;
        if let Err(msg) = self.limits.policy.may_call(&req.service, creds.uid, owner) {
            if let Some(more) = self.log_limit.admit(creds.uid) {
                warn!(pid = creds.pid, uid = creds.uid, service = %req.service, "call denied: {msg}{more}");
            }
            return fail(ErrorCode::Denied, msg);
        }
        if self.peers[&conn].live_calls >= self.limits.max_calls_per_connection {
            return fail(
                ErrorCode::LimitsExceeded,
                "too many live calls on one connection".into(),
            );
        }
        let service_conn = service.owner;
        let broker_call = self.next_call;
        self.next_call += 1;
        self.stats.calls += 1;
        let caller = &self.peers[&conn];
        let (caller_pid, caller_uid) = (caller.creds.pid, caller.creds.uid);
        let mut live = LiveCall {
            caller: conn,
            caller_call: req.call,
            caller_pid,
            service_conn,
            stream: None,
            charge: None,
        };
        let mut out = Vec::new();
        // The caller's stream-open goes out after the service's incoming: the
        // service has the longer way to the first item (wake, map, write).
        let mut caller_open = None;
        let mut open_fallback = None;
        let incoming_open = if mode == StreamMode::Unary {
            None
        } else {
            match self.open_stream(conn, service_conn, &req, mode) {
                Ok((open, fds, charge)) => {
                    live.charge = Some(charge);
                    open_fallback = open.fallback.clone();
                    live.stream = Some(StreamInfo {
                        stream: open.stream,
                        service: req.service.clone(),
                        method: req.method.clone(),
                        transport: open.transport,
                        state: StreamState::Opening,
                        bytes: 0,
                        credit_outstanding: open.credit.high_water_mark,
                    });
                    caller_open = Some(Output::Send {
                        to: conn,
                        frame: Frame::StreamOpen(open.clone()),
                        fds: fds.caller,
                    });
                    Some((
                        StreamOpen {
                            call: broker_call,
                            ..open
                        },
                        fds.service,
                    ))
                }
                Err(error) => {
                    return vec![send(
                        conn,
                        Frame::Result {
                            call: req.call,
                            outcome: Err(error),
                        },
                    )]
                }
            }
        };
        let (open, fds) = match incoming_open {
            Some((open, fds)) => (Some(open), fds),
            None => (None, Vec::new()),
        };
        debug!(call = broker_call, service = %req.service, method = %req.method, pid = caller_pid, uid = caller_uid, "call");
        out.push(Output::Send {
            to: service_conn,
            frame: Frame::Incoming {
                call: broker_call,
                service: req.service.clone(),
                method: req.method.clone(),
                args: req.args,
                open,
                caller_pid,
                caller_uid,
            },
            fds,
        });
        // Only now the caller's stream-open: a caller holding its stream
        // knows the service has been told (the incoming call is in the
        // service's socket even if the broker dies the next moment).
        out.extend(caller_open);
        if let Some(s) = &live.stream {
            out.extend(self.event(
                &live,
                MonitorKind::Open {
                    transport: s.transport,
                    fallback: open_fallback.clone(),
                },
            ));
        }
        self.by_caller.insert((conn, req.call), broker_call);
        self.calls.insert(broker_call, live);
        if let Some(p) = self.peers.get_mut(&conn) {
            p.live_calls += 1;
        }
        out
    }

    fn open_stream(
        &mut self,
        caller: ConnId,
        service: ConnId,
        req: &CallRequest,
        mode: StreamMode,
    ) -> Result<(StreamOpen, ports::PortFds, (u32, u64)), RemoteError> {
        let mut credit = req.credit;
        if credit.high_water_mark == 0 {
            credit.high_water_mark = self.limits.default_high_water_mark;
        }
        let req = &CallRequest {
            credit,
            ..req.clone()
        };
        req.credit
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
        let caller_creds = self.peers[&caller].creds;
        let ring_bytes = ring_size as u64 * mode.directions().len() as u64;
        if let Err(msg) = self.ledger.charge(
            &self.limits.quotas,
            caller_creds.uid,
            Resource::Streams,
            ring_bytes,
        ) {
            if let Some(more) = self.log_limit.admit(caller_creds.uid) {
                warn!(
                    pid = caller_creds.pid,
                    uid = caller_creds.uid,
                    "stream refused: {msg}{more}"
                );
            }
            return Err(remote(ErrorCode::LimitsExceeded, msg));
        }
        let charge = (caller_creds.uid, ring_bytes);
        let opened = self.open_port(caller, service, req, mode, ring_size);
        let (open, fds) = match opened {
            Ok(o) => o,
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
        if let Err(msg) = self.charge_fds(service, fds.service.len()) {
            self.fds_delivered(caller, fds.caller.len());
            self.ledger.release(charge.0, Resource::Streams, charge.1);
            return Err(remote(ErrorCode::LimitsExceeded, msg));
        }
        Ok((open, fds, charge))
    }

    /// Creates the stream's port: shared memory when both sides offer it and
    /// setup works, else sockets, and says why.
    fn open_port(
        &mut self,
        caller: ConnId,
        service: ConnId,
        req: &CallRequest,
        mode: StreamMode,
        ring_size: u32,
    ) -> Result<(StreamOpen, ports::PortFds), RemoteError> {
        let stream = self.next_stream;
        self.next_stream += 1;
        let shm_of = |c: ConnId| self.peers[&c].caps.is_some_and(|k| k.shared_memory);
        let mut fallback = match req.transport {
            TransportPreference::Socket => Some(FallbackReason::Requested),
            _ if !shm_of(caller) => Some(FallbackReason::PeerWithoutSharedMemory("caller".into())),
            _ if !shm_of(service) => {
                Some(FallbackReason::PeerWithoutSharedMemory("service".into()))
            }
            _ => None,
        };
        if fallback.is_some() && req.transport == TransportPreference::SharedMemory {
            return Err(remote(
                ErrorCode::SharedMemoryUnavailable,
                format!("shared memory required but unavailable: {fallback:?}"),
            ));
        }
        let mut fds = None;
        if fallback.is_none() {
            let pool = Some(&self.pool);
            match ports::create(
                stream,
                mode,
                Transport::SharedMemory,
                ring_size,
                req.credit,
                pool,
            ) {
                Ok(f) => fds = Some(f),
                Err(e) if req.transport == TransportPreference::SharedMemory => {
                    return Err(remote(
                        ErrorCode::SharedMemoryUnavailable,
                        format!("shared-memory port setup failed: {e}"),
                    ))
                }
                Err(e) => {
                    warn!(stream, error = %e, "shared-memory port setup failed; using the socket");
                    fallback = Some(FallbackReason::SetupFailed(e.to_string()));
                }
            }
        }
        let (transport, fds) = match fds {
            Some(f) => (Transport::SharedMemory, f),
            None => (
                Transport::Socket,
                ports::create(stream, mode, Transport::Socket, ring_size, req.credit, None)
                    .map_err(|e| {
                        remote(
                            ErrorCode::LimitsExceeded,
                            format!("stream port setup failed: {e}"),
                        )
                    })?,
            ),
        };
        match transport {
            Transport::SharedMemory => self.stats.shm_streams += 1,
            Transport::Socket => self.stats.socket_streams += 1,
        }
        info!(stream, transport = ?transport, fallback = ?fallback, service = %req.service, method = %req.method, "stream open");
        Ok((
            StreamOpen {
                stream,
                call: req.call,
                mode,
                transport,
                fallback,
                ring_size,
                credit: req.credit,
            },
            fds,
        ))
    }
}
