//! `soak`: legitimate streams run for the whole time while victim streams
//! are killed at random (producer or consumer, shm or socket), a peer sends
//! malformed connections, and short calls come and go. Reports errors
//! against the faults injected, and the broker's descriptor and memory
//! drift.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use shmbus_client::Connection;

use super::harness::{call_numbers, ms, pct, stamp, Broker, Proc};
use super::peer::Role;
use crate::cli::FaultOptions;
use crate::os::mono_ns;

const SEC: Duration = Duration::from_secs(1);
/// Legitimate streams that run throughout, half over each transport.
const LEGIT: usize = 4;

/// Runs the soak and prints its report; JSON records and failures.
pub fn run(o: &FaultOptions) -> Result<(Vec<Value>, usize), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let broker = Broker::start()?;
    let (fds_start, rss_start) = (broker.fds(), broker.rss_kib());
    let targets_start = broker.fd_targets();
    let conn = Connection::connect(&broker.socket).map_err(|e| e.to_string())?;
    let mut rng = fastrand::Rng::with_seed(0x50a4);

    let mut legit = Vec::new();
    for i in 0..LEGIT {
        let name = format!("legit-{i}");
        let service = Proc::serve(&exe, &broker.socket, &name, 0)?;
        let consumer = Proc::start(
            &exe,
            &broker.socket,
            &Role::Consume {
                name,
                shm: i % 2 == 0,
            },
            None,
        )?;
        consumer.expect("open", 10 * SEC)?;
        legit.push((service, consumer, 0u64));
    }
    let garbage = Proc::start(
        &exe,
        &broker.socket,
        &Role::Garbage {
            seed: 99,
            per_sec: 100,
        },
        None,
    )?;

    let started = Instant::now();
    let until = started + Duration::from_secs_f64(o.soak_secs);
    let (mut kills, mut noticed, mut missed) = (0u64, 0u64, 0u64);
    let (mut calls_ok, mut calls_failed) = (0u64, 0u64);
    let mut delays = Vec::new();
    let mut worst: Vec<(u64, bool, bool, u64, String)> = Vec::new();
    let (mut fds_max, mut rss_max) = (fds_start, rss_start);
    let mut unexpected = Vec::new();
    let mut progress = crate::progress::Progress::new(o.soak_secs.ceil() as usize);
    let mut shown = 0;
    let mut cycle = 0u64;
    while Instant::now() < until {
        cycle += 1;
        let name = format!("victim-{cycle}");
        let shm = rng.u64(..2) == 0;
        let delay_us = [0, 0, 300][rng.u64(..3) as usize];
        let service = Proc::serve(&exe, &broker.socket, &name, delay_us)?;
        let consumer = Proc::start(&exe, &broker.socket, &Role::Consume { name, shm }, None)?;
        consumer.expect("open", 10 * SEC)?;
        std::thread::sleep(Duration::from_millis(rng.u64(..50)));
        let (mut service, mut consumer) = (service, consumer);
        kills += 1;
        let producer_killed = rng.u64(..2) == 0;
        let survivor_line = if producer_killed {
            let (at, reaped) = service.kill_and_reap();
            consumer.expect("error", 10 * SEC).map(|l| (at, reaped, l))
        } else {
            let (at, reaped) = consumer.kill_and_reap();
            service.expect("failed", 10 * SEC).map(|l| (at, reaped, l))
        };
        match survivor_line {
            Ok((at, reaped, line)) => {
                noticed += 1;
                let d = stamp(&line).unwrap_or(at).saturating_sub(at);
                delays.push(d);
                let line = format!(
                    "{line} (the killed process was reaped {} ms after the signal)",
                    ms(reaped - at)
                );
                worst.push((d, producer_killed, shm, delay_us, line));
                worst.sort_unstable_by_key(|w| std::cmp::Reverse(w.0));
                worst.truncate(3);
            }
            Err(_) => missed += 1,
        }
        // A short call alongside, checked item by item.
        let short = (|| -> Result<(), String> {
            let legit_name = "legit-0";
            let mut call = call_numbers(&conn, legit_name, 1000, rng.u64(..2) == 0)
                .map_err(|e| e.to_string())?;
            let rx = call.receiver().ok_or("no receiver")?;
            for i in 0..1000u64 {
                if rx.recv::<u64>().map_err(|e| e.to_string())? != Some(i) {
                    return Err(format!("item {i} wrong"));
                }
            }
            if rx.recv::<u64>().map_err(|e| e.to_string())?.is_some() {
                return Err("more than 1000 items".into());
            }
            call.finish().map_err(|e| e.to_string())?;
            Ok(())
        })();
        match short {
            Ok(()) => calls_ok += 1,
            Err(e) => {
                calls_failed += 1;
                unexpected.push(format!("short call: {e}"));
            }
        }
        for (i, (service, consumer, received)) in legit.iter_mut().enumerate() {
            for l in service.drain() {
                if l.starts_with("failed") {
                    unexpected.push(format!("legit service {i}: {l}"));
                }
            }
            for l in consumer.drain() {
                if let Some(n) = l.strip_prefix("received ") {
                    *received = n.parse().unwrap_or(*received);
                } else if l.starts_with("error") {
                    unexpected.push(format!("legit consumer {i}: {l}"));
                }
            }
        }
        fds_max = fds_max.max(broker.fds());
        rss_max = rss_max.max(broker.rss_kib());
        let secs = started.elapsed().as_secs() as usize;
        while shown < secs.min(o.soak_secs.ceil() as usize) {
            progress.show("soak");
            progress.step();
            shown += 1;
        }
    }
    progress.clear();
    let elapsed = started.elapsed().as_secs_f64();
    let malformed: u64 = garbage
        .drain()
        .iter()
        .filter_map(|l| l.strip_prefix("sent ")?.parse().ok())
        .max()
        .unwrap_or(0);
    drop(garbage);
    let verified: u64 = legit.iter().map(|l| l.2).sum();
    let legit_alive = legit
        .iter()
        .all(|(s, c, _)| alive(s.pid()) && alive(c.pid()));
    drop(legit);
    drop(conn);
    let fds_end = broker.settle_fds(fds_start, 5 * SEC);
    if fds_end > fds_start {
        println!(
            "  broker descriptors at the start: {targets_start:?}; at the end: {:?}",
            broker.fd_targets()
        );
    }
    let rss_end = broker.rss_kib();
    delays.sort_unstable();

    println!();
    println!(
        "soak: {elapsed:.0} s; {LEGIT} legitimate streams throughout (shm and socket), a victim stream killed \
         every cycle (producer or consumer at random), ~100 malformed connections/s, a checked 1000-item call per cycle"
    );
    println!("  injected: {kills} kills, {malformed} malformed connections (at least; counted in hundreds)");
    println!(
        "  survivors' errors: {noticed} of {kills} kills noticed, {missed} missed; delay p50 {} ms, p99 {} ms, max {} ms",
        ms(pct(&delays, 50.0)),
        ms(pct(&delays, 99.0)),
        ms(*delays.last().unwrap_or(&0))
    );
    for (d, producer_killed, shm, delay_us, line) in &worst {
        println!(
            "    slowest: {} ms, {} killed, {}, producer pausing {delay_us} µs between items; survivor said: {line}",
            ms(*d),
            if *producer_killed { "producer" } else { "consumer" },
            if *shm { "shm" } else { "socket" },
        );
    }
    println!(
        "  legitimate: {verified} items verified in order on the long streams (all still running: {legit_alive}); \
         short calls {calls_ok} ok, {calls_failed} failed; unexpected errors: {}",
        unexpected.len()
    );
    for u in unexpected.iter().take(10) {
        println!("    {u}");
    }
    println!(
        "  broker descriptors: {fds_start} at start, {fds_max} at most, {fds_end} at the end (drift {:+})",
        fds_end as i64 - fds_start as i64
    );
    println!(
        "  broker RSS: {rss_start} KiB at start, {rss_max} KiB at most, {rss_end} KiB at the end (drift {:+} KiB)",
        rss_end as i64 - rss_start as i64
    );
    let failures = usize::from(missed > 0)
        + usize::from(!unexpected.is_empty())
        + usize::from(fds_end > fds_start)
        + usize::from(!legit_alive);
    let record = json!({
        "scenario": "soak",
        "seconds": elapsed,
        "kills": kills,
        "kills_noticed": noticed,
        "kills_missed": missed,
        "malformed_connections": malformed,
        "survivor_p50_ns": pct(&delays, 50.0),
        "survivor_p99_ns": pct(&delays, 99.0),
        "survivor_max_ns": delays.last(),
        "items_verified": verified,
        "short_calls_ok": calls_ok,
        "short_calls_failed": calls_failed,
        "unexpected_errors": unexpected.len(),
        "broker_fds": {"start": fds_start, "max": fds_max, "end": fds_end},
        "broker_rss_kib": {"start": rss_start, "max": rss_max, "end": rss_end},
        "at_ns": mono_ns(),
    });
    Ok((vec![record], failures))
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}
