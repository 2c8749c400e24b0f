//! The baselines: the same jobs over a raw Unix socket pair, a pipe and a
//! bare memfd ring, between two processes (side A measures: consumer,
//! pinger, caller, client; side B is its peer: producer, ponger, service,
//! server). The orchestrator makes the descriptors ([`make_fds`]) and each
//! side inherits its own.

pub mod bare_ring;
pub mod pipe;
pub mod tcp;
pub mod tokio_uds;
pub mod uds;

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::checksum::{combine, fill, Checksum};
use crate::job::{Job, Outcome, Scenario, Side, Transport};
use crate::os::{cpu_ns, mono_ns, sleep_until};
use crate::stats::Latencies;

/// Descriptors for both sides of a baseline job, and what must outlive it.
pub struct Fds {
    /// Side A's descriptors, in the order it expects them.
    pub a: Vec<OwnedFd>,
    /// Side B's descriptors.
    pub b: Vec<OwnedFd>,
    /// The setup listener's directory.
    pub dir: Option<tempfile::TempDir>,
}

fn duplex(s: Scenario) -> bool {
    matches!(s, Scenario::Latency | Scenario::Idle)
}

/// Makes the descriptors of a baseline job (orchestrator side).
pub fn make_fds(job: &Job) -> io::Result<Fds> {
    let mut f = Fds {
        a: Vec::new(),
        b: Vec::new(),
        dir: None,
    };
    let cap = job.ring as usize;
    if job.scenario == Scenario::Setup {
        let (l, dir) = uds::listener()?;
        f.a.push(l.try_clone()?);
        f.b.push(l);
        f.dir = Some(dir);
        return Ok(f);
    }
    let streams = if duplex(job.scenario) { 1 } else { job.streams };
    for _ in 0..streams {
        match job.transport {
            Transport::Uds => {
                let (a, b) = uds::pair(job.sock_buf)?;
                f.a.push(a);
                f.b.push(b);
            }
            Transport::Tcp => {
                let (a, b) = tcp::pair(job.sock_buf)?;
                f.a.push(a);
                f.b.push(b);
            }
            Transport::Pipe => {
                // One pipe B → A; for round trips a second one A → B.
                let (r, w) = pipe::pipe()?;
                f.a.push(r);
                f.b.push(w);
                if duplex(job.scenario) {
                    let (r, w) = pipe::pipe()?;
                    f.a.push(w);
                    f.b.insert(0, r);
                }
            }
            Transport::BareRing => {
                let ring = bare_ring::create(cap)?;
                f.a.push(ring.try_clone()?);
                f.b.push(ring);
                if duplex(job.scenario) {
                    let ring = bare_ring::create(cap)?;
                    f.a.push(ring.try_clone()?);
                    f.b.insert(0, ring);
                }
            }
            Transport::Shm | Transport::Socket | Transport::Bridge => {
                unreachable!("not a baseline")
            }
        }
    }
    Ok(f)
}

/// Bytes a reader asks for at once: whole writes, at least 64 KiB.
fn read_size(job: &Job) -> usize {
    job.size.clamp(64 << 10, 4 << 20)
}

/// How a baseline job is configured, as recorded in the JSON (`config`):
/// what was asked for and what the kernel granted.
pub fn config(job: &Job) -> serde_json::Value {
    let latency = job.scenario == Scenario::Latency;
    match job.transport {
        Transport::Uds => serde_json::json!({
            "sock_buf_asked": job.sock_buf,
            "sock_buf_granted": uds::granted_buffer(job.sock_buf).ok(),
            "read_size": read_size(job),
        }),
        Transport::Tcp => serde_json::json!({
            "address": "127.0.0.1",
            "nodelay": true,
            "sock_buf_asked": (job.sock_buf > 0).then_some(job.sock_buf),
            "read_size": read_size(job),
        }),
        Transport::Pipe => serde_json::json!({
            "pipe_size_asked": pipe::PIPE_SIZE,
            "pipe_size_granted": pipe::capacity().ok(),
            "read_size": read_size(job),
        }),
        Transport::BareRing => serde_json::json!({
            "ring": job.ring,
            "publish_batch": if job.whole_writes { None } else { Some(bare_ring::batch(job.ring as usize)) },
            "flush_every_writes": if latency || job.whole_writes { 1 } else { FLUSH_EVERY },
            "release": if job.whole_writes { "whole writes" } else { "publish_batch" },
            "wait": "spin, then yield",
            "copy_each_side": job.copied,
        }),
        Transport::Shm | Transport::Socket | Transport::Bridge => serde_json::json!({
            "ring": job.ring,
            "credit": format!("{:?}", job.credit),
            "blob": job.blob,
        }),
    }
}

