//! `shmbusctl`: serve files, stream them, and look inside the broker.

use std::fs::File;
use std::io::{self, BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::thread;

use clap::{Parser, Subcommand, ValueEnum};
use shmbus_client::{
    Connection, CreditSpec, Error, ErrorCode, IncomingCall, MethodSpec, StreamMode,
    TransportPreference,
};

/// The method `serve` registers and `cat` calls.
const METHOD: &str = "read";
/// The unary method answering the served size (when known).
const SIZE_METHOD: &str = "size";

#[derive(Parser)]
#[command(
    name = "shmbusctl",
    version,
    about = "Serve and stream files over shmbus, and inspect the broker",
    after_help = "Exit status: 0 success, 1 error, 3 broker unreachable, 4 no such service, \
                  5 stream error, 6 cancelled, 7 peer gone."
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
    /// Without FILE or with `-`, serves standard input to one caller, then exits.
    Serve {
        /// Service name.
        name: String,
        /// File to serve.
        file: Option<PathBuf>,
    },
    /// Call service NAME and write its stream to standard output.
    Cat {
        /// Service name.
        name: String,
        /// How to carry the stream.
        #[arg(long, value_enum, default_value = "auto")]
        transport: TransportArg,
        /// Collect the whole stream as one result (batch RPC), then write it.
        #[arg(long)]
        batch: bool,
        /// Show bytes and rate on stderr (a progress bar when the size is known).
        #[arg(long)]
        progress: bool,
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

fn exit_code(e: &Error) -> u8 {
    match e {
        Error::BrokerUnreachable { .. } => 3,
        Error::Remote(r) if r.code == ErrorCode::NoSuchService => 4,
        Error::Remote(r) if r.code == ErrorCode::Aborted => 6,
        Error::Remote(r) if r.code == ErrorCode::PeerGone => 7,
        Error::Stream(_) => 5,
        Error::Cancelled => 6,
        Error::PeerGone(_) | Error::BrokerGone => 7,
        _ => 1,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let socket = cli
        .socket
        .unwrap_or_else(shmbus_client::default_socket_path);
    let result = match cli.command {
        Command::Serve { name, file } => serve(&socket, &name, file),
        Command::Cat {
            name,
            transport,
            batch,
            progress,
        } => cat(&socket, &name, transport.into(), batch, progress),
        Command::List { json } => list(&socket, json),
        Command::Status { json } => status(&socket, json),
        Command::Monitor => monitor(&socket),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shmbusctl: {e}");
            ExitCode::from(exit_code(&e))
        }
    }
}

fn stream_reader(mut reader: impl Read, call: &mut IncomingCall) -> shmbus_client::Result<()> {
    let tx = call
        .sender()
        .ok_or_else(|| Error::Protocol("download call without a sending half".into()))?;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = tx.fail(&format!("reading the served file failed: {e}"));
                return Err(e.into());
            }
        };
        tx.write_all(&buf[..n]).map_err(Error::Io)?;
    }
    tx.finish()
}

fn serve_one(mut call: IncomingCall, file: Option<&Path>, stdin: bool) {
    let result = if call.method() == SIZE_METHOD {
        match file.map(std::fs::metadata) {
            Some(Ok(m)) => call.reply(m.len().to_le_bytes().to_vec()),
            Some(Err(e)) => call.fail(&e.to_string()),
            None => call.fail("size unknown: serving standard input"),
        }
    } else if call.method() != METHOD {
        let msg = format!("unknown method {}", call.method());
        call.fail(&msg)
    } else if stdin {
        let r = stream_reader(io::stdin().lock(), &mut call);
        finish(call, r)
    } else {
        let path = file.expect("file given");
        match File::open(path) {
            Ok(f) => {
                let r = stream_reader(f, &mut call);
                finish(call, r)
            }
            Err(e) => call.fail(&format!("cannot open {}: {e}", path.display())),
        }
    };
    if let Err(e) = result {
        eprintln!("shmbusctl: call ended: {e}");
    }
}

fn finish(call: IncomingCall, r: shmbus_client::Result<()>) -> shmbus_client::Result<()> {
    match r {
        Ok(()) => call.reply(Vec::new()),
        Err(e) => call.fail(&e.to_string()),
    }
}

