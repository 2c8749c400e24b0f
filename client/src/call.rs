//! The caller's side of calls: [`CallBuilder`], [`Call`] and [`CancelHandle`].

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;
use shmbus::credit::CreditSpec;
use shmbus::frame::{
    CallId, CallRequest, FallbackReason, Frame, RemoteError, StreamId, StreamMode, StreamOpen,
    Transport, TransportPreference,
};

use crate::conn::{CallEvent, CallLink, Connection, HeldReader, Mailbox};
use crate::error::{decode, Error, Result};
use crate::port::{self, wait::WaitPolicy, PeerResult, Role};
use crate::stream::{Receiver, Sender};

#[cfg(feature = "tokio")]
mod asynchronous;

/// Describes a call before it is made. Get one from [`Connection::call`],
/// then make it with [`start`](Self::start) (a streaming call),
/// [`unary`](Self::unary) (one answer) or [`collect`](Self::collect) (the
/// whole stream as one batch).
#[must_use]
pub struct CallBuilder {
    conn: Connection,
    request: CallRequest,
    policy: WaitPolicy,
    collect_limit: Option<u64>,
    deadline: Option<Instant>,
}

impl Connection {
    /// Starts describing a call of `method` on `service`. Nothing is sent
    /// until [`CallBuilder::start`], [`unary`](CallBuilder::unary) or
    /// [`collect`](CallBuilder::collect).
    ///
    /// ```no_run
    /// use shmbus_client::{Connection, CreditSpec};
    ///
    /// # fn main() -> shmbus_client::Result<()> {
    /// let conn = Connection::connect_default()?;
    /// // The method's own mode (download here) decides which halves the call has.
    /// let mut call = conn
    ///     .call("frames", "get")
    ///     .args_typed(&42u32)?
    ///     .credit(CreditSpec::items(16))
    ///     .start()?;
    /// let mut rx = call.take_receiver().expect("frames.get streams to the caller");
    /// while let Some(frame) = rx.recv_bytes()? {
    ///     println!("{} bytes", frame.len());
    /// }
    /// call.finish()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn call(&self, service: &str, method: &str) -> CallBuilder {
        CallBuilder {
            conn: self.clone(),
            request: CallRequest {
                call: 0,
                service: service.to_string(),
                method: method.to_string(),
                args: Vec::new(),
                // The method's registered mode decides.
                mode: None,
                // A high-water mark of 0 takes the broker's default.
                credit: CreditSpec::bytes(0),
                transport: TransportPreference::Auto,
                ring_size: None,
                time_left_us: None,
            },
            policy: WaitPolicy::default(),
            collect_limit: None,
            deadline: None,
        }
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

    /// How items flow. Optional: without it the method's registered mode
    /// decides, and [`start`](Self::start) returns a call with the halves
    /// that mode has. When given, it must match the registration, or the
    /// call fails with [`ErrorCode::NoSuchMethod`](crate::ErrorCode::NoSuchMethod) naming both modes.
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

    /// Gives the call a deadline. The broker fails the call once it
    /// passes: the service's stream is cancelled and told why
    /// ([`IncomingCall::deadline`](crate::IncomingCall::deadline) shows it
    /// the time left), the result is [`Error::DeadlineExceeded`], and so is
    /// any wait on either side's stream that reaches it. Items already
    /// received are still there to read. A deadline already past when the
    /// call is made fails it at once, before the service hears of it.
    ///
    /// ```no_run
    /// # fn demo(conn: &shmbus_client::Connection) -> shmbus_client::Result<()> {
    /// use std::time::{Duration, Instant};
    /// use shmbus_client::Error;
    ///
    /// let call = conn
    ///     .call("reports", "render")
    ///     .deadline(Instant::now() + Duration::from_secs(2))
    ///     .start()?;
    /// match call.finish() {
    ///     Ok(pdf) => println!("{} bytes", pdf.len()),
    ///     Err(Error::DeadlineExceeded) => eprintln!("too slow today"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn deadline(mut self, deadline: Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Gives the call a deadline `timeout` from now: see
    /// [`deadline`](Self::deadline).
    pub fn timeout(self, timeout: Duration) -> Self {
        match Instant::now().checked_add(timeout) {
            Some(deadline) => self.deadline(deadline),
            // Beyond what the clock can tell: no deadline at all.
            None => self,
        }
    }

