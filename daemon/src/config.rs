//! Configuration: a TOML file (`/etc/shmbus/shmbusd.toml` by default) whose
//! every key is also a command-line flag that overrides it, checked into the
//! [`Settings`] the broker runs with. Every problem is reported on one line
//! naming the key (or flag) and what is wrong.

use std::path::{Path, PathBuf};

use clap::Parser;

use crate::policy::{Policy, ServiceRule, Uids};
use crate::quota::{Quota, Quotas};

/// The configuration file read when `--config` is not given.
pub const DEFAULT_CONFIG: &str = "/etc/shmbus/shmbusd.toml";

/// Limits the broker enforces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest control frame body accepted or sent.
    pub max_frame: u32,
    /// Ring data bytes when a call names none.
    pub default_ring_size: u32,
    /// Largest ring a call may ask for.
    pub max_ring_size: u32,
    /// High-water mark given to calls that leave it to the broker (0 in the call).
    pub default_high_water_mark: u64,
    /// Services one connection may register.
    pub max_services_per_connection: usize,
    /// Methods one service may declare.
    pub max_methods_per_service: usize,
    /// Calls one connection may have live.
    pub max_calls_per_connection: usize,
    /// Connections at once.
    pub max_connections: usize,
    /// Bytes queued toward one connection before it is cut off as too slow.
    pub max_queued_bytes: usize,
    /// Per-uid quotas.
    pub quotas: Quotas,
    /// Who may register and call what.
    pub policy: Policy,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame: shmbus::frame::DEFAULT_MAX_FRAME,
            default_ring_size: shmbus::DEFAULT_RING_SIZE,
            max_ring_size: 64 << 20,
            default_high_water_mark: shmbus::DEFAULT_HIGH_WATER_MARK,
            max_services_per_connection: 256,
            max_methods_per_service: 64,
            max_calls_per_connection: 4096,
            max_connections: 4096,
            max_queued_bytes: 16 << 20,
            quotas: Quotas::default(),
            policy: Policy::default(),
        }
    }
}

/// Everything the broker runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Socket to listen on (unless systemd passes one).
    pub socket: PathBuf,
    /// Permission bits of a socket the broker binds itself.
    pub socket_mode: u32,
    /// Group owning a socket the broker binds itself.
    pub socket_group: Option<String>,
    /// Log filter (`info`, `shmbusd=debug`, …); `RUST_LOG` overrides.
    pub log_level: String,
    /// Limits.
    pub limits: Limits,
}

