//! The broker process: a single-threaded mio loop, the I/O around the
//! I/O-free [`Router`]. Each turn it takes the time once, accepts
//! connections (with their `SO_PEERCRED` identity), reads and cuts frames
//! ([`Conn`]), hands them to the router with that time, and carries out the
//! [`Output`]s it returns (queueing and writing frames with their
//! descriptors, closing connections, reporting descriptors delivered). It
//! creates the port maker ([`Ports`], which starts the ring pool's thread)
//! and gives it to the router, and wakes the pool once a turn's frames are
//! sent. It also owns the process's lifecycle: stop (drain, then exit),
//! reload, and the service manager's notifications.

use std::collections::HashMap;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mio::net::UnixListener;
use mio::{Events, Interest, Poll, Token};
use shmbus::frame::{ErrorCode, Frame, RemoteError};
use shmbus::sys;
use tracing::{debug, error, info, warn};

use crate::config::{Limits, Settings};
use crate::conn::{Conn, ReadError};
use crate::log_limit::LogLimit;
use crate::logging::LogHandle;
use crate::notify::Notifier;
use crate::ports::Ports;
use crate::router::{ConnId, Output, Router};
use crate::signals::{SignalPipe, Trigger};

const LISTENER: Token = Token(0);
const STOP: Token = Token(1);
const RELOAD: Token = Token(2);
const FIRST_CONN: u64 = 16;

/// How long calls in flight may take to finish once the broker is asked to stop.
pub const STOP_GRACE: Duration = Duration::from_secs(4);

/// How long a connection is not read after a turn in which its calls were
/// refused for exceeding its limits. A client retrying refused calls in a
/// loop would otherwise take the broker's time from everyone else; one that
/// hits its limit now and then waits this much once.
pub const REFUSED_PAUSE: Duration = Duration::from_millis(2);

/// Stops a running [`Server`].
pub type StopHandle = Trigger;

/// Re-reads the configuration on reload.
pub type Reloader = Box<dyn FnMut() -> Result<Settings, String> + Send>;

/// A running broker.
pub struct Server {
    poll: Poll,
    listener: Option<UnixListener>,
    socket_path: Option<PathBuf>,
    /// Where the broker listens, for the log: the path, and how it got the socket.
    listening: String,
    stop: SignalPipe,
    reload: SignalPipe,
    conns: HashMap<ConnId, Conn>,
    router: Router<Ports>,
    limits: Limits,
    next_conn: ConnId,
    started: Instant,
    /// Connections whose read budget ran out with data possibly left.
    again: Vec<ConnId>,
    /// Connections not read until the given time, because their calls were
    /// refused for exceeding their limits (see [`REFUSED_PAUSE`]). They are
    /// read at that time whether or not new input was signalled.
    paused: HashMap<ConnId, Instant>,
    /// Keeps a user's connections closed for violations from flooding the log.
    log_limit: LogLimit,
    notifier: Notifier,
    reloader: Option<Reloader>,
    log: Option<LogHandle>,
    settings: Option<Settings>,
    stop_deadline: Option<Instant>,
    /// Receive space shared by every connection.
    read_chunk: Vec<u8>,
}

