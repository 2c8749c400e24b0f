//! The command-line contract: `shmbusd`, `shmbusctl serve`, `cat`, `list`.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use shmbus_tests::{
    bin, exit_within, wait_for_service, wait_until, write_random_file, Broker, KillOnDrop,
};

fn sha256(cmd: &str) -> String {
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("set -o pipefail; {cmd} | sha256sum"))
        .output()
        .expect("run pipeline");
    assert!(
        out.status.success(),
        "{cmd} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

#[test]
fn serve_and_cat_move_a_gigabyte_byte_exact_over_every_transport() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.bin");
    write_random_file(&file, 1 << 30);
    let expected = sha256(&format!("cat {}", file.display()));
    let ctl = bin("shmbusctl");
    let mut server = Command::new(&ctl)
        .arg("--socket")
        .arg(&broker.socket)
        .args(["serve", "big"])
        .arg(&file)
        .spawn()
        .unwrap();
    wait_for_service(&broker.connect(), "big");
    for mode in [
        "--transport shm",
        "--transport socket",
        "--batch --max-batch 1G",
    ] {
        let got = sha256(&format!(
            "{} --socket {} cat big {mode}",
            ctl.display(),
            broker.socket.display()
        ));
        assert_eq!(got, expected, "cat {mode}");
    }
    server.kill().unwrap();
    let _ = server.wait();
    // The same file handed over whole, as one sealed blob.
    let mut server = Command::new(&ctl)
        .arg("--socket")
        .arg(&broker.socket)
        .args(["serve", "whole", "--blob"])
        .arg(&file)
        .spawn()
        .unwrap();
    wait_for_service(&broker.connect(), "whole");
    for mode in ["--transport shm", "--transport socket"] {
        let got = sha256(&format!(
            "{} --socket {} cat whole {mode}",
            ctl.display(),
            broker.socket.display()
        ));
        assert_eq!(got, expected, "cat of a blob, {mode}");
    }
    server.kill().unwrap();
    let _ = server.wait();
    // Only a regular file can be a blob.
    let out = Command::new(&ctl)
        .arg("--socket")
        .arg(&broker.socket)
        .args(["serve", "nope", "--blob", "-"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--blob serves a regular file"));
}

#[test]
fn serve_stdin_to_one_caller_then_exit() {
    let broker = Broker::start();
    let ctl = bin("shmbusctl");
    let mut server = Command::new(&ctl)
        .arg("--socket")
        .arg(&broker.socket)
        .args(["serve", "pipe", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = server.stdin.take().unwrap();
        std::thread::spawn(move || {
            for i in 0..10_000u32 {
                writeln!(stdin, "line {i}").unwrap();
            }
        });
    }
    wait_for_service(&broker.connect(), "pipe");
    let out = Command::new(&ctl)
        .arg("--socket")
        .arg(&broker.socket)
        .args(["cat", "pipe"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 10_000);
    assert_eq!(text.lines().last(), Some("line 9999"));
    let status = server.wait().unwrap();
    assert!(status.success(), "serve exits after its one caller");
}

#[test]
fn list_shows_the_transport_of_live_streams() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f.bin");
    write_random_file(&file, 64 << 20);
    let ctl = bin("shmbusctl");
    let mut server = Command::new(&ctl)
        .arg("--socket")
        .arg(&broker.socket)
        .args(["serve", "f"])
        .arg(&file)
        .spawn()
        .unwrap();
    let conn = broker.connect();
    wait_for_service(&conn, "f");
    for transport in ["shm", "socket"] {
        // A reader that stalls keeps the stream live.
        let mut reader = Command::new("bash")
            .process_group(0)
            .arg("-c")
            .arg(format!(
                "{} --socket {} cat f --transport {transport} | (sleep 30; cat >/dev/null)",
                ctl.display(),
                broker.socket.display()
            ))
            .spawn()
            .unwrap();
        let mut listed = String::new();
        wait_until(Duration::from_secs(10), || {
            let out = Command::new(&ctl)
                .arg("--socket")
                .arg(&broker.socket)
                .args(["list", "--json"])
                .output()
                .unwrap();
            listed = String::from_utf8(out.stdout).unwrap();
            listed.contains("\"streams\": [\n    {")
        });
        let v: serde_json::Value = serde_json::from_str(&listed).unwrap();
        let stream = &v["streams"][0];
        assert_eq!(stream["transport"], transport, "{listed}");
        assert_eq!(stream["service"], "f");
        assert_eq!(v["services"][0]["name"], "f");
        let table = Command::new(&ctl)
            .arg("--socket")
            .arg(&broker.socket)
            .arg("list")
            .output()
            .unwrap();
        let table = String::from_utf8(table.stdout).unwrap();
        assert!(table.contains(&format!(" {transport} ")), "{table}");
        // SAFETY: plain kill(2) of the process group this test created.
        unsafe { libc::kill(-(reader.id() as i32), libc::SIGKILL) };
        let _ = reader.wait();
        wait_until(Duration::from_secs(10), || {
            conn.list().unwrap().streams.is_empty()
        });
    }
    server.kill().unwrap();
    let _ = server.wait();
}

#[test]
fn errors_are_one_line_with_distinct_exit_codes() {
    let ctl = bin("shmbusctl");
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nobody.sock");
    let out = Command::new(&ctl)
        .arg("--socket")
        .arg(&missing)
        .args(["cat", "x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("broker unreachable"), "{err}");

    let broker = Broker::start();
    let out = Command::new(&ctl)
        .env("SHMBUS_SOCKET", &broker.socket)
        .args(["cat", "x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("no such service"), "{err}");

    let out = Command::new(&ctl)
        .env("SHMBUS_SOCKET", &broker.socket)
        .args(["serve", "x", "/nonexistent/file"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn a_second_broker_on_the_same_socket_refuses_to_start() {
    let broker = Broker::start();
    let out = Command::new(bin("shmbusd"))
        .arg("--socket")
        .arg(&broker.socket)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already listens"));
    let out = Command::new(bin("shmbusd"))
        .args(["--ring-size", "1000"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--ring-size") && err.contains("power of two"),
        "{err}"
    );
}

#[test]
fn status_monitor_and_progress() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f.bin");
    write_random_file(&file, 8 << 20);
    let ctl = bin("shmbusctl");
    let sock = broker.socket.to_str().unwrap().to_string();
    let mut monitor = Command::new(&ctl)
        .args(["--socket", &sock, "monitor"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut server = Command::new(&ctl)
        .args(["--socket", &sock, "serve", "f"])
        .arg(&file)
        .spawn()
        .unwrap();
    let conn = broker.connect();
    wait_for_service(&conn, "f");
    let out = Command::new(&ctl)
        .args(["--socket", &sock, "cat", "f", "--progress"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout.len(), 8 << 20);
    let progress = String::from_utf8(out.stderr).unwrap();
    let last = progress.lines().last().unwrap_or_default().to_string();
    assert!(
        last.contains("100%") && last.contains("8.0 MiB / 8.0 MiB") && last.contains("/s"),
        "{progress}"
    );
    let out = Command::new(&ctl)
        .args(["--socket", &sock, "cat", "f", "--transport", "socket"])
        .output()
        .unwrap();
    assert!(out.status.success());

    let out = Command::new(&ctl)
        .args(["--socket", &sock, "status", "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["services"], 1);
    assert_eq!(v["shm_streams_total"], 1);
    assert_eq!(v["socket_streams_total"], 1);
    assert!(v["bytes_moved"].as_u64().unwrap() >= 16 << 20, "{v}");
    let text = Command::new(&ctl)
        .args(["--socket", &sock, "status"])
        .output()
        .unwrap();
    let text = String::from_utf8(text.stdout).unwrap();
    for field in [
        "shmbusd ",
        "uptime",
        "connections",
        "services",
        "streams",
        "bytes moved",
    ] {
        assert!(text.contains(field), "{field} missing:\n{text}");
    }

    server.kill().unwrap();
    let _ = server.wait();
    drop(broker);
    let _ = monitor.wait();
    let mut events = String::new();
    std::io::Read::read_to_string(&mut monitor.stdout.take().unwrap(), &mut events).unwrap();
    let lines: Vec<&str> = events.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("service=f") && l.ends_with("open transport=shm")),
        "{events}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("open transport=socket fallback=Requested")),
        "{events}"
    );
    assert_eq!(
        lines.iter().filter(|l| l.ends_with(" end")).count(),
        2,
        "{events}"
    );
}

/// Runs `shmbusctl` with `args` against `broker`, failing after `limit`.
fn ctl_within(broker: &Broker, args: &[&str], limit: Duration) -> std::process::Output {
    let mut child = Command::new(bin("shmbusctl"))
        .arg("--socket")
        .arg(&broker.socket)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = Vec::new();
    let mut pipe = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        std::io::Read::read_to_end(&mut pipe, &mut out).unwrap();
        out
    });
    let status = exit_within(&mut child, limit);
    let mut stderr = Vec::new();
    std::io::Read::read_to_end(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    std::process::Output {
        status,
        stdout: reader.join().unwrap(),
        stderr,
    }
}

#[test]
fn serve_refuses_a_directory_or_a_socket_and_registers_nothing() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let socket = broker.socket.to_str().unwrap().to_string();
    for (path, why) in [
        (dir.path().to_str().unwrap(), "is a directory"),
        (socket.as_str(), "is a socket"),
    ] {
        let out = ctl_within(&broker, &["serve", "d", path], Duration::from_secs(10));
        assert_eq!(out.status.code(), Some(2), "{path}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(why) && err.contains(path), "{err}");
    }
    // Standard input that is a directory is refused the same way.
    let out = Command::new(bin("shmbusctl"))
        .arg("--socket")
        .arg(&broker.socket)
        .args(["serve", "d", "-"])
        .stdin(std::fs::File::open(dir.path()).unwrap())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is a directory"));
    assert!(broker.connect().list().unwrap().services.is_empty());
}

#[test]
fn serve_streams_a_fifo_and_a_character_device() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let mut servers = Vec::new();
    for (name, path) in [("fifo", fifo.as_path()), ("zero", Path::new("/dev/zero"))] {
        servers.push(KillOnDrop(
            Command::new(bin("shmbusctl"))
                .arg("--socket")
                .arg(&broker.socket)
                .args(["serve", name])
                .arg(path)
                .spawn()
                .unwrap(),
        ));
        // Registered without waiting for a writer to open the FIFO.
        wait_for_service(&broker.connect(), name);
    }
    let writer = std::thread::spawn(move || std::fs::write(&fifo, b"through a fifo\n").unwrap());
    let out = ctl_within(&broker, &["cat", "fifo"], Duration::from_secs(10));
    writer.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"through a fifo\n");
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "{} --socket {} cat zero | head -c 4096 | tr -d '\\0' | wc -c",
            bin("shmbusctl").display(),
            broker.socket.display()
        ))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), "0");
    drop(servers);
}

#[test]
fn batch_cancels_a_stream_beyond_max_batch_and_fails_clearly() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("4m.bin");
    write_random_file(&file, 4 << 20);
    let ctl = bin("shmbusctl");
    let mut servers = Vec::new();
    for (name, path) in [("zero", Path::new("/dev/zero")), ("file", file.as_path())] {
        servers.push(KillOnDrop(
            Command::new(&ctl)
                .arg("--socket")
                .arg(&broker.socket)
                .args(["serve", name])
                .arg(path)
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        ));
    }
    let conn = broker.connect();
    wait_for_service(&conn, "zero");
    wait_for_service(&conn, "file");
    // An endless stream: only the cap ends it.
    let out = ctl_within(
        &broker,
        &["cat", "zero", "--batch", "--max-batch", "4M"],
        Duration::from_secs(20),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "nothing is written past the cap");
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("--max-batch 4.0 MiB"), "{err}");
    wait_until(Duration::from_secs(10), || {
        conn.list().unwrap().streams.is_empty()
    });
    // A stream of exactly the cap fits.
    let out = ctl_within(
        &broker,
        &["cat", "file", "--batch", "--max-batch", "4M"],
        Duration::from_secs(20),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, std::fs::read(&file).unwrap());
    // A size that is not one, and a cap without --batch, are usage errors.
    for args in [
        &["cat", "file", "--batch", "--max-batch", "4Q"][..],
        &["cat", "file", "--max-batch", "4M"][..],
    ] {
        let out = ctl_within(&broker, args, Duration::from_secs(10));
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
    drop(servers);
}

#[test]
fn cat_with_a_timeout_writes_what_arrived_then_exits_124() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let _server = KillOnDrop(
        Command::new(bin("shmbusctl"))
            .arg("--socket")
            .arg(&broker.socket)
            .args(["serve", "slow"])
            .arg(&fifo)
            .spawn()
            .unwrap(),
    );
    wait_for_service(&broker.connect(), "slow");
    // A writer that sends a line, then holds the FIFO open without more.
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let writer = std::thread::spawn(move || {
        let mut f = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
        std::io::Write::write_all(&mut f, b"first line\n").unwrap();
        let _ = done_rx.recv_timeout(Duration::from_secs(30));
    });
    let started = std::time::Instant::now();
    let out = ctl_within(
        &broker,
        &["cat", "slow", "--timeout", "700ms"],
        Duration::from_secs(10),
    );
    let took = started.elapsed();
    done_tx.send(()).unwrap();
    writer.join().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(124), "{err}");
    assert_eq!(
        out.stdout, b"first line\n",
        "what arrived in time is written"
    );
    assert_eq!(err.trim(), "shmbusctl: deadline exceeded");
    assert!(took >= Duration::from_millis(690), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    // A bad duration is a usage error.
    let out = ctl_within(
        &broker,
        &["cat", "slow", "--timeout", "soon"],
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(2));
}