/// `shmbusd`: the shmbus broker.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "shmbusd",
    version,
    about = "The shmbus broker: routes calls and sets up shared-memory stream ports",
    after_help = "Every option can also be set in the configuration file, under the same name \
                  with underscores (ring-size → ring_size); options given here win."
)]
pub struct Args {
    /// Configuration file [default: /etc/shmbus/shmbusd.toml, if present].
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Socket to listen on [default: $SHMBUS_SOCKET, else $XDG_RUNTIME_DIR/shmbus/bus.sock, else /run/shmbus/bus.sock].
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Permission bits of the socket, in octal [default: 0666].
    #[arg(long, value_name = "OCTAL", value_parser = |s: &str| parse_mode(s))]
    pub socket_mode: Option<u32>,
    /// Group owning the socket.
    #[arg(long, value_name = "GROUP")]
    pub socket_group: Option<String>,
    /// Ring data bytes per direction when a call names none (power of two; K/M/G suffixes).
    #[arg(long, value_name = "BYTES", value_parser = |s: &str| parse_ring(s))]
    pub ring_size: Option<u32>,
    /// Largest ring a call may ask for.
    #[arg(long, value_name = "BYTES", value_parser = |s: &str| parse_ring(s))]
    pub max_ring_size: Option<u32>,
    /// High-water mark for calls that leave it to the broker.
    #[arg(long, value_name = "CREDIT", value_parser = |s: &str| parse_hwm(s))]
    pub high_water_mark: Option<u64>,
    /// Largest control frame body.
    #[arg(long, value_name = "BYTES", value_parser = |s: &str| parse_frame(s))]
    pub max_frame: Option<u32>,
    /// Connections accepted at once.
    #[arg(long, value_name = "N", value_parser = |s: &str| parse_count(s))]
    pub max_connections: Option<usize>,
    /// Services one connection may register.
    #[arg(long, value_name = "N", value_parser = |s: &str| parse_count(s))]
    pub max_services_per_connection: Option<usize>,
    /// Methods one service may declare.
    #[arg(long, value_name = "N", value_parser = |s: &str| parse_count(s))]
    pub max_methods_per_service: Option<usize>,
    /// Calls one connection may have live.
    #[arg(long, value_name = "N", value_parser = |s: &str| parse_count(s))]
    pub max_calls_per_connection: Option<usize>,
    /// Bytes queued toward a connection before it is cut off as too slow.
    #[arg(long, value_name = "BYTES", value_parser = |s: &str| parse_queued(s))]
    pub max_queued_bytes: Option<usize>,
    /// Log level or filter (error, warn, info, debug, trace); RUST_LOG overrides.
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Quota: connections per uid.
    #[arg(long, value_name = "N", value_parser = |s: &str| parse_count(s))]
    pub max_connections_per_uid: Option<usize>,
    /// Quota: services per uid.
    #[arg(long, value_name = "N", value_parser = |s: &str| parse_count(s))]
    pub max_services_per_uid: Option<usize>,
    /// Quota: live streams per uid (charged to the caller).
    #[arg(long, value_name = "N", value_parser = |s: &str| parse_count(s))]
    pub max_streams_per_uid: Option<usize>,
    /// Quota: ring bytes of live streams per uid (charged to the caller).
    #[arg(long, value_name = "BYTES", value_parser = |s: &str| parse_size(s))]
    pub max_ring_bytes_per_uid: Option<u64>,
    /// Quota: descriptors queued toward a uid's connections.
    #[arg(long, value_name = "N", value_parser = |s: &str| parse_count(s))]
    pub max_fds_in_flight_per_uid: Option<usize>,
    /// Per-uid quota overrides and declared services (file only).
    #[arg(skip)]
    pub tables: Tables,
}

/// The parts of the file that are tables rather than single values.
#[derive(Debug, Clone, Default)]
pub struct Tables {
    /// `[quota.uid.N]` overrides.
    pub per_uid: std::collections::HashMap<u32, PartialQuota>,
    /// `[[service]]` rules.
    pub rules: Vec<ServiceRule>,
}

/// A quota override: unset fields take the default quota.
#[derive(Debug, Clone, Copy, Default)]
pub struct PartialQuota {
    connections: Option<usize>,
    services: Option<usize>,
    streams: Option<usize>,
    ring_bytes: Option<u64>,
    fds_in_flight: Option<usize>,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'K' | 'k')) => (&t[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&t[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&t[..i], 1 << 30),
        _ => (t, 1),
    };
    num.trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("{s:?} is not a size (a number, optionally with K, M or G)"))
}

fn parse_ring(s: &str) -> Result<u32, String> {
    let v = parse_size(s)?;
    u32::try_from(v)
        .ok()
        .filter(|v| shmbus::ring::valid_capacity(*v))
        .ok_or_else(|| {
            format!(
                "must be a power of two between {} and {}, got {v}",
                shmbus::ring::MIN_CAPACITY,
                shmbus::ring::MAX_CAPACITY
            )
        })
}

fn parse_hwm(s: &str) -> Result<u64, String> {
    let v = parse_size(s)?;
    if v == 0 || v > 1 << 48 {
        return Err(format!("must be between 1 and 2^48, got {v}"));
    }
    Ok(v)
}

fn parse_frame(s: &str) -> Result<u32, String> {
    let v = parse_size(s)?;
    if !(4096..=64 << 20).contains(&v) {
        return Err(format!("must be between 4096 and 67108864, got {v}"));
    }
    Ok(v as u32)
}

