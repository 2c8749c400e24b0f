//! Making stream ports, the broker's [`PortMaker`]: per direction a socket
//! pair (the doorbell, or the whole data path on the socket transport) and,
//! for shared memory, a sealed memfd ring, taken from the ring [`Pool`] when
//! it has one ready. The router decides what port a stream gets
//! ([`PortSpec`]); [`Ports`] makes it. The server creates the [`Ports`]
//! (which starts the pool's thread), gives it to the router, and wakes the
//! pool after each turn ([`Ports::refill`]).
//!
//! The broker never maps a ring; it writes the header with `pwrite`, seals
//! the memfd, hands the descriptors out and closes its copies.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use shmbus::frame::Transport;
use shmbus::sys;

use crate::router::{PortFds, PortMaker, PortSpec};

/// The broker's port maker: real socket pairs and memfds, shared-memory
/// directions from a [`Pool`] filled by a thread of its own.
pub struct Ports {
    pool: Pool,
}

impl Ports {
    /// Starts the ring pool's filler thread (it sleeps until a ring is
    /// asked for).
    pub fn start() -> Ports {
        Ports {
            pool: Pool::start(),
        }
    }

    /// Lets the ring pool make more rings if it runs low. The server calls
    /// it once the frames of a turn are sent, so that waking the pool's
    /// thread never delays them.
    pub fn refill(&self) {
        self.pool.refill();
    }
}

impl PortMaker for Ports {
    fn make(&mut self, spec: PortSpec, now: Instant) -> io::Result<PortFds> {
        create(spec, Some(&self.pool), now)
    }
}

/// Socket buffer size asked for on socket-transport links.
fn link_buffer(ring_size: u32) -> usize {
    (ring_size as usize).clamp(256 * 1024, 4 << 20)
}

/// One direction's shared-memory port made ahead of time: the doorbell pair
/// and a fresh sealed ring that no process has seen yet.
struct Unit {
    caller: OwnedFd,
    service: OwnedFd,
    /// The ring, once per peer: duplicated here rather than on the call path.
    memfd_caller: OwnedFd,
    memfd_service: OwnedFd,
}

#[derive(Default)]
struct PoolState {
    /// Ring geometry (capacity, high-water mark) last asked for.
    key: Option<(u32, u64)>,
    units: Vec<Unit>,
    last_take: Option<Instant>,
    /// The filler is waiting on the condition variable.
    filler_asleep: bool,
    stop: bool,
}

type PoolShared = (Mutex<PoolState>, Condvar);

/// Shared-memory ports made ahead of time by a thread at SCHED_IDLE
/// priority, so that making a ring (socketpair, memfd_create, ftruncate,
/// pwrite, seals: 10-20 µs) leaves the call path and runs on otherwise idle
/// CPU. A ring is never reused: each is handed out once, as a freshly made
/// one would be. Only the geometry last asked for is kept (normally the
/// default), and the pool empties after a second without calls.
pub struct Pool {
    shared: Arc<PoolShared>,
}

/// Rings kept ready.
const POOL_TARGET: usize = 6;
/// The filler is woken once the pool is down to this many, so that one
/// wake-up makes several rings.
const POOL_LOW: usize = 3;

/// The guard, even if the other thread panicked holding the lock: the state
/// is a list of descriptors and a few plain fields, valid at every step.
fn relock<T>(r: std::sync::LockResult<T>) -> T {
    r.unwrap_or_else(std::sync::PoisonError::into_inner)
}
const POOL_IDLE: Duration = Duration::from_secs(1);

impl Pool {
    /// Starts the filler thread; it sleeps until a ring is asked for.
    pub fn start() -> Pool {
        let shared = Arc::new((Mutex::new(PoolState::default()), Condvar::new()));
        let weak = Arc::downgrade(&shared);
        let _ = std::thread::Builder::new()
            .name("shmbusd-rings".into())
            .spawn(move || fill(weak));
        Pool { shared }
    }

