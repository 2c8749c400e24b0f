//! `flood`: one user (uid 65534 when run as root) floods the broker with
//! calls beyond its quotas and malformed connections; another user's
//! call-setup latency (call → first item over shared memory) is measured in
//! quiet and flood phases, interleaved. The flood must not more than double
//! the other user's setup p99.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use shmbus_client::Connection;

use super::harness::{call_numbers, ms, pct, Broker, Proc};
use super::peer::Role;
use crate::cli::FaultOptions;

const SEC: Duration = Duration::from_secs(1);

/// A flooder's calls so far: opened, refused.
type Counts = (u64, u64);
/// The flooding user when the harness runs as root.
const FLOOD_UID: u32 = 65534;

/// One call's setup: call → first item, then the rest of it.
fn setup_ns(conn: &Connection) -> Result<u64, String> {
    let t = Instant::now();
    let mut call = call_numbers(conn, "victim", 1, true).map_err(|e| e.to_string())?;
    let rx = call.receiver().ok_or("no receiver")?;
    if rx.recv::<u64>().map_err(|e| e.to_string())? != Some(0) {
        return Err("first item wrong".into());
    }
    let ns = t.elapsed().as_nanos() as u64;
    if rx.recv::<u64>().map_err(|e| e.to_string())?.is_some() {
        return Err("more than one item".into());
    }
    call.finish().map_err(|e| e.to_string())?;
    Ok(ns)
}

fn phase(conn: &Connection, calls: usize) -> Result<Vec<u64>, String> {
    let mut v = (0..calls)
        .map(|_| setup_ns(conn))
        .collect::<Result<Vec<_>, _>>()?;
    v.sort_unstable();
    Ok(v)
}

/// A copy of this binary that another user may run.
fn world_executable(dir: &Path) -> Result<std::path::PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let copy = dir.join("shmbus-bench");
    std::fs::copy(&exe, &copy).map_err(|e| e.to_string())?;
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| e.to_string())?;
    Ok(copy)
}

