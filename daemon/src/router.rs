//! The bus semantics: who is connected, which services exist, which calls and
//! streams are live, and where each frame goes. No sockets here: the event
//! loop feeds frames in and carries the resulting [`Output`]s out.

use std::collections::HashMap;
use std::os::fd::OwnedFd;

use std::collections::HashSet;
use std::time::Instant;

use shmbus::frame::{
    BrokerSnapshot, BrokerStatus, CallId, CallRequest, Capabilities, ErrorCode, FallbackReason,
    Frame, MethodSpec, MonitorEvent, MonitorKind, RemoteError, ServiceInfo, StreamId, StreamInfo,
    StreamMode, StreamOpen, Transport, TransportPreference, PROTOCOL_VERSION,
};
use shmbus::sys::PeerCredentials;
use tracing::{debug, info, warn};

use crate::config::Limits;
use crate::ports;

/// Identifies a connection inside the broker.
pub type ConnId = u64;

/// Something the event loop must do.
#[derive(Debug)]
pub enum Output {
    /// Queue a frame (with descriptors) to a connection.
    Send {
        /// Destination.
        to: ConnId,
        /// The frame.
        frame: Frame,
        /// Descriptors to pass with it.
        fds: Vec<OwnedFd>,
    },
    /// Send an error frame and close the connection.
    Close {
        /// The connection.
        conn: ConnId,
        /// Why.
        error: RemoteError,
    },
}

fn send(to: ConnId, frame: Frame) -> Output {
    Output::Send {
        to,
        frame,
        fds: Vec::new(),
    }
}

fn remote(code: ErrorCode, message: impl Into<String>) -> RemoteError {
    RemoteError {
        code,
        message: message.into(),
    }
}

struct Peer {
    creds: PeerCredentials,
    caps: Option<Capabilities>,
    services: Vec<String>,
    live_calls: usize,
}

struct Service {
    owner: ConnId,
    methods: HashMap<String, StreamMode>,
    specs: Vec<MethodSpec>,
}

struct LiveCall {
    caller: ConnId,
    caller_call: CallId,
    caller_pid: i32,
    service_conn: ConnId,
    stream: Option<StreamInfo>,
}

/// The broker's routing table.
pub struct Router {
    limits: Limits,
    peers: HashMap<ConnId, Peer>,
    services: HashMap<String, Service>,
    calls: HashMap<CallId, LiveCall>,
    by_caller: HashMap<(ConnId, CallId), CallId>,
    next_call: CallId,
    next_stream: StreamId,
    monitors: HashSet<ConnId>,
    draining: bool,
    started: Instant,
    /// Counters for status.
    pub stats: Stats,
}

/// Running totals.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Calls routed.
    pub calls: u64,
    /// Streams opened over shared memory.
    pub shm_streams: u64,
    /// Streams opened over sockets.
    pub socket_streams: u64,
    /// Payload bytes of finished streams.
    pub finished_bytes: u64,
}

impl Router {
    /// An empty bus.
    pub fn new(limits: Limits) -> Self {
        Router {
            limits,
            peers: HashMap::new(),
            services: HashMap::new(),
            calls: HashMap::new(),
            by_caller: HashMap::new(),
            next_call: 1,
            next_stream: 1,
            monitors: HashSet::new(),
            draining: false,
            started: Instant::now(),
            stats: Stats::default(),
        }
    }

    /// Stops taking new calls and registrations (the broker is stopping).
    pub fn drain(&mut self) {
        self.draining = true;
    }

    /// Fails every call still live (the broker stops now): callers get a
    /// result error, services a cancel.
    pub fn abort_all(&mut self, why: &str) -> Vec<Output> {
        let ids: Vec<CallId> = self.calls.keys().copied().collect();
        let mut out = Vec::new();
        for id in ids {
            let error = remote(ErrorCode::ShuttingDown, why);
            out.extend(self.finish_call(id, Err(error)));
            // finish_call removed it; tell the service too.
        }
        out
    }

