//! The broker process: a single-threaded mio loop that accepts connections,
//! reads frames, hands them to the [`Router`] and writes what it returns.

use std::collections::HashMap;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::time::Instant;

use mio::net::{UnixListener, UnixStream};
use mio::{Events, Interest, Poll, Token};
use shmbus::frame::{ErrorCode, Frame, RemoteError};
use shmbus::sys;
use tracing::{debug, info, warn};

use crate::config::Limits;
use crate::conn::{Conn, ReadError};
use crate::router::{ConnId, Output, Router};

const LISTENER: Token = Token(0);
const SIGNALS: Token = Token(1);
const FIRST_CONN: u64 = 16;

/// A running broker.
pub struct Server {
    poll: Poll,
    listener: Option<UnixListener>,
    socket_path: Option<PathBuf>,
    signals: UnixStream,
    stop_writer: StdUnixStream,
    conns: HashMap<ConnId, Conn>,
    router: Router,
    limits: Limits,
    next_conn: ConnId,
    started: Instant,
    /// Connections whose read budget ran out with data possibly left.
    again: Vec<ConnId>,
}

/// Stops a running [`Server`].
pub struct StopHandle(StdUnixStream);

impl StopHandle {
    /// Asks the broker to stop; it finishes the current event first.
    pub fn stop(&self) {
        let _ = io::Write::write(&mut &self.0, &[1]);
    }
}

/// Binds `path`, creating its directory; refuses when a broker already answers there.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if path.exists() {
        if StdUnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("a broker already listens on {}", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    UnixListener::bind(path)
}

impl Server {
    /// Prepares a broker on a bound listener. SIGTERM and SIGINT stop it.
    pub fn new(
        listener: UnixListener,
        socket_path: Option<PathBuf>,
        limits: Limits,
    ) -> io::Result<Self> {
        let poll = Poll::new()?;
        let mut listener = listener;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let (sig_read, sig_write) = StdUnixStream::pair()?;
        sig_read.set_nonblocking(true)?;
        sig_write.set_nonblocking(true)?;
        let mut signals = UnixStream::from_std(sig_read);
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        Ok(Server {
            poll,
            listener: Some(listener),
            socket_path,
            signals,
            stop_writer: sig_write,
            conns: HashMap::new(),
            router: Router::new(limits.clone()),
            limits,
            next_conn: FIRST_CONN,
            started: Instant::now(),
            again: Vec::new(),
        })
    }

