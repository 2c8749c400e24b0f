//! The best any bridge could do on this machine, for comparison with
//! `shmbus-bridge`: the same command line (`--socket PATH --node NAME
//! --listen|--connect tcp/127.0.0.1:PORT [--export SERVICE]`, one exported
//! service, loopback only), but no Zenoh and nothing of its own on the data
//! path. Each call gets its own TCP connection; an item goes from the
//! sending port straight into the socket (`writev` of an 8-byte length and
//! the item, read in place from the ring) and from the socket straight into
//! the receiving port (`read` into the reserved slot), so the bytes are
//! copied only by the kernel's TCP, as in a plain TCP stream. TCP's own flow
//! control is the credit. No deadlines, no cancel, no failure handling
//! beyond ending the call: a measuring tool, not a product. Its ports wait
//! as the client's default does, or spin `TCP_RELAY_SPIN_US` microseconds
//! before sleeping when that is set.
//!
//! The bench harness runs it in place of the bridge:
//!
//! ```sh
//! cargo build --release -p shmbus-bridge --example tcp_relay
//! target/release/shmbus-bench --scenario bridge --bridge target/release/examples/tcp_relay
//! ```

use std::io::{self, IoSlice, Read, Write};
use std::net::{TcpListener, TcpStream};

use shmbus_client::{Connection, CreditSpec, IncomingCall, MethodSpec, Receiver, Sender};

/// Length marking a direction's normal end (a result follows toward the
/// caller).
const END: u64 = u64::MAX;
/// Length marking a direction's error (its message follows).
const ERROR: u64 = u64::MAX - 1;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let get = |k: &str| {
        args.iter()
            .position(|a| a == k)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let addr = |ep: String| ep.trim_start_matches("tcp/").to_string();
    let (Some(socket), Some(node)) = (get("--socket"), get("--node")) else {
        eprintln!("tcp_relay: --socket PATH --node NAME are required");
        std::process::exit(2);
    };
    let r = match (get("--listen"), get("--connect"), get("--export")) {
        (Some(l), _, Some(export)) => serve(&socket, &node, &addr(l), &export),
        (_, Some(c), _) => import(&socket, &node, &addr(c)),
        _ => Err(io::Error::other(
            "--listen with --export, or --connect, is required",
        )),
    };
    if let Err(e) = r {
        eprintln!("tcp_relay: {e}");
        std::process::exit(1);
    }
}

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

fn write_bytes(s: &mut TcpStream, b: &[u8]) -> io::Result<()> {
    s.write_all(&(b.len() as u64).to_le_bytes())?;
    s.write_all(b)
}

fn read_u64(s: &mut TcpStream) -> io::Result<u64> {
    let mut b = [0u8; 8];
    s.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

fn read_bytes(s: &mut TcpStream) -> io::Result<Vec<u8>> {
    let n = read_u64(s)?;
    if n > 64 << 20 {
        return Err(other("a field longer than 64 MiB"));
    }
    let mut b = vec![0u8; n as usize];
    s.read_exact(&mut b)?;
    Ok(b)
}

/// Writes `header` and `item` with as few `writev` calls as the socket
/// takes.
fn write_item(s: &mut TcpStream, item: &[u8]) -> io::Result<()> {
    let header = (item.len() as u64).to_le_bytes();
    let mut bufs = [IoSlice::new(&header), IoSlice::new(item)];
    let mut bufs = &mut bufs[..];
    while !bufs.is_empty() {
        let n = s.write_vectored(bufs)?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut bufs, n);
    }
    Ok(())
}

/// How the ports wait: the client's default, or `TCP_RELAY_SPIN_US`
/// microseconds of spinning before sleeping.
fn wait_policy() -> shmbus_client::WaitPolicy {
    let mut p = shmbus_client::WaitPolicy::default();
    if let Some(us) = std::env::var("TCP_RELAY_SPIN_US")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        p.spin = std::time::Duration::from_micros(us);
    }
    p
}

/// A local receiver's items into the socket, then its end or error.
fn pump_out(rx: Option<Receiver>, s: &mut TcpStream) -> io::Result<()> {
    let Some(mut rx) = rx else {
        return s.write_all(&END.to_le_bytes());
    };
    rx.set_wait_policy(wait_policy());
    loop {
        match rx.recv_in_place() {
            Ok(Some(item)) => write_item(s, &item)?,
            Ok(None) => return s.write_all(&END.to_le_bytes()),
            Err(e) => {
                s.write_all(&ERROR.to_le_bytes())?;
                return write_bytes(s, e.to_string().as_bytes());
            }
        }
    }
}

/// The socket's items into a local sender until the end or an error; a
/// socket that fails first fails the sender with the reason.
fn pump_in(tx: Option<Sender>, s: &mut TcpStream) -> io::Result<()> {
    let mut tx = tx;
    if let Some(t) = tx.as_mut() {
        t.set_wait_policy(wait_policy());
    }
    let r = pump_in_items(&mut tx, s);
    if let (Err(e), Some(t)) = (&r, tx.as_mut()) {
        let _ = t.fail(&format!("the relay's link failed: {e}"));
    }
    r
}

fn pump_in_items(tx: &mut Option<Sender>, s: &mut TcpStream) -> io::Result<()> {
    loop {
        match read_u64(s)? {
            END => {
                if let Some(mut t) = tx.take() {
                    t.finish().map_err(other)?;
                }
                return Ok(());
            }
            ERROR => {
                let m = String::from_utf8_lossy(&read_bytes(s)?).into_owned();
                if let Some(mut t) = tx.take() {
                    let _ = t.fail(&m);
                }
                return Ok(());
            }
            len => {
                let t = tx.as_mut().ok_or_else(|| other("items with no sender"))?;
                let len = usize::try_from(len).map_err(other)?;
                let mut slot = t.reserve(len).map_err(other)?;
                s.read_exact(&mut slot.buf()[..len])?;
                slot.commit(len).map_err(other)?;
                t.flush().map_err(other)?;
            }
        }
    }
}

