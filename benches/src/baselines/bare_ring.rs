//! The bare ring baseline: a single-producer single-consumer byte ring in a
//! memfd shared by two processes, with no protocol on top: no records, no
//! credit, no validation, no sleeping. Two monotonic positions on separate
//! cache lines, both peers spin. It is the ceiling for what shared memory
//! can do, and the cost of spinning when nothing flows.
//!
//! Both positions move in batches: the producer publishes its write
//! position once per [`batch`] bytes (and at [`Producer::flush`], which
//! the streaming loop calls every few writes, and whenever it waits for
//! room), and the consumer releases what it read once per batch too, so
//! neither side pulls the other's cache line for every small write. A
//! round trip flushes every message. With whole writes (the ceiling for a
//! transport whose unit is the item), the producer publishes each write
//! when it is complete and the consumer releases whole writes only; with a
//! ring of two writes the two sides take turns in its halves, which keeps
//! large writes in cache better than batches do. Neither side ever sleeps, so neither
//! ever makes a system call: a ring that sleeps only when its peer sleeps
//! does no better while data flows.
//!
//! ```text
//! 0     write position u64   (producer's line)
//! 128   read position u64    (consumer's line)
//! 256   closed u64           (producer's line of its own)
//! 4096  data: capacity bytes, positions taken modulo the capacity
//! ```

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::{MmapOptions, MmapRaw};
use nix::sys::memfd::{memfd_create, MFdFlags};

const HEADER: usize = 4096;
const OFF_WRITE: usize = 0;
const OFF_READ: usize = 128;
const OFF_CLOSED: usize = 256;

/// Bytes published (and released) at once: an eighth of the ring, between
/// 4 KiB and 64 KiB.
pub fn batch(capacity: usize) -> usize {
    (capacity / 8).clamp(4096, 64 << 10)
}

/// Spins, then keeps yielding the CPU: a peer never sleeps, but many
/// spinning peers on few cores still take turns.
#[derive(Default)]
pub struct Spinner(u32);

