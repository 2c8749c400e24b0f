//! Calls: the caller's [`CallBuilder`] and [`Call`], the service's
//! [`Service`] and [`IncomingCall`].

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

use serde::de::DeserializeOwned;
use serde::Serialize;
use shmbus::credit::CreditSpec;
use shmbus::frame::{
    CallId, CallRequest, ErrorCode, FallbackReason, Frame, MethodSpec, RemoteError, StreamId,
    StreamMode, StreamOpen, Transport, TransportPreference,
};

use crate::conn::{Bound, CallEvent, Connection, HeldReader, IncomingRaw};
use crate::error::{Error, Result};
use crate::port::{self, wait::WaitPolicy, PeerResult, Role};
use crate::stream::{Receiver, Sender};

/// Describes a call before it is made. Get one from [`Connection::call`].
#[must_use]
pub struct CallBuilder {
    conn: Connection,
    request: CallRequest,
    policy: WaitPolicy,
}

impl Connection {
    /// Starts describing a call of `method` on `service`.
    pub fn call(&self, service: &str, method: &str) -> CallBuilder {
        CallBuilder {
            conn: self.clone(),
            request: CallRequest {
                call: 0,
                service: service.to_string(),
                method: method.to_string(),
                args: Vec::new(),
                mode: Some(StreamMode::Unary),
                // A high-water mark of 0 takes the broker's default.
                credit: CreditSpec::bytes(0),
                transport: TransportPreference::Auto,
                ring_size: None,
            },
            policy: WaitPolicy::default(),
        }
    }

    /// Registers a service with its methods. Calls arrive through
    /// [`Service::next`].
    pub fn register(&self, service: &str, methods: &[MethodSpec]) -> Result<Service> {
        let rx = self.register_raw(service, methods.to_vec())?;
        Ok(Service {
            conn: self.clone(),
            name: service.to_string(),
            incoming: rx,
        })
    }
}

impl CallBuilder {
    /// Opaque argument bytes.
    pub fn args(mut self, args: impl Into<Vec<u8>>) -> Self {
        self.request.args = args.into();
        self
    }

    /// Arguments encoded with postcard.
    pub fn args_typed<T: Serialize>(mut self, args: &T) -> Result<Self> {
        self.request.args = postcard::to_stdvec(args)?;
        Ok(self)
    }

    /// How items flow; must match the method's registration.
    pub fn mode(mut self, mode: StreamMode) -> Self {
        self.request.mode = Some(mode);
        self
    }

    /// Credit for the stream's directions (default: bytes, with the broker's
    /// default high-water mark).
    pub fn credit(mut self, credit: CreditSpec) -> Self {
        self.request.credit = credit;
        self
    }

    /// Shared memory, socket, or automatic (default).
    pub fn transport(mut self, transport: TransportPreference) -> Self {
        self.request.transport = transport;
        self
    }

    /// Data bytes per ring (a power of two); the broker caps it.
    pub fn ring_size(mut self, bytes: u32) -> Self {
        self.request.ring_size = Some(bytes);
        self
    }

    /// How the call's stream halves wait (default: spin briefly, then sleep,
    /// as long as the peer lives; see [`WaitPolicy::with_stall_timeout`]).
    pub fn wait_policy(mut self, policy: WaitPolicy) -> Self {
        self.policy = policy;
        self
    }

    fn send(self) -> Result<Call> {
        Ok(self.send_leading()?.0)
    }

    /// Sends the call holding the reader (when no other thread reads), for
    /// the first wait on the call: see [`HeldReader`].
    fn send_leading(mut self) -> Result<(Call, HeldReader)> {
        let inner = self.conn.inner().clone();
        let id = inner.next_id();
        self.request.call = id;
        let events = inner.expect_call(id)?;
        let held = inner.lead();
        if let Err(e) = inner.send(&Frame::Call(self.request)) {
            inner.forget_call(id);
            return Err(e);
        }
        let call = Call {
            shared: Bound::new(self.conn.shared.clone(), inner.clone()),
            id,
            events,
            open: None,
            sender: None,
            receiver: None,
            outcome: None,
            peer_result: None,
            cancelled: Arc::new(AtomicBool::new(false)),
            policy: self.policy,
        };
        Ok((call, held))
    }

