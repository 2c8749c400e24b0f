//! `shmbus-evil`: a hostile service for the tests. It speaks the control
//! protocol by hand and, once a stream is open, writes random and
//! adversarial values into the shared ring (header, positions, credit, record
//! headers, data) as fast as it can, rings the doorbell now and then, and
//! tries to resize the ring. Methods: `down` (it produces, the caller
//! consumes) and `up` (the caller produces, it consumes).
//!
//! Usage: `shmbus-evil NAME SECONDS` with `SHMBUS_SOCKET` set. Prints
//! `ready`, then per call `resize-refused` when both resizes failed.

use std::collections::VecDeque;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use shmbus::frame::{self, Frame, MethodSpec, StreamMode, PROTOCOL_VERSION};
use shmbus_tests::Rng;

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
            ],
        },
    );
    assert!(matches!(reader.next(), Some((Frame::Ack { .. }, _))));
    say("ready");
    let mut seed = 1;
    while let Some((f, fds)) = reader.next() {
        let Frame::Incoming {
            open: Some(open), ..
        } = f
        else {
            continue;
        };
        let mut fds = fds.into_iter();
        let (Some(link), Some(memfd)) = (fds.next(), fds.next()) else {
            continue;
        };
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
