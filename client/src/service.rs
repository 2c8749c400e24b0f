//! The service's side of calls: [`Service`], registered with
//! [`Connection::register`], and the [`IncomingCall`]s it receives.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use shmbus::frame::{CallId, ErrorCode, Frame, MethodSpec, RemoteError, Transport};

use crate::conn::{CallLink, Connection, IncomingRaw, Mailbox};
use crate::error::{decode, Error, Result};
use crate::port::{self, PeerResult, Role};
use crate::stream::{Receiver, Sender};

#[cfg(feature = "tokio")]
mod asynchronous;

impl Connection {
    /// Registers a service with its methods. Calls arrive through
    /// [`Service::next`]; the service lives as long as the returned handle.
    /// Dropping the handle unregisters the name (the same or another
    /// connection may register it again), and the calls that arrived and
    /// were never taken fail with [`ErrorCode::NoSuchService`].
    ///
    /// ```no_run
    /// use shmbus_client::{Connection, MethodSpec, StreamMode};
    ///
    /// # fn main() -> shmbus_client::Result<()> {
    /// let conn = Connection::connect_default()?;
    /// let service = conn.register(
    ///     "clock",
    ///     &[
    ///         MethodSpec::new("now", StreamMode::Unary),
    ///         MethodSpec::new("ticks", StreamMode::Download),
    ///     ],
    /// )?;
    /// while let Some(call) = service.next()? {
    ///     // answer it: see `Service::next`
    /// #   drop(call);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn register(&self, service: &str, methods: &[MethodSpec]) -> Result<Service> {
        let rx = self.register_raw(service, methods.to_vec())?;
        Ok(Service::new(self.clone(), service, rx))
    }
}

/// A registered service: calls arrive through [`next`](Self::next).
pub struct Service {
    conn: Connection,
    name: String,
    incoming: Mailbox<IncomingRaw>,
}

impl Service {
    pub(crate) fn new(conn: Connection, name: &str, incoming: Mailbox<IncomingRaw>) -> Self {
        Service {
            conn,
            name: name.to_string(),
            incoming,
        }
    }

    /// The service name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits for the next call; `None` once the broker connection closed.
    ///
    /// Each call must be answered ([`IncomingCall::reply`] or
    /// [`fail`](IncomingCall::fail)); dropping it unanswered fails it.
    /// Calls are independent: answer them on other threads to serve
    /// several at once.
    ///
    /// ```no_run
    /// use shmbus_client::{Connection, MethodSpec, StreamMode};
    ///
    /// # fn main() -> shmbus_client::Result<()> {
    /// let conn = Connection::connect_default()?;
    /// let service = conn.register("numbers", &[MethodSpec::new("count", StreamMode::Download)])?;
    /// while let Some(mut call) = service.next()? {
    ///     std::thread::spawn(move || -> shmbus_client::Result<()> {
    ///         let n: u64 = call.args_typed()?;
    ///         let tx = call.sender().expect("a download streams to the caller");
    ///         for i in 0..n {
    ///             tx.send(&i)?;
    ///         }
    ///         call.reply(Vec::new()) // ends the stream, then answers
    ///     });
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn next(&self) -> Result<Option<IncomingCall>> {
        loop {
            let Ok(raw) = self.conn.link().wait_for(&self.incoming) else {
                return Ok(None);
            };
            if let Some(call) = self.accept(raw) {
                return Ok(Some(call));
            }
        }
    }

    /// Opens an arrived call's ports; a call whose ports cannot be set up
    /// is failed here (`None`), and the service keeps serving.
    fn accept(&self, raw: IncomingRaw) -> Option<IncomingCall> {
        let (call, origin) = (raw.call, raw.origin.clone());
        match IncomingCall::new(&self.conn, raw) {
            Ok(c) => Some(c),
            Err(e) => {
                let _ = origin.send(&Frame::Result {
                    call,
                    outcome: Err(RemoteError {
                        code: ErrorCode::ProtocolViolation,
                        message: format!("service could not open the stream port: {e}"),
                    }),
                });
                origin.forget_served(call);
                None
            }
        }
    }
}

/// A call received by a service.
pub struct IncomingCall {
    link: CallLink,
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
    deadline: Option<Instant>,
}

impl IncomingCall {
    fn new(conn: &Connection, raw: IncomingRaw) -> Result<Self> {
        let link = CallLink::new(conn.state.clone(), raw.origin.clone());
        let (mut sender, mut receiver, mut transport, mut peer_result) = (None, None, None, None);
        if let Some(open) = &raw.open {
            let ports = port::open(open, raw.fds, Role::Service, &raw.cancelled)?;
            transport = Some(open.transport);
            peer_result = ports.result;
            sender = ports.tx.map(|p| {
                let mut s = Sender::new(
                    p,
                    open.stream,
                    open.credit,
                    raw.cancelled.clone(),
                    link.clone(),
                );
                s.set_deadline(raw.deadline);
                s
            });
            receiver = ports.rx.map(|p| {
                let mut r = Receiver::new(p, open.stream, link.clone());
                r.set_deadline(raw.deadline);
                r
            });
        }
        Ok(IncomingCall {
            link,
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
            deadline: raw.deadline,
        })
    }

    /// The caller's deadline, if it gave one, on this process's clock (the
    /// broker passes on the time left). When it passes, the broker cancels
    /// the call, the caller's result is
    /// [`Error::DeadlineExceeded`](crate::Error::DeadlineExceeded) whatever
    /// this side answers, and this side's stream halves fail with it too.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Time left before the deadline: `None` without one, zero once passed.
    pub fn time_left(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
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
        decode(&self.args)
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
    /// with the error "call aborted".
    ///
    /// The answer is the call's result, apart from the stream: a stream
    /// already failed with [`Sender::fail`] stays failed for its receiver
    /// even when the call then answers with success.
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
        let broker = self.link.broker.clone();
        broker.corked(|| self.answer_now(outcome))
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
                message: "cancelled by the caller".into(),
            });
        }
        // The receiving half goes first: over a socket, the result follows
        // on a socket no half uses any more.
        self.receiver = None;
        // Peer to peer first, so the caller has it even if the broker dies.
        if let Some(peer) = self.peer_result.take() {
            let _ = peer.post(&outcome);
        }
        self.link.broker.forget_served(self.call);
        self.link.broker.send(&Frame::Result {
            call: self.call,
            outcome,
        })
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.conn.unregister_raw(&self.name, &self.incoming);
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
