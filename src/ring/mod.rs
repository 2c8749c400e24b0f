//! The shared-memory stream port: one single-producer single-consumer ring
//! per direction, in a sealed memfd shared by two processes that do not
//! trust each other.
//!
//! This is the only module that reads or writes shared memory. "The
//! shared-memory port" in `PROTOCOL.md` (at the repository root) describes
//! the layout, the records and the wake-up protocol in full.
//!
//! # Layout
//!
//! ```text
//! 0     static line   magic u64 | version u32 | capacity u32 | hwm u64
//! 128   producer line write_pos u64 | charged u64          (written by the producer)
//! 256   consumer line read_pos u64 | credit_limit u64   (written by the consumer)
//! 384   consumer_sleeping u32  (set by the consumer, cleared by the producer)
//! 512   producer_sleeping u32  (set by the producer, cleared by the consumer)
//! 640   cancelled u32          (set once by the consumer; the producer reads it
//!                               before every item, so it has a line of its own)
//! 1024  result_state u32 | result_len u32 | result bytes  (written by the service)
//! 4096  data: `capacity` bytes (a power of two) of 16-byte aligned records
//! ```
//!
//! A record is a 16-byte header (`len u32 | kind u32 | charge u64`, little
//! endian) followed by `len` bytes, padded to 16. A blob record carries
//! the blob's size; the blob itself is a sealed memfd sent on the port's
//! socket ([`crate::blob`]). Records never wrap: when a
//! record does not fit before the end, a padding record fills the tail. A
//! producer that finds the ring empty pads to the end too and starts over at
//! the beginning, so bursts smaller than the ring reuse memory that is still
//! cached (with many streams, cycling through every ring would not fit the
//! caches). Large records ([`HOT_RECORD`] and up) take turns in the first
//! two slots of their size for the same reason: the producer waits for the
//! first slot rather than move on through the ring.
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
//! # In-place views
//!
//! [`RingConsumer::data`] hands out a record's payload as `&[u8]` and
//! [`RingProducer::slot_buf`] a reservation as `&mut [u8]`, both over the
//! mapping, which the peer process can write at any moment whatever the
//! protocol says. The client passes these views on to applications
//! (`Receiver::recv_in_place`, `BufRead::fill_buf`, `Sender::reserve`).
//! The contract, and the argument for it:
//!
//! - By Rust's rules a `&[u8]` asserts that nothing writes the bytes while it
//!   lives (a `&mut [u8]`, that nothing else reads or writes them), so
//!   another process writing them anyway is, for the language, a data race.
//!   The compiler cannot see that process; what it may do on the strength
//!   of the assertion is treat the bytes as unchanging while the view lives:
//!   fold two reads of a byte into one, read a byte again where the source
//!   read it once, or (through `&mut`) take back a value this side wrote
//!   without loading it. Every `u8` is a valid value, so a byte the peer
//!   changed, or a mix of old and new bytes, is never an invalid value.
//! - The ring's own state never comes from bytes behind a view. Lengths,
//!   offsets, kinds, charges, positions and credit are read once from
//!   shared memory, with atomics or volatile reads, into locals, validated,
//!   and only the locals are used: a view's bounds come from them, and a
//!   record is released with the consumer's copy of its header, never the
//!   header in the ring. The peer may rewrite a held record, header
//!   included: the consumer's accounting and the records after it are
//!   unaffected.
//! - The library reads bytes through a view only to copy them, once, into
//!   private memory (`recv`, `recv_bytes`, `Read::read`; the sender's custom
//!   size function is given a copy of the slot), and validates (UTF-8,
//!   postcard) only the copy, after the view is gone. Nothing is checked in
//!   the ring and then used from the ring, so none of the compiler's
//!   assumptions above can turn a peer's write into a wrong length, a wrong
//!   position or an unchecked value in the library: at worst the copy holds
//!   bytes the peer wrote while it was made, which it could as well have
//!   written before.
//! - An application holding a view of an untrusted peer's ring may see its
//!   bytes change, or a mix of old and new; it must not rely on two reads
//!   agreeing, and should check a value in a copy, not in the view. Over
//!   the socket transport a view is the receiver's own buffer, which no
//!   peer can write.
//!
//! `tests::a_peer_rewriting_a_held_record_changes_only_its_bytes`, and the
//! end-to-end test `a_peer_rewriting_an_item_held_in_place_changes_only_the_bytes_in_view`
//! with a peer process, check this.
//!
//! # Sleeping
//!
//! A side that finds nothing to do sets its `*_sleeping` flag, issues a
//! SeqCst fence, and re-checks before sleeping on its doorbell; the other side
//! publishes, issues a SeqCst fence, and rings the doorbell only when it sees
//! the flag. This is the classic store–fence–load handshake: at least one of
//! the two sees the other's store, so no wake-up is lost, and a running peer
//! costs no syscall.

