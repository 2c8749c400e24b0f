//! Control-plane frames exchanged between a peer and the broker.
//!
//! Every frame travels over the broker's Unix stream socket as a 5-byte header
//! (`u32` little-endian body length, `u8` count of file descriptors attached)
//! followed by a postcard-encoded [`Frame`]. The length is checked against the
//! connection's maximum *before* any buffer is sized for the body, and the
//! declared descriptor count must match what the frame kind carries
//! ([`Frame::fd_count`]).
//!
//! Stream payload never travels in these frames: stream-data, stream-credit,
//! stream-end, stream-error and stream-cancel travel on the stream's own port
//! (see [`crate::ring`] and [`crate::link`]).
//!
//! Every frame kind, its fields, what each side does with it and a call's
//! whole life are described in `PROTOCOL.md` at the repository root.

#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};

use crate::credit::CreditSpec;
use crate::state::StreamState;

/// Version of the control protocol spoken by this crate.
pub const PROTOCOL_VERSION: u16 = 4;
/// Size of the frame header on the wire.
pub const FRAME_HEADER_LEN: usize = 5;
/// Default upper bound for one frame's body, in bytes.
pub const DEFAULT_MAX_FRAME: u32 = 1 << 20;
/// Most file descriptors a single frame may carry.
pub const MAX_FDS_PER_FRAME: usize = 4;

/// Identifier of a call, chosen by whoever issues it (caller or broker).
pub type CallId = u64;
/// Identifier of a stream, unique within one broker's lifetime.
pub type StreamId = u64;
/// Identifier of a request that expects a reply (register, list).
pub type RequestId = u64;

/// What a peer can do, announced in the handshake.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// The peer can map shared-memory stream ports.
    pub shared_memory: bool,
}

/// Which way items flow during a call.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamMode {
    /// No stream: arguments in, one result out.
    Unary,
    /// The service streams items to the caller.
    Download,
    /// The caller streams items to the service.
    Upload,
    /// Both directions at once.
    Bidirectional,
}

impl StreamMode {
    /// The directions this mode opens, in the order their ports are passed.
    pub fn directions(self) -> &'static [Direction] {
        match self {
            StreamMode::Unary => &[],
            StreamMode::Download => &[Direction::ToCaller],
            StreamMode::Upload => &[Direction::ToService],
            StreamMode::Bidirectional => &[Direction::ToCaller, Direction::ToService],
        }
    }
}

/// One direction of a stream.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Items flow from the service to the caller.
    ToCaller,
    /// Items flow from the caller to the service.
    ToService,
}

/// How a caller wants its stream carried.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransportPreference {
    /// Shared memory when both peers offer it, else the socket.
    #[default]
    Auto,
    /// Shared memory or fail.
    SharedMemory,
    /// The socket, even when shared memory is available.
    Socket,
}

/// How a stream is actually carried.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A sealed memfd ring per direction, plus a doorbell socket.
    SharedMemory,
    /// A dedicated Unix socket per direction, items sent in batches.
    Socket,
}

/// Why a stream that could have used shared memory did not.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum FallbackReason {
    /// The caller asked for the socket.
    Requested,
    /// The named side did not offer shared memory in its handshake.
    PeerWithoutSharedMemory(String),
    /// Creating, sizing or sealing the memfd failed.
    SetupFailed(String),
}

impl std::fmt::Display for FallbackReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FallbackReason::Requested => f.write_str("the caller asked for the socket"),
            FallbackReason::PeerWithoutSharedMemory(who) => {
                write!(f, "the {who} did not offer shared memory")
            }
            FallbackReason::SetupFailed(why) => write!(f, "the shared-memory port failed: {why}"),
        }
    }
}

/// A method a service offers.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct MethodSpec {
    /// Method name, unique within its service.
    pub name: String,
    /// How the method streams.
    pub mode: StreamMode,
}

impl MethodSpec {
    /// A method named `name` that streams as `mode`.
    pub fn new(name: &str, mode: StreamMode) -> Self {
        MethodSpec {
            name: name.to_string(),
            mode,
        }
    }
}

/// Everything a caller says about a call.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CallRequest {
    /// Caller-chosen id, unique among the caller's live calls.
    pub call: CallId,
    /// Service name.
    pub service: String,
    /// Method name.
    pub method: String,
    /// Opaque arguments.
    pub args: Vec<u8>,
    /// How the caller expects items to flow; `None` accepts whatever the
    /// method does (used to collect a stream as one result).
    pub mode: Option<StreamMode>,
    /// Credit for each direction: the receiver grants up to this high-water mark.
    pub credit: CreditSpec,
    /// Shared memory, socket, or let the broker choose.
    pub transport: TransportPreference,
    /// Data bytes of each ring; `None` takes the broker's default.
    pub ring_size: Option<u32>,
    /// The call's deadline, as the time left when the caller sent it, in
    /// microseconds; `None` for a call without one. The broker fails the
    /// call with [`ErrorCode::DeadlineExceeded`] once it passes.
    pub time_left_us: Option<u64>,
}

