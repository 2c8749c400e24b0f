//! The `blob` method of `shmbus-evil`: a sender that breaks the blob rules
//! one way per call (the call's argument, a postcard string, names it),
//! over whichever port the caller chose, then keeps its end open.
//!
//! Kinds: `unsealed`, `future-write` (only `F_SEAL_FUTURE_WRITE`, which
//! leaves writes through an older mapping possible), `writable-mapping`
//! (sealing fails with EBUSY, which it prints as `seal-ebusy`, and it sends
//! the memfd anyway), `size-lie`, `shrunk` and `grown` (resized before
//! sealing, declared at the old size), `pipe`, `socket`, `dev-zero`,
//! `directory`, `many-fds` (253 descriptors on one message), `no-fd` (a
//! record without a descriptor) and `stray-fds` (descriptors without
//! records).

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use memmap2::MmapOptions;
use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use shmbus::credit::{blob_charge, CreditSpec};
use shmbus::link::LinkEncoder;
use shmbus::ring::{RingProducer, BLOB_RECORD};

use super::say;

fn memfd(len: u64) -> File {
    let f = File::from(shmbus::sys::create_blob_memfd("evil").expect("memfd"));
    f.set_len(len).expect("size");
    f
}

fn seal(f: &File, seals: SealFlag) {
    fcntl(f, FcntlArg::F_ADD_SEALS(seals)).expect("seal");
}

/// What the attack sends: descriptors (none for `no-fd`), the declared
/// size, whether a record follows, and what must stay alive meanwhile.
struct Payload {
    fds: Vec<OwnedFd>,
    declared: u64,
    record: bool,
    _keep: Vec<Box<dyn std::any::Any + Send>>,
}

fn payload(kind: &str) -> Payload {
    let sealed = || {
        let f = memfd(4096);
        seal(&f, shmbus::sys::blob_seals());
        f
    };
    let one = |f: OwnedFd, declared: u64| Payload {
        fds: vec![f],
        declared,
        record: true,
        _keep: Vec::new(),
    };
    match kind {
        "unsealed" => one(memfd(4096).into(), 4096),
        "future-write" => {
            let f = memfd(4096);
            seal(
                &f,
                SealFlag::F_SEAL_FUTURE_WRITE
                    | SealFlag::F_SEAL_SHRINK
                    | SealFlag::F_SEAL_GROW
                    | SealFlag::F_SEAL_SEAL,
            );
            one(f.into(), 4096)
        }
        "writable-mapping" => {
            let f = memfd(4096);
            // SAFETY: the process's own fresh memfd, written only here.
            let map = unsafe { MmapOptions::new().len(4096).map_mut(&f).expect("map") };
            match shmbus::blob::Blob::seal_memfd(f.try_clone().expect("dup").into()) {
                Err(shmbus::blob::BlobError::WritableMapping) => say("seal-ebusy"),
                other => say(&format!("seal-unexpected {other:?}")),
            }
            seal(&f, SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW);
            Payload {
                _keep: vec![Box::new(map)],
                ..one(f.into(), 4096)
            }
        }
        "size-lie" => one(sealed().into(), 8192),
        "shrunk" | "grown" => {
            let f = memfd(if kind == "shrunk" { 8192 } else { 4096 });
            f.set_len(if kind == "shrunk" { 100 } else { 1 << 20 })
                .expect("resize");
            seal(&f, shmbus::sys::blob_seals());
            one(f.into(), if kind == "shrunk" { 8192 } else { 4096 })
        }
        "pipe" => {
            let (r, w) = nix::unistd::pipe().expect("pipe");
            Payload {
                _keep: vec![Box::new(w)],
                ..one(r, 0)
            }
        }
        "socket" => {
            let (a, b) = UnixStream::pair().expect("socketpair");
            Payload {
                _keep: vec![Box::new(b)],
                ..one(a.into(), 0)
            }
        }
        "dev-zero" => one(File::open("/dev/zero").expect("/dev/zero").into(), 0),
        "directory" => one(File::open("/").expect("/").into(), 0),
        "many-fds" => {
            let f = sealed();
            Payload {
                fds: (0..253)
                    .map(|_| f.try_clone().expect("dup").into())
                    .collect(),
                declared: 4096,
                record: true,
                _keep: Vec::new(),
            }
        }
        "no-fd" => Payload {
            fds: Vec::new(),
            declared: 4096,
            record: true,
            _keep: Vec::new(),
        },
        "stray-fds" => Payload {
            fds: (0..3).map(|_| sealed().into()).collect(),
            declared: 4096,
            record: false,
            _keep: Vec::new(),
        },
        other => panic!("unknown blob attack {other:?}"),
    }
}

/// Runs one attack over the port: `ring` is the shared-memory port's
/// ring, `None` over the socket port.
pub fn attack(kind: &str, link: UnixStream, ring: Option<(OwnedFd, u32, CreditSpec)>) {
    let p = payload(kind);
    let fds: Vec<BorrowedFd<'_>> = p.fds.iter().map(|f| f.as_fd()).collect();
    match ring {
        Some((memfd, capacity, credit)) => {
            let mut tx = RingProducer::open(memfd, capacity, credit).expect("a valid ring");
            // Each descriptor on a message of its own (stray), or all on one.
            if kind == "stray-fds" {
                for fd in &fds {
                    send(&link, &[0; 8], &[*fd]);
                }
            } else if !fds.is_empty() {
                send(&link, &[0; 8], &fds);
            }
            if p.record {
                let charge = blob_charge(credit.strategy, p.declared).unwrap_or(1);
                let slot = tx
                    .try_reserve(BLOB_RECORD, charge)
                    .expect("a valid ring")
                    .expect("room for the first record");
                tx.commit_blob(&slot, p.declared, charge);
                let _ = tx.publish();
                send(&link, &[0; 8], &[]);
            }
            // Keep the ring mapped and the doorbell open while the victim looks.
            std::thread::sleep(Duration::from_secs(5));
            drop(tx);
        }
        None => {
            if kind == "stray-fds" {
                // Descriptors on bytes that start no message: a blob
                // message's first byte, never finished.
                for fd in &fds {
                    send(&link, &[0], &[*fd]);
                }
            } else {
                let mut enc = LinkEncoder::new();
                // Credit of a socket port's stream: the caller's default.
                enc.blob(p.declared, 1);
                let bytes = enc.bytes().to_vec();
                send(&link, &bytes, &fds);
            }
            std::thread::sleep(Duration::from_secs(5));
        }
    }
    drop(p);
}

fn send(link: &UnixStream, bytes: &[u8], fds: &[BorrowedFd<'_>]) {
    let _ = shmbus::sys::send_with_fds(link.as_fd(), bytes, fds, true);
}
