//! Hostile peers at scale: a peer scribbling on shared memory, and a flood
//! of malformed connections, while legitimate streams run.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shmbus_client::{CreditSpec, Error, StreamMode, TransportPreference};
use shmbus_tests::{bin, Broker, Peer, RawClient, Rng};

const SEC: Duration = Duration::from_secs(1);

/// A legitimate download running beside the attack; returns items received.
fn good_stream(broker: &Broker, count: u64) -> std::thread::JoinHandle<u64> {
    let conn = broker.connect();
    std::thread::spawn(move || {
        let mut call = conn
            .call("nums", "numbers")
            .mode(StreamMode::Download)
            .args_typed(&count)
            .unwrap()
            .credit(CreditSpec::items(64))
            .start()
            .unwrap();
        let rx = call.receiver().unwrap();
        let mut next = 0;
        while let Some(v) = rx.recv::<u64>().unwrap() {
            assert_eq!(v, next, "legitimate stream corrupted");
            next += 1;
        }
        call.finish().unwrap();
        next
    })
}

type Lines = std::io::Lines<std::io::BufReader<std::process::ChildStdout>>;

/// Starts `shmbus-evil` (attacks lasting `seconds`) and waits until it serves.
fn start_evil(broker: &Broker, seconds: &str) -> (std::process::Child, Lines) {
    let mut evil = Command::new(bin("shmbus-evil"))
        .args(["evil", seconds])
        .env("SHMBUS_SOCKET", &broker.socket)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(evil.stdout.take().unwrap()));
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    (evil, lines)
}

#[derive(Debug, Default)]
struct Outcomes {
    protocol: u32,
    other: Vec<String>,
}

#[test]
fn a_peer_scribbling_on_the_ring_hurts_only_its_own_stream() {
    let broker = Broker::start();
    let _nums = Peer::serve(&broker, &["numbers", "nums"]);
    let (mut evil, mut lines) = start_evil(&broker, "0.5");
    let good = good_stream(&broker, 200_000);
    let conn = broker.connect();
    let mut outcomes = Outcomes::default();
    let trials = 24;
    for trial in 0..trials {
        let upload = trial % 2 == 1;
        let started = Instant::now();
        let started_call = conn
            .call("evil", if upload { "up" } else { "down" })
            .mode(if upload {
                StreamMode::Upload
            } else {
                StreamMode::Download
            })
            .credit(CreditSpec::bytes(4096))
            .ring_size(8192)
            .transport(TransportPreference::SharedMemory)
            .start();
        // The peer may spoil the header before we map: the port is refused.
        let mut call = match started_call {
            Ok(c) => c,
            Err(Error::Protocol(m)) => {
                assert!(m.contains("refusing stream port"), "{m}");
                outcomes.protocol += 1;
                continue;
            }
            Err(e) => panic!("trial {trial}: {e:?}"),
        };
        let end = if upload {
            let tx = call.sender().unwrap();
            let mut i = 0u64;
            loop {
                if let Err(e) = tx.send_bytes(&i.to_le_bytes()) {
                    break Err(e);
                }
                i += 1;
            }
        } else {
            let rx = call.receiver().unwrap();
            loop {
                match rx.recv_bytes() {
                    Ok(Some(_)) => {}
                    other => break other.map(|_| ()),
                }
            }
        };
        let took = started.elapsed();
        // The attack lasts 0.5 s; the victim must be free soon after.
        assert!(took < 3 * SEC, "trial {trial} took {took:?}: {end:?}");
        match end {
            Err(Error::Protocol(_)) => outcomes.protocol += 1,
            other => outcomes.other.push(format!("{other:?}")),
        }
        drop(call);
    }
    assert!(
        outcomes.protocol * 10 >= trials * 8,
        "most attacks must be caught as protocol errors: {outcomes:?}"
    );
    for o in &outcomes.other {
        // Anything else is a clean, typed end: never a panic or a hang.
        assert!(
            o.contains("Cancelled")
                || o.contains("PeerGone")
                || o.contains("Stream")
                || o == "Ok(())",
            "{o}"
        );
    }
    // The peer could not resize a single ring.
    for _ in 0..trials {
        assert_eq!(lines.next().unwrap().unwrap(), "resize-refused");
    }
    assert_eq!(good.join().unwrap(), 200_000);
    let _ = evil.kill();
    let _ = evil.wait();
}

