//! Zenoh's own ceiling for one stream on this machine, against a TCP
//! loopback stream of the same bytes: two processes, messages (1 MiB, or
//! KIB) filled in place by the sender and summed by the receiver, for a few
//! seconds, rounds alternating; TCP writes and reads the same size, or
//! TCP_KIB. Zenoh runs with the bridge's link settings (peer mode, scouting
//! off, 16 data batches, a 16 MiB read buffer, its runtimes on one pool of
//! two workers unless `ZENOH_RUNTIME` is set), reliable and blocking, over
//! 127.0.0.1 only; `ZENOH_CEILING_SET="KEY=VALUE;…"` adds settings to try.
//!
//! Each run also reports how busy the machine's CPUs were (`/proc/stat`,
//! every CPU, the kernel's share included) and so the CPU time one GB
//! took: a stream that keeps every CPU busy is bound by that cost, not by
//! waiting.
//!
//! ```sh
//! cargo run --release -p shmbus-bridge --example zenoh_ceiling -- [ROUNDS] [SECS] [KIB] [TCP_KIB]
//! ```

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The bytes of message `i`: cheap to make, never the same twice in a row.
fn fill(buf: &mut [u8], i: u64) {
    for (k, chunk) in buf.chunks_exact_mut(8).enumerate() {
        chunk.copy_from_slice(&(i.wrapping_mul(0x9E37_79B9) ^ k as u64).to_le_bytes());
    }
}

/// Sums `buf` eight bytes at a time (what a receiver that reads every byte
/// costs).
fn sum(acc: u64, buf: &[u8]) -> u64 {
    let mut s = acc;
    let mut chunks = buf.chunks_exact(8);
    for c in &mut chunks {
        s = s.wrapping_add(u64::from_le_bytes(c.try_into().unwrap()));
    }
    chunks
        .remainder()
        .iter()
        .fold(s, |s, &b| s.wrapping_add(b as u64))
}

fn config(listen: Option<u16>, connect: Option<u16>) -> zenoh::Config {
    let mut c = zenoh::Config::default();
    let ep = |p: Option<u16>| match p {
        Some(p) => format!("[\"tcp/127.0.0.1:{p}\"]"),
        None => "[]".into(),
    };
    for (k, v) in [
        ("mode", "\"peer\"".to_string()),
        ("listen/endpoints", ep(listen)),
        ("connect/endpoints", ep(connect)),
        ("scouting/multicast/enabled", "false".into()),
        ("scouting/gossip/enabled", "false".into()),
        ("transport/link/tx/queue/size/data", "16".into()),
        ("transport/link/rx/buffer_size", (16 << 20).to_string()),
    ] {
        c.insert_json5(k, &v).expect("zenoh setting");
    }
    // Further settings to try, as `KEY=VALUE;KEY=VALUE` (json5 values).
    if let Ok(extra) = std::env::var("ZENOH_CEILING_SET") {
        for kv in extra.split(';').filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').expect("KEY=VALUE");
            c.insert_json5(k, v).expect("zenoh setting");
        }
    }
    c
}

/// Prints what a receiver saw from its first byte on: bytes, seconds, the
/// share of all CPUs busy, and the sum.
fn report(bytes: u64, first: Option<(Instant, (u64, u64))>, acc: u64) {
    let Some((t, before)) = first else {
        return println!("0 0 0 {acc}");
    };
    let secs = t.elapsed().as_secs_f64();
    let after = cpu_ticks();
    let busy = (after.0 - before.0) as f64 / (after.1 - before.1).max(1) as f64;
    println!("{bytes} {secs} {busy} {acc}");
}

/// Receives until `end` arrives, then [`report`]s what it saw.
async fn zenoh_sub(port: u16) {
    let session = zenoh::open(config(Some(port), None)).await.unwrap();
    let sub = session.declare_subscriber("ceiling/data").await.unwrap();
    println!("ready");
    let (mut bytes, mut acc, mut first) = (0u64, 0u64, None);
    while let Ok(sample) = sub.recv_async().await {
        let payload = sample.payload();
        if payload.is_empty() {
            break;
        }
        first.get_or_insert_with(|| (Instant::now(), cpu_ticks()));
        for s in payload.slices() {
            acc = sum(acc, s);
            bytes += s.len() as u64;
        }
    }
    report(bytes, first, acc);
}

/// Sends messages of `size` for `secs`, then an empty one.
async fn zenoh_pub(port: u16, secs: f64, size: usize) {
    let session = zenoh::open(config(None, Some(port))).await.unwrap();
    let publisher = session
        .declare_publisher("ceiling/data")
        .congestion_control(zenoh::qos::CongestionControl::Block)
        .await
        .unwrap();
    // Until the subscriber is known here, puts go nowhere.
    while publisher
        .matching_status()
        .await
        .map_or(true, |m| !m.matching())
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut i = 0u64;
    while Instant::now() < end {
        let mut buf = vec![0u8; size];
        fill(&mut buf, i);
        publisher.put(buf).await.unwrap();
        i += 1;
    }
    publisher.put(Vec::<u8>::new()).await.unwrap();
    // Give the last messages time to leave before the session closes.
    tokio::time::sleep(Duration::from_millis(500)).await;
}

