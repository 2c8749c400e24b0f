use super::*;
use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use std::io::Write;
use std::os::unix::net::UnixStream;

const LIMIT: u64 = DEFAULT_BLOB_LIMIT;

fn sealable(len: u64) -> OwnedFd {
    let fd = sys::create_blob_memfd("t").unwrap();
    File::from(fd.try_clone().unwrap()).set_len(len).unwrap();
    fd
}

#[test]
fn a_sealed_blob_reads_back_and_cannot_change() {
    let mut w = BlobWriter::new(10_000).unwrap();
    for (i, b) in w.as_mut_slice().iter_mut().enumerate() {
        *b = i as u8;
    }
    let blob = w.seal().unwrap();
    assert_eq!(blob.len(), 10_000);
    assert!(blob.iter().enumerate().all(|(i, b)| *b == i as u8));
    // Through any descriptor of it, nothing can write or resize it.
    let file = File::from(blob.fd().try_clone_to_owned().unwrap());
    assert!((&file).write(b"x").is_err());
    assert!(file.set_len(1).is_err());
    assert!(file.set_len(1 << 20).is_err());
    // SAFETY: a test of the kernel's refusal; the mapping is never used.
    let writable = unsafe { MmapOptions::new().len(4096).map_mut(&file) };
    assert!(writable.is_err(), "a sealed blob cannot be mapped writable");
    // What a receiver accepts.
    let got = Blob::from_received(blob.fd().try_clone_to_owned().unwrap(), 10_000, LIMIT).unwrap();
    assert_eq!(got.as_bytes(), blob.as_bytes());
}

#[test]
fn zero_bytes_make_a_blob_too() {
    let blob = BlobWriter::new(0).unwrap().seal().unwrap();
    assert!(blob.is_empty());
    let got = Blob::from_received(blob.fd().try_clone_to_owned().unwrap(), 0, LIMIT).unwrap();
    assert_eq!(got.as_bytes(), b"");
}

#[test]
fn a_file_is_copied_in_the_kernel() {
    let mut f = tempfile::tempfile().unwrap();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7) as u8).collect();
    f.write_all(&data).unwrap();
    let blob = Blob::from_file(&f).unwrap();
    assert_eq!(blob.as_bytes(), &data[..]);
}

#[test]
fn sealing_with_a_writable_mapping_open_says_so() {
    let fd = sealable(4096);
    // SAFETY: the test's own fresh memfd; the mapping is only held.
    let map = unsafe { MmapOptions::new().len(4096).map_mut(&fd).unwrap() };
    match Blob::seal_memfd(fd.try_clone().unwrap()) {
        Err(BlobError::WritableMapping) => {}
        other => panic!("{other:?}"),
    }
    drop(map);
    Blob::seal_memfd(fd).unwrap();
}

fn refused(fd: OwnedFd, declared: u64) -> String {
    match Blob::from_received(fd, declared, LIMIT) {
        Ok(b) => panic!("accepted {b:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn receivers_refuse_what_is_not_a_sealed_memfd_of_the_declared_size() {
    // Unsealed.
    let m = refused(sealable(4096), 4096);
    assert!(
        m.contains("lacks F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE"),
        "{m}"
    );
    // Only F_SEAL_FUTURE_WRITE: a mapping made before it can still write.
    let fd = sealable(4096);
    let seals = SealFlag::F_SEAL_FUTURE_WRITE | SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW;
    fcntl(&fd, FcntlArg::F_ADD_SEALS(seals)).unwrap();
    let m = refused(fd, 4096);
    assert!(m.contains("lacks F_SEAL_WRITE"), "{m}");
    // A size that lies, both ways.
    let blob = Blob::copy_from(&[1; 100]).unwrap();
    let m = refused(blob.fd().try_clone_to_owned().unwrap(), 99);
    assert!(m.contains("holds 100 bytes, the sender declared 99"), "{m}");
    let m = refused(blob.fd().try_clone_to_owned().unwrap(), 1 << 20);
    assert!(m.contains("declared 1048576"), "{m}");
    // Over the receiver's limit: refused before the descriptor is looked at.
    match Blob::from_received(blob.fd().try_clone_to_owned().unwrap(), 100, 99) {
        Err(BlobError::TooLarge {
            len: 100,
            limit: 99,
        }) => {}
        other => panic!("{other:?}"),
    }
    // Not memfds at all.
    let (r, _w) = nix::unistd::pipe().unwrap();
    assert!(refused(r, 0).contains("a pipe"));
    let (s, _t) = UnixStream::pair().unwrap();
    assert!(refused(OwnedFd::from(s), 0).contains("a socket"));
    let zero = File::open("/dev/zero").unwrap();
    assert!(refused(OwnedFd::from(zero), 0).contains("a character device"));
    let dir = File::open("/").unwrap();
    assert!(refused(OwnedFd::from(dir), 0).contains("a directory"));
    let disk = tempfile::tempfile().unwrap();
    assert!(refused(OwnedFd::from(disk), 0).contains("cannot carry seals"));
}
