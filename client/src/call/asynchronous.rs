//! The caller's calls for tokio (feature `tokio`): `start_async`,
//! `unary_async`, `collect_async` and `finish_async`. They wait on the
//! call's mailbox, which the connection's frame reader fills, so no thread
//! blocks; the stream halves they drive are the async ones.
//!
//! A call future dropped midway cancels the call, as [`Call::cancel`] does:
//! the service is told, and its result is "call aborted".

use std::future::poll_fn;

use serde::de::DeserializeOwned;
use shmbus::frame::StreamMode;

use super::{check_limit, Call, CallBuilder, CancelHandle};
use crate::error::{decode, Error, Result};
use crate::{AsyncReceiver, AsyncSender};

/// Cancels the call when dropped, unless disarmed: a call future dropped
/// before it finished.
struct CancelOnDrop(Option<CancelHandle>);

impl CancelOnDrop {
    fn new(call: &Call) -> Self {
        CancelOnDrop(Some(call.cancel_handle()))
    }

    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            let _ = handle.cancel();
        }
    }
}

impl CallBuilder {
    /// The async twin of [`start`](Self::start): makes the call and waits,
    /// without blocking the thread, until its stream is open or the call
    /// failed. Dropped before it returns, the call is cancelled.
    ///
    /// ```no_run
    /// # async fn demo(conn: &shmbus_client::Connection) -> shmbus_client::Result<()> {
    /// use shmbus_client::AsyncReceiver;
    ///
    /// let mut call = conn.call("numbers", "count").args_typed(&1000u64)?.start_async().await?;
    /// let mut rx = AsyncReceiver::new(call.take_receiver().expect("a download"))?;
    /// let mut sum = 0u64;
    /// while let Some(n) = rx.recv::<u64>().await? {
    ///     sum += n;
    /// }
    /// call.finish_async().await?;
    /// # let _ = sum;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn start_async(self) -> Result<Call> {
        if self.request.mode == Some(StreamMode::Unary) {
            return self.send();
        }
        let mut call = self.send()?;
        let guard = CancelOnDrop::new(&call);
        let event = poll_fn(|cx| call.events.poll_recv(cx)).await;
        let r = call.opened(event);
        guard.disarm();
        r.map(|_| call)
    }

    /// The async twin of [`unary`](Self::unary). Dropped before it
    /// returns, the call is cancelled.
    pub async fn unary_async(self) -> Result<Vec<u8>> {
        let call = self.mode(StreamMode::Unary).send()?;
        call.finish_async().await
    }

    /// The async twin of [`collect`](Self::collect), with the same limit
    /// ([`collect_limit`](Self::collect_limit)). Dropped before it returns,
    /// the call is cancelled.
    pub async fn collect_async<T: DeserializeOwned>(mut self) -> Result<Vec<T>> {
        self.request.mode = None;
        let limit = self.collect_limit.unwrap_or(u64::MAX);
        let mut call = self.start_async().await?;
        if call.outcome.is_some() {
            let result = call.finish_async().await?;
            check_limit(result.len() as u64, limit)?;
            return Ok(vec![decode(&result)?]);
        }
        let guard = CancelOnDrop::new(&call);
        if let Some(tx) = call.sender.take() {
            AsyncSender::new(tx)?.finish().await?;
        }
        let mut items = Vec::new();
        if let Some(rx) = call.receiver.take() {
            let mut rx = AsyncReceiver::new(rx)?;
            let mut total = 0u64;
            let mut copy = Vec::new();
            loop {
                {
                    let Some(bytes) = rx.recv_in_place().await? else {
                        break;
                    };
                    total = total.saturating_add(bytes.len() as u64);
                    // Decoded from a copy, never in place (see `collect`).
                    copy.clear();
                    copy.extend_from_slice(&bytes);
                }
                if let Err(e) = check_limit(total, limit) {
                    rx.get_mut().cancel();
                    // Cancels the call too.
                    drop(guard);
                    return Err(e);
                }
                items.push(decode(&copy)?);
            }
        }
        guard.disarm();
        call.finish_async().await?;
        Ok(items)
    }
}

impl Call {
    /// The async twin of [`finish`](Self::finish): ends the halves still in
    /// the call (an open sender is finished, a receiver drained, both
    /// without blocking), then waits for the service's result. Dropped
    /// before it returns, the call is cancelled.
    pub async fn finish_async(mut self) -> Result<Vec<u8>> {
        if let Some(outcome) = self.outcome.take() {
            return outcome.map_err(Error::remote);
        }
        let guard = CancelOnDrop::new(&self);
        if let Some(tx) = self.sender.take() {
            if tx.is_open() {
                // An error here (the service cancelled or died) shows in
                // the result below.
                let _ = AsyncSender::new(tx)?.finish().await;
            }
        }
        if let Some(rx) = self.receiver.take() {
            // Drained, so a service blocked on credit can finish and answer.
            let mut rx = AsyncReceiver::new(rx)?;
            while let Ok(Some(_)) = rx.recv_in_place().await {}
        }
        let event = poll_fn(|cx| self.events.poll_recv(cx)).await;
        guard.disarm();
        if event.is_none() && self.peer_result.is_some() {
            // The broker connection is gone: the service's copy of the
            // result on the port may still come; wait for it off the runtime.
            return tokio::task::spawn_blocking(move || self.result(None))
                .await
                .map_err(|e| Error::Io(std::io::Error::other(e)))?;
        }
        self.result(event)
    }
}
