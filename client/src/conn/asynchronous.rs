//! Connecting and registering for tokio (feature `tokio`). Connecting is a
//! one-time handshake of a few local round trips, run on the runtime's
//! blocking pool so that a slow broker never holds up a worker. Registering
//! awaits the broker's reply in a mailbox that the connection's frame
//! reader fills, as calls do.

use std::future::poll_fn;
use std::path::Path;

use shmbus::frame::{BrokerSnapshot, Frame, MethodSpec};

use super::{snapshot, ConnectOptions, Connection, PendingRegistration};
use crate::error::{Error, Result};
use crate::service::Service;

/// Runs `f` on the runtime's blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Io(std::io::Error::other(e)))?
}

impl Connection {
    /// The async twin of [`connect`](Self::connect).
    pub async fn connect_async(path: impl AsRef<Path>) -> Result<Connection> {
        Self::connect_with_async(path, ConnectOptions::default()).await
    }

    /// The async twin of [`connect_with`](Self::connect_with).
    pub async fn connect_with_async(
        path: impl AsRef<Path>,
        options: ConnectOptions,
    ) -> Result<Connection> {
        let path = path.as_ref().to_path_buf();
        blocking(move || Connection::connect_with(path, options)).await
    }

    /// The async twin of [`register`](Self::register).
    ///
    /// Cancel safe: a future dropped after the registration was sent
    /// unregisters the name, as a dropped [`Service`] does.
    pub async fn register_async(&self, service: &str, methods: &[MethodSpec]) -> Result<Service> {
        let pending = self.begin_register(service, methods.to_vec())?;
        let mut abandon = AbandonOnDrop(Some((&pending, service)));
        let reply = poll_fn(|cx| pending.reply.poll_recv(cx)).await;
        abandon.0 = None;
        drop(abandon);
        let incoming = self.end_register(pending, reply)?;
        Ok(Service::new(self.clone(), service, incoming))
    }

    /// The async twin of [`list`](Self::list): no thread waits for the
    /// broker's answer, so a stalled broker holds up only this future.
    ///
    /// Cancel safe: a future dropped before the answer leaves nothing
    /// behind but the answer, discarded when it comes.
    pub async fn list_async(&self) -> Result<BrokerSnapshot> {
        let reply = self
            .link()
            .send_request(|request| Frame::List { request })?;
        match poll_fn(|cx| reply.poll_recv(cx)).await {
            Some(reply) => snapshot(reply),
            None => Err(Error::BrokerGone),
        }
    }
}

/// Withdraws a registration whose future was dropped before its answer.
struct AbandonOnDrop<'a>(Option<(&'a PendingRegistration, &'a str)>);

impl Drop for AbandonOnDrop<'_> {
    fn drop(&mut self) {
        if let Some((pending, service)) = self.0.take() {
            pending
                .link
                .abandon_registration(service, &pending.incoming);
        }
    }
}