fn parse_count(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if (1..=1 << 20).contains(&n) => Ok(n),
        _ => Err(format!(
            "must be a whole number from 1 to 1048576, got {s:?}"
        )),
    }
}

fn parse_queued(s: &str) -> Result<usize, String> {
    let v = parse_size(s)?;
    if !(64 << 10..=1 << 30).contains(&v) {
        return Err(format!("must be between 64K and 1G, got {v}"));
    }
    Ok(v as usize)
}

fn parse_mode(s: &str) -> Result<u32, String> {
    match u32::from_str_radix(s.trim().trim_start_matches("0o"), 8) {
        Ok(m) if m <= 0o777 => Ok(m),
        _ => Err(format!(
            "must be octal permission bits such as 0660, got {s:?}"
        )),
    }
}

fn parse_level(s: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(s)
        .map(|_| s.to_string())
        .map_err(|e| format!("not a log level or filter: {e}"))
}

/// A value from the file as the text its parser takes.
fn scalar(v: &toml::Value) -> Result<String, String> {
    match v {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        other => Err(format!(
            "expected a number or a string, got {}",
            other.type_str()
        )),
    }
}

impl Args {
    /// Reads the configuration file (if any) and applies these flags over it.
    pub fn settings(&self) -> Result<Settings, String> {
        let (path, required) = match &self.config {
            Some(p) => (p.clone(), true),
            None => (PathBuf::from(DEFAULT_CONFIG), false),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => Some(t),
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let mut merged = match text {
            Some(t) => from_file(&path, &t)?,
            None => Args::parse_from(["shmbusd"]),
        };
        merged.overlay(self);
        merged.resolve()
    }

    /// Takes every option `other` sets.
    fn overlay(&mut self, other: &Args) {
        macro_rules! take {
            ($($f:ident),*) => { $(if other.$f.is_some() { self.$f = other.$f.clone(); })* };
        }
        take!(
            socket,
            socket_mode,
            socket_group,
            ring_size,
            max_ring_size,
            high_water_mark,
            max_frame,
            max_connections,
            max_services_per_connection,
            max_methods_per_service,
            max_calls_per_connection,
            max_queued_bytes,
            log_level,
            max_connections_per_uid,
            max_services_per_uid,
            max_streams_per_uid,
            max_ring_bytes_per_uid,
            max_fds_in_flight_per_uid
        );
        if !other.tables.rules.is_empty() || !other.tables.per_uid.is_empty() {
            self.tables = other.tables.clone();
        }
    }

    fn resolve(&self) -> Result<Settings, String> {
        let d = Limits::default();
        let limits = Limits {
            max_frame: self.max_frame.unwrap_or(d.max_frame),
            default_ring_size: self.ring_size.unwrap_or(d.default_ring_size),
            max_ring_size: self.max_ring_size.unwrap_or(d.max_ring_size),
            default_high_water_mark: self.high_water_mark.unwrap_or(d.default_high_water_mark),
            max_services_per_connection: self
                .max_services_per_connection
                .unwrap_or(d.max_services_per_connection),
            max_methods_per_service: self
                .max_methods_per_service
                .unwrap_or(d.max_methods_per_service),
            max_calls_per_connection: self
                .max_calls_per_connection
                .unwrap_or(d.max_calls_per_connection),
            max_connections: self.max_connections.unwrap_or(d.max_connections),
            max_queued_bytes: self.max_queued_bytes.unwrap_or(d.max_queued_bytes),
            quotas: Quotas::default(),
            policy: Policy {
                rules: self.tables.rules.clone(),
            },
        };
        let mut limits = limits;
        let dq = Quota::default();
        let default = Quota {
            connections: self.max_connections_per_uid.unwrap_or(dq.connections),
            services: self.max_services_per_uid.unwrap_or(dq.services),
            streams: self.max_streams_per_uid.unwrap_or(dq.streams),
            ring_bytes: self.max_ring_bytes_per_uid.unwrap_or(dq.ring_bytes),
            fds_in_flight: self.max_fds_in_flight_per_uid.unwrap_or(dq.fds_in_flight),
        };
        limits.quotas.default = default;
        for (uid, p) in &self.tables.per_uid {
            limits.quotas.per_uid.insert(
                *uid,
                Quota {
                    connections: p.connections.unwrap_or(default.connections),
                    services: p.services.unwrap_or(default.services),
                    streams: p.streams.unwrap_or(default.streams),
                    ring_bytes: p.ring_bytes.unwrap_or(default.ring_bytes),
                    fds_in_flight: p.fds_in_flight.unwrap_or(default.fds_in_flight),
                },
            );
        }
        if limits.default_ring_size > limits.max_ring_size {
            return Err(format!(
                "ring_size {} exceeds max_ring_size {}",
                limits.default_ring_size, limits.max_ring_size
            ));
        }
        let log_level = match &self.log_level {
            Some(l) => parse_level(l).map_err(|e| format!("log_level: {e}"))?,
            None => "info".into(),
        };
        Ok(Settings {
            socket: self
                .socket
                .clone()
                .unwrap_or_else(shmbus::default_socket_path),
            socket_mode: self.socket_mode.unwrap_or(0o666),
            socket_group: self.socket_group.clone(),
            log_level,
            limits,
        })
    }
}

/// Parses a configuration file into the same shape as the flags.
fn from_file(path: &Path, text: &str) -> Result<Args, String> {
    let at = |msg: String| format!("{}: {msg}", path.display());
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let (line, col) = e.span().map_or((0, 0), |s| line_col(text, s.start));
        at(format!(
            "line {line}, column {col}: {}",
            e.message().lines().next().unwrap_or("invalid TOML")
        ))
    })?;
    let mut args = Args::parse_from(["shmbusd"]);
    for (key, value) in &table {
        match key.as_str() {
            "quota" => {
                args.tables.per_uid =
                    quota_tables(value).map_err(|m| at(format!("key `quota`{m}")))?;
                continue;
            }
            "service" => {
                args.tables.rules =
                    service_rules(value).map_err(|m| at(format!("key `service`{m}")))?;
                continue;
            }
            _ => {}
        }
        let bad = |msg: String| at(format!("key `{key}`: {msg}"));
        let text = scalar(value).map_err(bad)?;
        let err = |r: Result<(), String>| r.map_err(|m| at(format!("key `{key}`: {m}")));
        match key.as_str() {
            "socket" => args.socket = Some(PathBuf::from(text)),
            "socket_mode" => err(parse_mode(&text).map(|v| args.socket_mode = Some(v)))?,
            "socket_group" => args.socket_group = Some(text),
            "ring_size" => err(parse_ring(&text).map(|v| args.ring_size = Some(v)))?,
            "max_ring_size" => err(parse_ring(&text).map(|v| args.max_ring_size = Some(v)))?,
            "high_water_mark" => err(parse_hwm(&text).map(|v| args.high_water_mark = Some(v)))?,
            "max_frame" => err(parse_frame(&text).map(|v| args.max_frame = Some(v)))?,
            "max_connections" => err(parse_count(&text).map(|v| args.max_connections = Some(v)))?,
            "max_services_per_connection" => {
                err(parse_count(&text).map(|v| args.max_services_per_connection = Some(v)))?
            }
            "max_methods_per_service" => {
                err(parse_count(&text).map(|v| args.max_methods_per_service = Some(v)))?
            }
            "max_calls_per_connection" => {
                err(parse_count(&text).map(|v| args.max_calls_per_connection = Some(v)))?
            }
            "max_queued_bytes" => {
                err(parse_queued(&text).map(|v| args.max_queued_bytes = Some(v)))?
            }
            "log_level" => err(parse_level(&text).map(|v| args.log_level = Some(v)))?,
            "max_connections_per_uid" => {
                err(parse_count(&text).map(|v| args.max_connections_per_uid = Some(v)))?
            }
            "max_services_per_uid" => {
                err(parse_count(&text).map(|v| args.max_services_per_uid = Some(v)))?
            }
            "max_streams_per_uid" => {
                err(parse_count(&text).map(|v| args.max_streams_per_uid = Some(v)))?
            }
            "max_ring_bytes_per_uid" => {
                err(parse_size(&text).map(|v| args.max_ring_bytes_per_uid = Some(v)))?
            }
            "max_fds_in_flight_per_uid" => {
                err(parse_count(&text).map(|v| args.max_fds_in_flight_per_uid = Some(v)))?
            }
            _ => return Err(at(format!("key `{key}`: unknown key"))),
        }
    }
    Ok(args)
}

