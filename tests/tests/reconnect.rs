//! A connection whose broker goes away and comes back: calls and services
//! resume by themselves, and what changed meanwhile (a service dropped
//! while the connection registered it again) reaches the new broker. Real
//! brokers, and one broker played frame by frame on a real socket where
//! the order of events must be forced.

use std::io::{Read, Write};
use std::time::Duration;

use shmbus::frame::{Frame, MethodSpec, StreamMode};
use shmbus_client::Error;
use shmbus_tests::{Broker, Peer};

const SEC: Duration = Duration::from_secs(1);

#[test]
fn clients_and_services_reconnect_when_a_broker_is_back() {
    let mut broker = Broker::start();
    let _service = Peer::serve(&broker, &["unary", "math"]);
    let conn = broker.connect();
    let add = |conn: &shmbus_client::Connection| {
        conn.call("math", "add")
            .args_typed(&(20u64, 22u64))
            .unwrap()
            .unary()
            .map(|r| u64::from_le_bytes(r.try_into().unwrap()))
    };
    assert_eq!(add(&conn).unwrap(), 42);
    broker.kill();
    assert!(matches!(add(&conn), Err(Error::BrokerGone)));
    broker.restart();
    // The caller's connection comes back by itself, and the service
    // registers again by itself: no process was restarted but the broker.
    shmbus_tests::wait_until(10 * SEC, || add(&conn).is_ok_and(|v| v == 42));
    assert_eq!(conn.list().unwrap().services.len(), 1);
}

/// A broker's side of one connection, played frame by frame: what the
/// client sends is read whole, what a broker would answer is written.
struct ScriptedBroker(std::os::unix::net::UnixStream);

impl ScriptedBroker {
    /// Accepts a connection and answers its hello.
    fn accept(listener: &std::os::unix::net::UnixListener) -> ScriptedBroker {
        let (sock, _) = listener.accept().unwrap();
        let mut b = ScriptedBroker(sock);
        assert!(matches!(b.read(), Some(Frame::Hello { .. })));
        b.write(&Frame::Welcome {
            version: shmbus::frame::PROTOCOL_VERSION,
            caps: shmbus::frame::Capabilities {
                shared_memory: false,
            },
            max_frame: shmbus::frame::DEFAULT_MAX_FRAME,
        });
        b
    }

    /// The next frame; `None` once nothing came for the socket's read
    /// timeout or the client closed.
    fn read(&mut self) -> Option<Frame> {
        let mut header = [0u8; shmbus::frame::FRAME_HEADER_LEN];
        self.0.read_exact(&mut header).ok()?;
        let len = u32::from_le_bytes(header[..4].try_into().unwrap()) as usize;
        let mut body = vec![0u8; len];
        self.0.read_exact(&mut body).unwrap();
        Some(shmbus::frame::decode(&body, 0).unwrap())
    }

    fn write(&mut self, frame: &Frame) {
        let mut out = Vec::new();
        shmbus::frame::encode(frame, &mut out);
        self.0.write_all(&out).unwrap();
    }

    /// Reads a `register` of `service` and returns its request id.
    fn registered(&mut self, service: &str) -> u64 {
        match self.read() {
            Some(Frame::Register {
                request,
                service: s,
                ..
            }) if s == service => request,
            other => panic!("expected the registration of {service}, got {other:?}"),
        }
    }
}

#[test]
fn a_service_dropped_while_its_connection_reconnects_is_withdrawn_from_the_new_broker() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broker.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let client = std::thread::spawn({
        let path = path.clone();
        move || {
            let conn = shmbus_client::Connection::connect(&path).unwrap();
            let add = [MethodSpec::new("add", StreamMode::Unary)];
            let service = conn.register("x", &add).unwrap();
            (conn, service)
        }
    });
    let mut first = ScriptedBroker::accept(&listener);
    let request = first.registered("x");
    first.write(&Frame::Ack { request });
    let (_conn, service) = client.join().unwrap();
    // The broker goes away; the client connects again and registers `x`
    // again. Before that registration is answered, the service is dropped.
    drop(first);
    let mut second = ScriptedBroker::accept(&listener);
    let request = second.registered("x");
    drop(service);
    second.write(&Frame::Ack { request });
    // The new broker hears that `x` is no longer served: its name is free.
    second.0.set_read_timeout(Some(2 * SEC)).unwrap();
    loop {
        match second.read() {
            Some(Frame::Unregister { service }) if service == "x" => break,
            Some(_) => continue,
            None => panic!("x stays registered on the new broker"),
        }
    }
}
