//! Smoke test: a short real run of the harness (private broker, separate
//! processes, checksums) prints a throughput row for shmbus over shared
//! memory and over the socket fallback, and for every baseline.

use std::process::Command;
use std::time::{Duration, Instant};

/// Runs the harness with `args`, writing its JSON records to `json`.
fn bench(args: &[&str], json: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_shmbus-bench"))
        .args(args)
        .arg("--json")
        .arg(json)
        .output()
        .expect("run shmbus-bench")
}

#[test]
fn quick_throughput_run_prints_every_transport() {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("out.json");
    let started = Instant::now();
    let out = bench(
        &[
            "--quick",
            "--scenario",
            "throughput",
            "--sizes",
            "64K",
            "--duration",
            "0.2",
        ],
        &json,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {}\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    for transport in ["shm", "socket", "uds", "pipe", "bare_ring"] {
        let row = stdout.lines().find(|l| {
            let mut cells = l
                .split_whitespace()
                .skip_while(|c| *c == "64" || *c == "KiB");
            let ring_size = |c: &&str| c.ends_with('K') || c.ends_with('M');
            cells.next() == Some(transport)
                && cells
                    .find(|c| !(transport == "bare_ring" && ring_size(c)))
                    .is_some_and(|c| c.parse::<f64>().is_ok())
        });
        assert!(row.is_some(), "no measured row for {transport}:\n{stdout}");
    }
    let records = std::fs::read_to_string(&json).expect("JSON written");
    assert!(
        records.starts_with('[') && records.contains(r#""transport":"bare_ring""#),
        "{records}"
    );
    assert!(records.contains(r#""ratio_vs":{"#), "{records}");
    // Each baseline's configuration, as asked and as granted.
    for field in [
        r#""config":{"ring":262144,"#,
        r#""sock_buf_granted":"#,
        r#""pipe_size_granted":"#,
    ] {
        assert!(records.contains(field), "{field} missing: {records}");
    }
    // What the machine looked like at the start, busy or not.
    let first = records.lines().nth(1).unwrap_or_default();
    for field in [r#""machine":"#, r#""load_1m":"#, r#""busy":"#] {
        assert!(first.contains(field), "{field} missing: {first}");
    }
    if first.contains(r#""busy":true"#) {
        assert!(stderr.contains("warning: the machine is busy"), "{stderr}");
    }
    // The run ends with its headline figures, only those that ran.
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("summary: 64 KiB shm ")
            && last.contains(" GB/s (")
            && last.contains("× uds)"),
        "{stdout}"
    );
    assert!(!last.contains("rt ") && !last.contains("setup"), "{last}");
}

/// A short run of the fault scenarios: they pass their own checks (the
/// harness exits non-zero when a kill went unnoticed, a ring or broker
/// descriptor leaked, or a legitimate stream saw an error) and write their
/// JSON records.
#[test]
fn fault_scenarios_run_their_checks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("faults.json");
    let out = bench(
        &[
            "--scenario",
            "crash,soak,flood",
            "--trials",
            "16",
            "--soak",
            "3",
            "--calls",
            "20",
            "--repeat",
            "1",
        ],
        &json,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {}\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("crash: 16 trials"), "{stdout}");
    assert!(stdout.contains("unexpected errors: 0"), "{stdout}");
    assert!(stdout.contains("p99 against quiet"), "{stdout}");
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("summary: crash kill→error p99 ") && last.contains("flood setup p99"),
        "{stdout}"
    );
    let records = std::fs::read_to_string(&json).expect("JSON written");
    for scenario in ["crash", "soak", "flood"] {
        assert!(
            records.contains(&format!(r#""scenario":"{scenario}""#)),
            "{records}"
        );
    }
}

/// Setup with a pause before each call: every transport measures calls and
/// the table says the pause was there.
#[test]
fn setup_with_a_gap_between_calls() {
    let out = Command::new(env!("CARGO_BIN_EXE_shmbus-bench"))
        .args([
            "--quick",
            "--scenario",
            "setup",
            "--gap",
            "200",
            "--repeat",
            "1",
        ])
        .output()
        .expect("run shmbus-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exit {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("a pause of 200 µs"), "{stdout}");
    let last = stdout.lines().last().unwrap_or_default();
    assert!(last.starts_with("summary: setup "), "{stdout}");
    for transport in ["shm", "socket", "uds"] {
        let measured = stdout.lines().any(|l| {
            let mut cells = l.split_whitespace().skip_while(|c| *c == "1" || *c == "B");
            let ring_size = |c: &&str| c.ends_with('K') || c.ends_with('M');
            cells.next() == Some(transport)
                && cells
                    .find(|c| !(transport == "bare_ring" && ring_size(c)))
                    .is_some_and(|c| c.parse::<f64>().is_ok())
        });
        assert!(measured, "no measured row for {transport}:\n{stdout}");
    }
}

/// A short run of the blob scenario: a row per transport and size, the
/// sealing cost, the ratio against streaming, and the summary's figure.
#[test]
fn quick_blob_run_hands_over_and_streams() {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("blob.json");
    let out = bench(
        &[
            "--quick",
            "--scenario",
            "blob",
            "--blob-sizes",
            "0,1M",
            "--duration",
            "0.2",
        ],
        &json,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for row in ["shm blob", "socket blob", "shm streamed"] {
        // The transport column starts at the table's tenth character.
        let rows = stdout
            .lines()
            .filter(|l| l.get(9..).is_some_and(|r| r.starts_with(row)))
            .count();
        assert_eq!(rows, 2, "{row} rows:\n{stdout}");
    }
    let records = std::fs::read_to_string(&json).expect("JSON written");
    assert!(records.contains(r#""scenario":"blob""#), "{records}");
    assert!(records.contains(r#""seal_ns":"#), "{records}");
    assert!(records.contains(r#""ratio_vs":{"streamed":"#), "{records}");
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("summary: blob 1 MiB ") && last.contains("faster than streamed"),
        "{stdout}"
    );
}

/// A short run of the bridge scenario through the built `shmbus-bridge`:
/// every row measured, the stream rows against TCP, and the summary's
/// figures.
#[test]
fn quick_bridge_run_measures_every_row() {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("bridge.json");
    let out = bench(
        &[
            "--quick",
            "--scenario",
            "bridge",
            "--sizes",
            "64",
            "--repeat",
            "1",
        ],
        &json,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The transport column starts at the table's tenth character, the
    // first figure after it.
    let figures = |row: &str| {
        stdout
            .lines()
            .filter(|l| !l.starts_with("summary:"))
            .filter(|l| {
                l.get(9..)
                    .is_some_and(|r| r.starts_with(&format!("{row} ")))
            })
            .filter(|l| {
                l[9 + row.len()..]
                    .split_whitespace()
                    .next()
                    .is_some_and(|c| c.parse::<f64>().is_ok())
            })
            .count()
    };
    // Two stream sizes, one round trip size, the setup.
    assert_eq!(figures("bridge"), 4, "{stdout}");
    assert_eq!(figures("tcp auto"), 3, "{stdout}");
    assert_eq!(figures("tcp 4M"), 2, "{stdout}");
    let records = std::fs::read_to_string(&json).expect("JSON written");
    assert!(
        records.contains(r#""scenario":"bridge","transport":"bridge""#),
        "{records}"
    );
    assert!(records.contains(r#""ratio_vs":{"tcp":"#), "{records}");
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("summary: bridge 1 MiB ") && last.contains("bridge setup"),
        "{stdout}"
    );
}

/// Named on the command line, the bridge scenario without its binary is
/// an error that says where it looked.
#[test]
fn the_bridge_scenario_without_its_binary_says_so() {
    let out = Command::new(env!("CARGO_BIN_EXE_shmbus-bench"))
        .args([
            "--quick",
            "--scenario",
            "bridge",
            "--bridge",
            "/nonexistent/shmbus-bridge",
        ])
        .output()
        .expect("run shmbus-bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("no bridge binary at /nonexistent/shmbus-bridge"),
        "{stderr}"
    );
}
