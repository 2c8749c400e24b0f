//! The router's one way out to the operating system: making a stream's
//! port. The router decides everything about a port (its stream id, its
//! transport, the ring geometry and credit, the fallback when shared memory
//! fails) and asks a [`PortMaker`] for the descriptors; the broker's maker
//! ([`crate::ports::Ports`]) creates socket pairs and sealed memfds, a test
//! or a fuzz target hands out inert descriptors.

use std::io;
use std::os::fd::OwnedFd;
use std::time::Instant;

use shmbus::credit::CreditSpec;
use shmbus::frame::{StreamId, StreamMode, Transport};

/// What port to make for one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortSpec {
    /// The stream it is for.
    pub stream: StreamId,
    /// Its mode: one direction per entry of [`StreamMode::directions`].
    pub mode: StreamMode,
    /// Shared memory (a link socket pair and a ring per direction) or the
    /// socket fallback (a link socket pair per direction).
    pub transport: Transport,
    /// Data bytes of each ring; on the socket transport it sizes the
    /// socket buffers.
    pub ring_size: u32,
    /// The stream's credit: a ring header carries its high-water mark.
    pub credit: CreditSpec,
}

/// The descriptors of a stream port, in the order stream-open lists them:
/// for each direction its link socket and, on shared memory, its memfd.
#[derive(Debug)]
pub struct PortFds {
    /// For the caller.
    pub caller: Vec<OwnedFd>,
    /// For the service.
    pub service: Vec<OwnedFd>,
}

/// Makes stream ports for the router. Called on the call path, once per
/// streaming call (twice when shared memory fails and the socket is tried).
pub trait PortMaker {
    /// The descriptors of the port `spec` describes. `now` is the time of
    /// the frame that asked for it. An error on shared memory makes the
    /// router fall back to the socket (or refuse the call if the caller
    /// required shared memory); on the socket it refuses the call.
    fn make(&mut self, spec: PortSpec, now: Instant) -> io::Result<PortFds>;
}