use memmap2::{MmapOptions, MmapRaw};
use std::fs::File;
use std::os::fd::OwnedFd;
use std::ptr::NonNull;

use crate::credit::CreditError;
use crate::sys;
use sync::{AtomicU32, AtomicU64, Header, Ordering};

/// "SHMBUSR1", little endian.
pub const RING_MAGIC: u64 = u64::from_le_bytes(*b"SHMBUSR1");
/// Layout version.
pub const RING_VERSION: u32 = 2;
/// Bytes before the data area.
pub const HEADER_SIZE: usize = 4096;
/// Bytes of a record header; also the record alignment.
pub const RECORD_HEADER: usize = 16;
/// From this size on (payload bytes), a record is large: the producer
/// keeps such records in the first two slots of their size, and the
/// consumer hands each one back as soon as it is released (section 6.4 of
/// `PROTOCOL.md`).
pub const HOT_RECORD: usize = 256 << 10;
/// Smallest data area.
pub const MIN_CAPACITY: u32 = 4096;
/// Largest data area.
pub const MAX_CAPACITY: u32 = 1 << 30;

pub(super) const OFF_MAGIC: usize = 0;
pub(super) const OFF_VERSION: usize = 8;
pub(super) const OFF_CAPACITY: usize = 12;
pub(super) const OFF_HWM: usize = 16;
pub(super) const OFF_WRITE_POS: usize = 128;
pub(super) const OFF_CHARGED: usize = 136;
pub(super) const OFF_READ_POS: usize = 256;
pub(super) const OFF_CREDIT_LIMIT: usize = 264;
pub(super) const OFF_CANCELLED: usize = 640;
pub(super) const OFF_CONSUMER_SLEEPING: usize = 384;
pub(super) const OFF_PRODUCER_SLEEPING: usize = 512;
pub(super) const OFF_RESULT_STATE: usize = 1024;
pub(super) const OFF_RESULT_LEN: usize = 1028;
pub(super) const OFF_RESULT: usize = 1032;
/// Largest call result that travels in a ring's header, peer to peer.
pub const MAX_RING_RESULT: usize = HEADER_SIZE - OFF_RESULT;

/// The most of a stream-error message a record carries.
pub const MAX_ERROR_MESSAGE: usize = 4096;

pub(super) const KIND_DATA: u32 = 1;
pub(super) const KIND_END: u32 = 2;
pub(super) const KIND_ERROR: u32 = 3;
pub(super) const KIND_CANCELLED: u32 = 4;
pub(super) const KIND_PAD: u32 = 5;
pub(super) const KIND_BLOB: u32 = 6;
/// Payload bytes of a blob record: the blob's size, `u64` little endian.
/// The blob's descriptor travels on the port's socket (`PROTOCOL.md`, "Blobs").
pub const BLOB_RECORD: usize = 8;

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

