//! The one-line summary that ends every run: the headline figures of the
//! scenarios that ran, taken from their JSON records.

use serde_json::Value;

use crate::cli::human_size;

fn field<'a>(r: &'a Value, key: &str) -> Option<&'a Value> {
    r.get(key)
}

fn num(r: &Value, key: &str) -> Option<f64> {
    field(r, key)?.as_f64()
}

fn is(r: &Value, key: &str, want: &str) -> bool {
    field(r, key).and_then(Value::as_str) == Some(want)
}

/// The records of shmbus over shared memory in `scenario`.
fn shm<'a>(records: &'a [Value], scenario: &'a str) -> impl Iterator<Item = &'a Value> {
    records
        .iter()
        .filter(move |r| is(r, "scenario", scenario) && is(r, "transport", "shm"))
}

fn size(r: &Value) -> Option<usize> {
    field(r, "size")?.as_u64().map(|s| s as usize)
}

/// `0.52 µs`, `41.6 µs`, `1.51 ms`.
fn time(ns: f64) -> String {
    let us = ns / 1e3;
    match us {
        us if us < 10.0 => format!("{us:.2} µs"),
        us if us < 1000.0 => format!("{us:.1} µs"),
        us => format!("{:.2} ms", us / 1e3),
    }
}

/// `13.0 M/s`, `870.3 k/s`.
fn rate(per_sec: f64) -> String {
    match per_sec {
        v if v >= 1e6 => format!("{:.1} M/s", v / 1e6),
        v if v >= 1e3 => format!("{:.1} k/s", v / 1e3),
        v => format!("{v:.0}/s"),
    }
}

fn throughput(records: &[Value], out: &mut Vec<String>) {
    let bytes: Vec<&Value> = shm(records, "throughput")
        .filter(|r| is(r, "kind", "bytes"))
        .collect();
    // 64 KiB writes, else the fastest size that ran.
    let best = bytes
        .iter()
        .find(|r| size(r) == Some(64 << 10))
        .or_else(|| {
            bytes.iter().max_by(|a, b| {
                let f = |r: &Value| num(r, "bytes_per_sec").unwrap_or(0.0);
                f(a).total_cmp(&f(b))
            })
        });
    if let (Some(r), Some(bps)) = (best, best.and_then(|r| num(r, "bytes_per_sec"))) {
        let mut s = format!(
            "{} shm {:.1} GB/s",
            human_size(size(r).unwrap_or(0)),
            bps / 1e9
        );
        if let Some(x) = field(r, "ratio_vs").and_then(|v| num(v, "uds")) {
            s.push_str(&format!(" ({x:.1}× uds)"));
        }
        out.push(s);
    }
    if let Some(ips) = bytes
        .iter()
        .find(|r| size(r) == Some(64))
        .and_then(|r| num(r, "items_per_sec"))
    {
        out.push(format!("64 B {}", rate(ips)));
    }
}

fn latency(records: &[Value], out: &mut Vec<String>) {
    let mut rts: Vec<&Value> = shm(records, "latency").collect();
    // The smallest message, blocking waits before spinning ones.
    rts.sort_by_key(|r| (size(r), !is(r, "wait", "blocking")));
    if let Some((r, p50)) = rts.first().and_then(|r| Some((r, num(r, "p50_ns")?))) {
        match size(r) {
            Some(64) | None => out.push(format!("rt {}", time(p50))),
            Some(s) => out.push(format!("rt {} {}", human_size(s), time(p50))),
        }
    }
}

fn setup(records: &[Value], out: &mut Vec<String>) {
    if let Some(p50) = shm(records, "setup").find_map(|r| num(r, "p50_ns")) {
        out.push(format!("setup {}", time(p50)));
    }
}

fn fanout(records: &[Value], out: &mut Vec<String>) {
    let streams = |r: &Value| num(r, "streams").map(|n| n as u64);
    let fan: Vec<&Value> = shm(records, "fanout").collect();
    // 64 streams, else the most that ran beyond one.
    let many = fan.iter().find(|r| streams(r) == Some(64)).or_else(|| {
        fan.iter()
            .filter(|r| streams(r).is_some_and(|n| n > 1))
            .max_by_key(|r| streams(r))
    });
    let Some((r, bps)) = many.and_then(|r| Some((r, num(r, "bytes_per_sec")?))) else {
        return;
    };
    let n = streams(r).unwrap_or(0);
    // Against one stream of the same scenario, else 64 KiB throughput.
    let one = fan
        .iter()
        .find(|r| streams(r) == Some(1))
        .and_then(|r| num(r, "bytes_per_sec"))
        .or_else(|| {
            shm(records, "throughput")
                .find(|r| is(r, "kind", "bytes") && size(r) == Some(64 << 10))
                .and_then(|r| num(r, "bytes_per_sec"))
        });
    match one {
        Some(one) if one > 0.0 => out.push(format!("{n} streams {:.2}×", bps / one)),
        _ => out.push(format!("{n} streams {:.1} GB/s", bps / 1e9)),
    }
}

