//! A connection to the broker: the handshake, the routing of incoming frames
//! to the calls and services waiting for them, and a writer shared by every
//! call and stream on the connection.
//!
//! One thread at a time reads the socket. A thread waiting for its own reply
//! (stream-open, result, incoming call) reads itself when nobody else does,
//! routing whatever else arrives meanwhile; the connection's reader thread
//! reads only while no thread waits, woken by a one-shot watch that is armed
//! whenever the socket is free.

use std::collections::{HashMap, VecDeque};
use std::net::Shutdown;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, Weak};
use std::thread;
use std::time::Duration;

use shmbus::frame::{
    self, BrokerSnapshot, BrokerStatus, CallId, Capabilities, ErrorCode, Frame, MonitorEvent,
    RemoteError, RequestId, StreamOpen, DEFAULT_MAX_FRAME, FRAME_HEADER_LEN, PROTOCOL_VERSION,
};
use shmbus::sys;

use crate::error::{Error, Result};

pub use shmbus::{default_socket_path, SOCKET_ENV};

/// What the reader thread hands to a waiting call.
pub(crate) enum CallEvent {
    /// stream-open with its descriptors.
    Open(StreamOpen, Vec<OwnedFd>),
    /// The call's outcome.
    Result(std::result::Result<Vec<u8>, RemoteError>),
}

/// A call that arrived for a registered service, before its ports are set up.
pub(crate) struct IncomingRaw {
    pub call: CallId,
    pub method: String,
    pub args: Vec<u8>,
    pub open: Option<StreamOpen>,
    pub fds: Vec<OwnedFd>,
    pub caller_pid: i32,
    pub caller_uid: u32,
    pub cancelled: Arc<AtomicBool>,
    /// The broker connection the call arrived on.
    pub origin: Arc<Inner>,
}

/// Whoever holds the frame reader is the one thread reading the broker
/// socket, and routes every frame it reads. A thread waiting for its own
/// reply takes it when free and reads for everyone meanwhile, so its reply
/// needs no hand-over from the reader thread: one wake-up fewer on every
/// call, stream-open and incoming call.
struct ReadToken {
    /// `None` while a thread reads.
    reader: Option<FrameReader>,
    /// The connection failed or ended: nobody reads it again.
    dead: bool,
}

/// What a thread asking for the reader got.
enum Lead {
    Reader(FrameReader),
    /// Another thread reads and will route this one's frames.
    Busy,
    Dead,
}

enum Reply {
    Ack,
    Refused(RemoteError),
    List(BrokerSnapshot),
    Status(BrokerStatus),
}

/// State shared by the reader thread and every handle.
pub(crate) struct Inner {
    writer: Mutex<UnixStream>,
    /// Frames held back by one thread until it flushes them in one write.
    corked: Mutex<Option<(thread::ThreadId, Vec<u8>)>>,
    /// The right to read the socket; see [`Inner::wait_for`].
    token: Mutex<ReadToken>,
    /// Wakes the reader thread when input waits and nobody else reads.
    watch: sys::Watch,
    calls: Mutex<HashMap<CallId, mpsc::Sender<CallEvent>>>,
    requests: Mutex<HashMap<RequestId, mpsc::Sender<Reply>>>,
    services: Mutex<HashMap<String, mpsc::Sender<IncomingRaw>>>,
    served: Mutex<HashMap<CallId, Arc<AtomicBool>>>,
    monitor: Mutex<Option<mpsc::Sender<MonitorEvent>>>,
    next_id: AtomicU64,
    closed: AtomicBool,
    draining: AtomicBool,
    bytes_read: AtomicU64,
    caps: Capabilities,
    max_frame: u32,
}

/// Options for [`Connection::connect_with`].
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Offer shared memory to the broker (default true). A connection
    /// without it streams over sockets.
    pub shared_memory: bool,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            shared_memory: true,
        }
    }
}

/// A connection to a shmbus broker. Cheap to clone; closes when the last
/// clone, call, service and stream made from it are gone.
#[derive(Clone)]
pub struct Connection {
    pub(crate) shared: Arc<Shared>,
}

