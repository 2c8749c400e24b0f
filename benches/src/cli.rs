//! Command line: the user's options, and the hidden flags a re-executed
//! peer process gets.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

use crate::job::{Fault, Scenario, Side, Transport};

const AFTER_HELP: &str = "\
Every scenario runs between separate processes: a private broker (this binary
re-run as `--role broker`, unless --socket names a running one), a shmbus
service process, and per measurement a caller process or, for the baselines,
two peer processes sharing a socket pair, pipes or a memfd ring. Every
consumer checksums every byte it receives and the run fails on a mismatch.

Each measurement is repeated (--repeat) interleaved with its baselines
(A B C D A B C D ...) and reported as the median [min, max]. A ratio ×uds,
×pipe, ×bare_ring is shmbus's figure divided by the baseline's, computed per
round (runs of the same time window) and reported as the median of those:
for throughput above 1 means shmbus is faster, for latency and setup below 1
means shmbus is faster, for idle it compares CPU time.

--json writes a JSON array, one record per line, one record per measured
point (scenario, transport, size ...): {\"scenario\", \"transport\", \"size\",
\"bytes_per_sec\", \"items_per_sec\", \"p50_ns\", \"p99_ns\", \"p999_ns\",
\"ratio_vs\": {\"uds\", \"pipe\", \"bare_ring\"}, ...}; fields that do not apply
are absent. Extra fields: kind (bytes|typed), wait (blocking|spin), streams,
runs, min/max of the headline figure, CPU and memory figures. The first
record describes the machine at the start: {\"machine\", \"cpus\",
\"load_1m\", \"runnable_others\", \"busy\", \"warning\", \"note\"}.

At the start the harness warns on stderr when the machine is busy (other
tasks runnable beside it): the figures would be unreliable. A 1-minute load
average of half the CPUs or more with nothing else runnable (work that has
just ended) gets a note instead. Every run ends with one line,
`summary: ...`, of the headline figures of the scenarios that ran.

--sizes (1 B to 16 MiB) replaces the write sizes of throughput (bytes
streams); typed items and latency messages then use the listed sizes up to
64 KiB and 1 MiB.

Micro benchmarks of the ring, frames and credit: cargo bench -p shmbus-bench";

/// `shmbus-bench`: the shmbus benchmark harness.
#[derive(Parser, Debug)]
#[command(
    name = "shmbus-bench",
    version,
    about = "Benchmark shmbus (shared memory and socket fallback) against a Unix socket pair, a pipe and a bare shared-memory ring, between separate processes",
    after_help = AFTER_HELP
)]
pub struct Cli {
    /// A short run (under a minute): fewer repetitions, shorter measurements.
    #[arg(long)]
    pub quick: bool,
    /// Seconds per measurement [default: 1, --quick: 0.2].
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub duration: Option<f64>,
    /// Repetitions of each measurement [default: 5, --quick: 2].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100))]
    pub repeat: Option<u32>,
    /// Scenarios to run, comma-separated [default: every performance
    /// scenario]. The fault scenarios crash, soak and flood run only when named.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub scenario: Vec<Scenario>,
    /// shmbus's ring data bytes per stream, 256K to 64M (bytes credit is
    /// half of it) [default: fanout 1M; throughput: per write size, see
    /// its notes]. Throughput skips write sizes a record of this ring
    /// cannot carry.
    #[arg(long, value_name = "SIZE", value_parser = parse_ring)]
    pub ring: Option<u32>,
    /// setup: microseconds of pause before each call (and each baseline
    /// connection), so that calls start from idle CPUs [default: 0,
    /// back to back].
    #[arg(long, value_name = "MICROS", value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub gap: Option<u32>,
    /// crash: kill trials [default: 1000, --quick: 100].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub trials: Option<u32>,
    /// soak: seconds to run [default: 600, --quick: 20].
    #[arg(long, value_name = "SECS", value_parser = parse_soak)]
    pub soak: Option<f64>,
    /// flood: calls measured per phase [default: 400, --quick: 100].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(10..=100_000))]
    pub calls: Option<u32>,
    /// Transports and baselines to run, comma-separated [default: all].
    #[arg(long, value_enum, value_delimiter = ',')]
    pub transports: Vec<Transport>,
    /// shmbus's APIs to measure, comma-separated [default: sync,async]:
    /// async runs the throughput scenario's shm rows at 64 KiB and 1 MiB
    /// (bytes) and 64 B (typed) again with the tokio API on both peers.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub api: Vec<Api>,
    /// Write sizes, comma-separated, with K/M suffixes [default: 64,4K,64K,1M,4M].
    #[arg(long, value_delimiter = ',', value_parser = parse_size)]
    pub sizes: Vec<usize>,
    /// blob: blob sizes, comma-separated, with K/M/G suffixes, 0 to 4G
    /// [default: 64K,1M,16M,256M,1G].
    #[arg(long, value_delimiter = ',', value_parser = parse_blob_size)]
    pub blob_sizes: Vec<usize>,
    /// Concurrent streams for fanout, comma-separated [default: 1,8,64,256].
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub streams: Vec<u32>,
    /// Seconds an idle stream stays open [default: 2, --quick: 0.5].
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub idle: Option<f64>,
    /// Use the running broker at PATH instead of a private one.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// bridge: the `shmbus-bridge` binary [default: beside this one]. A
    /// full run skips the scenario when there is none.
    #[arg(long, value_name = "PATH")]
    pub bridge: Option<PathBuf>,
    /// Write the results as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Draw throughput against write size as SVG to FILE.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Internal: run as a peer process.
    #[arg(long, hide = true, value_enum)]
    pub role: Option<Role>,
    /// Internal: the peer's job, as JSON.
    #[arg(long, hide = true)]
    pub job: Option<String>,
    /// Internal: the baseline side.
    #[arg(long, hide = true, value_enum)]
    pub side: Option<Side>,
    /// Internal: inherited descriptors.
    #[arg(long, hide = true, value_delimiter = ',')]
    pub fds: Vec<i32>,
    /// Internal: the service name.
    #[arg(long, hide = true)]
    pub service: Option<String>,
}