    /// Makes SIGTERM and SIGINT stop the broker.
    pub fn stop_on_signals(&self) -> io::Result<()> {
        for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            signal_hook::low_level::pipe::register(sig, self.stop_writer.try_clone()?)?;
        }
        Ok(())
    }

    /// A handle that stops the broker from another thread.
    pub fn stop_handle(&self) -> io::Result<StopHandle> {
        Ok(StopHandle(self.stop_writer.try_clone()?))
    }

    /// Runs until stopped.
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(256);
        info!(socket = ?self.socket_path, "broker ready");
        loop {
            // Connections with unread input get another turn before sleeping.
            let timeout = (!self.again.is_empty()).then_some(std::time::Duration::ZERO);
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(),
                    SIGNALS => {
                        if self.take_signal() {
                            self.shutdown();
                            return Ok(());
                        }
                    }
                    Token(t) => {
                        let conn = t as ConnId;
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.readable(conn);
                        }
                        if event.is_writable() {
                            self.flush(conn);
                        }
                    }
                }
            }
            for conn in std::mem::take(&mut self.again) {
                self.readable(conn);
            }
        }
    }

    fn take_signal(&mut self) -> bool {
        let mut buf = [0u8; 16];
        let mut got = false;
        while let Ok(n) = io::Read::read(&mut &self.signals, &mut buf) {
            if n == 0 {
                break;
            }
            got = true;
        }
        got
    }

    fn shutdown(&mut self) {
        info!(
            connections = self.conns.len(),
            live_calls = self.router.live_calls(),
            uptime_s = self.started.elapsed().as_secs(),
            "stopping"
        );
        self.listener = None;
        if let Some(p) = &self.socket_path {
            let _ = std::fs::remove_file(p);
        }
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            if let Some(c) = self.conns.get_mut(&id) {
                let _ = c.queue(
                    &Frame::Error(RemoteError {
                        code: ErrorCode::ShuttingDown,
                        message: "broker shutting down".into(),
                    }),
                    Vec::new(),
                    usize::MAX,
                );
                let _ = c.flush();
            }
        }
        self.conns.clear();
    }

    fn accept(&mut self) {
        loop {
            let Some(listener) = self.listener.as_ref() else {
                return;
            };
            let (mut sock, _) = match listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    return;
                }
            };
            let creds = match sys::peer_credentials(&sock.as_fd()) {
                Ok(c) => c,
                Err(e) => {
                    warn!(error = %e, "no peer credentials; dropping connection");
                    continue;
                }
            };
            if self.conns.len() >= self.limits.max_connections {
                warn!(
                    pid = creds.pid,
                    uid = creds.uid,
                    "connection limit reached; refusing"
                );
                continue;
            }
            let id = self.next_conn;
            self.next_conn += 1;
            if let Err(e) =
                self.poll
                    .registry()
                    .register(&mut sock, Token(id as usize), Interest::READABLE)
            {
                warn!(error = %e, "register failed");
                continue;
            }
            debug!(conn = id, pid = creds.pid, uid = creds.uid, "connected");
            self.router.connect(id, creds);
            self.conns.insert(id, Conn::new(sock, creds));
        }
    }

    fn readable(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let result = conn.read_frames(self.limits.max_frame);
        let (frames, end) = match result {
            Ok((frames, more)) => {
                if more && !self.again.contains(&id) {
                    self.again.push(id);
                }
                (frames, None)
            }
            Err(e) => (Vec::new(), Some(e)),
        };
        for (frame, fds) in frames {
            let outputs = self.router.handle(id, frame, fds);
            self.apply(outputs);
            if !self.conns.contains_key(&id) {
                return;
            }
        }
        match end {
            None => {}
            Some(ReadError::Closed) => self.drop_conn(id, "disconnected"),
            Some(ReadError::Io(e)) => self.drop_conn(id, &format!("socket error: {e}")),
            Some(ReadError::Violation(msg)) => {
                self.close_with_error(
                    id,
                    RemoteError {
                        code: ErrorCode::ProtocolViolation,
                        message: msg,
                    },
                );
            }
        }
    }

    fn apply(&mut self, outputs: Vec<Output>) {
        for out in outputs {
            match out {
                Output::Send { to, frame, fds } => {
                    let Some(conn) = self.conns.get_mut(&to) else {
                        continue;
                    };
                    if conn.closing {
                        continue;
                    }
                    if !conn.queue(&frame, fds, self.limits.max_queued_bytes) {
                        self.drop_conn(to, "too far behind reading its socket");
                        continue;
                    }
                    self.flush(to);
                }
                Output::Close { conn, error } => self.close_with_error(conn, error),
            }
        }
    }

    fn close_with_error(&mut self, id: ConnId, error: RemoteError) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        warn!(conn = id, pid = conn.creds.pid, uid = conn.creds.uid, error = %error.message, "closing connection");
        let _ = conn.queue(&Frame::Error(error), Vec::new(), usize::MAX);
        conn.closing = true;
        let _ = conn.flush();
        self.drop_conn(id, "protocol violation");
    }

    fn flush(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        match conn.flush() {
            Ok(done) => {
                let interest = if done {
                    Interest::READABLE
                } else {
                    Interest::READABLE | Interest::WRITABLE
                };
                let token = Token(id as usize);
                let _ = self
                    .poll
                    .registry()
                    .reregister(&mut conn.sock, token, interest);
            }
            Err(e) => self.drop_conn(id, &format!("write failed: {e}")),
        }
    }

    fn drop_conn(&mut self, id: ConnId, why: &str) {
        let Some(mut conn) = self.conns.remove(&id) else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut conn.sock);
        debug!(
            conn = id,
            pid = conn.creds.pid,
            uid = conn.creds.uid,
            why,
            "connection closed"
        );
        drop(conn);
        let outputs = self.router.disconnect(id);
        self.apply(outputs);
    }
}