/// What every handle of a connection shares. Closes the socket when the last
/// public handle goes, which ends the reader.
pub(crate) struct Shared {
    /// The live broker connection; replaced when the client reconnects.
    current: Mutex<Arc<Inner>>,
    path: PathBuf,
    options: ConnectOptions,
    /// Services to register again after a reconnect, with their call queues.
    registrations: Mutex<Vec<Registration>>,
}

/// A service registered on this connection: name, methods, and where its calls go.
type Registration = (String, Vec<frame::MethodSpec>, mpsc::Sender<IncomingRaw>);

/// A handle bound to one broker connection: calls and streams keep talking
/// to the connection they were made on, and keep the whole client alive.
#[derive(Clone)]
pub(crate) struct Bound {
    pub(crate) inner: Arc<Inner>,
    _shared: Arc<Shared>,
}

impl Bound {
    pub(crate) fn new(shared: Arc<Shared>, inner: Arc<Inner>) -> Self {
        Bound {
            inner,
            _shared: shared,
        }
    }
}

impl Shared {
    /// The broker connection in use now.
    pub(crate) fn inner(&self) -> Arc<Inner> {
        self.current.lock().unwrap().clone()
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Ok(w) = self.inner().writer.lock() {
            let _ = w.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Connection {
    /// Connects to the default socket (see [`default_socket_path`]).
    pub fn connect_default() -> Result<Self> {
        Self::connect(default_socket_path())
    }

    /// Connects to the broker at `path`, offering shared memory.
    pub fn connect(path: impl AsRef<Path>) -> Result<Self> {
        Self::connect_with(path, ConnectOptions::default())
    }

    /// Connects with explicit options. When the broker goes away later, the
    /// connection reconnects by itself (with back-off) once a broker listens
    /// again, and registers its services again; calls made meanwhile fail
    /// with [`Error::BrokerGone`].
    pub fn connect_with(path: impl AsRef<Path>, options: ConnectOptions) -> Result<Self> {
        let path = path.as_ref();
        let inner = establish(path, &options)?;
        let shared = Arc::new(Shared {
            current: Mutex::new(inner.clone()),
            path: path.to_path_buf(),
            options,
            registrations: Mutex::default(),
        });
        spawn_reader(inner, Arc::downgrade(&shared))?;
        Ok(Connection { shared })
    }

    pub(crate) fn inner(&self) -> Arc<Inner> {
        self.shared.inner()
    }

    /// Whether this connection may use shared-memory ports.
    pub fn shared_memory(&self) -> bool {
        self.inner().caps.shared_memory
    }

    /// Bytes this connection has read from its broker socket so far.
    pub fn socket_bytes_read(&self) -> u64 {
        self.inner().bytes_read.load(Ordering::Relaxed)
    }

    /// The broker's version, uptime and counters.
    pub fn status(&self) -> Result<BrokerStatus> {
        match self.inner().request(|request| Frame::Status { request })? {
            Reply::Status(s) => Ok(s),
            Reply::Refused(e) => Err(Error::Remote(e)),
            _ => Err(Error::Protocol("unexpected reply to status".into())),
        }
    }

    /// Subscribes to stream events (open, end, error, cancel) from now on.
    /// The receiver ends when the connection closes.
    pub fn monitor(&self) -> Result<mpsc::Receiver<MonitorEvent>> {
        let (tx, rx) = mpsc::channel();
        *self.inner().monitor.lock().unwrap() = Some(tx);
        match self.inner().request(|request| Frame::Monitor { request })? {
            Reply::Ack => Ok(rx),
            Reply::Refused(e) => Err(Error::Remote(e)),
            _ => Err(Error::Protocol("unexpected reply to monitor".into())),
        }
    }

    /// True once the broker announced it is stopping: new calls fail.
    pub fn broker_stopping(&self) -> bool {
        self.inner().draining.load(Ordering::Acquire)
    }

    /// A snapshot of the broker's services and live streams.
    pub fn list(&self) -> Result<BrokerSnapshot> {
        match self.inner().request(|request| Frame::List { request })? {
            Reply::List(s) => Ok(s),
            Reply::Refused(e) => Err(Error::Remote(e)),
            _ => Err(Error::Protocol("unexpected reply to list".into())),
        }
    }

    pub(crate) fn register_raw(
        &self,
        service: &str,
        methods: Vec<frame::MethodSpec>,
    ) -> Result<mpsc::Receiver<IncomingRaw>> {
        let (tx, rx) = mpsc::channel();
        self.inner()
            .services
            .lock()
            .unwrap()
            .insert(service.to_string(), tx.clone());
        let methods_kept = methods.clone();
        let reply = self.inner().request(|request| Frame::Register {
            request,
            service: service.to_string(),
            methods,
        });
        match reply {
            Ok(Reply::Ack) => {
                self.shared.registrations.lock().unwrap().push((
                    service.to_string(),
                    methods_kept,
                    tx,
                ));
                Ok(rx)
            }
            other => {
                self.inner().services.lock().unwrap().remove(service);
                match other? {
                    Reply::Refused(e) => Err(Error::Remote(e)),
                    _ => Err(Error::Protocol("unexpected reply to register".into())),
                }
            }
        }
    }
}

impl Inner {
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends one frame (blocking until the broker takes it).
    pub(crate) fn send(&self, frame: &Frame) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::BrokerGone);
        }
        let mut buf = Vec::new();
        frame::encode(frame, &mut buf);
        if buf.len() - FRAME_HEADER_LEN > self.max_frame as usize {
            return Err(Error::TooLarge(format!(
                "{} frame of {} bytes exceeds the broker's maximum of {}",
                frame.kind(),
                buf.len() - FRAME_HEADER_LEN,
                self.max_frame
            )));
        }
        if let Some((by, held)) = self.corked.lock().unwrap().as_mut() {
            if *by == thread::current().id() {
                held.extend_from_slice(&buf);
                return Ok(());
            }
        }
        self.write(&buf)
    }

