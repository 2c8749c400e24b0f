//! The processes the fault scenarios start, kill and watch. Each runs one
//! [`Role`] and reports on standard output, one line per event, with
//! [`mono_ns`] timestamps the orchestrator compares with its own.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shmbus_client::{
    Connection, CreditSpec, IncomingCall, MethodSpec, StreamMode, TransportPreference,
};

use crate::os::mono_ns;

/// The method every fault service serves: `u64` items 0, 1, 2 … up to the
/// count in the arguments (`u64::MAX`: until the stream fails).
pub const NUMBERS: &str = "numbers";

/// What a fault peer does.
#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Registers `name` and serves [`NUMBERS`], sleeping `delay_us` between
    /// items; prints `ready`, then `failed <ns> <error>` when a stream fails
    /// and `done <items>` when one ends.
    Serve {
        /// Service name.
        name: String,
        /// Pause between items, in microseconds.
        delay_us: u64,
    },
    /// Calls `name`'s [`NUMBERS`] without end, checks every item's value;
    /// prints `open`, `received <n>` every 1000 items, and `error <ns> <why>`.
    Consume {
        /// Service name.
        name: String,
        /// Shared memory, or the socket fallback.
        shm: bool,
    },
    /// Opens connections and breaks the protocol on each in a different way,
    /// `per_sec` times a second; prints `sent <n>` now and then.
    Garbage {
        /// Random seed.
        seed: u64,
        /// Offending connections a second.
        per_sec: u32,
    },
    /// `threads` threads spinning on the CPU without touching the bus: the
    /// flood's CPU load alone, for comparison.
    Spin {
        /// Spinning threads.
        threads: u32,
    },
    /// A flood from one user: `threads` threads each calling a service of
    /// its own (`name`) over and over, holding up to `hold` streams open
    /// (beyond the per-user quota), plus malformed connections; runs until
    /// killed and prints `calls <ok> <refused>` now and then.
    Flood {
        /// The flooder's own service.
        name: String,
        /// Calling threads.
        threads: u32,
        /// Streams each thread keeps open.
        hold: u32,
    },
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn say(line: String) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Runs `role` against the broker at `socket`.
pub fn run(socket: &Path, role: &Role) -> Result<(), BoxError> {
    match role {
        Role::Serve { name, delay_us } => serve(socket, name, *delay_us),
        Role::Consume { name, shm } => consume(socket, name, *shm),
        Role::Garbage { seed, per_sec } => garbage(socket, *seed, *per_sec),
        Role::Spin { threads } => spin(*threads),
        Role::Flood {
            name,
            threads,
            hold,
        } => flood(socket, name, *threads, *hold),
    }
}

fn serve(socket: &Path, name: &str, delay_us: u64) -> Result<(), BoxError> {
    let conn = Connection::connect(socket)?;
    let service = conn.register(name, &[MethodSpec::new(NUMBERS, StreamMode::Download)])?;
    say("ready".into());
    let delay = Duration::from_micros(delay_us);
    while let Some(call) = service.next()? {
        std::thread::spawn(move || numbers(call, delay));
    }
    Ok(())
}

fn numbers(mut call: IncomingCall, delay: Duration) {
    let count: u64 = call.args_typed().unwrap_or(0);
    let Some(tx) = call.sender() else { return };
    for i in 0..count {
        if let Err(e) = tx.send(&i) {
            say(format!("failed {} {e}", mono_ns()));
            let m = e.to_string();
            let _ = call.fail(&m);
            return;
        }
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
    }
    say(format!("done {count}"));
    let _ = call.reply(Vec::new());
}

