//! The broker as a system service: socket activation, sd_notify, reload,
//! stop, journald logs, configuration errors. Real `shmbusd` processes,
//! real `systemd-socket-activate`, a real notify socket.

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shmbus_client::{Connection, CreditSpec, Error, ErrorCode, StreamMode, Transport};
use shmbus_tests::{bin, send_signal, wait_until, Broker, Peer};

const SEC: Duration = Duration::from_secs(1);

fn signal(child: &Child, sig: i32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::try_from(sig).unwrap(),
    )
    .unwrap();
}

/// Waits for exit, failing after `limit`; returns how long it took.
fn wait_exit(child: &mut Child, limit: Duration) -> (Duration, std::process::ExitStatus) {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (start.elapsed(), status);
        }
        assert!(start.elapsed() < limit, "still running after {limit:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn wait_socket(path: &Path) {
    wait_until(10 * SEC, || {
        std::os::unix::net::UnixStream::connect(path).is_ok()
    });
}

/// A broker started by hand with extra environment.
fn broker(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (Child, PathBuf) {
    let socket = dir.join("bus.sock");
    let mut cmd = Command::new(bin("shmbusd"));
    cmd.arg("--socket")
        .arg(&socket)
        .args(args)
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().unwrap();
    wait_socket(&socket);
    (child, socket)
}

fn stream_some(socket: &Path, count: u64) {
    let conn = Connection::connect(socket).unwrap();
    let mut call = conn
        .call("nums", "numbers")
        .mode(StreamMode::Download)
        .args_typed(&count)
        .unwrap()
        .start()
        .unwrap();
    let rx = call.receiver().unwrap();
    let mut n = 0;
    while rx.recv::<u64>().unwrap().is_some() {
        n += 1;
    }
    assert_eq!(n, count);
    call.finish().unwrap();
}

fn serve_numbers(socket: &Path, extra: &[&str]) -> Peer {
    let mut args = vec!["numbers", "nums"];
    args.extend_from_slice(extra);
    Peer::serve_at(socket, &args)
}

/// True when the line holds a date such as 2026-11-27.
fn has_date(line: &str) -> bool {
    let b = line.as_bytes();
    b.windows(10).any(|w| {
        w.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            _ => c.is_ascii_digit(),
        })
    })
}

#[test]
fn socket_activation_through_systemd_socket_activate() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("activated.sock");
    let mut activator = Command::new("systemd-socket-activate")
        .arg("-l")
        .arg(&socket)
        .arg(bin("shmbusd"))
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("systemd-socket-activate is installed");
    wait_until(10 * SEC, || socket.exists());
    // The first connection starts the broker on the passed socket.
    let _peer = serve_numbers(&socket, &[]);
    stream_some(&socket, 1000);
    let conn = Connection::connect(&socket).unwrap();
    let mut call = conn
        .call("nums", "numbers")
        .mode(StreamMode::Download)
        .args_typed(&10u64)
        .unwrap()
        .start()
        .unwrap();
    assert_eq!(call.transport(), Some(Transport::SharedMemory));
    while call.receiver().unwrap().recv::<u64>().unwrap().is_some() {}
    call.finish().unwrap();
    signal(&activator, libc::SIGTERM);
    let (_, status) = wait_exit(&mut activator, 5 * SEC);
    assert!(status.success(), "{status}");
    let mut log = String::new();
    std::io::Read::read_to_string(&mut activator.stderr.take().unwrap(), &mut log).unwrap();
    assert!(
        log.contains("using the socket passed by the service manager"),
        "{log}"
    );
    // The start line names the socket plainly, and how the broker got it.
    let ready = log
        .lines()
        .find(|l| l.contains("broker ready"))
        .unwrap_or("");
    let expected = format!("socket={} (socket activation, fd 3)", socket.display());
    assert!(
        ready.ends_with(&expected),
        "expected {expected:?} in: {log}"
    );
}

fn datagrams(sock: &UnixDatagram, until: &str, limit: Duration) -> Vec<String> {
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        sock.set_read_timeout(Some(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        ))
        .unwrap();
        let Ok(n) = sock.recv(&mut buf) else { break };
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        let done = msg.lines().any(|l| l == until);
        got.push(msg);
        if done {
            return got;
        }
    }
    panic!("no {until:?} within {limit:?}; got {got:?}");
}

