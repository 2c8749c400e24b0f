use super::create_memfd as create_ring_memfd;
use super::*;
use crate::credit::CreditSpec;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// The memory both views share, as a hostile peer could write it.
enum Shared {
    Memfd(File),
    #[cfg_attr(not(miri), allow(dead_code))]
    Heap(Arc<heap::Region>),
}

impl Shared {
    fn write_all_at(&self, bytes: &[u8], off: u64) -> std::io::Result<()> {
        match self {
            Shared::Memfd(f) => f.write_all_at(bytes, off),
            Shared::Heap(r) => {
                r.poke(off as usize, bytes);
                Ok(())
            }
        }
    }
}

/// A producer and a consumer over one ring: a sealed memfd normally, heap
/// memory under Miri (which cannot map files).
fn pair(capacity: u32, credit: CreditSpec) -> (RingProducer, RingConsumer, Shared) {
    if cfg!(miri) {
        heap_pair(capacity, credit)
    } else {
        let fd = create_ring_memfd("test", capacity, credit.high_water_mark).unwrap();
        let p =
            RingProducer::open(fd.as_fd().try_clone_to_owned().unwrap(), capacity, credit).unwrap();
        let c =
            RingConsumer::open(fd.as_fd().try_clone_to_owned().unwrap(), capacity, credit).unwrap();
        (p, c, Shared::Memfd(File::from(fd)))
    }
}

fn heap_pair(capacity: u32, credit: CreditSpec) -> (RingProducer, RingConsumer, Shared) {
    let region = heap::Region::new(capacity, credit.high_water_mark);
    (
        region.producer(credit),
        region.consumer(credit),
        Shared::Heap(region),
    )
}

fn send(p: &mut RingProducer, data: &[u8], charge: u64) -> Result<bool, Blocked> {
    match p.try_reserve(data.len(), charge).unwrap() {
        Ok(slot) => {
            p.slot_buf(&slot)[..data.len()].copy_from_slice(data);
            p.commit(&slot, data.len(), charge);
            let _ = p.publish();
            Ok(true)
        }
        Err(b) => Err(b),
    }
}

#[test]
fn items_flow_in_order_across_wraps() {
    let (mut p, mut c, _f) = pair(4096, CreditSpec::items(1000));
    let mut expected = std::collections::VecDeque::new();
    let mut next = 0u32;
    let rounds = if cfg!(miri) { 400 } else { 2000u32 };
    for round in 0..rounds {
        let len = (round * 37 % 700) as usize;
        let item: Vec<u8> = (0..len).map(|i| (i as u32 ^ next) as u8).collect();
        if send(&mut p, &item, 1).is_ok() {
            expected.push_back(item);
            next += 1;
        }
        if round % 3 == 0 {
            while let Some(rec) = c.try_next().unwrap() {
                assert_eq!(rec.kind, RecordKind::Data);
                assert_eq!(c.data(&rec), &expected.pop_front().unwrap()[..]);
                let _ = c.release(&rec).unwrap();
            }
            let _ = c.flush_release();
        }
    }
    assert!(next > rounds / 2, "ring made progress: {next}");
}

#[test]
fn credit_blocks_the_producer_at_the_high_water_mark() {
    let (mut p, mut c, _f) = pair(1 << 16, CreditSpec::items(4));
    for _ in 0..4 {
        send(&mut p, b"x", 1).unwrap();
    }
    assert_eq!(send(&mut p, b"x", 1), Err(Blocked::Credit));
    // Consuming 3 leaves 1 outstanding < 4/2: the limit is re-announced.
    for _ in 0..3 {
        let r = c.try_next().unwrap().unwrap();
        let _ = c.release(&r).unwrap();
    }
    send(&mut p, b"x", 1).unwrap();
    assert_eq!(p.credit().limit(), 7);
}