fn idle(records: &[Value], out: &mut Vec<String>) {
    if let Some(cpu) = shm(records, "idle").find_map(|r| num(r, "median")) {
        out.push(format!("idle {:.0} ms CPU", cpu / 1e6));
    }
}

fn faults(records: &[Value], out: &mut Vec<String>) {
    let of = |name: &'static str| records.iter().filter(move |r| is(r, "scenario", name));
    if let Some(p99) = of("crash")
        .find(|r| is(r, "group", "all"))
        .and_then(|r| num(r, "p99_ns"))
    {
        out.push(format!("crash kill→error p99 {}", time(p99)));
    }
    if let Some(r) = of("soak").next() {
        if let Some(p99) = num(r, "survivor_p99_ns") {
            let unexpected = num(r, "unexpected_errors").unwrap_or(0.0);
            out.push(format!(
                "soak p99 {} ({unexpected:.0} unexpected errors)",
                time(p99)
            ));
        }
    }
    if let Some(x) = of("flood").find_map(|r| num(r, "p99_ratio")) {
        out.push(format!("flood setup p99 {x:.2}× quiet"));
    }
}

/// The largest shared-memory blob's handoff: its p50, against the 1 MiB
/// blob's and as a speed-up over streaming the same bytes.
fn blob(records: &[Value], out: &mut Vec<String>) {
    let blobs: Vec<&Value> = shm(records, "blob")
        .filter(|r| field(r, "blob").and_then(Value::as_bool) == Some(true))
        .collect();
    let Some(big) = blobs.iter().max_by_key(|r| size(r)) else {
        return;
    };
    let Some(p50) = num(big, "p50_ns") else {
        return;
    };
    let mut s = format!("blob {} {}", human_size(size(big).unwrap_or(0)), time(p50));
    let mib = blobs
        .iter()
        .find(|r| size(r) == Some(1 << 20))
        .and_then(|r| num(r, "p50_ns"));
    if let Some(m) = mib.filter(|_| size(big) != Some(1 << 20)) {
        s.push_str(&format!(" ({:.2}× 1 MiB", p50 / m));
    } else {
        s.push_str(" (");
    }
    if let Some(x) = field(big, "ratio_vs").and_then(|v| num(v, "streamed")) {
        if !s.ends_with('(') {
            s.push_str(", ");
        }
        s.push_str(&format!("{:.0}× faster than streamed", 1.0 / x));
    }
    if s.ends_with(" (") {
        s.truncate(s.len() - 2);
    } else {
        s.push(')');
    }
    out.push(s);
}

/// The bridged 1 MiB stream against TCP, the bridged round trip of the
/// smallest message and the bridged call setup.
fn bridge(records: &[Value], out: &mut Vec<String>) {
    let bridged = |measures: &'static str| {
        records.iter().filter(move |r| {
            is(r, "scenario", "bridge")
                && is(r, "transport", "bridge")
                && is(r, "measures", measures)
        })
    };
    if let Some(r) = bridged("throughput").find(|r| size(r) == Some(1 << 20)) {
        if let Some(bps) = num(r, "bytes_per_sec") {
            let mut s = format!("bridge 1 MiB {:.2} GB/s", bps / 1e9);
            if let Some(x) = field(r, "ratio_vs").and_then(|v| num(v, "tcp")) {
                s.push_str(&format!(" ({x:.2}× tcp)"));
            }
            out.push(s);
        }
    }
    if let Some(p50) = bridged("latency")
        .min_by_key(|r| size(r))
        .and_then(|r| num(r, "p50_ns"))
    {
        out.push(format!("bridge rt {}", time(p50)));
    }
    if let Some(p50) = bridged("setup").find_map(|r| num(r, "p50_ns")) {
        out.push(format!("bridge setup {}", time(p50)));
    }
}