/// The port parameters both peers learn in stream-open.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct StreamOpen {
    /// Broker-wide stream id.
    pub stream: StreamId,
    /// The call this stream belongs to, in the receiver's id space.
    pub call: CallId,
    /// How items flow.
    pub mode: StreamMode,
    /// Shared memory or socket.
    pub transport: Transport,
    /// Why shared memory was not used, if it was not.
    pub fallback: Option<FallbackReason>,
    /// Data bytes of each ring (also the batching window on the socket).
    pub ring_size: u32,
    /// Credit settings shared by both directions.
    pub credit: CreditSpec,
}

impl StreamOpen {
    /// Descriptors that accompany this stream-open: per direction a link
    /// socket, followed by a memfd when the transport is shared memory.
    pub fn fd_count(&self) -> usize {
        let per_direction = match self.transport {
            Transport::SharedMemory => 2,
            Transport::Socket => 1,
        };
        self.mode.directions().len() * per_direction
    }
}

/// Machine-readable error codes carried in results and error frames.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// No service by that name.
    NoSuchService,
    /// The service has no method by that name.
    NoSuchMethod,
    /// The name is already registered.
    NameTaken,
    /// The call was cancelled.
    Aborted,
    /// The service failed the call.
    Failed,
    /// The other peer disconnected or died.
    PeerGone,
    /// The frame broke the protocol.
    ProtocolViolation,
    /// A limit was exceeded.
    LimitsExceeded,
    /// The request is not allowed.
    Denied,
    /// Shared memory was required but could not be set up.
    SharedMemoryUnavailable,
    /// The broker is shutting down.
    ShuttingDown,
    /// The call's deadline passed.
    DeadlineExceeded,
}

impl ErrorCode {
    /// A short description for people, e.g. "call failed" or "call aborted".
    pub fn describe(self) -> &'static str {
        match self {
            ErrorCode::NoSuchService => "no such service",
            ErrorCode::NoSuchMethod => "no such method",
            ErrorCode::NameTaken => "name taken",
            ErrorCode::Aborted => "call aborted",
            ErrorCode::Failed => "call failed",
            ErrorCode::PeerGone => "peer gone",
            ErrorCode::ProtocolViolation => "protocol violation",
            ErrorCode::LimitsExceeded => "limits exceeded",
            ErrorCode::Denied => "denied",
            ErrorCode::SharedMemoryUnavailable => "shared memory unavailable",
            ErrorCode::ShuttingDown => "broker shutting down",
            ErrorCode::DeadlineExceeded => "deadline exceeded",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.describe())
    }
}

/// An error with a code and a human-readable message.
///
/// Displays as the code's description, then the message when it adds
/// anything: `call failed: disk full`, `call aborted: cancelled by the caller`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct RemoteError {
    /// What kind of error.
    pub code: ErrorCode,
    /// Details for people.
    pub message: String,
}

impl std::fmt::Display for RemoteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = self.code.describe();
        // A message that only repeats the code (older peers send "aborted").
        let repeats = self.message.is_empty()
            || self.message == what
            || what.strip_prefix("call ") == Some(self.message.as_str());
        if repeats {
            f.write_str(what)
        } else {
            write!(f, "{what}: {}", self.message)
        }
    }
}

impl std::error::Error for RemoteError {}

/// A live stream as the broker sees it, for `shmbusctl list`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct StreamInfo {
    /// Broker-wide stream id.
    pub stream: StreamId,
    /// Service name.
    pub service: String,
    /// Method name.
    pub method: String,
    /// Shared memory or socket.
    pub transport: Transport,
    /// The stream state as last reported.
    pub state: StreamState,
    /// Payload bytes received so far, as last reported by the receiving peer.
    pub bytes: u64,
    /// Credit granted but not yet used, as last reported.
    pub credit_outstanding: u64,
}

/// A registered service, for `shmbusctl list`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ServiceInfo {
    /// Service name.
    pub name: String,
    /// Its methods.
    pub methods: Vec<MethodSpec>,
    /// Process id of the owner, from the socket.
    pub pid: i32,
    /// User id of the owner, from the socket.
    pub uid: u32,
}

