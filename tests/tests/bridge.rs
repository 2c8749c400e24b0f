//! Two hosts on one machine: two brokers with their own sockets, a
//! `shmbus-bridge` beside each, the two Zenoh peers connected over TCP on
//! 127.0.0.1 only (scouting off). Services exported on node `b` are called
//! on broker `a` as `b/NAME`, through real processes end to end.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shmbus_client::{Connection, CreditSpec, Error, ErrorCode, StreamMode, WaitPolicy};
use shmbus_tests::{
    bin, send_signal, wait_for_service, wait_until, Broker, KillOnDrop, Peer, TcpProxy,
};

const SEC: Duration = Duration::from_secs(1);

/// A free TCP port on 127.0.0.1.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Starts a bridge for `broker` as `node` and waits until it is up.
fn bridge(broker: &Broker, node: &str, args: &[String]) -> KillOnDrop {
    bridge_with_env(broker, node, args, &[])
}

/// [`bridge`], with variables added to its environment.
fn bridge_with_env(
    broker: &Broker,
    node: &str,
    args: &[String],
    env: &[(&str, &str)],
) -> KillOnDrop {
    let mut child = Command::new(bin("shmbus-bridge"))
        .arg("--socket")
        .arg(&broker.socket)
        .args(["--node", node])
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), format!("ready {node}"));
    KillOnDrop(child)
}

/// Host `b` (exporting `patterns`, listening) and host `a` (connecting).
struct Hosts {
    a: Broker,
    b: Broker,
    port: u16,
    bridge_a: KillOnDrop,
    bridge_b: KillOnDrop,
}

impl Hosts {
    fn start(patterns: &[&str]) -> Hosts {
        let (a, b) = (Broker::start(), Broker::start());
        let port = free_port();
        let bridge_b = Self::start_b(&b, port, patterns);
        Self::start_a(a, b, port, bridge_b, port)
    }

    /// The hosts [`start`](Self::start) makes, bridge `a` reaching bridge
    /// `b` through a [`TcpProxy`] that can drop the path between them.
    fn start_behind_proxy(patterns: &[&str]) -> (Hosts, TcpProxy) {
        let (a, b) = (Broker::start(), Broker::start());
        let port = free_port();
        let bridge_b = Self::start_b(&b, port, patterns);
        let proxy = TcpProxy::start(port);
        let hosts = Self::start_a(a, b, port, bridge_b, proxy.port());
        (hosts, proxy)
    }

    /// Starts bridge `a`, connecting to `connect_port`, beside a running
    /// bridge `b` listening on `port`.
    fn start_a(a: Broker, b: Broker, port: u16, bridge_b: KillOnDrop, connect_port: u16) -> Hosts {
        let bridge_a = bridge(
            &a,
            "a",
            &["--connect".into(), format!("tcp/127.0.0.1:{connect_port}")],
        );
        Hosts {
            a,
            b,
            port,
            bridge_a,
            bridge_b,
        }
    }

    fn start_b(b: &Broker, port: u16, patterns: &[&str]) -> KillOnDrop {
        Self::start_b_with_env(b, port, patterns, &[])
    }

    fn start_b_with_env(
        b: &Broker,
        port: u16,
        patterns: &[&str],
        env: &[(&str, &str)],
    ) -> KillOnDrop {
        let mut args = vec!["--listen".to_string(), format!("tcp/127.0.0.1:{port}")];
        for p in patterns {
            args.push("--export".into());
            args.push(p.to_string());
        }
        bridge_with_env(b, "b", &args, env)
    }

    /// A connection to host `a`'s broker, once `b/NAME` is registered there.
    fn caller(&self, name: &str) -> Connection {
        let conn = self.a.connect();
        wait_for_service(&conn, name);
        conn
    }
}

/// A call to the far endless producer, 100 items into its stream.
fn endless_call(conn: &Connection) -> shmbus_client::Call {
    let mut call = conn
        .call("b/endless", "endless")
        .mode(StreamMode::Download)
        .start()
        .unwrap();
    for _ in 0..100 {
        call.receiver().unwrap().recv_bytes().unwrap().unwrap();
    }
    call
}

