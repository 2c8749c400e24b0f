//! `shmbusctl serve`: a service streaming a file (or standard input) to its callers.

use std::fs::{File, FileType, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::thread;

use shmbus_client::{Blob, Connection, Error, IncomingCall, MethodSpec, StreamMode};

use crate::{Failure, METHOD, SIZE_METHOD};

/// Why a file of this type cannot be read as a stream, if it cannot.
fn unservable(t: FileType) -> Option<&'static str> {
    if t.is_dir() {
        Some("is a directory")
    } else if t.is_socket() {
        Some("is a socket")
    } else {
        // Regular files, FIFOs and devices read as a stream of bytes.
        None
    }
}

const SERVABLE: &str = "serve a regular file, a FIFO or a device, or - for standard input";

/// Checks, before anything is registered, that `path` can be served:
/// it exists, it is readable, and it reads as a stream of bytes.
fn check_file(path: &Path) -> Result<(), Failure> {
    let refuse = |why: &dyn std::fmt::Display| {
        Failure::Usage(format!("cannot serve {}: {why}", path.display()))
    };
    let meta = std::fs::metadata(path).map_err(|e| refuse(&e))?;
    if let Some(why) = unservable(meta.file_type()) {
        return Err(refuse(&format!("it {why}; {SERVABLE}")));
    }
    // Without blocking: opening a FIFO would otherwise wait for a writer.
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| refuse(&e))?;
    Ok(())
}

/// Checks that standard input reads as a stream of bytes.
fn check_stdin() -> Result<(), Failure> {
    use std::os::fd::AsFd;
    let stdin = io::stdin();
    let Ok(fd) = stdin.as_fd().try_clone_to_owned() else {
        return Err(Failure::Usage(
            "cannot serve standard input: it is closed".into(),
        ));
    };
    match File::from(fd).metadata() {
        Ok(m) => match unservable(m.file_type()) {
            Some(why) => Err(Failure::Usage(format!(
                "cannot serve standard input: it {why}; {SERVABLE}"
            ))),
            None => Ok(()),
        },
        Err(e) => Err(Failure::Usage(format!("cannot serve standard input: {e}"))),
    }
}

fn stream_reader(mut reader: impl Read, call: &mut IncomingCall) -> shmbus_client::Result<()> {
    let tx = call
        .sender()
        .ok_or_else(|| Error::Protocol("download call without a sending half".into()))?;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = tx.fail(&format!("reading the served file failed: {e}"));
                return Err(e.into());
            }
        };
        tx.write_all(&buf[..n]).map_err(Error::Io)?;
        // What one read gave goes out now: a slow source (a FIFO, a
        // device) must not leave it queued until more comes.
        tx.flush()?;
    }
    tx.finish()
}

/// Sends the file whole as one sealed blob: copied into a memfd inside
/// the kernel, sealed, and handed over with no copy on the bus.
fn send_file_as_blob(file: &File, call: &mut IncomingCall) -> shmbus_client::Result<()> {
    let tx = call
        .sender()
        .ok_or_else(|| Error::Protocol("download call without a sending half".into()))?;
    let blob = match Blob::from_file(file) {
        Ok(b) => b,
        Err(e) => {
            let _ = tx.fail(&format!("making the blob failed: {e}"));
            return Err(e.into());
        }
    };
    tx.send_blob(&blob)?;
    tx.finish()
}

/// The size of a regular file; other files have none that tells their length.
fn served_size(path: &Path) -> Result<u64, String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if meta.is_file() {
        Ok(meta.len())
    } else {
        Err("size unknown: not a regular file".into())
    }
}

fn serve_one(mut call: IncomingCall, file: Option<&Path>, blob: bool) {
    let result = if call.method() == SIZE_METHOD {
        match file.map(served_size) {
            Some(Ok(len)) => call.reply(len.to_le_bytes().to_vec()),
            Some(Err(e)) => call.fail(&e),
            None => call.fail("size unknown: serving standard input"),
        }
    } else if call.method() != METHOD {
        let msg = format!("unknown method {}", call.method());
        call.fail(&msg)
    } else {
        match file {
            None => {
                let r = stream_reader(io::stdin().lock(), &mut call);
                finish(call, r)
            }
            Some(path) => match File::open(path) {
                Ok(f) => {
                    let r = if blob {
                        send_file_as_blob(&f, &mut call)
                    } else {
                        stream_reader(f, &mut call)
                    };
                    finish(call, r)
                }
                Err(e) => call.fail(&format!("cannot open {}: {e}", path.display())),
            },
        }
    };
    if let Err(e) = result {
        let _ = writeln!(io::stderr(), "shmbusctl: call ended: {e}");
    }
}

fn finish(call: IncomingCall, r: shmbus_client::Result<()>) -> shmbus_client::Result<()> {
    match r {
        Ok(()) => call.reply(Vec::new()),
        Err(e) => call.fail(&e.to_string()),
    }
}

/// `shmbusctl serve NAME [FILE] [--blob]`.
pub fn serve(socket: &Path, name: &str, file: Option<PathBuf>, blob: bool) -> Result<(), Failure> {
    let file = file.filter(|f| f.as_os_str() != "-");
    match &file {
        Some(f) => check_file(f)?,
        None => check_stdin()?,
    }
    if blob {
        let regular = file
            .as_deref()
            .and_then(|f| std::fs::metadata(f).ok())
            .is_some_and(|m| m.is_file());
        if !regular {
            return Err(Failure::Usage(
                "--blob serves a regular file whole: name one (not standard input, a FIFO or a device)"
                    .into(),
            ));
        }
    }
    let conn = Connection::connect(socket)?;
    let service = conn.register(
        name,
        &[
            MethodSpec::new(METHOD, StreamMode::Download),
            MethodSpec::new(SIZE_METHOD, StreamMode::Unary),
        ],
    )?;
    match file {
        None => {
            while let Some(call) = service.next()? {
                let streams = call.method() == METHOD;
                serve_one(call, None, false);
                if streams {
                    break;
                }
            }
            Ok(())
        }
        Some(path) => {
            let mut running = Vec::new();
            while let Some(call) = service.next()? {
                let path = path.clone();
                running.push(thread::spawn(move || serve_one(call, Some(&path), blob)));
                running.retain(|h| !h.is_finished());
            }
            // The broker is gone: streams in flight finish over their ports.
            for h in running {
                let _ = h.join();
            }
            Err(Error::BrokerGone.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_and_sockets_are_not_streams() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let t = std::fs::metadata(dir).unwrap().file_type();
        assert_eq!(unservable(t), Some("is a directory"));
        let sock_path = dir.join("s.sock");
        let _l = std::os::unix::net::UnixListener::bind(&sock_path).unwrap();
        let t = std::fs::metadata(&sock_path).unwrap().file_type();
        assert_eq!(unservable(t), Some("is a socket"));
        let file = dir.join("f");
        std::fs::write(&file, b"x").unwrap();
        assert_eq!(
            unservable(std::fs::metadata(&file).unwrap().file_type()),
            None
        );
        let null = std::fs::metadata("/dev/null").unwrap().file_type();
        assert_eq!(unservable(null), None, "character devices read as streams");
    }
}
