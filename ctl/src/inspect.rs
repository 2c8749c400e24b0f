//! Looking inside the broker: `status`, `list` and `monitor`.

use std::io::{self, Write};
use std::path::Path;

use shmbus_client::{Connection, Error, MonitorKind, Transport};

use crate::size::human;
use crate::Failure;

fn print_json(v: &serde_json::Value) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(v).map_err(|e| Failure::Other(e.to_string()))?;
    println!("{text}");
    Ok(())
}

/// `shmbusctl status`.
pub fn status(socket: &Path, json: bool) -> Result<(), Failure> {
    let conn = Connection::connect(socket)?;
    let s = conn.status()?;
    if json {
        return print_json(&serde_json::json!({
            "version": s.version, "uptime_ms": s.uptime_ms, "connections": s.connections,
            "services": s.services, "streams": s.streams, "calls_total": s.calls_total,
            "shm_streams_total": s.shm_streams_total, "socket_streams_total": s.socket_streams_total,
            "bytes_moved": s.bytes_moved,
        }));
    }
    let up = s.uptime_ms / 1000;
    println!("shmbusd {}", s.version);
    println!(
        "uptime       {}h {:02}m {:02}s",
        up / 3600,
        up / 60 % 60,
        up % 60
    );
    println!("connections  {}", s.connections);
    println!("services     {}", s.services);
    println!(
        "streams      {} live; {} opened over shm, {} over socket",
        s.streams, s.shm_streams_total, s.socket_streams_total
    );
    println!("calls        {}", s.calls_total);
    println!(
        "bytes moved  {} ({})",
        s.bytes_moved,
        human(s.bytes_moved as f64)
    );
    Ok(())
}

/// `shmbusctl monitor`: runs until the broker goes away (or a signal).
pub fn monitor(socket: &Path) -> Result<(), Failure> {
    let conn = Connection::connect(socket)?;
    let events = conn.monitor()?;
    let mut out = io::stdout();
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
        writeln!(
            out,
            "stream={} service={} method={} caller_pid={} bytes={} {what}",
            ev.stream, ev.service, ev.method, ev.caller_pid, ev.bytes
        )?;
        out.flush()?;
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
    println!("SERVICES ({})", snap.services.len());
    println!("{:<24} {:>8} {:>6}  METHODS", "NAME", "PID", "UID");
    for s in &snap.services {
        let methods: Vec<String> = s
            .methods
            .iter()
            .map(|m| format!("{}:{:?}", m.name, m.mode))
            .collect();
        println!(
            "{:<24} {:>8} {:>6}  {}",
            s.name,
            s.pid,
            s.uid,
            methods.join(" ")
        );
    }
    println!();
    println!("STREAMS ({})", snap.streams.len());
    println!(
        "{:>6} {:<24} {:<9} {:<8} {:>14} {:>10}",
        "ID", "SERVICE.METHOD", "TRANSPORT", "STATE", "BYTES", "CREDIT"
    );
    for s in &snap.streams {
        println!(
            "{:>6} {:<24} {:<9} {:<8} {:>14} {:>10}",
            s.stream,
            format!("{}.{}", s.service, s.method),
            transport_name(s.transport),
            s.state,
            s.bytes,
            s.credit_outstanding
        );
    }
    Ok(())
}

fn transport_name(t: Transport) -> &'static str {
    match t {
        Transport::SharedMemory => "shm",
        Transport::Socket => "socket",
    }
}
