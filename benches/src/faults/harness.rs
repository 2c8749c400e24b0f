//! What the fault scenarios share: a private broker and peer processes of
//! their own, the numbers download they call, percentiles and formatting.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use shmbus_client::{Connection, CreditSpec, StreamMode, TransportPreference};

use super::peer::{self, Role};
use crate::os::mono_ns;

/// A private broker as a separate process, for one fault scenario.
pub struct Broker {
    child: Child,
    /// Its socket.
    pub socket: PathBuf,
    /// Its process id.
    pub pid: u32,
    dir: tempfile::TempDir,
}

impl Broker {
    /// Starts `shmbus-bench --role broker` on a fresh socket.
    pub fn start() -> Result<Broker, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let socket = dir.path().join("bus.sock");
        let child = crate::broker::start(&socket)?;
        let pid = child.id();
        Ok(Broker {
            child,
            socket,
            pid,
            dir,
        })
    }

    /// The broker's open descriptors.
    pub fn fds(&self) -> usize {
        shmbus::sys::open_fd_count(self.pid).unwrap_or(0)
    }

    /// What the broker's descriptors refer to (`socket:[…]`,
    /// `/memfd:… (deleted)`, …), sorted: to tell what a leak is.
    pub fn fd_targets(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(format!("/proc/{}/fd", self.pid))
            .map(|d| {
                d.flatten()
                    .filter_map(|e| std::fs::read_link(e.path()).ok())
                    .map(|t| t.display().to_string())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// The broker's resident memory, KiB.
    pub fn rss_kib(&self) -> u64 {
        crate::os::rss_kib(self.pid).unwrap_or(0)
    }

    /// Waits up to `limit` for the descriptor count to come back to
    /// `baseline`; the count it ended at.
    pub fn settle_fds(&self, baseline: usize, limit: Duration) -> usize {
        let t = Instant::now();
        loop {
            let n = self.fds();
            if n <= baseline || t.elapsed() > limit {
                return n;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The directory holding the socket.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// A fault peer process: its lines arrive on a channel; killed when dropped.
pub struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    /// Starts `exe --role fault` for `role`, as `uid` when given.
    pub fn start(exe: &Path, socket: &Path, role: &Role, uid: Option<u32>) -> Result<Proc, String> {
        let mut cmd = Command::new(exe);
        cmd.args(["--role", "fault", "--socket"])
            .arg(socket)
            .arg("--job")
            .arg(serde_json::to_string(role).map_err(|e| e.to_string())?)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if let Some(uid) = uid {
            use std::os::unix::process::CommandExt;
            cmd.uid(uid).gid(uid);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start a peer: {e}"))?;
        let out = child.stdout.take().ok_or("no stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Proc { child, lines })
    }

    /// Starts a [`Role::Serve`] service named `name` (this user) and waits
    /// until it serves.
    pub fn serve(exe: &Path, socket: &Path, name: &str, delay_us: u64) -> Result<Proc, String> {
        let role = Role::Serve {
            name: name.to_string(),
            delay_us,
        };
        let service = Proc::start(exe, socket, &role, None)?;
        service.expect("ready", Duration::from_secs(10))?;
        Ok(service)
    }

    /// Waits for the next line starting with `prefix` (others are skipped)
    /// and returns the rest of it.
    pub fn expect(&self, prefix: &str, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    if let Some(rest) = l.strip_prefix(prefix) {
                        return Ok(rest.trim_start().to_string());
                    }
                }
                Err(_) => return Err(format!("no `{prefix}` line within {timeout:?}")),
            }
        }
    }

    /// Every line that arrived so far.
    pub fn drain(&self) -> Vec<String> {
        self.lines.try_iter().collect()
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL; returns the [`mono_ns`] just before the signal.
    pub fn kill(&mut self) -> u64 {
        self.kill_and_reap().0
    }

    /// SIGKILL; the [`mono_ns`] just before the signal and once the kernel
    /// had finished the process (its descriptors closed).
    pub fn kill_and_reap(&mut self) -> (u64, u64) {
        let at = mono_ns();
        let _ = self.child.kill();
        let _ = self.child.wait();
        (at, mono_ns())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Parses the timestamp that starts an event line's rest.
pub fn stamp(rest: &str) -> Option<u64> {
    rest.split_whitespace().next()?.parse().ok()
}

/// Starts a download of [`peer::NUMBERS`] from `name`.
pub fn call_numbers(
    conn: &Connection,
    name: &str,
    count: u64,
    shm: bool,
) -> shmbus_client::Result<shmbus_client::Call> {
    conn.call(name, peer::NUMBERS)
        .mode(StreamMode::Download)
        .args_typed(&count)?
        .credit(CreditSpec::items(8))
        .transport(if shm {
            TransportPreference::SharedMemory
        } else {
            TransportPreference::Socket
        })
        .start()
}

/// Rings this process still maps or holds open.
pub fn rings_held() -> usize {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let mapped = maps.lines().filter(|l| l.contains("shmbus-stream")).count();
    let open = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter(|t| t.to_string_lossy().contains("shmbus-stream"))
                .count()
        })
        .unwrap_or(0);
    mapped + open
}

/// Percentile `q` (0–100) of sorted nanosecond values.
pub fn pct(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 * q / 100.0).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// Milliseconds with two decimals.
pub fn ms(ns: u64) -> String {
    format!("{:.2}", ns as f64 / 1e6)
}