/// What a re-executed process does.
#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
pub enum Role {
    /// The private broker.
    Broker,
    /// The shmbus bench service.
    Service,
    /// A shmbus caller running one job.
    Client,
    /// One side of a baseline job.
    Baseline,
    /// A peer of a fault scenario.
    Fault,
}

/// What the fault scenarios are told.
#[derive(Debug, Clone)]
pub struct FaultOptions {
    /// Kill trials of `crash`.
    pub trials: usize,
    /// Seconds of `soak`.
    pub soak_secs: f64,
    /// Calls per phase of `flood`.
    pub calls: usize,
    /// Quiet/flood phase pairs of `flood`.
    pub repeat: usize,
}

/// Ring data bytes per stream of fanout (shmbus and bare ring) unless
/// `--ring` says otherwise; idle's streams use it too.
pub const FANOUT_RING: u32 = 1 << 20;

/// The user's options with defaults applied.
#[derive(Debug, Clone)]
pub struct Options {
    /// Scenarios, in run order.
    pub scenarios: Vec<Scenario>,
    /// Transports and baselines to run.
    pub transports: Vec<Transport>,
    /// Throughput write sizes (bytes streams).
    pub sizes: Vec<usize>,
    /// Typed item sizes.
    pub typed_sizes: Vec<usize>,
    /// Latency message sizes.
    pub latency_sizes: Vec<usize>,
    /// Blob sizes.
    pub blob_sizes: Vec<usize>,
    /// Fan-out stream counts.
    pub streams: Vec<usize>,
    /// Seconds per measurement.
    pub duration: f64,
    /// Seconds an idle stream stays open.
    pub idle: f64,
    /// Repetitions.
    pub repeat: usize,
    pub faults: Vec<Fault>,
    pub fault: FaultOptions,
    pub fanout_ring: u32,
    /// throughput: shmbus's ring for every write size, when given.
    pub throughput_ring: Option<u32>,
    /// setup: pause before each call, in nanoseconds.
    pub setup_gap_ns: u64,
    /// Also measure the tokio API.
    pub asynchronous: bool,
    /// bridge: the `shmbus-bridge` binary.
    pub bridge: PathBuf,
    /// bridge: named on the command line (a missing binary is an error
    /// then, not a skip).
    pub bridge_named: bool,
}