fn serve(socket: &Path, name: &str, file: Option<PathBuf>) -> shmbus_client::Result<()> {
    let file = file.filter(|f| f.as_os_str() != "-");
    if let Some(f) = &file {
        File::open(f)
            .map_err(|e| Error::Io(io::Error::new(e.kind(), format!("{}: {e}", f.display()))))?;
    }
    let conn = Connection::connect(socket)?;
    let service = conn.register(
        name,
        &[
            MethodSpec::new(METHOD, StreamMode::Download),
            MethodSpec::new(SIZE_METHOD, StreamMode::Unary),
        ],
    )?;
    match file {
        None => {
            while let Some(call) = service.next()? {
                let streams = call.method() == METHOD;
                serve_one(call, None, true);
                if streams {
                    break;
                }
            }
            Ok(())
        }
        Some(path) => {
            let mut running = Vec::new();
            while let Some(call) = service.next()? {
                let path = path.clone();
                running.push(thread::spawn(move || serve_one(call, Some(&path), false)));
                running.retain(|h| !h.is_finished());
            }
            // The broker is gone: streams in flight finish over their ports.
            for h in running {
                let _ = h.join();
            }
            Err(Error::BrokerGone)
        }
    }
}

fn cat(
    socket: &Path,
    name: &str,
    transport: TransportPreference,
    batch: bool,
    progress: bool,
) -> shmbus_client::Result<()> {
    let conn = Connection::connect(socket)?;
    let mut meter = progress.then(|| {
        let size = conn
            .call(name, SIZE_METHOD)
            .unary()
            .ok()
            .and_then(|b| b.try_into().ok().map(u64::from_le_bytes));
        Progress::new(size)
    });
    let builder = conn
        .call(name, METHOD)
        .transport(transport)
        .credit(CreditSpec::bytes(1 << 20));
    let stdout = io::stdout();
    let mut out = stdout.lock();
    if batch {
        for item in builder.collect_bytes()? {
            out.write_all(&item)?;
            if let Some(m) = meter.as_mut() {
                m.add(item.len());
            }
        }
        out.flush()?;
        if let Some(m) = meter.as_mut() {
            m.done();
        }
        return Ok(());
    }
    let mut call = builder.mode(StreamMode::Download).start()?;
    let rx = call
        .receiver()
        .ok_or_else(|| Error::Protocol("download call without a receiving half".into()))?;
    loop {
        let buf = rx.fill_buf().map_err(unwrap_io)?;
        if buf.is_empty() {
            break;
        }
        let n = buf.len();
        out.write_all(buf)?;
        rx.consume(n);
        if let Some(m) = meter.as_mut() {
            m.add(n);
        }
    }
    out.flush()?;
    call.finish()?;
    if let Some(m) = meter.as_mut() {
        m.done();
    }
    Ok(())
}

/// Bytes and rate on stderr; a bar when the total is known and stderr is a terminal.
struct Progress {
    total: Option<u64>,
    bytes: u64,
    start: std::time::Instant,
    last: std::time::Instant,
    tty: bool,
}

impl Progress {
    fn new(total: Option<u64>) -> Self {
        let now = std::time::Instant::now();
        Progress {
            total,
            bytes: 0,
            start: now,
            last: now,
            tty: io::IsTerminal::is_terminal(&io::stderr()),
        }
    }

    fn add(&mut self, n: usize) {
        self.bytes += n as u64;
        let every = if self.tty { 100 } else { 1000 };
        if self.last.elapsed() >= std::time::Duration::from_millis(every) {
            self.last = std::time::Instant::now();
            self.show(false);
        }
    }

    fn line(&self) -> String {
        let secs = self.start.elapsed().as_secs_f64().max(1e-9);
        let rate = format!("{}/s", human(self.bytes as f64 / secs));
        match self.total {
            Some(t) if t > 0 => {
                let frac = (self.bytes as f64 / t as f64).min(1.0);
                let filled = (frac * 30.0).round() as usize;
                format!(
                    "[{}{}] {:>3.0}% {} / {}  {rate}",
                    "#".repeat(filled),
                    ".".repeat(30 - filled),
                    frac * 100.0,
                    human(self.bytes as f64),
                    human(t as f64)
                )
            }
            _ => format!("{}  {rate}", human(self.bytes as f64)),
        }
    }

    fn show(&self, last: bool) {
        let mut err = io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[K{}", self.line());
            if last {
                let _ = writeln!(err);
            }
        } else {
            let _ = writeln!(err, "{}", self.line());
        }
        let _ = err.flush();
    }

    fn done(&mut self) {
        self.show(true);
    }
}