#[test]
fn a_peer_rewriting_an_item_held_in_place_changes_only_the_bytes_in_view() {
    let broker = Broker::start();
    let mut evil = Command::new(bin("shmbus-evil"))
        .args(["evil", "0"])
        .env("SHMBUS_SOCKET", &broker.socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut to_evil = evil.stdin.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(evil.stdout.take().unwrap()));
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    let conn = broker.connect();
    // One item of credit: the peer cannot send item 1 before item 0 is released.
    let mut call = conn
        .call("evil", "rewrite")
        .mode(StreamMode::Download)
        .credit(CreditSpec::items(1))
        .ring_size(8192)
        .transport(TransportPreference::SharedMemory)
        .start()
        .unwrap();
    let rx = call.receiver().unwrap();
    {
        let item = rx.recv_in_place().unwrap().expect("item 0");
        assert_eq!(item.to_vec(), [b'A'; 64]);
        // The peer rewrites the item's payload and record header in the
        // ring while this view is held.
        std::io::Write::write_all(&mut to_evil, b"hold\n").unwrap();
        assert_eq!(lines.next().unwrap().unwrap(), "rewritten");
        // The view is the ring itself: it shows the peer's new bytes...
        assert_eq!(item.to_vec(), [b'B'; 64]);
        // ...but the item's length and charge are the receiver's own copy
        // of the header, validated when the item arrived.
        assert_eq!(item.len(), 64);
        assert_eq!(item.charge(), 1);
    } // released by the receiver's copy of the record, not the ring's header
    assert_eq!((rx.items_received(), rx.bytes_received()), (1, 64));
    for i in 1..=8u8 {
        let item = rx.recv_bytes().unwrap();
        assert_eq!(item.as_deref(), Some(&[i; 64][..]), "item {i}");
    }
    assert_eq!(
        rx.credit_outstanding(),
        1,
        "credit granted again as accounted"
    );
    assert_eq!(rx.recv_bytes().unwrap(), None, "stream-end");
    assert!(rx.is_finished());
    assert_eq!((rx.items_received(), rx.bytes_received()), (9, 9 * 64));
    drop(call);
    let _ = evil.kill();
    let _ = evil.wait();
}

#[test]
fn a_flood_of_malformed_connections_leaves_streams_and_the_broker_intact() {
    let broker = Broker::start();
    let _nums = Peer::serve(&broker, &["numbers", "nums"]);
    let baseline_fds = broker.fd_baseline();
    let rss = |pid: u32| -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap()
    };
    let rss_before = rss(broker.pid());
    let good: Vec<_> = (0..16).map(|_| good_stream(&broker, 20_000)).collect();
    let memfd = shmbus::ring::create_memfd("bait", 4096, 1).unwrap();
    let mut rng = Rng::new(42);
    let offenders = 2000;
    let mut errors = 0;
    for i in 0..offenders {
        let mut c = RawClient::connect(&broker);
        let mut hello = Vec::new();
        shmbus::frame::encode(
            &shmbus::Frame::Hello {
                version: shmbus::frame::PROTOCOL_VERSION,
                caps: Default::default(),
            },
            &mut hello,
        );
        use std::os::fd::AsFd;
        let fd = memfd.as_fd();
        let sent = match i % 8 {
            // Random bytes with a plausible length.
            0 => {
                let mut b: Vec<u8> = (0..64).map(|_| rng.next_u64() as u8).collect();
                b[..5].copy_from_slice(&[59, 0, 0, 0, 0]);
                c.send_raw(&b, &[])
            }
            // An absurd length prefix.
            1 => c.send_raw(&[0xff, 0xff, 0xff, 0x7f, 0], &[]),
            // A wrong version.
            2 => {
                let mut b = hello.clone();
                let last = b.len() - 1;
                b[last - 1] = 9;
                c.send_raw(&b, &[])
            }
            // Valid frame, wrong state.
            3 => {
                let mut b = Vec::new();
                shmbus::frame::encode(&shmbus::Frame::Cancel { call: 1 }, &mut b);
                c.send_raw(&b, &[])
            }
            // A descriptor on a frame that takes none.
            4 => c.send_raw(&hello, &[fd]),
            // More descriptors than any frame takes (253 is the kernel's limit).
            5 => {
                let many: Vec<_> = (0..253).map(|_| fd).collect();
                c.send_raw(&hello, &many)
            }
            // A header declaring descriptors that never come.
            6 => {
                let mut b = hello.clone();
                b[4] = 2;
                c.send_raw(&b, &[])
            }
            // A truncated frame, then hang up.
            _ => c.send_raw(&hello[..hello.len() - 2], &[]),
        };
        if sent.is_err() || i % 8 == 7 {
            continue;
        }
        match c.recv() {
            Some((shmbus::Frame::Error(_), _)) | None => errors += 1,
            Some((shmbus::Frame::Welcome { .. }, _)) => {
                // A version the broker would not take is refused after welcome? Never.
                panic!("offender {i} was welcomed")
            }
            other => panic!("offender {i}: {other:?}"),
        }
    }
    assert!(
        errors >= offenders * 7 / 8 - 1,
        "{errors} offenders got an error"
    );
    for g in good {
        assert_eq!(g.join().unwrap(), 20_000, "legitimate stream lost items");
    }
    broker.wait_fds(baseline_fds);
    let rss_after = rss(broker.pid());
    assert!(
        rss_after < rss_before + 16 * 1024,
        "broker RSS grew from {rss_before} kB to {rss_after} kB"
    );
    // Still serving.
    assert_eq!(good_stream(&broker, 1000).join().unwrap(), 1000);
}