#[test]
fn control_records_arrive_after_data() {
    let (mut p, mut c, _f) = pair(4096, CreditSpec::bytes(4096));
    send(&mut p, b"abc", 3).unwrap();
    assert!(p.try_write_control(&Control::Error("bad")).unwrap());
    assert!(p.try_write_control(&Control::End).unwrap());
    let _ = p.publish();
    let r = c.try_next().unwrap().unwrap();
    assert_eq!(c.data(&r), b"abc");
    let _ = c.release(&r).unwrap();
    let e = c.try_next().unwrap().unwrap();
    assert_eq!(e.kind, RecordKind::Error);
    assert_eq!(c.error_message(&e), "bad");
    assert_eq!(c.try_next().unwrap().unwrap().kind, RecordKind::End);
    assert!(c.try_next().unwrap().is_none());
}

#[test]
fn wake_flags_follow_the_handshake() {
    let (mut p, mut c, _f) = pair(4096, CreditSpec::items(8));
    assert!(c.prepare_sleep(), "nothing published: sleep");
    send(&mut p, b"a", 1).unwrap();
    // `send` published and cleared the consumer's flag; the next publish sees none.
    assert!(!c.prepare_sleep(), "data arrived: do not sleep");
    c.woke();
    let rec = c.try_next().unwrap().unwrap();
    assert!(!c.release(&rec).unwrap(), "producer not asleep");
    p.refresh_read_pos().unwrap();
    p.refresh_credit().unwrap();
    assert!(
        p.prepare_sleep(),
        "nothing moved since the last look: sleep"
    );
    let rec2 = {
        send(&mut p, b"b", 1).unwrap();
        c.try_next().unwrap().unwrap()
    };
    // Room is published in batches; the consumer publishes when it catches up.
    assert!(!c.release(&rec2).unwrap(), "a small release is batched");
    assert!(c.flush_release(), "producer said it sleeps: ring");
}

#[test]
fn consumer_cancel_is_seen_by_the_producer() {
    let (p, c, _f) = pair(4096, CreditSpec::items(8));
    assert!(!p.is_cancelled());
    let _ = c.cancel();
    assert!(p.is_cancelled());
}

fn poke_u64(f: &Shared, off: usize, v: u64) {
    f.write_all_at(&v.to_le_bytes(), off as u64).unwrap();
}

#[test]
fn hostile_write_position_is_a_violation() {
    for bad in [3u64 * 4096, 17, u64::MAX] {
        let (_p, mut c, f) = pair(4096, CreditSpec::items(8));
        poke_u64(&f, OFF_WRITE_POS, bad);
        assert!(
            matches!(c.try_next(), Err(RingError::Violation(_))),
            "{bad}"
        );
    }
}

#[test]
fn has_published_sees_records_without_reading_them_and_refuses_hostile_positions() {
    let (mut p, mut c, f) = pair(4096, CreditSpec::items(8));
    assert!(!c.has_published().unwrap());
    send(&mut p, b"one", 1).unwrap();
    assert!(c.has_published().unwrap());
    // Looking twice reads nothing: the record is still next.
    assert!(c.has_published().unwrap());
    let rec = c.try_next().unwrap().expect("the record");
    assert_eq!(c.data(&rec), b"one");
    assert!(!c.has_published().unwrap());
    poke_u64(&f, OFF_WRITE_POS, 17);
    assert!(matches!(c.has_published(), Err(RingError::Violation(_))));
}

