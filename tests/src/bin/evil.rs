//! `shmbus-evil`: a hostile service for the tests. It speaks the control
//! protocol by hand and, once a stream is open, writes random and
//! adversarial values into the shared ring (header, positions, credit, record
//! headers, data) as fast as it can, rings the doorbell now and then, and
//! tries to resize the ring. Methods: `down` (it produces, the caller
//! consumes) and `up` (the caller produces, it consumes).
//!
//! A third method, `rewrite` (it produces), follows the protocol except
//! that it rewrites an item the caller holds in place: it sends item 0 (64
//! bytes of `A`), waits for a line on its standard input (the caller holds
//! the item), rewrites that item's payload (64 bytes of `B`) and record
//! header (a huge length, an unknown kind, a huge charge) in the ring,
//! prints `rewritten`, then sends items 1 to 8 (64 bytes of the item's
//! number each) and stream-end, waiting for credit as any producer does.
//!
//! A fourth, `blob` (it produces), sends one blob that breaks the rules in
//! the way its argument names (see `evil/blob.rs`).
//!
//! Usage: `shmbus-evil NAME SECONDS` with `SHMBUS_SOCKET` set. Prints
//! `ready`, then per `down`/`up` call `resize-refused` when both resizes failed.

use std::collections::VecDeque;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use shmbus::frame::{self, Frame, MethodSpec, StreamMode, PROTOCOL_VERSION};
use shmbus::ring::{Control, RingProducer, HEADER_SIZE, RECORD_HEADER};
use shmbus_tests::Rng;

#[path = "evil/blob.rs"]
mod blob;

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn send(sock: &UnixStream, f: &Frame) {
    let mut b = Vec::new();
    frame::encode(f, &mut b);
    let mut rest = &b[..];
    while !rest.is_empty() {
        let n = shmbus::sys::send_with_fds(sock.as_fd(), rest, &[], true).expect("send");
        rest = &rest[n..];
    }
}

struct Reader {
    sock: UnixStream,
    buf: Vec<u8>,
    fds: VecDeque<OwnedFd>,
}

