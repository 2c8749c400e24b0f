//! Connecting and registering for tokio (feature `tokio`). Both are
//! one-time steps of a few local round trips; they run on the runtime's
//! blocking pool, so that a slow or absent broker never holds up a worker.

use std::path::Path;

use shmbus::frame::MethodSpec;

use super::{ConnectOptions, Connection};
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
    pub async fn register_async(&self, service: &str, methods: &[MethodSpec]) -> Result<Service> {
        let (conn, service, methods) = (self.clone(), service.to_string(), methods.to_vec());
        blocking(move || conn.register(&service, &methods)).await
    }
}
