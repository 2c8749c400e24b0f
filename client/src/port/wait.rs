//! Waiting for the other peer: spin briefly, then sleep on the doorbell.
//!
//! Each direction of a stream has a doorbell: one end of a Unix socket pair
//! per peer. A peer rings it (one byte) only when the other has announced it
//! is asleep, so a running stream makes no wake-up syscalls. The socket's
//! other end closes when the other peer exits or dies, which wakes any sleep
//! at once: no wait outlives the peer. The descriptor is pollable, so an event
//! loop can watch it instead of sleeping here.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shmbus::sys;

/// How long a blocked side spins before it sleeps in the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitPolicy {
    /// Longest time spent re-checking before sleeping. Zero sleeps at once.
    /// A wait for a large item (256 KiB and more) over shared memory spins
    /// at least about the time the peer needs to move it (a quarter
    /// nanosecond a byte). A port whose peer keeps coming long after the
    /// spin gave up spins less, down to a 64th, until the peer answers
    /// within a spin again. Past its first 20 µs, a spin lets any other
    /// thread ready to run on its CPU go first between re-checks.
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

    /// The policy for a wait on a large record (`bytes` from
    /// [`shmbus::ring::HOT_RECORD`] on): the spin is stretched to the time
    /// the peer needs to move the record at memory speed (taken as 4 bytes
    /// a nanosecond, about 260 µs a MiB), since large records take turns in
    /// two slots and each side waits about a record's time for the other
    /// at every turn. A sleep and wake-up per record would cost more than
    /// that wait. A zero spin stays zero; the spinner still shrinks the
    /// spin of a port whose peer keeps coming later.
    #[inline]
    pub(crate) fn for_record(self, bytes: usize) -> WaitPolicy {
        if bytes < shmbus::ring::HOT_RECORD || self.spin.is_zero() {
            return self;
        }
        WaitPolicy {
            spin: self.spin.max(Duration::from_nanos(bytes as u64 / 4)),
            stall: self.stall,
        }
    }

    /// When a wait starting now must give up.
    #[inline]
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.stall.map(|d| Instant::now() + d)
    }

    /// When a wait starting now must give up, in a call whose deadline is
    /// `call`: the stall limit or the call's deadline, whichever is first.
    /// A wait ended by either reports [`Error::Stalled`](crate::Error::Stalled);
    /// the stream half tells the two apart by the clock.
    #[inline]
    pub(crate) fn deadline_with(&self, call: Option<Instant>) -> Option<Instant> {
        match (self.deadline(), call) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
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

/// How long one port spins before it sleeps, learnt from how its waits
/// end. A wait that ends while spinning, or whose peer came soon after the
/// spin gave up, restores the policy's whole spin; one whose peer came much
/// later halves the next spin, down to a 64th. A peer that keeps up (a
/// ping-pong, a stream whose ends run on two CPUs) keeps the whole spin; a
/// peer that is rarely running (more streams than CPUs) costs little
/// spinning, so the CPU goes to the threads with work.
///
/// When the peer came is the time it rang the doorbell ([`Doorbell::ring`]
/// sends its clock), not the time this side woke: on a machine whose
/// wake-ups take longer than the spin, a peer that answered at once would
/// otherwise look late every time, and the spin would shrink until every
/// wait slept.
#[derive(Debug, Default)]
pub(crate) struct Spinner {
    /// Divides the policy's spin: 1, 2, 4, … 64.
    shrink: u32,
    /// When the last spin gave up (`CLOCK_MONOTONIC` ns).
    gave_up: Option<u64>,
}

impl Spinner {
    const MAX_SHRINK: u32 = 6;

    /// Re-runs `check` until it yields a value or this port's share of the
    /// policy's spin is spent.
    // Inlined into each wait loop, like `spin_for`: out of line, the calls
    // cost 0.03 µs of a 0.5 µs round trip (harness, side by side).
    #[inline(always)]
    pub(crate) fn spin<T, E>(
        &mut self,
        policy: WaitPolicy,
        mut check: impl FnMut() -> Result<Option<T>, E>,
    ) -> Result<Option<T>, E> {
        let budget = Duration::from_nanos((policy.spin.as_nanos() as u64) >> self.shrink);
        if budget.is_zero() {
            return Ok(None);
        }
        let got = spin_for(budget, &mut check)?;
        match got {
            Some(_) => self.shrink = 0,
            None => self.gave_up = Some(sys::monotonic_ns()),
        }
        Ok(got)
    }

    /// After the sleep that followed a spin, with the time the peer rang
    /// the doorbell if it did: a peer that came within the whole spin would
    /// have been caught by it, a later one was not worth spinning for.
    pub(crate) fn woke(&mut self, policy: WaitPolicy, rung_at: Option<u64>) {
        self.woke_at(policy, rung_at, sys::monotonic_ns());
    }

    fn woke_at(&mut self, policy: WaitPolicy, rung_at: Option<u64>, now: u64) {
        if let Some(at) = self.gave_up.take() {
            // A ring from before the spin gave up (an old one drained late),
            // or one stamped in the future (a hostile peer), says nothing.
            let came = rung_at.filter(|&t| t >= at && t <= now).unwrap_or(now);
            self.shrink = if came - at < policy.spin.as_nanos() as u64 {
                0
            } else {
                (self.shrink + 1).min(Self::MAX_SHRINK)
            };
        }
    }
}

/// How long a spin only looks. Past it, the spinning thread offers its CPU
/// to any other thread ready to run there (`sched_yield`) between looks,
/// and goes on looking when there is none (the call returns at once). Only
/// long spins get there: a wait on a large record, stretched to the time
/// its peer needs to move it, or [`WaitPolicy::SPIN`]. On a machine with
/// more busy threads than CPUs such a spin would otherwise hold a CPU that
/// the threads it waits for (the peer, or whatever feeds the peer) need: a
/// stream of 1 MiB items relayed between hosts by two bridges on one
/// 2-vCPU machine moved about a quarter more once its producer and
/// consumer yielded (harness, side by side), and streams between two
/// processes moved as much as before.
pub(crate) const YIELD_AFTER: Duration = Duration::from_micros(20);

/// Between a spin's looks, once it has lasted `spent`: past
/// [`YIELD_AFTER`], lets another thread ready to run on this CPU go first.
#[inline(always)]
pub(crate) fn yield_if_long(spent: Duration) {
    if spent >= YIELD_AFTER {
        std::thread::yield_now();
    }
}

/// Re-runs `check` until it yields a value or `budget` is spent.
#[inline(always)]
fn spin_for<T, E>(
    budget: Duration,
    mut check: impl FnMut() -> Result<Option<T>, E>,
) -> Result<Option<T>, E> {
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
            let spent = since.elapsed();
            if spent >= budget {
                return Ok(None);
            }
            yield_if_long(spent);
        }
    }
}