/// A snapshot of the broker, for `shmbusctl list`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct BrokerSnapshot {
    /// Registered services.
    pub services: Vec<ServiceInfo>,
    /// Live streams.
    pub streams: Vec<StreamInfo>,
    /// Open connections.
    pub connections: u64,
}

/// The broker's vital signs, for `shmbusctl status`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct BrokerStatus {
    /// Broker version.
    pub version: String,
    /// Milliseconds since the broker started.
    pub uptime_ms: u64,
    /// Open connections.
    pub connections: u64,
    /// Registered services.
    pub services: u64,
    /// Live streams.
    pub streams: u64,
    /// Calls routed since start.
    pub calls_total: u64,
    /// Streams opened since start over shared memory.
    pub shm_streams_total: u64,
    /// Streams opened since start over the socket fallback.
    pub socket_streams_total: u64,
    /// Stream payload bytes moved since start, as reported by receivers.
    pub bytes_moved: u64,
}

/// What happened to a stream, for `shmbusctl monitor`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum MonitorKind {
    /// The port was set up (transport, and why not shared memory).
    Open {
        /// Shared memory or socket.
        transport: Transport,
        /// Why shared memory was not used.
        fallback: Option<FallbackReason>,
    },
    /// The call finished successfully.
    End,
    /// The call failed with this error.
    Error(RemoteError),
    /// The caller cancelled.
    Cancel,
}

/// One stream event.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct MonitorEvent {
    /// Broker-wide stream id.
    pub stream: StreamId,
    /// Service name.
    pub service: String,
    /// Method name.
    pub method: String,
    /// Caller's process id.
    pub caller_pid: i32,
    /// Payload bytes last reported.
    pub bytes: u64,
    /// What happened.
    pub kind: MonitorKind,
}

/// A control-plane frame.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Peer → broker, first frame: version and capabilities.
    Hello {
        /// Protocol version the peer speaks.
        version: u16,
        /// What the peer can do.
        caps: Capabilities,
    },
    /// Broker → peer, answer to `Hello`.
    Welcome {
        /// Protocol version the broker speaks.
        version: u16,
        /// Capabilities in effect for this connection.
        caps: Capabilities,
        /// Largest frame body either side may send.
        max_frame: u32,
    },
    /// Peer → broker: register a service.
    Register {
        /// Request id echoed in the reply.
        request: RequestId,
        /// Service name.
        service: String,
        /// Its methods.
        methods: Vec<MethodSpec>,
    },
    /// Broker → peer: a request succeeded.
    Ack {
        /// The request being answered.
        request: RequestId,
    },
    /// Broker → peer: a request failed.
    Refused {
        /// The request being answered.
        request: RequestId,
        /// Why.
        error: RemoteError,
    },
    /// Caller → broker: call a method.
    Call(CallRequest),
    /// Broker → service: a call arrived. Carries the stream's ports when the
    /// method streams (`open` is set).
    Incoming {
        /// Broker-chosen call id in the service's id space.
        call: CallId,
        /// Service name.
        service: String,
        /// Method name.
        method: String,
        /// Opaque arguments.
        args: Vec<u8>,
        /// Stream parameters, when the call streams.
        open: Option<StreamOpen>,
        /// Caller's process id, from the socket.
        caller_pid: i32,
        /// Caller's user id, from the socket.
        caller_uid: u32,
        /// The call's deadline, as the time left when the broker sent this
        /// frame, in microseconds; `None` for a call without one.
        time_left_us: Option<u64>,
    },
    /// Broker → caller: the stream's port is ready (stream-open).
    StreamOpen(StreamOpen),
    /// Service → broker → caller: the call's outcome.
    Result {
        /// The call, in the receiver's id space.
        call: CallId,
        /// Success payload or error.
        outcome: Result<Vec<u8>, RemoteError>,
    },
    /// Caller → broker → service: abandon a call.
    Cancel {
        /// The call, in the receiver's id space.
        call: CallId,
    },
    /// Peer → broker: progress of a stream the peer receives, for `list`.
    StreamProgress {
        /// Broker-wide stream id.
        stream: StreamId,
        /// The reporting half's state.
        state: StreamState,
        /// Payload bytes received so far.
        bytes: u64,
        /// Credit granted and not yet used.
        credit_outstanding: u64,
    },
    /// Peer → broker: ask for a snapshot.
    List {
        /// Request id echoed in the reply.
        request: RequestId,
    },
    /// Broker → peer: the snapshot.
    ListReply {
        /// The request being answered.
        request: RequestId,
        /// What the broker knows.
        snapshot: BrokerSnapshot,
    },
    /// Peer → broker: ask for the broker's status.
    Status {
        /// Request id echoed in the reply.
        request: RequestId,
    },
    /// Broker → peer: the status.
    StatusReply {
        /// The request being answered.
        request: RequestId,
        /// Vital signs.
        status: BrokerStatus,
    },
    /// Peer → broker: send me stream events from now on.
    Monitor {
        /// Request id acknowledged with `Ack`.
        request: RequestId,
    },
    /// Broker → monitoring peer: a stream event.
    Event(MonitorEvent),
    /// Broker → peer: the broker is stopping; calls in flight may finish
    /// within the grace period, new calls are refused.
    ShuttingDown {
        /// Milliseconds left before the broker exits.
        grace_ms: u32,
    },
    /// Broker → peer: a fatal connection error, sent just before closing.
    Error(RemoteError),
    /// Peer → broker: the peer no longer serves a service it registered.
    /// Calls already delivered go on; new ones get `NoSuchService`.
    Unregister {
        /// Service name.
        service: String,
    },
}