/// A streaming producer makes its writes visible at least this often (the
/// bare ring publishes a batch at once; descriptors at every write).
const FLUSH_EVERY: u64 = 64;

/// A receiving end.
enum Rx {
    Fd(File, Vec<u8>),
    Ring(bare_ring::Consumer),
}

impl Rx {
    /// Hands `f` the next bytes (at most `max`); 0 at the end of the stream.
    fn read_with(&mut self, max: usize, f: impl FnMut(&[u8])) -> io::Result<usize> {
        match self {
            Rx::Fd(file, buf) => {
                let max = max.min(buf.len());
                let n = loop {
                    match file.read(&mut buf[..max]) {
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        r => break r?,
                    }
                };
                let mut f = f;
                f(&buf[..n]);
                Ok(n)
            }
            Rx::Ring(c) => Ok(c.read_with(max, f)),
        }
    }

    /// Reads until the end of the stream, folding everything into `sum`.
    fn drain(&mut self, sum: &mut Checksum) -> io::Result<()> {
        while self.read_with(usize::MAX, |b| sum.update(b))? > 0 {}
        Ok(())
    }

    /// Like [`drain`](Self::drain), but each write is first copied into a
    /// buffer of this side's own (`size` bytes), as a receiver of owned
    /// items does, and summed there.
    fn drain_copied(&mut self, size: usize, sum: &mut Checksum) -> io::Result<()> {
        let mut own = vec![0u8; size.max(1)];
        let mut have = 0;
        loop {
            let n = self.read_with(own.len() - have, |b| {
                own[have..have + b.len()].copy_from_slice(b)
            })?;
            have += n;
            if n == 0 || have == own.len() {
                sum.update(&own[..have]);
                have = 0;
            }
            if n == 0 {
                return Ok(());
            }
        }
    }
}

/// A sending end.
enum Tx {
    Fd {
        file: File,
        buf: Vec<u8>,
        sock: bool,
    },
    Ring(bare_ring::Producer),
}

impl Tx {
    /// Writes `len` bytes produced in place by `fill(offset, piece)`.
    fn write_with(&mut self, len: usize, mut f: impl FnMut(usize, &mut [u8])) -> io::Result<()> {
        match self {
            Tx::Fd { file, buf, .. } => {
                if buf.len() < len {
                    buf.resize(len, 0);
                }
                f(0, &mut buf[..len]);
                file.write_all(&buf[..len])
            }
            Tx::Ring(p) => {
                p.write_with(len, f);
                Ok(())
            }
        }
    }

    /// Writes `data` as it is.
    fn write_bytes(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Tx::Fd { file, .. } => file.write_all(data),
            Tx::Ring(p) => {
                p.write_with(data.len(), |off, d| {
                    d.copy_from_slice(&data[off..off + d.len()])
                });
                Ok(())
            }
        }
    }

    /// Makes everything written visible to the reader (the bare ring
    /// publishes in batches; a descriptor's writes are visible at once).
    fn flush(&mut self) {
        if let Tx::Ring(p) = self {
            p.flush();
        }
    }

    /// Ends the stream (the peer reads end-of-file).
    fn close(self) {
        if let Tx::Fd {
            file, sock: true, ..
        } = &self
        {
            let _ = nix::sys::socket::shutdown(file.as_raw_fd(), nix::sys::socket::Shutdown::Write);
        }
    }
}

