//! What the orchestrator asks a peer process to do ([`Job`]) and what the
//! peer reports back ([`Outcome`]), both as JSON: the job in an argument,
//! the outcome as the last line of the peer's standard output.

use serde::{Deserialize, Serialize};
use shmbus::credit::CreditSpec;

/// A benchmark scenario.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    /// Streams of bytes and of typed items, one direction.
    Throughput,
    /// Round trips through an echo.
    Latency,
    /// Call to first item received.
    Setup,
    /// Many concurrent streams through one broker.
    Fanout,
    /// An open stream with nothing flowing.
    Idle,
    /// Sealed blobs handed over whole, against the same bytes streamed.
    Blob,
    /// Calls across two brokers linked by `shmbus-bridge` over Zenoh on
    /// TCP loopback, against a plain TCP loopback stream.
    Bridge,
    /// Random kills: the survivor's error delay over many trials (faults;
    /// not in a default run).
    Crash,
    /// Streams, kills and malformed traffic for a while (faults).
    Soak,
    /// One user's flood against another's setup latency (faults).
    Flood,
}

impl Scenario {
    /// Every scenario, in the order a full run takes them.
    pub const ALL: [Scenario; 7] = [
        Scenario::Throughput,
        Scenario::Latency,
        Scenario::Setup,
        Scenario::Fanout,
        Scenario::Idle,
        Scenario::Blob,
        Scenario::Bridge,
    ];

    /// The fault scenario this is, if it is one.
    pub fn fault(self) -> Option<Fault> {
        match self {
            Scenario::Crash => Some(Fault::Crash),
            Scenario::Soak => Some(Fault::Soak),
            Scenario::Flood => Some(Fault::Flood),
            _ => None,
        }
    }

    /// The name used on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Throughput => "throughput",
            Scenario::Latency => "latency",
            Scenario::Setup => "setup",
            Scenario::Fanout => "fanout",
            Scenario::Idle => "idle",
            Scenario::Blob => "blob",
            Scenario::Bridge => "bridge",
            Scenario::Crash => "crash",
            Scenario::Soak => "soak",
            Scenario::Flood => "flood",
        }
    }
}

/// Which fault scenario.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Fault {
    /// Random kills, distribution of the survivor's error delay.
    Crash,
    /// Everything at once, for a while.
    Soak,
    /// One user's flood against another's setup latency.
    Flood,
}

/// How bytes move: through shmbus (shared memory or its socket fallback) or
/// a baseline with no protocol on top.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug, Hash, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// shmbus over its shared-memory port.
    Shm,
    /// shmbus over its socket fallback.
    Socket,
    /// shmbus across two brokers and the bridges between them.
    Bridge,
    /// A raw Unix stream socket pair.
    Uds,
    /// A pipe (a pair of pipes for round trips).
    Pipe,
    /// A bare memfd ring between two processes, spin-waiting.
    #[value(name = "bare_ring")]
    BareRing,
    /// A TCP connection on 127.0.0.1.
    Tcp,
}

impl Transport {
    /// The baselines, in report order.
    pub const BASELINES: [Transport; 3] = [Transport::Uds, Transport::Pipe, Transport::BareRing];

    /// The name used on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Shm => "shm",
            Transport::Socket => "socket",
            Transport::Bridge => "bridge",
            Transport::Uds => "uds",
            Transport::Pipe => "pipe",
            Transport::BareRing => "bare_ring",
            Transport::Tcp => "tcp",
        }
    }

    /// True for shmbus itself, false for a baseline.
    pub fn is_bus(self) -> bool {
        matches!(self, Transport::Shm | Transport::Socket | Transport::Bridge)
    }
}

/// Which side of a baseline job a process plays.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Side {
    /// The measuring side.
    A,
    /// Its peer.
    B,
}

/// How a shmbus stream half waits ([`shmbus_client::WaitPolicy`]).
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug, Default)]
#[serde(rename_all = "snake_case")]
pub enum Wait {
    /// `WaitPolicy::BLOCKING`: spin a few microseconds, then sleep.
    #[default]
    Blocking,
    /// `WaitPolicy::SPIN`: spin up to a millisecond before sleeping.
    Spin,
}

