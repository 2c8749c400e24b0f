//! # shmbus client
//!
//! The library applications link to talk to a `shmbusd` broker: register
//! services, call methods, and stream items between processes. A streaming
//! call gets a dedicated port set up by the broker: a sealed shared-memory
//! ring per direction when both peers offer shared memory, else a Unix socket
//! per direction carrying items in batches. The API is the same either way.
//!
//! ```no_run
//! use shmbus_client::{Connection, CreditSpec, MethodSpec, StreamMode};
//!
//! # fn main() -> shmbus_client::Result<()> {
//! // A service streaming numbers to its callers.
//! let conn = Connection::connect_default()?;
//! let service = conn.register("numbers", &[MethodSpec::new("count", StreamMode::Download)])?;
//! std::thread::spawn(move || -> shmbus_client::Result<()> {
//!     while let Some(mut call) = service.next()? {
//!         let tx = call.sender().expect("download streams to the caller");
//!         for i in 0..1000u64 {
//!             tx.send(&i)?;
//!         }
//!         call.reply(Vec::new())?;
//!     }
//!     Ok(())
//! });
//!
//! // A caller, usually in another process.
//! let conn = Connection::connect_default()?;
//! let mut call = conn
//!     .call("numbers", "count")
//!     .mode(StreamMode::Download)
//!     .credit(CreditSpec::items(64))
//!     .start()?;
//! let rx = call.receiver().expect("download has a receiver");
//! let mut sum = 0u64;
//! while let Some(n) = rx.recv::<u64>()? {
//!     sum += n;
//! }
//! call.finish()?;
//! assert_eq!(sum, 499_500);
//! # Ok(())
//! # }
//! ```

// One block of unsafe code, in `async_stream`: registering a descriptor
// with tokio's reactor (its safety argument is beside it).
#![deny(unsafe_code)]

#[cfg(feature = "tokio")]
mod async_stream;
mod call;
mod conn;
mod error;
mod port;
mod service;
mod stream;

#[cfg(feature = "tokio")]
pub use async_stream::{AsyncReceiver, AsyncSender, RecvStream, SendSink};
pub use call::{Call, CallBuilder, CancelHandle};
pub use conn::{default_socket_path, ConnectOptions, Connection, SOCKET_ENV};
pub use error::{Error, Result};
pub use port::wait::WaitPolicy;
pub use service::{IncomingCall, Service};
pub use shmbus::blob::{Blob, BlobError, BlobWriter, DEFAULT_BLOB_LIMIT};
pub use stream::{InPlace, Received, Receiver, SendSlot, Sender, SizeFn, TryRecv};

pub use shmbus::credit::{CreditError, CreditSpec, SizeStrategy};
pub use shmbus::frame::{
    BrokerSnapshot, BrokerStatus, CallId, Direction, ErrorCode, FallbackReason, MethodSpec,
    MonitorEvent, MonitorKind, RemoteError, ServiceInfo, StreamId, StreamInfo, StreamMode,
    Transport, TransportPreference,
};
pub use shmbus::ring::RingError;
pub use shmbus::state::StreamState;

/// Largest call result, in encoded bytes, that the service also sends
/// straight to the caller on the stream's port, so that it arrives even if
/// the broker dies (see [`Call::finish`]). Larger results travel through
/// the broker only.
pub const MAX_PEER_RESULT: usize = shmbus::ring::MAX_RING_RESULT;

/// The README's examples, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeExamples;
