//! The client's error type.

use std::io;

use shmbus::frame::{ErrorCode, RemoteError};

/// Everything that can go wrong for a caller or a service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No broker listens on the socket.
    #[error("broker unreachable at {path}: {source}")]
    BrokerUnreachable {
        /// Socket path tried.
        path: String,
        /// Why connecting failed.
        source: io::Error,
    },
    /// The broker connection closed.
    #[error("connection to the broker closed")]
    BrokerGone,
    /// A system call failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The broker or the other peer answered with an error.
    #[error("{}", describe_remote(.0))]
    Remote(RemoteError),
    /// The sending peer ended the stream with stream-error.
    #[error("stream error: {0}")]
    Stream(String),
    /// The call or stream was cancelled.
    #[error("cancelled")]
    Cancelled,
    /// The other peer of the stream died or closed its port early.
    #[error("peer gone: {0}")]
    PeerGone(String),
    /// The other peer broke the protocol on this stream.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// An item is larger than the stream can ever carry.
    #[error("item too large: {0}")]
    TooLarge(String),
    /// The stream already ended.
    #[error("stream closed")]
    Closed,
    /// The peer made no progress within the stall timeout.
    #[error("stream stalled: the peer made no progress within the stall timeout")]
    Stalled,
    /// A typed item did not encode or decode.
    #[error("codec: {0}")]
    Codec(#[from] postcard::Error),
}

fn describe_remote(e: &RemoteError) -> String {
    let what = match e.code {
        ErrorCode::NoSuchService => "no such service",
        ErrorCode::NoSuchMethod => "no such method",
        ErrorCode::NameTaken => "name taken",
        ErrorCode::Aborted => "aborted",
        ErrorCode::Failed => "call failed",
        ErrorCode::PeerGone => "peer gone",
        ErrorCode::ProtocolViolation => "protocol violation",
        ErrorCode::LimitsExceeded => "limits exceeded",
        ErrorCode::Denied => "denied",
        ErrorCode::SharedMemoryUnavailable => "shared memory unavailable",
        ErrorCode::ShuttingDown => "broker shutting down",
    };
    if e.message.is_empty() || e.message == what {
        what.to_string()
    } else {
        format!("{what}: {}", e.message)
    }
}

impl Error {
    /// The remote error code, when the error came from the broker or a peer.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Remote(e) => Some(e.code),
            _ => None,
        }
    }

    pub(crate) fn into_io(self) -> io::Error {
        match self {
            Error::Io(e) => e,
            other => {
                let kind = match other {
                    Error::Cancelled => io::ErrorKind::Interrupted,
                    Error::PeerGone(_) | Error::BrokerGone => io::ErrorKind::BrokenPipe,
                    Error::Protocol(_) => io::ErrorKind::InvalidData,
                    _ => io::ErrorKind::Other,
                };
                io::Error::new(kind, other)
            }
        }
    }
}

impl From<shmbus::ring::RingError> for Error {
    fn from(e: shmbus::ring::RingError) -> Self {
        use shmbus::ring::RingError;
        match e {
            RingError::Io(e) => Error::Io(e),
            RingError::TooLarge { .. } => Error::TooLarge(e.to_string()),
            RingError::Credit(shmbus::credit::CreditError::ItemExceedsHighWaterMark { .. }) => {
                Error::TooLarge(e.to_string())
            }
            other => Error::Protocol(other.to_string()),
        }
    }
}

impl From<shmbus::credit::CreditError> for Error {
    fn from(e: shmbus::credit::CreditError) -> Self {
        match e {
            shmbus::credit::CreditError::ItemExceedsHighWaterMark { .. } => {
                Error::TooLarge(e.to_string())
            }
            other => Error::Protocol(other.to_string()),
        }
    }
}

/// Result with the client's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
