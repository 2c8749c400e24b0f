//! Command-line configuration and the broker's limits.

use std::path::PathBuf;

use clap::Parser;

/// Limits the broker enforces.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest control frame body accepted or sent.
    pub max_frame: u32,
    /// Ring data bytes when a call names none.
    pub default_ring_size: u32,
    /// Largest ring a call may ask for.
    pub max_ring_size: u32,
    /// Services one connection may register.
    pub max_services_per_connection: usize,
    /// Methods one service may declare.
    pub max_methods_per_service: usize,
    /// Calls one connection may have live.
    pub max_calls_per_connection: usize,
    /// Connections at once.
    pub max_connections: usize,
    /// Bytes queued toward one connection before it is cut off as too slow.
    pub max_queued_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame: shmbus::frame::DEFAULT_MAX_FRAME,
            default_ring_size: shmbus::DEFAULT_RING_SIZE,
            max_ring_size: 64 << 20,
            max_services_per_connection: 256,
            max_methods_per_service: 64,
            max_calls_per_connection: 4096,
            max_connections: 4096,
            max_queued_bytes: 16 << 20,
        }
    }
}

/// `shmbusd`: the shmbus broker.
#[derive(Debug, Parser)]
#[command(
    name = "shmbusd",
    version,
    about = "The shmbus broker: routes calls and sets up shared-memory stream ports"
)]
pub struct Args {
    /// Socket to listen on [default: $SHMBUS_SOCKET, else $XDG_RUNTIME_DIR/shmbus/bus.sock, else /run/shmbus/bus.sock].
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Ring data bytes per direction when a call names none (power of two).
    #[arg(long, value_name = "BYTES")]
    pub ring_size: Option<u32>,
    /// Largest ring a call may ask for.
    #[arg(long, value_name = "BYTES")]
    pub max_ring_size: Option<u32>,
    /// Largest control frame body.
    #[arg(long, value_name = "BYTES")]
    pub max_frame: Option<u32>,
    /// Connections accepted at once.
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Log level (error, warn, info, debug, trace); RUST_LOG overrides.
    #[arg(long, default_value = "info")]
    pub log_level: String,
}

impl Args {
    /// The limits these arguments ask for, checked.
    pub fn limits(&self) -> Result<Limits, String> {
        let mut l = Limits::default();
        if let Some(v) = self.max_frame {
            if !(4096..=(64 << 20)).contains(&v) {
                return Err(format!("max-frame {v}: must be between 4096 and 67108864"));
            }
            l.max_frame = v;
        }
        if let Some(v) = self.max_ring_size {
            if !shmbus::ring::valid_capacity(v) {
                return Err(format!(
                    "max-ring-size {v}: must be a power of two between 4096 and 1 GiB"
                ));
            }
            l.max_ring_size = v;
        }
        if let Some(v) = self.ring_size {
            if !shmbus::ring::valid_capacity(v) {
                return Err(format!(
                    "ring-size {v}: must be a power of two between 4096 and 1 GiB"
                ));
            }
            l.default_ring_size = v;
        }
        if l.default_ring_size > l.max_ring_size {
            return Err(format!(
                "ring-size {} exceeds max-ring-size {}",
                l.default_ring_size, l.max_ring_size
            ));
        }
        if let Some(v) = self.max_connections {
            l.max_connections = v.max(1);
        }
        Ok(l)
    }
}