fn tcp_sub(listener: TcpListener, size: usize) {
    let (mut s, _) = listener.accept().unwrap();
    let mut buf = vec![0u8; size];
    let (mut bytes, mut acc, mut first) = (0u64, 0u64, None);
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        first.get_or_insert_with(|| (Instant::now(), cpu_ticks()));
        acc = sum(acc, &buf[..n]);
        bytes += n as u64;
    }
    report(bytes, first, acc);
}

fn tcp_pub(port: u16, secs: f64, size: usize) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_nodelay(true).unwrap();
    let mut buf = vec![0u8; size];
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut i = 0u64;
    while Instant::now() < end {
        fill(&mut buf, i);
        s.write_all(&buf).unwrap();
        i += 1;
    }
}

/// The machine's CPU time so far, in clock ticks: (busy, all), from the
/// first line of `/proc/stat` (idle and iowait are not busy).
fn cpu_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let f: Vec<u64> = stat
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|x| x.parse().unwrap())
        .collect();
    let all: u64 = f.iter().sum();
    (all - f[3] - f[4], all)
}

/// What one run saw from the receiver's first byte to its last: GB/s, and
/// the share of all CPUs busy meanwhile.
struct Run {
    gbps: f64,
    busy: f64,
}

/// One round of `kind` (zenoh or tcp) with messages of `size`.
fn round(kind: &str, secs: f64, size: usize) -> Run {
    let exe = std::env::current_exe().unwrap();
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut sub = Command::new(&exe)
        .args([&format!("{kind}-sub"), &port.to_string(), &size.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = sub.stdout.take().unwrap();
    let mut line = Vec::new();
    let mut b = [0u8];
    while out.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    assert_eq!(line, b"ready", "the receiver did not start");
    let status = Command::new(&exe)
        .args([
            &format!("{kind}-pub"),
            &port.to_string(),
            &secs.to_string(),
            &size.to_string(),
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    sub.wait().unwrap();
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    Run {
        gbps: f[0] / f[1] / 1e9,
        busy: f[2],
    }
}

/// The bridge's default for Zenoh's runtimes (see its `main.rs`).
const ZENOH_RUNTIME: &str = "(app: (worker_threads: 2), acc: (handover: app), \
     tx: (handover: app), rx: (handover: app), net: (handover: app))";

fn main() {
    if std::env::var_os("ZENOH_RUNTIME").is_none() {
        // No other thread runs yet (children inherit it too).
        std::env::set_var("ZENOH_RUNTIME", ZENOH_RUNTIME);
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(ceiling_main());
}

async fn ceiling_main() {
    let args: Vec<String> = std::env::args().collect();
    let port = || args[2].parse::<u16>().unwrap();
    let num = |i: usize| args[i].parse::<f64>().unwrap();
    match args.get(1).map(String::as_str) {
        Some("zenoh-sub") => return zenoh_sub(port()).await,
        Some("zenoh-pub") => return zenoh_pub(port(), num(3), num(4) as usize).await,
        Some("tcp-sub") => {
            let listener = TcpListener::bind(("127.0.0.1", port())).unwrap();
            println!("ready");
            return tcp_sub(listener, num(3) as usize);
        }
        Some("tcp-pub") => return tcp_pub(port(), num(3), num(4) as usize),
        _ => {}
    }
    let rounds: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(5);
    let secs: f64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(3.0);
    let kib: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(1024);
    let tcp_kib: usize = args.get(4).and_then(|a| a.parse().ok()).unwrap_or(kib);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    println!(
        "zenoh {kib} KiB messages, tcp {tcp_kib} KiB writes, {secs} s per run; \
         GB/s = 10^9 bytes/s at the receiver; busy = share of the {cpus} CPUs busy, \
         CPU s/GB = the CPU time a GB took"
    );
    let show = |r: &Run| {
        format!(
            "{:.2} GB/s (busy {:.0}%, {:.2} CPU s/GB)",
            r.gbps,
            r.busy * 100.0,
            r.busy * cpus / r.gbps
        )
    };
    for r in 0..rounds {
        let z = tokio::task::block_in_place(|| round("zenoh", secs, kib << 10));
        let t = tokio::task::block_in_place(|| round("tcp", secs, tcp_kib << 10));
        println!(
            "round {r}: zenoh {}, tcp {}, zenoh/tcp {:.2}",
            show(&z),
            show(&t),
            z.gbps / t.gbps
        );
    }
}