/// Which of shmbus's APIs a measurement uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Api {
    /// The blocking API.
    Sync,
    /// The tokio API (feature `tokio`), on a current-thread runtime.
    Async,
}

impl Options {
    /// Applies the defaults (and `--quick`'s) to the command line.
    pub fn from_cli(cli: &Cli) -> Options {
        let scenarios = if cli.scenario.is_empty() {
            Scenario::ALL.to_vec()
        } else {
            Scenario::ALL
                .into_iter()
                .filter(|s| cli.scenario.contains(s))
                .collect()
        };
        let all = [
            Transport::Shm,
            Transport::Socket,
            Transport::Uds,
            Transport::Pipe,
            Transport::BareRing,
            Transport::Bridge,
            Transport::Tcp,
        ];
        let transports = if cli.transports.is_empty() {
            all.to_vec()
        } else {
            all.into_iter()
                .filter(|t| cli.transports.contains(t))
                .collect()
        };
        let (sizes, typed_sizes, latency_sizes) = if cli.sizes.is_empty() {
            (
                vec![64, 4 << 10, 64 << 10, 1 << 20, 4 << 20],
                vec![64, 4 << 10, 64 << 10],
                vec![64, 4 << 10],
            )
        } else {
            let mut s = cli.sizes.clone();
            s.sort_unstable();
            s.dedup();
            let upto = |max: usize| s.iter().copied().filter(|&x| x <= max).collect();
            (s.clone(), upto(64 << 10), upto(1 << 20))
        };
        let streams = if cli.streams.is_empty() {
            vec![1, 8, 64, 256]
        } else {
            cli.streams.iter().map(|&n| n as usize).collect()
        };
        Options {
            scenarios,
            transports,
            sizes,
            typed_sizes,
            latency_sizes,
            blob_sizes: if cli.blob_sizes.is_empty() {
                BLOB_SIZES.to_vec()
            } else {
                cli.blob_sizes.clone()
            },
            streams,
            duration: cli.duration.unwrap_or(if cli.quick { 0.2 } else { 1.0 }),
            idle: cli.idle.unwrap_or(if cli.quick { 0.5 } else { 2.0 }),
            repeat: cli
                .repeat
                .map_or(if cli.quick { 2 } else { 5 }, |r| r as usize),
            faults: cli.scenario.iter().filter_map(|s| s.fault()).collect(),
            fanout_ring: cli.ring.unwrap_or(FANOUT_RING),
            throughput_ring: cli.ring,
            setup_gap_ns: cli.gap.map_or(0, |us| u64::from(us) * 1000),
            asynchronous: cli.api.is_empty() || cli.api.contains(&Api::Async),
            bridge: cli.bridge.clone().unwrap_or_else(|| {
                std::env::current_exe()
                    .ok()
                    .and_then(|e| Some(e.parent()?.join("shmbus-bridge")))
                    .unwrap_or_else(|| "shmbus-bridge".into())
            }),
            bridge_named: cli.scenario.contains(&Scenario::Bridge),
            fault: FaultOptions {
                trials: cli
                    .trials
                    .map_or(if cli.quick { 100 } else { 1000 }, |t| t as usize),
                soak_secs: cli.soak.unwrap_or(if cli.quick { 20.0 } else { 600.0 }),
                calls: cli
                    .calls
                    .map_or(if cli.quick { 100 } else { 400 }, |c| c as usize),
                repeat: cli
                    .repeat
                    .map_or(if cli.quick { 2 } else { 5 }, |r| r as usize),
            },
        }
    }

    /// Whether a transport or baseline takes part.
    pub fn has(&self, t: Transport) -> bool {
        self.transports.contains(&t)
    }
}

