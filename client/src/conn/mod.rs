//! A connection to the broker: the handshake, the routing of incoming frames
//! to the calls and services waiting for them, and a writer shared by every
//! call and stream on the connection.
//!
//! Who reads the socket is decided in `leader`; how frames are cut out of
//! it, in `reader`; how a link is made and made again, in `connect`.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::Duration;

use shmbus::frame::{
    self, BrokerSnapshot, BrokerStatus, CallId, Capabilities, ErrorCode, Frame, MonitorEvent,
    RemoteError, RequestId, StreamOpen, FRAME_HEADER_LEN,
};
use shmbus::sys;

use crate::error::{Error, Result};

#[cfg(feature = "tokio")]
mod asynchronous;
mod connect;
mod leader;
mod mailbox;
mod reader;

pub(crate) use leader::HeldReader;
pub(crate) use mailbox::Mailbox;
use mailbox::{mailbox, Post};

use connect::{establish, spawn_reader, write_bytes};
use leader::ReadToken;

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
    /// The call's deadline on this process's clock.
    pub deadline: Option<std::time::Instant>,
    pub cancelled: Arc<AtomicBool>,
    /// The broker connection the call arrived on.
    pub origin: Arc<BrokerLink>,
}

pub(crate) enum Reply {
    Ack,
    Refused(RemoteError),
    List(BrokerSnapshot),
    Status(BrokerStatus),
}

/// One live connection to the broker: its socket, the frames waiting to be
/// written, and where arriving frames go (calls, requests, services). Shared
/// by the reader thread and every call and stream made on it. Replaced by a
/// new one when the client reconnects.
pub(crate) struct BrokerLink {
    writer: Mutex<UnixStream>,
    /// Frames held back by one thread until it flushes them in one write.
    corked: Mutex<Option<(thread::ThreadId, Vec<u8>)>>,
    /// The right to read the socket; see [`BrokerLink::wait_for`].
    token: Mutex<ReadToken>,
    /// Wakes the reader thread when input waits and nobody else reads.
    watch: sys::Watch,
    calls: Mutex<HashMap<CallId, Post<CallEvent>>>,
    requests: Mutex<HashMap<RequestId, Post<Reply>>>,
    services: Mutex<HashMap<String, Post<IncomingRaw>>>,
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
    pub(crate) state: Arc<ConnectionState>,
}

/// What a [`Connection`] is across reconnects: the broker link in use now,
/// and what it takes to make a new one (path, options, services to register
/// again). Closes the link's socket when the last handle goes, which ends
/// the reader thread.
pub(crate) struct ConnectionState {
    /// The live broker connection; replaced when the client reconnects.
    current: Mutex<Arc<BrokerLink>>,
    path: PathBuf,
    options: ConnectOptions,
    /// Services to register again after a reconnect, with their call queues.
    registrations: Mutex<Vec<Registration>>,
}

/// A service registered on this connection: name, methods, and where its calls go.
type Registration = (String, Vec<frame::MethodSpec>, Post<IncomingRaw>);

/// The broker link a call, service call or stream was made on: they keep
/// talking to that link (never to a later one after a reconnect), and keep
/// the connection's state alive while they exist.
#[derive(Clone)]
pub(crate) struct CallLink {
    pub(crate) broker: Arc<BrokerLink>,
    _state: Arc<ConnectionState>,
}

impl CallLink {
    pub(crate) fn new(state: Arc<ConnectionState>, broker: Arc<BrokerLink>) -> Self {
        CallLink {
            broker,
            _state: state,
        }
    }
}

impl ConnectionState {
    /// The broker link in use now.
    pub(crate) fn link(&self) -> Arc<BrokerLink> {
        self.current.lock().unwrap().clone()
    }
}