    fn send(self) -> Result<Call> {
        Ok(self.send_leading()?.0)
    }

    /// Sends the call holding the reader (when no other thread reads), for
    /// the first wait on the call: see [`HeldReader`].
    fn send_leading(mut self) -> Result<(Call, HeldReader)> {
        let broker = self.conn.link();
        let id = broker.next_id();
        self.request.call = id;
        // The broker keeps its own clock: it is told the time left.
        self.request.time_left_us = self.deadline.map(|d| {
            let left = d.saturating_duration_since(Instant::now()).as_micros();
            u64::try_from(left).unwrap_or(u64::MAX)
        });
        let events = broker.expect_call(id)?;
        let held = broker.lead();
        if let Err(e) = broker.send(&Frame::Call(self.request)) {
            broker.forget_call(id);
            return Err(e);
        }
        let call = Call {
            link: CallLink::new(self.conn.state.clone(), broker),
            id,
            events,
            open: None,
            sender: None,
            receiver: None,
            outcome: None,
            peer_result: None,
            cancelled: Arc::new(AtomicBool::new(false)),
            stop: Arc::new(AtomicBool::new(false)),
            policy: self.policy,
            deadline: self.deadline,
        };
        Ok((call, held))
    }

    /// Caps what [`collect`](Self::collect) and
    /// [`collect_bytes`](Self::collect_bytes) gather: once the items add
    /// up to more than `max_bytes`, the call is cancelled and collecting
    /// fails with [`Error::TooLarge`]. Without it, a batch holds the whole
    /// stream in memory, however large.
    pub fn collect_limit(mut self, max_bytes: u64) -> Self {
        self.collect_limit = Some(max_bytes);
        self
    }

    /// Makes a unary call and waits for its result.
    ///
    /// ```no_run
    /// # fn demo(conn: &shmbus_client::Connection) -> shmbus_client::Result<()> {
    /// let reply = conn.call("clock", "now").args_typed(&"UTC")?.unary()?;
    /// let secs: u64 = postcard::from_bytes(&reply).expect("a u64");
    /// # let _ = secs;
    /// # Ok(())
    /// # }
    /// ```
    pub fn unary(self) -> Result<Vec<u8>> {
        let (call, held) = self.mode(StreamMode::Unary).send_leading()?;
        call.finish_holding(Some(held))
    }

    /// Makes the call and waits until its stream is open, or the call
    /// failed (an unknown service or method, a mode that does not match,
    /// a refusal: each an [`Error::Remote`]).
    ///
    /// The call comes back with the halves of the method's mode:
    /// [`receiver`](Call::receiver) for a download, [`sender`](Call::sender)
    /// for an upload, both for a bidirectional method. Without
    /// [`mode`](Self::mode), a unary method's call returns once it has
    /// its result (read it with [`Call::finish`]); with `.mode(StreamMode::Unary)`
    /// it returns as soon as the call is sent.
    ///
    /// ```no_run
    /// # fn demo(conn: &shmbus_client::Connection) -> shmbus_client::Result<()> {
    /// use std::io::Write;
    ///
    /// // An upload: write, end the stream, then read the service's answer.
    /// let mut call = conn.call("store", "put").args("report.csv").start()?;
    /// let mut tx = call.take_sender().expect("store.put is an upload");
    /// tx.write_all(b"date,value\n2026-12-03,42\n")?;
    /// tx.finish()?; // stream-end (Call::finish would also do it for a half left in the call)
    /// let answer = call.finish()?;
    /// # let _ = answer;
    /// # Ok(())
    /// # }
    /// ```
    pub fn start(self) -> Result<Call> {
        if self.request.mode == Some(StreamMode::Unary) {
            return self.send();
        }
        let (mut call, held) = self.send_leading()?;
        call.wait_open(Some(held))?;
        Ok(call)
    }