/// `[quota.uid.N]` tables. Errors start with the rest of the key path.
fn quota_tables(
    value: &toml::Value,
) -> Result<std::collections::HashMap<u32, PartialQuota>, String> {
    let top = value.as_table().ok_or(": expected a table".to_string())?;
    let mut out = std::collections::HashMap::new();
    for (k, v) in top {
        if k != "uid" {
            return Err(format!(
                ".{k}: unknown key (per-uid quotas go under [quota.uid.N])"
            ));
        }
        let uids = v
            .as_table()
            .ok_or(".uid: expected tables [quota.uid.N]".to_string())?;
        for (uid, q) in uids {
            let path = format!(".uid.{uid}");
            let id: u32 = uid
                .parse()
                .map_err(|_| format!("{path}: not a numeric uid"))?;
            let q = q.as_table().ok_or(format!("{path}: expected a table"))?;
            let mut p = PartialQuota::default();
            for (field, v) in q {
                let fp = format!("{path}.{field}");
                let text = scalar(v).map_err(|e| format!("{fp}: {e}"))?;
                match field.as_str() {
                    "connections" => {
                        p.connections = Some(parse_count(&text).map_err(|e| format!("{fp}: {e}"))?)
                    }
                    "services" => {
                        p.services = Some(parse_count(&text).map_err(|e| format!("{fp}: {e}"))?)
                    }
                    "streams" => {
                        p.streams = Some(parse_count(&text).map_err(|e| format!("{fp}: {e}"))?)
                    }
                    "ring_bytes" => {
                        p.ring_bytes = Some(parse_size(&text).map_err(|e| format!("{fp}: {e}"))?)
                    }
                    "fds_in_flight" => {
                        p.fds_in_flight =
                            Some(parse_count(&text).map_err(|e| format!("{fp}: {e}"))?)
                    }
                    _ => return Err(format!("{fp}: unknown key")),
                }
            }
            out.insert(id, p);
        }
    }
    Ok(out)
}

