//! # shmbusd
//!
//! The shmbus broker. It accepts peers on a Unix socket, takes their identity
//! from the kernel (SO_PEERCRED), registers services, routes calls and results,
//! and for every streaming call creates the stream's port — sealed memfd rings
//! plus doorbell sockets, or plain sockets as the fallback — and passes it to
//! both peers. Stream data never passes through the broker.
//!
//! - [`router`]: bus semantics (peers, services, calls, streams, quotas,
//!   policy), no I/O: frames and the time in, outputs out, stream ports
//!   asked of a [`router::PortMaker`];
//! - [`ports`]: the broker's port maker: memfd rings and socket pairs, and
//!   the ring pool (with its thread) that makes rings ahead of calls;
//! - [`conn`]: one connection's buffers, and the frame reader that cuts
//!   received bytes into frames;
//! - [`server`]: the event loop (the I/O around the router: sockets, the
//!   clock, the port maker) and the process lifecycle (stop, reload);
//! - [`signals`]: signals as pollable events;
//! - [`notify`]: readiness, status and watchdog for the service manager;
//! - [`logging`]: log lines, journald-aware;
//! - [`policy`]: who may register and call which services;
//! - [`quota`]: per-uid resource quotas;
//! - [`log_limit`]: warnings per uid, so a retry loop cannot flood the log;
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
