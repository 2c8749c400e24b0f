//! Heap memory standing in for a memfd, so that the ring code can run under
//! Miri (which cannot map files) and loom (whose atomics cannot be placed
//! over raw memory) with the same views two processes would use.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr::NonNull;
use std::sync::Arc;

use super::sync::Header;
use super::{file_size, initial_header, valid_capacity, SharedRing, HEADER_SIZE};
use crate::credit::CreditSpec;

/// One zeroed, page-aligned allocation laid out as a ring file.
pub(crate) struct Region {
    base: NonNull<u8>,
    layout: Layout,
    capacity: u32,
    /// Under loom, the header's atomic fields live here, shared by the views.
    #[cfg(loom)]
    header: Header,
}

// SAFETY: the region is plain memory reached only through `SharedRing`
// views, which use atomics for shared fields and the ring protocol for data,
// exactly as with a mapping shared between processes.
unsafe impl Send for Region {}
// SAFETY: as above; `&Region` only hands out the base pointer.
unsafe impl Sync for Region {}

impl Region {
    /// A fresh ring with the header the broker would write.
    ///
    /// Under loom the capacity may be as small as 64 bytes, so that a few
    /// items fill the ring; the ring code's arithmetic only needs a power of
    /// two.
    pub(crate) fn new(capacity: u32, hwm: u64) -> Arc<Region> {
        if cfg!(loom) {
            assert!(capacity.is_power_of_two() && (64..=1 << 20).contains(&capacity));
        } else {
            assert!(valid_capacity(capacity));
        }
        let layout = Layout::from_size_align(file_size(capacity) as usize, HEADER_SIZE).unwrap();
        // SAFETY: the layout has a non-zero size (at least HEADER_SIZE).
        let base = NonNull::new(unsafe { alloc_zeroed(layout) }).expect("allocation failed");
        let header = initial_header(capacity, hwm);
        // SAFETY: `header` is HEADER_SIZE bytes, the allocation is larger,
        // and nothing else refers to the fresh allocation yet.
        unsafe { std::ptr::copy_nonoverlapping(header.as_ptr(), base.as_ptr(), header.len()) };
        Arc::new(Region {
            base,
            layout,
            capacity,
            #[cfg(loom)]
            header: Header::fresh(base, capacity, hwm),
        })
    }

    /// The header's atomic fields, as the views reach them.
    pub(super) fn header(&self) -> Header {
        #[cfg(not(loom))]
        // SAFETY: the allocation is `file_size(capacity)` ≥ HEADER_SIZE bytes,
        // HEADER_SIZE-aligned, and outlives every view (each holds the
        // `Arc<Region>`); the ring code touches the header's fields only
        // through the atomics `Header` hands out.
        let header = unsafe { Header::over(self.base) }.expect("a heap ring's header");
        #[cfg(loom)]
        let header = self.header.clone();
        header
    }

    pub(super) fn len(&self) -> usize {
        self.layout.size()
    }

    pub(super) fn capacity(&self) -> u32 {
        self.capacity
    }

    /// A producer view.
    pub(crate) fn producer(self: &Arc<Self>, credit: CreditSpec) -> super::RingProducer {
        let ring = SharedRing::on_heap(self, credit.high_water_mark).unwrap();
        super::RingProducer::with_ring(ring, credit)
    }

    /// A consumer view.
    pub(crate) fn consumer(self: &Arc<Self>, credit: CreditSpec) -> super::RingConsumer {
        let ring = SharedRing::on_heap(self, credit.high_water_mark).unwrap();
        super::RingConsumer::with_ring(ring, credit)
    }

    /// Writes raw bytes at file offset `off`, as a hostile peer would.
    #[cfg_attr(loom, allow(dead_code))]
    pub(crate) fn poke(self: &Arc<Self>, off: usize, bytes: &[u8]) {
        let hwm = {
            let mut h = [0u8; 8];
            h.copy_from_slice(&self.header_bytes()[16..24]);
            u64::from_le_bytes(h)
        };
        SharedRing::on_heap(self, hwm).unwrap().copy_in(off, bytes);
    }

    #[cfg_attr(loom, allow(dead_code))]
    fn header_bytes(&self) -> [u8; 24] {
        let mut h = [0u8; 24];
        // SAFETY: the first 24 bytes are inside the allocation; the static
        // header line is written once at creation and never by the ring code.
        unsafe { std::ptr::copy_nonoverlapping(self.base.as_ptr(), h.as_mut_ptr(), 24) };
        h
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout; the last `Arc` is
        // gone, so no view refers to it any more.
        unsafe { dealloc(self.base.as_ptr(), self.layout) }
    }
}