/// `[[service]]` rules.
fn service_rules(value: &toml::Value) -> Result<Vec<ServiceRule>, String> {
    let list = value
        .as_array()
        .ok_or(": expected [[service]] tables".to_string())?;
    let uids = |v: Option<&toml::Value>, path: &str| -> Result<Uids, String> {
        match v {
            None => Ok(Uids::Only(Vec::new())),
            Some(toml::Value::String(s)) if s == "any" => Ok(Uids::Any),
            Some(toml::Value::Array(a)) => a
                .iter()
                .map(|x| {
                    x.as_integer()
                        .and_then(|i| u32::try_from(i).ok())
                        .ok_or(format!("{path}: uids are numbers"))
                })
                .collect::<Result<Vec<u32>, String>>()
                .map(Uids::Only),
            Some(_) => Err(format!("{path}: expected \"any\" or a list of uids")),
        }
    };
    let mut rules = Vec::new();
    for (i, item) in list.iter().enumerate() {
        let path = format!("[{i}]");
        let t = item.as_table().ok_or(format!("{path}: expected a table"))?;
        for k in t.keys() {
            if !matches!(k.as_str(), "name" | "register" | "call") {
                return Err(format!("{path}.{k}: unknown key"));
            }
        }
        let pattern = t
            .get("name")
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .ok_or(format!("{path}.name: required, a service name or pattern"))?;
        rules.push(ServiceRule {
            pattern: pattern.to_string(),
            register: uids(t.get("register"), &format!("{path}.register"))?,
            call: uids(t.get("call"), &format!("{path}.call"))?,
        });
    }
    Ok(rules)
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |i| before.len() - i - 1)
        + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> Result<Settings, String> {
        let mut a = from_file(Path::new("/etc/x.toml"), text)?;
        a.overlay(&Args::parse_from(["shmbusd"]));
        a.resolve()
    }

    #[test]
    fn keys_parse_and_flags_win() {
        let s = file("ring_size = \"4M\"\nmax_ring_size = 16777216\nsocket_mode = \"0660\"\nlog_level = \"debug\"\n")
            .unwrap();
        assert_eq!(s.limits.default_ring_size, 4 << 20);
        assert_eq!(s.limits.max_ring_size, 16 << 20);
        assert_eq!(s.socket_mode, 0o660);
        let mut a = from_file(Path::new("f"), "ring_size = 8192").unwrap();
        a.overlay(&Args::parse_from(["shmbusd", "--ring-size", "16K"]));
        assert_eq!(a.resolve().unwrap().limits.default_ring_size, 16384);
    }

    #[test]
    fn the_shipped_example_parses_with_every_setting_uncommented() {
        let example = include_str!("../../systemd/shmbusd.toml");
        let uncommented: String = example
            .lines()
            .map(|l| match l.strip_prefix('#') {
                Some(rest)
                    if rest.starts_with('[')
                        || rest
                            .split_once(" = ")
                            .is_some_and(|(k, _)| !k.contains(' ')) =>
                {
                    rest
                }
                _ => l,
            })
            .filter(|l| !l.starts_with("socket_group"))
            .collect::<Vec<_>>()
            .join("\n");
        let s = file(&uncommented).unwrap();
        assert_eq!(s.limits.quotas.of(1000).streams, 64);
        assert_eq!(s.limits.policy.rules.len(), 1);
        assert_eq!(s.limits.default_ring_size, 1 << 20);
    }

    #[test]
    fn quotas_and_declared_services_parse() {
        let s = file(
            "max_streams_per_uid = 10\n[quota.uid.1000]\nstreams = 2\nring_bytes = \"8M\"\n\n\
             [[service]]\nname = \"sys.*\"\nregister = [0, 100]\ncall = \"any\"\n",
        )
        .unwrap();
        assert_eq!(s.limits.quotas.default.streams, 10);
        let q = s.limits.quotas.of(1000);
        assert_eq!((q.streams, q.ring_bytes), (2, 8 << 20));
        assert_eq!(s.limits.policy.rules[0].register, Uids::Only(vec![0, 100]));
        assert_eq!(s.limits.policy.rules[0].call, Uids::Any);
    }

    #[test]
    fn every_problem_is_one_line_naming_the_key() {
        for (text, expect) in [
            (
                "ring_size = 1000",
                "key `ring_size`: must be a power of two",
            ),
            ("max_frame = 12", "key `max_frame`: must be between 4096"),
            ("bogus = 1", "key `bogus`: unknown key"),
            ("max_connections = 0", "key `max_connections`"),
            ("socket_mode = \"999\"", "key `socket_mode`"),
            (
                "ring_size = [1]",
                "key `ring_size`: expected a number or a string",
            ),
            ("ring_size = = 3", "line 1, column"),
            (
                "ring_size = \"64M\"\nmax_ring_size = \"1M\"",
                "ring_size 67108864 exceeds max_ring_size 1048576",
            ),
        ] {
            let e = file(text).unwrap_err();
            assert!(e.contains(expect), "{text:?} gave {e:?}");
            assert_eq!(e.lines().count(), 1, "{e:?}");
        }
    }
}
