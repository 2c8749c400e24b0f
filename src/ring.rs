//! The shared-memory stream port: one single-producer single-consumer ring
//! per direction, in a sealed memfd shared by two processes that do not
//! trust each other.
//!
//! This is the only module that reads or writes shared memory.
//!
//! # Layout
//!
//! ```text
//! 0     static line   magic u64 | version u32 | capacity u32 | hwm u64
//! 128   producer line write_pos u64 | charged u64          (written by the producer)
//! 256   consumer line read_pos u64 | credit_limit u64 | cancelled u32
//! 384   consumer_sleeping u32  (set by the consumer, cleared by the producer)
//! 512   producer_sleeping u32  (set by the producer, cleared by the consumer)
//! 4096  data: `capacity` bytes (a power of two) of 16-byte aligned records
//! ```
//!
//! A record is a 16-byte header (`len u32 | kind u32 | charge u64`, little
//! endian) followed by `len` bytes, padded to 16. Records never wrap: when a
//! record does not fit before the end, a padding record fills the tail.
//! Positions are monotonic byte counts; `position % capacity` is the offset.
//!
//! # Trust
//!
//! Every value read from shared memory is loaded once into a local, checked,
//! and only the local copy is used: positions must be monotonic, aligned and
//! within one capacity of each other, a record must lie wholly inside the
//! published region, credit must follow [`crate::credit`]. A violation is a
//! [`RingError::Violation`] for this stream alone; nothing is ever read or
//! written outside the mapping. The memfd must carry the shrink, grow and seal
//! seals and have exactly the expected size before it is mapped, so the peer
//! cannot truncate it under us (which would raise SIGBUS).
//!
//! # Sleeping
//!
//! A side that finds nothing to do sets its `*_sleeping` flag, issues a
//! SeqCst fence, and re-checks before sleeping on its doorbell; the other side
//! publishes, issues a SeqCst fence, and rings the doorbell only when it sees
//! the flag. This is the classic store–fence–load handshake: at least one of
//! the two sees the other's store, so no wake-up is lost, and a running peer
//! costs no syscall.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

use memmap2::{MmapOptions, MmapRaw};

use crate::credit::{CreditError, CreditSpec, RecvCredit, SendCredit};
use crate::sys;

/// "SHMBUSR1", little endian.
pub const RING_MAGIC: u64 = u64::from_le_bytes(*b"SHMBUSR1");
/// Layout version.
pub const RING_VERSION: u32 = 1;
/// Bytes before the data area.
pub const HEADER_SIZE: usize = 4096;
/// Bytes of a record header; also the record alignment.
pub const RECORD_HEADER: usize = 16;
/// Smallest data area.
pub const MIN_CAPACITY: u32 = 4096;
/// Largest data area.
pub const MAX_CAPACITY: u32 = 1 << 30;

const OFF_MAGIC: usize = 0;
const OFF_VERSION: usize = 8;
const OFF_CAPACITY: usize = 12;
const OFF_HWM: usize = 16;
const OFF_WRITE_POS: usize = 128;
const OFF_CHARGED: usize = 136;
const OFF_READ_POS: usize = 256;
const OFF_CREDIT_LIMIT: usize = 264;
const OFF_CANCELLED: usize = 272;
const OFF_CONSUMER_SLEEPING: usize = 384;
const OFF_PRODUCER_SLEEPING: usize = 512;

const KIND_DATA: u32 = 1;
const KIND_END: u32 = 2;
const KIND_ERROR: u32 = 3;
const KIND_CANCELLED: u32 = 4;
const KIND_PAD: u32 = 5;

/// Why a ring could not be opened or used.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    /// A system call failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The memfd is unsealed, mis-sized or carries a wrong header.
    #[error("refusing stream port: {0}")]
    BadPort(String),
    /// The peer wrote a value that breaks the protocol.
    #[error("protocol violation on shared memory: {0}")]
    Violation(String),
    /// The item can never fit in this ring.
    #[error("item of {len} bytes exceeds the ring's largest record ({max} bytes)")]
    TooLarge {
        /// Requested length.
        len: usize,
        /// Largest payload a record can carry.
        max: usize,
    },
    /// Credit rules broken or impossible.
    #[error(transparent)]
    Credit(#[from] CreditError),
}