#[test]
fn hostile_record_lengths_never_read_out_of_bounds() {
    let (_p, mut c, f) = pair(4096, CreditSpec::bytes(1 << 20));
    // A record at offset 0 claiming 1 MiB, with 32 bytes published.
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&(1u32 << 20).to_le_bytes());
    h[4..8].copy_from_slice(&KIND_DATA.to_le_bytes());
    h[8..16].copy_from_slice(&(1u64 << 20).to_le_bytes());
    f.write_all_at(&h, HEADER_SIZE as u64).unwrap();
    poke_u64(&f, OFF_WRITE_POS, 32);
    assert!(matches!(c.try_next(), Err(RingError::Violation(_))));

    let (_p, mut c, f) = pair(4096, CreditSpec::items(8));
    h[0..4].copy_from_slice(&8u32.to_le_bytes());
    h[4..8].copy_from_slice(&99u32.to_le_bytes());
    f.write_all_at(&h, HEADER_SIZE as u64).unwrap();
    poke_u64(&f, OFF_WRITE_POS, 32);
    assert!(
        matches!(c.try_next(), Err(RingError::Violation(_))),
        "unknown kind"
    );

    let (_p, mut c, f) = pair(4096, CreditSpec::items(1));
    for i in 0..2u64 {
        h[0..4].copy_from_slice(&0u32.to_le_bytes());
        h[4..8].copy_from_slice(&KIND_DATA.to_le_bytes());
        h[8..16].copy_from_slice(&1u64.to_le_bytes());
        f.write_all_at(&h, HEADER_SIZE as u64 + 16 * i).unwrap();
    }
    poke_u64(&f, OFF_WRITE_POS, 32);
    assert!(c.try_next().unwrap().is_some());
    assert!(
        matches!(
            c.try_next(),
            Err(RingError::Credit(CreditError::Overrun { .. }))
        ),
        "second item overruns a credit of 1"
    );
}

#[test]
fn hostile_read_position_and_credit_are_violations() {
    let (mut p, _c, f) = pair(4096, CreditSpec::items(8));
    send(&mut p, b"abc", 1).unwrap();
    poke_u64(&f, OFF_READ_POS, 4096 * 8);
    let mut violated = false;
    for _ in 0..6 {
        match p.try_reserve(1000, 1) {
            Ok(Ok(slot)) => p.commit(&slot, 1000, 1),
            Ok(Err(b)) => panic!("blocked on {b:?} instead of a violation"),
            Err(e) => {
                assert!(matches!(e, RingError::Violation(_)), "{e}");
                violated = true;
                break;
            }
        }
    }
    assert!(
        violated,
        "the bad read position was noticed once room ran out"
    );
    let (mut p, _c, f) = pair(4096, CreditSpec::items(8));
    poke_u64(&f, OFF_CREDIT_LIMIT, 1000);
    for _ in 0..8 {
        send(&mut p, b"a", 1).unwrap();
    }
    assert!(matches!(
        p.try_reserve(1, 1),
        Err(RingError::Credit(CreditError::BadLimit { .. }))
    ));
}

#[test]
#[cfg_attr(miri, ignore = "Miri cannot create or map a memfd")]
fn unsealed_or_short_memfds_are_refused_before_mapping() {
    use nix::sys::memfd::{memfd_create, MFdFlags};
    let spec = CreditSpec::items(8);
    let fd = memfd_create("unsealed", MFdFlags::MFD_ALLOW_SEALING).unwrap();
    File::from(fd.try_clone().unwrap())
        .set_len(file_size(4096))
        .unwrap();
    assert!(matches!(
        RingConsumer::open(fd, 4096, spec),
        Err(RingError::BadPort(_))
    ));

    let fd = memfd_create("short", MFdFlags::MFD_ALLOW_SEALING).unwrap();
    File::from(fd.try_clone().unwrap()).set_len(100).unwrap();
    fcntl_seal(&fd);
    assert!(matches!(
        RingProducer::open(fd, 4096, spec),
        Err(RingError::BadPort(_))
    ));

    let fd = create_ring_memfd("wrong-hwm", 4096, 9).unwrap();
    assert!(matches!(
        RingConsumer::open(fd, 4096, spec),
        Err(RingError::BadPort(_))
    ));
}

fn fcntl_seal(fd: &OwnedFd) {
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_ADD_SEALS(sys::ring_seals())).unwrap();
}

