//! Looking inside the broker: `status`, `list` and `monitor`.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::path::Path;

use shmbus_client::{Connection, Error, MonitorKind, Transport};

use crate::size::human;
use crate::Failure;

/// Writes `text` to standard output. A closed standard output (`| head`)
/// ends the command quietly, as SIGPIPE would.
fn emit(text: &str) -> Result<(), Failure> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| match e.kind() {
            io::ErrorKind::BrokenPipe => Failure::StdoutClosed,
            _ => Failure::Other(format!("writing standard output failed: {e}")),
        })
}

fn print_json(v: &serde_json::Value) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(v).map_err(|e| Failure::Other(e.to_string()))?;
    emit(&format!("{text}\n"))
}

/// `shmbusctl status`.
pub fn status(socket: &Path, json: bool) -> Result<(), Failure> {
    let conn = Connection::connect(socket)?;
    let st = conn.status()?;
    if json {
        return print_json(&serde_json::json!({
            "version": st.version, "uptime_ms": st.uptime_ms, "connections": st.connections,
            "services": st.services, "streams": st.streams, "calls_total": st.calls_total,
            "shm_streams_total": st.shm_streams_total, "socket_streams_total": st.socket_streams_total,
            "bytes_moved": st.bytes_moved,
        }));
    }
    let up = st.uptime_ms / 1000;
    let mut s = String::new();
    let _ = writeln!(s, "shmbusd {}", st.version);
    let _ = writeln!(
        s,
        "uptime       {}h {:02}m {:02}s",
        up / 3600,
        up / 60 % 60,
        up % 60
    );
    let _ = writeln!(s, "connections  {}", st.connections);
    let _ = writeln!(s, "services     {}", st.services);
    let _ = writeln!(
        s,
        "streams      {} live; {} opened over shm, {} over socket",
        st.streams, st.shm_streams_total, st.socket_streams_total
    );
    let _ = writeln!(s, "calls        {}", st.calls_total);
    let _ = writeln!(
        s,
        "bytes moved  {} ({})",
        st.bytes_moved,
        human(st.bytes_moved as f64)
    );
    emit(&s)
}

/// `shmbusctl monitor`: runs until the broker goes away (or a signal).
pub fn monitor(socket: &Path) -> Result<(), Failure> {
    let conn = Connection::connect(socket)?;
    let events = conn.monitor()?;
    for ev in events {
        let what = match &ev.kind {
            MonitorKind::Open {
                transport,
                fallback,
            } => match fallback {
                None => format!("open transport={}", transport_name(*transport)),
                Some(why) => format!(
                    "open transport={} fallback={why:?}",
                    transport_name(*transport)
                ),
            },
            MonitorKind::End => "end".to_string(),
            MonitorKind::Error(e) => format!("error code={:?} message={:?}", e.code, e.message),
            MonitorKind::Cancel => "cancel".to_string(),
        };
        emit(&format!(
            "stream={} service={} method={} caller_pid={} bytes={} {what}\n",
            ev.stream, ev.service, ev.method, ev.caller_pid, ev.bytes
        ))?;
    }
    Err(Error::BrokerGone.into())
}

/// `shmbusctl list`.
pub fn list(socket: &Path, json: bool) -> Result<(), Failure> {
    let conn = Connection::connect(socket)?;
    let snap = conn.list()?;
    if json {
        return print_json(&serde_json::json!({
            "connections": snap.connections,
            "services": snap.services.iter().map(|s| serde_json::json!({
                "name": s.name, "pid": s.pid, "uid": s.uid,
                "methods": s.methods.iter().map(|m| serde_json::json!({"name": m.name, "mode": format!("{:?}", m.mode)})).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "streams": snap.streams.iter().map(|s| serde_json::json!({
                "id": s.stream, "service": s.service, "method": s.method,
                "transport": transport_name(s.transport), "state": s.state,
                "bytes": s.bytes, "credit_outstanding": s.credit_outstanding,
            })).collect::<Vec<_>>(),
        }));
    }
    let mut s = String::new();
    let _ = writeln!(s, "SERVICES ({})", snap.services.len());
    let _ = writeln!(s, "{:<24} {:>8} {:>6}  METHODS", "NAME", "PID", "UID");
    for svc in &snap.services {
        let methods: Vec<String> = svc
            .methods
            .iter()
            .map(|m| format!("{}:{:?}", m.name, m.mode))
            .collect();
        let _ = writeln!(
            s,
            "{:<24} {:>8} {:>6}  {}",
            svc.name,
            svc.pid,
            svc.uid,
            methods.join(" ")
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "STREAMS ({})", snap.streams.len());
    let _ = writeln!(
        s,
        "{:>6} {:<24} {:<9} {:<8} {:>14} {:>10}",
        "ID", "SERVICE.METHOD", "TRANSPORT", "STATE", "BYTES", "CREDIT"
    );
    for st in &snap.streams {
        let _ = writeln!(
            s,
            "{:>6} {:<24} {:<9} {:<8} {:>14} {:>10}",
            st.stream,
            format!("{}.{}", st.service, st.method),
            transport_name(st.transport),
            st.state,
            st.bytes,
            st.credit_outstanding
        );
    }
    emit(&s)
}

fn transport_name(t: Transport) -> &'static str {
    match t {
        Transport::SharedMemory => "shm",
        Transport::Socket => "socket",
    }
}