fn violation(msg: impl Into<String>) -> RingError {
    RingError::Violation(msg.into())
}

/// Total file size for a ring with `capacity` data bytes.
pub fn file_size(capacity: u32) -> u64 {
    HEADER_SIZE as u64 + capacity as u64
}

/// Checks a requested capacity.
pub fn valid_capacity(capacity: u32) -> bool {
    (MIN_CAPACITY..=MAX_CAPACITY).contains(&capacity) && capacity.is_power_of_two()
}

/// The bytes a fresh ring's header starts with. The broker writes them with
/// `pwrite` before sealing, so it never maps the ring. Credit starts at a
/// full grant of `hwm`.
pub fn initial_header(capacity: u32, hwm: u64) -> Vec<u8> {
    let mut h = vec![0u8; HEADER_SIZE];
    h[OFF_MAGIC..OFF_MAGIC + 8].copy_from_slice(&RING_MAGIC.to_le_bytes());
    h[OFF_VERSION..OFF_VERSION + 4].copy_from_slice(&RING_VERSION.to_le_bytes());
    h[OFF_CAPACITY..OFF_CAPACITY + 4].copy_from_slice(&capacity.to_le_bytes());
    h[OFF_HWM..OFF_HWM + 8].copy_from_slice(&hwm.to_le_bytes());
    h[OFF_CREDIT_LIMIT..OFF_CREDIT_LIMIT + 8].copy_from_slice(&hwm.to_le_bytes());
    h
}

/// Largest payload one record can carry in a ring of `capacity` bytes: half
/// the ring, so that a record always fits once the ring has drained, whatever
/// the current offset (padding to the end plus the record stay within it).
pub fn max_record(capacity: u32) -> usize {
    capacity as usize / 2 - RECORD_HEADER
}

fn align_record(len: usize) -> u64 {
    ((RECORD_HEADER + len + RECORD_HEADER - 1) & !(RECORD_HEADER - 1)) as u64
}

/// A mapped, validated ring. Owns the mapping; the descriptor is closed once mapped.
struct SharedRing {
    map: MmapRaw,
    base: NonNull<u8>,
    capacity: u32,
}

// SAFETY: the mapping is plain shared memory; all shared fields are accessed
// through atomics or copied out, so moving the owner to another thread is fine.
unsafe impl Send for SharedRing {}

impl SharedRing {
    fn map(fd: OwnedFd, capacity: u32, hwm: u64) -> Result<Self, RingError> {
        if !valid_capacity(capacity) {
            return Err(RingError::BadPort(format!(
                "capacity {capacity} out of range"
            )));
        }
        sys::check_ring_seals(&fd).map_err(|e| RingError::BadPort(e.to_string()))?;
        let file = File::from(fd);
        let size = file.metadata()?.len();
        if size != file_size(capacity) {
            return Err(RingError::BadPort(format!(
                "memfd is {size} bytes, {} expected",
                file_size(capacity)
            )));
        }
        let map = MmapOptions::new()
            .len(size as usize)
            .map_raw(&file)
            .map_err(RingError::Io)?;
        let base = NonNull::new(map.as_mut_ptr()).ok_or_else(|| violation("null mapping"))?;
        let ring = SharedRing {
            map,
            base,
            capacity,
        };
        let mut head = [0u8; 24];
        ring.copy_out(0, &mut head);
        let magic = u64::from_le_bytes(head[0..8].try_into().unwrap());
        let version = u32::from_le_bytes(head[8..12].try_into().unwrap());
        let cap = u32::from_le_bytes(head[12..16].try_into().unwrap());
        let ring_hwm = u64::from_le_bytes(head[16..24].try_into().unwrap());
        if magic != RING_MAGIC || version != RING_VERSION || cap != capacity || ring_hwm != hwm {
            return Err(RingError::BadPort(format!(
                "ring header mismatch (magic {magic:#x}, version {version}, capacity {cap}, hwm {ring_hwm})"
            )));
        }
        Ok(ring)
    }