#[test]
fn threads_move_every_byte_through_a_small_ring() {
    let (mut p, mut c, _f) = pair(4096, CreditSpec::bytes(3000));
    // Miri interprets every access; a shorter stream still wraps many times.
    let total = if cfg!(miri) { 20_000usize } else { 200_000 };
    let producer = std::thread::spawn(move || {
        let mut sent = 0usize;
        while sent < total {
            let len = (total - sent).min(700);
            if let Ok(slot) = p.try_reserve(len, len as u64).unwrap() {
                for (i, b) in p.slot_buf(&slot).iter_mut().enumerate() {
                    *b = ((sent + i) % 251) as u8;
                }
                p.commit(&slot, len, len as u64);
                let _ = p.publish();
                sent += len;
            } else {
                std::hint::spin_loop();
            }
        }
        while !p.try_write_control(&Control::End).unwrap() {}
        let _ = p.publish();
    });
    let mut got = 0usize;
    loop {
        let Some(rec) = c.try_next().unwrap() else {
            let _ = c.flush_release();
            std::hint::spin_loop();
            continue;
        };
        if rec.kind == RecordKind::End {
            break;
        }
        for (i, b) in c.data(&rec).iter().enumerate() {
            assert_eq!(*b, ((got + i) % 251) as u8);
        }
        got += rec.len;
        let _ = c.release(&rec).unwrap();
    }
    producer.join().unwrap();
    assert_eq!(got, total);
}

#[test]
fn the_largest_record_fits_at_any_offset_once_drained() {
    for first in [1usize, 100, 1000, 2000] {
        let (mut p, mut c, _f) = pair(4096, CreditSpec::items(8));
        send(&mut p, &vec![1; first], 1).unwrap();
        let r = c.try_next().unwrap().unwrap();
        let _ = c.release(&r).unwrap();
        let big = vec![7u8; p.max_record()];
        send(&mut p, &big, 1).unwrap_or_else(|b| panic!("offset after {first}: blocked on {b:?}"));
        let r = c.try_next().unwrap().unwrap();
        assert_eq!(c.data(&r), &big[..]);
    }
}

#[test]
fn a_producer_blocked_after_releases_may_sleep() {
    let (mut p, mut c, _f) = pair(1 << 16, CreditSpec::items(16));
    for _ in 0..16 {
        send(&mut p, b"x", 1).unwrap();
    }
    // Releases that move the read position but do not yet re-grant credit.
    for _ in 0..3 {
        let r = c.try_next().unwrap().unwrap();
        let _ = c.release(&r).unwrap();
    }
    assert_eq!(send(&mut p, b"x", 1), Err(Blocked::Credit));
    assert!(p.prepare_sleep(), "nothing moved since the blocked attempt");
}