/// Where a listener listens, in plain words: the path of a socket the broker
/// bound itself, else the path (when it has one) and descriptor of the socket
/// the service manager passed.
fn describe_listener(listener: &UnixListener, owned: Option<&Path>) -> String {
    use std::os::fd::AsRawFd;
    if let Some(path) = owned {
        return path.display().to_string();
    }
    let fd = listener.as_raw_fd();
    let path = listener.local_addr().ok().and_then(|a| {
        a.as_pathname()
            .filter(|p| !p.as_os_str().is_empty())
            .map(|p| p.display().to_string())
    });
    match path {
        Some(path) => format!("{path} (socket activation, fd {fd})"),
        None => format!("socket activation, fd {fd}"),
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
    /// Prepares a broker on a bound listener. `socket_path` is removed at
    /// exit (pass `None` for a socket the service manager owns). It runs until
    /// stopped through a [`StopHandle`] or, after
    /// [`handle_signals`](Self::handle_signals), by SIGTERM or SIGINT.
    pub fn new(
        listener: UnixListener,
        socket_path: Option<PathBuf>,
        limits: Limits,
    ) -> io::Result<Self> {
        let poll = Poll::new()?;
        let listening = describe_listener(&listener, socket_path.as_deref());
        let mut listener = listener;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let mut stop = SignalPipe::new()?;
        let mut reload = SignalPipe::new()?;
        poll.registry()
            .register(&mut stop.rx, STOP, Interest::READABLE)?;
        poll.registry()
            .register(&mut reload.rx, RELOAD, Interest::READABLE)?;
        let started = Instant::now();
        Ok(Server {
            poll,
            listener: Some(listener),
            socket_path,
            listening,
            stop,
            reload,
            conns: HashMap::new(),
            router: Router::new(limits.clone(), Ports::start(), started),
            limits,
            next_conn: FIRST_CONN,
            started,
            again: Vec::new(),
            paused: HashMap::new(),
            log_limit: LogLimit::default(),
            notifier: Notifier::from_env(),
            reloader: None,
            log: None,
            settings: None,
            stop_deadline: None,
            read_chunk: Vec::new(),
        })
    }

    /// SIGTERM and SIGINT stop the broker, SIGHUP reloads it.
    pub fn handle_signals(&self) -> io::Result<()> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        self.stop.route(&[SIGTERM, SIGINT])?;
        self.reload.route(&[SIGHUP])
    }

    /// How to re-read the configuration on SIGHUP, and the settings now in force.
    pub fn set_reloader(&mut self, current: Settings, reloader: Reloader, log: LogHandle) {
        self.settings = Some(current);
        self.reloader = Some(reloader);
        self.log = Some(log);
    }

    /// A handle that stops the broker from another thread.
    pub fn stop_handle(&self) -> io::Result<StopHandle> {
        self.stop.trigger()
    }

    fn status_line(&self) -> String {
        format!(
            "{} connections, {} services, {} streams",
            self.conns.len(),
            self.router.services(),
            self.router.live_streams()
        )
    }

    /// Runs until stopped: after a stop request, calls in flight get
    /// [`STOP_GRACE`] to finish.
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(256);
        info!(socket = %self.listening, "broker ready");
        let status = self.status_line();
        self.notifier.ready(&status);
        loop {
            // Connections with unread input get another turn before sleeping.
            let mut timeout = self.notifier.next_wakeup();
            if !self.again.is_empty() {
                timeout = Some(Duration::ZERO);
            }
            if let Some(&resume) = self.paused.values().min() {
                let left = resume.saturating_duration_since(Instant::now());
                timeout = Some(timeout.map_or(left, |t| t.min(left)));
            }
            if let Some(deadline) = self.stop_deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                timeout = Some(timeout.map_or(left, |t| t.min(left)));
            }
            if let Some(deadline) = self.router.next_deadline() {
                let left = deadline.saturating_duration_since(Instant::now());
                timeout = Some(timeout.map_or(left, |t| t.min(left)));
            }
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            // The time of this turn: every frame it reads is handled at it,
            // after the deadlines it has passed. A result read now that
            // came after its call's deadline (the broker was slow to wake)
            // finds the call already failed with `DeadlineExceeded`.
            let now = Instant::now();
            let expired = self.router.expire(now);
            self.apply(expired);
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(now),
                    STOP => {
                        if self.stop.take() {
                            self.begin_stop();
                        }
                    }
                    RELOAD => {
                        if self.reload.take() {
                            self.reload_config();
                        }
                    }
                    Token(t) => {
                        let conn = t as ConnId;
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.readable(conn, now);
                        }
                        if event.is_writable() {
                            self.flush(conn);
                        }
                    }
                }
            }
            if !self.paused.is_empty() {
                let due: Vec<ConnId> = self
                    .paused
                    .iter()
                    .filter(|(_, &at)| at <= now)
                    .map(|(&id, _)| id)
                    .collect();
                for id in due {
                    self.paused.remove(&id);
                    if !self.again.contains(&id) {
                        self.again.push(id);
                    }
                }
            }
            for conn in std::mem::take(&mut self.again) {
                self.readable(conn, now);
            }
            let expired = self.router.expire(now);
            self.apply(expired);
            self.router.ports().refill();
            self.notifier.tick();
            let status = self.status_line();
            self.notifier.status(status);
            if let Some(deadline) = self.stop_deadline {
                if self.router.live_calls() == 0 || Instant::now() >= deadline {
                    self.finish_stop();
                    return Ok(());
                }
            }
        }
    }

    fn begin_stop(&mut self) {
        if self.stop_deadline.is_some() {
            info!("second stop request: stopping now");
            self.stop_deadline = Some(Instant::now());
            return;
        }
        info!(
            connections = self.conns.len(),
            live_calls = self.router.live_calls(),
            uptime_s = self.started.elapsed().as_secs(),
            "stopping: no new calls; calls in flight may finish"
        );
        self.notifier.stopping("stopping: draining calls in flight");
        if let Some(mut l) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        if let Some(p) = &self.socket_path {
            let _ = std::fs::remove_file(p);
        }
        self.router.drain();
        let grace_ms = STOP_GRACE.as_millis() as u32;
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        let notices = ids
            .into_iter()
            .map(|to| Output::Send {
                to,
                frame: Frame::ShuttingDown { grace_ms },
                fds: Vec::new(),
            })
            .collect();
        self.apply(notices);
        self.stop_deadline = Some(Instant::now() + STOP_GRACE);
    }

    fn finish_stop(&mut self) {
        let left = self.router.live_calls();
        if left > 0 {
            warn!(
                calls = left,
                "grace period over: failing the calls still in flight"
            );
        }
        let outputs = self
            .router
            .abort_all("the broker stopped before the call finished");
        self.apply(outputs);
        for conn in self.conns.values_mut() {
            let _ = conn.flush();
        }
        self.conns.clear();
        info!("stopped");
    }

    fn reload_config(&mut self) {
        self.notifier.reloading();
        let Some(reloader) = self.reloader.as_mut() else {
            info!("reload requested, but no configuration source is set");
            let status = self.status_line();
            self.notifier.ready(&status);
            return;
        };
        match reloader() {
            Ok(new) => {
                if let Some(old) = &self.settings {
                    if old.socket != new.socket
                        || old.socket_mode != new.socket_mode
                        || old.socket_group != new.socket_group
                    {
                        warn!("socket settings changed: they take effect at the next start");
                    }
                }
                if let Some(log) = &self.log {
                    if let Err(e) = log.set_level(&new.log_level) {
                        warn!(error = %e, "log level not applied");
                    }
                }
                self.limits = new.limits.clone();
                self.router.set_limits(new.limits.clone());
                info!(limits = ?new.limits, "configuration reloaded");
                self.settings = Some(new);
            }
            Err(e) => error!("reload failed, keeping the running configuration: {e}"),
        }
        let status = self.status_line();
        self.notifier.ready(&status);
    }

    fn accept(&mut self, now: Instant) {
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
            let mut conn = Conn::new(sock, creds);
            if let Err(error) = self.router.connect(id, creds, now) {
                let _ = self.poll.registry().deregister(&mut conn.sock);
                let _ = conn.queue(&Frame::Error(error), Vec::new(), usize::MAX);
                let _ = conn.flush();
                continue;
            }
            self.conns.insert(id, conn);
        }
    }

    fn readable(&mut self, id: ConnId, now: Instant) {
        if self.paused.contains_key(&id) {
            // Read when the pause ends; the input waits in the socket.
            return;
        }
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let result = conn.read_frames(self.limits.max_frame, &mut self.read_chunk);
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
            let outputs = self.router.handle(id, frame, fds, now);
            self.apply(outputs);
            if !self.conns.contains_key(&id) {
                return;
            }
        }
        if self.router.take_refused(id) {
            // Whatever else it sent is still read, a pause later.
            self.paused.insert(id, now + REFUSED_PAUSE);
            self.again.retain(|&c| c != id);
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
        if let Some(more) = self.log_limit.admit(conn.creds.uid, Instant::now()) {
            warn!(conn = id, pid = conn.creds.pid, uid = conn.creds.uid, error = %error.message, "closing connection{more}");
        }
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
            Ok((done, delivered)) => {
                if delivered > 0 {
                    self.router.fds_delivered(id, delivered);
                }
                if conn.want_write != done {
                    // Registered as needed already: spare the epoll_ctl.
                    return;
                }
                conn.want_write = !done;
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
        self.paused.remove(&id);
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