    fn u64_at(&self, off: usize) -> &AtomicU64 {
        debug_assert!(off.is_multiple_of(8) && off + 8 <= HEADER_SIZE);
        // SAFETY: `off` is one of the fixed 8-aligned header offsets, inside
        // the mapping (size ≥ HEADER_SIZE, checked in `map`), and the page is
        // 4096-aligned. The peer may write it concurrently, which atomics allow.
        unsafe { &*(self.base.as_ptr().add(off) as *const AtomicU64) }
    }

    fn u32_at(&self, off: usize) -> &AtomicU32 {
        debug_assert!(off.is_multiple_of(4) && off + 4 <= HEADER_SIZE);
        // SAFETY: as in `u64_at`, for a fixed 4-aligned header offset.
        unsafe { &*(self.base.as_ptr().add(off) as *const AtomicU32) }
    }

    /// Copies bytes at absolute file offset `off` out of the mapping.
    fn copy_out(&self, off: usize, dst: &mut [u8]) {
        assert!(off + dst.len() <= self.map.len());
        // SAFETY: the range is inside the mapping (asserted). Volatile reads
        // because the peer may be writing; `dst` is local memory.
        unsafe {
            let src = self.base.as_ptr().add(off);
            for (i, b) in dst.iter_mut().enumerate() {
                *b = std::ptr::read_volatile(src.add(i));
            }
        }
    }

    /// Writes bytes at absolute file offset `off`.
    fn copy_in(&self, off: usize, src: &[u8]) {
        assert!(off + src.len() <= self.map.len());
        // SAFETY: the range is inside the mapping (asserted) and the protocol
        // gives this side exclusive use of it until it is published.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), self.base.as_ptr().add(off), src.len())
        }
    }

    /// Data-area slice `[off, off+len)` for reading.
    ///
    /// # Safety
    /// The range must have been validated to lie inside the data area, and the
    /// protocol must give this side the range (published and not yet released).
    unsafe fn data(&self, off: usize, len: usize) -> &[u8] {
        debug_assert!(off + len <= self.capacity as usize);
        // SAFETY: guaranteed by the caller; a hostile peer writing the range
        // anyway can only change the bytes we observe (any u8 is valid), and
        // no length or offset is ever derived from them.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(HEADER_SIZE + off), len) }
    }

    /// Data-area slice `[off, off+len)` for writing.
    ///
    /// # Safety
    /// As [`data`](Self::data), for a range reserved and not yet published.
    #[allow(clippy::mut_from_ref)]
    unsafe fn data_mut(&self, off: usize, len: usize) -> &mut [u8] {
        debug_assert!(off + len <= self.capacity as usize);
        // SAFETY: guaranteed by the caller, as in `data`.
        unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr().add(HEADER_SIZE + off), len) }
    }

    fn write_record_header(&self, off: usize, len: u32, kind: u32, charge: u64) {
        let mut h = [0u8; RECORD_HEADER];
        h[0..4].copy_from_slice(&len.to_le_bytes());
        h[4..8].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&charge.to_le_bytes());
        self.copy_in(HEADER_SIZE + off, &h);
    }

    fn mask(&self) -> u64 {
        self.capacity as u64 - 1
    }
}

/// What a record carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordKind {
    /// An item.
    Data,
    /// stream-end: the producer finished.
    End,
    /// stream-error with the producer's message.
    Error(String),
    /// stream-cancel: the producer acknowledges a cancellation and stops.
    Cancelled,
}

/// A validated record handed to the consumer; release it when done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// What it carries.
    pub kind: RecordKind,
    /// Payload length.
    pub len: usize,
    /// Credit the producer charged for it.
    pub charge: u64,
    data_off: usize,
    end_pos: u64,
}

/// The producing side of one direction.
pub struct RingProducer {
    ring: SharedRing,
    write_pos: u64,
    published: u64,
    read_pos_cache: u64,
    credit: SendCredit,
}

