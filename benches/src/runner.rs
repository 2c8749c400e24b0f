//! The orchestrator: starts the private broker and the bench service as
//! processes of their own, runs every measurement as peer processes, and
//! reports.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::baselines::{self, pipe, uds};
use crate::broker;
use crate::cli::Options;
use crate::far::{self, FarHost};
use crate::job::{Job, Outcome, Scenario, Side, Transport};
use crate::os::{self, mono_ns};
use crate::progress::Progress;
use crate::report::{self, base_name, Measured, Table, BARE_RING_COPIED};
use crate::scenarios::bridge::FAR_NODE;
use crate::scenarios::{self, Context};
use crate::svg;

/// What a run leaves for the caller to report.
pub struct RunResult {
    /// Measurements that failed or whose checksums did not match.
    pub failures: usize,
    /// The JSON records: those passed in, then this run's.
    pub records: Vec<serde_json::Value>,
}

/// The broker (when private) and the bench service.
struct Bus {
    broker: Option<Child>,
    service: Child,
    socket: PathBuf,
    broker_pid: Option<u32>,
    _dir: Option<tempfile::TempDir>,
}

fn exe() -> std::io::Result<PathBuf> {
    std::env::current_exe()
}

impl Bus {
    fn start(socket: Option<&Path>, service: &str) -> Result<Bus, String> {
        let (broker, dir, broker_pid, socket) = match socket {
            Some(s) => (None, None, os::listener_pid(s), s.to_path_buf()),
            None => {
                let d = tempfile::tempdir().map_err(|e| e.to_string())?;
                let path = d.path().join("bus.sock");
                let child = broker::start(&path)?;
                let pid = child.id();
                (Some(child), Some(d), Some(pid), path)
            }
        };
        let child = far::service(&socket, service)?;
        Ok(Bus {
            broker,
            service: child,
            socket,
            broker_pid,
            _dir: dir,
        })
    }

    fn stop(mut self) {
        drop(self.service.stdin.take());
        let _ = self.service.wait();
        if let Some(mut b) = self.broker.take() {
            drop(b.stdin.take());
            let _ = b.wait();
        }
    }
}

/// A peer process whose outcome (its last stdout line) is awaited.
struct Running {
    pid: u32,
    deadline: Instant,
    rx: mpsc::Receiver<Result<Outcome, String>>,
}

impl Running {
    /// Collects `child`'s output in a thread; it is killed if it runs
    /// past `timeout`.
    fn new(child: Child, timeout: Duration) -> Running {
        let (tx, rx) = mpsc::channel();
        let pid = child.id();
        std::thread::spawn(move || {
            let r = child
                .wait_with_output()
                .map_err(|e| e.to_string())
                .and_then(|out| {
                    let text = String::from_utf8_lossy(&out.stdout);
                    match text.lines().last().map(serde_json::from_str::<Outcome>) {
                        Some(Ok(o)) if out.status.success() => Ok(o),
                        _ => {
                            let err = String::from_utf8_lossy(&out.stderr);
                            Err(format!(
                                "{}: {}",
                                out.status,
                                err.lines().last().unwrap_or("no output")
                            ))
                        }
                    }
                });
            let _ = tx.send(r);
        });
        Running {
            pid,
            deadline: Instant::now() + timeout,
            rx,
        }
    }

    /// Kills the process (it is reaped by its collecting thread).
    fn kill(&self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }

    /// Waits for the outcome until the deadline, then kills the process.
    fn outcome(self) -> Result<Outcome, String> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        self.rx.recv_timeout(left).unwrap_or_else(|_| {
            self.kill();
            Err("timed out".into())
        })
    }
}

/// Spawns this binary as a peer; it inherits duplicates of `fds` (closed
/// here once it started, so that no other child inherits them).
fn peer(args: &[&str], job: &Job, fds: &[std::os::fd::OwnedFd]) -> Result<Child, String> {
    let mine = fds
        .iter()
        .map(os::inheritable)
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|e| e.to_string())?;
    let mut cmd = Command::new(exe().map_err(|e| e.to_string())?);
    cmd.args(args)
        .arg("--job")
        .arg(serde_json::to_string(job).map_err(|e| e.to_string())?)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if !mine.is_empty() {
        cmd.arg("--fds").arg(os::fd_list(&mine));
    }
    cmd.spawn().map_err(|e| format!("cannot start a peer: {e}"))
}

