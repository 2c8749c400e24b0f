//! # shmbusd
//!
//! The shmbus broker. It accepts peers on a Unix socket, takes their identity
//! from the kernel (SO_PEERCRED), registers services, routes calls and results,
//! and for every streaming call creates the stream's port — sealed memfd rings
//! plus doorbell sockets, or plain sockets as the fallback — and passes it to
//! both peers. Stream data never passes through the broker.
//!
//! - [`router`]: bus semantics (peers, services, calls, streams), no I/O;
//! - [`ports`]: creating stream ports;
//! - [`conn`]: one connection's buffers;
//! - [`server`]: the event loop and the process lifecycle (stop, reload);
//! - [`signals`]: signals as pollable events;
//! - [`notify`]: readiness, status and watchdog for the service manager;
//! - [`logging`]: log lines, journald-aware;
//! - [`policy`]: who may register and call which services;
//! - [`quota`]: per-uid resource quotas;
//! - [`config`]: the configuration file and flags.

#![forbid(unsafe_code)]

pub mod config;
pub mod conn;
pub mod log_limit;
pub mod logging;
pub mod notify;
pub mod policy;
pub mod ports;
pub mod quota;
pub mod router;
pub mod server;
pub mod signals;