/// Why the producer cannot write now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocked {
    /// The receiver has not granted enough credit.
    Credit,
    /// The ring has no room.
    Space,
}

/// Room reserved in the ring, to be filled with [`RingProducer::slot_buf`]
/// and made a record with [`RingProducer::commit`]. Dropping it abandons it.
#[derive(Debug)]
pub struct Slot {
    at: u64,
    pad: u64,
    off: usize,
    max_len: usize,
    charge: u64,
}

impl Slot {
    /// Bytes reserved.
    pub fn len(&self) -> usize {
        self.max_len
    }

    /// True for a zero-byte reservation.
    pub fn is_empty(&self) -> bool {
        self.max_len == 0
    }
}

impl RingProducer {
    /// Maps a ring to produce into it.
    pub fn open(fd: OwnedFd, capacity: u32, credit: CreditSpec) -> Result<Self, RingError> {
        let ring = SharedRing::map(fd, capacity, credit.high_water_mark)?;
        Ok(RingProducer {
            ring,
            write_pos: 0,
            published: 0,
            read_pos_cache: 0,
            credit: SendCredit::new(credit),
        })
    }

    /// Largest payload one record can carry.
    pub fn max_record(&self) -> usize {
        max_record(self.ring.capacity)
    }

    /// Credit state.
    pub fn credit(&self) -> &SendCredit {
        &self.credit
    }

    /// Whether the consumer cancelled the stream.
    pub fn is_cancelled(&self) -> bool {
        // SYNC: Acquire pairs with the Release store in `RingConsumer::cancel`.
        self.ring.u32_at(OFF_CANCELLED).load(Ordering::Acquire) != 0
    }

    fn refresh_read_pos(&mut self) -> Result<(), RingError> {
        // SYNC: Acquire pairs with the Release store in `RingConsumer::release`,
        // so the consumer is done with the bytes before we overwrite them.
        let pos = self.ring.u64_at(OFF_READ_POS).load(Ordering::Acquire);
        if pos < self.read_pos_cache
            || pos > self.published
            || !pos.is_multiple_of(RECORD_HEADER as u64)
        {
            return Err(violation(format!(
                "read position {pos} outside [{}, {}] or misaligned",
                self.read_pos_cache, self.published
            )));
        }
        self.read_pos_cache = pos;
        Ok(())
    }

    fn refresh_credit(&mut self) -> Result<(), RingError> {
        // SYNC: Acquire pairs with the Release store of the limit in `RingConsumer::release`.
        let limit = self.ring.u64_at(OFF_CREDIT_LIMIT).load(Ordering::Acquire);
        if limit != self.credit.limit() {
            self.credit.update_limit(limit)?;
        }
        Ok(())
    }

    fn free_for(&mut self, total: u64) -> Result<Option<u64>, RingError> {
        let cap = self.ring.capacity as u64;
        let off = self.write_pos & self.ring.mask();
        let to_end = cap - off;
        let need = if to_end < total {
            to_end + total
        } else {
            total
        };
        if cap - (self.write_pos - self.read_pos_cache) < need {
            self.refresh_read_pos()?;
            if cap - (self.write_pos - self.read_pos_cache) < need {
                return Ok(None);
            }
        }
        Ok(Some(if to_end < total { to_end } else { 0 }))
    }

    /// Finds room for a record of `total` bytes. Returns the padding that
    /// must precede it (written here, published only with the record) and the
    /// record's offset.
    fn place(&mut self, total: u64) -> Result<Option<(u64, usize)>, RingError> {
        let Some(pad) = self.free_for(total)? else {
            return Ok(None);
        };
        if pad > 0 {
            let off = (self.write_pos & self.ring.mask()) as usize;
            self.ring
                .write_record_header(off, (pad as usize - RECORD_HEADER) as u32, KIND_PAD, 0);
        }
        Ok(Some((
            pad,
            ((self.write_pos + pad) & self.ring.mask()) as usize,
        )))
    }

