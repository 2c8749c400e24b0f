//! # shmbus core
//!
//! The parts of the shmbus streaming bus that both the broker (`shmbusd`) and
//! the client library share:
//!
//! - [`frame`]: control-plane frames between a peer and the broker;
//! - [`state`]: the stream state machine (IDLE → OPENING → ACTIVE → CLOSING → CLOSED);
//! - [`credit`]: credit accounting with a high-water mark and size strategies;
//! - [`link`]: the socket stream port's batched wire format;
//! - [`ring`]: the shared-memory stream port, the only module touching shared memory;
//! - [`sys`]: the syscall boundary (memfds, seals, descriptor passing, credentials);
//! - [`blob`]: sealed blobs, memory handed over whole with no copy.
//!
//! `frame`, `state`, `credit` and `link` do no I/O, and forbid `unsafe`:
//! the unsafe code of the whole workspace lives in `ring` (shared memory),
//! `blob` (mapping sealed memory) and `sys` (system calls), and the other
//! crates forbid it too.

pub mod blob;
pub mod credit;
pub mod frame;
pub mod glob;
pub mod link;
pub mod ring;
pub mod state;
pub mod sys;

pub use credit::{CreditSpec, SizeStrategy};
pub use frame::{
    CallId, Capabilities, Direction, ErrorCode, Frame, MethodSpec, RemoteError, StreamId,
    StreamMode, Transport, TransportPreference,
};
pub use state::{StreamLifecycle, StreamState};

/// Default ring data size per direction: cache-sized.
pub const DEFAULT_RING_SIZE: u32 = 1 << 20;
/// Default high-water mark for byte credit.
pub const DEFAULT_HIGH_WATER_MARK: u64 = 1 << 20;

/// Environment variable naming the broker socket.
pub const SOCKET_ENV: &str = "SHMBUS_SOCKET";

/// The socket path used when none is given: `$SHMBUS_SOCKET`, else
/// `$XDG_RUNTIME_DIR/shmbus/bus.sock`, else `/run/shmbus/bus.sock`.
pub fn default_socket_path() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os(SOCKET_ENV).filter(|p| !p.is_empty()) {
        return p.into();
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|p| !p.is_empty()) {
        Some(dir) => std::path::PathBuf::from(dir).join("shmbus/bus.sock"),
        None => "/run/shmbus/bus.sock".into(),
    }
}