    /// Live streams.
    pub fn live_streams(&self) -> usize {
        self.calls.values().filter(|c| c.stream.is_some()).count()
    }

    /// Registered services.
    pub fn services(&self) -> usize {
        self.services.len()
    }

    /// The broker's vital signs.
    pub fn status(&self) -> BrokerStatus {
        let live_bytes: u64 = self
            .calls
            .values()
            .filter_map(|c| c.stream.as_ref())
            .map(|s| s.bytes)
            .sum();
        BrokerStatus {
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            connections: self.peers.len() as u64,
            services: self.services.len() as u64,
            streams: self.live_streams() as u64,
            calls_total: self.stats.calls,
            shm_streams_total: self.stats.shm_streams,
            socket_streams_total: self.stats.socket_streams,
            bytes_moved: self.stats.finished_bytes + live_bytes,
        }
    }

    fn event(&self, live: &LiveCall, kind: MonitorKind) -> Vec<Output> {
        let Some(s) = &live.stream else {
            return Vec::new();
        };
        let ev = MonitorEvent {
            stream: s.stream,
            service: s.service.clone(),
            method: s.method.clone(),
            caller_pid: live.caller_pid,
            bytes: s.bytes,
            kind,
        };
        self.monitors
            .iter()
            .map(|&m| send(m, Frame::Event(ev.clone())))
            .collect()
    }

    /// Replaces the limits (on reload).
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// Live calls.
    pub fn live_calls(&self) -> usize {
        self.calls.len()
    }

    /// Connected peers.
    pub fn connections(&self) -> usize {
        self.peers.len()
    }

    /// A new connection, with the kernel's word on who it is.
    pub fn connect(&mut self, conn: ConnId, creds: PeerCredentials) {
        self.peers.insert(
            conn,
            Peer {
                creds,
                caps: None,
                services: Vec::new(),
                live_calls: 0,
            },
        );
    }

    /// A frame from `conn`. Descriptors are dropped (closed) unless a frame
    /// kind takes them; none that peers send to the broker do.
    pub fn handle(&mut self, conn: ConnId, frame: Frame, fds: Vec<OwnedFd>) -> Vec<Output> {
        drop(fds);
        let Some(peer) = self.peers.get_mut(&conn) else {
            return Vec::new();
        };
        if peer.caps.is_none() {
            return match frame {
                Frame::Hello { version, caps } if version == PROTOCOL_VERSION => {
                    peer.caps = Some(caps);
                    vec![send(
                        conn,
                        Frame::Welcome {
                            version: PROTOCOL_VERSION,
                            caps,
                            max_frame: self.limits.max_frame,
                        },
                    )]
                }
                Frame::Hello { version, .. } => vec![Output::Close {
                    conn,
                    error: remote(
                        ErrorCode::ProtocolViolation,
                        format!("protocol version {version} unsupported; this broker speaks {PROTOCOL_VERSION}"),
                    ),
                }],
                other => violation(conn, format!("{} before hello", other.kind())),
            };
        }
        match frame {
            Frame::Register {
                request,
                service,
                methods,
            } => self.register(conn, request, service, methods),
            Frame::Call(req) => self.call(conn, req),
            Frame::Result { call, outcome } => self.result(conn, call, outcome),
            Frame::Cancel { call } => self.cancel(conn, call),
            Frame::StreamProgress {
                stream,
                state,
                bytes,
                credit_outstanding,
            } => {
                self.progress(conn, stream, state, bytes, credit_outstanding);
                Vec::new()
            }
            Frame::List { request } => vec![send(
                conn,
                Frame::ListReply {
                    request,
                    snapshot: self.snapshot(),
                },
            )],
            Frame::Status { request } => vec![send(
                conn,
                Frame::StatusReply {
                    request,
                    status: self.status(),
                },
            )],
            Frame::Monitor { request } => {
                self.monitors.insert(conn);
                vec![send(conn, Frame::Ack { request })]
            }
            other => violation(
                conn,
                format!("{} frame is not accepted by the broker", other.kind()),
            ),
        }
    }