    /// Reserves room for a record of up to `max_len` bytes charged up to
    /// `charge`. `Ok(Err(why))` when it must wait for credit or space.
    pub fn try_reserve(
        &mut self,
        max_len: usize,
        charge: u64,
    ) -> Result<Result<Slot, Blocked>, RingError> {
        if max_len > self.max_record() {
            return Err(RingError::TooLarge {
                len: max_len,
                max: self.max_record(),
            });
        }
        if !self.credit.check(charge)? {
            self.refresh_credit()?;
            if !self.credit.check(charge)? {
                // Fresh caches of both counters, so `prepare_sleep` compares
                // against what was just seen.
                self.refresh_read_pos()?;
                return Ok(Err(Blocked::Credit));
            }
        }
        let Some((pad, off)) = self.place(align_record(max_len))? else {
            self.refresh_credit()?;
            return Ok(Err(Blocked::Space));
        };
        Ok(Ok(Slot {
            at: self.write_pos,
            pad,
            off,
            max_len,
            charge,
        }))
    }

    /// The reserved bytes, to fill in place.
    pub fn slot_buf(&mut self, slot: &Slot) -> &mut [u8] {
        assert_eq!(slot.at, self.write_pos, "slot is stale");
        // SAFETY: [off+16, off+16+max_len) was checked free and inside the
        // data area by `try_reserve` (offsets computed locally, never read
        // from shared memory), and stays unpublished until `commit`.
        unsafe { self.ring.data_mut(slot.off + RECORD_HEADER, slot.max_len) }
    }

    /// Makes the first `len` bytes of the slot a record charged `charge` (at
    /// most the reserved charge). Visible to the consumer after [`publish`](Self::publish).
    pub fn commit(&mut self, slot: Slot, len: usize, charge: u64) {
        assert_eq!(slot.at, self.write_pos, "slot is stale");
        assert!(len <= slot.max_len && charge <= slot.charge);
        self.ring
            .write_record_header(slot.off, len as u32, KIND_DATA, charge);
        self.write_pos += slot.pad + align_record(len);
        self.credit.charge(charge);
    }

    /// Writes a control record (end, error, cancelled-ack); charges no credit.
    /// `Ok(false)` when the ring has no room yet.
    pub fn try_write_control(&mut self, kind: &RecordKind) -> Result<bool, RingError> {
        let (code, payload): (u32, &[u8]) = match kind {
            RecordKind::Data => unreachable!("data goes through try_reserve"),
            RecordKind::End => (KIND_END, &[]),
            RecordKind::Cancelled => (KIND_CANCELLED, &[]),
            RecordKind::Error(msg) => (KIND_ERROR, msg.as_bytes()),
        };
        let payload = &payload[..payload.len().min(self.max_record()).min(4096)];
        let Some((pad, off)) = self.place(align_record(payload.len()))? else {
            return Ok(false);
        };
        self.ring
            .copy_in(HEADER_SIZE + off + RECORD_HEADER, payload);
        self.ring
            .write_record_header(off, payload.len() as u32, code, 0);
        self.write_pos += pad + align_record(payload.len());
        Ok(true)
    }

    /// Makes committed records visible. Returns true when the consumer said
    /// it is asleep: the caller must then ring the doorbell.
    #[must_use]
    pub fn publish(&mut self) -> bool {
        if self.write_pos == self.published {
            return false;
        }
        self.published = self.write_pos;
        // Statistics only: no ordering needed.
        self.ring
            .u64_at(OFF_CHARGED)
            .store(self.credit.charged(), Ordering::Relaxed);
        // SYNC: Release pairs with the Acquire load in `RingConsumer::refresh_write_pos`:
        // the records' bytes are visible before the position that covers them.
        self.ring
            .u64_at(OFF_WRITE_POS)
            .store(self.write_pos, Ordering::Release);
        // SYNC: pairs with the fence in `RingConsumer::prepare_sleep`.
        fence(Ordering::SeqCst);
        take_flag(self.ring.u32_at(OFF_CONSUMER_SLEEPING))
    }

