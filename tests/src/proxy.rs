//! A TCP proxy on 127.0.0.1 whose path can be dropped without a close,
//! for the tests of what a pulled cable does to the bridge.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A TCP proxy on 127.0.0.1 toward a port there, on plain threads, whose
/// path can be dropped as a pulled cable drops it: nothing crosses any
/// more either way, and no socket is closed (no FIN, no RST).
pub struct TcpProxy {
    port: u16,
    shared: Arc<ProxyShared>,
    accepter: Option<std::thread::JoinHandle<()>>,
}

/// What the proxy's threads share.
#[derive(Default)]
struct ProxyShared {
    state: Mutex<ProxyState>,
    stopped: AtomicBool,
}

/// Whether the path is up, and the sockets the proxy holds.
#[derive(Default)]
struct ProxyState {
    /// False while the path is dropped.
    path_up: bool,
    /// Counts the drops: a connection made before the latest one never
    /// forwards again.
    drops: u64,
    /// Every socket since the path last came back, held open (a dropped
    /// path closes nothing) until it comes back or the proxy goes.
    sockets: Vec<TcpStream>,
}

/// How often a proxy thread looks whether it should stop.
const PROXY_POLL: Duration = Duration::from_millis(20);

impl TcpProxy {
    /// Starts forwarding connections to `target` (a port on 127.0.0.1).
    pub fn start(target: u16) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(ProxyShared::default());
        shared.state.lock().unwrap().path_up = true;
        let s = shared.clone();
        let accepter = std::thread::spawn(move || {
            while !s.stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => s.take(client, target),
                    Err(_) => std::thread::sleep(PROXY_POLL),
                }
            }
        });
        TcpProxy {
            port,
            shared,
            accepter: Some(accepter),
        }
    }

    /// The port the proxy listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Drops the path: what the proxy reads from now on is lost, its
    /// connections are held open and forward nothing, and new ones are
    /// accepted and get nothing.
    pub fn drop_path(&self) {
        let mut state = self.shared.state.lock().unwrap();
        state.path_up = false;
        state.drops += 1;
    }

    /// Brings the path back: the connections held while it was down are
    /// closed, and new ones forward again.
    pub fn restore_path(&self) {
        let mut state = self.shared.state.lock().unwrap();
        for socket in state.sockets.drain(..) {
            let _ = socket.shutdown(Shutdown::Both);
        }
        state.path_up = true;
    }
}

impl ProxyShared {
    /// Whether a connection made after `drops` drops may forward now.
    fn forwards(&self, drops: u64) -> bool {
        let state = self.state.lock().unwrap();
        state.path_up && state.drops == drops && !self.stopped.load(Ordering::Relaxed)
    }

    /// A new connection: joined to `target` while the path is up, held
    /// unanswered while it is down.
    fn take(self: &Arc<Self>, client: TcpStream, target: u16) {
        let _ = client.set_nonblocking(false);
        let mut state = self.state.lock().unwrap();
        let server = match state.path_up {
            true => TcpStream::connect(("127.0.0.1", target)).ok(),
            false => None,
        };
        let Some(server) = server else {
            state.sockets.push(client);
            return;
        };
        for (from, to) in [(&client, &server), (&server, &client)] {
            let (from, to) = (from.try_clone().unwrap(), to.try_clone().unwrap());
            let (s, drops) = (self.clone(), state.drops);
            std::thread::spawn(move || s.pump(from, to, drops));
        }
        state.sockets.extend([client, server]);
    }

    /// Copies `from` to `to` while the path stays up; a close is passed on
    /// only then. Once the path drops, reads nothing more: what was read
    /// is lost, and the sockets stay open.
    fn pump(&self, mut from: TcpStream, mut to: TcpStream, drops: u64) {
        let _ = from.set_read_timeout(Some(PROXY_POLL));
        let _ = (from.set_nodelay(true), to.set_nodelay(true));
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let read = from.read(&mut buf);
            if !self.forwards(drops) {
                return;
            }
            match read {
                Ok(n) if n > 0 => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                _ => break,
            }
        }
        let _ = (from.shutdown(Shutdown::Both), to.shutdown(Shutdown::Both));
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::Relaxed);
        for socket in self.shared.state.lock().unwrap().sockets.drain(..) {
            let _ = socket.shutdown(Shutdown::Both);
        }
        if let Some(accepter) = self.accepter.take() {
            let _ = accepter.join();
        }
    }
}
