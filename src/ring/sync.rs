//! The primitives the ring synchronizes with: std's in real builds, loom's
//! under `--cfg loom`, so that loom checks the shipped producer and consumer
//! rather than a copy of them.
//!
//! The ring code takes its atomics, fences and orderings from here, and
//! reaches the ring's memory through [`Header`]: the base of the ring's
//! memory ([`Header::base`], for the record bytes) and the header's atomic
//! fields ([`Header::u64_at`], [`Header::u32_at`]).
//!
//! - In real builds `Header` is nothing but the mapping's base pointer, and
//!   `u64_at` / `u32_at` cast `base + offset` to an atomic, exactly as the
//!   ring did before this module existed: one add, no branch, no extra load
//!   (the ring's machine code is the same as without this module). The
//!   access hooks ([`Header::reading`], [`Header::writing`])
//!   are empty and vanish.
//! - Under loom, atomics cannot be placed over raw memory, so `Header` also
//!   owns one loom atomic per header field, shared by every view of one heap
//!   ring (`heap::Region`), and maps each fixed offset to its atomic. It also
//!   owns one loom cell per 16-byte granule of the data area: the ring code
//!   announces every read and write of record bytes through the access
//!   hooks, so loom reports a record read that is not ordered after its
//!   write (by `write_pos`, Release/Acquire) and a reuse of ring space not
//!   ordered after the consumer's reads (by `read_pos`, Release/Acquire).

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

#[cfg(not(loom))]
pub(super) use real::Header;

#[cfg(loom)]
pub(super) use model::Header;

#[cfg(not(loom))]
mod real {
    use std::ptr::NonNull;

    use super::{AtomicU32, AtomicU64};
    use crate::ring::{RingError, HEADER_SIZE};

    /// The ring's memory: its base, and the header's atomic fields in it.
    /// (Not `Copy`, so that the ring code clones it the same way under loom.)
    #[derive(Clone)]
    pub(in crate::ring) struct Header {
        base: NonNull<u8>,
    }

    impl Header {
        /// The header at the start of a mapping.
        ///
        /// # Safety
        /// `base` must point to at least `HEADER_SIZE` bytes, 8-aligned, that
        /// stay mapped for as long as the header (or a reference it returned)
        /// is used, and that are only ever accessed atomically at the offsets
        /// given to [`u64_at`](Self::u64_at) and [`u32_at`](Self::u32_at).
        pub(in crate::ring) unsafe fn over(base: NonNull<u8>) -> Result<Self, RingError> {
            Ok(Header { base })
        }

        /// The start of the ring's memory (the header, then the data area).
        #[inline(always)]
        pub(in crate::ring) fn base(&self) -> NonNull<u8> {
            self.base
        }

        /// The `u64` header field at `off`.
        #[inline(always)]
        pub(in crate::ring) fn u64_at(&self, off: usize) -> &AtomicU64 {
            debug_assert!(off.is_multiple_of(8) && off + 8 <= HEADER_SIZE);
            // SAFETY: `off` is one of the fixed 8-aligned header offsets,
            // inside the header (asserted in debug builds) which `over`'s
            // caller guarantees mapped and 8-aligned. The peer may write the
            // field at any moment, which an atomic allows.
            unsafe { &*(self.base.as_ptr().add(off) as *const AtomicU64) }
        }

        /// The `u32` header field at `off`.
        #[inline(always)]
        pub(in crate::ring) fn u32_at(&self, off: usize) -> &AtomicU32 {
            debug_assert!(off.is_multiple_of(4) && off + 4 <= HEADER_SIZE);
            // SAFETY: as in `u64_at`, for a fixed 4-aligned header offset.
            unsafe { &*(self.base.as_ptr().add(off) as *const AtomicU32) }
        }

        /// Announces a read of data-area bytes `[off, off + len)`: nothing
        /// outside loom.
        #[inline(always)]
        pub(in crate::ring) fn reading(&self, _off: usize, _len: usize) {}

        /// Announces a write of data-area bytes `[off, off + len)`: nothing
        /// outside loom.
        #[inline(always)]
        pub(in crate::ring) fn writing(&self, _off: usize, _len: usize) {}
    }
}

#[cfg(loom)]
mod model {
    use std::ptr::NonNull;
    use std::sync::Arc;

    use loom::cell::UnsafeCell;

