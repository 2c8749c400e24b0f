//! Identity, access policy and per-uid quotas, with peers running as
//! another user (`nobody`) against a real broker.

use std::time::Duration;

use shmbus_client::ErrorCode;
use shmbus_tests::{Broker, Peer};

const SEC: Duration = Duration::from_secs(1);
const NOBODY: u32 = 65534;

fn broker_with(config: &str) -> (Broker, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shmbusd.toml");
    std::fs::write(&path, config).unwrap();
    let broker = Broker::start_logged(&["--config", path.to_str().unwrap()]);
    (broker, dir)
}

fn as_user(broker: &Broker, uid: Option<u32>, args: &[&str]) -> Peer {
    Peer::start_as(&broker.socket, args, uid)
}

#[test]
fn personal_services_are_called_by_their_owner_and_root_only() {
    let (broker, _dir) = broker_with("");
    let _roots = Peer::serve(&broker, &["unary", "roots"]);
    let mut mine = as_user(&broker, Some(NOBODY), &["unary", "mine"]);
    mine.expect_line("ready", 10 * SEC);

    let mut other = as_user(&broker, Some(NOBODY), &["call-add", "roots"]);
    let err = other.expect_line("error", 10 * SEC);
    assert!(
        err.starts_with("denied: uid 65534 may not call roots"),
        "{err}"
    );

    let mut own = as_user(&broker, Some(NOBODY), &["call-add", "mine"]);
    assert_eq!(own.expect_line("result", 10 * SEC), "5");
    let mut root = as_user(&broker, None, &["call-add", "mine"]);
    assert_eq!(root.expect_line("result", 10 * SEC), "5");
    // The service sees who called, as the kernel reported it.
    assert_eq!(
        mine.expect_line("caller-pid", 10 * SEC),
        own.pid().to_string()
    );
}

#[test]
fn declared_services_follow_the_configuration() {
    let (broker, _dir) = broker_with(
        r#"
[[service]]
name = "sys.*"
register = [0]
call = "any"

[[service]]
name = "team.db"
register = "any"
call = [0]
"#,
    );
    let mut squat = as_user(&broker, Some(NOBODY), &["unary", "sys.clock"]);
    let err = squat.expect_line("error", 10 * SEC);
    assert!(
        err.contains("denied") && err.contains("may not register sys.clock"),
        "{err}"
    );

    let _sys = Peer::serve(&broker, &["unary", "sys.clock"]);
    let mut anyone = as_user(&broker, Some(NOBODY), &["call-add", "sys.clock"]);
    assert_eq!(anyone.expect_line("result", 10 * SEC), "5");

    // Registered by nobody, but the rule lets only root call it.
    let mut db = as_user(&broker, Some(NOBODY), &["unary", "team.db"]);
    db.expect_line("ready", 10 * SEC);
    let mut owner = as_user(&broker, Some(NOBODY), &["call-add", "team.db"]);
    assert!(owner.expect_line("error", 10 * SEC).starts_with("denied"));
    let mut root = as_user(&broker, None, &["call-add", "team.db"]);
    assert_eq!(root.expect_line("result", 10 * SEC), "5");
}

#[test]
fn stream_and_ring_quotas_refuse_with_limits_exceeded_and_spare_other_users() {
    let (broker, _dir) = broker_with(
        r#"
max_streams_per_uid = 3
[quota.uid.65534]
streams = 2
ring_bytes = "256K"
"#,
    );
    let mut svc = as_user(&broker, Some(NOBODY), &["endless", "long"]);
    svc.expect_line("ready", 10 * SEC);

    let mut hog = as_user(
        &broker,
        Some(NOBODY),
        &["hold", "long", "endless", "3", "65536"],
    );
    hog.expect_line("opened 2", 10 * SEC);
    let err = hog.expect_line("error", 10 * SEC);
    assert!(
        err.starts_with("limits exceeded") && err.contains("quota of 2 streams"),
        "{err}"
    );

    let mut big = as_user(
        &broker,
        Some(NOBODY),
        &["hold", "long", "endless", "1", "1048576"],
    );
    let err = big.expect_line("error", 10 * SEC);
    assert!(err.contains("ring bytes"), "{err}");

    // Root has its own quota (the default, 3) and is unaffected.
    let mut root = as_user(&broker, None, &["hold", "long", "endless", "3", "65536"]);
    root.expect_line("holding", 10 * SEC);
    // Freed quota is usable again.
    drop(hog);
    let mut again = as_user(
        &broker,
        Some(NOBODY),
        &["hold", "long", "endless", "2", "65536"],
    );
    again.expect_line("holding", 10 * SEC);
}