    /// Makes a unary call and waits for its result.
    pub fn unary(self) -> Result<Vec<u8>> {
        let (call, held) = self.mode(StreamMode::Unary).send_leading()?;
        call.finish_holding(Some(held))
    }

    /// Makes the call and waits until its stream is open (or the call
    /// failed). For a unary mode, returns once the call is sent.
    pub fn start(self) -> Result<Call> {
        let streams = self.request.mode != Some(StreamMode::Unary);
        if !streams {
            return self.send();
        }
        let (mut call, held) = self.send_leading()?;
        call.wait_open(Some(held))?;
        Ok(call)
    }

    /// Batch RPC: collects a streaming method's whole stream, or a unary
    /// method's result, as one list of items. The method's own mode decides.
    pub fn collect(mut self) -> Result<Vec<Vec<u8>>> {
        self.request.mode = None;
        let (mut call, held) = self.send_leading()?;
        if !call.wait_open(Some(held))? {
            return Ok(vec![call.finish()?]);
        }
        let mut items = Vec::new();
        if let Some(rx) = call.receiver.as_mut() {
            while let Some(item) = rx.recv_bytes()? {
                items.push(item);
            }
        }
        if let Some(mut tx) = call.sender.take() {
            tx.finish()?;
        }
        call.finish()?;
        Ok(items)
    }
}

/// A call in progress, on the caller's side.
pub struct Call {
    shared: Bound,
    id: CallId,
    events: mpsc::Receiver<CallEvent>,
    open: Option<StreamOpen>,
    sender: Option<Sender>,
    receiver: Option<Receiver>,
    outcome: Option<std::result::Result<Vec<u8>, RemoteError>>,
    /// Over shared memory, where the service also leaves its result.
    peer_result: Option<PeerResult>,
    cancelled: Arc<AtomicBool>,
    policy: WaitPolicy,
}

impl Call {
    /// Waits for stream-open; false when the call answered without a stream.
    fn wait_open(&mut self, held: Option<HeldReader>) -> Result<bool> {
        match self.shared.inner.wait_holding(held, &self.events) {
            Ok(CallEvent::Open(open, fds)) => {
                self.attach(open, fds)?;
                Ok(true)
            }
            Ok(CallEvent::Result(Err(e))) => Err(Error::Remote(e)),
            Ok(CallEvent::Result(ok)) => {
                self.outcome = Some(ok);
                Ok(false)
            }
            Err(_) => Err(Error::BrokerGone),
        }
    }

    fn attach(&mut self, open: StreamOpen, fds: Vec<OwnedFd>) -> Result<()> {
        let ports = port::open(&open, fds, Role::Caller, &self.cancelled)?;
        self.peer_result = ports.result;
        self.sender = ports.tx.map(|p| {
            let mut s = Sender::new(
                p,
                open.stream,
                open.credit,
                self.cancelled.clone(),
                self.shared.clone(),
            );
            s.set_wait_policy(self.policy);
            s
        });
        self.receiver = ports.rx.map(|p| {
            let mut r = Receiver::new(p, open.stream, self.shared.clone());
            r.set_wait_policy(self.policy);
            r
        });
        self.open = Some(open);
        Ok(())
    }

    /// The caller's call id.
    pub fn id(&self) -> CallId {
        self.id
    }

    /// Broker-wide stream id, for streaming calls.
    pub fn stream_id(&self) -> Option<StreamId> {
        self.open.as_ref().map(|o| o.stream)
    }

    /// How the stream is carried.
    pub fn transport(&self) -> Option<Transport> {
        self.open.as_ref().map(|o| o.transport)
    }

    /// Why shared memory was not used, when it was not.
    pub fn fallback_reason(&self) -> Option<&FallbackReason> {
        self.open.as_ref().and_then(|o| o.fallback.as_ref())
    }

    /// The half that sends to the service (upload, bidirectional).
    pub fn sender(&mut self) -> Option<&mut Sender> {
        self.sender.as_mut()
    }