/// One peer's end of a direction's doorbell socket.
pub(crate) struct Doorbell {
    /// ConnectionState with the call's result watch, which must outlive the port
    /// (see [`PeerResult`](super::result::PeerResult)); the socket closes
    /// when both are gone.
    sock: Arc<OwnedFd>,
    peer_closed: bool,
    /// The clock the peer sent with its latest ring, if a drain found one.
    rung_at: Option<u64>,
    /// Blob descriptors that arrived and wait for their records, oldest
    /// first (a receiving port's doorbell only; see [`BLOB_FDS_READ_AHEAD`]).
    fds: VecDeque<OwnedFd>,
    /// This end receives blobs: descriptors are kept, not discarded.
    keeps_fds: bool,
    /// The peer sent what no peer may (too many descriptors at once).
    violation: Option<String>,
}

/// A receiving doorbell stops reading once this many blob descriptors wait
/// for their records: the rest stay in the socket until needed, so a
/// stream with many blobs in flight holds few descriptors at a time.
pub(crate) const BLOB_FDS_READ_AHEAD: usize = 16;

impl Doorbell {
    /// Every read and write on the doorbell passes `MSG_DONTWAIT`, so the
    /// descriptor's own blocking mode does not matter (and costs no syscall).
    pub(crate) fn new(sock: OwnedFd) -> Self {
        Doorbell {
            sock: Arc::new(sock),
            peer_closed: false,
            rung_at: None,
            fds: VecDeque::new(),
            keeps_fds: false,
            violation: None,
        }
    }

    /// A receiving port's doorbell: blob descriptors that arrive on it are
    /// kept for [`take_fd`](Self::take_fd).
    pub(crate) fn keeping_fds(mut self) -> Self {
        self.keeps_fds = true;
        self
    }

    /// What the peer sent that no peer may, if it did.
    pub(crate) fn violation(&self) -> Option<&str> {
        self.violation.as_deref()
    }

    /// Blob descriptors received and not yet taken.
    pub(crate) fn queued_fds(&self) -> usize {
        self.fds.len()
    }

