//! Driving a [`Router`] without sockets, threads or a clock, for the unit
//! tests and the fuzz targets: frames go in, [`Out`]puts come out, the time
//! is a value the test moves, and ports come from [`FakePorts`], which hands
//! out inert descriptors and remembers them so that a test can check which
//! descriptor went to whom.
//!
//! Compiled for the daemon's own tests and with the `testing` feature.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use shmbus::credit::CreditSpec;
use shmbus::frame::{
    CallId, CallRequest, Capabilities, ErrorCode, Frame, MethodSpec, RemoteError, StreamId,
    StreamMode, Transport, TransportPreference, PROTOCOL_VERSION,
};
use shmbus::sys::PeerCredentials;

use super::{ConnId, Output, PortFds, PortMaker, PortSpec, Router};
use crate::config::Limits;

/// The descriptors of one port [`FakePorts`] made, as raw numbers (valid
/// while the router's outputs holding them are alive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MadePort {
    /// What was asked for.
    pub spec: PortSpec,
    /// The caller's descriptors, in stream-open order.
    pub caller: Vec<RawFd>,
    /// The service's descriptors, in stream-open order.
    pub service: Vec<RawFd>,
}

/// A port maker that makes no rings: per direction a socket pair for the
/// link and, on shared memory, a socket standing in for the memfd (one
/// file, a descriptor for each side, as a memfd would be). Nothing reads or
/// writes them.
#[derive(Debug, Default)]
pub struct FakePorts {
    /// Every port asked for, in order, a failed one included.
    pub asked: Vec<PortSpec>,
    /// Every port made, in order.
    pub made: Vec<MadePort>,
    /// Shared-memory ports fail with this message (the router then falls
    /// back to the socket, or refuses a call that requires shared memory).
    pub shm_fails: Option<String>,
    /// Socket ports fail too (the router refuses the call).
    pub socket_fails: bool,
}

impl PortMaker for FakePorts {
    fn make(&mut self, spec: PortSpec, _now: Instant) -> io::Result<PortFds> {
        self.asked.push(spec);
        match spec.transport {
            Transport::SharedMemory => {
                if let Some(msg) = &self.shm_fails {
                    return Err(io::Error::other(msg.clone()));
                }
            }
            Transport::Socket => {
                if self.socket_fails {
                    return Err(io::Error::other("no socket for you"));
                }
            }
        }
        let mut fds = PortFds {
            caller: Vec::new(),
            service: Vec::new(),
        };
        for _ in spec.mode.directions() {
            let (a, b) = UnixStream::pair()?;
            fds.caller.push(a.into());
            fds.service.push(b.into());
            if spec.transport == Transport::SharedMemory {
                let (ring, _) = UnixStream::pair()?;
                fds.caller.push(ring.try_clone()?.into());
                fds.service.push(ring.into());
            }
        }
        let raw = |v: &[OwnedFd]| v.iter().map(|f| f.as_raw_fd()).collect();
        self.made.push(MadePort {
            spec,
            caller: raw(&fds.caller),
            service: raw(&fds.service),
        });
        Ok(fds)
    }
}

/// An [`Output`] with its descriptors as raw numbers, so that outputs can be
/// compared whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Out {
    /// A frame to a connection.
    Send {
        /// Destination.
        to: ConnId,
        /// The frame.
        frame: Frame,
        /// Its descriptors.
        fds: Vec<RawFd>,
    },
    /// An error frame, then the connection closed.
    Close {
        /// The connection.
        conn: ConnId,
        /// Why.
        error: RemoteError,
    },
}

impl Out {
    /// A frame without descriptors.
    pub fn send(to: ConnId, frame: Frame) -> Out {
        Out::Send {
            to,
            frame,
            fds: Vec::new(),
        }
    }

    /// A frame with descriptors.
    pub fn send_fds(to: ConnId, frame: Frame, fds: &[RawFd]) -> Out {
        Out::Send {
            to,
            frame,
            fds: fds.to_vec(),
        }
    }