    fn write(&self, buf: &[u8]) -> Result<()> {
        let w = self.writer.lock().unwrap();
        write_bytes(&w, buf).map_err(|e| match e {
            Error::Io(_) => Error::BrokerGone,
            other => other,
        })
    }

    /// Runs `f` with this thread's frames held back, then writes them all at
    /// once: the broker wakes once for, say, a stream's close report and the
    /// call's result. Without effect while another thread holds its own.
    pub(crate) fn corked<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let mine = {
            let mut c = self.corked.lock().unwrap();
            let free = c.is_none();
            if free {
                *c = Some((thread::current().id(), Vec::new()));
            }
            free
        };
        if !mine {
            return f();
        }
        // Uncorks even if `f` panics, sending what it held: the thread's
        // later frames must not stay held.
        struct Uncork<'a>(&'a Inner);
        impl Drop for Uncork<'_> {
            fn drop(&mut self) {
                let held = self
                    .0
                    .corked
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .take();
                if let Some((_, buf)) = held.filter(|(_, b)| !b.is_empty()) {
                    let _ = self.0.write(&buf);
                }
            }
        }
        let guard = Uncork(self);
        let r = f();
        let held = self.corked.lock().unwrap().take();
        drop(guard);
        let flushed = match held {
            Some((_, buf)) if !buf.is_empty() => self.write(&buf),
            _ => Ok(()),
        };
        let v = r?;
        flushed.map(|()| v)
    }

    /// Registers a waiter for a call's events.
    pub(crate) fn expect_call(&self, call: CallId) -> Result<mpsc::Receiver<CallEvent>> {
        if self.draining.load(Ordering::Acquire) {
            return Err(Error::Remote(RemoteError {
                code: ErrorCode::ShuttingDown,
                message: "the broker is shutting down".into(),
            }));
        }
        let (tx, rx) = mpsc::channel();
        self.calls.lock().unwrap().insert(call, tx);
        if self.closed.load(Ordering::Acquire) {
            self.calls.lock().unwrap().remove(&call);
            return Err(Error::BrokerGone);
        }
        Ok(rx)
    }

    pub(crate) fn forget_call(&self, call: CallId) {
        self.calls.lock().unwrap().remove(&call);
    }

    pub(crate) fn forget_served(&self, call: CallId) {
        self.served.lock().unwrap().remove(&call);
    }

    fn request(self: &Arc<Self>, make: impl FnOnce(RequestId) -> Frame) -> Result<Reply> {
        let id = self.next_id();
        let (tx, rx) = mpsc::channel();
        self.requests.lock().unwrap().insert(id, tx);
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::BrokerGone);
        }
        if let Err(e) = self.send(&make(id)) {
            self.requests.lock().unwrap().remove(&id);
            return Err(e);
        }
        self.wait_for(&rx).map_err(|_| Error::BrokerGone)
    }

    /// Waits for what the broker sends to `rx`. When no other thread reads
    /// the socket, this one does (routing whatever else arrives meanwhile)
    /// until its own reply is in; else the reader reads and hands it over.
    pub(crate) fn wait_for<T>(
        self: &Arc<Self>,
        rx: &mpsc::Receiver<T>,
    ) -> std::result::Result<T, mpsc::RecvError> {
        let take = |rx: &mpsc::Receiver<T>| match rx.try_recv() {
            Ok(v) => Some(Ok(v)),
            Err(mpsc::TryRecvError::Disconnected) => Some(Err(mpsc::RecvError)),
            Err(mpsc::TryRecvError::Empty) => None,
        };
        if let Some(r) = take(rx) {
            return r;
        }
        let mut reader = match self.take_token() {
            Lead::Reader(r) => r,
            Lead::Busy | Lead::Dead => return rx.recv(),
        };
        let mut alive = true;
        let got = loop {
            if let Some(r) = take(rx) {
                break Some(r);
            }
            match reader.next_frame(true) {
                Ok(Next::Frame(frame, fds)) => {
                    self.bytes_read.store(reader.bytes_read, Ordering::Relaxed);
                    if self.dispatch(frame, fds).is_err() {
                        alive = false;
                        break None;
                    }
                }
                Ok(Next::WouldBlock) => {}
                Ok(Next::End) | Err(_) => {
                    alive = false;
                    break None;
                }
            }
        };
        // Whole frames already read go out now: nothing would wake the
        // reader thread for them. What is still in the socket fires the
        // watch as soon as it is armed.
        alive = alive && self.drain_buffered(&mut reader);
        self.put_token(reader, alive);
        match got {
            Some(r) => r,
            // The connection ended; the reader thread's clean-up ends the wait.
            None => rx.recv(),
        }
    }

    /// Takes the reader if it is free, and stops the reader thread's watch.
    fn take_token(&self) -> Lead {
        let mut t = self.token.lock().unwrap();
        if t.dead {
            return Lead::Dead;
        }
        match t.reader.take() {
            Some(r) => {
                // Harmless if it fails: the reader thread, woken, finds the
                // reader taken and waits again.
                let _ = self.watch.disarm();
                Lead::Reader(r)
            }
            None => Lead::Busy,
        }
    }

    /// Hands the reader back and arms the reader thread's watch, which fires
    /// at once when input is already waiting. A failed connection is shut
    /// down first, so the reader thread wakes to its end and cleans up.
    fn put_token(&self, reader: FrameReader, alive: bool) {
        let mut t = self.token.lock().unwrap();
        if !alive {
            t.dead = true;
            let _ = reader.sock.shutdown(Shutdown::Both);
        }
        t.reader = Some(reader);
        if self.watch.arm().is_err() {
            // Nothing could wake the reader thread: end the connection here.
            t.dead = true;
            drop(t);
            self.close_all();
        }
    }

    /// Routes every frame readable without waiting; false once the
    /// connection failed or ended.
    fn drain(self: &Arc<Self>, reader: &mut FrameReader) -> bool {
        loop {
            match reader.next_frame(false) {
                Ok(Next::Frame(frame, fds)) => {
                    self.bytes_read.store(reader.bytes_read, Ordering::Relaxed);
                    if self.dispatch(frame, fds).is_err() {
                        return false;
                    }
                }
                Ok(Next::WouldBlock) => return true,
                Ok(Next::End) | Err(_) => return false,
            }
        }
    }

    /// Routes the whole frames already read into the reader's buffer; false
    /// once the connection failed.
    fn drain_buffered(self: &Arc<Self>, reader: &mut FrameReader) -> bool {
        loop {
            match reader.buffered_frame() {
                Ok(Some((frame, fds))) => {
                    if self.dispatch(frame, fds).is_err() {
                        return false;
                    }
                }
                Ok(None) => return true,
                Err(_) => return false,
            }
        }
    }

    /// Marks the connection closed and wakes every waiter with a disconnect.
    fn close_all(&self) {
        self.closed.store(true, Ordering::Release);
        self.token.lock().unwrap().dead = true;
        // Dropping the senders wakes every waiter with a disconnect.
        self.calls.lock().unwrap().clear();
        self.requests.lock().unwrap().clear();
        self.services.lock().unwrap().clear();
        self.monitor.lock().unwrap().take();
        // Calls being served keep streaming: their ports do not need the
        // broker, and a caller that dies still closes its port, which ends them.
    }

    fn dispatch(self: &Arc<Self>, frame: Frame, fds: Vec<OwnedFd>) -> Result<(), String> {
        match frame {
            Frame::StreamOpen(open) => {
                let call = open.call;
                if let Some(tx) = self.calls.lock().unwrap().get(&call) {
                    let _ = tx.send(CallEvent::Open(open, fds));
                }
            }
            Frame::Result { call, outcome } => {
                if let Some(tx) = self.calls.lock().unwrap().remove(&call) {
                    let _ = tx.send(CallEvent::Result(outcome));
                }
            }
            Frame::Incoming {
                call,
                service,
                method,
                args,
                open,
                caller_pid,
                caller_uid,
            } => {
                let cancelled = Arc::new(AtomicBool::new(false));
                self.served.lock().unwrap().insert(call, cancelled.clone());
                let raw = IncomingRaw {
                    call,
                    method,
                    args,
                    open,
                    fds,
                    caller_pid,
                    caller_uid,
                    cancelled,
                    origin: self.clone(),
                };
                let delivered = match self.services.lock().unwrap().get(&service) {
                    Some(tx) => tx.send(raw).is_ok(),
                    None => false,
                };
                if !delivered {
                    self.forget_served(call);
                    let _ = self.send(&Frame::Result {
                        call,
                        outcome: Err(RemoteError {
                            code: frame::ErrorCode::NoSuchService,
                            message: format!("service {service} is no longer served"),
                        }),
                    });
                }
            }
            Frame::Cancel { call } => {
                if let Some(flag) = self.served.lock().unwrap().get(&call) {
                    flag.store(true, Ordering::Release);
                }
            }
            Frame::Ack { request } => self.reply(request, Reply::Ack),
            Frame::Refused { request, error } => self.reply(request, Reply::Refused(error)),
            Frame::ListReply { request, snapshot } => self.reply(request, Reply::List(snapshot)),
            Frame::StatusReply { request, status } => self.reply(request, Reply::Status(status)),
            Frame::Event(ev) => {
                if let Some(tx) = self.monitor.lock().unwrap().as_ref() {
                    let _ = tx.send(ev);
                }
            }
            Frame::ShuttingDown { .. } => self.draining.store(true, Ordering::Release),
            Frame::Error(e) => return Err(format!("broker closed the connection: {}", e.message)),
            other => return Err(format!("unexpected {} frame from broker", other.kind())),
        }
        Ok(())
    }

    fn reply(&self, request: RequestId, reply: Reply) {
        if let Some(tx) = self.requests.lock().unwrap().remove(&request) {
            let _ = tx.send(reply);
        }
    }
}

