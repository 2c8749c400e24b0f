//! What the harness asks of the operating system: a clock shared by all
//! processes, CPU time and memory of a process from `/proc`, descriptors
//! handed to a child by inheritance, and a description of the machine.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use nix::fcntl::{fcntl, FcntlArg};
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::time::{clock_gettime, ClockId};
use nix::unistd::{sysconf, SysconfVar};

/// Nanoseconds on `CLOCK_MONOTONIC`, which every process of the machine shares.
pub fn mono_ns() -> u64 {
    let ts = clock_gettime(ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

/// Sleeps until [`mono_ns`] reaches `deadline`.
pub fn sleep_until(deadline: u64) {
    let now = mono_ns();
    if deadline > now {
        std::thread::sleep(Duration::from_nanos(deadline - now));
    }
}

fn clock_ticks_per_sec() -> u64 {
    match sysconf(SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => t as u64,
        // The kernel's USER_HZ for /proc, fixed at 100 by the Linux ABI.
        _ => 100,
    }
}

/// User plus system CPU time of process `pid` (`None`: this process), in
/// nanoseconds, from `/proc/<pid>/stat` (clock-tick resolution).
pub fn cpu_ns(pid: Option<u32>) -> io::Result<u64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let stat = std::fs::read_to_string(path)?;
    // The command name may hold spaces; the fields after its ')' do not.
    let after = stat.rsplit_once(')').map(|(_, a)| a).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| -> io::Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed /proc stat"))
    };
    // Fields 14 and 15 of stat(5); `after` starts at field 3.
    let ticks = field(11)? + field(12)?;
    Ok(ticks * 1_000_000_000 / clock_ticks_per_sec())
}

/// Resident set size of process `pid` in KiB (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no VmRSS"))
}

/// A duplicate of `fd` without close-on-exec, for a child to inherit. The
/// harness spawns children from one thread only, so no other child can
/// inherit it by accident before the caller drops it.
pub fn inheritable(fd: impl AsFd) -> io::Result<OwnedFd> {
    Ok(nix::unistd::dup(fd)?)
}

/// Takes ownership of a descriptor this process inherited, by number.
pub fn inherited(raw: RawFd) -> io::Result<OwnedFd> {
    fcntl(
        // SAFETY: only used for this one F_GETFD probe, which fails cleanly
        // (EBADF) when `raw` is not open.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(raw) },
        FcntlArg::F_GETFD,
    )
    .map_err(|e| io::Error::other(format!("inherited descriptor {raw}: {e}")))?;
    // SAFETY: the parent passed `raw` to this process alone, it is open (the
    // probe above), and nothing else in this process owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    fcntl(&fd, FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))?;
    Ok(fd)
}

/// Formats descriptors for a child's `--fds` argument.
pub fn fd_list(fds: &[OwnedFd]) -> String {
    fds.iter()
        .map(|f| f.as_raw_fd().to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Raises the soft limit on open descriptors to the hard limit (fan-out
/// opens hundreds of streams).
pub fn raise_fd_limit() {
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// The process listening on a Unix socket, from `SO_PEERCRED`.
pub fn listener_pid(path: &std::path::Path) -> Option<u32> {
    let sock = std::os::unix::net::UnixStream::connect(path).ok()?;
    let creds = shmbus::sys::peer_credentials(&sock).ok()?;
    u32::try_from(creds.pid).ok()
}

/// The 1, 5 and 15 minute load averages (`/proc/loadavg`): how busy the
/// machine was with other work around the run.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// CPU model, CPU count and kernel release, for the report header.
pub fn machine() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    format!("{model}, {cpus} CPUs available, Linux {kernel}")
}