    /// Batch RPC: collects a streaming method's whole stream as one list of
    /// typed items, or a unary method's result as a list of one. The
    /// method's own mode decides; an upload half, if the method has one,
    /// is ended at once. The items are held in memory: see
    /// [`collect_limit`](Self::collect_limit).
    ///
    /// ```no_run
    /// # fn demo(conn: &shmbus_client::Connection) -> shmbus_client::Result<()> {
    /// let numbers: Vec<u64> = conn
    ///     .call("numbers", "count")
    ///     .args_typed(&1000u64)?
    ///     .collect_limit(1 << 20)
    ///     .collect()?;
    /// assert_eq!(numbers.len(), 1000);
    /// # Ok(())
    /// # }
    /// ```
    pub fn collect<T: DeserializeOwned>(self) -> Result<Vec<T>> {
        // Decoded from a copy, never in place: decoding validates (UTF-8,
        // lengths) and then reads again, which must not see bytes a hostile
        // sender changed in between.
        let mut copy = Vec::new();
        self.collect_with(move |bytes| {
            copy.clear();
            copy.extend_from_slice(bytes);
            decode(&copy)
        })
    }

    /// Like [`collect`](Self::collect), with each item's raw bytes.
    pub fn collect_bytes(self) -> Result<Vec<Vec<u8>>> {
        self.collect_with(|bytes| Ok(bytes.to_vec()))
    }

    fn collect_with<T>(mut self, mut item: impl FnMut(&[u8]) -> Result<T>) -> Result<Vec<T>> {
        self.request.mode = None;
        let limit = self.collect_limit.unwrap_or(u64::MAX);
        let (mut call, held) = self.send_leading()?;
        if !call.wait_open(Some(held))? {
            let result = call.finish()?;
            check_limit(result.len() as u64, limit)?;
            return Ok(vec![item(&result)?]);
        }
        if let Some(mut tx) = call.sender.take() {
            tx.finish()?;
        }
        let mut items = Vec::new();
        let mut total = 0u64;
        if let Some(mut rx) = call.receiver.take() {
            loop {
                let Some(bytes) = rx.recv_in_place()? else {
                    break;
                };
                total = total.saturating_add(bytes.len() as u64);
                if let Err(e) = check_limit(total, limit) {
                    drop(bytes);
                    rx.cancel();
                    let _ = call.cancel();
                    return Err(e);
                }
                items.push(item(&bytes)?);
            }
        }
        call.finish()?;
        Ok(items)
    }
}

fn check_limit(total: u64, limit: u64) -> Result<()> {
    if total > limit {
        return Err(Error::TooLarge(format!(
            "the collected stream exceeds its limit of {limit} bytes"
        )));
    }
    Ok(())
}

/// Cancels a call from anywhere: cloneable, `Send` and `Sync`, independent
/// of the [`Call`] and of its halves. Get one from [`Call::cancel_handle`].
///
/// ```no_run
/// # fn demo(mut call: shmbus_client::Call) -> shmbus_client::Result<()> {
/// let cancel = call.cancel_handle();
/// let mut rx = call.take_receiver().expect("a download");
/// while let Some(line) = rx.recv::<String>()? {
///     if line == "enough" {
///         cancel.cancel()?; // the next recv fails with Error::Cancelled
///     }
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct CancelHandle {
    link: CallLink,
    id: CallId,
    /// Tells this side's senders (and the service's result) the call is
    /// cancelled.
    cancelled: Arc<AtomicBool>,
    /// Tells this side's receivers to stop at their next receive.
    stop: Arc<AtomicBool>,
}

impl CancelHandle {
    /// Cancels the call: this side's halves stop at their next operation
    /// with [`Error::Cancelled`] (items in flight are dropped), the
    /// service's next send fails as cancelled, and the call's result
    /// becomes the error "call aborted". Cancelling again does nothing.
    pub fn cancel(&self) -> Result<()> {
        self.cancelled.store(true, Ordering::Release);
        if self.stop.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.link.broker.send(&Frame::Cancel { call: self.id })
    }

    /// True once the call was cancelled through any handle or
    /// [`Call::cancel`].
    pub fn is_cancelled(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }
}