    /// A ready unit of this geometry, if any. Never wakes the filler: the
    /// broker calls [`Pool::refill`] once it has sent what the call needed,
    /// so the wake-up stays off the call path.
    /// `now` marks the pool as in use (it empties after [`POOL_IDLE`]
    /// without calls).
    fn take(&self, capacity: u32, hwm: u64, now: Instant) -> Option<Unit> {
        let mut st = relock(self.shared.0.lock());
        if st.key != Some((capacity, hwm)) {
            st.key = Some((capacity, hwm));
            st.units.clear();
        }
        st.last_take = Some(now);
        st.units.pop()
    }

    /// Wakes the filler if it sleeps and the pool runs low.
    pub fn refill(&self) {
        let (lock, cv) = &*self.shared;
        let mut st = relock(lock.lock());
        if st.filler_asleep && st.key.is_some() && st.units.len() <= POOL_LOW {
            st.filler_asleep = false;
            cv.notify_one();
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        relock(self.shared.0.lock()).stop = true;
        self.shared.1.notify_all();
    }
}

fn fill(weak: Weak<PoolShared>) {
    // Best effort: a seccomp filter (the unit's ~@resources) refuses it,
    // and then the thread runs at normal priority.
    let _ = sys::idle_priority_for_this_thread();
    loop {
        let Some(shared) = weak.upgrade() else { return };
        let key = {
            let (lock, cv) = &*shared;
            let mut st = relock(lock.lock());
            loop {
                if st.stop {
                    return;
                }
                let idle = st.last_take.is_none_or(|t| t.elapsed() >= POOL_IDLE);
                if idle {
                    // No calls lately: hold no descriptors.
                    st.units.clear();
                    st.key = None;
                    st.last_take = None;
                }
                match st.key {
                    Some(k) if st.units.len() < POOL_TARGET => break k,
                    Some(_) => {
                        st.filler_asleep = true;
                        st = relock(cv.wait_timeout(st, POOL_IDLE)).0;
                    }
                    None => {
                        st.filler_asleep = true;
                        st = relock(cv.wait(st));
                    }
                }
                st.filler_asleep = false;
            }
        };
        let made = (|| -> io::Result<Unit> {
            let (a, b) = UnixStream::pair()?;
            let memfd = shmbus::ring::create_memfd("shmbus-stream", key.0, key.1)?;
            Ok(Unit {
                caller: a.into(),
                service: b.into(),
                memfd_caller: memfd.try_clone()?,
                memfd_service: memfd,
            })
        })();
        match made {
            Ok(unit) => {
                let mut st = relock(shared.0.lock());
                if st.key == Some(key) {
                    st.units.push(unit);
                }
            }
            // Out of descriptors or memory: calls make their own meanwhile.
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Builds the port of one stream, taking shared-memory directions from
/// `pool` when it has them.
pub fn create(spec: PortSpec, pool: Option<&Pool>, now: Instant) -> io::Result<PortFds> {
    let PortSpec {
        stream,
        mode,
        transport,
        ring_size,
        credit,
    } = spec;
    let mut fds = PortFds {
        caller: Vec::new(),
        service: Vec::new(),
    };
    for (i, _dir) in mode.directions().iter().enumerate() {
        if transport == Transport::SharedMemory {
            if let Some(u) = pool.and_then(|p| p.take(ring_size, credit.high_water_mark, now)) {
                fds.caller.push(u.caller);
                fds.caller.push(u.memfd_caller);
                fds.service.push(u.service);
                fds.service.push(u.memfd_service);
                continue;
            }
        }
        let (a, b) = UnixStream::pair()?;
        if transport == Transport::Socket {
            // Best effort: the kernel caps these at its configured maximum.
            let _ = sys::set_socket_buffers(&a, link_buffer(ring_size));
            let _ = sys::set_socket_buffers(&b, link_buffer(ring_size));
        }
        fds.caller.push(a.into());
        fds.service.push(b.into());
        if transport == Transport::SharedMemory {
            let name = format!("shmbus-stream-{stream}-{i}");
            let memfd = shmbus::ring::create_memfd(&name, ring_size, credit.high_water_mark)?;
            fds.caller.push(memfd.try_clone()?);
            fds.service.push(memfd);
        }
    }
    Ok(fds)
}