    fn register(
        &mut self,
        conn: ConnId,
        request: u64,
        name: String,
        methods: Vec<MethodSpec>,
    ) -> Vec<Output> {
        let refuse = |code, msg: String| {
            vec![send(
                conn,
                Frame::Refused {
                    request,
                    error: remote(code, msg),
                },
            )]
        };
        if !valid_name(&name) {
            return refuse(ErrorCode::Denied, format!("invalid service name {name:?}"));
        }
        if methods.len() > self.limits.max_methods_per_service {
            return refuse(
                ErrorCode::LimitsExceeded,
                format!("more than {} methods", self.limits.max_methods_per_service),
            );
        }
        let mut table = HashMap::new();
        for m in &methods {
            if !valid_name(&m.name) || table.insert(m.name.clone(), m.mode).is_some() {
                return refuse(
                    ErrorCode::Denied,
                    format!("invalid or repeated method name {:?}", m.name),
                );
            }
        }
        if self.services.contains_key(&name) {
            return refuse(
                ErrorCode::NameTaken,
                format!("service {name} is already registered"),
            );
        }
        let peer = self.peers.get_mut(&conn).expect("checked");
        if peer.services.len() >= self.limits.max_services_per_connection {
            return refuse(
                ErrorCode::LimitsExceeded,
                "too many services on one connection".into(),
            );
        }
        peer.services.push(name.clone());
        info!(service = %name, pid = peer.creds.pid, uid = peer.creds.uid, "service registered");
        self.services.insert(
            name,
            Service {
                owner: conn,
                methods: table,
                specs: methods,
            },
        );
        vec![send(conn, Frame::Ack { request })]
    }