pub(super) fn violation(msg: impl Into<String>) -> RingError {
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

/// Creates a sealed memfd holding a fresh ring of `capacity` data bytes with
/// a full grant of `hwm` credit: the broker's half of setting up a port.
pub fn create_memfd(name: &str, capacity: u32, hwm: u64) -> std::io::Result<OwnedFd> {
    if !valid_capacity(capacity) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("ring capacity {capacity} is not a power of two in range"),
        ));
    }
    // The first data page is written (zeros) too: each peer's first fault
    // on the header then maps it as well (fault-around), and the producer's
    // first item needs no page allocation.
    let mut head = initial_header(capacity, hwm);
    head.resize(HEADER_SIZE + MIN_CAPACITY as usize, 0);
    sys::create_sealed_memfd(name, file_size(capacity), &head)
}

/// Largest payload one record can carry in a ring of `capacity` bytes: half
/// the ring, so that a record always fits once the ring has drained, whatever
/// the current offset (padding to the end plus the record stay within it).
#[inline]
pub fn max_record(capacity: u32) -> usize {
    capacity as usize / 2 - RECORD_HEADER
}

#[inline]
pub(super) fn align_record(len: usize) -> u64 {
    ((RECORD_HEADER + len + RECORD_HEADER - 1) & !(RECORD_HEADER - 1)) as u64
}

/// A mapped, validated ring. Shares the mapping with its other views.
pub(super) struct SharedRing {
    _backing: Backing,
    /// The memfd, kept open after mapping until the stream's first item has
    /// passed ([`SharedRing::close_memfd`]): closing it is a system call
    /// that would otherwise stand between a new stream and its first item.
    memfd: Option<File>,
    /// The memory's base and the header's atomic fields: over the mapping
    /// in real builds, loom's own atomics under loom (see [`sync`]).
    header: Header,
    len: usize,
    pub(super) capacity: u32,
}