impl Reader {
    fn next(&mut self) -> Option<(Frame, Vec<OwnedFd>)> {
        loop {
            if let Ok(Some((h, body))) = frame::split_frame(&self.buf, 1 << 24) {
                let fds: Vec<_> = self.fds.drain(..h.fds as usize).collect();
                let f = frame::decode(&self.buf[body.clone()], fds.len()).ok()?;
                self.buf.drain(..body.end);
                return Some((f, fds));
            }
            let mut chunk = vec![0u8; 65536];
            match shmbus::sys::recv_with_fds(self.sock.as_fd(), &mut chunk, &mut self.fds, true) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

/// Header offsets worth attacking, and values worth writing there.
const FIELDS: [u64; 11] = [0, 8, 12, 16, 128, 136, 256, 264, 640, 1024, 1028];

fn attack(memfd: std::fs::File, link: UnixStream, capacity: u64, seconds: f64, seed: u64) {
    let mut rng = Rng::new(seed);
    let grow = memfd.set_len(capacity * 4).is_err();
    let shrink = memfd.set_len(64).is_err();
    if grow && shrink {
        say("resize-refused");
    }
    let _ = link.set_nonblocking(true);
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let mut n = 0u64;
    while Instant::now() < end {
        let interesting = [
            0,
            16,
            17,
            capacity - 16,
            capacity,
            capacity + 16,
            u64::MAX,
            u64::MAX - 15,
            1 << 40,
            rng.below(4 * capacity) & !15,
        ];
        let value = if rng.below(2) == 0 {
            interesting[rng.below(interesting.len() as u64) as usize]
        } else {
            rng.next_u64()
        };
        match rng.below(4) {
            // A header field.
            0 | 1 => {
                let off = FIELDS[rng.below(FIELDS.len() as u64) as usize];
                let _ = memfd.write_all_at(&value.to_le_bytes(), off);
            }
            // A record header somewhere in the data area.
            2 => {
                let at = 4096 + (rng.below(capacity) & !15);
                let mut h = [0u8; 16];
                h[0..4].copy_from_slice(&(value as u32).to_le_bytes());
                h[4..8].copy_from_slice(&(1 + rng.below(6) as u32).to_le_bytes());
                h[8..16].copy_from_slice(&rng.below(1 << 20).to_le_bytes());
                let _ = memfd.write_all_at(&h, at);
            }
            // Data bytes.
            _ => {
                let at = 4096 + rng.below(capacity);
                let _ = memfd.write_all_at(&value.to_le_bytes()[..(rng.below(8) + 1) as usize], at);
            }
        }
        n += 1;
        if n.is_multiple_of(64) {
            // Wake the victim so it looks.
            let _ = (&link).write(&[1]);
        }
    }
}

/// The `rewrite` method: see the file's documentation.
fn rewrite(memfd: OwnedFd, link: UnixStream, capacity: u32, credit: shmbus::CreditSpec) {
    let file = std::fs::File::from(memfd.try_clone().expect("dup memfd"));
    let mut tx = RingProducer::open(memfd, capacity, credit).expect("a valid ring");
    let _ = link.set_nonblocking(true);
    // Rings the caller's doorbell after every publish: a spare byte only
    // costs the caller a drain.
    let send = |tx: &mut RingProducer, item: &[u8]| loop {
        let charge = credit.strategy.fixed_charge(item.len()).unwrap_or(1);
        match tx.try_reserve(item.len(), charge).expect("a valid ring") {
            Ok(slot) => {
                tx.slot_buf(&slot)[..item.len()].copy_from_slice(item);
                tx.commit(&slot, item.len(), charge);
                let _ = tx.publish();
                let _ = (&link).write(&[1]);
                return;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    };
    // Item 0 is the stream's first record: at the start of the data area.
    send(&mut tx, &[b'A'; 64]);
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    let at = HEADER_SIZE as u64;
    file.write_all_at(&[b'B'; 64], at + RECORD_HEADER as u64)
        .expect("rewrite the payload");
    let mut header = [0u8; RECORD_HEADER];
    header[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
    header[4..8].copy_from_slice(&99u32.to_le_bytes());
    header[8..16].copy_from_slice(&(1u64 << 40).to_le_bytes());
    file.write_all_at(&header, at)
        .expect("rewrite the record header");
    say("rewritten");
    for i in 1..=8u8 {
        send(&mut tx, &[i; 64]);
    }
    while !tx.try_write_control(&Control::End).expect("a valid ring") {
        std::thread::sleep(Duration::from_millis(1));
    }
    let _ = tx.publish();
    let _ = (&link).write(&[1]);
    // Keep the doorbell open a while: the caller reads to the end first.
    std::thread::sleep(Duration::from_secs(5));
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let name = args.get(1).cloned().unwrap_or_else(|| "evil".into());
    let seconds: f64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1.0);
    let sock = UnixStream::connect(shmbus::default_socket_path()).expect("connect");
    send(
        &sock,
        &Frame::Hello {
            version: PROTOCOL_VERSION,
            caps: shmbus::Capabilities {
                shared_memory: true,
            },
        },
    );
    let mut reader = Reader {
        sock: sock.try_clone().unwrap(),
        buf: Vec::new(),
        fds: VecDeque::new(),
    };
    assert!(matches!(reader.next(), Some((Frame::Welcome { .. }, _))));
    send(
        &sock,
        &Frame::Register {
            request: 1,
            service: name,
            methods: vec![
                MethodSpec::new("down", StreamMode::Download),
                MethodSpec::new("up", StreamMode::Upload),
                MethodSpec::new("rewrite", StreamMode::Download),
                MethodSpec::new("blob", StreamMode::Download),
            ],
        },
    );
    assert!(matches!(reader.next(), Some((Frame::Ack { .. }, _))));
    say("ready");
    let mut seed = 1;
    while let Some((f, fds)) = reader.next() {
        let Frame::Incoming {
            open: Some(open),
            method,
            args,
            ..
        } = f
        else {
            continue;
        };
        let mut fds = fds.into_iter();
        if method == "blob" {
            let kind: String = postcard::from_bytes(&args).unwrap_or_default();
            let link = UnixStream::from(fds.next().expect("a link"));
            let ring = fds.next().map(|m| (m, open.ring_size, open.credit));
            std::thread::spawn(move || blob::attack(&kind, link, ring));
            continue;
        }
        let (Some(link), Some(memfd)) = (fds.next(), fds.next()) else {
            continue;
        };
        if method == "rewrite" {
            let (capacity, credit) = (open.ring_size, open.credit);
            std::thread::spawn(move || rewrite(memfd, UnixStream::from(link), capacity, credit));
            continue;
        }
        seed += 1;
        let capacity = open.ring_size as u64;
        std::thread::spawn(move || {
            attack(
                std::fs::File::from(memfd),
                UnixStream::from(link),
                capacity,
                seconds,
                seed,
            )
        });
    }
}