/// Blob sizes measured unless `--blob-sizes` says otherwise: 64 KiB to 1 GiB.
pub const BLOB_SIZES: [usize; 5] = [64 << 10, 1 << 20, 16 << 20, 256 << 20, 1 << 30];

/// A byte size with an optional K, M or G suffix (binary), unchecked.
fn parse_bytes(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 1usize << 10),
        Some((i, 'M' | 'm')) => (&s[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    let n: usize = num.trim().parse().map_err(|e| format!("{s}: {e}"))?;
    n.checked_mul(mult).ok_or_else(|| format!("{s}: too large"))
}

/// Parses a write size: 1 byte to 16 MiB, with an optional K, M or G suffix.
pub fn parse_size(s: &str) -> Result<usize, String> {
    match parse_bytes(s) {
        Ok(v) if (1..=16 << 20).contains(&v) => Ok(v),
        _ => Err(format!("{s}: sizes go from 1 byte to 16 MiB")),
    }
}

/// Parses a blob size: 0 to 4 GiB.
fn parse_blob_size(s: &str) -> Result<usize, String> {
    match parse_bytes(s) {
        Ok(v) if v <= 4 << 30 => Ok(v),
        _ => Err(format!("{s}: blob sizes go from 0 to 4G")),
    }
}

fn parse_ring(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let (num, shift) = match t.strip_suffix(['M', 'm']) {
        Some(n) => (n, 20),
        None => (t.strip_suffix(['K', 'k']).unwrap_or(t), 10),
    };
    let v = num
        .trim()
        .parse::<u32>()
        .ok()
        .and_then(|n| n.checked_shl(shift));
    match v {
        Some(v) if v.is_power_of_two() && (256 << 10..=64 << 20).contains(&v) => Ok(v),
        _ => Err(format!("{s}: a power of two from 256K to 64M")),
    }
}

fn parse_soak(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 7.0 * 86400.0 => Ok(v),
        _ => Err(format!("{s}: a number of seconds up to a week")),
    }
}

fn parse_secs(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 3600.0 => Ok(v),
        _ => Err(format!("{s}: a number of seconds between 0 and 3600")),
    }
}

/// Formats a byte size the way `--sizes` reads it back.
pub fn human_size(n: usize) -> String {
    match n {
        n if n >= 1 << 30 && n % (1 << 30) == 0 => format!("{} GiB", n >> 30),
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{} KiB", n >> 10),
        n => format!("{n} B"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_suffixes() {
        assert_eq!(parse_size("64").unwrap(), 64);
        assert_eq!(parse_size("4K").unwrap(), 4096);
        assert_eq!(parse_size("1m").unwrap(), 1 << 20);
        assert!(parse_size("0").is_err());
        assert!(parse_size("1G").is_err());
        assert!(parse_size("16M").is_ok() && parse_size("17M").is_err());
        assert_eq!(human_size(4 << 20), "4 MiB");
        assert_eq!(human_size(100), "100 B");
    }

    #[test]
    fn quick_shortens_everything() {
        let cli = Cli::parse_from(["shmbus-bench", "--quick", "--sizes", "64K,64"]);
        let o = Options::from_cli(&cli);
        assert_eq!((o.repeat, o.duration), (2, 0.2));
        assert_eq!(o.sizes, vec![64, 64 << 10]);
        assert_eq!(o.latency_sizes, vec![64, 64 << 10]);
        assert_eq!(o.scenarios, Scenario::ALL);
        assert_eq!(o.blob_sizes, BLOB_SIZES);
    }

    #[test]
    fn blob_sizes_go_from_zero_to_four_gibibytes() {
        let cli = Cli::parse_from(["shmbus-bench", "--blob-sizes", "0,64K,256M,4G"]);
        let o = Options::from_cli(&cli);
        assert_eq!(o.blob_sizes, vec![0, 64 << 10, 256 << 20, 4 << 30]);
        assert!(Cli::try_parse_from(["shmbus-bench", "--blob-sizes", "5G"]).is_err());
    }
}