/// Runs one measurement and checks that every byte arrived intact.
fn run_job(bus: &Bus, mut job: Job) -> Result<Outcome, String> {
    // A common start far enough ahead for the peers to start and connect.
    job.start_at = mono_ns() + 50_000_000 + job.streams as u64 * 1_000_000;
    let timeout = Duration::from_nanos(job.duration_ns) + Duration::from_secs(60);
    let name = job.transport.name();
    let _dir;
    let (a, b) = if job.transport.is_bus() {
        let socket = bus.socket.to_string_lossy().to_string();
        let a = peer(&["--role", "client", "--socket", &socket], &job, &[])?;
        (Running::new(a, timeout), None)
    } else {
        let fds = baselines::make_fds(&job).map_err(|e| e.to_string())?;
        let a = Running::new(
            peer(&["--role", "baseline", "--side", "a"], &job, &fds.a)?,
            timeout,
        );
        let b = match peer(&["--role", "baseline", "--side", "b"], &job, &fds.b) {
            Ok(b) => b,
            Err(e) => {
                a.kill();
                return Err(e);
            }
        };
        // Our copies go now (an end-of-file must reach the peers); the
        // setup listener's directory stays until the job is done.
        let baselines::Fds { a: fa, b: fb, dir } = fds;
        drop((fa, fb));
        _dir = dir;
        (a, Some(Running::new(b, timeout)))
    };
    let out = a.outcome().map_err(|e| format!("{name}: {e}"));
    if let (Err(_), Some(b)) = (&out, &b) {
        // Its peer failed: it may wait forever (a setup server does).
        b.kill();
    }
    let mut out = out?;
    if let Some(b) = b {
        let b = b.outcome().map_err(|e| format!("{name} peer: {e}"))?;
        if (b.checksum, b.bytes) != (out.checksum, out.bytes) {
            return Err(format!(
                "checksum mismatch: received {} bytes ({:#x}), the peer {} ({:#x})",
                out.bytes, out.checksum, b.bytes, b.checksum
            ));
        }
        out.peer_cpu_ns = b.cpu_ns;
        out.late_ns = out.late_ns.max(b.late_ns);
    }
    if let Some((sum, bytes)) = out.peer {
        if (sum, bytes) != (out.checksum, out.bytes) {
            return Err(format!(
                "checksum mismatch: received {} bytes ({:#x}), sent {bytes} ({sum:#x})",
                out.bytes, out.checksum
            ));
        }
    }
    Ok(out)
}

