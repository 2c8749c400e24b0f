//! Loom over the shipped ring: the real `RingProducer` and `RingConsumer`
//! on a heap ring, whose header atomics and data-area accesses loom tracks
//! (see `sync`), driven by two threads that wait the way the client's
//! shared-memory port does (`ShmTx`, `ShmRx` in `client/src/port/shm.rs`),
//! with the doorbell (a socket pair in real use) as a loom Mutex/Condvar
//! counted wake-up.
//!
//! Loom explores the interleavings the memory model allows, within a
//! preemption bound: a lost wake-up leaves both sides asleep, which loom
//! reports as a deadlock; a record read before its bytes were published, or
//! space reused before the consumer was done with it, is a causality
//! violation on the data area; a side that can never sleep again spins past
//! loom's branch limit.
//!
//! Run: `RUSTFLAGS="--cfg loom" cargo test -p shmbus --release --lib loom`

use std::sync::Arc;

use loom::sync::{Condvar, Mutex};
use loom::thread;

use super::heap::Region;
use super::{Control, Record, RecordKind, RingConsumer, RingProducer, Slot};
use crate::credit::CreditSpec;

/// One side's doorbell: pending rings, and a sleeper waiting for one.
#[derive(Default)]
struct Bell {
    pending: Mutex<u32>,
    rung: Condvar,
}

impl Bell {
    /// `Doorbell::ring`: one more pending wake-up.
    fn ring(&self) {
        *self.pending.lock().unwrap() += 1;
        self.rung.notify_one();
    }

    /// `Doorbell::sleep`: waits until rung, then drains.
    fn sleep(&self) {
        let mut p = self.pending.lock().unwrap();
        while *p == 0 {
            p = self.rung.wait(p).unwrap();
        }
        *p = 0;
    }

    /// `Doorbell::drain`: forgets pending wake-ups without waiting.
    fn drain(&self) {
        *self.pending.lock().unwrap() = 0;
    }
}

/// The two doorbells of a direction: the consumer sleeps on one, the
/// producer on the other.
#[derive(Default)]
struct Bells {
    consumer: Bell,
    producer: Bell,
}

/// One model: a ring, its credit, the items the producer sends, and how
/// both sides behave.
#[derive(Clone, Copy)]
struct Model {
    /// Data bytes (a power of two, at least 64 under loom).
    capacity: u32,
    credit: CreditSpec,
    /// Payload length of each item, in order.
    lens: &'static [usize],
    /// Publish after every item (`send_bytes`), or only before waiting and
    /// at the end (`feed_bytes`, whose batch a small ring never fills).
    flush_each: bool,
    /// The consumer cancels once it has received this many items, then
    /// stops reading (`Receiver::cancel`).
    cancel_after: Option<usize>,
    /// Items sent and received one by one before the two threads start,
    /// so that the concurrent part begins in a later state (positions
    /// past a wrap, credit partly used) at no cost in interleavings.
    warm_up: usize,
    /// Injects the fault: the consumer sleeps without re-checking.
    skip_consumer_recheck: bool,
}

impl Model {
    const fn new(capacity: u32, credit: CreditSpec, lens: &'static [usize]) -> Self {
        Model {
            capacity,
            credit,
            lens,
            flush_each: true,
            cancel_after: None,
            warm_up: 0,
            skip_consumer_recheck: false,
        }
    }

    fn check(self) {
        let mut builder = loom::model::Builder::new();
        // Bounded preemption keeps the search finite; wake-up bugs need few.
        if builder.preemption_bound.is_none() {
            builder.preemption_bound = Some(3);
        }
        builder.check(move || self.run());
    }

    fn run(self) {
        let region = Region::new(self.capacity, self.credit.high_water_mark);
        let mut producer = region.producer(self.credit);
        let mut consumer = region.consumer(self.credit);
        consumer.skip_sleep_recheck = self.skip_consumer_recheck;
        let bells = Arc::new(Bells::default());
        for item in 0..self.warm_up {
            let (len, charge) = (self.lens[item], self.charge(self.lens[item]));
            let slot = producer.try_reserve(len, charge).unwrap().unwrap();
            fill(&mut producer, &slot, item);
            producer.commit(&slot, len, charge);
            assert!(!producer.publish(), "nobody sleeps yet");
            let rec = consumer.try_next().unwrap().unwrap();
            check(&consumer, &rec, self, item);
            assert!(!consumer.release(&rec).unwrap(), "nobody sleeps yet");
        }
        let theirs = bells.clone();
        let handle = thread::spawn(move || produce(producer, &theirs, self));
        let received = consume(&mut consumer, &bells, self);
        handle.join().unwrap();
        match self.cancel_after {
            Some(n) => assert_eq!(received, n),
            None => assert_eq!(received, self.lens.len()),
        }
    }

    fn charge(&self, len: usize) -> u64 {
        self.credit
            .strategy
            .fixed_charge(len)
            .expect("models use item or byte credit")
    }
}

/// The byte at `i` of item `item`.
fn byte(item: usize, i: usize) -> u8 {
    (item * 31 + i + 1) as u8
}

/// Writes item `item`'s bytes into its slot.
fn fill(p: &mut RingProducer, slot: &Slot, item: usize) {
    for (i, b) in p.slot_buf(slot).iter_mut().enumerate() {
        *b = byte(item, i);
    }
}

/// Checks that a record carries item `item`, byte for byte.
fn check(c: &RingConsumer, rec: &Record, m: Model, item: usize) {
    assert_eq!(rec.kind, RecordKind::Data);
    let data = c.data(rec);
    assert_eq!(data.len(), m.lens[item]);
    for (i, b) in data.iter().enumerate() {
        assert_eq!(*b, byte(item, i), "item {item}, byte {i}");
    }
}

