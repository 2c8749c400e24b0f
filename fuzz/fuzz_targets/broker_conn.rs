//! The broker's connection handling fed arbitrary bytes and descriptors over
//! a real socket: the input is a series of chunks, each sent with 0–3
//! descriptors attached; every frame read goes through the router. The
//! broker must never panic, whatever arrives.
#![no_main]

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;

use libfuzzer_sys::fuzz_target;
use shmbus::sys;
use shmbusd::config::Limits;
use shmbusd::conn::{Conn, ReadError};
use shmbusd::router::Router;

fuzz_target!(|data: &[u8]| {
    let (client, server) = UnixStream::pair().unwrap();
    server.set_nonblocking(true).unwrap();
    client.set_nonblocking(true).unwrap();
    let creds = sys::peer_credentials(&server).unwrap();
    let mut router = Router::new(Limits::default());
    if router.connect(1, creds).is_err() {
        return;
    }
    let mut conn = Conn::new(mio::net::UnixStream::from_std(server), creds);
    let bait = shmbus::ring::create_memfd("bait", 4096, 1).unwrap();
    let mut scratch = Vec::new();
    let mut rest = data;
    while let Some((&ctl, tail)) = rest.split_first() {
        let len = (ctl as usize >> 2).min(tail.len());
        let fds: Vec<_> = (0..(ctl & 3)).map(|_| bait.as_fd()).collect();
        let (chunk, next) = tail.split_at(len);
        rest = next;
        if chunk.is_empty() || sys::send_with_fds(client.as_fd(), chunk, &fds, false).is_err() {
            continue;
        }
        match conn.read_frames(Limits::default().max_frame, &mut scratch) {
            Ok((frames, _)) => {
                for (frame, fds) in frames {
                    let _ = router.handle(1, frame, fds);
                }
            }
            Err(ReadError::Violation(_)) | Err(ReadError::Closed) | Err(ReadError::Io(_)) => {
                let _ = router.disconnect(1);
                return;
            }
        }
    }
    let _ = router.disconnect(1);
});