/// Runs the phases and prints the comparison; JSON records and failures.
pub fn run(o: &FaultOptions) -> Result<(Vec<Value>, usize), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let broker = Broker::start()?;
    let root = nix::unistd::geteuid().is_root();
    let flood_uid = root.then_some(FLOOD_UID);
    // Let the flooding user reach the socket and run the binary.
    let open = |p: &Path, mode| std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode));
    open(broker.dir(), 0o755).map_err(|e| e.to_string())?;
    open(&broker.socket, 0o666).map_err(|e| e.to_string())?;
    let flood_exe = world_executable(broker.dir())?;

    // Held until the end: dropping a `Proc` kills it.
    let _service = Proc::serve(&exe, &broker.socket, "victim", 0)?;
    let conn = Connection::connect(&broker.socket).map_err(|e| e.to_string())?;
    phase(&conn, o.calls.min(50))?; // warm-up

    // Under load from the flooding user: the phase's setup times, and the
    // flooder's last "calls" counts.
    let loaded = |role: &Role| -> Result<(Vec<u64>, Option<Counts>), String> {
        let mut load = Proc::start(&flood_exe, &broker.socket, role, flood_uid)?;
        load.expect("calls", 10 * SEC)?;
        // Let the load build up before measuring; a flood beyond quota runs
        // until the broker refuses its calls.
        std::thread::sleep(Duration::from_millis(300));
        if matches!(role, Role::Flood { hold, .. } if *hold >= 300) {
            let t = Instant::now();
            while t.elapsed() < 20 * SEC {
                let l = load.expect("calls", 2 * SEC)?;
                if l.split_once(' ').is_some_and(|(_, r)| r != "0") {
                    break;
                }
            }
        }
        let v = phase(&conn, o.calls)?;
        let counts = load.expect("calls", 2 * SEC).ok().and_then(|l| {
            let (a, b) = l.split_once(' ')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        });
        load.kill();
        // Let the broker clean up after the flooder.
        std::thread::sleep(Duration::from_millis(200));
        Ok((v, counts))
    };
    // The phases of a round: nothing else; the flooding user's CPU load
    // alone; its heavy but legitimate use of the bus (within its quotas);
    // its flood beyond its quotas (measured once the broker refuses it).
    let phases: [(&str, Option<Role>); 4] = [
        ("quiet", None),
        ("cpu", Some(Role::Spin { threads: 4 })),
        (
            "busy",
            Some(Role::Flood {
                name: "flood".into(),
                threads: 4,
                hold: 16,
            }),
        ),
        (
            "flood",
            Some(Role::Flood {
                name: "flood".into(),
                threads: 4,
                hold: 300,
            }),
        ),
    ];
    let mut progress = crate::progress::Progress::new(o.repeat * phases.len());
    let mut all: Vec<Vec<u64>> = vec![Vec::new(); phases.len()];
    let mut rounds = Vec::new();
    let mut counts = vec![(0u64, 0u64); phases.len()];
    for _ in 0..o.repeat {
        let mut round = Vec::new();
        for (i, (name, role)) in phases.iter().enumerate() {
            progress.show(&format!("flood: {name} phase"));
            let v = match role {
                None => phase(&conn, o.calls)?,
                Some(role) => {
                    let (v, c) = loaded(role)?;
                    if let Some((ok, refused)) = c {
                        counts[i].0 += ok;
                        counts[i].1 += refused;
                    }
                    v
                }
            };
            progress.step();
            round.push((pct(&v, 50.0), pct(&v, 99.0)));
            all[i].extend(v);
        }
        rounds.push(round);
    }
    progress.clear();
    for v in &mut all {
        v.sort_unstable();
    }
    let p99 = |i: usize| pct(&all[i], 99.0);
    let ratio = p99(3) as f64 / p99(0).max(1) as f64;

    println!();
    println!(
        "flood: call setup (call → first item, shm) of one user while another ({}) loads the machine; \
         {} rounds of {} calls per phase, phases interleaved:",
        match flood_uid {
            Some(u) => format!("uid {u}"),
            None => "the same uid: not run as root, so no second user".into(),
        },
        o.repeat,
        o.calls
    );
    println!("  quiet: nothing else runs");
    println!("  cpu:   4 threads spinning, no bus traffic (the machine's share of CPU alone)");
    println!("  busy:  4 threads calling their own service without pause, 16 streams open each (within quota)");
    println!("  flood: the same holding 300 streams each, beyond the 1024-stream quota, plus malformed connections; measured once the broker refuses");
    print!("{:<6}", "round");
    for (name, _) in &phases {
        print!(
            " {:>10} {:>10}",
            format!("{name} p50"),
            format!("{name} p99")
        );
    }
    println!("   (ms)");
    let row = |label: &str, r: &[(u64, u64)]| {
        print!("{label:<6}");
        for (a, b) in r {
            print!(" {:>10} {:>10}", ms(*a), ms(*b));
        }
        println!();
    };
    for (i, r) in rounds.iter().enumerate() {
        row(&(i + 1).to_string(), r);
    }
    let total: Vec<(u64, u64)> = all.iter().map(|v| (pct(v, 50.0), pct(v, 99.0))).collect();
    row("all", &total);
    let vs = |i: usize| p99(i) as f64 / p99(0).max(1) as f64;
    println!(
        "p99 against quiet: flood beyond quota {ratio:.2} (target ≤ 2), busy within quota {:.2}, CPU load alone {:.2}; \
         the flooder's calls: busy {} opened, flood {} opened and {} refused",
        vs(2),
        vs(1),
        counts[2].0,
        counts[3].0,
        counts[3].1
    );
    let mut record = json!({
        "scenario": "flood",
        "flood_uid": flood_uid,
        "calls_per_phase": o.calls,
        "rounds": o.repeat,
        "p99_ratio": ratio,
        "flood_calls_opened": counts[3].0,
        "flood_calls_refused": counts[3].1,
        "busy_calls_opened": counts[2].0,
    });
    for (i, (name, _)) in phases.iter().enumerate() {
        record[format!("{name}_p50_ns")] = pct(&all[i], 50.0).into();
        record[format!("{name}_p99_ns")] = p99(i).into();
    }
    Ok((vec![record], 0))
}