impl Frame {
    /// How many descriptors must accompany this frame.
    pub fn fd_count(&self) -> usize {
        match self {
            Frame::StreamOpen(open) => open.fd_count(),
            Frame::Incoming {
                open: Some(open), ..
            } => open.fd_count(),
            _ => 0,
        }
    }

    /// Short name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Frame::Hello { .. } => "hello",
            Frame::Welcome { .. } => "welcome",
            Frame::Register { .. } => "register",
            Frame::Ack { .. } => "ack",
            Frame::Refused { .. } => "refused",
            Frame::Call(_) => "call",
            Frame::Incoming { .. } => "incoming",
            Frame::StreamOpen(_) => "stream-open",
            Frame::Result { .. } => "result",
            Frame::Cancel { .. } => "cancel",
            Frame::StreamProgress { .. } => "stream-progress",
            Frame::List { .. } => "list",
            Frame::ListReply { .. } => "list-reply",
            Frame::Status { .. } => "status",
            Frame::StatusReply { .. } => "status-reply",
            Frame::Monitor { .. } => "monitor",
            Frame::Event(_) => "event",
            Frame::ShuttingDown { .. } => "shutting-down",
            Frame::Error(_) => "error",
            Frame::Unregister { .. } => "unregister",
        }
    }
}

/// Why bytes could not be turned into a frame.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The declared body length exceeds the maximum.
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Declared length.
        len: u32,
        /// Allowed maximum.
        max: u32,
    },
    /// The header declares more descriptors than any frame carries.
    #[error("frame declares {0} file descriptors, at most {MAX_FDS_PER_FRAME} allowed")]
    TooManyFds(u8),
    /// The descriptors attached do not match the frame kind.
    #[error("{kind} frame needs {expected} file descriptors, {got} attached")]
    FdMismatch {
        /// Frame kind.
        kind: &'static str,
        /// Descriptors the kind requires.
        expected: usize,
        /// Descriptors that came with it.
        got: usize,
    },
    /// The body is not a valid postcard frame.
    #[error("malformed frame body: {0}")]
    Malformed(String),
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Body length in bytes.
    pub len: u32,
    /// Descriptors attached to the frame.
    pub fds: u8,
}

impl FrameHeader {
    /// Parses and checks a header against the maximum body size.
    pub fn parse(bytes: [u8; FRAME_HEADER_LEN], max_frame: u32) -> Result<Self, FrameError> {
        let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let fds = bytes[4];
        if len > max_frame {
            return Err(FrameError::TooLarge {
                len,
                max: max_frame,
            });
        }
        if fds as usize > MAX_FDS_PER_FRAME {
            return Err(FrameError::TooManyFds(fds));
        }
        Ok(FrameHeader { len, fds })
    }
}

/// Appends `frame` (header and body) to `out`.
pub fn encode(frame: &Frame, out: &mut Vec<u8>) {
    // Serializing these types into a Vec cannot fail.
    let body = postcard::to_stdvec(frame).expect("frame serializes");
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.push(frame.fd_count() as u8);
    out.extend_from_slice(&body);
}

/// Decodes a frame body and checks that it came with `fds` descriptors.
pub fn decode(body: &[u8], fds: usize) -> Result<Frame, FrameError> {
    let frame: Frame =
        postcard::from_bytes(body).map_err(|e| FrameError::Malformed(e.to_string()))?;
    let expected = frame.fd_count();
    if expected != fds {
        return Err(FrameError::FdMismatch {
            kind: frame.kind(),
            expected,
            got: fds,
        });
    }
    Ok(frame)
}