/// Turns one stream's descriptors into this side's ends.
fn ends(
    job: &Job,
    fds: &mut std::vec::IntoIter<OwnedFd>,
    rx: bool,
    tx: bool,
) -> io::Result<(Option<Rx>, Option<Tx>)> {
    let cap = job.ring as usize;
    let rbuf = read_size(job);
    let mut next = || {
        fds.next()
            .ok_or_else(|| io::Error::other("too few descriptors"))
    };
    Ok(match job.transport {
        Transport::Uds | Transport::Tcp => {
            let sock = next()?;
            let r = rx.then(|| sock.try_clone()).transpose()?;
            let t = tx.then(|| sock.try_clone()).transpose()?;
            (
                r.map(|f| Rx::Fd(File::from(f), vec![0; rbuf])),
                t.map(|f| Tx::Fd {
                    file: File::from(f),
                    buf: Vec::new(),
                    sock: true,
                }),
            )
        }
        Transport::Pipe => {
            let r = if rx {
                Some(Rx::Fd(File::from(next()?), vec![0; rbuf]))
            } else {
                None
            };
            let t = if tx {
                Some(Tx::Fd {
                    file: File::from(next()?),
                    buf: Vec::new(),
                    sock: false,
                })
            } else {
                None
            };
            (r, t)
        }
        Transport::BareRing => {
            let r = if rx {
                Some(Rx::Ring(bare_ring::Consumer::open(
                    next()?,
                    cap,
                    job.whole_writes.then_some(job.size),
                )?))
            } else {
                None
            };
            let t = if tx {
                Some(Tx::Ring(bare_ring::Producer::open(
                    next()?,
                    cap,
                    job.whole_writes,
                )?))
            } else {
                None
            };
            (r, t)
        }
        Transport::Shm | Transport::Socket | Transport::Bridge => unreachable!("not a baseline"),
    })
}

/// Runs one side of a baseline job on its inherited descriptors.
pub fn run(job: &Job, side: Side, fds: Vec<OwnedFd>) -> io::Result<Outcome> {
    let mut fds = fds.into_iter();
    match (job.scenario, side) {
        (Scenario::Setup, Side::A) => uds::connect_loop(job, fds.next().expect("listener")),
        (Scenario::Setup, Side::B) => uds::serve(fds.next().expect("listener")),
        (Scenario::Throughput | Scenario::Fanout, side) => {
            let mut ends_ = Vec::new();
            for _ in 0..job.streams {
                ends_.push(ends(job, &mut fds, side == Side::A, side == Side::B)?);
            }
            streams(job, side, ends_)
        }
        (Scenario::Latency, side) if job.asynchronous && job.transport == Transport::Uds => {
            let sock = fds
                .next()
                .ok_or_else(|| io::Error::other("too few descriptors"))?;
            match side {
                Side::A => tokio_uds::ping(job, sock),
                Side::B => tokio_uds::pong(sock),
            }
        }
        (Scenario::Latency | Scenario::Idle, side) => {
            let (rx, tx) = ends(job, &mut fds, true, true)?;
            let (rx, tx) = (rx.expect("rx"), tx.expect("tx"));
            match (job.scenario, side) {
                (Scenario::Latency, Side::A) => ping(job, rx, tx),
                (Scenario::Latency, Side::B) => pong(rx, tx),
                (_, side) => idle(job, side, rx, tx),
            }
        }
        (
            Scenario::Blob | Scenario::Bridge | Scenario::Crash | Scenario::Soak | Scenario::Flood,
            _,
        ) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "this scenario has no baseline of its own",
        )),
    }
}

/// Produces one stream from the common start for the job's duration.
fn produce(job: &Job, tx: &mut Tx) -> io::Result<(u64, u64)> {
    let now = mono_ns();
    if now > job.start_at {
        LATE.fetch_max(now - job.start_at, Ordering::Relaxed);
    }
    sleep_until(job.start_at);
    let end = job.start_at + job.duration_ns;
    let (mut pos, mut n) = (0u64, 0u64);
    let mut own = vec![0u8; if job.copied { job.size } else { 0 }];
    loop {
        if job.copied {
            fill(&mut own, pos);
            tx.write_bytes(&own)?;
        } else {
            tx.write_with(job.size, |off, piece| fill(piece, pos + off as u64))?;
        }
        pos += job.size as u64;
        n += 1;
        if job.whole_writes || n % FLUSH_EVERY == 0 {
            tx.flush();
        }
        if (job.size >= 4096 || n % 64 == 0) && mono_ns() >= end {
            return Ok((pos, Checksum::of_pattern(pos).value()));
        }
    }
}

/// The latest a producer thread of this process started after the common
/// start (statistics only: relaxed, no ordering with anything).
static LATE: AtomicU64 = AtomicU64::new(0);

