//! Waiting for the other peer: spin briefly, then sleep on the doorbell.
//!
//! Each direction of a stream has a doorbell: one end of a Unix socket pair
//! per peer. A peer rings it (one byte) only when the other has announced it
//! is asleep, so a running stream makes no wake-up syscalls. The socket's
//! other end closes when the other peer exits or dies, which wakes any sleep
//! at once: no wait outlives the peer. The descriptor is pollable, so an event
//! loop can watch it instead of sleeping here.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use shmbus::sys;

/// How long a blocked side spins before it sleeps in the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitPolicy {
    /// Time spent re-checking before sleeping. Zero sleeps at once.
    pub spin: Duration,
    /// Longest a single send or receive may wait for the peer before failing
    /// with [`Error::Stalled`](crate::Error::Stalled); `None` waits as long
    /// as the peer lives.
    pub stall: Option<Duration>,
}

impl WaitPolicy {
    /// The default: a few microseconds of spinning, then sleep.
    pub const BLOCKING: WaitPolicy = WaitPolicy {
        spin: Duration::from_micros(20),
        stall: None,
    };
    /// Low latency: spin for up to a millisecond before sleeping. Burns a
    /// core while waiting; use when round-trip latency matters more.
    pub const SPIN: WaitPolicy = WaitPolicy {
        spin: Duration::from_millis(1),
        stall: None,
    };

    /// This policy, failing a wait that makes no progress for `limit`.
    pub const fn with_stall_timeout(self, limit: Duration) -> WaitPolicy {
        WaitPolicy {
            spin: self.spin,
            stall: Some(limit),
        }
    }

    /// When a wait starting now must give up.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.stall.map(|d| Instant::now() + d)
    }
}

impl Default for WaitPolicy {
    fn default() -> Self {
        Self::BLOCKING
    }
}

/// Time left before `deadline`, or [`Error::Stalled`](crate::Error::Stalled).
pub(crate) fn stall_left(deadline: Instant) -> crate::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(crate::Error::Stalled);
    }
    Ok(left)
}

/// Threads of this process spinning now.
static SPINNING: AtomicUsize = AtomicUsize::new(0);

/// A turn to spin, given back on drop. Spinning pays only while the peer
/// runs on another CPU; with more waiting threads than CPUs the spinners
/// would take the CPUs their peers need. So at most half the CPUs this
/// process may use (at least one) spin at once; the other waiters sleep
/// at once and are woken by their peer.
struct SpinTurn;

impl SpinTurn {
    fn take() -> Option<SpinTurn> {
        static LIMIT: OnceLock<usize> = OnceLock::new();
        let limit = *LIMIT.get_or_init(|| {
            std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
        });
        // Relaxed: a counter of turns; it orders no other memory.
        if SPINNING.fetch_add(1, Ordering::Relaxed) < limit {
            Some(SpinTurn)
        } else {
            SPINNING.fetch_sub(1, Ordering::Relaxed);
            None
        }
    }
}

impl Drop for SpinTurn {
    fn drop(&mut self) {
        SPINNING.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Re-runs `check` until it yields a value or the spin budget is spent.
/// Gives up at once when other threads of this process already spin on
/// every CPU that spinning may take (see [`SpinTurn`]).
pub(crate) fn spin<T, E>(
    policy: WaitPolicy,
    mut check: impl FnMut() -> Result<Option<T>, E>,
) -> Result<Option<T>, E> {
    if policy.spin.is_zero() {
        return Ok(None);
    }
    let Some(_turn) = SpinTurn::take() else {
        return Ok(None);
    };
    // The clock is first read after 16 looks: a peer that answers within
    // them (the common case when both spin) costs no clock read at all.
    let mut start = None;
    let mut round = 0u32;
    loop {
        // One pause between looks: a pause costs up to ~140 cycles on
        // recent x86, and every one of them is added to the wake-up latency.
        std::hint::spin_loop();
        if let Some(v) = check()? {
            return Ok(Some(v));
        }
        round += 1;
        if round.is_multiple_of(16) {
            let since = *start.get_or_insert_with(Instant::now);
            if since.elapsed() >= policy.spin {
                return Ok(None);
            }
        }
    }
}

/// One peer's end of a direction's doorbell socket.
pub(crate) struct Doorbell {
    /// Shared with the call's result watch, which must outlive the port
    /// (see [`PeerResult`](super::result::PeerResult)); the socket closes
    /// when both are gone.
    sock: Arc<OwnedFd>,
    peer_closed: bool,
}

impl Doorbell {
    /// Every read and write on the doorbell passes `MSG_DONTWAIT`, so the
    /// descriptor's own blocking mode does not matter (and costs no syscall).
    pub(crate) fn new(sock: OwnedFd) -> Self {
        Doorbell {
            sock: Arc::new(sock),
            peer_closed: false,
        }
    }

    /// Another handle on this end of the socket: it stays open while any
    /// handle lives.
    pub(crate) fn share(&self) -> Arc<OwnedFd> {
        self.sock.clone()
    }

    /// True once the other end closed: the peer finished or died.
    pub(crate) fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// Wakes the other peer. A full socket means a wake-up is already pending.
    pub(crate) fn ring(&mut self) {
        match sys::send_with_fds(self.sock.as_fd(), &[1], &[], false) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => self.peer_closed = true,
        }
    }

    /// Sleeps until rung, until the peer closes its end, or until `deadline`
    /// (then [`Error::Stalled`](crate::Error::Stalled)).
    pub(crate) fn sleep(&mut self, deadline: Option<Instant>) -> crate::Result<()> {
        if !self.peer_closed {
            let left = match deadline {
                Some(d) => Some(stall_left(d)?),
                None => None,
            };
            sys::wait_readable(self.sock.as_fd(), left)?;
        }
        self.drain();
        Ok(())
    }

    /// Consumes pending rings and notices a closed peer.
    pub(crate) fn drain(&mut self) {
        let mut buf = [0u8; 256];
        // Bounded: a peer flooding the doorbell cannot keep us here.
        for _ in 0..16 {
            match sys::recv_nowait(self.sock.as_fd(), &mut buf) {
                Ok(0) => {
                    self.peer_closed = true;
                    return;
                }
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.peer_closed = true;
                    return;
                }
            }
        }
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_waiter_beyond_the_spin_limit_sleeps_without_spinning() {
        // Every turn this process allows, held.
        let held: Vec<SpinTurn> = std::iter::from_fn(SpinTurn::take).take(1024).collect();
        assert!(!held.is_empty() && held.len() < 1024);
        let mut looks = 0;
        let got = spin(WaitPolicy::SPIN, || -> Result<Option<()>, ()> {
            looks += 1;
            Ok(Some(()))
        });
        assert_eq!((got, looks), (Ok(None), 0));
        drop(held);
        let got = spin(WaitPolicy::SPIN, || -> Result<Option<()>, ()> {
            looks += 1;
            Ok(Some(()))
        });
        assert_eq!((got, looks), (Ok(Some(())), 1));
        assert_eq!(SPINNING.load(Ordering::Relaxed), 0);
    }
}