fn spawn_reader(inner: Arc<Inner>, shared: Weak<Shared>) -> Result<()> {
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
fn reconnect(shared: Weak<Shared>) {
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
        for (name, methods, _) in registrations {
            let _ = inner.request(|request| Frame::Register {
                request,
                service: name,
                methods,
            });
        }
        *shared.current.lock().unwrap() = inner;
        return;
    }
}

/// Connects and completes the handshake; the reader thread is not started yet.
fn establish(path: &Path, options: &ConnectOptions) -> Result<Arc<Inner>> {
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
    let inner = Arc::new(Inner {
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

/// The reader thread: routes what arrives while no other thread reads.
fn read_loop(inner: Arc<Inner>) {
    while inner.watch.wait().is_ok() {
        let mut reader = match inner.take_token() {
            Lead::Reader(r) => r,
            // A waiting thread reads now; it arms the watch when done.
            Lead::Busy => continue,
            Lead::Dead => break,
        };
        if !inner.drain(&mut reader) {
            break;
        }
        inner.put_token(reader, true);
    }
    inner.close_all();
}

fn write_frame(sock: &UnixStream, frame: &Frame) -> Result<()> {
    let mut buf = Vec::new();
    frame::encode(frame, &mut buf);
    write_bytes(sock, &buf)
}

fn write_bytes(sock: &UnixStream, buf: &[u8]) -> Result<()> {
    let mut rest = buf;
    while !rest.is_empty() {
        let n = sys::send_with_fds(sock.as_fd(), rest, &[], true)?;
        rest = &rest[n..];
    }
    Ok(())
}

/// Reads frames and their descriptors from a blocking socket.
pub(crate) struct FrameReader {
    sock: UnixStream,
    /// Zeroed once as it grows; bytes `start..filled` are pending.
    buf: Vec<u8>,
    filled: usize,
    start: usize,
    fds: VecDeque<OwnedFd>,
    pub(crate) max_frame: u32,
    pub(crate) bytes_read: u64,
}

impl FrameReader {
    pub(crate) fn new(sock: UnixStream, max_frame: u32) -> Self {
        FrameReader {
            sock,
            buf: Vec::new(),
            filled: 0,
            start: 0,
            fds: VecDeque::new(),
            max_frame,
            bytes_read: 0,
        }
    }

    /// The next frame, or `None` at a clean end of stream.
    pub(crate) fn next(&mut self) -> Result<Option<(Frame, Vec<OwnedFd>)>> {
        match self.next_frame(true)? {
            Next::Frame(frame, fds) => Ok(Some((frame, fds))),
            Next::End | Next::WouldBlock => Ok(None),
        }
    }

    /// The next frame. Without `block`, [`Next::WouldBlock`] once neither
    /// the buffer nor the socket holds a whole frame.
    pub(crate) fn next_frame(&mut self, block: bool) -> Result<Next> {
        loop {
            if let Some((frame, fds)) = self.buffered_frame()? {
                return Ok(Next::Frame(frame, fds));
            }
            if self.start > 0 {
                self.buf.copy_within(self.start..self.filled, 0);
                self.filled -= self.start;
                self.start = 0;
            }
            let old = self.filled;
            let want = (FRAME_HEADER_LEN + self.max_frame as usize).min(old + 64 * 1024);
            let want = want.max(old + 4096);
            if self.buf.len() < want {
                self.buf.resize(want, 0);
            }
            // Never sleep inside recvmsg: a thread blocked there is woken, for
            // nothing, each time the broker drains what this process sent (the
            // kernel's write-space wake-up is not filtered by event for a
            // blocking read). poll(POLLIN) filters it, so wait there.
            let n = loop {
                let got = sys::recv_with_fds(
                    self.sock.as_fd(),
                    &mut self.buf[old..want],
                    &mut self.fds,
                    false,
                );
                match got {
                    Ok(n) => break n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if !block {
                            return Ok(Next::WouldBlock);
                        }
                        sys::wait_readable(self.sock.as_fd(), None)?;
                    }
                    Err(e) => return Err(e.into()),
                }
            };
            self.filled = old + n;
            self.bytes_read += n as u64;
            if n == 0 {
                return Ok(Next::End);
            }
        }
    }
}

impl FrameReader {
    /// The next whole frame already in the buffer, without reading.
    fn buffered_frame(&mut self) -> Result<Option<(Frame, Vec<OwnedFd>)>> {
        let pending = &self.buf[self.start..self.filled];
        let Some((header, body)) = frame::split_frame(pending, self.max_frame)
            .map_err(|e| Error::Protocol(e.to_string()))?
        else {
            return Ok(None);
        };
        let n = header.fds as usize;
        if self.fds.len() < n {
            return Err(Error::Protocol(
                "frame arrived without its descriptors".into(),
            ));
        }
        let fds: Vec<OwnedFd> = self.fds.drain(..n).collect();
        let frame =
            frame::decode(&pending[body.clone()], n).map_err(|e| Error::Protocol(e.to_string()))?;
        self.start += body.end;
        Ok(Some((frame, fds)))
    }
}

/// What [`FrameReader::next_frame`] found.
pub(crate) enum Next {
    /// A whole frame and its descriptors.
    Frame(Frame, Vec<OwnedFd>),
    /// Nothing more without waiting.
    WouldBlock,
    /// The broker closed the connection.
    End,
}