#[test]
fn a_peer_rewriting_a_held_record_changes_only_its_bytes() {
    let (mut p, mut c, f) = pair(4096, CreditSpec::bytes(400));
    send(&mut p, &[1; 100], 100).unwrap();
    send(&mut p, &[2; 50], 50).unwrap();
    let rec = c.try_next().unwrap().unwrap();
    assert_eq!(c.data(&rec), &[1; 100][..]);
    // While the consumer holds the record, the peer rewrites its payload
    // and its header (a huge length, an unknown kind, a huge charge). No
    // view is alive across the writes, as Miri requires; an application's
    // would show the new bytes just the same.
    f.write_all_at(&[9; 100], (HEADER_SIZE + RECORD_HEADER) as u64)
        .unwrap();
    let mut h = [0u8; RECORD_HEADER];
    h[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
    h[4..8].copy_from_slice(&99u32.to_le_bytes());
    h[8..16].copy_from_slice(&(1u64 << 40).to_le_bytes());
    f.write_all_at(&h, HEADER_SIZE as u64).unwrap();
    assert_eq!(c.data(&rec), &[9; 100][..], "the view shows the new bytes");
    // The record is the consumer's validated copy: same length and charge,
    // released by it, and the next record is where it was.
    assert_eq!(
        (rec.kind, rec.len, rec.charge),
        (RecordKind::Data, 100, 100)
    );
    let _ = c.release(&rec).unwrap();
    assert_eq!(c.credit().in_flight(), 0);
    let next = c.try_next().unwrap().unwrap();
    assert_eq!((next.len, next.charge), (50, 50));
    assert_eq!(c.credit().in_flight(), 50);
    assert_eq!(c.data(&next), &[2; 50][..]);
    let _ = c.release(&next).unwrap();
    assert_eq!(c.credit().in_flight(), 0);
    // Room and credit came back as accounted: the producer goes on.
    let _ = c.flush_release();
    send(&mut p, &[3; 200], 200).unwrap();
    let last = c.try_next().unwrap().unwrap();
    assert_eq!(c.data(&last), &[3; 200][..]);
}

#[test]
fn a_producer_closing_on_a_full_ring_may_sleep_after_a_grant() {
    // Credit comes back (at the 4th release) while the producer is short of
    // space only; then stream-end finds the ring full. Nothing moves after
    // that failed attempt, so the producer may sleep (loom found it spinning
    // when the attempt did not refresh the limit).
    let (mut p, mut c, _f) = pair(4096, CreditSpec::items(6));
    let big = vec![5u8; p.max_record()];
    send(&mut p, &big, 1).unwrap();
    send(&mut p, &big, 1).unwrap();
    for _ in 0..4 {
        assert_eq!(send(&mut p, &big, 1), Err(Blocked::Space));
        let r = c.try_next().unwrap().unwrap();
        let _ = c.release(&r).unwrap();
        send(&mut p, &big, 1).unwrap();
    }
    assert_eq!(p.credit().limit(), 6, "the producer never needed the grant");
    assert!(!p.try_write_control(&Control::End).unwrap(), "ring full");
    assert!(p.prepare_sleep(), "nothing moved since the failed attempt");
}

#[test]
fn a_cancel_flag_other_than_0_or_1_is_a_violation() {
    let (mut p, _c, f) = pair(4096, CreditSpec::items(8));
    f.write_all_at(&7u32.to_le_bytes(), OFF_CANCELLED as u64)
        .unwrap();
    assert!(matches!(p.cancelled_state(), Err(RingError::Violation(_))));
    assert!(!p.is_cancelled());
    f.write_all_at(&1u32.to_le_bytes(), OFF_CANCELLED as u64)
        .unwrap();
    assert!(p.cancelled_state().unwrap());
    let _ = &mut p;
}

#[test]
fn heap_views_share_memory_like_a_memfd() {
    // The Miri runs use heap-backed views; check here that they behave as
    // mapped ones do: data, credit and hostile writes all cross.
    let (mut p, mut c, shared) = heap_pair(4096, CreditSpec::items(4));
    for i in 0..4u8 {
        send(&mut p, &[i; 3], 1).unwrap();
    }
    assert_eq!(send(&mut p, b"x", 1), Err(Blocked::Credit));
    for i in 0..4u8 {
        let r = c.try_next().unwrap().unwrap();
        assert_eq!(c.data(&r), &[i; 3]);
        let _ = c.release(&r).unwrap();
    }
    let _ = c.flush_release();
    send(&mut p, b"y", 1).unwrap();
    shared
        .write_all_at(&3u64.to_le_bytes(), OFF_WRITE_POS as u64)
        .unwrap();
    assert!(matches!(c.try_next(), Err(RingError::Violation(_))));
}

#[test]
fn the_result_slot_carries_one_result_and_refuses_hostile_lengths() {
    let (p, c, shared) = pair(4096, CreditSpec::items(4));
    let (posted, read) = (c.result_slot(), p.result_slot());
    assert_eq!(read.take().unwrap(), None);
    assert!(!posted.post(&vec![0; MAX_RING_RESULT + 1]));
    assert!(posted.post(b"42 items"));
    assert!(!posted.post(b"again"), "a result is written once");
    assert_eq!(read.take().unwrap().as_deref(), Some(&b"42 items"[..]));
    let mut full = vec![0u8; MAX_RING_RESULT];
    full[MAX_RING_RESULT - 1] = 9;
    shared
        .write_all_at(
            &(MAX_RING_RESULT as u32).to_le_bytes(),
            OFF_RESULT_LEN as u64,
        )
        .unwrap();
    shared.write_all_at(&full, OFF_RESULT as u64).unwrap();
    assert_eq!(read.take().unwrap(), Some(full));
    shared
        .write_all_at(&u32::MAX.to_le_bytes(), OFF_RESULT_LEN as u64)
        .unwrap();
    assert!(matches!(read.take(), Err(RingError::Violation(_))));
    shared
        .write_all_at(&2u32.to_le_bytes(), OFF_RESULT_STATE as u64)
        .unwrap();
    assert!(matches!(read.take(), Err(RingError::Violation(_))));
}

#[test]
fn a_drained_ring_starts_over_at_its_beginning() {
    // Credit runs out after a few items; the producer picks up the next
    // grant together with the consumer's position.
    let (mut p, mut c, _f) = pair(8192, CreditSpec::items(4));
    let mut first = None;
    for round in 0..4u8 {
        let mut sent = 0u8;
        while send(&mut p, &[round, sent, 7], 1).is_ok() {
            sent += 1;
        }
        assert!(sent >= 2, "round {round} sent {sent}");
        for i in 0..sent {
            let rec = c.try_next().unwrap().unwrap();
            assert_eq!(c.data(&rec), &[round, i, 7]);
            let at = c.data(&rec).as_ptr();
            if round == 0 && i == 0 {
                first = Some(at);
            } else if i == 0 {
                // Everything was consumed and handed back: the next burst
                // reuses the start of the ring (after a padding record).
                assert_eq!(Some(at), first, "round {round} did not start over");
            } else {
                assert_ne!(Some(at), first);
            }
            let _ = c.release(&rec).unwrap();
        }
        let _ = c.flush_release();
        assert_eq!(c.try_next().unwrap(), None);
    }
    // Not drained: one item still unread, so the ring goes on forward.
    let mut sent = 0u8;
    while send(&mut p, &[9, sent], 1).is_ok() {
        sent += 1;
    }
    for i in 0..sent - 1 {
        let rec = c.try_next().unwrap().unwrap();
        assert_eq!(c.data(&rec), &[9, i]);
        let _ = c.release(&rec).unwrap();
    }
    let _ = c.flush_release();
    send(&mut p, &[10], 1).unwrap();
    let rec = c.try_next().unwrap().unwrap();
    assert_eq!(c.data(&rec), &[9, sent - 1]);
    let _ = c.release(&rec).unwrap();
    let rec = c.try_next().unwrap().unwrap();
    assert_eq!(c.data(&rec), &[10]);
    assert_ne!(Some(c.data(&rec).as_ptr()), first);
}

#[test]
fn large_records_take_turns_in_two_slots_and_wait_for_the_first() {
    // A 4 MiB ring with credit for eight large records: only the ring's
    // placement holds the producer back.
    let len = HOT_RECORD;
    let (mut p, mut c, _f) = pair(4 << 20, CreditSpec::bytes(16 * len as u64));
    let payload = vec![5u8; len];
    let mut starts = Vec::new();
    // Two in flight: the second goes right after the first.
    assert_eq!(send(&mut p, &payload, len as u64), Ok(true));
    assert_eq!(send(&mut p, &payload, len as u64), Ok(true));
    // The ring has room for eight more, but the third waits for the first
    // slot rather than moving on to memory the caches no longer hold.
    assert_eq!(send(&mut p, &payload, len as u64), Err(Blocked::Space));
    for round in 0..6 {
        let rec = c.try_next().unwrap().unwrap();
        assert_eq!(c.data(&rec).len(), len);
        starts.push(c.data(&rec).as_ptr() as usize);
        // A large record is handed back at once, not batched.
        let _ = c.release(&rec).unwrap();
        assert_eq!(
            send(&mut p, &payload, len as u64),
            Ok(true),
            "round {round}"
        );
        assert_eq!(send(&mut p, &payload, len as u64), Err(Blocked::Space));
    }
    let (a, b) = (starts[0], starts[1]);
    assert_eq!(b - a, len + RECORD_HEADER);
    for (i, &at) in starts.iter().enumerate() {
        assert_eq!(at, if i % 2 == 0 { a } else { b }, "record {i}");
    }
    // Small records are not held to two slots: they fill the ring.
    let (mut p, _c, _f) = pair(4 << 20, CreditSpec::bytes(4 << 20));
    let small = vec![1u8; 64 << 10];
    let mut sent = 0;
    while send(&mut p, &small, small.len() as u64).is_ok() {
        sent += 1;
    }
    assert!(sent > 32, "sent {sent}");
}

/// Descriptors this process holds on memfds named `name`.
fn memfds_named(name: &str) -> usize {
    let link = format!("/memfd:{name} (deleted)");
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.as_os_str() == link.as_str())
        .count()
}