impl Wait {
    /// The client library's policy.
    pub fn policy(self) -> shmbus_client::WaitPolicy {
        match self {
            Wait::Blocking => shmbus_client::WaitPolicy::BLOCKING,
            Wait::Spin => shmbus_client::WaitPolicy::SPIN,
        }
    }

    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Wait::Blocking => "blocking",
            Wait::Spin => "spin",
        }
    }
}

/// One measurement, as the orchestrator describes it to a peer.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Job {
    /// Which scenario.
    pub scenario: Scenario,
    /// Which transport.
    pub transport: Transport,
    /// Bytes per write, per item or per round trip.
    pub size: usize,
    /// Typed items (postcard, `Sender::feed`/`send`) rather than bytes.
    pub typed: bool,
    /// How shmbus stream halves wait.
    pub wait: Wait,
    /// Concurrent streams (fan-out); 1 otherwise.
    pub streams: usize,
    /// Ring data bytes (shmbus's per-call ring, or the bare ring).
    pub ring: u32,
    /// shmbus credit for the stream.
    pub credit: CreditSpec,
    /// Socket buffer size asked for on the Unix socket baseline.
    pub sock_buf: usize,
    /// How long producers write, latency loops run or streams stay idle.
    pub duration_ns: u64,
    /// When producers start, on [`crate::os::mono_ns`]'s clock.
    pub start_at: u64,
    /// The shmbus service to call.
    pub service: String,
    /// The broker's process, for CPU and memory figures.
    pub broker_pid: Option<u32>,
    /// Setup: pause before each call or connection, in nanoseconds.
    #[serde(default)]
    pub gap_ns: u64,
    /// Bare ring: publish whole writes only (after each write, never part
    /// of one), and release them whole, as shmbus publishes and releases
    /// whole items.
    #[serde(default)]
    pub whole_writes: bool,
    /// shmbus bytes with a copy on each side, as typed items have: the
    /// producer fills its own buffer and sends it (`send_bytes`), the
    /// consumer reads each item into its own buffer (`io::Read`).
    #[serde(default)]
    pub copied: bool,
    /// shmbus through its tokio API on both peers (a current-thread
    /// runtime each), rather than the blocking one.
    #[serde(default)]
    pub asynchronous: bool,
    /// Blob: hand the bytes over as one sealed blob (else stream them).
    #[serde(default)]
    pub blob: bool,
}

/// What a peer measured. Absent fields do not apply to the job.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Outcome {
    /// Payload bytes received.
    pub bytes: u64,
    /// Items (writes, round trips, calls) completed.
    pub items: u64,
    /// Seconds the measurement took (from the common start to the end).
    pub secs: f64,
    /// Checksum of the bytes this side received (or sent, for a producer).
    pub checksum: u64,
    /// The other side's checksum and byte count, when it reported them here.
    pub peer: Option<(u64, u64)>,
    /// Latency percentiles p50, p99, p99.9 in nanoseconds.
    pub latency_ns: Option<[u64; 3]>,
    /// CPU this process used during the measurement window.
    pub cpu_ns: Option<u64>,
    /// CPU the other peer process used during the window.
    pub peer_cpu_ns: Option<u64>,
    /// CPU the broker used during the window.
    pub broker_cpu_ns: Option<u64>,
    /// The broker's resident memory with every stream open, in KiB.
    pub broker_rss_kib: Option<u64>,
    /// How long after the common start the stream was open (throughput,
    /// fan-out), when it was late: its figure then includes that delay.
    pub late_ns: Option<u64>,
    /// Blob: what sealing the blob cost its sender.
    #[serde(default)]
    pub seal_ns: Option<u64>,
}

impl Outcome {
    /// Prints this outcome as the peer's last line of output.
    pub fn emit(&self) {
        println!(
            "{}",
            serde_json::to_string(self).expect("outcome serializes")
        );
    }
}

impl Outcome {
    /// A timed loop's outcome (round trips, call setups): the bytes and
    /// checksum it received, its latencies, its duration from `begin`
    /// ([`crate::os::mono_ns`]), and what the peer says it sent.
    pub fn timed(
        got: &crate::checksum::Checksum,
        lat: &crate::stats::Latencies,
        begin: u64,
        peer: (u64, u64),
    ) -> Outcome {
        Outcome {
            bytes: got.len(),
            items: lat.count(),
            secs: (crate::os::mono_ns() - begin) as f64 / 1e9,
            checksum: got.value(),
            peer: Some(peer),
            latency_ns: Some(lat.percentiles()),
            ..Outcome::default()
        }
    }
}
