//! `crash`: SIGKILL of a producer or a consumer at random points, over
//! both transports. The survivor must get an error within 100 ms (p99);
//! nothing may leak: rings in the surviving process, broker descriptors.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use shmbus_client::Connection;

use super::harness::{call_numbers, ms, pct, rings_held, stamp, Broker, Proc};
use super::peer::Role;
use crate::cli::FaultOptions;
use crate::os::mono_ns;

const SEC: Duration = Duration::from_secs(1);

/// Where in a stream's life the kill lands.
const POINTS: [&str; 4] = [
    "after setup",
    "mid-stream",
    "blocked on credit",
    "asleep waiting",
];

struct Trial {
    victim: &'static str,
    shm: bool,
    point: &'static str,
    delay_ns: u64,
    clean: bool,
}

/// Runs the trials and prints the distribution; JSON records and failures.
pub fn run(o: &FaultOptions) -> Result<(Vec<Value>, usize), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let broker = Broker::start()?;
    let conn = Connection::connect(&broker.socket).map_err(|e| e.to_string())?;
    let baseline = broker.fds();
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    let mut trials = Vec::with_capacity(o.trials);
    let mut leaks = 0usize;
    let started = Instant::now();
    let mut progress = crate::progress::Progress::new(o.trials);
    for t in 0..o.trials {
        progress.show("crash trials");
        let shm = rng.u64(..2) == 0;
        let point = POINTS[rng.u64(..4) as usize];
        let name = format!("crash-{t}");
        let trial = if rng.u64(..2) == 0 {
            // The producer (a service process) dies; we are the consumer.
            let delay_us = match point {
                "asleep waiting" => 3000,
                "mid-stream" => 300,
                _ => 0,
            };
            let mut service = Proc::serve(&exe, &broker.socket, &name, delay_us)?;
            let mut call = call_numbers(&conn, &name, u64::MAX, shm).map_err(|e| e.to_string())?;
            let rx = call.receiver().ok_or("no receiver")?;
            let read = match point {
                "after setup" => 0,
                _ => 1 + rng.u64(..50),
            };
            for _ in 0..read {
                rx.recv::<u64>().map_err(|e| e.to_string())?;
            }
            let killed = service.kill();
            let end = loop {
                match rx.recv::<u64>() {
                    Ok(Some(_)) => continue,
                    other => break other,
                }
            };
            let delay_ns = mono_ns().saturating_sub(killed);
            drop(call);
            if rings_held() != 0 {
                leaks += 1;
            }
            Trial {
                victim: "producer",
                shm,
                point,
                delay_ns,
                clean: matches!(end, Err(shmbus_client::Error::PeerGone(_))),
            }
        } else {
            // The consumer dies; the service process reports its error.
            let delay_us = if point == "asleep waiting" { 3000 } else { 0 };
            let service = Proc::serve(&exe, &broker.socket, &name, delay_us)?;
            let mut consumer = Proc::start(
                &exe,
                &broker.socket,
                &Role::Consume {
                    name: name.clone(),
                    shm,
                },
                None,
            )?;
            match point {
                "after setup" | "asleep waiting" => consumer.expect("open", 10 * SEC)?,
                _ => consumer.expect("received 1000", 10 * SEC)?,
            };
            let killed = consumer.kill();
            let line = service.expect("failed", 10 * SEC)?;
            let at = stamp(&line).ok_or("unparsable failure line")?;
            Trial {
                victim: "consumer",
                shm,
                point,
                delay_ns: at.saturating_sub(killed),
                clean: true,
            }
        };
        trials.push(trial);
        progress.step();
    }
    progress.clear();
    drop(conn);
    let fds_end = broker.settle_fds(baseline, 5 * SEC);
    let secs = started.elapsed().as_secs_f64();

    println!();
    println!(
        "crash: {} trials in {secs:.0} s: SIGKILL of a producer or a consumer {}, shm or socket at random; \
         delay = kill to the survivor's error (CLOCK_MONOTONIC across processes)",
        trials.len(),
        POINTS.join(" / ")
    );
    println!(
        "  (\"asleep waiting\": the producer pauses 3 ms between items, so the consumer sleeps; when the \
         consumer is the one killed, that producer notices at its next send, up to 3 ms later)"
    );
    println!(
        "{:<26} {:>7} {:>9} {:>9} {:>9} {:>9} {:>8}",
        "killed / transport", "trials", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "clean"
    );
    let mut groups: BTreeMap<String, Vec<&Trial>> = BTreeMap::new();
    for t in &trials {
        let transport = if t.shm { "shm" } else { "socket" };
        groups
            .entry(format!("{} / {transport}", t.victim))
            .or_default()
            .push(t);
        groups
            .entry(format!("any / {}", t.point))
            .or_default()
            .push(t);
        groups.entry("all".into()).or_default().push(t);
    }
    let mut records = Vec::new();
    let mut failures = 0;
    for (label, ts) in &groups {
        let mut d: Vec<u64> = ts.iter().map(|t| t.delay_ns).collect();
        d.sort_unstable();
        let clean = ts.iter().filter(|t| t.clean).count();
        println!(
            "{label:<26} {:>7} {:>9} {:>9} {:>9} {:>9} {:>8}",
            d.len(),
            ms(pct(&d, 50.0)),
            ms(pct(&d, 99.0)),
            ms(pct(&d, 99.9)),
            ms(*d.last().unwrap_or(&0)),
            format!("{clean}/{}", d.len())
        );
        records.push(json!({
            "scenario": "crash",
            "group": label,
            "trials": d.len(),
            "p50_ns": pct(&d, 50.0),
            "p99_ns": pct(&d, 99.0),
            "p999_ns": pct(&d, 99.9),
            "max_ns": d.last(),
            "clean": clean,
        }));
        if label == "all" && pct(&d, 99.0) > 100_000_000 {
            println!("crash: p99 above 100 ms");
            failures += 1;
        }
        if clean != d.len() {
            failures += 1;
        }
    }
    println!(
        "leaks: trials leaving a ring mapped or open in the surviving caller: {leaks}; \
         broker descriptors {baseline} before, {fds_end} after the trials"
    );
    if leaks > 0 || fds_end > baseline {
        failures += 1;
    }
    records.push(json!({
        "scenario": "crash",
        "group": "leaks",
        "trials": trials.len(),
        "rings_leaked": leaks,
        "broker_fds_before": baseline,
        "broker_fds_after": fds_end,
    }));
    Ok((records, failures))
}