    /// The half that receives from the service (download, bidirectional).
    pub fn receiver(&mut self) -> Option<&mut Receiver> {
        self.receiver.as_mut()
    }

    /// Takes the sending half, e.g. to move it to another thread.
    pub fn take_sender(&mut self) -> Option<Sender> {
        self.sender.take()
    }

    /// Takes the receiving half.
    pub fn take_receiver(&mut self) -> Option<Receiver> {
        self.receiver.take()
    }

    /// Cancels the call: the service's next send fails as cancelled, and the
    /// result becomes the error "aborted".
    pub fn cancel(&mut self) -> Result<()> {
        self.cancelled.store(true, Ordering::Release);
        if let Some(rx) = self.receiver.as_mut() {
            rx.cancel();
        }
        if let Some(tx) = self.sender.as_mut() {
            if tx.is_open() {
                tx.abort("cancelled by the caller");
            }
        }
        self.shared.inner.send(&Frame::Cancel { call: self.id })
    }

    /// Waits for the call's result.
    ///
    /// The broker delivers it. Over shared memory the service also leaves it
    /// in the stream's ring, so if the broker dies the result still arrives,
    /// peer to peer (results up to
    /// [`MAX_RING_RESULT`](shmbus::ring::MAX_RING_RESULT) bytes).
    pub fn finish(self) -> Result<Vec<u8>> {
        self.finish_holding(None)
    }

    fn finish_holding(mut self, held: Option<HeldReader>) -> Result<Vec<u8>> {
        if let Some(outcome) = self.outcome.take() {
            return outcome.map_err(Error::Remote);
        }
        match self.shared.inner.wait_holding(held, &self.events) {
            Ok(CallEvent::Result(outcome)) => outcome.map_err(Error::Remote),
            Ok(CallEvent::Open(open, fds)) => {
                drop(fds);
                Err(Error::Protocol(format!(
                    "unexpected stream-open for stream {}",
                    open.stream
                )))
            }
            Err(_) => match &self.peer_result {
                Some(peer) => peer.wait(self.policy.stall)?.map_err(Error::Remote),
                None => Err(Error::BrokerGone),
            },
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.shared.inner.forget_call(self.id);
    }
}

/// A registered service: calls arrive through [`next`](Self::next).
pub struct Service {
    conn: Connection,
    name: String,
    incoming: mpsc::Receiver<IncomingRaw>,
}

impl Service {
    /// The service name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits for the next call; `None` once the broker connection closed.
    pub fn next(&self) -> Result<Option<IncomingCall>> {
        loop {
            let Ok(raw) = self.conn.inner().wait_for(&self.incoming) else {
                return Ok(None);
            };
            let (call, origin) = (raw.call, raw.origin.clone());
            match IncomingCall::new(&self.conn, raw) {
                Ok(c) => return Ok(Some(c)),
                Err(e) => {
                    // The port could not be set up: fail this call, keep serving.
                    let _ = origin.send(&Frame::Result {
                        call,
                        outcome: Err(RemoteError {
                            code: ErrorCode::ProtocolViolation,
                            message: format!("service could not open the stream port: {e}"),
                        }),
                    });
                    origin.forget_served(call);
                }
            }
        }
    }
}

/// A call received by a service.
pub struct IncomingCall {
    shared: Bound,
    call: CallId,
    method: String,
    args: Vec<u8>,
    caller_pid: i32,
    caller_uid: u32,
    transport: Option<Transport>,
    sender: Option<Sender>,
    receiver: Option<Receiver>,
    peer_result: Option<PeerResult>,
    cancelled: Arc<AtomicBool>,
    answered: bool,
}

impl IncomingCall {
    fn new(conn: &Connection, raw: IncomingRaw) -> Result<Self> {
        let shared = Bound::new(conn.shared.clone(), raw.origin.clone());
        let (mut sender, mut receiver, mut transport, mut peer_result) = (None, None, None, None);
        if let Some(open) = &raw.open {
            let ports = port::open(open, raw.fds, Role::Service, &raw.cancelled)?;
            transport = Some(open.transport);
            peer_result = ports.result;
            sender = ports.tx.map(|p| {
                Sender::new(
                    p,
                    open.stream,
                    open.credit,
                    raw.cancelled.clone(),
                    shared.clone(),
                )
            });
            receiver = ports
                .rx
                .map(|p| Receiver::new(p, open.stream, shared.clone()));
        }
        Ok(IncomingCall {
            shared,
            call: raw.call,
            method: raw.method,
            args: raw.args,
            caller_pid: raw.caller_pid,
            caller_uid: raw.caller_uid,
            transport,
            sender,
            receiver,
            peer_result,
            cancelled: raw.cancelled,
            answered: false,
        })
    }

