//! Connecting and registering for tokio (feature `tokio`). Connecting is a
//! one-time handshake of a few local round trips, run on the runtime's
//! blocking pool so that a slow broker never holds up a worker. Registering
//! awaits the broker's reply in a mailbox that the connection's frame
//! reader fills, as calls do.

use std::future::poll_fn;
use std::path::Path;

use shmbus::frame::MethodSpec;

use super::{ConnectOptions, Connection, PendingRegistration};
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