    /// A result frame.
    pub fn result(to: ConnId, call: CallId, outcome: Result<&[u8], RemoteError>) -> Out {
        Out::send(
            to,
            Frame::Result {
                call,
                outcome: outcome.map(<[u8]>::to_vec),
            },
        )
    }

    /// A result frame carrying an error.
    pub fn error_result(to: ConnId, call: CallId, code: ErrorCode, message: &str) -> Out {
        Out::result(to, call, Err(error(code, message)))
    }

    /// A cancel frame.
    pub fn cancel(to: ConnId, call: CallId) -> Out {
        Out::send(to, Frame::Cancel { call })
    }

    /// A connection closed for a protocol violation.
    pub fn violation(conn: ConnId, message: &str) -> Out {
        Out::Close {
            conn,
            error: error(ErrorCode::ProtocolViolation, message),
        }
    }
}

/// A remote error.
pub fn error(code: ErrorCode, message: &str) -> RemoteError {
    RemoteError {
        code,
        message: message.to_string(),
    }
}

/// A call request with the client's defaults: the method's own mode, the
/// broker's default credit (bytes) and ring size, any transport.
pub fn request(call: CallId, service: &str, method: &str) -> CallRequest {
    CallRequest {
        call,
        service: service.to_string(),
        method: method.to_string(),
        args: Vec::new(),
        mode: None,
        credit: CreditSpec::bytes(0),
        transport: TransportPreference::Auto,
        ring_size: None,
        time_left_us: None,
    }
}

/// A router and the event loop around it, reduced to values: connections
/// are numbers, frames go in and [`Out`]s come out, the clock is
/// [`Bus::now`], and descriptors are delivered the moment they are output
/// (unless [`Bus::hold_fds`] is set: then they wait for
/// [`Bus::deliver_held`], as behind a peer that does not read).
pub struct Bus {
    /// The router under test.
    pub router: Router<FakePorts>,
    /// The time every input is given.
    pub now: Instant,
    /// Keep output descriptors queued rather than delivering them.
    pub hold_fds: bool,
    held: Vec<(ConnId, Vec<OwnedFd>)>,
    next_conn: ConnId,
}

impl Default for Bus {
    fn default() -> Self {
        Bus::new(Limits::default())
    }
}

impl Bus {
    /// A bus with these limits and no connections.
    pub fn new(limits: Limits) -> Bus {
        let now = Instant::now();
        Bus {
            router: Router::new(limits, FakePorts::default(), now),
            now,
            hold_fds: false,
            held: Vec::new(),
            next_conn: 1,
        }
    }

    /// Moves the clock on.
    pub fn advance(&mut self, by: Duration) {
        self.now += by;
    }

    /// The port maker.
    pub fn ports(&mut self) -> &mut FakePorts {
        self.router.ports_mut()
    }

    /// The identity connection `conn` of `uid` is given: pid `1000 + conn`.
    pub fn creds(conn: ConnId, uid: u32) -> PeerCredentials {
        PeerCredentials {
            pid: 1000 + conn as i32,
            uid,
            gid: uid,
        }
    }

    /// A new connection of `uid`, before its hello; refused at its uid's
    /// connection quota.
    pub fn try_connect(&mut self, uid: u32) -> Result<ConnId, RemoteError> {
        let conn = self.next_conn;
        self.next_conn += 1;
        self.router
            .connect(conn, Bus::creds(conn, uid), self.now)
            .map(|()| conn)
    }

    /// A connection of `uid` that has said hello, offering shared memory
    /// or not.
    pub fn connect_with(&mut self, uid: u32, shared_memory: bool) -> ConnId {
        let conn = self.try_connect(uid).expect("connection refused");
        let caps = Capabilities { shared_memory };
        let out = self.input(
            conn,
            Frame::Hello {
                version: PROTOCOL_VERSION,
                caps,
            },
        );
        let max_frame = self.router.limits.max_frame;
        assert_eq!(
            out,
            [Out::send(
                conn,
                Frame::Welcome {
                    version: PROTOCOL_VERSION,
                    caps,
                    max_frame
                }
            )]
        );
        conn
    }

