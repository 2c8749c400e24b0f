//! `shmbusctl cat` stopped early: by a signal, by its reader going away, or
//! killed outright. Each time the call is cancelled or dropped cleanly and
//! the broker logs the stream's end.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use shmbus_tests::{
    bin, blocked_writing, bytes_written, exit_within, logged_stream_close, logged_stream_opens,
    send_signal, wait_for_service, wait_until, Broker, KillOnDrop,
};

const SEC: Duration = Duration::from_secs(1);

/// `shmbusctl serve NAME /dev/zero`: every call streams without end.
fn serve_zero(broker: &Broker, name: &str) -> KillOnDrop {
    let server = Command::new(bin("shmbusctl"))
        .arg("--socket")
        .arg(&broker.socket)
        .args(["serve", name, "/dev/zero"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = KillOnDrop(server);
    wait_for_service(&broker.connect(), name);
    server
}

fn cat(socket: &Path, name: &str, stdout: Stdio) -> KillOnDrop {
    KillOnDrop(
        Command::new(bin("shmbusctl"))
            .arg("--socket")
            .arg(socket)
            .args(["cat", name])
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    )
}

/// Waits until the broker has logged stream number `n` (counting from 1)
/// of `service` as open, and returns its id.
fn nth_stream(broker: &Broker, service: &str, n: usize) -> u64 {
    let mut id = None;
    wait_until(10 * SEC, || {
        id = logged_stream_opens(&broker.log(), service)
            .get(n - 1)
            .copied();
        id.is_some()
    });
    id.unwrap()
}

/// Waits until the broker has logged stream `id`'s end, and returns that line.
fn close_line(broker: &Broker, id: u64) -> String {
    let mut line = None;
    let found = (0..500).any(|_| {
        let log = broker.log();
        line = logged_stream_close(&log, id).map(str::to_string);
        line.is_some() || {
            std::thread::sleep(Duration::from_millis(10));
            false
        }
    });
    assert!(found, "no end logged for stream {id}:\n{}", broker.log());
    line.unwrap()
}

/// Waits until `cat` is in the middle of its stream: blocked writing to
/// a stdout nobody reads when `stalled`, else past its first MiB written.
fn wait_streaming(cat: &Child, stalled: bool) {
    wait_until(10 * SEC, || {
        if stalled {
            blocked_writing(cat.id(), 1)
        } else {
            bytes_written(cat.id()) >= 1 << 20
        }
    });
}

fn stderr_of(child: &mut Child) -> String {
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    err
}

#[test]
fn sigint_and_sigterm_cancel_the_call_and_exit_128_plus_the_signal() {
    let broker = Broker::start_logged_at("info", &[]);
    let _server = serve_zero(&broker, "zero");
    // The last: cat blocked writing to a reader that never reads.
    let cases = [
        (libc::SIGINT, 130, "SIGINT", false),
        (libc::SIGTERM, 143, "SIGTERM", false),
        (libc::SIGINT, 130, "SIGINT", true),
    ];
    for (n, (sig, code, name, stalled)) in cases.into_iter().enumerate() {
        let stdout = if stalled {
            Stdio::piped()
        } else {
            Stdio::null()
        };
        let mut reader = cat(&broker.socket, "zero", stdout);
        let id = nth_stream(&broker, "zero", n + 1);
        wait_streaming(&reader, stalled);
        send_signal(reader.id(), sig);
        let status = exit_within(&mut reader, 10 * SEC);
        let err = stderr_of(&mut reader);
        assert_eq!(status.code(), Some(code), "{name}: {status}; stderr: {err}");
        assert_eq!(err.lines().count(), 1, "{name}: {err}");
        assert!(err.contains("interrupted") && err.contains(name), "{err}");
        assert!(!err.contains("panicked"), "{err}");
        let line = close_line(&broker, id);
        if stalled {
            // The service, waiting for room, learns of it when cat exits.
            assert!(line.contains("why="), "{line}");
        } else {
            // The service saw the call cancelled, and said so.
            assert!(line.contains("why=\"cancelled\""), "{name}: {line}");
        }
        let log = broker.log();
        assert!(
            log.lines()
                .any(|l| l.contains(" cancel ") && l.contains(&format!("stream=Some({id})"))),
            "{name}: cat did not cancel stream {id}:\n{log}"
        );
    }
}

#[test]
fn a_closed_stdout_cancels_the_call_and_exits_141_without_a_word() {
    let broker = Broker::start_logged_at("info", &[]);
    let _server = serve_zero(&broker, "zero");
    let dir = tempfile::tempdir().unwrap();
    let err_file = dir.path().join("cat.err");
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "{} --socket {} cat zero 2>{} | head -c 1M | wc -c; echo ${{PIPESTATUS[0]}}",
            bin("shmbusctl").display(),
            broker.socket.display(),
            err_file.display()
        ))
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines, ["1048576", "141"], "{text}");
    let err = std::fs::read_to_string(&err_file).unwrap();
    assert!(err.is_empty(), "cat printed: {err}");
    let id = nth_stream(&broker, "zero", 1);
    // The service saw the call cancelled, and said so.
    let line = close_line(&broker, id);
    assert!(line.contains("why=\"cancelled\""), "{line}");
}

#[test]
fn the_listing_commands_end_quietly_on_a_closed_stdout() {
    let broker = Broker::start();
    let _server = serve_zero(&broker, "zero");
    for args in [
        &["list"][..],
        &["list", "--json"],
        &["status"],
        &["status", "--json"],
    ] {
        // A pipe whose reader is gone before anything is written.
        let (read, write) = nix::unistd::pipe().unwrap();
        drop(read);
        let out = Command::new(bin("shmbusctl"))
            .arg("--socket")
            .arg(&broker.socket)
            .args(args)
            .stdout(Stdio::from(write))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(141), "{args:?}: {err}");
        assert!(err.is_empty(), "{args:?}: {err}");
    }
}

#[test]
fn a_killed_caller_or_service_still_gets_its_streams_end_logged() {
    let broker = Broker::start_logged_at("info", &[]);
    let mut server = serve_zero(&broker, "zero");
    // The caller dies; the service is stopped so that only the broker can
    // tell of the stream's end.
    let mut reader = cat(&broker.socket, "zero", Stdio::null());
    let id = nth_stream(&broker, "zero", 1);
    wait_streaming(&reader, false);
    send_signal(server.id(), libc::SIGSTOP);
    send_signal(reader.id(), libc::SIGKILL);
    let _ = reader.wait();
    let line = close_line(&broker, id);
    assert!(line.contains("why=\"caller gone\""), "{line}");
    send_signal(server.id(), libc::SIGCONT);
    // The service dies while the caller is stopped.
    let mut reader = cat(&broker.socket, "zero", Stdio::null());
    let id = nth_stream(&broker, "zero", 2);
    wait_streaming(&reader, false);
    send_signal(reader.id(), libc::SIGSTOP);
    send_signal(server.id(), libc::SIGKILL);
    let _ = server.wait();
    let line = close_line(&broker, id);
    assert!(line.contains("why=\"service gone\""), "{line}");
    send_signal(reader.id(), libc::SIGCONT);
    let status = exit_within(&mut reader, 10 * SEC);
    assert_eq!(status.code(), Some(7), "cat exits 7 (peer gone)");
}