    /// Announces the intent to sleep, then re-checks. Returns true when the
    /// caller should sleep on its doorbell; false when the consumer moved.
    pub fn prepare_sleep(&mut self) -> bool {
        let flag = self.ring.u32_at(OFF_PRODUCER_SLEEPING);
        flag.store(1, Ordering::Relaxed);
        // SYNC: pairs with the fence in `RingConsumer::release` / `cancel`.
        fence(Ordering::SeqCst);
        let read = self.ring.u64_at(OFF_READ_POS).load(Ordering::Relaxed);
        let limit = self.ring.u64_at(OFF_CREDIT_LIMIT).load(Ordering::Relaxed);
        let moved =
            read != self.read_pos_cache || limit != self.credit.limit() || self.is_cancelled();
        if moved {
            flag.store(0, Ordering::Relaxed);
        }
        !moved
    }

    /// Clears the sleep flag after waking.
    pub fn woke(&self) {
        self.ring
            .u32_at(OFF_PRODUCER_SLEEPING)
            .store(0, Ordering::Relaxed);
    }
}

/// Clears a peer's sleep flag if set; true when it was set.
fn take_flag(flag: &AtomicU32) -> bool {
    if flag.load(Ordering::Relaxed) != 0 {
        flag.store(0, Ordering::Relaxed);
        true
    } else {
        false
    }
}

/// The consuming side of one direction.
pub struct RingConsumer {
    ring: SharedRing,
    read_pos: u64,
    released: u64,
    write_pos_cache: u64,
    credit: RecvCredit,
}

impl RingConsumer {
    /// Maps a ring to consume from it.
    pub fn open(fd: OwnedFd, capacity: u32, credit: CreditSpec) -> Result<Self, RingError> {
        let ring = SharedRing::map(fd, capacity, credit.high_water_mark)?;
        Ok(RingConsumer {
            ring,
            read_pos: 0,
            released: 0,
            write_pos_cache: 0,
            credit: RecvCredit::new(credit),
        })
    }

    /// Credit state.
    pub fn credit(&self) -> &RecvCredit {
        &self.credit
    }

    fn refresh_write_pos(&mut self) -> Result<(), RingError> {
        // SYNC: Acquire pairs with the Release store in `RingProducer::publish`.
        let pos = self.ring.u64_at(OFF_WRITE_POS).load(Ordering::Acquire);
        let cap = self.ring.capacity as u64;
        if pos < self.write_pos_cache
            || pos.saturating_sub(self.released) > cap
            || !pos.is_multiple_of(RECORD_HEADER as u64)
        {
            return Err(violation(format!(
                "write position {pos} invalid (last {}, released {}, capacity {cap})",
                self.write_pos_cache, self.released
            )));
        }
        self.write_pos_cache = pos;
        Ok(())
    }

    /// The next record, validated, or `None` when nothing is published yet.
    /// Records must be released in the order they were returned.
    pub fn try_next(&mut self) -> Result<Option<Record>, RingError> {
        loop {
            if self.read_pos == self.write_pos_cache {
                self.refresh_write_pos()?;
                if self.read_pos == self.write_pos_cache {
                    return Ok(None);
                }
            }
            let cap = self.ring.capacity as usize;
            let off = (self.read_pos & self.ring.mask()) as usize;
            let avail = self.write_pos_cache - self.read_pos;
            let mut h = [0u8; RECORD_HEADER];
            self.ring.copy_out(HEADER_SIZE + off, &mut h);
            let len = u32::from_le_bytes(h[0..4].try_into().unwrap()) as usize;
            let kind = u32::from_le_bytes(h[4..8].try_into().unwrap());
            let charge = u64::from_le_bytes(h[8..16].try_into().unwrap());
            let total = align_record(len);
            if total > avail || off + total as usize > cap {
                return Err(violation(format!(
                    "record of {len} bytes at offset {off} overruns the published data"
                )));
            }
            let data_off = off + RECORD_HEADER;
            let end_pos = self.read_pos + total;
            let kind = match kind {
                KIND_PAD => {
                    if off + total as usize != cap {
                        return Err(violation("padding record does not reach the end"));
                    }
                    self.read_pos = end_pos;
                    continue;
                }
                KIND_DATA => {
                    self.credit.on_receive(len, charge)?;
                    RecordKind::Data
                }
                KIND_END => RecordKind::End,
                KIND_CANCELLED => RecordKind::Cancelled,
                KIND_ERROR => {
                    let mut msg = vec![0u8; len.min(4096)];
                    self.ring.copy_out(HEADER_SIZE + data_off, &mut msg);
                    RecordKind::Error(String::from_utf8_lossy(&msg).into_owned())
                }
                other => return Err(violation(format!("unknown record kind {other}"))),
            };
            if kind != RecordKind::Data && charge != 0 {
                return Err(violation("control record carries credit"));
            }
            self.read_pos = end_pos;
            return Ok(Some(Record {
                kind,
                len,
                charge,
                data_off,
                end_pos,
            }));
        }
    }