    /// The oldest blob descriptor received, reading the socket for it if
    /// none is queued: `None` when the socket holds none either.
    pub(crate) fn take_fd(&mut self) -> Option<OwnedFd> {
        if self.fds.is_empty() {
            // Bounded: a record's descriptor was sent before the record was
            // published, so it is in the socket now, behind at most a few
            // rings.
            for _ in 0..64 {
                if !self.read_once() || !self.fds.is_empty() {
                    break;
                }
            }
        }
        self.fds.pop_front()
    }

    /// [`send_fd`](Self::send_fd) without waiting: `Ok(false)` when the
    /// socket is full (nothing was sent).
    pub(crate) fn try_send_fd(&mut self, fd: BorrowedFd<'_>) -> crate::Result<bool> {
        let now = sys::monotonic_ns().to_le_bytes();
        loop {
            match sys::send_with_fds(self.sock.as_fd(), &now, &[fd], false) {
                Ok(_) => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => {
                    self.peer_closed = true;
                    return Err(crate::Error::PeerGone(format!(
                        "the receiving peer closed the stream ({e})"
                    )));
                }
            }
        }
    }

    /// Sends a blob's descriptor to the peer, with a ring (8 bytes of the
    /// clock) for it to ride on; waits while the socket is full, up to
    /// `deadline`.
    pub(crate) fn send_fd(
        &mut self,
        fd: BorrowedFd<'_>,
        deadline: Option<Instant>,
    ) -> crate::Result<()> {
        let now = sys::monotonic_ns().to_le_bytes();
        loop {
            match sys::send_with_fds(self.sock.as_fd(), &now, &[fd], false) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let left = deadline.map(stall_left).transpose()?;
                    sys::wait_ready(self.sock.as_fd(), false, true, left)?;
                }
                Err(e) => {
                    self.peer_closed = true;
                    return Err(crate::Error::PeerGone(format!(
                        "the receiving peer closed the stream ({e})"
                    )));
                }
            }
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