/// A 256 MiB file of random bytes in `dir`, served as `big` on host `b`.
fn serve_big(hosts: &Hosts, dir: &std::path::Path) -> (std::path::PathBuf, KillOnDrop) {
    let file = dir.join("big.bin");
    shmbus_tests::write_random_file(&file, 256 << 20);
    let server = KillOnDrop(
        Command::new(bin("shmbusctl"))
            .arg("--socket")
            .arg(&hosts.b.socket)
            .args(["serve", "big"])
            .arg(&file)
            .spawn()
            .unwrap(),
    );
    (file, server)
}

fn listed(conn: &Connection, name: &str) -> bool {
    conn.list()
        .map(|s| s.services.iter().any(|x| x.name == name))
        .unwrap_or(false)
}

/// Polls `cond` until true and returns how long that took; panics naming
/// `what` after `limit`.
fn within(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !cond() {
        let waited = started.elapsed();
        assert!(waited < limit, "{what}: not so after {waited:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    started.elapsed()
}

/// Reads a stream that must fail: its error, once the items before it
/// are read. A stream that still flows, or stalls, for [`GIVE_UP`] fails
/// the test instead of holding it.
fn stream_error(rx: &mut shmbus_client::Receiver) -> Error {
    rx.set_wait_policy(WaitPolicy::BLOCKING.with_stall_timeout(GIVE_UP));
    let started = Instant::now();
    loop {
        match rx.recv_bytes() {
            Ok(Some(_)) => assert!(
                started.elapsed() < GIVE_UP,
                "the stream still flows after {:?}",
                started.elapsed()
            ),
            Ok(None) => panic!("the stream ended instead of failing"),
            Err(Error::Stalled) => panic!("the stream neither failed nor moved for {GIVE_UP:?}"),
            Err(e) => return e,
        }
    }
}

/// How long [`stream_error`] waits for an error before giving up.
const GIVE_UP: Duration = Duration::from_secs(10);

#[test]
fn shmbusctl_cat_moves_256_mib_byte_exact_through_the_bridge() {
    let hosts = Hosts::start(&["big"]);
    let dir = tempfile::tempdir().unwrap();
    let (file, _server) = serve_big(&hosts, dir.path());
    let ctl = bin("shmbusctl");
    hosts.caller("b/big");
    let sha = |cmd: String| {
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!("set -o pipefail; {cmd} | sha256sum"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()[..64].to_string()
    };
    let want = sha(format!("cat {}", file.display()));
    let got = sha(format!(
        "{} --socket {} cat b/big",
        ctl.display(),
        hosts.a.socket.display()
    ));
    assert_eq!(got, want);
}

#[test]
fn every_flow_crosses() {
    let hosts = Hosts::start(&["nums", "math", "store", "echoes", "bad"]);
    let _nums = Peer::serve(&hosts.b, &["numbers", "nums"]);
    let _math = Peer::serve(&hosts.b, &["unary", "math"]);
    let _sink = Peer::serve(&hosts.b, &["sink", "store"]);
    let _echo = Peer::serve(&hosts.b, &["echo", "echoes"]);
    let _bad = Peer::serve(&hosts.b, &["failing", "bad"]);
    let conn = hosts.caller("b/bad");
    for name in ["b/nums", "b/math", "b/store", "b/echoes"] {
        wait_for_service(&conn, name);
    }
    // Unary.
    let sum = conn
        .call("b/math", "add")
        .args_typed(&(40u64, 2u64))
        .unwrap()
        .unary()
        .unwrap();
    assert_eq!(u64::from_le_bytes(sum.try_into().unwrap()), 42);
    // Download, with little credit: the far producer waits for it.
    let mut call = conn
        .call("b/nums", "numbers")
        .args_typed(&20_000u64)
        .unwrap()
        .credit(CreditSpec::items(4))
        .start()
        .unwrap();
    let rx = call.receiver().unwrap();
    let mut n = 0u64;
    while let Some(i) = rx.recv::<u64>().unwrap() {
        assert_eq!(i, n);
        n += 1;
    }
    assert_eq!(n, 20_000);
    call.finish().unwrap();
    // Upload.
    let data = shmbus_tests::pattern(9, 3 << 20);
    let mut call = conn.call("b/store", "sink").start().unwrap();
    let tx = call.sender().unwrap();
    for chunk in data.chunks(50_000) {
        tx.send_bytes(chunk).unwrap();
    }
    let answer = String::from_utf8(call.finish().unwrap()).unwrap();
    assert_eq!(
        answer,
        format!("{},{}", data.len(), shmbus_tests::fnv1a(0, &data))
    );
    // Bidirectional.
    let mut call = conn.call("b/echoes", "echo").start().unwrap();
    for i in 0..100u32 {
        let msg = format!("m{i}");
        call.sender().unwrap().send_bytes(msg.as_bytes()).unwrap();
        let back = call.receiver().unwrap().recv_bytes().unwrap().unwrap();
        assert_eq!(back, format!("Echo: {msg}").as_bytes());
    }
    call.finish().unwrap();
    // A stream error after items, then the service's failure.
    let mut call = conn
        .call("b/bad", "fail")
        .args_typed(&3u64)
        .unwrap()
        .start()
        .unwrap();
    let rx = call.receiver().unwrap();
    let mut items = 0;
    let err = loop {
        match rx.recv_bytes() {
            Ok(Some(_)) => items += 1,
            Ok(None) => panic!("the stream ended instead of failing"),
            Err(e) => break e,
        }
    };
    assert_eq!(items, 3);
    assert!(matches!(err, Error::Stream(_)), "{err:?}");
    assert!(call.finish().is_err());
}

#[test]
fn a_cancel_crosses_and_the_result_is_aborted() {
    let hosts = Hosts::start(&["endless"]);
    let mut far = Peer::serve(&hosts.b, &["endless", "endless"]);
    let conn = hosts.caller("b/endless");
    let mut call = endless_call(&conn);
    call.cancel().unwrap();
    match call.finish() {
        Err(Error::Remote(e)) => assert_eq!(e.code, ErrorCode::Aborted, "{e:?}"),
        other => panic!("{other:?}"),
    }
    // The far service's stream was cancelled.
    far.expect_line("cancelled-after", 5 * SEC);
}

#[test]
fn a_far_bridge_killed_mid_stream_fails_the_call_and_withdraws_its_names() {
    let mut hosts = Hosts::start(&["endless"]);
    let _far = Peer::serve(&hosts.b, &["endless", "endless"]);
    let conn = hosts.caller("b/endless");
    let mut call = endless_call(&conn);
    let killed = Instant::now();
    let _ = hosts.bridge_b.kill();
    let _ = hosts.bridge_b.wait();
    let err = stream_error(call.receiver().unwrap());
    let took = killed.elapsed();
    assert!(took < 2 * SEC, "the caller waited {took:?}: {err:?}");
    assert!(
        matches!(&err, Error::Stream(m) if m.contains("node b went away")),
        "{err:?}"
    );
    assert!(call.finish().is_err());
    wait_until(2 * SEC, || !listed(&conn, "b/endless"));
    // A restarted bridge exports again by itself.
    hosts.bridge_b = Hosts::start_b(&hosts.b, hosts.port, &["endless"]);
    wait_until(10 * SEC, || listed(&conn, "b/endless"));
    let _ = &hosts.bridge_a;
}

#[test]
fn a_deadline_travels_with_the_call() {
    let hosts = Hosts::start(&["dl"]);
    let mut far = Peer::serve(&hosts.b, &["deadlines", "dl"]);
    let conn = hosts.caller("b/dl");
    let started = Instant::now();
    let r = conn
        .call("b/dl", "nap")
        .args_typed(&(0u64, 3000u64))
        .unwrap()
        .timeout(Duration::from_millis(400))
        .unary();
    assert!(matches!(r, Err(Error::DeadlineExceeded)), "{r:?}");
    assert!(started.elapsed() < 2 * SEC, "{:?}", started.elapsed());
    // The far service heard of the deadline, as time left.
    let left: u64 = far.expect_line("time-left-ms", 5 * SEC).parse().unwrap();
    assert!(left > 0 && left <= 400, "time left {left} ms");
}

#[test]
fn a_stalled_broker_does_not_stall_the_streams_its_bridge_relays() {
    // Bridge b with one runtime thread: a wait for its broker on that
    // thread would stop every relay it runs.
    let (a, b) = (Broker::start(), Broker::start());
    let port = free_port();
    let one_thread = [("TOKIO_WORKER_THREADS", "1")];
    let bridge_b = Hosts::start_b_with_env(&b, port, &["endless"], &one_thread);
    let hosts = Hosts::start_a(a, b, port, bridge_b, port);
    let _far = Peer::serve(&hosts.b, &["endless", "endless"]);
    let conn = hosts.caller("b/endless");
    let mut call = endless_call(&conn);
    // Broker b stops answering; the stream's data never passed through it.
    send_signal(hosts.b.pid(), libc::SIGSTOP);
    let stopped = Instant::now();
    let rx = call.receiver().unwrap();
    rx.set_wait_policy(WaitPolicy::BLOCKING.with_stall_timeout(SEC));
    let mut items = 0u64;
    // Bridge b asks its broker for the services to export every second.
    while stopped.elapsed() < 3 * SEC {
        match rx.recv_bytes() {
            Ok(Some(_)) => items += 1,
            other => panic!(
                "{other:?} after {items} items and {:?} with broker b stopped",
                stopped.elapsed()
            ),
        }
    }
    send_signal(hosts.b.pid(), libc::SIGCONT);
    println!("{items} items in 3 s with broker b stopped");
    call.cancel().unwrap();
    assert!(call.finish().is_err());
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_slow_consumer_slows_the_far_producer_and_memory_stays_bounded() {
    let hosts = Hosts::start(&["big"]);
    let dir = tempfile::tempdir().unwrap();
    let (_file, _server) = serve_big(&hosts, dir.path());
    let conn = hosts.caller("b/big");
    let (a, b) = (hosts.bridge_a.id(), hosts.bridge_b.id());
    let mut call = conn
        .call("b/big", "read")
        .mode(StreamMode::Download)
        .start()
        .unwrap();
    let rx = call.receiver().unwrap();
    // About 1 MB/s for three seconds.
    let (mut got, started) = (0usize, Instant::now());
    let (mut peak_a, mut peak_b) = (0, 0);
    while started.elapsed() < 3 * SEC {
        let mut buf = vec![0u8; 50_000];
        std::io::Read::read_exact(rx, &mut buf).unwrap();
        got += buf.len();
        std::thread::sleep(Duration::from_millis(50));
        peak_a = peak_a.max(rss_kib(a));
        peak_b = peak_b.max(rss_kib(b));
    }
    println!("read {got} bytes; peak RSS: bridge a {peak_a} KiB, bridge b {peak_b} KiB");
    assert!(got < 8 << 20, "the consumer read {got} bytes");
    // The file is 256 MiB: had either bridge taken what the producer
    // could give, it would hold far more than the window and the ports.
    assert!(peak_a < 96 << 10, "bridge a peaked at {peak_a} KiB");
    assert!(peak_b < 96 << 10, "bridge b peaked at {peak_b} KiB");
    call.cancel().unwrap();
}

#[test]
fn the_caller_side_bridge_killed_mid_stream_cancels_the_far_call() {
    let mut hosts = Hosts::start(&["endless"]);
    let mut far = Peer::serve(&hosts.b, &["endless", "endless"]);
    let conn = hosts.caller("b/endless");
    let _call = endless_call(&conn);
    let killed = Instant::now();
    let _ = hosts.bridge_a.kill();
    let _ = hosts.bridge_a.wait();
    // The far service's stream is cancelled: its producer does not wait
    // for a caller that is gone.
    far.expect_line("cancelled-after", 5 * SEC);
    assert!(killed.elapsed() < 3 * SEC, "{:?}", killed.elapsed());
}

#[test]
fn a_network_path_dropped_without_a_close_fails_calls_within_two_seconds_and_names_come_back() {
    let (hosts, proxy) = Hosts::start_behind_proxy(&["endless"]);
    let _far = Peer::serve(&hosts.b, &["endless", "endless"]);
    let conn = hosts.caller("b/endless");
    let mut call = endless_call(&conn);
    // As a pulled cable: nothing more crosses, and neither bridge hears
    // of a close; only the silence tells.
    let dropped = Instant::now();
    proxy.drop_path();
    let err = stream_error(call.receiver().unwrap());
    let took = dropped.elapsed();
    println!("the caller's stream failed {took:?} after the path dropped: {err}");
    assert!(
        took < 2 * SEC,
        "the caller waited {took:?} after the path dropped: {err:?}"
    );
    // The stream's error says why.
    assert!(
        matches!(&err, Error::Stream(m) if m.contains("node b went away")),
        "{err:?}"
    );
    // So does the call's result.
    match call.finish() {
        Err(Error::Remote(e)) => {
            assert_eq!(e.code, ErrorCode::Failed, "{e:?}");
            assert!(e.message.contains("node b"), "{e:?}");
        }
        other => panic!("{other:?}"),
    }
    let gone = within(5 * SEC, "b/endless withdrawn from host a", || {
        !listed(&conn, "b/endless")
    });
    println!(
        "b/endless withdrawn {gone:?} after the caller's error, {:?} after the path dropped",
        dropped.elapsed()
    );
    // The path comes back: bridge a connects again by itself, and the
    // names with it.
    proxy.restore_path();
    let back = within(10 * SEC, "b/endless back on host a", || {
        listed(&conn, "b/endless")
    });
    println!("b/endless back {back:?} after the path came back");
    let mut call = endless_call(&conn);
    call.cancel().unwrap();
    assert!(call.finish().is_err());
}

#[test]
fn the_far_service_dying_fails_the_call_within_two_seconds_and_its_name_goes_and_comes_back() {
    let hosts = Hosts::start(&["endless"]);
    let mut far = Peer::serve(&hosts.b, &["endless", "endless"]);
    let conn = hosts.caller("b/endless");
    let mut call = endless_call(&conn);
    let killed = Instant::now();
    far.kill();
    let err = stream_error(call.receiver().unwrap());
    let took = killed.elapsed();
    println!("the caller's stream failed {took:?} after the service was killed: {err}");
    assert!(
        took < 2 * SEC,
        "the caller waited {took:?} after the service was killed: {err:?}"
    );
    assert!(matches!(err, Error::Stream(_)), "{err:?}");
    // The far broker's verdict crosses as the call's result.
    match call.finish() {
        Err(Error::Remote(e)) => assert_eq!(e.code, ErrorCode::PeerGone, "{e:?}"),
        other => panic!("{other:?}"),
    }
    within(5 * SEC, "b/endless withdrawn from host a", || {
        !listed(&conn, "b/endless")
    });
    println!("b/endless withdrawn {:?} after the kill", killed.elapsed());
    // A restarted service is exported again by itself.
    let _far = Peer::serve(&hosts.b, &["endless", "endless"]);
    let back = within(10 * SEC, "b/endless back on host a", || {
        listed(&conn, "b/endless")
    });
    println!("b/endless back {back:?} after the service restarted");
    let mut call = endless_call(&conn);
    call.cancel().unwrap();
    assert!(call.finish().is_err());
}

#[test]
fn a_bridge_whose_broker_goes_away_exits_and_its_exports_are_withdrawn() {
    let mut hosts = Hosts::start(&["endless"]);
    let _far = Peer::serve(&hosts.b, &["endless", "endless"]);
    let conn = hosts.caller("b/endless");
    let killed = Instant::now();
    hosts.b.kill();
    // Exiting (for systemd to start it again) rather than announcing
    // services that no broker serves any more.
    let status = loop {
        if let Some(status) = hosts.bridge_b.try_wait().unwrap() {
            break status;
        }
        assert!(
            killed.elapsed() < 5 * SEC,
            "bridge b still runs {:?} after its broker was killed",
            killed.elapsed()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success(), "{status}");
    within(5 * SEC, "b/endless withdrawn from host a", || {
        !listed(&conn, "b/endless")
    });
}

#[test]
fn a_name_taken_on_the_callers_host_is_imported_once_it_is_free() {
    let hosts = Hosts::start(&["endless"]);
    let conn = hosts.a.connect();
    // A local service holds the name before node b exports it: the
    // bridge's registration is refused.
    let mut squatter = Peer::serve(&hosts.a, &["unary", "b/endless"]);
    let _far = Peer::serve(&hosts.b, &["endless", "endless"]);
    std::thread::sleep(SEC);
    let methods = |conn: &Connection| -> Vec<String> {
        let list = conn.list().unwrap();
        let s = list.services.iter().find(|s| s.name == "b/endless");
        s.map(|s| s.methods.iter().map(|m| m.name.clone()).collect())
            .unwrap_or_default()
    };
    assert_eq!(methods(&conn), ["add"], "the local service holds the name");
    squatter.kill();
    let took = within(10 * SEC, "b/endless imported on host a", || {
        methods(&conn) == ["endless"]
    });
    println!("b/endless imported {took:?} after the name was freed");
    let mut call = endless_call(&conn);
    call.cancel().unwrap();
    assert!(call.finish().is_err());
}
