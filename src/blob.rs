//! Sealed blobs: a buffer handed to another process whole, as a memfd,
//! with no copy on the bus.
//!
//! A [`BlobWriter`] is a fresh memfd with a writable mapping; fill it, then
//! [`seal`](BlobWriter::seal) it: the writable mapping is dropped and the
//! memfd gets `F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`.
//! The result is a [`Blob`]: a read-only mapping of memory that no process
//! can change or resize any more, the sender included. That is what makes
//! the `&[u8]` a blob hands out sound even when the sender is hostile: the
//! kernel, not the sender's goodwill, keeps the bytes still, so the view
//! gives the compiler's assumption about `&[u8]` (nothing writes it) a
//! guarantee, unlike a view of a ring (see [`crate::ring`], "In-place views").
//!
//! A received descriptor becomes a blob only through
//! [`Blob::from_received`], which checks, before mapping anything, that it is
//! a regular file carrying the write, shrink and grow seals (only memfds can
//! carry them), and that its size is the size the sender declared and within
//! the receiver's limit. The checks are made on the descriptor, never on
//! what the sender says of it. "Blobs" in `PROTOCOL.md` describes the records
//! that carry a blob on either port.
//!
//! This module, [`crate::ring`] and [`crate::sys`] are the only ones with
//! `unsafe` code: here, making the two mappings.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use memmap2::{Mmap, MmapMut, MmapOptions};

use crate::sys;

/// The largest blob a receiver accepts unless told otherwise: 4 GiB.
pub const DEFAULT_BLOB_LIMIT: u64 = 4 << 30;

/// Why a blob could not be made, sealed or accepted.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// A system call failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// Sealing failed because a writable shared mapping of the memfd still
    /// exists (`EBUSY`): whoever holds it could change the bytes after
    /// they were sent.
    #[error("cannot seal the blob: a writable mapping of its memfd still exists (EBUSY); unmap it first")]
    WritableMapping,
    /// The descriptor is not a memfd (a pipe, a socket, a device, a
    /// directory, a file on disk).
    #[error("blob refused: the descriptor is not a memfd ({0})")]
    NotMemfd(String),
    /// The memfd lacks seals a receiver needs.
    #[error("blob refused: the memfd lacks {missing} (it has {present})")]
    Unsealed {
        /// The missing seals, by name.
        missing: String,
        /// The seals it has, by name.
        present: String,
    },
    /// The memfd's size is not the size the sender declared.
    #[error("blob refused: the memfd holds {actual} bytes, the sender declared {declared}")]
    SizeMismatch {
        /// The size the sender declared.
        declared: u64,
        /// The memfd's size.
        actual: u64,
    },
    /// The blob is larger than the receiver accepts.
    #[error("blob refused: {len} bytes exceed the receiver's limit of {limit}")]
    TooLarge {
        /// The blob's size.
        len: u64,
        /// The receiver's limit.
        limit: u64,
    },
}

/// A blob being filled: a fresh memfd and a writable mapping of it.
/// Nothing can be sent until it is [sealed](Self::seal).
pub struct BlobWriter {
    file: File,
    map: Option<MmapMut>,
}

impl BlobWriter {
    /// A zero-filled blob of `len` bytes to fill through
    /// [`as_mut_slice`](Self::as_mut_slice). Its pages are allocated as
    /// they are first written.
    pub fn new(len: u64) -> io::Result<BlobWriter> {
        let file = File::from(sys::create_blob_memfd("shmbus-blob")?);
        file.set_len(len)?;
        let map = if len == 0 {
            None
        } else {
            let len = usize::try_from(len)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "blob too large"))?;
            // SAFETY: the memfd is new and private to this process until it
            // is sealed (no other descriptor of it exists), and its size is
            // fixed at `len` by this side alone, so nothing truncates or
            // writes it under the mapping; the mapping is dropped before the
            // memfd is sealed or shared.
            Some(unsafe { MmapOptions::new().len(len).map_mut(&file)? })
        };
        Ok(BlobWriter { file, map })
    }

    /// The blob's bytes, to fill in place.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        match &mut self.map {
            Some(m) => &mut m[..],
            None => &mut [],
        }
    }

    /// The blob's size in bytes.
    pub fn len(&self) -> usize {
        self.map.as_ref().map_or(0, |m| m.len())
    }

    /// True for a zero-byte blob.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops the writable mapping and seals the memfd: from now on no one
    /// can change or resize it. The sealing cost (unmapping, the seal, the
    /// new read-only mapping) is the sender's.
    pub fn seal(self) -> Result<Blob, BlobError> {
        let BlobWriter { file, map } = self;
        drop(map);
        Blob::seal_memfd(OwnedFd::from(file))
    }
}

