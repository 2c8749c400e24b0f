//! The async Unix-socket baseline for round trips: the same socket pair as
//! `uds`, driven by `tokio::net::UnixStream` on a current-thread runtime in
//! each process, as an async service would talk over a socket. It is the
//! ceiling the tokio API's round trip is held to.

use std::io;
use std::os::fd::OwnedFd;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::checksum::{fill, Checksum};
use crate::job::{Job, Outcome};
use crate::os::mono_ns;
use crate::stats::Latencies;

fn runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

fn stream(fd: OwnedFd) -> io::Result<tokio::net::UnixStream> {
    let std = std::os::unix::net::UnixStream::from(fd);
    std.set_nonblocking(true)?;
    tokio::net::UnixStream::from_std(std)
}

/// Side A: write a message, await its echo, for the duration.
pub fn ping(job: &Job, fd: OwnedFd) -> io::Result<Outcome> {
    runtime()?.block_on(async {
        let mut sock = stream(fd)?;
        let (mut sent, mut got, mut lat) =
            (Checksum::default(), Checksum::default(), Latencies::new());
        let mut msg = vec![0u8; job.size];
        let mut back = vec![0u8; job.size];
        let begin = mono_ns();
        let (warm, end) = (begin + job.duration_ns / 10, begin + job.duration_ns);
        let mut pos = 0u64;
        loop {
            let t0 = std::time::Instant::now();
            fill(&mut msg, pos);
            sent.update(&msg);
            sock.write_all(&msg).await?;
            sock.read_exact(&mut back).await?;
            got.update(&back);
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
        sock.shutdown().await?;
        Ok(Outcome::timed(
            &got,
            &lat,
            begin,
            (sent.value(), sent.len()),
        ))
    })
}

/// Side B: echo every byte back as it arrives, until the end of stream.
pub fn pong(fd: OwnedFd) -> io::Result<Outcome> {
    runtime()?.block_on(async {
        let mut sock = stream(fd)?;
        let mut sum = Checksum::default();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = sock.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            sum.update(&buf[..n]);
            sock.write_all(&buf[..n]).await?;
        }
        Ok(Outcome {
            bytes: sum.len(),
            checksum: sum.value(),
            ..Outcome::default()
        })
    })
}