fn consume(socket: &Path, name: &str, shm: bool) -> Result<(), BoxError> {
    let conn = Connection::connect(socket)?;
    let mut call = conn
        .call(name, NUMBERS)
        .mode(StreamMode::Download)
        .args_typed(&u64::MAX)?
        .credit(CreditSpec::items(64))
        .transport(if shm {
            TransportPreference::SharedMemory
        } else {
            TransportPreference::Socket
        })
        .start()?;
    say("open".into());
    let rx = call.receiver().ok_or("download without a receiver")?;
    let mut next = 0u64;
    loop {
        match rx.recv::<u64>() {
            Ok(Some(v)) if v == next => {
                next += 1;
                if next.is_multiple_of(1000) {
                    say(format!("received {next}"));
                }
            }
            Ok(Some(v)) => {
                say(format!("error {} item {next} was {v}", mono_ns()));
                return Ok(());
            }
            Ok(None) => {
                say(format!("error {} ended after {next}", mono_ns()));
                return Ok(());
            }
            Err(e) => {
                say(format!("error {} {e}", mono_ns()));
                return Ok(());
            }
        }
    }
}

/// One offending connection: random bytes, an absurd length, a truncated
/// frame, or a frame header claiming descriptors that never come.
pub fn offend(socket: &Path, rng: &mut fastrand::Rng) -> std::io::Result<()> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_millis(200)))?;
    let bytes: Vec<u8> = match rng.u8(..4) {
        0 => (0..rng.usize(1..300)).map(|_| rng.u8(..)).collect(),
        // Header: body length (u32 LE) and descriptor count.
        1 => [u32::MAX.to_le_bytes().as_slice(), &[0]].concat(),
        2 => [64u32.to_le_bytes().as_slice(), &[0], &[7; 10]].concat(),
        _ => [8u32.to_le_bytes().as_slice(), &[3], &[1; 8]].concat(),
    };
    s.write_all(&bytes)?;
    if bytes.len() == 15 {
        // Truncated: hang up mid-frame.
        return Ok(());
    }
    // The broker answers with an error and hangs up (or just hangs up).
    let _ = s.read_to_end(&mut Vec::new());
    Ok(())
}

fn garbage(socket: &Path, seed: u64, per_sec: u32) -> Result<(), BoxError> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let gap = Duration::from_secs_f64(1.0 / per_sec.max(1) as f64);
    let mut n = 0u64;
    loop {
        let _ = offend(socket, &mut rng);
        n += 1;
        if n.is_multiple_of(100) {
            say(format!("sent {n}"));
        }
        std::thread::sleep(gap);
    }
}

fn spin(threads: u32) -> Result<(), BoxError> {
    for _ in 0..threads {
        std::thread::spawn(|| {
            let mut x = 0u64;
            loop {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        });
    }
    say("calls 0 0".into());
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn flood(socket: &Path, name: &str, threads: u32, hold: u32) -> Result<(), BoxError> {
    let conn = Connection::connect(socket)?;
    let service = conn.register(name, &[MethodSpec::new(NUMBERS, StreamMode::Download)])?;
    std::thread::spawn(move || {
        while let Ok(Some(call)) = service.next() {
            std::thread::spawn(move || numbers(call, Duration::ZERO));
        }
    });
    let (ok, refused) = (
        std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0)),
        std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0)),
    );
    for t in 0..threads {
        let (socket, name) = (socket.to_path_buf(), name.to_string());
        let (ok, refused) = (ok.clone(), refused.clone());
        std::thread::spawn(move || {
            let mut rng = fastrand::Rng::with_seed(t as u64 + 1);
            let Ok(conn) = Connection::connect(&socket) else {
                return;
            };
            let mut open = std::collections::VecDeque::new();
            loop {
                let call = conn
                    .call(&name, NUMBERS)
                    .mode(StreamMode::Download)
                    .args_typed(&u64::MAX)
                    .and_then(|c| c.credit(CreditSpec::items(16)).start());
                match call {
                    Ok(mut c) => {
                        if let Some(rx) = c.receiver() {
                            let _ = rx.recv::<u64>();
                        }
                        open.push_back(c);
                        ok.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(_) => {
                        refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                if open.len() > hold as usize {
                    open.pop_front();
                }
                if rng.u8(..8) == 0 {
                    let _ = offend(&socket, &mut rng);
                }
            }
        });
    }
    loop {
        std::thread::sleep(Duration::from_millis(100));
        say(format!(
            "calls {} {}",
            ok.load(std::sync::atomic::Ordering::Relaxed),
            refused.load(std::sync::atomic::Ordering::Relaxed)
        ));
    }
}