/// Throughput and fan-out: side B produces every stream, side A consumes.
fn streams(job: &Job, side: Side, ends: Vec<(Option<Rx>, Option<Tx>)>) -> io::Result<Outcome> {
    let results: Vec<io::Result<(u64, u64, u64)>> = std::thread::scope(|s| {
        let handles: Vec<_> = ends
            .into_iter()
            .map(|(rx, tx)| {
                s.spawn(move || match side {
                    Side::B => {
                        let mut tx = tx.expect("tx");
                        let (bytes, sum) = produce(job, &mut tx)?;
                        tx.close();
                        Ok((bytes, sum, mono_ns()))
                    }
                    Side::A => {
                        let mut rx = rx.expect("rx");
                        let mut sum = Checksum::default();
                        if job.copied {
                            rx.drain_copied(job.size, &mut sum)?;
                        } else {
                            rx.drain(&mut sum)?;
                        }
                        Ok((sum.len(), sum.value(), mono_ns()))
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("stream thread"))
            .collect()
    });
    let results = results.into_iter().collect::<io::Result<Vec<_>>>()?;
    let bytes: u64 = results.iter().map(|r| r.0).sum();
    let last = results.iter().map(|r| r.2).max().unwrap_or(job.start_at);
    Ok(Outcome {
        bytes,
        items: bytes / job.size.max(1) as u64,
        secs: last.saturating_sub(job.start_at) as f64 / 1e9,
        checksum: combine(results.iter().map(|r| r.1)),
        late_ns: Some(LATE.load(Ordering::Relaxed)).filter(|&l| l > 0),
        ..Outcome::default()
    })
}

/// Latency, side A: write a message, wait for its echo, for the duration.
fn ping(job: &Job, mut rx: Rx, mut tx: Tx) -> io::Result<Outcome> {
    let (mut sent, mut got, mut lat) = (Checksum::default(), Checksum::default(), Latencies::new());
    let begin = mono_ns();
    let (warm, end) = (begin + job.duration_ns / 10, begin + job.duration_ns);
    let mut pos = 0u64;
    loop {
        let t0 = std::time::Instant::now();
        tx.write_with(job.size, |off, p| {
            fill(p, pos + off as u64);
            sent.update(p);
        })?;
        tx.flush();
        let mut have = 0;
        while have < job.size {
            let n = rx.read_with(job.size - have, |b| got.update(b))?;
            if n == 0 {
                return Err(io::Error::other("echo peer closed early"));
            }
            have += n;
        }
        let dt = t0.elapsed().as_nanos() as u64;
        pos += job.size as u64;
        let now = mono_ns();
        if now >= warm {
            lat.record(dt);
        }
        if now >= end {
            break;
        }
    }
    tx.close();
    rx.drain(&mut got)?;
    Ok(Outcome::timed(
        &got,
        &lat,
        begin,
        (sent.value(), sent.len()),
    ))
}

/// Latency, side B: echo every byte back as it arrives.
fn pong(mut rx: Rx, mut tx: Tx) -> io::Result<Outcome> {
    let mut sum = Checksum::default();
    let mut failed = None;
    while rx.read_with(usize::MAX, |piece| {
        sum.update(piece);
        if let Err(e) = tx.write_bytes(piece) {
            failed.get_or_insert(e);
        }
        tx.flush();
    })? > 0
    {
        if let Some(e) = failed.take() {
            return Err(e);
        }
    }
    tx.close();
    Ok(Outcome {
        bytes: sum.len(),
        checksum: sum.value(),
        ..Outcome::default()
    })
}

/// Idle: both sides wait to receive; A ends its direction after the
/// duration, B ends its own once it sees that. Each reports its CPU time.
fn idle(job: &Job, side: Side, mut rx: Rx, tx: Tx) -> io::Result<Outcome> {
    let (cpu0, t0) = (cpu_ns(None)?, mono_ns());
    let mut sum = Checksum::default();
    match side {
        Side::A => {
            let reader = std::thread::spawn(move || {
                let mut sum = Checksum::default();
                rx.drain(&mut sum).map(|()| sum)
            });
            std::thread::sleep(std::time::Duration::from_nanos(job.duration_ns));
            tx.close();
            sum = reader.join().expect("reader thread")?;
        }
        Side::B => {
            rx.drain(&mut sum)?;
            tx.close();
        }
    }
    Ok(Outcome {
        bytes: sum.len(),
        secs: (mono_ns() - t0) as f64 / 1e9,
        checksum: sum.value(),
        cpu_ns: Some(cpu_ns(None)? - cpu0),
        ..Outcome::default()
    })
}