    use super::{AtomicU32, AtomicU64};
    use crate::ring::*;

    /// The header's atomic fields as loom atomics, and one tracked cell per
    /// 16-byte granule of the data area.
    struct Cells {
        write_pos: AtomicU64,
        charged: AtomicU64,
        read_pos: AtomicU64,
        credit_limit: AtomicU64,
        consumer_sleeping: AtomicU32,
        producer_sleeping: AtomicU32,
        cancelled: AtomicU32,
        result_state: AtomicU32,
        result_len: AtomicU32,
        granules: Box<[UnsafeCell<()>]>,
    }

    // SAFETY: the granules hold no data (`()`): each only records accesses
    // for loom, which checks their ordering across threads itself; the
    // other fields are atomics.
    unsafe impl Sync for Cells {}

    /// A heap ring's memory under loom: its base, for the record bytes, and
    /// the loom stand-ins for its header fields; clones share them.
    #[derive(Clone)]
    pub(in crate::ring) struct Header {
        base: NonNull<u8>,
        cells: Arc<Cells>,
    }

    impl Header {
        /// Loom cannot model a mapped memfd: only heap rings are checked.
        ///
        /// # Safety
        /// None needed; the signature matches the real one.
        pub(in crate::ring) unsafe fn over(_base: NonNull<u8>) -> Result<Self, RingError> {
            Err(RingError::BadPort(
                "memfd rings are not modelled under loom".into(),
            ))
        }

        /// The header of a fresh heap ring at `base`, starting from the
        /// values the broker writes (`initial_header`).
        #[cfg(test)]
        pub(in crate::ring) fn fresh(base: NonNull<u8>, capacity: u32, hwm: u64) -> Self {
            let granules = (0..capacity as usize / RECORD_HEADER)
                .map(|_| UnsafeCell::new(()))
                .collect();
            Header {
                base,
                cells: Arc::new(Cells {
                    write_pos: AtomicU64::new(0),
                    charged: AtomicU64::new(0),
                    read_pos: AtomicU64::new(0),
                    credit_limit: AtomicU64::new(hwm),
                    consumer_sleeping: AtomicU32::new(0),
                    producer_sleeping: AtomicU32::new(0),
                    cancelled: AtomicU32::new(0),
                    result_state: AtomicU32::new(0),
                    result_len: AtomicU32::new(0),
                    granules,
                }),
            }
        }

        pub(in crate::ring) fn base(&self) -> NonNull<u8> {
            self.base
        }

        pub(in crate::ring) fn u64_at(&self, off: usize) -> &AtomicU64 {
            let c = &self.cells;
            match off {
                OFF_WRITE_POS => &c.write_pos,
                OFF_CHARGED => &c.charged,
                OFF_READ_POS => &c.read_pos,
                OFF_CREDIT_LIMIT => &c.credit_limit,
                _ => panic!("no u64 header field at offset {off}"),
            }
        }

        pub(in crate::ring) fn u32_at(&self, off: usize) -> &AtomicU32 {
            let c = &self.cells;
            match off {
                OFF_CONSUMER_SLEEPING => &c.consumer_sleeping,
                OFF_PRODUCER_SLEEPING => &c.producer_sleeping,
                OFF_CANCELLED => &c.cancelled,
                OFF_RESULT_STATE => &c.result_state,
                OFF_RESULT_LEN => &c.result_len,
                _ => panic!("no u32 header field at offset {off}"),
            }
        }

        fn granules(&self, off: usize, len: usize) -> &[UnsafeCell<()>] {
            let first = off / RECORD_HEADER;
            let end = (off + len).div_ceil(RECORD_HEADER);
            &self.cells.granules[first..end.max(first)]
        }

        /// Records a read of data-area bytes `[off, off + len)`: loom fails
        /// the execution if a write to them is not ordered before it.
        #[track_caller]
        pub(in crate::ring) fn reading(&self, off: usize, len: usize) {
            for g in self.granules(off, len) {
                g.with(|_| ());
            }
        }

        /// Records a write of data-area bytes `[off, off + len)`: loom fails
        /// the execution if an earlier read or write of them by the other
        /// side is not ordered before it.
        #[track_caller]
        pub(in crate::ring) fn writing(&self, off: usize, len: usize) {
            for g in self.granules(off, len) {
                g.with_mut(|_| ());
            }
        }
    }
}