/// What keeps a ring's memory alive.
enum Backing {
    /// A shared mapping of the memfd (the only kind outside tests).
    Mapped(#[allow(dead_code)] std::sync::Arc<MmapRaw>),
    /// Heap memory shared by the views of one test ring, so the ring code
    /// runs under Miri, which cannot map a memfd.
    #[cfg(test)]
    Heap(#[allow(dead_code)] std::sync::Arc<heap::Region>),
}

// SAFETY: the mapping is plain shared memory; all shared fields are accessed
// through atomics or copied out, so moving the owner to another thread is fine.
unsafe impl Send for SharedRing {}

impl SharedRing {
    pub(super) fn map(fd: OwnedFd, capacity: u32, hwm: u64) -> Result<Self, RingError> {
        if !valid_capacity(capacity) {
            return Err(RingError::BadPort(format!(
                "capacity {capacity} out of range"
            )));
        }
        sys::check_ring_seals(&fd).map_err(|e| RingError::BadPort(e.to_string()))?;
        let file = File::from(fd);
        // The size from `lseek`, which costs half of an `fstat` (statx)
        // and is all that is needed here.
        let size = {
            use std::io::Seek;
            (&file).seek(std::io::SeekFrom::End(0))?
        };
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
        // SAFETY: the mapping is `file_size(capacity)` ≥ HEADER_SIZE bytes
        // (checked above), page-aligned, and lives in `_backing` as long as
        // this view and every view made from it; the ring accesses the
        // header's fields only through the atomics `Header` hands out.
        let header = unsafe { Header::over(base) }?;
        let ring = SharedRing {
            len: map.len(),
            _backing: Backing::Mapped(std::sync::Arc::new(map)),
            memfd: Some(file),
            header,
            capacity,
        };
        ring.check_header(capacity, hwm)?;
        Ok(ring)
    }

    /// A view of a heap-backed test ring; every view of one region shares
    /// its memory as two processes share a memfd.
    #[cfg(test)]
    pub(super) fn on_heap(
        region: &std::sync::Arc<heap::Region>,
        hwm: u64,
    ) -> Result<Self, RingError> {
        let ring = SharedRing {
            len: region.len(),
            memfd: None,
            header: region.header(),
            capacity: region.capacity(),
            _backing: Backing::Heap(region.clone()),
        };
        ring.check_header(ring.capacity, hwm)?;
        Ok(ring)
    }

    /// Another view of the same memory.
    pub(super) fn view(&self) -> SharedRing {
        SharedRing {
            _backing: match &self._backing {
                Backing::Mapped(m) => Backing::Mapped(m.clone()),
                #[cfg(test)]
                Backing::Heap(r) => Backing::Heap(r.clone()),
            },
            memfd: None,
            header: self.header.clone(),
            len: self.len,
            capacity: self.capacity,
        }
    }

    fn check_header(&self, capacity: u32, hwm: u64) -> Result<(), RingError> {
        let ring = self;
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
        Ok(())
    }

    /// Closes the memfd (the mapping stays). Called once the first item
    /// has passed; later calls find it closed already.
    #[inline]
    pub(super) fn close_memfd(&mut self) {
        self.memfd = None;
    }

    /// The start of the ring's memory.
    #[inline(always)]
    fn base(&self) -> NonNull<u8> {
        self.header.base()
    }

    /// The `u64` header field at the fixed offset `off`.
    #[inline(always)]
    pub(super) fn u64_at(&self, off: usize) -> &AtomicU64 {
        self.header.u64_at(off)
    }

    /// The `u32` header field at the fixed offset `off`.
    #[inline(always)]
    pub(super) fn u32_at(&self, off: usize) -> &AtomicU32 {
        self.header.u32_at(off)
    }

    /// Tells loom (only) of a read of file bytes `[off, off + len)`; the
    /// part in the data area is tracked.
    #[inline(always)]
    fn reading_file(&self, off: usize, len: usize) {
        if off + len > HEADER_SIZE {
            let start = off.max(HEADER_SIZE);
            self.header.reading(start - HEADER_SIZE, off + len - start);
        }
    }

    /// As [`reading_file`](Self::reading_file), for a write.
    #[inline(always)]
    fn writing_file(&self, off: usize, len: usize) {
        if off + len > HEADER_SIZE {
            let start = off.max(HEADER_SIZE);
            self.header.writing(start - HEADER_SIZE, off + len - start);
        }
    }

    /// Copies bytes at absolute file offset `off` out of the mapping.
    #[inline]
    pub(super) fn copy_out(&self, off: usize, dst: &mut [u8]) {
        assert!(off + dst.len() <= self.len);
        self.reading_file(off, dst.len());
        // SAFETY: the range is inside the mapping (asserted). Volatile reads
        // because the peer may be writing; `dst` is local memory.
        unsafe {
            let src = self.base().as_ptr().add(off);
            for (i, b) in dst.iter_mut().enumerate() {
                *b = std::ptr::read_volatile(src.add(i));
            }
        }
    }

    /// Reads the 16-byte record header at data offset `off` (16-aligned)
    /// into a local copy, in two 8-byte loads.
    #[inline]
    pub(super) fn read_record_header(&self, off: usize) -> [u8; RECORD_HEADER] {
        assert!(off.is_multiple_of(RECORD_HEADER) && off + RECORD_HEADER <= self.capacity as usize);
        // A small record's payload spills into the next cache line: fetching
        // it now overlaps that miss with the header's instead of taking them
        // one after the other.
        self.prefetch(off + 64);
        self.header.reading(off, RECORD_HEADER);
        // SAFETY: the 16 bytes lie inside the data area (asserted) and are
        // 8-aligned (the data area is page-aligned, `off` 16-aligned).
        // Volatile because the peer may be writing; only the copy is used.
        let words = unsafe {
            let p = self.base().as_ptr().add(HEADER_SIZE + off) as *const u64;
            [
                std::ptr::read_volatile(p),
                std::ptr::read_volatile(p.add(1)),
            ]
        };
        let mut h = [0u8; RECORD_HEADER];
        h[..8].copy_from_slice(&words[0].to_ne_bytes());
        h[8..].copy_from_slice(&words[1].to_ne_bytes());
        h
    }

    /// Hints the CPU to fetch the cache line at data offset `off`; nothing
    /// when `off` is past the data area.
    #[inline]
    pub(super) fn prefetch(&self, off: usize) {
        #[cfg(all(target_arch = "x86_64", not(miri)))]
        if off < self.capacity as usize {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            // SAFETY: a prefetch is a hint that never faults, and the address
            // is inside the data area.
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(self.base().as_ptr().add(HEADER_SIZE + off) as *const i8)
            };
        }
        #[cfg(not(all(target_arch = "x86_64", not(miri))))]
        let _ = off;
    }

    /// Writes bytes at absolute file offset `off`.
    #[inline]
    pub(super) fn copy_in(&self, off: usize, src: &[u8]) {
        assert!(off + src.len() <= self.len);
        self.writing_file(off, src.len());
        // SAFETY: the range is inside the mapping (asserted) and the protocol
        // gives this side exclusive use of it until it is published.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), self.base().as_ptr().add(off), src.len())
        }
    }