#[test]
fn notify_socket_gets_ready_status_reload_watchdog_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let config = dir.path().join("shmbusd.toml");
    std::fs::write(&config, "ring_size = \"1M\"\n").unwrap();
    let (mut child, socket) = broker(
        dir.path(),
        &["--config", config.to_str().unwrap()],
        &[
            ("NOTIFY_SOCKET", notify_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    let ready = datagrams(&notify, "READY=1", 10 * SEC);
    assert!(ready.iter().any(|m| m.contains("STATUS=")), "{ready:?}");
    // The event loop pings the watchdog at half the interval.
    datagrams(&notify, "WATCHDOG=1", 2 * SEC);
    // Status follows the counts.
    let _peer = serve_numbers(&socket, &[]);
    let status = datagrams(
        &notify,
        "STATUS=1 connections, 1 services, 0 streams",
        5 * SEC,
    );
    assert!(!status.is_empty());
    // Reload: RELOADING=1 with the monotonic time, then READY=1 again.
    signal(&child, libc::SIGHUP);
    let reload = datagrams(&notify, "READY=1", 5 * SEC);
    let joined = reload.join("\n");
    assert!(joined.contains("RELOADING=1"), "{joined}");
    assert!(joined.contains("MONOTONIC_USEC="), "{joined}");
    signal(&child, libc::SIGTERM);
    datagrams(&notify, "STOPPING=1", 5 * SEC);
    let (took, status) = wait_exit(&mut child, 5 * SEC);
    assert!(status.success(), "{status}");
    assert!(took < 5 * SEC);
    assert!(!socket.exists(), "the broker removes the socket it created");
}

#[test]
fn sighup_with_a_broken_config_keeps_serving_and_a_good_one_applies() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("shmbusd.toml");
    std::fs::write(&config, "max_ring_size = \"16M\"\n").unwrap();
    let broker = Broker::start_logged_at("info", &["--config", config.to_str().unwrap()]);
    let _peer = serve_numbers(&broker.socket, &[]);
    let conn = broker.connect();
    let open = |ring: u32| {
        conn.call("nums", "numbers")
            .mode(StreamMode::Download)
            .args_typed(&1u64)
            .unwrap()
            .ring_size(ring)
            .start()
    };
    open(8 << 20).unwrap().finish().unwrap();
    std::fs::write(&config, "max_ring_size = 12345\n").unwrap();
    send_signal(broker.pid(), libc::SIGHUP);
    // The broker has read the file and said why it keeps the old one.
    let rejected = broker.wait_log("reload failed", 1);
    assert!(
        rejected.contains("keeping the running configuration")
            && rejected.contains("max_ring_size"),
        "{rejected}"
    );
    assert!(!broker.log().contains("configuration reloaded"));
    stream_some(&broker.socket, 500);
    open(8 << 20).unwrap().finish().unwrap();
    // A valid change takes effect as soon as the broker says it applied it.
    std::fs::write(&config, "max_ring_size = \"4M\"\nring_size = \"1M\"\n").unwrap();
    send_signal(broker.pid(), libc::SIGHUP);
    let applied = broker.wait_log("configuration reloaded", 1);
    assert!(applied.contains("max_ring_size: 4194304"), "{applied}");
    let refused = open(8 << 20).err().and_then(|e| e.code());
    assert_eq!(refused, Some(ErrorCode::LimitsExceeded));
    stream_some(&broker.socket, 500);
    assert_eq!(broker.log().matches("reload failed").count(), 1);
}

#[test]
fn sigterm_during_a_stream_exits_within_5s_with_the_stream_finished_or_failed_clearly() {
    for transport in [Transport::SharedMemory, Transport::Socket] {
        let dir = tempfile::tempdir().unwrap();
        let (mut child, socket) = broker(dir.path(), &[], &[]);
        // 1 ms per item: far longer than the grace period.
        let _peer = serve_numbers(&socket, &["--delay-us", "1000"]);
        let conn = Connection::connect(&socket).unwrap();
        let mut call = conn
            .call("nums", "numbers")
            .mode(StreamMode::Download)
            .args_typed(&100_000u64)
            .unwrap()
            .credit(CreditSpec::items(16))
            .transport(match transport {
                Transport::SharedMemory => shmbus_client::TransportPreference::SharedMemory,
                Transport::Socket => shmbus_client::TransportPreference::Socket,
            })
            .start()
            .unwrap();
        let mut rx = call.take_receiver().unwrap();
        for i in 0..50u64 {
            assert_eq!(rx.recv::<u64>().unwrap(), Some(i));
        }
        signal(&child, libc::SIGTERM);
        // The broker tells its clients; new calls are refused while it drains.
        wait_until(5 * SEC, || conn.broker_stopping());
        let refused = conn
            .call("nums", "numbers")
            .mode(StreamMode::Download)
            .start();
        assert_eq!(
            refused.err().and_then(|e| e.code()),
            Some(ErrorCode::ShuttingDown)
        );
        let (took, status) = wait_exit(&mut child, 5 * SEC);
        assert!(status.success(), "{status}");
        assert!(took <= 5 * SEC, "{took:?}");
        // The stream was ended at the deadline with a clear error (the service
        // was told to cancel): every item up to that point arrives in order.
        let mut next = 50;
        let end = loop {
            match rx.recv::<u64>() {
                Ok(Some(v)) => {
                    assert_eq!(v, next);
                    next += 1;
                }
                other => break other,
            }
        };
        assert!(
            matches!(end, Err(Error::Cancelled) | Err(Error::PeerGone(_))),
            "{transport:?}: {end:?}"
        );
        // The call itself ends with a clear error.
        match call.finish() {
            Err(Error::Remote(e)) => assert_eq!(e.code, ErrorCode::ShuttingDown, "{e:?}"),
            Err(Error::BrokerGone) => {}
            other => panic!("{transport:?}: expected a clear error, got {other:?}"),
        }
    }
}

#[test]
fn journald_lines_carry_priorities_and_no_timestamps() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("bus.sock");
    let mut child = Command::new(bin("shmbusd"))
        .arg("--socket")
        .arg(&socket)
        .env("JOURNAL_STREAM", "8:12345")
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_socket(&socket);
    signal(&child, libc::SIGTERM);
    wait_exit(&mut child, 5 * SEC);
    let lines: Vec<String> = BufReader::new(child.stderr.take().unwrap())
        .lines()
        .map(|l| l.unwrap())
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("<6>shmbusd::server: broker ready")),
        "{lines:?}"
    );
    for l in &lines {
        assert!(l.starts_with('<') && l.as_bytes()[2] == b'>', "{l}");
        assert!(!has_date(l), "{l}");
    }
}

#[test]
fn an_invalid_config_file_is_one_line_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "ring_size = \"2M\"\nmax_frame = \"tiny\"\n").unwrap();
    let out = Command::new(bin("shmbusd"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("key `max_frame`"), "{err}");
    let out = Command::new(bin("shmbusd"))
        .args(["--config", "/nonexistent/shmbusd.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