    /// A connection of `uid` that has said hello, offering shared memory.
    pub fn connect(&mut self, uid: u32) -> ConnId {
        self.connect_with(uid, true)
    }

    /// A frame from `conn`.
    pub fn input(&mut self, conn: ConnId, frame: Frame) -> Vec<Out> {
        let out = self.router.handle(conn, frame, Vec::new(), self.now);
        self.carry(out)
    }

    /// `conn` went away.
    pub fn disconnect(&mut self, conn: ConnId) -> Vec<Out> {
        let out = self.router.disconnect(conn);
        self.carry(out)
    }

    /// The event loop's turn at [`Bus::now`]: the calls whose deadline
    /// passed.
    pub fn expire(&mut self) -> Vec<Out> {
        let out = self.router.expire(self.now);
        self.carry(out)
    }

    /// The broker stops now.
    pub fn abort_all(&mut self, why: &str) -> Vec<Out> {
        let out = self.router.abort_all(why);
        self.carry(out)
    }

    /// Registers `service` on `conn`: the outputs (an ack or a refusal).
    pub fn register(
        &mut self,
        conn: ConnId,
        request: u64,
        service: &str,
        methods: &[(&str, StreamMode)],
    ) -> Vec<Out> {
        let methods = methods
            .iter()
            .map(|&(name, mode)| MethodSpec::new(name, mode))
            .collect();
        self.input(
            conn,
            Frame::Register {
                request,
                service: service.to_string(),
                methods,
            },
        )
    }

    /// Registers `service` on `conn`, which must be acknowledged.
    pub fn serve(&mut self, conn: ConnId, service: &str, methods: &[(&str, StreamMode)]) {
        let out = self.register(conn, 0, service, methods);
        assert_eq!(out, [Out::send(conn, Frame::Ack { request: 0 })]);
    }

    /// A call from `conn`.
    pub fn call(&mut self, conn: ConnId, req: CallRequest) -> Vec<Out> {
        self.input(conn, Frame::Call(req))
    }

    /// A result from `conn` (the service) for broker call `call`.
    pub fn answer(
        &mut self,
        conn: ConnId,
        call: CallId,
        outcome: Result<&[u8], RemoteError>,
    ) -> Vec<Out> {
        let outcome = outcome.map(<[u8]>::to_vec);
        self.input(conn, Frame::Result { call, outcome })
    }

    /// The last port made.
    pub fn last_port(&mut self) -> MadePort {
        self.ports().made.last().cloned().expect("a port was made")
    }

    /// The stream id the next port will get.
    pub fn next_stream(&self) -> StreamId {
        self.router.next_stream
    }

    /// Delivers every descriptor held back by [`Bus::hold_fds`].
    pub fn deliver_held(&mut self) {
        for (to, fds) in std::mem::take(&mut self.held) {
            self.router.fds_delivered(to, fds.len());
        }
    }

    /// The outputs as [`Out`]s; descriptors delivered (then closed) or held.
    fn carry(&mut self, outputs: Vec<Output>) -> Vec<Out> {
        outputs
            .into_iter()
            .map(|o| match o {
                Output::Send { to, frame, fds } => {
                    let raw = fds.iter().map(|f| f.as_raw_fd()).collect();
                    if !fds.is_empty() {
                        if self.hold_fds {
                            self.held.push((to, fds));
                        } else {
                            self.router.fds_delivered(to, fds.len());
                        }
                    }
                    Out::Send {
                        to,
                        frame,
                        fds: raw,
                    }
                }
                Output::Close { conn, error } => Out::Close { conn, error },
            })
            .collect()
    }
}
