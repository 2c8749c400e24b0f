//! The shmbus side of every measurement: a long-lived service process (the
//! producer, the echo, the idle peer) and a caller process per measurement.

pub mod blob;
pub mod client;
pub mod service;

use serde::{Deserialize, Serialize};
use shmbus_client::{Call, Connection, StreamMode, Transport as BusTransport, TransportPreference};

use crate::job::{Job, Transport};

/// The methods the bench service registers.
pub mod method {
    /// Download: bytes written with `Sender::reserve` + `commit`.
    pub const STREAM: &str = "stream";
    /// Download: typed items with `Sender::feed` / `send`.
    pub const TYPED: &str = "typed";
    /// Bidirectional: every item echoed back.
    pub const ECHO: &str = "echo";
    /// Download: one 1-byte item at once, then the end.
    pub const FIRST: &str = "first";
    /// Bidirectional: nothing sent until the caller ends its direction.
    pub const IDLE: &str = "idle";
    /// Bidirectional: per item received, the clock then a blob (or the
    /// same bytes streamed).
    pub const BLOB: &str = "blob";
}

/// What the service answers a call with.
#[derive(Serialize, Deserialize, Debug, Default, Clone, Copy)]
pub struct Reply {
    /// Bytes it sent (typed: items × encoded item size).
    pub bytes: u64,
    /// Checksum of the payload bytes it sent or received.
    pub checksum: u64,
    /// CPU its process used while serving the call (idle).
    pub cpu_ns: Option<u64>,
    /// What sealing its blob cost (blob).
    #[serde(default)]
    pub seal_ns: Option<u64>,
}

fn varint_len(n: usize) -> usize {
    (usize::BITS - n.max(1).leading_zeros()).div_ceil(7) as usize
}

/// Payload length of a typed item whose postcard encoding (a varint length,
/// then the bytes) takes `size` bytes, or just under where no payload fits
/// exactly (129 bytes, say).
pub fn typed_payload(size: usize) -> usize {
    (0..=size.saturating_sub(1))
        .rev()
        .find(|&p| p + varint_len(p) <= size)
        .unwrap_or(0)
}

/// Encoded length of the typed item for `size`: the bytes it moves.
pub fn typed_encoded(size: usize) -> usize {
    let p = typed_payload(size);
    p + varint_len(p)
}

/// Typed items smaller than this go with `feed` (flushed at the end), larger
/// ones with `send`.
pub const FEED_BELOW: usize = 4096;

/// Error type of the peer roles.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The transport a job asks shmbus for.
pub fn preference(t: Transport) -> TransportPreference {
    match t {
        Transport::Socket => TransportPreference::Socket,
        _ => TransportPreference::SharedMemory,
    }
}

/// Makes the job's call and checks it got the transport it asked for.
pub fn start(conn: &Connection, job: &Job, name: &str, mode: StreamMode) -> Result<Call, BoxError> {
    let call = conn
        .call(&job.service, name)
        .mode(mode)
        .args_typed(job)?
        .transport(preference(job.transport))
        .ring_size(job.ring)
        .credit(job.credit)
        .wait_policy(job.wait.policy())
        .start()?;
    let want = match job.transport {
        Transport::Socket => BusTransport::Socket,
        _ => BusTransport::SharedMemory,
    };
    if call.transport() != Some(want) {
        return Err(format!(
            "asked for {want:?}, got {:?} ({:?})",
            call.transport(),
            call.fallback_reason()
        )
        .into());
    }
    Ok(call)
}

#[cfg(test)]
mod tests {
    #[test]
    fn typed_payload_encodes_to_the_item_size() {
        for size in [64usize, 128, 129, 4096, 65536] {
            let p = super::typed_payload(size);
            assert_eq!(postcard_len(p), super::typed_encoded(size), "payload {p}");
            assert!(size - super::typed_encoded(size) <= 1);
        }
        assert_eq!(super::typed_encoded(4096), 4096);
    }

    fn postcard_len(p: usize) -> usize {
        let v = vec![7u8; p];
        postcard::to_stdvec(&serde_bytes::Bytes::new(&v))
            .unwrap()
            .len()
    }
}