/// The whole run: every selected scenario, table on stdout, then JSON and plot.
pub fn run(
    o: &Options,
    socket: Option<&Path>,
    json: Option<&Path>,
    plot: Option<&Path>,
    mut records: Vec<serde_json::Value>,
) -> Result<RunResult, String> {
    os::raise_fd_limit();
    let service = format!("shmbus-bench-{}", std::process::id());
    let bus = Bus::start(socket, &service)?;
    let ctx = Context {
        service,
        broker_pid: bus.broker_pid,
    };
    println!(
        "shmbus-bench: {}; load average {}",
        os::machine(),
        os::load_average()
    );
    println!(
        "broker: {} (pid {}); {} run(s) per measurement, {} s each, interleaved with the baselines",
        if socket.is_some() {
            bus.socket.display().to_string()
        } else {
            "private, separate process".into()
        },
        bus.broker_pid.map_or("unknown".into(), |p| p.to_string()),
        o.repeat,
        o.duration
    );
    println!(
        "uds socket buffers: 4 MiB asked for throughput, elsewhere what shmbus's socket fallback asks (clamp(ring, 256 KiB, 4 MiB)); for 4 MiB asked getsockopt(SO_SNDBUF) reports {} (Linux reports twice the request); pipe capacity {} (asked {} with F_SETPIPE_SZ); --json records each baseline's configuration",
        uds::granted_buffer(4 << 20).map_or("?".into(), |b| b.to_string()),
        pipe::capacity().map_or("?".into(), |b| b.to_string()),
        pipe::PIPE_SIZE,
    );
    let mut chosen = o.scenarios.clone();
    if chosen.contains(&Scenario::Bridge) && !o.bridge.is_file() {
        let why = format!(
            "no bridge binary at {} (cargo build --release -p shmbus-bridge, or --bridge PATH)",
            o.bridge.display()
        );
        if o.bridge_named {
            return Err(format!("bridge: {why}"));
        }
        println!("bridge: skipped, {why}");
        chosen.retain(|&s| s != Scenario::Bridge);
    }
    let specs: Vec<_> = chosen.iter().map(|&s| scenarios::definition(s)).collect();
    let plans: Vec<_> = specs.iter().map(|s| s.groups(o, &ctx)).collect();
    let total: usize = plans
        .iter()
        .flatten()
        .map(|g| g.variants.len() * o.repeat)
        .sum();
    let mut progress = Progress::new(total);
    let (mut series, mut failures) = (Vec::<svg::Series>::new(), 0);
    let started = Instant::now();
    let baselines: Vec<Transport> = Transport::BASELINES
        .into_iter()
        .filter(|&t| o.has(t))
        .collect();
    for (spec, groups) in specs.iter().zip(&plans) {
        let mut bases: Vec<&'static str> = baselines.iter().map(|t| t.name()).collect();
        if spec.scenario() == Scenario::Setup {
            bases.retain(|&t| t == Transport::Uds.name());
        }
        if spec.scenario() == Scenario::Blob {
            bases = vec![report::STREAMED];
        }
        let copied = groups
            .iter()
            .flat_map(|g| &g.variants)
            .any(|v| base_name(v) == BARE_RING_COPIED);
        if copied {
            bases.push(BARE_RING_COPIED);
        }
        if groups
            .iter()
            .flat_map(|g| &g.variants)
            .any(|v| base_name(v) == report::UDS_TOKIO)
        {
            bases.push(report::UDS_TOKIO);
        }
        if groups
            .iter()
            .flat_map(|g| &g.variants)
            .any(|v| v.job.asynchronous)
        {
            bases.push(report::SYNC);
        }
        if spec.scenario() == Scenario::Bridge {
            bases = vec![Transport::Tcp.name()];
        }
        progress.clear();
        // The bridge scenario's far host, for as long as its groups run.
        let _far = match spec.scenario() {
            Scenario::Bridge => {
                match FarHost::start(&o.bridge, &bus.socket, FAR_NODE, &ctx.service) {
                    Ok(far) => Some(far),
                    Err(e) => {
                        eprintln!("shmbus-bench: bridge: {e}");
                        failures += 1;
                        continue;
                    }
                }
            }
            _ => None,
        };
        let table = Table::start(spec.as_ref(), &spec.notes(o), bases);
        for group in groups {
            let mut m = Measured {
                group,
                runs: vec![Vec::new(); group.variants.len()],
            };
            for _round in 0..o.repeat {
                for (v, variant) in group.variants.iter().enumerate() {
                    progress.show(&format!(
                        "{} {} {}",
                        spec.scenario().name(),
                        group.title,
                        variant.label()
                    ));
                    let r = run_job(&bus, variant.job.clone());
                    if let Err(e) = &r {
                        progress.clear();
                        eprintln!(
                            "shmbus-bench: {} {} {}: {e}",
                            spec.scenario().name(),
                            group.title,
                            variant.label()
                        );
                        failures += 1;
                    }
                    m.runs[v].push(r.ok());
                    progress.step();
                }
            }
            progress.clear();
            table.group(spec.as_ref(), &m);
            let late: Vec<u64> = m
                .runs
                .iter()
                .flatten()
                .flatten()
                .filter_map(|o| o.late_ns)
                .collect();
            if let Some(max) = late.iter().max() {
                println!(
                    "         note: {} run(s) above started up to {:.1} ms after the common start; their throughput includes that delay",
                    late.len(),
                    *max as f64 / 1e6
                );
            }
            records.extend(report::records(spec.as_ref(), &m));
            if spec.scenario() == Scenario::Throughput {
                add_points(&mut series, &m);
            }
        }
    }
    progress.clear();
    bus.stop();
    println!(
        "\ntotal time {:.0} s; every byte checksummed by its consumer and checked against its producer; load average {}",
        started.elapsed().as_secs_f64(),
        os::load_average()
    );
    if let Some(path) = json {
        report::write_json(path, &records).map_err(|e| format!("{}: {e}", path.display()))?;
        println!("JSON: {}", path.display());
    }
    if let Some(path) = plot {
        svg::write(path, &series).map_err(|e| format!("{}: {e}", path.display()))?;
        println!("plot: {}", path.display());
    }
    Ok(RunResult { failures, records })
}

fn add_points(series: &mut Vec<svg::Series>, m: &Measured<'_>) {
    for (v, variant) in m.group.variants.iter().enumerate() {
        let bps: Vec<f64> = m
            .ok(v)
            .iter()
            .filter_map(|o| scenarios::throughput::bytes_per_sec(o))
            .collect();
        let Some(s) = crate::stats::summarize(&bps) else {
            continue;
        };
        let label = variant.label();
        let idx = match series.iter().position(|x| x.label == label) {
            Some(i) => i,
            None => {
                series.push(svg::Series {
                    label: label.clone(),
                    dashed: variant.job.typed,
                    points: Vec::new(),
                });
                series.len() - 1
            }
        };
        series[idx]
            .points
            .push((variant.job.size, s.median, s.min, s.max));
    }
}

/// Runs one side of a baseline job on inherited descriptors.
pub fn baseline(job: &Job, side: Side, fds: &[i32]) -> Result<Outcome, String> {
    let fds = fds
        .iter()
        .map(|&f| os::inherited(f))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|e| e.to_string())?;
    baselines::run(job, side, fds).map_err(|e| e.to_string())
}
