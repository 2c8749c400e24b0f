//! A loom model of the ring's synchronization: positions, the credit limit,
//! the sleep flags with their SeqCst fences, and the doorbells. It mirrors,
//! step for step, `RingProducer::{try_reserve, publish, prepare_sleep}` and
//! `RingConsumer::{try_next, release, prepare_sleep}` with loom's atomics,
//! and the doorbell (a socket pair) as a counted wake-up. Loom explores every
//! interleaving allowed by the memory model: a lost wake-up shows up as both
//! sides asleep, which loom reports as a deadlock.
//!
//! Run: `RUSTFLAGS="--cfg loom" cargo test -p shmbus --release --lib loom`

use loom::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use loom::sync::{Arc, Condvar, Mutex};
use loom::thread;

/// One side's doorbell: pending rings, and a sleeper waiting for one.
#[derive(Default)]
struct Bell {
    pending: Mutex<u32>,
    rung: Condvar,
}

impl Bell {
    fn ring(&self) {
        *self.pending.lock().unwrap() += 1;
        self.rung.notify_one();
    }

    /// Sleeps until rung, then drains (as `Doorbell::sleep` does).
    fn sleep(&self) {
        let mut p = self.pending.lock().unwrap();
        while *p == 0 {
            p = self.rung.wait(p).unwrap();
        }
        *p = 0;
    }
}

#[derive(Default)]
struct Shared {
    write_pos: AtomicU64,
    read_pos: AtomicU64,
    credit_limit: AtomicU64,
    consumer_sleeping: AtomicU32,
    producer_sleeping: AtomicU32,
    consumer_bell: Bell,
    producer_bell: Bell,
}

/// Clears a peer's sleep flag if set (as `take_flag`).
fn take_flag(flag: &AtomicU32) -> bool {
    if flag.load(Ordering::Relaxed) != 0 {
        flag.store(0, Ordering::Relaxed);
        true
    } else {
        false
    }
}

/// Items of one slot each; `capacity` slots; credit `hwm` items, re-granted
/// when outstanding credit drops below half.
fn model(items: u64, capacity: u64, hwm: u64) {
    let mut builder = loom::model::Builder::new();
    // Bounded preemption keeps the search finite; wake-up bugs need few.
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(3);
    }
    builder.check(move || {
        let s = Arc::new(Shared::default());
        s.credit_limit.store(hwm, Ordering::Relaxed);
        let p = s.clone();
        let producer = thread::spawn(move || {
            let (mut written, mut read_cache, mut limit_cache) = (0u64, 0u64, hwm);
            while written < items {
                let room = written - read_cache < capacity;
                let credit = written < limit_cache;
                if room && credit {
                    written += 1;
                    // publish(): Release store, SeqCst fence, wake a sleeper.
                    p.write_pos.store(written, Ordering::Release);
                    fence(Ordering::SeqCst);
                    if take_flag(&p.consumer_sleeping) {
                        p.consumer_bell.ring();
                    }
                    continue;
                }
                // try_reserve() refreshed both caches before reporting Blocked.
                read_cache = p.read_pos.load(Ordering::Acquire);
                limit_cache = p.credit_limit.load(Ordering::Acquire);
                if written - read_cache < capacity && written < limit_cache {
                    continue;
                }
                // prepare_sleep(): flag, SeqCst fence, re-check.
                p.producer_sleeping.store(1, Ordering::Relaxed);
                fence(Ordering::SeqCst);
                let moved = p.read_pos.load(Ordering::Relaxed) != read_cache
                    || p.credit_limit.load(Ordering::Relaxed) != limit_cache;
                if moved {
                    p.producer_sleeping.store(0, Ordering::Relaxed);
                    continue;
                }
                p.producer_bell.sleep();
                p.producer_sleeping.store(0, Ordering::Relaxed);
            }
        });
        let (mut read, mut announced, mut write_cache) = (0u64, hwm, 0u64);
        let mut published = 0u64;
        // flush_release(): Release store of the position, SeqCst fence, wake.
        let flush = |read: u64, published: &mut u64| {
            if read != *published {
                *published = read;
                s.read_pos.store(read, Ordering::Release);
            }
            fence(Ordering::SeqCst);
            if take_flag(&s.producer_sleeping) {
                s.producer_bell.ring();
            }
        };
        while read < items {
            if read == write_cache {
                write_cache = s.write_pos.load(Ordering::Acquire);
            }
            if read < write_cache {
                read += 1;
                // release(): a re-grant of credit publishes at once; room is
                // published in batches (here: only when caught up or re-granting).
                if announced - read < hwm.div_ceil(2) {
                    announced = read + hwm;
                    s.credit_limit.store(announced, Ordering::Release);
                    flush(read, &mut published);
                }
                continue;
            }
            // Caught up: hand back the room before waiting.
            flush(read, &mut published);
            // prepare_sleep(): flag, SeqCst fence, re-check the position.
            s.consumer_sleeping.store(1, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            if s.write_pos.load(Ordering::Relaxed) != write_cache {
                s.consumer_sleeping.store(0, Ordering::Relaxed);
                continue;
            }
            s.consumer_bell.sleep();
            s.consumer_sleeping.store(0, Ordering::Relaxed);
        }
        producer.join().unwrap();
        assert_eq!(read, items);
    });
}

#[test]
fn loom_no_lost_wakeup_when_space_runs_out() {
    model(2, 1, 8);
}

#[test]
fn loom_no_lost_wakeup_when_credit_runs_out() {
    model(3, 8, 1);
}

#[test]
fn loom_no_lost_wakeup_with_both_limits() {
    model(3, 1, 2);
}