/// `ShmTx::publish`: makes committed records visible, rings a sleeper.
fn publish(p: &mut RingProducer, bells: &Bells) {
    if p.publish() {
        bells.consumer.ring();
    }
}

/// `ShmTx::wait` without its spin: publishes, then sleeps unless the
/// consumer moved since the blocked attempt (`ShmTx::sleep`).
fn producer_wait(p: &mut RingProducer, bells: &Bells) {
    publish(p, bells);
    if p.prepare_sleep() {
        bells.producer.sleep();
        p.woke();
    } else {
        bells.producer.drain();
    }
}

/// A cancel seen: acknowledged in one attempt that never waits, as
/// `Sender` does. True when the producer must stop.
fn acknowledged_cancel(p: &mut RingProducer, bells: &Bells) -> bool {
    if !p.cancelled_state().unwrap() {
        return false;
    }
    let _ = p.try_write_control(&Control::Cancelled).unwrap();
    publish(p, bells);
    true
}

/// The sending thread: `ShmTx::begin` / `commit` for each item, then
/// `ShmTx::close` with stream-end.
fn produce(mut p: RingProducer, bells: &Bells, m: Model) {
    for (item, &len) in m.lens.iter().enumerate().skip(m.warm_up) {
        let charge = m.charge(len);
        loop {
            if acknowledged_cancel(&mut p, bells) {
                return;
            }
            match p.try_reserve(len, charge).unwrap() {
                Ok(slot) => {
                    fill(&mut p, &slot, item);
                    p.commit(&slot, len, charge);
                    if m.flush_each {
                        publish(&mut p, bells);
                    }
                    break;
                }
                Err(_) => producer_wait(&mut p, bells),
            }
        }
    }
    loop {
        // `Sender::finish` looks for a cancel first; while `ShmTx::close`
        // waits, the real consumer's hang-up would end it (the model has
        // no hang-up, so it looks again at each attempt).
        if acknowledged_cancel(&mut p, bells) {
            return;
        }
        if p.try_write_control(&Control::End).unwrap() {
            publish(&mut p, bells);
            return;
        }
        producer_wait(&mut p, bells);
    }
}

/// The receiving thread: `ShmRx::next` (blocking, without its spin) and
/// `ShmRx::release` until stream-end; each item's bytes are checked.
/// Returns the items received.
fn consume(c: &mut RingConsumer, bells: &Bells, m: Model) -> usize {
    let mut items = m.warm_up;
    loop {
        let Some(rec) = c.try_next().unwrap() else {
            // Caught up: hand back the room released in this batch, then
            // sleep unless data arrived meanwhile.
            if c.flush_release() {
                bells.producer.ring();
            }
            if c.prepare_sleep() {
                bells.consumer.sleep();
                c.woke();
            } else {
                bells.consumer.drain();
            }
            continue;
        };
        match rec.kind {
            RecordKind::Data => {
                check(c, &rec, m, items);
                items += 1;
                if c.release(&rec).unwrap() {
                    bells.producer.ring();
                }
                if m.cancel_after == Some(items) {
                    if c.cancel() {
                        bells.producer.ring();
                    }
                    return items;
                }
            }
            RecordKind::End => return items,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Records of half the ring: the third item waits for space, and once the
/// ring has drained the producer starts over at its beginning (padding).
#[test]
fn loom_no_lost_wakeup_when_space_runs_out() {
    Model::new(128, CreditSpec::items(16), &[40, 40, 40]).check();
}

/// One item of credit, granted again at each release; the producer
/// publishes only before it waits and at the end, and the consumer's
/// releases are batched (a quarter of the ring) but published with each
/// re-grant.
#[test]
fn loom_no_lost_wakeup_when_credit_runs_out() {
    Model {
        flush_each: false,
        ..Model::new(256, CreditSpec::items(1), &[0, 8, 0])
    }
    .check();
}

/// Byte credit and space both short: items of 16, 0 and 16 bytes in a
/// 128-byte ring with 32 bytes of credit.
#[test]
fn loom_no_lost_wakeup_with_both_limits() {
    Model::new(128, CreditSpec::bytes(32), &[16, 0, 16]).check();
}

/// A consumer that cancels and stops reading wakes a producer blocked on
/// credit, which acknowledges.
#[test]
fn loom_a_cancel_wakes_a_blocked_producer() {
    Model {
        cancel_after: Some(1),
        ..Model::new(128, CreditSpec::items(2), &[0, 0, 0, 0])
    }
    .check();
}

/// The demonstration that loom catches a lost wake-up in this code: with
/// the consumer's re-check after setting its sleep flag removed, a record
/// published between the consumer's last look and its flag is never rung
/// for, and loom reports both sides asleep.
#[test]
#[should_panic(expected = "deadlock")]
fn loom_reports_the_deadlock_without_the_consumers_recheck() {
    Model {
        skip_consumer_recheck: true,
        ..Model::new(128, CreditSpec::items(16), &[40, 40, 40])
    }
    .check();
}

/// Credit granted again while the producer never ran short of it (it
/// waits for space only), then stream-end into a full ring: the producer
/// must still be able to sleep until the consumer makes room. (Before
/// `try_write_control` refreshed the credit limit when the ring was full,
/// the new limit read as progress at every attempt and the producer spun
/// instead of sleeping; loom reported it as a model exceeding its branches.)
#[test]
fn loom_a_producer_closing_on_a_full_ring_sleeps() {
    Model {
        warm_up: 3,
        ..Model::new(64, CreditSpec::items(6), &[16, 16, 16, 16, 16, 16])
    }
    .check();
}