/// A call in progress, on the caller's side. Made by
/// [`CallBuilder::start`]; ended by [`finish`](Self::finish), which waits
/// for the service's answer, or by [`cancel`](Self::cancel).
///
/// The stream halves can be borrowed ([`receiver`](Self::receiver),
/// [`sender`](Self::sender)) or taken ([`take_receiver`](Self::take_receiver),
/// [`take_sender`](Self::take_sender)) to own them apart from the call,
/// e.g. on other threads; [`cancel_handle`](Self::cancel_handle) gives a
/// cancel that needs neither.
///
/// Two outcomes: each stream direction ends on its own (stream-end, or an
/// error a receiver reports as [`Error::Stream`], [`Error::Cancelled`],
/// [`Error::PeerGone`]), and the call has a result, which
/// [`finish`](Self::finish) returns. A service can fail its stream and
/// still answer the call with success; check both where both matter.
pub struct Call {
    link: CallLink,
    id: CallId,
    events: Mailbox<CallEvent>,
    open: Option<StreamOpen>,
    sender: Option<Sender>,
    receiver: Option<Receiver>,
    outcome: Option<std::result::Result<Vec<u8>, RemoteError>>,
    /// Over shared memory, where the service also leaves its result.
    peer_result: Option<PeerResult>,
    cancelled: Arc<AtomicBool>,
    /// Set by a cancel: this side's receivers stop at their next receive.
    stop: Arc<AtomicBool>,
    policy: WaitPolicy,
    deadline: Option<Instant>,
}

impl Call {
    /// Waits for stream-open; false when the call answered without a stream.
    fn wait_open(&mut self, held: Option<HeldReader>) -> Result<bool> {
        let event = self.link.broker.wait_holding(held, &self.events).ok();
        self.opened(event)
    }

