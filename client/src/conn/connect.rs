//! Making a broker link: connecting and the handshake, the reader thread,
//! and after the broker went away, connecting again and registering the
//! connection's services again.

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, Weak};
use std::thread;
use std::time::Duration;

use shmbus::frame::{self, Capabilities, Frame, DEFAULT_MAX_FRAME, PROTOCOL_VERSION};
use shmbus::sys;

use super::leader::{read_loop, ReadToken};
use super::reader::FrameReader;
use super::{BrokerLink, ConnectOptions, ConnectionState};
use crate::error::{Error, Result};

pub(super) fn spawn_reader(inner: Arc<BrokerLink>, shared: Weak<ConnectionState>) -> Result<()> {
    inner.watch.arm()?;
    thread::Builder::new()
        .name("shmbus-reader".into())
        .spawn(move || {
            read_loop(inner);
            reconnect(shared);
        })?;
    Ok(())
}

/// After the broker went away: connect again with back-off while any handle
/// of the connection lives, then register its services again.
fn reconnect(shared: Weak<ConnectionState>) {
    let mut delay = Duration::from_millis(50);
    loop {
        thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_secs(2));
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let Ok(inner) = establish(&shared.path, &shared.options) else {
            continue;
        };
        let registrations = shared.registrations.lock().unwrap().clone();
        for (name, _, tx) in &registrations {
            inner
                .services
                .lock()
                .unwrap()
                .insert(name.clone(), tx.clone());
        }
        if spawn_reader(inner.clone(), Arc::downgrade(&shared)).is_err() {
            continue;
        }
        let names: Vec<String> = registrations.iter().map(|r| r.0.clone()).collect();
        for (name, methods, _) in registrations {
            let _ = inner.request(|request| Frame::Register {
                request,
                service: name,
                methods,
            });
        }
        // The new link takes over under the registrations' lock; a service
        // dropped since the copy above unregistered on the old link, so it
        // is withdrawn here (see `Connection::unregister_raw`).
        let gone: Vec<String> = {
            let now = shared.registrations.lock().unwrap();
            *shared.current.lock().unwrap() = inner.clone();
            names
                .into_iter()
                .filter(|name| !now.iter().any(|r| r.0 == *name))
                .collect()
        };
        for name in gone {
            inner.withdraw(&name);
        }
        return;
    }
}

/// Connects and completes the handshake; the reader thread is not started yet.
pub(super) fn establish(path: &Path, options: &ConnectOptions) -> Result<Arc<BrokerLink>> {
    let sock = UnixStream::connect(path).map_err(|source| Error::BrokerUnreachable {
        path: path.display().to_string(),
        source,
    })?;
    let hello = Frame::Hello {
        version: PROTOCOL_VERSION,
        caps: Capabilities {
            shared_memory: options.shared_memory,
        },
    };
    // A broker refusing the connection (a quota) sends its reason and
    // closes, possibly before the hello arrives: read it either way.
    let sent = write_frame(&sock, &hello);
    let mut reader = FrameReader::new(sock.try_clone()?, DEFAULT_MAX_FRAME);
    let first = match (reader.next(), sent) {
        (Ok(Some((Frame::Error(e), _))), _) => return Err(Error::Remote(e)),
        (_, Err(e)) => return Err(e),
        (r, Ok(())) => r?,
    };
    let (caps, max_frame) = match first {
        Some((
            Frame::Welcome {
                version,
                caps,
                max_frame,
            },
            _,
        )) if version == PROTOCOL_VERSION => (caps, max_frame),
        Some((Frame::Error(e), _)) => return Err(Error::Remote(e)),
        Some((other, _)) => {
            return Err(Error::Protocol(format!(
                "expected welcome, got {}",
                other.kind()
            )))
        }
        None => return Err(Error::BrokerGone),
    };
    reader.max_frame = max_frame;
    let watch = sys::Watch::new(sock.as_fd())?;
    let inner = Arc::new(BrokerLink {
        writer: Mutex::new(sock),
        corked: Mutex::new(None),
        token: Mutex::new(ReadToken {
            reader: Some(reader),
            dead: false,
        }),
        watch,
        calls: Mutex::default(),
        requests: Mutex::default(),
        services: Mutex::default(),
        served: Mutex::default(),
        monitor: Mutex::default(),
        next_id: AtomicU64::new(1),
        closed: AtomicBool::new(false),
        draining: AtomicBool::new(false),
        bytes_read: AtomicU64::new(0),
        caps,
        max_frame,
    });
    Ok(inner)
}

fn write_frame(sock: &UnixStream, frame: &Frame) -> Result<()> {
    let mut buf = Vec::new();
    frame::encode(frame, &mut buf);
    write_bytes(sock, &buf)
}

pub(super) fn write_bytes(sock: &UnixStream, buf: &[u8]) -> Result<()> {
    let mut rest = buf;
    while !rest.is_empty() {
        let n = sys::send_with_fds(sock.as_fd(), rest, &[], true)?;
        rest = &rest[n..];
    }
    Ok(())
}