/// Immutable, sealed bytes in a memfd, mapped read-only: what a stream
/// carries as a blob. Sending one copies nothing, and the sender may keep
/// it (and send it again). It stays valid after the stream ends and after
/// its sender exits.
pub struct Blob {
    fd: OwnedFd,
    map: Option<Mmap>,
}

impl std::fmt::Debug for Blob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blob").field("len", &self.len()).finish()
    }
}

impl Blob {
    /// A sealed blob holding a copy of `bytes` (a convenience: filling a
    /// [`BlobWriter`] in place saves this copy).
    pub fn copy_from(bytes: &[u8]) -> Result<Blob, BlobError> {
        let mut w = BlobWriter::new(bytes.len() as u64)?;
        w.as_mut_slice().copy_from_slice(bytes);
        w.seal()
    }

    /// A sealed blob with the contents of `file` from its start, copied
    /// inside the kernel (`copy_file_range`, else `sendfile`): the bytes
    /// never pass through this process.
    pub fn from_file(file: &File) -> Result<Blob, BlobError> {
        let len = file.metadata()?.len();
        let memfd = File::from(sys::create_blob_memfd("shmbus-blob")?);
        memfd.set_len(len)?;
        sys::copy_into(file.as_fd(), memfd.as_fd(), len)?;
        Blob::seal_memfd(OwnedFd::from(memfd))
    }

    /// Seals a memfd the caller filled (made with `MFD_ALLOW_SEALING`):
    /// [`BlobError::WritableMapping`] while a writable mapping of it exists
    /// anywhere. Its size at this moment is the blob's.
    pub fn seal_memfd(fd: OwnedFd) -> Result<Blob, BlobError> {
        sys::seal_blob(&fd)?;
        let len = sys::fd_size(fd.as_fd())?;
        Blob::map(fd, len)
    }

    /// Accepts a descriptor a peer sent as a blob of `declared` bytes:
    /// checks it (module docs) before mapping anything, and maps it
    /// read-only. `limit` is the largest blob the receiver takes.
    pub fn from_received(fd: OwnedFd, declared: u64, limit: u64) -> Result<Blob, BlobError> {
        if declared > limit {
            return Err(BlobError::TooLarge {
                len: declared,
                limit,
            });
        }
        let len = sys::check_blob(fd.as_fd())?;
        if len != declared {
            return Err(BlobError::SizeMismatch {
                declared,
                actual: len,
            });
        }
        Blob::map(fd, len)
    }

    fn map(fd: OwnedFd, len: u64) -> Result<Blob, BlobError> {
        if len == 0 {
            return Ok(Blob { fd, map: None });
        }
        let len = usize::try_from(len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "blob too large"))?;
        // SAFETY: the memfd carries F_SEAL_WRITE, F_SEAL_SHRINK and
        // F_SEAL_GROW (checked by `sys::check_blob` or set by
        // `sys::seal_blob` just before) and is `len` bytes long: no process
        // can write its bytes or change its size any more, so the mapping
        // never changes under the `&[u8]` it backs, and never loses pages
        // (no SIGBUS). The mapping is read-only and lives as long as `self`.
        let map = unsafe { MmapOptions::new().len(len).map(&fd)? };
        Ok(Blob { fd, map: Some(map) })
    }

    /// The blob's bytes. No one can change them: they are sealed.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.map {
            Some(m) => &m[..],
            None => &[],
        }
    }

    /// The blob's size in bytes.
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    /// True for a zero-byte blob.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The memfd, to pass on (`SCM_RIGHTS`) or to map elsewhere.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Another handle on the same sealed memory (a duplicated descriptor
    /// and a mapping of its own).
    pub fn try_clone(&self) -> Result<Blob, BlobError> {
        let fd = self.fd.try_clone()?;
        Blob::map(fd, self.len() as u64)
    }
}

impl std::ops::Deref for Blob {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl AsRef<[u8]> for Blob {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl AsFd for Blob {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests;