/// Splits complete frames off the front of a receive buffer.
///
/// Returns the header and body range of the first complete frame, or `None`
/// when more bytes are needed. Fails as soon as a header is invalid, before
/// any allocation for the body.
pub fn split_frame(
    buf: &[u8],
    max_frame: u32,
) -> Result<Option<(FrameHeader, std::ops::Range<usize>)>, FrameError> {
    if buf.len() < FRAME_HEADER_LEN {
        return Ok(None);
    }
    let mut header = [0u8; FRAME_HEADER_LEN];
    header.copy_from_slice(&buf[..FRAME_HEADER_LEN]);
    let header = FrameHeader::parse(header, max_frame)?;
    let end = FRAME_HEADER_LEN + header.len as usize;
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some((header, FRAME_HEADER_LEN..end)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_errors_display_their_code_then_their_message() {
        let e = |code, message: &str| RemoteError {
            code,
            message: message.into(),
        };
        assert_eq!(
            e(ErrorCode::Failed, "disk full").to_string(),
            "call failed: disk full"
        );
        assert_eq!(
            e(ErrorCode::Aborted, "cancelled by the caller").to_string(),
            "call aborted: cancelled by the caller"
        );
        // A message that only repeats the code is not said twice.
        assert_eq!(e(ErrorCode::Aborted, "aborted").to_string(), "call aborted");
        assert_eq!(e(ErrorCode::Failed, "").to_string(), "call failed");
        assert_eq!(
            e(ErrorCode::NoSuchService, "no such service").to_string(),
            "no such service"
        );
    }
    use crate::credit::SizeStrategy;

    fn sample_open() -> StreamOpen {
        StreamOpen {
            stream: 7,
            call: 3,
            mode: StreamMode::Bidirectional,
            transport: Transport::SharedMemory,
            fallback: None,
            ring_size: 1 << 16,
            credit: CreditSpec {
                high_water_mark: 64,
                strategy: SizeStrategy::Items,
            },
        }
    }

    #[test]
    fn round_trip_preserves_frames_and_fd_counts() {
        let frames = vec![
            Frame::Hello {
                version: PROTOCOL_VERSION,
                caps: Capabilities {
                    shared_memory: true,
                },
            },
            Frame::StreamOpen(sample_open()),
            Frame::Unregister {
                service: "clock".into(),
            },
            Frame::Result {
                call: 9,
                outcome: Err(RemoteError {
                    code: ErrorCode::Aborted,
                    message: "aborted".into(),
                }),
            },
        ];
        let mut wire = Vec::new();
        for f in &frames {
            encode(f, &mut wire);
        }
        let mut rest = &wire[..];
        for f in &frames {
            let (header, body) = split_frame(rest, DEFAULT_MAX_FRAME).unwrap().unwrap();
            assert_eq!(header.fds as usize, f.fd_count());
            let got = decode(&rest[body.clone()], header.fds as usize).unwrap();
            assert_eq!(&got, f);
            rest = &rest[body.end..];
        }
        assert!(rest.is_empty());
        assert_eq!(sample_open().fd_count(), 4);
    }

    #[test]
    fn oversized_header_is_rejected_before_the_body_arrives() {
        let mut header = [0u8; FRAME_HEADER_LEN];
        header[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            split_frame(&header, 1024),
            Err(FrameError::TooLarge {
                len: u32::MAX,
                max: 1024
            })
        );
        header[..4].copy_from_slice(&1u32.to_le_bytes());
        header[4] = 200;
        assert_eq!(split_frame(&header, 1024), Err(FrameError::TooManyFds(200)));
    }

    #[test]
    fn wrong_fd_count_and_garbage_are_errors() {
        let mut wire = Vec::new();
        encode(&Frame::StreamOpen(sample_open()), &mut wire);
        let (_, body) = split_frame(&wire, DEFAULT_MAX_FRAME).unwrap().unwrap();
        assert!(matches!(
            decode(&wire[body.clone()], 1),
            Err(FrameError::FdMismatch { expected: 4, .. })
        ));
        assert!(matches!(
            decode(&[0xff, 0xff, 0xff], 0),
            Err(FrameError::Malformed(_))
        ));
    }

    #[test]
    fn partial_frames_wait_for_more_bytes() {
        let mut wire = Vec::new();
        encode(&Frame::List { request: 1 }, &mut wire);
        for cut in 0..wire.len() {
            assert_eq!(split_frame(&wire[..cut], DEFAULT_MAX_FRAME), Ok(None));
        }
    }
}
