//! `shmbusctl`: serve files, stream them, and look inside the broker.

#![forbid(unsafe_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use shmbus_client::{Error, ErrorCode, TransportPreference};

mod cat;
mod inspect;
mod progress;
mod serve;
mod size;

/// The method `serve` registers and `cat` calls.
const METHOD: &str = "read";
/// The unary method answering the served size (when known).
const SIZE_METHOD: &str = "size";

#[derive(Parser)]
#[command(
    name = "shmbusctl",
    version,
    about = "Serve and stream files over shmbus, and inspect the broker",
    after_help = "Exit status: 0 success, 1 error, 2 usage (a bad argument, or a FILE that \
                  cannot be served), 3 broker unreachable, 4 no such service, 5 stream error, \
                  6 cancelled, 7 peer gone, 124 deadline exceeded (`cat --timeout`), 130 interrupted by SIGINT (143 by SIGTERM; `cat` \
                  cancels its call first), 141 standard output closed (no message, as a \
                  command stopped by SIGPIPE; `cat` cancels its call first)."
)]
struct Cli {
    /// Broker socket [default: $SHMBUS_SOCKET, else $XDG_RUNTIME_DIR/shmbus/bus.sock, else /run/shmbus/bus.sock].
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Register service NAME; each call streams FILE (opened afresh per call).
    /// FILE is a regular file, a FIFO or a device; a directory or a socket is
    /// refused (exit 2). Without FILE or with `-`, serves standard input to
    /// one caller, then exits.
    Serve {
        /// Service name.
        name: String,
        /// File to serve.
        file: Option<PathBuf>,
        /// Hand each caller the file whole as one sealed blob (a memfd
        /// filled inside the kernel and sealed), instead of streaming its
        /// bytes: the caller maps the same memory. FILE must be a regular
        /// file.
        #[arg(long)]
        blob: bool,
    },
    /// Call service NAME and write its stream to standard output.
    Cat {
        /// Service name.
        name: String,
        /// How to carry the stream.
        #[arg(long, value_enum, default_value = "auto")]
        transport: TransportArg,
        /// Collect the whole stream as one result (batch RPC), then write it.
        /// The whole stream is held in memory: a stream larger than
        /// --max-batch is cancelled and cat fails (exit 1).
        #[arg(long)]
        batch: bool,
        /// Largest stream --batch holds in memory, in bytes; suffixes K, M, G
        /// and T are powers of 1024 (64M, 1G).
        #[arg(
            long,
            value_name = "SIZE",
            default_value = "256M",
            value_parser = size::parse_size,
            requires = "batch"
        )]
        max_batch: u64,
        /// Show bytes and rate on stderr (a progress bar when the size is known).
        #[arg(long)]
        progress: bool,
        /// Give the call a deadline this long from now (seconds, or with a
        /// unit: 500ms, 30s, 2m): past it the broker cancels the call and
        /// cat fails (exit 124), after writing what arrived before it.
        #[arg(long, value_name = "DURATION", value_parser = size::parse_duration)]
        timeout: Option<std::time::Duration>,
    },
    /// Broker version, uptime, connections, services, streams, bytes moved.
    Status {
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Live stream events: open (with transport, and why not shared memory),
    /// end, error, cancel. Runs until interrupted.
    Monitor,
    /// Services and live streams.
    List {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum TransportArg {
    Auto,
    Shm,
    Socket,
}

impl From<TransportArg> for TransportPreference {
    fn from(t: TransportArg) -> Self {
        match t {
            TransportArg::Auto => TransportPreference::Auto,
            TransportArg::Shm => TransportPreference::SharedMemory,
            TransportArg::Socket => TransportPreference::Socket,
        }
    }
}

/// Why a command failed, which decides its message and exit status.
#[derive(Debug)]
pub enum Failure {
    /// The bus said no, or a stream failed.
    Bus(Error),
    /// An argument is unusable (exit 2).
    Usage(String),
    /// Anything else (exit 1).
    Other(String),
    /// Stopped by this signal, after cancelling the call (exit 128 + signal).
    Interrupted(i32),
    /// Standard output closed (a reader such as `head` is gone); `cat` has
    /// cancelled its call. No message.
    StdoutClosed,
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Bus(e)
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::Bus(Error::Io(e))
    }
}

/// The process's exit status for an outcome of a command.
fn exit_code(f: &Failure) -> u8 {
    match f {
        Failure::Bus(e) => match e {
            Error::BrokerUnreachable { .. } => 3,
            Error::Remote(r) if r.code == ErrorCode::NoSuchService => 4,
            Error::Remote(r) if r.code == ErrorCode::Aborted => 6,
            Error::Remote(r) if r.code == ErrorCode::PeerGone => 7,
            Error::Stream(_) => 5,
            Error::Cancelled => 6,
            Error::PeerGone(_) | Error::BrokerGone => 7,
            Error::DeadlineExceeded => 124,
            _ => 1,
        },
        Failure::Usage(_) => 2,
        Failure::Other(_) => 1,
        Failure::Interrupted(sig) => (128 + sig).clamp(129, 255) as u8,
        Failure::StdoutClosed => 141,
    }
}

/// The one line printed for a failure, if any.
fn message(f: &Failure) -> Option<String> {
    match f {
        Failure::Bus(e) => Some(e.to_string()),
        Failure::Usage(m) | Failure::Other(m) => Some(m.clone()),
        Failure::Interrupted(sig) => Some(format!("interrupted by {}", signal_name(*sig))),
        Failure::StdoutClosed => None,
    }
}

fn signal_name(sig: i32) -> String {
    match sig {
        signal_hook::consts::SIGINT => "SIGINT".into(),
        signal_hook::consts::SIGTERM => "SIGTERM".into(),
        other => format!("signal {other}"),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let socket = cli
        .socket
        .unwrap_or_else(shmbus_client::default_socket_path);
    let result = match cli.command {
        Command::Serve { name, file, blob } => serve::serve(&socket, &name, file, blob),
        Command::Cat {
            name,
            transport,
            batch,
            max_batch,
            progress,
            timeout,
        } => cat::cat(
            &socket,
            &name,
            cat::Options {
                transport: transport.into(),
                batch: batch.then_some(max_batch),
                progress,
                timeout,
            },
        ),
        Command::List { json } => inspect::list(&socket, json),
        Command::Status { json } => inspect::status(&socket, json),
        Command::Monitor => inspect::monitor(&socket),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            if let Some(m) = message(&f) {
                // Nothing more to do when stderr is closed too.
                let _ = writeln!(std::io::stderr(), "shmbusctl: {m}");
            }
            ExitCode::from(exit_code(&f))
        }
    }
}