    /// The method called.
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The raw arguments.
    pub fn args(&self) -> &[u8] {
        &self.args
    }

    /// The arguments decoded with postcard.
    pub fn args_typed<T: DeserializeOwned>(&self) -> Result<T> {
        Ok(postcard::from_bytes(&self.args)?)
    }

    /// The caller's process id, as the kernel reported it to the broker.
    pub fn caller_pid(&self) -> i32 {
        self.caller_pid
    }

    /// The caller's user id, as the kernel reported it to the broker.
    pub fn caller_uid(&self) -> u32 {
        self.caller_uid
    }

    /// How the stream is carried, for streaming calls.
    pub fn transport(&self) -> Option<Transport> {
        self.transport
    }

    /// The half that streams to the caller.
    pub fn sender(&mut self) -> Option<&mut Sender> {
        self.sender.as_mut()
    }

    /// The half that receives from the caller.
    pub fn receiver(&mut self) -> Option<&mut Receiver> {
        self.receiver.as_mut()
    }

    /// Takes the sending half.
    pub fn take_sender(&mut self) -> Option<Sender> {
        self.sender.take()
    }

    /// Takes the receiving half.
    pub fn take_receiver(&mut self) -> Option<Receiver> {
        self.receiver.take()
    }

    /// True once the caller cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
            || self.sender.as_ref().is_some_and(|s| s.is_cancelled())
    }

    /// Answers the call. A sending half still open is ended first (stream-end
    /// on success, stream-error on failure). A cancelled call always answers
    /// with the error "aborted".
    pub fn respond(mut self, outcome: std::result::Result<Vec<u8>, RemoteError>) -> Result<()> {
        self.answer(outcome)
    }

    /// Answers with success.
    pub fn reply(self, payload: impl Into<Vec<u8>>) -> Result<()> {
        self.respond(Ok(payload.into()))
    }

    /// Answers with an error.
    pub fn fail(self, message: &str) -> Result<()> {
        self.respond(Err(RemoteError {
            code: ErrorCode::Failed,
            message: message.to_string(),
        }))
    }

    fn answer(&mut self, outcome: std::result::Result<Vec<u8>, RemoteError>) -> Result<()> {
        let inner = self.shared.inner.clone();
        inner.corked(|| self.answer_now(outcome))
    }

    fn answer_now(&mut self, outcome: std::result::Result<Vec<u8>, RemoteError>) -> Result<()> {
        self.answered = true;
        let mut outcome = outcome;
        if let Some(tx) = self.sender.as_mut() {
            if tx.is_open() {
                let r = match &outcome {
                    Ok(_) => tx.finish(),
                    Err(e) => tx.fail(&e.message),
                };
                if let Err(Error::Cancelled) = r {
                    self.cancelled.store(true, Ordering::Release);
                }
            }
        }
        if self.is_cancelled() {
            outcome = Err(RemoteError {
                code: ErrorCode::Aborted,
                message: "aborted".into(),
            });
        }
        // Peer to peer first, so the caller has it even if the broker dies.
        if let Some(peer) = self.peer_result.take() {
            let _ = peer.post(&outcome);
        }
        self.receiver = None;
        self.shared.inner.forget_served(self.call);
        self.shared.inner.send(&Frame::Result {
            call: self.call,
            outcome,
        })
    }
}

impl Drop for IncomingCall {
    fn drop(&mut self) {
        if !self.answered {
            let _ = self.answer(Err(RemoteError {
                code: ErrorCode::Failed,
                message: "the service dropped the call without answering".into(),
            }));
        }
    }
}
