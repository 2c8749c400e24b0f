//! The client's error type.

use std::io;

use shmbus::frame::{ErrorCode, RemoteError};

/// Everything that can go wrong for a caller or a service.
///
/// Errors that pass through [`std::io::Read`] or [`std::io::Write`] on a
/// [`Receiver`](crate::Receiver) or [`Sender`](crate::Sender) come back as
/// themselves when converted with `?` or `Error::from`: a stream whose
/// service died, read through `read_to_end`, is still [`Error::PeerGone`],
/// not [`Error::Io`].
///
/// ```no_run
/// # use std::io::Read;
/// # fn demo(call: &mut shmbus_client::Call) -> shmbus_client::Result<()> {
/// let mut rx = call.take_receiver().expect("a download");
/// let mut all = Vec::new();
/// match rx.read_to_end(&mut all).map_err(shmbus_client::Error::from) {
///     Ok(n) => println!("{n} bytes"),
///     Err(shmbus_client::Error::PeerGone(why)) => eprintln!("service died: {why}"),
///     Err(e) => return Err(e),
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
    Io(io::Error),
    /// The broker or the service answered with an error: match on its
    /// [`code`](RemoteError::code) (or use [`Error::code`]).
    #[error("{0}")]
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
    /// An item is larger than the stream can ever carry, or a collected
    /// stream is larger than its limit.
    #[error("too large: {0}")]
    TooLarge(String),
    /// The stream already ended.
    #[error("stream closed")]
    Closed,
    /// The peer made no progress within the stall timeout.
    #[error("stream stalled: the peer made no progress within the stall timeout")]
    Stalled,
    /// The call's deadline passed: the broker failed the call (the service
    /// was told to stop), or a wait on its stream reached the deadline.
    #[error("deadline exceeded")]
    DeadlineExceeded,
    /// A blob could not be made or sealed (for one that arrived, the
    /// stream fails with [`Error::Protocol`] instead, naming what was wrong).
    #[error("{0}")]
    Blob(#[from] shmbus::blob::BlobError),
    /// [`Receiver::recv_blob`](crate::Receiver::recv_blob) found an item
    /// that is not a blob; it stays next.
    #[error(
        "the next item is not a blob ({len} bytes): receive it with recv_bytes, recv or recv_any"
    )]
    NotABlob {
        /// The item's length.
        len: usize,
    },
    /// A typed item or argument did not encode or decode: usually the two
    /// peers disagree on the item's type.
    #[error("codec: {0}")]
    Codec(String),
}

impl From<io::Error> for Error {
    /// Unwraps an error of this crate carried inside an `io::Error` (by
    /// `Read`/`Write` on a stream half); wraps any other as [`Error::Io`].
    fn from(e: io::Error) -> Self {
        if !e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
            return Error::Io(e);
        }
        let kind = e.kind();
        match e.into_inner().map(|inner| inner.downcast::<Error>()) {
            Some(Ok(ours)) => *ours,
            Some(Err(other)) => Error::Io(io::Error::new(kind, other)),
            None => Error::Io(kind.into()),
        }
    }
}

impl From<postcard::Error> for Error {
    fn from(e: postcard::Error) -> Self {
        Error::Codec(e.to_string())
    }
}

impl Error {
    /// The remote error code, when the error came from the broker or a peer.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Remote(e) => Some(e.code),
            Error::DeadlineExceeded => Some(ErrorCode::DeadlineExceeded),
            _ => None,
        }
    }

    /// The error for a failed result: [`Error::DeadlineExceeded`] for the
    /// broker's deadline error, else [`Error::Remote`].
    pub(crate) fn remote(e: RemoteError) -> Error {
        if e.code == ErrorCode::DeadlineExceeded {
            Error::DeadlineExceeded
        } else {
            Error::Remote(e)
        }
    }

    /// Carries this error through `io::Read`/`io::Write`. The kind is never
    /// `Interrupted`, which `io::copy` and `read_to_end` retry forever;
    /// `Error::from` gives the original back.
    pub(crate) fn into_io(self) -> io::Error {
        match self {
            Error::Io(e) => e,
            other => {
                let kind = match other {
                    Error::Cancelled => io::ErrorKind::ConnectionAborted,
                    Error::PeerGone(_) | Error::BrokerGone => io::ErrorKind::BrokenPipe,
                    Error::Protocol(_) | Error::Codec(_) => io::ErrorKind::InvalidData,
                    Error::Stalled | Error::DeadlineExceeded => io::ErrorKind::TimedOut,
                    _ => io::ErrorKind::Other,
                };
                io::Error::new(kind, other)
            }
        }
    }
}

/// Decodes one typed item or argument. Every byte must be used, so an item
/// of another type is an error rather than a silently wrong value.
pub(crate) fn decode<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Result<T> {
    let name = std::any::type_name::<T>;
    let (value, rest) = postcard::take_from_bytes::<T>(bytes).map_err(|e| {
        Error::Codec(format!(
            "{e} (decoding {} bytes as {})",
            bytes.len(),
            name()
        ))
    })?;
    if !rest.is_empty() {
        return Err(Error::Codec(format!(
            "{} of {} bytes left over after decoding as {}: the peer sent another type",
            rest.len(),
            bytes.len(),
            name()
        )));
    }
    Ok(value)
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
