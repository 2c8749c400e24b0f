//! The system calls behind sealed blobs ([`crate::blob`]): making a
//! sealable memfd, sealing it, copying a file into it inside the kernel,
//! and checking a descriptor a peer sent before anything maps it.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::sys::stat::{fstat, SFlag};

use crate::blob::BlobError;

/// The seals a sender puts on a blob.
pub fn blob_seals() -> SealFlag {
    SealFlag::F_SEAL_WRITE | SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL
}

/// The seals a receiver requires: no process can write the bytes or change
/// the size any more.
pub fn required_blob_seals() -> SealFlag {
    SealFlag::F_SEAL_WRITE | SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW
}

/// A new, empty memfd that can be sealed.
pub fn create_blob_memfd(name: &str) -> io::Result<OwnedFd> {
    Ok(memfd_create(
        name,
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )?)
}

/// Adds [`blob_seals`]. `EBUSY` (a writable mapping exists) is
/// [`BlobError::WritableMapping`].
pub fn seal_blob(fd: &OwnedFd) -> Result<(), BlobError> {
    match fcntl(fd, FcntlArg::F_ADD_SEALS(blob_seals())) {
        Ok(_) => Ok(()),
        Err(Errno::EBUSY) => Err(BlobError::WritableMapping),
        Err(Errno::EPERM) => Err(BlobError::Unsealed {
            missing: "the right to add seals (it was made without MFD_ALLOW_SEALING or is sealed against sealing)".into(),
            present: seal_names(current_seals(fd.as_fd()).unwrap_or(SealFlag::empty())),
        }),
        Err(e) => Err(BlobError::Io(e.into())),
    }
}

fn current_seals(fd: BorrowedFd<'_>) -> nix::Result<SealFlag> {
    fcntl(fd, FcntlArg::F_GET_SEALS).map(SealFlag::from_bits_truncate)
}

/// The size of the file behind `fd`.
pub fn fd_size(fd: BorrowedFd<'_>) -> io::Result<u64> {
    Ok(fstat(fd)?.st_size as u64)
}

/// Copies the first `len` bytes of `from` to the start of `to` inside the
/// kernel: `copy_file_range`, else (across file systems, or where it is
/// refused) `sendfile`.
pub fn copy_into(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: u64) -> io::Result<()> {
    let (mut off_in, mut off_out) = (0i64, 0i64);
    let mut use_sendfile = false;
    while (off_out as u64) < len {
        let left = (len - off_out as u64).min(1 << 30) as usize;
        let n = if use_sendfile {
            nix::sys::sendfile::sendfile64(to, from, Some(&mut off_in), left)
                .inspect(|&n| off_out += n as i64)
        } else {
            nix::fcntl::copy_file_range(from, Some(&mut off_in), to, Some(&mut off_out), left)
        };
        match n {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the file ended at {off_out} of {len} bytes"),
                ))
            }
            Ok(_) => {}
            Err(Errno::EINTR) => {}
            Err(Errno::EXDEV | Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP)
                if !use_sendfile && off_out == 0 =>
            {
                use_sendfile = true;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Checks a descriptor a peer sent as a blob, before anything maps it: a
/// regular file carrying at least [`required_blob_seals`] (only a memfd
/// can). Returns its size.
pub fn check_blob(fd: BorrowedFd<'_>) -> Result<u64, BlobError> {
    let st = fstat(fd).map_err(|e| BlobError::NotMemfd(format!("fstat failed: {e}")))?;
    let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
    if kind != SFlag::S_IFREG {
        let what = match kind {
            SFlag::S_IFIFO => "a pipe",
            SFlag::S_IFSOCK => "a socket",
            SFlag::S_IFCHR => "a character device",
            SFlag::S_IFBLK => "a block device",
            SFlag::S_IFDIR => "a directory",
            SFlag::S_IFLNK => "a symbolic link",
            _ => "not a regular file",
        };
        return Err(BlobError::NotMemfd(what.into()));
    }
    let seals = current_seals(fd)
        .map_err(|_| BlobError::NotMemfd("a regular file that cannot carry seals".into()))?;
    let missing = required_blob_seals() - seals;
    if !missing.is_empty() {
        return Err(BlobError::Unsealed {
            missing: seal_names(missing),
            present: seal_names(seals),
        });
    }
    Ok(st.st_size as u64)
}

/// Seal names for messages: `F_SEAL_WRITE | F_SEAL_GROW`, or `no seals`.
fn seal_names(seals: SealFlag) -> String {
    let names = [
        (SealFlag::F_SEAL_SEAL, "F_SEAL_SEAL"),
        (SealFlag::F_SEAL_SHRINK, "F_SEAL_SHRINK"),
        (SealFlag::F_SEAL_GROW, "F_SEAL_GROW"),
        (SealFlag::F_SEAL_WRITE, "F_SEAL_WRITE"),
        (SealFlag::F_SEAL_FUTURE_WRITE, "F_SEAL_FUTURE_WRITE"),
    ];
    let named: Vec<_> = names
        .iter()
        .filter(|(f, _)| seals.contains(*f))
        .map(|(_, n)| *n)
        .collect();
    if named.is_empty() {
        "no seals".into()
    } else {
        named.join(" | ")
    }
}
