//! The bus semantics: who is connected, which services exist, which calls and
//! streams are live, and where each frame goes. No I/O here, in the style of
//! an I/O-free protocol core driven by an I/O layer:
//!
//! - **inputs** are method calls: [`Router::connect`], [`Router::handle`] (a
//!   frame from a connection), [`Router::disconnect`],
//!   [`Router::fds_delivered`], [`Router::drain`], [`Router::abort_all`]
//!   and [`Router::expire`] (the deadlines due, at
//!   [`Router::next_deadline`]);
//! - **outputs** are the [`Output`]s they return (frames, with descriptors,
//!   to send to a connection; connections to close), which the event loop
//!   ([`crate::server`]) carries out in order;
//! - **time** comes in as an argument (`now`), taken by the event loop once
//!   per turn: the router, its [`LogLimit`] and its quota [`Ledger`] never
//!   read the clock;
//! - **ports**: a streaming call's descriptors come from the [`PortMaker`]
//!   the router was built with, called directly on the call path (no extra
//!   turn of the event loop). The broker's is [`crate::ports::Ports`]
//!   (socket pairs, sealed memfds, the ring pool and its thread, created
//!   and started by the server); the unit tests and the fuzz targets use
//!   `router::testing`, which hands out inert descriptors.
//!
//! Where things are:
//!
//! - `mod.rs`: the tables (peers, services, live calls, monitors), the
//!   quota ledger and the log limiter; connecting, the handshake and the
//!   dispatch of each frame kind, registration, disconnects, `list` and
//!   `status`, drain and abort;
//! - `deadlines.rs`: calls whose deadline passed, failed with
//!   `DeadlineExceeded` (the event loop asks when the next one is due);
//! - `calls.rs`: a call's life. A `call` frame is checked (service, method,
//!   mode, policy, the connection's live calls), its stream opened (credit,
//!   ring size, the caller's stream quota, the port and its transport, the
//!   descriptor quotas), then routed (`incoming` to the service, then
//!   `stream-open` to the caller, then the monitor event); then `cancel`,
//!   `stream-progress` and the service's `result`;
//! - `port_maker.rs`: [`PortMaker`], [`PortSpec`], [`PortFds`];
//! - `testing.rs` (for tests and the `testing` feature): a fake port maker
//!   and a harness driving the router as frames in, outputs out;
//! - `tests.rs`: the router's unit tests.
//!
//! What the broker does with each frame, and a call's life from `call` to
//! `result`, are described in `PROTOCOL.md` at the repository root.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::time::Instant;

use shmbus::frame::{
    BrokerSnapshot, BrokerStatus, CallId, Capabilities, ErrorCode, Frame, MethodSpec, MonitorEvent,
    MonitorKind, RemoteError, ServiceInfo, StreamId, StreamInfo, StreamMode, PROTOCOL_VERSION,
};
use shmbus::sys::PeerCredentials;
use tracing::{debug, info, warn};

use crate::config::Limits;
use crate::log_limit::LogLimit;
use crate::quota::{Ledger, Resource, Usage};

mod calls;
mod deadlines;
mod port_maker;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(test)]
mod tests;

pub use port_maker::{PortFds, PortMaker, PortSpec};

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

pub(super) fn send(to: ConnId, frame: Frame) -> Output {
    Output::Send {
        to,
        frame,
        fds: Vec::new(),
    }
}

pub(super) fn remote(code: ErrorCode, message: impl Into<String>) -> RemoteError {
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
    /// Descriptors queued toward this connection, charged to its uid.
    fds_queued: usize,
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
    /// The stream quota charged: (uid, ring bytes).
    charge: Option<(u32, u64)>,
    /// When the call fails with `DeadlineExceeded`, if it has a deadline.
    deadline: Option<Instant>,
}

/// The broker's routing table. `P` makes the stream ports.
pub struct Router<P> {
    limits: Limits,
    peers: HashMap<ConnId, Peer>,
    services: HashMap<String, Service>,
    calls: HashMap<CallId, LiveCall>,
    by_caller: HashMap<(ConnId, CallId), CallId>,
    next_call: CallId,
    next_stream: StreamId,
    /// Connections that asked for monitor events, in order of id, so that
    /// events go out in the same order every time.
    monitors: BTreeSet<ConnId>,
    ledger: Ledger,
    draining: bool,
    started: Instant,
    /// Counters for status.
    pub stats: Stats,
    /// Makes the ports of streaming calls.
    ports: P,
    /// Connections whose calls were refused for their limits since the
    /// event loop last asked (see [`Router::take_refused`]).
    refused: HashSet<ConnId>,
    /// Keeps a user's refused requests from flooding the log.
    log_limit: LogLimit,
    /// Live calls with a deadline, soonest first.
    deadlines: BTreeSet<(Instant, CallId)>,
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

impl<P: PortMaker> Router<P> {
    /// An empty bus, started at `now`, whose streams get their ports from
    /// `ports`.
    pub fn new(limits: Limits, ports: P, now: Instant) -> Self {
        Router {
            limits,
            peers: HashMap::new(),
            services: HashMap::new(),
            calls: HashMap::new(),
            by_caller: HashMap::new(),
            next_call: 1,
            next_stream: 1,
            monitors: BTreeSet::new(),
            ledger: Ledger::default(),
            draining: false,
            started: now,
            stats: Stats::default(),
            ports,
            refused: HashSet::new(),
            log_limit: LogLimit::default(),
            deadlines: BTreeSet::new(),
        }
    }