    /// Data-area slice `[off, off+len)` for reading: a view the peer can
    /// write under (module docs, "In-place views").
    ///
    /// # Safety
    /// The range must have been validated, from local copies, to lie inside
    /// the data area, and the protocol must give this side the range
    /// (published and not yet released).
    #[inline]
    pub(super) unsafe fn data(&self, off: usize, len: usize) -> &[u8] {
        debug_assert!(off + len <= self.capacity as usize);
        self.header.reading(off, len);
        // SAFETY: the range is inside the data area (the caller's validation),
        // so inside the mapping, which `_backing` keeps alive as long as
        // `&self`. A protocol-abiding producer does not write it until it is
        // released. A hostile one writing it anyway breaks the slice's
        // promise that the bytes do not change: the compiler may then fold or
        // repeat reads of them, and every `u8` is valid, so the only effect
        // is on the byte values read. The ring derives no length, offset or
        // other state from these bytes, and the library only copies them
        // once and validates the copy (module docs, "In-place views").
        unsafe { std::slice::from_raw_parts(self.base().as_ptr().add(HEADER_SIZE + off), len) }
    }

    /// Data-area slice `[off, off+len)` for writing: a view the peer can
    /// write under too (module docs, "In-place views").
    ///
    /// # Safety
    /// As [`data`](Self::data), for a range reserved and not yet published,
    /// of which this is the only view.
    #[allow(clippy::mut_from_ref)]
    #[inline]
    pub(super) unsafe fn data_mut(&self, off: usize, len: usize) -> &mut [u8] {
        debug_assert!(off + len <= self.capacity as usize);
        self.header.writing(off, len);
        // SAFETY: in bounds and alive as in `data`; the caller guarantees no
        // other view of the range in this process, and a protocol-abiding
        // consumer does not touch free space. A hostile consumer writing it
        // anyway can change the bytes this side wrote: the compiler may take
        // back a value this side wrote without loading it, and every `u8` is
        // valid, so the only effect is on the bytes the consumer receives.
        // This side reads the range back only to copy it once (the custom
        // size function); the record's length and charge are local values.
        unsafe { std::slice::from_raw_parts_mut(self.base().as_ptr().add(HEADER_SIZE + off), len) }
    }

    #[inline]
    pub(super) fn write_record_header(&self, off: usize, len: u32, kind: u32, charge: u64) {
        let mut h = [0u8; RECORD_HEADER];
        h[0..4].copy_from_slice(&len.to_le_bytes());
        h[4..8].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&charge.to_le_bytes());
        self.copy_in(HEADER_SIZE + off, &h);
    }

    #[inline]
    pub(super) fn mask(&self) -> u64 {
        self.capacity as u64 - 1
    }
}

mod consumer;
mod producer;
mod result;
mod sync;

pub use consumer::{Record, RecordKind, RingConsumer};
pub use producer::{Blocked, Control, RingProducer, Slot};
pub use result::ResultSlot;

/// Clears a peer's sleep flag if set; true when it was set.
#[inline]
fn take_flag(flag: &AtomicU32) -> bool {
    if flag.load(Ordering::Relaxed) != 0 {
        flag.store(0, Ordering::Relaxed);
        true
    } else {
        false
    }
}

#[cfg(test)]
mod heap;

#[cfg(all(test, not(loom)))]
mod tests;

#[cfg(all(test, loom))]
mod loom_tests;