    fn call(&mut self, conn: ConnId, req: CallRequest) -> Vec<Output> {
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
        };
        let mut out = Vec::new();
        let mut open_fallback = None;
        let incoming_open = if mode == StreamMode::Unary {
            None
        } else {
            match self.open_stream(conn, service_conn, &req, mode) {
                Ok((open, fds)) => {
                    open_fallback = open.fallback.clone();
                    live.stream = Some(StreamInfo {
                        stream: open.stream,
                        service: req.service.clone(),
                        method: req.method.clone(),
                        transport: open.transport,
                        state: "OPENING".into(),
                        bytes: 0,
                        credit_outstanding: open.credit.high_water_mark,
                    });
                    out.push(Output::Send {
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
    ) -> Result<(StreamOpen, ports::PortFds), RemoteError> {
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
            match ports::create(stream, mode, Transport::SharedMemory, ring_size, req.credit) {
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
                ports::create(stream, mode, Transport::Socket, ring_size, req.credit).map_err(
                    |e| {
                        remote(
                            ErrorCode::LimitsExceeded,
                            format!("stream port setup failed: {e}"),
                        )
                    },
                )?,
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

    fn result(
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

    /// Removes a call and sends its result to the caller.
    fn finish_call(&mut self, call: CallId, outcome: Result<Vec<u8>, RemoteError>) -> Vec<Output> {
        let Some(live) = self.calls.remove(&call) else {
            return Vec::new();
        };
        self.by_caller.remove(&(live.caller, live.caller_call));
        if let Some(p) = self.peers.get_mut(&live.caller) {
            p.live_calls -= 1;
        }
        let mut out = Vec::new();
        if let Some(s) = &live.stream {
            info!(
                stream = s.stream,
                ok = outcome.is_ok(),
                bytes = s.bytes,
                "stream call finished"
            );
            self.stats.finished_bytes += s.bytes;
            let kind = match &outcome {
                Ok(_) => MonitorKind::End,
                Err(e) => MonitorKind::Error(e.clone()),
            };
            out.extend(self.event(&live, kind));
        }
        if self.draining && self.peers.contains_key(&live.service_conn) {
            if let Err(e) = &outcome {
                if e.code == ErrorCode::ShuttingDown {
                    out.push(send(live.service_conn, Frame::Cancel { call }));
                }
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

    fn cancel(&mut self, conn: ConnId, call: CallId) -> Vec<Output> {
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

    fn progress(&mut self, conn: ConnId, stream: StreamId, state: String, bytes: u64, credit: u64) {
        for live in self.calls.values_mut() {
            if live.caller != conn && live.service_conn != conn {
                continue;
            }
            if let Some(s) = live.stream.as_mut().filter(|s| s.stream == stream) {
                // Both halves report; the sender's count is never behind the receiver's.
                s.state = state.chars().take(16).collect();
                s.bytes = s.bytes.max(bytes);
                s.credit_outstanding = credit;
                return;
            }
        }
    }

    /// A connection went away: its services vanish, its outgoing calls are
    /// cancelled, and the callers of calls it served get "peer gone".
    pub fn disconnect(&mut self, conn: ConnId) -> Vec<Output> {
        let Some(peer) = self.peers.remove(&conn) else {
            return Vec::new();
        };
        self.monitors.remove(&conn);
        for name in &peer.services {
            self.services.remove(name);
            info!(service = %name, pid = peer.creds.pid, "service unregistered");
        }
        let mut out = Vec::new();
        let affected: Vec<CallId> = self
            .calls
            .iter()
            .filter(|(_, l)| l.caller == conn || l.service_conn == conn)
            .map(|(&id, _)| id)
            .collect();
        for id in affected {
            let live = self.calls.remove(&id).expect("listed");
            self.by_caller.remove(&(live.caller, live.caller_call));
            if let Some(p) = self.peers.get_mut(&live.caller) {
                p.live_calls -= 1;
            }
            let gone = remote(ErrorCode::PeerGone, "the service disconnected");
            if let Some(s) = &live.stream {
                self.stats.finished_bytes += s.bytes;
                let kind = if live.caller == conn {
                    MonitorKind::Cancel
                } else {
                    MonitorKind::Error(gone.clone())
                };
                out.extend(self.event(&live, kind));
            }
            if live.caller == conn && live.service_conn != conn {
                out.push(send(live.service_conn, Frame::Cancel { call: id }));
            } else if live.service_conn == conn && live.caller != conn {
                out.push(send(
                    live.caller,
                    Frame::Result {
                        call: live.caller_call,
                        outcome: Err(gone),
                    },
                ));
            }
        }
        out
    }

    /// What `shmbusctl list` shows.
    pub fn snapshot(&self) -> BrokerSnapshot {
        let mut services: Vec<ServiceInfo> = self
            .services
            .iter()
            .map(|(name, s)| {
                let creds = self.peers[&s.owner].creds;
                ServiceInfo {
                    name: name.clone(),
                    methods: s.specs.clone(),
                    pid: creds.pid,
                    uid: creds.uid,
                }
            })
            .collect();
        services.sort_by(|a, b| a.name.cmp(&b.name));
        let mut streams: Vec<StreamInfo> = self
            .calls
            .values()
            .filter_map(|l| l.stream.clone())
            .collect();
        streams.sort_by_key(|s| s.stream);
        let mut snap = BrokerSnapshot {
            services,
            streams,
            connections: self.peers.len() as u64,
        };
        // Keep the reply within the frame limit: drop entries from the end.
        let fits = |s: &BrokerSnapshot| {
            postcard::to_stdvec(s).is_ok_and(|v| v.len() + 64 <= self.limits.max_frame as usize)
        };
        while !fits(&snap) {
            if snap.streams.len() >= snap.services.len() && !snap.streams.is_empty() {
                snap.streams.truncate(snap.streams.len() / 2);
            } else if !snap.services.is_empty() {
                snap.services.truncate(snap.services.len() / 2);
            } else {
                break;
            }
        }
        snap
    }
}

fn violation(conn: ConnId, message: String) -> Vec<Output> {
    vec![Output::Close {
        conn,
        error: remote(ErrorCode::ProtocolViolation, message),
    }]
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/' | b':'))
}