fn human(bytes: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{v:.0} {}", UNITS[u])
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn status(socket: &Path, json: bool) -> shmbus_client::Result<()> {
    let conn = Connection::connect(socket)?;
    let s = conn.status()?;
    if json {
        let v = serde_json::json!({
            "version": s.version, "uptime_ms": s.uptime_ms, "connections": s.connections,
            "services": s.services, "streams": s.streams, "calls_total": s.calls_total,
            "shm_streams_total": s.shm_streams_total, "socket_streams_total": s.socket_streams_total,
            "bytes_moved": s.bytes_moved,
        });
        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
        return Ok(());
    }
    let up = s.uptime_ms / 1000;
    println!("shmbusd {}", s.version);
    println!(
        "uptime       {}h {:02}m {:02}s",
        up / 3600,
        up / 60 % 60,
        up % 60
    );
    println!("connections  {}", s.connections);
    println!("services     {}", s.services);
    println!(
        "streams      {} live; {} opened over shm, {} over socket",
        s.streams, s.shm_streams_total, s.socket_streams_total
    );
    println!("calls        {}", s.calls_total);
    println!(
        "bytes moved  {} ({})",
        s.bytes_moved,
        human(s.bytes_moved as f64)
    );
    Ok(())
}

fn monitor(socket: &Path) -> shmbus_client::Result<()> {
    use shmbus_client::MonitorKind;
    let conn = Connection::connect(socket)?;
    let events = conn.monitor()?;
    let mut out = io::stdout();
    for ev in events {
        let what = match &ev.kind {
            MonitorKind::Open {
                transport,
                fallback,
            } => match fallback {
                None => format!("open transport={}", transport_name(*transport)),
                Some(why) => format!(
                    "open transport={} fallback={why:?}",
                    transport_name(*transport)
                ),
            },
            MonitorKind::End => "end".to_string(),
            MonitorKind::Error(e) => format!("error code={:?} message={:?}", e.code, e.message),
            MonitorKind::Cancel => "cancel".to_string(),
        };
        writeln!(
            out,
            "stream={} service={} method={} caller_pid={} bytes={} {what}",
            ev.stream, ev.service, ev.method, ev.caller_pid, ev.bytes
        )?;
        out.flush()?;
    }
    Err(Error::BrokerGone)
}

/// Recovers the stream error carried inside an `io::Error`.
fn unwrap_io(e: io::Error) -> Error {
    match e.get_ref().and_then(|inner| inner.downcast_ref::<Error>()) {
        Some(_) => match e.into_inner().map(|b| b.downcast::<Error>()) {
            Some(Ok(err)) => *err,
            _ => Error::Protocol("stream failed".into()),
        },
        None => Error::Io(e),
    }
}

fn list(socket: &Path, json: bool) -> shmbus_client::Result<()> {
    let conn = Connection::connect(socket)?;
    let snap = conn.list()?;
    if json {
        let v = serde_json::json!({
            "connections": snap.connections,
            "services": snap.services.iter().map(|s| serde_json::json!({
                "name": s.name, "pid": s.pid, "uid": s.uid,
                "methods": s.methods.iter().map(|m| serde_json::json!({"name": m.name, "mode": format!("{:?}", m.mode)})).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "streams": snap.streams.iter().map(|s| serde_json::json!({
                "id": s.stream, "service": s.service, "method": s.method,
                "transport": transport_name(s.transport), "state": s.state,
                "bytes": s.bytes, "credit_outstanding": s.credit_outstanding,
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
        return Ok(());
    }
    println!("SERVICES ({})", snap.services.len());
    println!("{:<24} {:>8} {:>6}  METHODS", "NAME", "PID", "UID");
    for s in &snap.services {
        let methods: Vec<String> = s
            .methods
            .iter()
            .map(|m| format!("{}:{:?}", m.name, m.mode))
            .collect();
        println!(
            "{:<24} {:>8} {:>6}  {}",
            s.name,
            s.pid,
            s.uid,
            methods.join(" ")
        );
    }
    println!();
    println!("STREAMS ({})", snap.streams.len());
    println!(
        "{:>6} {:<24} {:<9} {:<8} {:>14} {:>10}",
        "ID", "SERVICE.METHOD", "TRANSPORT", "STATE", "BYTES", "CREDIT"
    );
    for s in &snap.streams {
        println!(
            "{:>6} {:<24} {:<9} {:<8} {:>14} {:>10}",
            s.stream,
            format!("{}.{}", s.service, s.method),
            transport_name(s.transport),
            s.state,
            s.bytes,
            s.credit_outstanding
        );
    }
    Ok(())
}

fn transport_name(t: shmbus_client::Transport) -> &'static str {
    match t {
        shmbus_client::Transport::SharedMemory => "shm",
        shmbus_client::Transport::Socket => "socket",
    }
}
