//! `shmbus-bench`: the bundled benchmark harness (main-job form).
//!
//! Starts a private broker on a temporary socket (in this process), then runs
//! a producer and a consumer as two separate processes (this binary, re-run in
//! a role) that stream the chosen amount of bytes through the broker's port:
//! over shared memory, then over the socket fallback. The producer generates
//! every byte in place; the consumer reads every byte in place and folds it
//! into a checksum, which must equal the producer's.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use clap::{Parser, ValueEnum};
use shmbus_client::{Connection, CreditSpec, Error, MethodSpec, StreamMode, TransportPreference};

const SERVICE: &str = "bench";
const METHOD: &str = "bytes";
/// Bytes per write.
const WRITE: usize = 256 * 1024;

#[derive(Parser)]
#[command(
    name = "shmbus-bench",
    version,
    about = "Stream bytes between two processes through a private shmbus broker and report throughput"
)]
struct Cli {
    /// Bytes to stream per transport (suffixes K, M, G).
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    bytes: u64,
    /// Transports to run, in order.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "shm,socket")]
    transports: Vec<TransportArg>,
    /// Use a running broker instead of a private one.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Internal: run as a peer process.
    #[arg(long, hide = true, value_enum)]
    role: Option<Role>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TransportArg {
    Shm,
    Socket,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Role {
    Producer,
    Consumer,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&s[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .map(|n| n * mult)
        .map_err(|e| format!("{s}: {e}"))
}

/// Order-sensitive checksum over 8-byte words in four independent lanes.
#[derive(Default, Clone, Copy, PartialEq, Eq)]
struct Checksum {
    a: [u64; 4],
    b: [u64; 4],
    tail: u64,
}

impl Checksum {
    fn update(&mut self, data: &[u8]) {
        let mut chunks = data.chunks_exact(32);
        for c in &mut chunks {
            for lane in 0..4 {
                let w = u64::from_le_bytes(c[lane * 8..lane * 8 + 8].try_into().unwrap());
                self.a[lane] = self.a[lane].wrapping_add(w);
                self.b[lane] = self.b[lane].wrapping_add(self.a[lane]);
            }
        }
        for &byte in chunks.remainder() {
            self.tail = self.tail.wrapping_mul(31).wrapping_add(byte as u64);
        }
    }

    fn value(&self) -> u64 {
        let mut h = self.tail;
        for lane in 0..4 {
            h = h.rotate_left(17) ^ self.a[lane].wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ self.b[lane];
        }
        h
    }
}

/// Fills `buf` with the pattern for stream offset `pos` (a multiple of 8).
fn fill(buf: &mut [u8], pos: u64) {
    for (i, w) in buf.chunks_exact_mut(8).enumerate() {
        let x = (pos / 8 + i as u64).wrapping_mul(0x2545_f491_4f6c_dd1d);
        w.copy_from_slice(&x.to_le_bytes());
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.role {
        Some(Role::Producer) => producer(cli.socket.as_deref().expect("socket")),
        Some(Role::Consumer) => consumer(
            cli.socket.as_deref().expect("socket"),
            cli.bytes,
            cli.transports[0],
        ),
        None => run(&cli),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shmbus-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn producer(socket: &Path) -> Result<(), Error> {
    let conn = Connection::connect(socket)?;
    let service = conn.register(SERVICE, &[MethodSpec::new(METHOD, StreamMode::Download)])?;
    println!("ready");
    std::io::stdout().flush()?;
    while let Some(mut call) = service.next()? {
        let total: u64 = call.args_typed()?;
        let tx = call
            .sender()
            .ok_or_else(|| Error::Protocol("no sender".into()))?;
        let mut sum = Checksum::default();
        let mut pos = 0u64;
        while pos < total {
            let len = (total - pos).min(WRITE as u64) as usize;
            let mut slot = tx.reserve(len)?;
            let buf = &mut slot.buf()[..len];
            fill(buf, pos);
            sum.update(buf);
            slot.commit(len)?;
            pos += len as u64;
        }
        tx.finish()?;
        call.reply(sum.value().to_le_bytes().to_vec())?;
    }
    Ok(())
}

fn consumer(socket: &Path, bytes: u64, transport: TransportArg) -> Result<(), Error> {
    let conn = Connection::connect(socket)?;
    let pref = match transport {
        TransportArg::Shm => TransportPreference::SharedMemory,
        TransportArg::Socket => TransportPreference::Socket,
    };
    let start = Instant::now();
    let mut call = conn
        .call(SERVICE, METHOD)
        .mode(StreamMode::Download)
        .args_typed(&bytes)?
        .transport(pref)
        .credit(CreditSpec::bytes(1 << 20))
        .ring_size(2 << 20)
        .start()?;
    let rx = call
        .receiver()
        .ok_or_else(|| Error::Protocol("no receiver".into()))?;
    let mut sum = Checksum::default();
    let mut got = 0u64;
    while let Some(item) = rx.recv_in_place()? {
        sum.update(&item);
        got += item.len() as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    let theirs = u64::from_le_bytes(
        call.finish()?
            .try_into()
            .map_err(|_| Error::Protocol("bad checksum reply".into()))?,
    );
    let ok = theirs == sum.value() && got == bytes;
    println!("result {got} {secs} {}", if ok { "ok" } else { "MISMATCH" });
    Ok(())
}

fn run(cli: &Cli) -> Result<(), Error> {
    let exe = std::env::current_exe()?;
    let _private;
    let mut stop = None;
    let socket = match &cli.socket {
        Some(s) => s.clone(),
        None => {
            let dir = tempfile::tempdir()?;
            let path = dir.path().join("bus.sock");
            let listener = shmbusd::server::bind(&path)?;
            let mut server =
                shmbusd::server::Server::new(listener, Some(path.clone()), Default::default())?;
            stop = Some(server.stop_handle()?);
            std::thread::spawn(move || server.run());
            _private = dir;
            path
        }
    };
    let mut producer = Command::new(&exe)
        .args(["--role", "producer", "--socket"])
        .arg(&socket)
        .stdout(Stdio::piped())
        .spawn()?;
    let mut lines = std::io::BufReader::new(producer.stdout.take().expect("stdout")).lines();
    if lines.next().transpose()?.as_deref() != Some("ready") {
        return Err(Error::Protocol("producer did not start".into()));
    }
    println!(
        "shmbus main job: {} between two processes through a private broker ({} CPUs)",
        human(cli.bytes),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "{:<10} {:>14} {:>10} {:>10}  checksum",
        "transport", "bytes", "seconds", "GB/s"
    );
    let mut failed = false;
    for t in &cli.transports {
        let name = match t {
            TransportArg::Shm => "shm",
            TransportArg::Socket => "socket",
        };
        let out = Command::new(&exe)
            .args(["--role", "consumer", "--transports", name, "--bytes"])
            .arg(cli.bytes.to_string())
            .arg("--socket")
            .arg(&socket)
            .stderr(Stdio::inherit())
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let Some(fields) = text.lines().find_map(|l| l.strip_prefix("result ")) else {
            println!("{name:<10} failed: consumer exited with {}", out.status);
            failed = true;
            continue;
        };
        let f: Vec<&str> = fields.split_whitespace().collect();
        let (got, secs): (u64, f64) = (f[0].parse().unwrap_or(0), f[1].parse().unwrap_or(f64::NAN));
        println!(
            "{name:<10} {got:>14} {secs:>10.3} {:>10.2}  {}",
            got as f64 / secs / 1e9,
            f[2]
        );
        failed |= f[2] != "ok";
    }
    let _ = producer.kill();
    let _ = producer.wait();
    if let Some(s) = stop {
        s.stop();
    }
    if failed {
        return Err(Error::Protocol(
            "a transport failed or its checksum did not match".into(),
        ));
    }
    Ok(())
}

fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{} GiB", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b => format!("{b} bytes"),
    }
}
