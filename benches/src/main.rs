//! `shmbus-bench`: the shmbus benchmark harness.
//!
//! With no arguments it runs every scenario (throughput, latency, setup,
//! fanout, idle, blob, bridge) through a private broker, shmbus over shared memory and
//! over its socket fallback, each interleaved with the same work over a Unix
//! socket pair, a pipe and a bare shared-memory ring, and prints a table.
//! `--quick` runs all of it in under a minute. Every measurement runs
//! between separate processes: this binary re-executes itself with a hidden
//! `--role` (broker, service, client, baseline). See `--help`.
//!
//! # Layers
//!
//! The modules form four layers. Each uses only modules of its own layer
//! or below, and no modules use one another in a cycle (`tests/layers.rs`
//! checks both against the paths in the code); `main` sits above them all.
//!
//! 3. `runner` `report` `summary` `svg`: the orchestrator, which starts the
//!    processes and runs the scenarios' jobs, and the output: table, JSON,
//!    summary line and plot.
//! 2. `scenarios` `faults` `baselines` `peers`: what each scenario measures
//!    and how its figures read (performance and fault scenarios), and the
//!    peer processes that do the measuring: shmbus service and caller, the
//!    baselines' two sides.
//! 1. `cli` `job` `broker` `far`: the options (command line, defaults), the
//!    job a peer process is given and the outcome it reports, the private
//!    broker, the bench service's process and the bridge scenario's far
//!    host (a broker, the service and two bridges).
//! 0. `os` `checksum` `stats` `progress` `busy`: clocks and process
//!    figures, the byte pattern and checksum, statistics and their cells,
//!    the progress line, the busy-machine check.

mod baselines;
mod broker;
mod busy;
mod checksum;
mod cli;
mod far;
mod faults;
mod job;
mod os;
mod peers;
mod progress;
mod report;
mod runner;
mod scenarios;
mod stats;
mod summary;
mod svg;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Options, Role};
use job::Job;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.role {
        None => {
            let opts = Options::from_cli(&cli);
            orchestrate(&opts, &cli)
        }
        Some(role) => peer(role, &cli),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shmbus-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The fault scenarios asked for, then the performance ones; one JSON file.
fn orchestrate(opts: &Options, cli: &Cli) -> Result<(), String> {
    // Before anything starts: is other work sharing the CPUs?
    let mut records = vec![busy::check(&os::machine())];
    let mut failures = 0;
    if !opts.faults.is_empty() {
        println!("shmbus-bench: {}", os::machine());
        let (r, f) = faults::run(&opts.faults, &opts.fault)?;
        records.extend(r);
        failures += f;
    }
    // Empty when only fault scenarios were named.
    if !opts.scenarios.is_empty() {
        let r = runner::run(
            opts,
            cli.socket.as_deref(),
            cli.json.as_deref(),
            cli.plot.as_deref(),
            records,
        )?;
        failures += r.failures;
        records = r.records;
    } else if let Some(path) = cli.json.as_deref() {
        report::write_json(path, &records).map_err(|e| format!("{}: {e}", path.display()))?;
        println!("JSON: {}", path.display());
    }
    println!(
        "{}",
        summary::line(&records)
            .unwrap_or_else(|| "summary: no figures (every measurement failed)".into())
    );
    match failures {
        0 => Ok(()),
        n => Err(format!("{n} measurement(s) or check(s) failed")),
    }
}

/// A re-executed process: one role, driven by the hidden flags.
fn peer(role: Role, cli: &Cli) -> Result<(), String> {
    os::raise_fd_limit();
    // Never outlive the orchestrator (a spinning bare-ring peer would spin on).
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    let socket = || cli.socket.clone().ok_or("--socket missing");
    let job = || -> Result<Job, String> {
        serde_json::from_str(cli.job.as_deref().ok_or("--job missing")?).map_err(|e| e.to_string())
    };
    match role {
        Role::Broker => broker::run(&socket()?),
        Role::Service => {
            let name = cli.service.as_deref().ok_or("--service missing")?;
            peers::service::run(&socket()?, name).map_err(|e| e.to_string())
        }
        Role::Client => {
            let out = peers::client::run(&socket()?, &job()?).map_err(|e| e.to_string())?;
            out.emit();
            Ok(())
        }
        Role::Fault => {
            let role: faults::peer::Role =
                serde_json::from_str(cli.job.as_deref().ok_or("--job missing")?)
                    .map_err(|e| e.to_string())?;
            faults::peer::run(&socket()?, &role).map_err(|e| e.to_string())
        }
        Role::Baseline => {
            let side = cli.side.ok_or("--side missing")?;
            let out = runner::baseline(&job()?, side, &cli.fds)?;
            out.emit();
            Ok(())
        }
    }
}
