//! The command-line contract: `shmbusd`, `shmbusctl serve`, `cat`, `list`.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use shmbus_tests::{bin, wait_for_service, wait_until, write_random_file, Broker};

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
    for mode in ["--transport shm", "--transport socket", "--batch"] {
        let got = sha256(&format!(
            "{} --socket {} cat big {mode}",
            ctl.display(),
            broker.socket.display()
        ));
        assert_eq!(got, expected, "cat {mode}");
    }
    server.kill().unwrap();
    let _ = server.wait();
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