impl Drop for ConnectionState {
    fn drop(&mut self) {
        if let Ok(w) = self.link().writer.lock() {
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
        let shared = Arc::new(ConnectionState {
            current: Mutex::new(inner.clone()),
            path: path.to_path_buf(),
            options,
            registrations: Mutex::default(),
        });
        spawn_reader(inner, Arc::downgrade(&shared))?;
        Ok(Connection { state: shared })
    }

    pub(crate) fn link(&self) -> Arc<BrokerLink> {
        self.state.link()
    }

    /// Whether this connection may use shared-memory ports.
    pub fn shared_memory(&self) -> bool {
        self.link().caps.shared_memory
    }

    /// Bytes this connection has read from its broker socket so far.
    pub fn socket_bytes_read(&self) -> u64 {
        self.link().bytes_read.load(Ordering::Relaxed)
    }

    /// The broker's version, uptime and counters.
    pub fn status(&self) -> Result<BrokerStatus> {
        match self.link().request(|request| Frame::Status { request })? {
            Reply::Status(s) => Ok(s),
            Reply::Refused(e) => Err(Error::Remote(e)),
            _ => Err(Error::Protocol("unexpected reply to status".into())),
        }
    }

    /// Subscribes to stream events (open, end, error, cancel) from now on.
    /// The receiver ends when the connection closes.
    pub fn monitor(&self) -> Result<mpsc::Receiver<MonitorEvent>> {
        let (tx, rx) = mpsc::channel();
        *self.link().monitor.lock().unwrap() = Some(tx);
        match self.link().request(|request| Frame::Monitor { request })? {
            Reply::Ack => Ok(rx),
            Reply::Refused(e) => Err(Error::Remote(e)),
            _ => Err(Error::Protocol("unexpected reply to monitor".into())),
        }
    }

    /// True once the broker announced it is stopping: new calls fail.
    pub fn broker_stopping(&self) -> bool {
        self.link().draining.load(Ordering::Acquire)
    }

    /// A snapshot of the broker's services and live streams.
    pub fn list(&self) -> Result<BrokerSnapshot> {
        snapshot(self.link().request(|request| Frame::List { request })?)
    }

    pub(crate) fn register_raw(
        &self,
        service: &str,
        methods: Vec<frame::MethodSpec>,
    ) -> Result<Mailbox<IncomingRaw>> {
        let pending = self.begin_register(service, methods)?;
        let reply = pending.link.wait_for(&pending.reply);
        self.end_register(pending, reply.ok())
    }

    /// Sends a registration; the broker's reply arrives in the returned
    /// registration's `reply` mailbox.
    pub(crate) fn begin_register(
        &self,
        service: &str,
        methods: Vec<frame::MethodSpec>,
    ) -> Result<PendingRegistration> {
        let link = self.link();
        let (post, incoming) = mailbox();
        match link.services.lock().unwrap().entry(service.to_string()) {
            // A name held here is registered (or being registered) with the
            // broker until its handle drops: the broker would refuse it, and
            // the refusal must not take the name's calls from the one who
            // holds it.
            Entry::Occupied(_) => {
                return Err(Error::Remote(RemoteError {
                    code: ErrorCode::NameTaken,
                    message: format!("service {service} is already registered on this connection"),
                }))
            }
            Entry::Vacant(slot) => {
                slot.insert(post.clone());
            }
        }
        let kept = methods.clone();
        let reply = link.send_request(|request| Frame::Register {
            request,
            service: service.to_string(),
            methods,
        });
        let reply = match reply {
            Ok(reply) => reply,
            Err(e) => {
                link.services.lock().unwrap().remove(service);
                return Err(e);
            }
        };
        Ok(PendingRegistration {
            link,
            service: service.to_string(),
            methods: kept,
            post,
            incoming,
            reply,
        })
    }

    /// Completes a registration with the broker's reply (`None`: the
    /// connection closed first).
    pub(crate) fn end_register(
        &self,
        pending: PendingRegistration,
        reply: Option<Reply>,
    ) -> Result<Mailbox<IncomingRaw>> {
        let PendingRegistration {
            link,
            service,
            methods,
            post,
            incoming,
            ..
        } = pending;
        match reply {
            Some(Reply::Ack) => {
                self.state
                    .registrations
                    .lock()
                    .unwrap()
                    .push((service, methods, post));
                Ok(incoming)
            }
            other => {
                link.services.lock().unwrap().remove(&service);
                match other {
                    None => Err(Error::BrokerGone),
                    Some(Reply::Refused(e)) => Err(Error::Remote(e)),
                    Some(_) => Err(Error::Protocol("unexpected reply to register".into())),
                }
            }
        }
    }
}

impl Connection {
    /// Ends a registration whose handle went: the name takes no more calls
    /// on this connection and is not registered again after a reconnect,
    /// the broker frees it, and the calls that arrived for it and were
    /// never taken fail with `NoSuchService` (their callers must not wait
    /// for an answer that will not come).
    pub(crate) fn unregister_raw(&self, service: &str, incoming: &Mailbox<IncomingRaw>) {
        let link = {
            let mut registrations = self.state.registrations.lock().unwrap();
            registrations.retain(|(name, _, _)| name != service);
            // Taken under the registrations' lock, under which a reconnect
            // puts its new link in place: either this is the new link, or
            // the reconnect sees the name gone and withdraws it there.
            self.link()
        };
        link.abandon_registration(service, incoming);
    }
}

/// A registration sent to the broker and not yet answered.
pub(crate) struct PendingRegistration {
    link: Arc<BrokerLink>,
    service: String,
    methods: Vec<frame::MethodSpec>,
    post: Post<IncomingRaw>,
    incoming: Mailbox<IncomingRaw>,
    /// Where the broker's reply arrives.
    pub(crate) reply: Mailbox<Reply>,
}

impl BrokerLink {
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
        struct Uncork<'a>(&'a BrokerLink);
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
    pub(crate) fn expect_call(&self, call: CallId) -> Result<Mailbox<CallEvent>> {
        if self.draining.load(Ordering::Acquire) {
            return Err(Error::Remote(RemoteError {
                code: ErrorCode::ShuttingDown,
                message: "the broker is shutting down".into(),
            }));
        }
        let (tx, rx) = mailbox();
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

    /// Withdraws a registration sent on this link whose handle is gone (or
    /// whose answer nobody waits for any more): the name takes no calls
    /// here, the calls that arrived for it and were never taken fail with
    /// `NoSuchService`, and the broker frees the name if this connection
    /// holds it (it ignores the request otherwise).
    pub(crate) fn abandon_registration(&self, service: &str, incoming: &Mailbox<IncomingRaw>) {
        self.withdraw(service);
        while let Ok(raw) = incoming.try_recv() {
            raw.origin.refuse_served(raw.call, service);
        }
    }

    /// Takes `service` off this link and tells the broker to free it. A
    /// call that still arrives for it is refused by the reader, which finds
    /// no queue for it.
    fn withdraw(&self, service: &str) {
        // Under this lock the reader posts a call or answers it itself:
        // past it, nothing more is posted.
        self.services.lock().unwrap().remove(service);
        let _ = self.send(&Frame::Unregister {
            service: service.to_string(),
        });
    }

    /// Answers a call that arrived for `service` when no handle of it was
    /// left to take it: `NoSuchService`.
    pub(crate) fn refuse_served(&self, call: CallId, service: &str) {
        self.forget_served(call);
        let _ = self.send(&Frame::Result {
            call,
            outcome: Err(RemoteError {
                code: ErrorCode::NoSuchService,
                message: format!("service {service} is no longer served"),
            }),
        });
    }

    fn request(self: &Arc<Self>, make: impl FnOnce(RequestId) -> Frame) -> Result<Reply> {
        let rx = self.send_request(make)?;
        self.wait_for(&rx).map_err(|_| Error::BrokerGone)
    }

    /// Sends a request; its reply arrives in the returned mailbox, which
    /// disconnects if the connection closes first.
    fn send_request(&self, make: impl FnOnce(RequestId) -> Frame) -> Result<Mailbox<Reply>> {
        let id = self.next_id();
        let (tx, rx) = mailbox();
        self.requests.lock().unwrap().insert(id, tx);
        if self.closed.load(Ordering::Acquire) {
            self.requests.lock().unwrap().remove(&id);
            return Err(Error::BrokerGone);
        }
        if let Err(e) = self.send(&make(id)) {
            self.requests.lock().unwrap().remove(&id);
            return Err(e);
        }
        Ok(rx)
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
                time_left_us,
            } => {
                // On this process's clock, from the time left the broker
                // gave: the two never compare clocks.
                let deadline = time_left_us.and_then(|us| {
                    std::time::Instant::now().checked_add(Duration::from_micros(us))
                });
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
                    deadline,
                    cancelled,
                    origin: self.clone(),
                };
                let delivered = match self.services.lock().unwrap().get(&service) {
                    Some(tx) => tx.send(raw).is_ok(),
                    None => false,
                };
                if !delivered {
                    self.refuse_served(call, &service);
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

/// A `list` request's reply as the broker's snapshot.
fn snapshot(reply: Reply) -> Result<BrokerSnapshot> {
    match reply {
        Reply::List(s) => Ok(s),
        Reply::Refused(e) => Err(Error::Remote(e)),
        _ => Err(Error::Protocol("unexpected reply to list".into())),
    }
}