    /// The record's payload, in place in the ring.
    pub fn data(&self, record: &Record) -> &[u8] {
        assert!(record.data_off + record.len <= self.ring.capacity as usize);
        // SAFETY: the range was validated in `try_next` to lie inside the data
        // area and inside the published, unreleased region; the producer does
        // not touch it until `release` moves the read position past it.
        unsafe { self.ring.data(record.data_off, record.len) }
    }

    /// Gives the record's room back to the producer and consumes its credit.
    /// Returns true when the producer said it is asleep: ring the doorbell.
    pub fn release(&mut self, record: &Record) -> Result<bool, RingError> {
        if record.end_pos <= self.released || record.end_pos > self.read_pos {
            return Err(violation("record released twice or out of order"));
        }
        self.released = record.end_pos;
        // SYNC: Release pairs with the Acquire load in `RingProducer::refresh_read_pos`:
        // our reads of the record happen before the producer reuses its bytes.
        self.ring
            .u64_at(OFF_READ_POS)
            .store(self.released, Ordering::Release);
        if let Some(limit) = self.credit.on_consume(record.charge)? {
            // SYNC: Release pairs with the Acquire load in `RingProducer::refresh_credit`.
            self.ring
                .u64_at(OFF_CREDIT_LIMIT)
                .store(limit, Ordering::Release);
        }
        // SYNC: pairs with the fence in `RingProducer::prepare_sleep`.
        fence(Ordering::SeqCst);
        Ok(take_flag(self.ring.u32_at(OFF_PRODUCER_SLEEPING)))
    }

    /// Tells the producer to stop (stream-cancel). Returns true when the
    /// producer is asleep: ring the doorbell.
    pub fn cancel(&self) -> bool {
        // SYNC: Release pairs with the Acquire load in `RingProducer::is_cancelled`.
        self.ring.u32_at(OFF_CANCELLED).store(1, Ordering::Release);
        // SYNC: pairs with the fence in `RingProducer::prepare_sleep`.
        fence(Ordering::SeqCst);
        take_flag(self.ring.u32_at(OFF_PRODUCER_SLEEPING))
    }

    /// Announces the intent to sleep, then re-checks. Returns true when the
    /// caller should sleep on its doorbell; false when data arrived meanwhile.
    pub fn prepare_sleep(&mut self) -> bool {
        let flag = self.ring.u32_at(OFF_CONSUMER_SLEEPING);
        flag.store(1, Ordering::Relaxed);
        // SYNC: pairs with the fence in `RingProducer::publish`.
        fence(Ordering::SeqCst);
        let pos = self.ring.u64_at(OFF_WRITE_POS).load(Ordering::Relaxed);
        if pos != self.write_pos_cache {
            flag.store(0, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Clears the sleep flag after waking.
    pub fn woke(&self) {
        self.ring
            .u32_at(OFF_CONSUMER_SLEEPING)
            .store(0, Ordering::Relaxed);
    }

    /// Payload bytes of records released so far, headers included.
    pub fn position(&self) -> u64 {
        self.released
    }
}

#[cfg(test)]
#[path = "ring_tests.rs"]
mod tests;