/// The summary line of a run's records: only the figures its scenarios
/// produced, `None` when there are none.
pub fn line(records: &[Value]) -> Option<String> {
    let mut parts = Vec::new();
    throughput(records, &mut parts);
    latency(records, &mut parts);
    setup(records, &mut parts);
    fanout(records, &mut parts);
    idle(records, &mut parts);
    blob(records, &mut parts);
    bridge(records, &mut parts);
    faults(records, &mut parts);
    (!parts.is_empty()).then(|| format!("summary: {}", parts.join(" · ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn full_run() -> Vec<Value> {
        vec![
            json!({"machine": "test", "busy": false}),
            json!({"scenario": "throughput", "transport": "shm", "size": 64, "kind": "bytes",
                   "bytes_per_sec": 832_000_000u64, "items_per_sec": 13_000_000u64}),
            json!({"scenario": "throughput", "transport": "shm", "size": 65536, "kind": "bytes",
                   "bytes_per_sec": 9_120_000_000u64, "ratio_vs": {"uds": 3.11, "pipe": 3.36}}),
            json!({"scenario": "throughput", "transport": "uds", "size": 65536, "kind": "bytes",
                   "bytes_per_sec": 2_930_000_000u64}),
            json!({"scenario": "throughput", "transport": "shm", "size": 64, "kind": "typed",
                   "items_per_sec": 10_900_000u64}),
            json!({"scenario": "latency", "transport": "shm", "size": 4096, "wait": "blocking", "p50_ns": 2220}),
            json!({"scenario": "latency", "transport": "shm", "size": 64, "wait": "spin", "p50_ns": 480}),
            json!({"scenario": "latency", "transport": "shm", "size": 64, "wait": "blocking", "p50_ns": 520}),
            json!({"scenario": "setup", "transport": "shm", "size": 1, "p50_ns": 41_600}),
            json!({"scenario": "setup", "transport": "uds", "size": 1, "p50_ns": 13_900}),
            json!({"scenario": "fanout", "transport": "shm", "size": 65536, "streams": 1, "bytes_per_sec": 9_100_000_000u64}),
            json!({"scenario": "fanout", "transport": "shm", "size": 65536, "streams": 64, "bytes_per_sec": 8_008_000_000u64}),
            json!({"scenario": "fanout", "transport": "shm", "size": 65536, "streams": 256, "bytes_per_sec": 7_000_000_000u64}),
            json!({"scenario": "idle", "transport": "shm", "headline": "cpu_ns", "median": 0.0}),
        ]
    }

    #[test]
    fn a_full_run_has_every_headline() {
        assert_eq!(
            line(&full_run()).unwrap(),
            "summary: 64 KiB shm 9.1 GB/s (3.1× uds) · 64 B 13.0 M/s · rt 0.52 µs · setup 41.6 µs · 64 streams 0.88× · idle 0 ms CPU"
        );
    }

    #[test]
    fn the_largest_blob_against_one_mebibyte_and_streaming() {
        let records = vec![
            json!({"scenario": "blob", "transport": "shm", "size": 1 << 20, "blob": true, "p50_ns": 5_000}),
            json!({"scenario": "blob", "transport": "shm", "size": 1 << 30, "blob": true, "p50_ns": 6_000,
                   "ratio_vs": {"streamed": 0.0001}}),
            json!({"scenario": "blob", "transport": "shm", "size": 1 << 30, "blob": false, "p50_ns": 60_000_000}),
            json!({"scenario": "blob", "transport": "socket", "size": 1 << 30, "blob": true, "p50_ns": 30_000}),
        ];
        assert_eq!(
            line(&records).unwrap(),
            "summary: blob 1 GiB 6.00 µs (1.20× 1 MiB, 10000× faster than streamed)"
        );
    }

    #[test]
    fn only_the_figures_that_ran() {
        let some: Vec<Value> = full_run()
            .into_iter()
            .filter(|r| is(r, "scenario", "throughput") && size(r) == Some(65536))
            .collect();
        assert_eq!(
            line(&some).unwrap(),
            "summary: 64 KiB shm 9.1 GB/s (3.1× uds)"
        );
        let latency = vec![
            json!({"scenario": "latency", "transport": "shm", "size": 4096,
                                  "wait": "spin", "p50_ns": 1_507_000}),
        ];
        assert_eq!(line(&latency).unwrap(), "summary: rt 4 KiB 1.51 ms");
        assert_eq!(line(&[json!({"machine": "x"})]), None);
        assert_eq!(line(&[]), None);
    }

    #[test]
    fn the_bridge_against_tcp() {
        let records = vec![
            json!({"scenario": "bridge", "transport": "bridge", "measures": "throughput", "size": 65536,
                   "bytes_per_sec": 900_000_000u64}),
            json!({"scenario": "bridge", "transport": "bridge", "measures": "throughput", "size": 1 << 20,
                   "bytes_per_sec": 1_400_000_000u64, "ratio_vs": {"tcp": 0.52}}),
            json!({"scenario": "bridge", "transport": "shm", "measures": "throughput", "size": 1 << 20,
                   "bytes_per_sec": 9_000_000_000u64}),
            json!({"scenario": "bridge", "transport": "bridge", "measures": "latency", "size": 4096, "p50_ns": 90_000}),
            json!({"scenario": "bridge", "transport": "bridge", "measures": "latency", "size": 64, "p50_ns": 60_000}),
            json!({"scenario": "bridge", "transport": "bridge", "measures": "setup", "size": 1, "p50_ns": 400_000}),
        ];
        assert_eq!(
            line(&records).unwrap(),
            "summary: bridge 1 MiB 1.40 GB/s (0.52× tcp) · bridge rt 60.0 µs · bridge setup 400.0 µs"
        );
    }

    #[test]
    fn fault_scenarios_summarize_too() {
        let records = vec![
            json!({"scenario": "crash", "group": "shm producer", "p99_ns": 400_000}),
            json!({"scenario": "crash", "group": "all", "p99_ns": 3_200_000}),
            json!({"scenario": "soak", "survivor_p99_ns": 3_410_000, "unexpected_errors": 0}),
            json!({"scenario": "flood", "p99_ratio": 1.22}),
        ];
        assert_eq!(
            line(&records).unwrap(),
            "summary: crash kill→error p99 3.20 ms · soak p99 3.41 ms (0 unexpected errors) · flood setup p99 1.22× quiet"
        );
    }
}