    /// Wakes the other peer, telling it when (the 8 bytes of
    /// [`sys::monotonic_ns`], little endian). A full socket means a
    /// wake-up is already pending.
    pub(crate) fn ring(&mut self) {
        let now = sys::monotonic_ns().to_le_bytes();
        match sys::send_with_fds(self.sock.as_fd(), &now, &[], false) {
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

    /// The time the peer sent with the latest ring drained since the last
    /// call, if any.
    pub(crate) fn take_rung_at(&mut self) -> Option<u64> {
        self.rung_at.take()
    }

    /// Consumes pending rings and notices a closed peer.
    pub(crate) fn drain(&mut self) {
        // Bounded: a peer flooding the doorbell cannot keep us here.
        for _ in 0..16 {
            if self.keeps_fds && self.fds.len() >= BLOB_FDS_READ_AHEAD {
                return;
            }
            if !self.read_once() {
                return;
            }
        }
    }

    /// One read of the socket; false when there was nothing to read or
    /// the peer is gone. A receiving end keeps the descriptors that came;
    /// a sending end, to which no peer sends any, closes them.
    fn read_once(&mut self) -> bool {
        let mut buf = [0u8; 256];
        let read = if self.keeps_fds {
            sys::recv_with_fds_upto(
                self.sock.as_fd(),
                &mut buf,
                &mut self.fds,
                false,
                BLOB_FDS_READ_AHEAD + 2 * shmbus::frame::MAX_FDS_PER_FRAME,
            )
        } else {
            sys::recv_nowait(self.sock.as_fd(), &mut buf)
        };
        match read {
            Ok(0) => {
                self.peer_closed = true;
                false
            }
            Ok(n) => {
                // Whole rings only: a read that does not end on an
                // 8-byte boundary (a stream split one) gives no time.
                if n >= 8 && n % 8 == 0 {
                    let last: [u8; 8] = buf[n - 8..n].try_into().expect("8 bytes");
                    self.rung_at = Some(u64::from_le_bytes(last));
                }
                true
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => true,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                // Too many descriptors at once: the peer is hostile, and
                // what it sent is closed.
                self.violation = Some(e.to_string());
                false
            }
            Err(_) => {
                self.peer_closed = true;
                false
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

    fn never() -> Result<Option<()>, ()> {
        Ok(None)
    }

    #[test]
    fn a_wait_for_a_large_record_spins_about_its_time_at_memory_speed() {
        let p = WaitPolicy::BLOCKING;
        let large = shmbus::ring::HOT_RECORD;
        // Small records keep the policy's spin.
        assert_eq!(p.for_record(64), p);
        assert_eq!(p.for_record(large - 1), p);
        // 1 MiB: a quarter of a nanosecond a byte.
        assert_eq!(
            p.for_record(1 << 20).spin,
            Duration::from_nanos((1 << 20) / 4)
        );
        assert!(p.for_record(large).spin > p.spin);
        // A longer spin asked for stays; a zero spin (sleep at once) too.
        assert_eq!(WaitPolicy::SPIN.for_record(1 << 20), WaitPolicy::SPIN);
        let sleeper = WaitPolicy {
            spin: Duration::ZERO,
            stall: Some(Duration::from_secs(1)),
        };
        assert_eq!(sleeper.for_record(1 << 30), sleeper);
        // The stall limit is kept.
        let limited = p.with_stall_timeout(Duration::from_secs(3));
        assert_eq!(limited.for_record(1 << 20).stall, limited.stall);
    }

    #[test]
    fn long_sleeps_shrink_the_spin_and_a_quick_peer_restores_it() {
        let policy = WaitPolicy {
            spin: Duration::from_millis(2),
            stall: None,
        };
        let mut s = Spinner::default();
        let t = Instant::now();
        assert_eq!(s.spin(policy, never), Ok(None));
        assert!(t.elapsed() >= policy.spin);
        // The peer came long after the spin gave up: spin half as long.
        std::thread::sleep(policy.spin * 2);
        s.woke(policy, None);
        assert_eq!(s.shrink, 1);
        for _ in 0..10 {
            assert_eq!(s.spin(policy, never), Ok(None));
            std::thread::sleep(policy.spin * 2);
            s.woke(policy, None);
        }
        assert_eq!(s.shrink, Spinner::MAX_SHRINK);
        // A peer that answers while spinning gets the whole spin back.
        let mut looks = 0;
        let got = s.spin(policy, || -> Result<Option<()>, ()> {
            looks += 1;
            Ok((looks == 3).then_some(()))
        });
        assert_eq!((got, looks), (Ok(Some(())), 3));
        assert_eq!(s.shrink, 0);
        // So does one that comes soon after the spin gave up.
        s.shrink = 4;
        assert_eq!(s.spin(policy, never), Ok(None));
        s.woke(policy, None);
        assert_eq!(s.shrink, 0);
    }

    /// On a machine whose wake-ups take longer than the spin (75 µs here,
    /// against a 20 µs spin), a peer that rings 2 µs after the spin gave up
    /// keeps the whole spin: its ring time says it came at once, however
    /// late the sleeper woke. Judged by the wake time instead, every wait
    /// looked late and the spin shrank to a 64th, so every wait slept.
    #[test]
    fn a_peer_that_rang_at_once_keeps_the_spin_however_slow_the_wake_up() {
        let policy = WaitPolicy::BLOCKING;
        let mut s = Spinner::default();
        let mut t = 1_000_000_000u64;
        for _ in 0..10 {
            s.gave_up = Some(t);
            s.woke_at(policy, Some(t + 2_000), t + 77_000);
            t += 1_000_000;
        }
        assert_eq!(s.shrink, 0);
        // A peer that rang long after the spin: not worth spinning for.
        s.gave_up = Some(t);
        s.woke_at(policy, Some(t + 500_000), t + 575_000);
        assert_eq!(s.shrink, 1);
        // A ring older than the spin, or from the future, counts for
        // nothing: the wake time decides.
        s.gave_up = Some(t);
        s.woke_at(policy, Some(t - 1), t + 75_000);
        assert_eq!(s.shrink, 2);
        s.gave_up = Some(t);
        s.woke_at(policy, Some(u64::MAX), t + 5_000);
        assert_eq!(s.shrink, 0);
    }

    #[test]
    fn a_ring_carries_the_ringers_clock() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let (mut a, mut b) = (Doorbell::new(a.into()), Doorbell::new(b.into()));
        let before = sys::monotonic_ns();
        a.ring();
        a.ring();
        b.drain();
        let at = b.take_rung_at().expect("a time");
        assert!(at >= before && at <= sys::monotonic_ns());
        assert_eq!(b.take_rung_at(), None);
    }

    #[test]
    fn a_zero_spin_policy_never_looks() {
        let mut s = Spinner::default();
        let mut looks = 0;
        let policy = WaitPolicy {
            spin: Duration::ZERO,
            stall: None,
        };
        let got = s.spin(policy, || {
            looks += 1;
            Ok::<_, ()>(Some(()))
        });
        assert_eq!((got, looks), (Ok(None), 0));
    }
}