    /// The port maker.
    pub fn ports(&self) -> &P {
        &self.ports
    }

    /// The port maker, to change it (a test making port setup fail).
    pub fn ports_mut(&mut self) -> &mut P {
        &mut self.ports
    }

    /// Stops taking new calls (the broker is stopping): they are refused
    /// with `ShuttingDown`. Calls in flight carry on; registrations are
    /// still taken.
    pub fn drain(&mut self) {
        self.draining = true;
    }

    /// Fails every call still live (the broker stops now), in the order
    /// they were made: each service gets a cancel, each caller a
    /// `ShuttingDown` result.
    pub fn abort_all(&mut self, why: &str) -> Vec<Output> {
        let mut ids: Vec<CallId> = self.calls.keys().copied().collect();
        ids.sort_unstable();
        let mut out = Vec::new();
        for id in ids {
            if let Some(live) = self.calls.get(&id) {
                if self.peers.contains_key(&live.service_conn) {
                    out.push(send(live.service_conn, Frame::Cancel { call: id }));
                }
            }
            let error = remote(ErrorCode::ShuttingDown, why);
            out.extend(self.finish_call(id, Err(error)));
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

    /// What `uid` holds now, charged against its quotas.
    pub fn usage(&self, uid: u32) -> Usage {
        self.ledger.usage(uid)
    }

    /// The broker's vital signs at `now`.
    pub fn status(&self, now: Instant) -> BrokerStatus {
        let live_bytes: u64 = self
            .calls
            .values()
            .filter_map(|c| c.stream.as_ref())
            .map(|s| s.bytes)
            .sum();
        BrokerStatus {
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_ms: now.saturating_duration_since(self.started).as_millis() as u64,
            connections: self.peers.len() as u64,
            services: self.services.len() as u64,
            streams: self.live_streams() as u64,
            calls_total: self.stats.calls,
            shm_streams_total: self.stats.shm_streams,
            socket_streams_total: self.stats.socket_streams,
            bytes_moved: self.stats.finished_bytes + live_bytes,
        }
    }

    /// The monitor event `kind` of a streaming call, for every monitoring
    /// connection (nothing for a unary call, and no allocation when nobody
    /// monitors).
    fn event(&self, live: &LiveCall, kind: MonitorKind) -> Vec<Output> {
        let Some(s) = &live.stream else {
            return Vec::new();
        };
        if self.monitors.is_empty() {
            return Vec::new();
        }
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

    /// A new connection at `now`, with the kernel's word on who it is.
    /// Refused (with the error to send before closing) when the uid is at
    /// its connection quota.
    pub fn connect(
        &mut self,
        conn: ConnId,
        creds: PeerCredentials,
        now: Instant,
    ) -> Result<(), RemoteError> {
        if let Err(msg) =
            self.ledger
                .charge(&self.limits.quotas, creds.uid, Resource::Connections, 1)
        {
            if let Some(more) = self.log_limit.admit(creds.uid, now) {
                warn!(
                    pid = creds.pid,
                    uid = creds.uid,
                    "connection refused: {msg}{more}"
                );
            }
            return Err(remote(ErrorCode::LimitsExceeded, msg));
        }
        self.peers.insert(
            conn,
            Peer {
                creds,
                caps: None,
                services: Vec::new(),
                live_calls: 0,
                fds_queued: 0,
            },
        );
        Ok(())
    }

    /// True once per connection whose calls were refused for exceeding
    /// its limits since the last ask: the event loop reads such a
    /// connection less often, so a flood of refused calls cannot take the
    /// broker from everyone else.
    pub fn take_refused(&mut self, conn: ConnId) -> bool {
        self.refused.remove(&conn)
    }

    /// Descriptors queued toward `conn` were delivered (or dropped).
    pub fn fds_delivered(&mut self, conn: ConnId, n: usize) {
        if let Some(p) = self.peers.get_mut(&conn) {
            let n = n.min(p.fds_queued);
            p.fds_queued -= n;
            self.ledger.release(p.creds.uid, Resource::Fds, n as u64);
        }
    }

    /// Charges descriptors about to be queued toward `conn`.
    fn charge_fds(&mut self, conn: ConnId, n: usize) -> Result<(), String> {
        let p = self.peers.get_mut(&conn).expect("live peer");
        self.ledger
            .charge(&self.limits.quotas, p.creds.uid, Resource::Fds, n as u64)?;
        p.fds_queued += n;
        Ok(())
    }

    /// A frame from `conn`, read at `now`. Descriptors are dropped (closed)
    /// unless a frame kind takes them; none that peers send to the broker do.
    pub fn handle(
        &mut self,
        conn: ConnId,
        frame: Frame,
        fds: Vec<OwnedFd>,
        now: Instant,
    ) -> Vec<Output> {
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
            } => self.register(conn, request, service, methods, now),
            Frame::Unregister { service } => {
                self.unregister(conn, &service);
                Vec::new()
            }
            Frame::Call(req) => self.call(conn, req, now),
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
                    status: self.status(now),
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
        now: Instant,
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
        let creds = self.peers[&conn].creds;
        if let Err(msg) = self.limits.policy.may_register(&name, creds.uid) {
            if let Some(more) = self.log_limit.admit(creds.uid, now) {
                warn!(pid = creds.pid, uid = creds.uid, service = %name, "registration denied: {msg}{more}");
            }
            return refuse(ErrorCode::Denied, msg);
        }
        let peer = self.peers.get_mut(&conn).expect("checked");
        if peer.services.len() >= self.limits.max_services_per_connection {
            return refuse(
                ErrorCode::LimitsExceeded,
                "too many services on one connection".into(),
            );
        }
        if let Err(msg) = self
            .ledger
            .charge(&self.limits.quotas, creds.uid, Resource::Services, 1)
        {
            if let Some(more) = self.log_limit.admit(creds.uid, now) {
                warn!(pid = creds.pid, uid = creds.uid, service = %name, "registration refused: {msg}{more}");
            }
            return refuse(ErrorCode::LimitsExceeded, msg);
        }
        let peer = self.peers.get_mut(&conn).expect("checked");
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

    /// The peer no longer serves `name`: it goes from the table and gives
    /// its quota back. Calls already delivered go on. A name the peer does
    /// not hold is ignored: a client may drop a service whose registration
    /// was refused when it reconnected.
    fn unregister(&mut self, conn: ConnId, name: &str) {
        if self.services.get(name).map(|s| s.owner) != Some(conn) {
            debug!(service = %name, "unregistration of a service the peer does not hold ignored");
            return;
        }
        self.services.remove(name);
        let peer = self
            .peers
            .get_mut(&conn)
            .expect("a service's owner is a peer");
        peer.services.retain(|s| s != name);
        self.ledger.release(peer.creds.uid, Resource::Services, 1);
        info!(service = %name, pid = peer.creds.pid, "service unregistered");
    }

    /// A connection went away: its services vanish, its outgoing calls are
    /// cancelled, and the callers of calls it served get "peer gone".
    pub fn disconnect(&mut self, conn: ConnId) -> Vec<Output> {
        self.refused.remove(&conn);
        let Some(peer) = self.peers.remove(&conn) else {
            return Vec::new();
        };
        let uid = peer.creds.uid;
        self.ledger.release(uid, Resource::Connections, 1);
        self.ledger
            .release(uid, Resource::Fds, peer.fds_queued as u64);
        for _ in &peer.services {
            self.ledger.release(uid, Resource::Services, 1);
        }
        self.monitors.remove(&conn);
        for name in &peer.services {
            self.services.remove(name);
            info!(service = %name, pid = peer.creds.pid, "service unregistered");
        }
        let mut out = Vec::new();
        let mut affected: Vec<CallId> = self
            .calls
            .iter()
            .filter(|(_, l)| l.caller == conn || l.service_conn == conn)
            .map(|(&id, _)| id)
            .collect();
        // In the order the calls were made, the same every time.
        affected.sort_unstable();
        for id in affected {
            let live = self.calls.remove(&id).expect("listed");
            self.forget(id, &live);
            let gone = remote(ErrorCode::PeerGone, "the service disconnected");
            if let Some(s) = &live.stream {
                // The service's result will never come: the end is logged here.
                let why = match (live.caller == conn, live.service_conn == conn) {
                    (true, true) => "caller and service gone",
                    (true, false) => "caller gone",
                    _ => "service gone",
                };
                info!(stream = s.stream, bytes = s.bytes, why, "stream closed");
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

pub(super) fn violation(conn: ConnId, message: String) -> Vec<Output> {
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
