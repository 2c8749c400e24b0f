//! Zenoh's own ceiling for one stream on this machine, against a TCP
//! loopback stream of the same bytes: two processes, messages (1 MiB, or
//! KIB) filled in place by the sender and summed by the receiver, for a few
//! seconds, rounds alternating; TCP writes and reads the same size. Zenoh runs with the bridge's link settings (peer
//! mode, scouting off, 16 data batches, a 16 MiB read buffer), reliable and
//! blocking, over 127.0.0.1 only.
//!
//! ```sh
//! cargo run --release -p shmbus-bridge --example zenoh_ceiling -- [ROUNDS] [SECS] [KIB]
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
    c
}

/// Receives until `end` arrives; prints bytes, seconds and the sum.
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
        first.get_or_insert_with(Instant::now);
        for s in payload.slices() {
            acc = sum(acc, s);
            bytes += s.len() as u64;
        }
    }
    let secs = first.map_or(0.0, |t| t.elapsed().as_secs_f64());
    println!("{bytes} {secs} {acc}");
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
        first.get_or_insert_with(Instant::now);
        acc = sum(acc, &buf[..n]);
        bytes += n as u64;
    }
    let secs = first.map_or(0.0, |t| t.elapsed().as_secs_f64());
    println!("{bytes} {secs} {acc}");
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

/// One round of `kind` (zenoh or tcp) with messages of `size`: GB/s the
/// receiver saw.
fn round(kind: &str, secs: f64, size: usize) -> f64 {
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
    f[0] / f[1] / 1e9
}

#[tokio::main]
async fn main() {
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
    let size = kib << 10;
    println!("{kib} KiB messages, {secs} s per run; GB/s = 10^9 bytes/s at the receiver");
    for r in 0..rounds {
        let z = tokio::task::block_in_place(|| round("zenoh", secs, size));
        let t = tokio::task::block_in_place(|| round("tcp", secs, size));
        println!(
            "round {r}: zenoh {z:.2} GB/s, tcp {t:.2} GB/s, zenoh/tcp {:.2}",
            z / t
        );
    }
}
