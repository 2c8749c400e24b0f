//! Turning signals into events the loop can poll: SIGTERM and SIGINT ask the
//! broker to stop, SIGHUP to reload its configuration. Each kind has its own
//! socket pair; a signal handler (signal-hook) writes a byte to it.

use std::io;
use std::os::unix::net::UnixStream as StdUnixStream;

use mio::net::UnixStream;

/// One pollable signal channel.
pub struct SignalPipe {
    /// The end the loop polls.
    pub rx: UnixStream,
    tx: StdUnixStream,
}

impl SignalPipe {
    /// A fresh channel.
    pub fn new() -> io::Result<Self> {
        let (rx, tx) = StdUnixStream::pair()?;
        rx.set_nonblocking(true)?;
        tx.set_nonblocking(true)?;
        Ok(SignalPipe {
            rx: UnixStream::from_std(rx),
            tx,
        })
    }

    /// Routes `signals` to this channel.
    pub fn route(&self, signals: &[i32]) -> io::Result<()> {
        for &sig in signals {
            signal_hook::low_level::pipe::register(sig, self.tx.try_clone()?)?;
        }
        Ok(())
    }

    /// A handle that triggers this channel from another thread.
    pub fn trigger(&self) -> io::Result<Trigger> {
        Ok(Trigger(self.tx.try_clone()?))
    }

    /// Consumes pending bytes; true when there were any.
    pub fn take(&self) -> bool {
        let mut buf = [0u8; 64];
        let mut got = false;
        while let Ok(n) = io::Read::read(&mut &self.rx, &mut buf) {
            if n == 0 {
                break;
            }
            got = true;
        }
        got
    }
}

/// Triggers a [`SignalPipe`] (for example, stops a broker run in a thread).
pub struct Trigger(StdUnixStream);

impl Trigger {
    /// Fires the channel.
    pub fn fire(&self) {
        let _ = io::Write::write(&mut &self.0, &[1]);
    }

    /// Alias of [`fire`](Self::fire) for stop handles.
    pub fn stop(&self) {
        self.fire();
    }
}
