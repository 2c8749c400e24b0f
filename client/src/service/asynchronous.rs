//! The service's side for tokio (feature `tokio`): `next_async` waits for
//! a call on the service's mailbox, and `respond_async` (`reply_async`,
//! `fail_async`) ends a sending half still open without blocking before it
//! answers.

use std::future::poll_fn;
use std::sync::atomic::Ordering;

use shmbus::frame::{ErrorCode, RemoteError};

use super::{IncomingCall, Service};
use crate::error::{Error, Result};
use crate::AsyncSender;

impl Service {
    /// The async twin of [`next`](Self::next): the next call, `None` once
    /// the broker connection closed. Cancel safe: dropped while it waits,
    /// no call is taken.
    ///
    /// ```no_run
    /// # async fn demo(conn: shmbus_client::Connection) -> shmbus_client::Result<()> {
    /// use shmbus_client::{AsyncSender, MethodSpec, StreamMode};
    ///
    /// let service = conn.register("numbers", &[MethodSpec::new("count", StreamMode::Download)])?;
    /// while let Some(mut call) = service.next_async().await? {
    ///     tokio::spawn(async move {
    ///         let n: u64 = call.args_typed()?;
    ///         let mut tx = AsyncSender::new(call.take_sender().expect("a download"))?;
    ///         for i in 0..n {
    ///             tx.send(&i).await?;
    ///         }
    ///         tx.finish().await?;
    ///         call.reply_async(Vec::new()).await
    ///     });
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn next_async(&self) -> Result<Option<IncomingCall>> {
        loop {
            let Some(raw) = poll_fn(|cx| self.incoming.poll_recv(cx)).await else {
                return Ok(None);
            };
            if let Some(call) = self.accept(raw) {
                return Ok(Some(call));
            }
        }
    }
}

impl IncomingCall {
    /// The async twin of [`respond`](Self::respond): a sending half still
    /// in the call is ended first without blocking (stream-end on success,
    /// stream-error on failure), then the answer goes out.
    pub async fn respond_async(
        mut self,
        outcome: std::result::Result<Vec<u8>, RemoteError>,
    ) -> Result<()> {
        if let Some(tx) = self.sender.take() {
            if tx.is_open() {
                let mut tx = AsyncSender::new(tx)?;
                let r = match &outcome {
                    Ok(_) => tx.finish().await,
                    Err(e) => tx.fail(&e.message).await,
                };
                if let Err(Error::Cancelled) = r {
                    self.cancelled.store(true, Ordering::Release);
                }
                self.sender = Some(tx.into_inner());
            } else {
                self.sender = Some(tx);
            }
        }
        self.answer(outcome)
    }

    /// The async twin of [`reply`](Self::reply).
    pub async fn reply_async(self, payload: impl Into<Vec<u8>>) -> Result<()> {
        self.respond_async(Ok(payload.into())).await
    }

    /// The async twin of [`fail`](Self::fail).
    pub async fn fail_async(self, message: &str) -> Result<()> {
        self.respond_async(Err(RemoteError {
            code: ErrorCode::Failed,
            message: message.to_string(),
        }))
        .await
    }
}