fn own_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Each way a sender can break the blob rules, over both ports: the
/// caller's stream fails naming what was wrong, before anything is mapped;
/// a legitimate stream, the broker and the caller's descriptors are
/// untouched.
#[test]
fn hostile_blob_senders_are_refused_before_mapping() {
    let broker = Broker::start();
    let _nums = Peer::serve(&broker, &["numbers", "nums"]);
    let (mut evil, mut lines) = start_evil(&broker, "0");
    let conn = broker.connect();
    let broker_fds = broker.fd_baseline();
    let good = good_stream(&broker, 300_000);
    let cases = [
        (
            "unsealed",
            "lacks F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE",
        ),
        ("future-write", "lacks F_SEAL_WRITE"),
        ("writable-mapping", "lacks F_SEAL_WRITE"),
        ("size-lie", "holds 4096 bytes, the sender declared 8192"),
        ("shrunk", "holds 100 bytes, the sender declared 8192"),
        ("grown", "holds 1048576 bytes, the sender declared 4096"),
        ("pipe", "not a memfd (a pipe)"),
        ("socket", "not a memfd (a socket)"),
        ("dev-zero", "not a memfd (a character device)"),
        ("directory", "not a memfd (a directory)"),
        ("many-fds", "too many file descriptors"),
        ("no-fd", "without its descriptor"),
        ("stray-fds", "descriptors without blob"),
    ];
    let fds_before = own_fds();
    for transport in [
        TransportPreference::SharedMemory,
        TransportPreference::Socket,
    ] {
        for (kind, expected) in cases {
            let mut call = conn
                .call("evil", "blob")
                .args_typed(&kind)
                .unwrap()
                .transport(transport)
                .credit(CreditSpec::items(8))
                .start()
                .unwrap();
            let started = Instant::now();
            let got = call.receiver().unwrap().recv_blob();
            assert!(
                started.elapsed() < 3 * SEC,
                "{kind}: took {:?}",
                started.elapsed()
            );
            match got {
                Err(Error::Protocol(m)) => {
                    assert!(m.contains(expected), "{kind} over {transport:?}: {m}")
                }
                other => panic!("{kind} over {transport:?}: {other:?}"),
            }
            if kind == "writable-mapping" {
                assert_eq!(lines.next().unwrap().unwrap(), "seal-ebusy");
            }
            call.cancel().unwrap();
            drop(call);
        }
    }
    // Every descriptor that arrived was closed with its stream.
    shmbus_tests::wait_until(5 * SEC, || own_fds() <= fds_before);
    assert_eq!(good.join().unwrap(), 300_000);
    broker.wait_fds(broker_fds);
    let _ = evil.kill();
    let _ = evil.wait();
}