    /// What the first event (`None`: the connection closed) makes of the
    /// call: its halves attached (true), or its outcome in (false).
    fn opened(&mut self, event: Option<CallEvent>) -> Result<bool> {
        match event {
            Some(CallEvent::Open(open, fds)) => {
                self.attach(open, fds)?;
                Ok(true)
            }
            Some(CallEvent::Result(Err(e))) => Err(Error::remote(e)),
            Some(CallEvent::Result(ok)) => {
                self.outcome = Some(ok);
                Ok(false)
            }
            None => Err(Error::BrokerGone),
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
                self.link.clone(),
            );
            s.set_wait_policy(self.policy);
            s.set_deadline(self.deadline);
            s
        });
        self.receiver = ports.rx.map(|p| {
            let mut r = Receiver::new(p, open.stream, self.link.clone());
            r.set_wait_policy(self.policy);
            r.set_deadline(self.deadline);
            r.stop_on(self.stop.clone());
            r
        });
        self.open = Some(open);
        Ok(())
    }

    /// The caller's call id.
    pub fn id(&self) -> CallId {
        self.id
    }

    /// The call's deadline, if it was given one.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
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

    /// The half that sends to the service (upload, bidirectional),
    /// borrowed from the call; see [`take_sender`](Self::take_sender).
    pub fn sender(&mut self) -> Option<&mut Sender> {
        self.sender.as_mut()
    }

    /// The half that receives from the service (download, bidirectional),
    /// borrowed from the call; see [`take_receiver`](Self::take_receiver).
    pub fn receiver(&mut self) -> Option<&mut Receiver> {
        self.receiver.as_mut()
    }

    /// Takes the sending half, to own it apart from the call (e.g. on
    /// another thread). A taken half is yours to end: finish or drop it,
    /// or a service that reads the upload to its end never answers and
    /// [`finish`](Self::finish) waits for it.
    pub fn take_sender(&mut self) -> Option<Sender> {
        self.sender.take()
    }

    /// Takes the receiving half, to own it apart from the call: a loop over
    /// it can still cancel the call through [`cancel`](Self::cancel) or a
    /// [`CancelHandle`].
    ///
    /// ```no_run
    /// # fn demo(conn: &shmbus_client::Connection) -> shmbus_client::Result<()> {
    /// let mut call = conn.call("numbers", "count").args_typed(&u64::MAX)?.start()?;
    /// let mut rx = call.take_receiver().expect("a download");
    /// let mut sum = 0u64;
    /// while let Some(n) = rx.recv::<u64>()? {
    ///     sum += n;
    ///     if sum > 1_000_000 {
    ///         call.cancel()?;
    ///         break;
    ///     }
    /// }
    /// assert!(call.finish().is_err()); // the result is "call aborted"
    /// # Ok(())
    /// # }
    /// ```
    pub fn take_receiver(&mut self) -> Option<Receiver> {
        self.receiver.take()
    }

    /// A handle that cancels this call from anywhere, even once the halves
    /// were taken and moved to other threads.
    pub fn cancel_handle(&self) -> CancelHandle {
        CancelHandle {
            link: self.link.clone(),
            id: self.id,
            cancelled: self.cancelled.clone(),
            stop: self.stop.clone(),
        }
    }

    /// Cancels the call: the service's next send fails as cancelled, this
    /// side's halves (borrowed or taken) fail their next operation with
    /// [`Error::Cancelled`], and the result becomes the error "call
    /// aborted" (an [`Error::Remote`] with [`ErrorCode::Aborted`](crate::ErrorCode::Aborted)).
    pub fn cancel(&mut self) -> Result<()> {
        let handle = self.cancel_handle();
        if let Some(rx) = self.receiver.as_mut() {
            rx.cancel();
        }
        if let Some(tx) = self.sender.as_mut() {
            if tx.is_open() {
                tx.abort("cancelled by the caller");
            }
        }
        handle.cancel()
    }

    /// Ends the call and returns the service's result.
    ///
    /// Halves still in the call are ended first, so finishing never waits
    /// on this thread's own stream: an open sender is finished
    /// (stream-end, as [`Sender::finish`]), and a receiver not yet at its
    /// end is drained (its remaining items are read and dropped). To stop
    /// a stream early instead, [`cancel`](Self::cancel) first. Halves taken
    /// out of the call are not touched: end them before, or from another
    /// thread.
    ///
    /// The result is the service's answer, separate from how the stream
    /// ended: a stream the service failed (`Error::Stream` at the receiver)
    /// may still come with a successful result.
    ///
    /// The broker delivers the result. Over either transport the service
    /// also sends it straight to the caller on the stream's port, so if the
    /// broker dies meanwhile the result still arrives (results up to
    /// [`MAX_PEER_RESULT`](crate::MAX_PEER_RESULT) bytes).
    ///
    /// ```no_run
    /// # fn demo(conn: &shmbus_client::Connection) -> shmbus_client::Result<()> {
    /// use shmbus_client::{Error, ErrorCode};
    ///
    /// let call = conn.call("jobs", "run").args("nightly").start()?;
    /// match call.finish() {
    ///     Ok(answer) => println!("done: {} bytes", answer.len()),
    ///     Err(Error::Remote(e)) if e.code == ErrorCode::Failed => eprintln!("{e}"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn finish(self) -> Result<Vec<u8>> {
        self.finish_holding(None)
    }

    fn finish_holding(mut self, held: Option<HeldReader>) -> Result<Vec<u8>> {
        if let Some(outcome) = self.outcome.take() {
            return outcome.map_err(Error::remote);
        }
        if let Some(mut tx) = self.sender.take() {
            if tx.is_open() {
                // An error here (the service cancelled or died) shows in
                // the result below.
                let _ = tx.finish();
            }
        }
        if let Some(mut rx) = self.receiver.take() {
            // Drained, so a service blocked on credit can finish and
            // answer; a failed stream shows in the result, or not at all.
            while let Ok(Some(_)) = rx.recv_in_place() {}
        }
        let event = self.link.broker.wait_holding(held, &self.events).ok();
        self.result(event)
    }

    /// The call's outcome from its last event (`None`: the connection
    /// closed, and the service's copy on the port is what is left).
    fn result(&self, event: Option<CallEvent>) -> Result<Vec<u8>> {
        match event {
            Some(CallEvent::Result(outcome)) => outcome.map_err(Error::remote),
            Some(CallEvent::Open(open, fds)) => {
                drop(fds);
                Err(Error::Protocol(format!(
                    "unexpected stream-open for stream {}",
                    open.stream
                )))
            }
            None => match &self.peer_result {
                Some(peer) => peer.wait(self.policy.stall)?.map_err(Error::remote),
                None => Err(Error::BrokerGone),
            },
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.link.broker.forget_call(self.id);
    }
}