impl Spinner {
    /// One round of waiting.
    pub fn wait(&mut self) {
        if self.0 < 1 << 16 {
            self.0 += 1;
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}

/// Creates the memfd of a ring with `capacity` data bytes (close-on-exec;
/// the orchestrator hands children a duplicate).
pub fn create(capacity: usize) -> io::Result<OwnedFd> {
    let fd = memfd_create("shmbus-bench-bare-ring", MFdFlags::MFD_CLOEXEC)?;
    let file = File::from(fd);
    file.set_len((HEADER + capacity) as u64)?;
    Ok(file.into())
}

struct Mapping {
    map: MmapRaw,
    capacity: usize,
}

impl Mapping {
    fn open(fd: OwnedFd, capacity: usize) -> io::Result<Self> {
        let file = File::from(fd);
        if file.metadata()?.len() != (HEADER + capacity) as u64 {
            return Err(io::Error::other("bare ring memfd has the wrong size"));
        }
        let map = MmapOptions::new().len(HEADER + capacity).map_raw(&file)?;
        Ok(Mapping { map, capacity })
    }

    fn atomic(&self, off: usize) -> &AtomicU64 {
        debug_assert!(off.is_multiple_of(8) && off + 8 <= HEADER);
        // SAFETY: `off` is one of the fixed 8-aligned header offsets inside
        // the page-aligned mapping, which lives as long as `self`; the other
        // process touches these words only through atomics too.
        unsafe { &*(self.map.as_mut_ptr().add(off) as *const AtomicU64) }
    }

    fn data(&self) -> *mut u8 {
        // SAFETY: HEADER is within the mapping (its length is HEADER + capacity).
        unsafe { self.map.as_mut_ptr().add(HEADER) }
    }
}

/// The producing end.
pub struct Producer {
    m: Mapping,
    write: u64,
    published: u64,
    read_cache: u64,
    batch: u64,
}

impl Producer {
    /// Maps the ring to produce into it. With `whole_writes`, nothing is
    /// published before [`flush`](Self::flush) (or a full ring): the
    /// consumer sees whole writes, as a shmbus consumer sees whole items.
    pub fn open(fd: OwnedFd, capacity: usize, whole_writes: bool) -> io::Result<Self> {
        Ok(Producer {
            m: Mapping::open(fd, capacity)?,
            write: 0,
            published: 0,
            read_cache: 0,
            batch: if whole_writes {
                u64::MAX
            } else {
                batch(capacity) as u64
            },
        })
    }

    /// Writes `len` bytes, handing `fill(offset, piece)` each contiguous
    /// piece of free ring (at most a batch) as it becomes free, and
    /// publishing once a batch is unpublished.
    pub fn write_with(&mut self, len: usize, mut fill: impl FnMut(usize, &mut [u8])) {
        let cap = self.m.capacity as u64;
        let mut done = 0;
        let mut spin = Spinner::default();
        while done < len {
            if self.write - self.read_cache == cap {
                self.flush();
                // SYNC: Acquire pairs with the Release store in
                // `Consumer::release`: the consumer finished reading the
                // bytes before we overwrite them.
                self.read_cache = self.m.atomic(OFF_READ).load(Ordering::Acquire);
                if self.write - self.read_cache == cap {
                    spin.wait();
                    continue;
                }
            }
            let off = (self.write % cap) as usize;
            let free = (cap - (self.write - self.read_cache)) as usize;
            let n = free
                .min(self.m.capacity - off)
                .min(len - done)
                .min(self.batch.try_into().unwrap_or(usize::MAX));
            // SAFETY: [off, off + n) lies inside the data area (n is capped
            // at the end of the ring) and is free: at most `capacity` bytes
            // separate the write position from the read position we loaded,
            // so the consumer is done with it and does not read it again
            // until the store below publishes it.
            let piece = unsafe { std::slice::from_raw_parts_mut(self.m.data().add(off), n) };
            fill(done, piece);
            self.write += n as u64;
            if self.write - self.published >= self.batch {
                self.flush();
            }
            done += n;
        }
    }

    /// Publishes everything written so far.
    pub fn flush(&mut self) {
        if self.published != self.write {
            self.published = self.write;
            // SYNC: Release pairs with the Acquire loads in `Consumer::read_with`:
            // the pieces' bytes are visible before the position covering them.
            self.m
                .atomic(OFF_WRITE)
                .store(self.write, Ordering::Release);
        }
    }

    /// Ends the stream.
    pub fn close(&mut self) {
        self.flush();
        // SYNC: Release pairs with the Acquire load of the flag in
        // `Consumer::read_with`, ordering every publication before it.
        self.m.atomic(OFF_CLOSED).store(1, Ordering::Release);
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.close();
    }
}

/// The consuming end.
pub struct Consumer {
    m: Mapping,
    read: u64,
    released: u64,
    write_cache: u64,
    batch: u64,
    /// Read bytes are handed back only in multiples of this: 1, or a
    /// write's size for whole writes.
    unit: u64,
}

impl Consumer {
    /// Maps the ring to consume from it. With `whole_writes` of a size,
    /// read bytes are handed back whole writes at a time, as a shmbus
    /// consumer releases whole items.
    pub fn open(fd: OwnedFd, capacity: usize, whole_writes: Option<usize>) -> io::Result<Self> {
        Ok(Consumer {
            m: Mapping::open(fd, capacity)?,
            read: 0,
            released: 0,
            write_cache: 0,
            batch: batch(capacity) as u64,
            unit: whole_writes.map_or(1, |w| w.max(1) as u64),
        })
    }

    /// Waits for data and hands `use_bytes` the next contiguous piece (at
    /// most `max` bytes, and at most a batch) in place. The piece is released
    /// once a batch is read, or when the ring is found empty. Returns its
    /// length; 0 once the producer closed and everything was read.
    pub fn read_with(&mut self, max: usize, mut use_bytes: impl FnMut(&[u8])) -> usize {
        let cap = self.m.capacity as u64;
        let mut spin = Spinner::default();
        while self.read == self.write_cache {
            self.release();
            // SYNC: Acquire pairs with the Release store in `Producer::write_with`.
            self.write_cache = self.m.atomic(OFF_WRITE).load(Ordering::Acquire);
            if self.read != self.write_cache {
                break;
            }
            // SYNC: Acquire pairs with the Release store in `Producer::close`;
            // the position re-read after it is final.
            if self.m.atomic(OFF_CLOSED).load(Ordering::Acquire) != 0 {
                // SYNC: Acquire pairs with the Release store in `Producer::write_with`.
                self.write_cache = self.m.atomic(OFF_WRITE).load(Ordering::Acquire);
                if self.read == self.write_cache {
                    return 0;
                }
                break;
            }
            spin.wait();
        }
        let off = (self.read % cap) as usize;
        let avail = (self.write_cache - self.read) as usize;
        let n = avail
            .min(self.m.capacity - off)
            .min(max.max(1))
            .min(self.batch as usize);
        // SAFETY: [off, off + n) lies inside the data area and was published
        // by the producer (position loaded with Acquire); the producer does
        // not overwrite it before the release store below.
        let piece = unsafe { std::slice::from_raw_parts(self.m.data().add(off), n) };
        use_bytes(piece);
        self.read += n as u64;
        if self.read - self.released >= self.batch {
            self.release();
        }
        n
    }

    /// Hands everything read so far back to the producer (whole writes
    /// only, with `whole_writes`).
    pub fn release(&mut self) {
        let upto = self.read / self.unit * self.unit;
        if self.released != upto {
            self.released = upto;
            // SYNC: Release pairs with the Acquire load in `Producer::write_with`:
            // our reads of the pieces happen before the producer reuses them.
            self.m.atomic(OFF_READ).store(upto, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_cross_the_ring_in_order_and_the_end_is_seen() {
        let fd = create(4096).unwrap();
        let mut p = Producer::open(fd.try_clone().unwrap(), 4096, false).unwrap();
        let mut c = Consumer::open(fd, 4096, None).unwrap();
        let t = std::thread::spawn(move || {
            let mut got = Vec::new();
            while c.read_with(1000, |b| got.extend_from_slice(b)) > 0 {}
            got
        });
        let data: Vec<u8> = (0..20_000u32).map(|i| i as u8).collect();
        for chunk in data.chunks(3000) {
            p.write_with(chunk.len(), |off, dst| {
                dst.copy_from_slice(&chunk[off..off + dst.len()])
            });
        }
        drop(p);
        assert_eq!(t.join().unwrap(), data);
    }
}