#[test]
fn connection_and_service_quotas() {
    let (broker, _dir) = broker_with(
        r#"
[quota.uid.65534]
connections = 3
services = 1
"#,
    );
    // The peer's own connection is the first of its three.
    let mut many = as_user(&broker, Some(NOBODY), &["connections", "5"]);
    many.expect_line("connected 2", 10 * SEC);
    let err = many.expect_line("error", 10 * SEC);
    assert!(
        err.contains("limits exceeded") && err.contains("quota of 3 connections"),
        "{err}"
    );
    drop(many);

    let mut first = as_user(&broker, Some(NOBODY), &["unary", "one"]);
    first.expect_line("ready", 10 * SEC);
    let mut second = as_user(&broker, Some(NOBODY), &["unary", "two"]);
    let err = second.expect_line("error", 10 * SEC);
    assert!(err.contains("quota of 1 services"), "{err}");
    let _root = Peer::serve(&broker, &["unary", "two"]);
    let conn = broker.connect();
    let e = conn.call("nope", "x").unary().unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NoSuchService));
}

#[test]
fn refused_calls_are_each_answered_while_the_broker_serves_others() {
    use shmbus_client::{Error, StreamMode};
    let (broker, _dir) = broker_with("max_streams_per_uid = 1\n");
    let _endless = Peer::serve(&broker, &["endless", "long"]);
    let _adder = Peer::serve(&broker, &["unary", "adder"]);
    let conn = broker.connect();
    let start = |conn: &shmbus_client::Connection| {
        conn.call("long", "endless")
            .mode(StreamMode::Download)
            .start()
    };
    let mut held = start(&conn).unwrap();
    // A client retrying in a loop past its quota: every call gets its
    // refusal, none is lost or left waiting, although the broker now
    // reads this connection only after a pause each time.
    for i in 0..40 {
        match start(&conn) {
            Err(Error::Remote(e)) => assert_eq!(e.code, ErrorCode::LimitsExceeded, "call {i}"),
            Err(e) => panic!("call {i}: {e}"),
            Ok(_) => panic!("call {i} opened beyond the quota"),
        }
    }
    // Meanwhile another connection is served as usual.
    let other = broker.connect();
    let sum = other
        .call("adder", "add")
        .args_typed(&(2u64, 3u64))
        .unwrap()
        .unary()
        .unwrap();
    assert_eq!(sum, 5u64.to_le_bytes());
    // The 40 refusals were logged as a short burst (the broker lets 5 per
    // uid through every 10 s), not one line each.
    let log = broker.log();
    let warned = log.matches("stream refused").count();
    assert!(
        (1..=5).contains(&warned),
        "{warned} refusal warnings logged:\n{log}"
    );
    // Once the quota is free, the throttled connection opens again.
    held.cancel().unwrap();
    drop(held);
    let t = std::time::Instant::now();
    let mut reopened = loop {
        match start(&conn) {
            Ok(call) => break call,
            Err(Error::Remote(e)) if e.code == ErrorCode::LimitsExceeded => {
                assert!(t.elapsed() < 10 * SEC, "quota never came back");
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert!(reopened.receiver().unwrap().recv_bytes().unwrap().is_some());
}