/// The far side: answers `H` with this node and the service's methods, and
/// makes each `C` connection's call on the local broker.
fn serve(socket: &str, node: &str, addr: &str, export: &str) -> io::Result<()> {
    let listener = TcpListener::bind(addr)?;
    println!("ready {node}");
    io::stdout().flush()?;
    for s in listener.incoming() {
        let s = s?;
        let (socket, node, export) = (socket.to_string(), node.to_string(), export.to_string());
        std::thread::spawn(move || {
            if let Err(e) = serve_conn(&socket, &node, &export, s) {
                eprintln!("tcp_relay: {e}");
            }
        });
    }
    Ok(())
}

fn serve_conn(socket: &str, node: &str, export: &str, mut s: TcpStream) -> io::Result<()> {
    s.set_nodelay(true)?;
    let conn = Connection::connect(socket).map_err(other)?;
    let mut kind = [0u8];
    s.read_exact(&mut kind)?;
    if kind[0] == b'H' {
        let listed = conn.list().map_err(other)?;
        let info = listed
            .services
            .iter()
            .find(|i| i.name == export)
            .ok_or_else(|| other(format!("no service {export}")))?;
        let hello = (node.to_string(), export.to_string(), info.methods.clone());
        return write_bytes(&mut s, &postcard::to_allocvec(&hello).map_err(other)?);
    }
    let method = String::from_utf8_lossy(&read_bytes(&mut s)?).into_owned();
    let args = read_bytes(&mut s)?;
    let ring = read_u64(&mut s)? as u32;
    let credit: Option<CreditSpec> = postcard::from_bytes(&read_bytes(&mut s)?).map_err(other)?;
    let mut builder = conn.call(export, &method).args(args).ring_size(ring);
    if let Some(c) = credit {
        builder = builder.credit(c);
    }
    let mut call = builder.start().map_err(other)?;
    let (rx, tx) = (call.take_receiver(), call.take_sender());
    let mut up = s.try_clone()?;
    let upload = std::thread::spawn(move || pump_in(tx, &mut up));
    pump_out(rx, &mut s)?;
    let _ = upload.join();
    match call.finish() {
        Ok(v) => {
            s.write_all(&END.to_le_bytes())?;
            write_bytes(&mut s, &v)
        }
        Err(e) => {
            s.write_all(&ERROR.to_le_bytes())?;
            write_bytes(&mut s, e.to_string().as_bytes())
        }
    }
}

/// The near side: registers `NODE/SERVICE` and carries each call over a
/// connection of its own.
fn import(socket: &str, node: &str, addr: &str) -> io::Result<()> {
    let mut s = TcpStream::connect(addr)?;
    s.write_all(b"H")?;
    let (far, service, methods): (String, String, Vec<MethodSpec>) =
        postcard::from_bytes(&read_bytes(&mut s)?).map_err(other)?;
    let conn = Connection::connect(socket).map_err(other)?;
    let registered = conn
        .register(&format!("{far}/{service}"), &methods)
        .map_err(other)?;
    println!("ready {node}");
    io::stdout().flush()?;
    while let Some(call) = registered.next().map_err(other)? {
        let addr = addr.to_string();
        std::thread::spawn(move || {
            if let Err(e) = relay(call, &addr) {
                eprintln!("tcp_relay: {e}");
            }
        });
    }
    Ok(())
}

fn relay(mut call: IncomingCall, addr: &str) -> io::Result<()> {
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    s.write_all(b"C")?;
    write_bytes(&mut s, call.method().as_bytes())?;
    write_bytes(&mut s, call.args())?;
    // The far port as large as the near one: twice its largest item.
    let down = call.sender().map_or(0, |t| t.max_item());
    let max_item = down.max(call.receiver().map_or(0, |r| r.max_item()));
    let ring = (max_item * 2).next_power_of_two().clamp(1 << 20, 64 << 20);
    s.write_all(&(ring as u64).to_le_bytes())?;
    let credit = call
        .sender()
        .map(|t| t.credit())
        .or_else(|| call.receiver().and_then(|r| r.credit()));
    write_bytes(&mut s, &postcard::to_allocvec(&credit).map_err(other)?)?;
    let (rx, tx) = (call.take_receiver(), call.take_sender());
    let mut up = s.try_clone()?;
    let upload = std::thread::spawn(move || pump_out(rx, &mut up));
    let failed = |e: io::Error| shmbus_client::RemoteError {
        code: shmbus_client::ErrorCode::Failed,
        message: format!("the relay's link failed: {e}"),
    };
    let outcome = match pump_in(tx, &mut s).and_then(|()| read_u64(&mut s)) {
        Ok(END) => read_bytes(&mut s).map_err(failed),
        Ok(_) => Err(match read_bytes(&mut s) {
            Ok(m) => shmbus_client::RemoteError {
                code: shmbus_client::ErrorCode::Failed,
                message: String::from_utf8_lossy(&m).into_owned(),
            },
            Err(e) => failed(e),
        }),
        Err(e) => Err(failed(e)),
    };
    let _ = s.shutdown(std::net::Shutdown::Both);
    let _ = upload.join();
    call.respond(outcome).map_err(other)
}