#[test]
#[cfg_attr(miri, ignore = "Miri cannot create or map a memfd")]
fn each_side_closes_its_memfd_once_the_first_item_passed() {
    let spec = CreditSpec::items(8);
    let name = "first-item-closes";
    let fd = create_ring_memfd(name, 4096, 8).unwrap();
    let mut p = RingProducer::open(fd.try_clone().unwrap(), 4096, spec).unwrap();
    let mut c = RingConsumer::open(fd.try_clone().unwrap(), 4096, spec).unwrap();
    drop(fd);
    assert_eq!(
        memfds_named(name),
        2,
        "both sides keep theirs open at first"
    );
    send(&mut p, b"x", 1).unwrap();
    assert_eq!(
        memfds_named(name),
        1,
        "the producer closes at its first publish"
    );
    let r = c.try_next().unwrap().unwrap();
    assert_eq!(c.data(&r), b"x");
    c.release(&r).unwrap();
    assert_eq!(
        memfds_named(name),
        0,
        "the consumer closes at its first release"
    );
    // The mappings outlive the descriptors.
    send(&mut p, b"yz", 1).unwrap();
    let r = c.try_next().unwrap().unwrap();
    assert_eq!(c.data(&r), b"yz");
}

#[test]
fn blob_records_interleave_with_items_and_carry_their_charge() {
    let (mut p, mut c, _) = pair(8192, CreditSpec::bytes(1 << 40));
    send(&mut p, b"before", 6).unwrap();
    let slot = p.try_reserve(BLOB_RECORD, 1 << 30).unwrap().unwrap();
    p.commit_blob(&slot, 1 << 30, 1 << 30);
    send(&mut p, b"after", 5).unwrap();
    let first = c.try_next().unwrap().unwrap();
    assert_eq!(c.data(&first), b"before");
    let blob = c.try_next().unwrap().unwrap();
    assert_eq!(
        (blob.kind, blob.charge),
        (RecordKind::Blob(1 << 30), 1 << 30)
    );
    let last = c.try_next().unwrap().unwrap();
    assert_eq!(c.data(&last), b"after");
    for rec in [first, blob, last] {
        let _ = c.release(&rec).unwrap();
    }
    assert_eq!(c.credit().in_flight(), 0);
}

#[test]
fn a_blob_record_charged_against_the_strategy_is_a_violation() {
    // Items credit: a blob costs one.
    let (mut p, mut c, _) = pair(8192, CreditSpec::items(16));
    let slot = p.try_reserve(BLOB_RECORD, 2).unwrap().unwrap();
    p.commit_blob(&slot, 4096, 2);
    let _ = p.publish();
    assert!(matches!(c.try_next(), Err(RingError::Credit(_))));
    // A blob record of the wrong length.
    let (mut p, mut c, shared) = pair(8192, CreditSpec::items(16));
    let slot = p.try_reserve(BLOB_RECORD, 1).unwrap().unwrap();
    p.commit_blob(&slot, 4096, 1);
    let _ = p.publish();
    shared
        .write_all_at(&9u32.to_le_bytes(), HEADER_SIZE as u64)
        .unwrap();
    assert!(matches!(c.try_next(), Err(RingError::Violation(_))));
}
