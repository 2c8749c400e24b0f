//! Support for the end-to-end tests: a real `shmbusd` on a private socket,
//! real peer processes (`shmbus-testpeer`, `shmbusctl`), and small helpers
//! to watch them.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use shmbus_client::{ConnectOptions, Connection};

mod payload;
pub use payload::{blob_holds, fill_blob, fnv1a, pattern, write_random_file};
mod proxy;
pub use proxy::TcpProxy;

/// Directory holding the workspace's built binaries.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let mut dir = exe.parent().expect("deps dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// Path of a workspace binary, failing with a clear message when unbuilt.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is not built; run `cargo build --workspace --bins` (the README's test command does)",
        path.display()
    );
    path
}

/// A broker process on a private socket, killed when dropped.
pub struct Broker {
    child: Child,
    /// The broker's socket.
    pub socket: PathBuf,
    /// Where the broker's stderr goes, when not to the test's.
    log: Option<PathBuf>,
    _dir: tempfile::TempDir,
}

impl Broker {
    /// Starts `shmbusd` with default settings.
    pub fn start() -> Broker {
        Self::start_with(&[])
    }

    /// Starts `shmbusd` with extra arguments and waits until it accepts.
    pub fn start_with(args: &[&str]) -> Broker {
        Self::start_limited(args, None)
    }

    /// Starts `shmbusd` with its file-size limit (RLIMIT_FSIZE) set to `fsize` bytes.
    pub fn start_limited(args: &[&str], fsize: Option<u64>) -> Broker {
        Self::spawn(args, fsize, None)
    }

    /// Starts `shmbusd` with its log (stderr) kept in a file, read with
    /// [`log`](Self::log).
    pub fn start_logged(args: &[&str]) -> Broker {
        Self::spawn(args, None, Some("warn"))
    }

    /// Like [`start_logged`](Self::start_logged), logging at `level`
    /// (`info` logs the start, and every stream's open and close).
    pub fn start_logged_at(level: &str, args: &[&str]) -> Broker {
        Self::spawn(args, None, Some(level))
    }

    /// What the broker logged so far (only for [`start_logged`](Self::start_logged)).
    pub fn log(&self) -> String {
        let path = self.log.as_ref().expect("broker started with start_logged");
        std::fs::read_to_string(path).expect("read broker log")
    }

    /// `log_level` set: stderr goes to a file, read with [`log`](Self::log).
    fn spawn(args: &[&str], fsize: Option<u64>, log_level: Option<&str>) -> Broker {
        let dir = tempfile::tempdir().expect("tempdir");
        // Other users (tests drop to `nobody`) must reach the socket.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod");
        let socket = dir.path().join("bus.sock");
        let mut cmd = Command::new("bash");
        let limit = fsize.map_or("unlimited".to_string(), |b| (b / 1024).to_string());
        cmd.arg("-c")
            .arg(format!("ulimit -f {limit} && exec \"$0\" \"$@\""))
            .arg(bin("shmbusd"));
        cmd.arg("--socket")
            .arg(&socket)
            .args(args)
            .env("RUST_LOG", log_level.unwrap_or("warn"))
            .stdin(Stdio::null());
        let log = log_level.map(|_| dir.path().join("shmbusd.log"));
        if let Some(path) = &log {
            cmd.stderr(std::fs::File::create(path).expect("create broker log"));
        }
        let child = cmd.spawn().expect("spawn shmbusd");
        let broker = Broker {
            child,
            socket,
            log,
            _dir: dir,
        };
        wait_until(Duration::from_secs(10), || {
            std::os::unix::net::UnixStream::connect(&broker.socket).is_ok()
        });
        broker
    }

    /// Waits until the broker has logged `n` lines (counting from 1)
    /// containing `needle`, and returns the `n`th; fails after 10 s with the
    /// log so far. For brokers started with [`start_logged`](Self::start_logged).
    pub fn wait_log(&self, needle: &str, n: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log();
            if let Some(line) = log.lines().filter(|l| l.contains(needle)).nth(n - 1) {
                return line.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "no log line {n} containing {needle:?} within 10 s:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The broker's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A client connection offering shared memory.
    pub fn connect(&self) -> Connection {
        Connection::connect(&self.socket).expect("connect to broker")
    }

    /// A client connection that does not offer shared memory.
    pub fn connect_without_shm(&self) -> Connection {
        Connection::connect_with(
            &self.socket,
            ConnectOptions {
                shared_memory: false,
            },
        )
        .expect("connect to broker")
    }

    /// Open descriptors of the broker process.
    pub fn fd_count(&self) -> usize {
        shmbus::sys::open_fd_count(self.pid()).expect("read /proc")
    }

    /// The broker's descriptor count once it has stopped changing (earlier
    /// connections, such as the readiness probe, are fully closed).
    pub fn fd_baseline(&self) -> usize {
        let mut last = self.fd_count();
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let now = self.fd_count();
            if now == last {
                return now;
            }
            last = now;
        }
    }

    /// Waits until the broker's descriptor count is back to `baseline`.
    pub fn wait_fds(&self, baseline: usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let now = self.fd_count();
            if now == baseline {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "broker holds {now} descriptors, baseline {baseline}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts a fresh broker on the same socket (after [`kill`](Self::kill)).
    pub fn restart(&mut self) {
        self.kill();
        self.child = Command::new(bin("shmbusd"))
            .arg("--socket")
            .arg(&self.socket)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn shmbusd");
        wait_until(Duration::from_secs(10), || {
            std::os::unix::net::UnixStream::connect(&self.socket).is_ok()
        });
    }

    /// Kills the broker at once (SIGKILL).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `cond` until true, panicking after `timeout`.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "condition not met within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The system call that thread `tid` of process `pid` is blocked in, as
/// its number and first argument; `None` while the thread runs (or is gone).
pub fn blocked_syscall(pid: u32, tid: u32) -> Option<(i64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall")).ok()?;
    let mut fields = text.split_whitespace();
    let nr = fields.next()?.parse().ok()?;
    let arg0 = fields.next()?.strip_prefix("0x")?;
    Some((nr, u64::from_str_radix(arg0, 16).ok()?))
}

/// True when thread `tid` of process `pid` is blocked in poll(2) or ppoll(2).
pub fn blocked_in_poll(pid: u32, tid: u32) -> bool {
    let polls = [
        libc::SYS_ppoll,
        #[cfg(target_arch = "x86_64")]
        libc::SYS_poll,
    ];
    blocked_syscall(pid, tid).is_some_and(|(nr, _)| polls.contains(&nr))
}

/// True when a thread of process `pid` is blocked writing to its descriptor `fd`.
pub fn blocked_writing(pid: u32, fd: u64) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|task| {
        let tid = task.file_name().to_string_lossy().parse().unwrap_or(0);
        blocked_syscall(pid, tid).is_some_and(|(nr, arg0)| {
            (nr == libc::SYS_write || nr == libc::SYS_writev) && arg0 == fd
        })
    })
}

/// Bytes process `pid` has passed to write system calls so far (`wchar`
/// in /proc/PID/io: files, pipes and sockets alike).
pub fn bytes_written(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()
        .and_then(|io| {
            io.lines()
                .find_map(|l| l.strip_prefix("wchar:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// A child process that is killed (SIGKILL) and reaped when dropped, so that
/// a failing test leaves none behind.
pub struct KillOnDrop(pub Child);

impl std::ops::Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits for `child` to exit; kills it and panics after `limit`.
pub fn exit_within(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("process {} still running after {limit:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends `sig` to process `pid`.
pub fn send_signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    let rc = unsafe { libc::kill(pid as i32, sig) };
    assert_eq!(
        rc,
        0,
        "kill({pid}, {sig}): {}",
        std::io::Error::last_os_error()
    );
}

/// The value of `key=` in a broker log line (up to the next space).
pub fn log_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let at = line.find(&format!(" {key}="))? + key.len() + 2;
    let rest = &line[at..];
    Some(rest.split(' ').next().unwrap_or(rest))
}

/// Ids of the streams the broker logged as opened for `service`, in order.
pub fn logged_stream_opens(log: &str, service: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains("stream open") && log_field(l, "service") == Some(service))
        .filter_map(|l| log_field(l, "stream")?.parse().ok())
        .collect()
}

/// The broker's log line closing stream `id`, if there is one.
pub fn logged_stream_close(log: &str, id: u64) -> Option<&str> {
    let id = id.to_string();
    log.lines()
        .find(|l| l.contains("stream closed") && log_field(l, "stream") == Some(id.as_str()))
}

/// A peer process whose stdout lines are collected as they arrive.
pub struct Peer {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Peer {
    /// Starts `shmbus-testpeer` with these arguments against `broker`.
    pub fn start(broker: &Broker, args: &[&str]) -> Peer {
        Self::start_at(&broker.socket, args)
    }

    /// Starts `shmbus-testpeer` against the broker listening on `socket`.
    pub fn start_at(socket: &Path, args: &[&str]) -> Peer {
        Self::start_as(socket, args, None)
    }

    /// Starts `shmbus-testpeer` running as `uid` (and the same gid), when given.
    pub fn start_as(socket: &Path, args: &[&str], uid: Option<u32>) -> Peer {
        let mut cmd = match uid {
            Some(uid) => {
                use std::os::unix::process::CommandExt;
                let mut c = Command::new(world_readable_testpeer());
                c.uid(uid).gid(uid);
                c
            }
            None => Command::new(bin("shmbus-testpeer")),
        };
        let mut child = cmd
            .args(args)
            .env("SHMBUS_SOCKET", socket)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn testpeer");
        let lines = pump(child.stdout.take().expect("stdout"));
        Peer {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Starts a `shmbus-testpeer` service role and waits until it serves.
    pub fn serve(broker: &Broker, args: &[&str]) -> Peer {
        Self::serve_at(&broker.socket, args)
    }

    /// Like [`serve`](Self::serve), for the broker listening on `socket`.
    pub fn serve_at(socket: &Path, args: &[&str]) -> Peer {
        let mut p = Peer::start_at(socket, args);
        p.expect_line("ready", Duration::from_secs(10));
        p
    }

    /// Waits for a line starting with `prefix` and returns the rest.
    pub fn expect_line(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return rest.trim().to_string();
                    }
                }
                Err(_) => panic!(
                    "no line starting {prefix:?} within {timeout:?}; saw {:?}",
                    self.seen
                ),
            }
        }
    }

    /// The latest line with `prefix` that has arrived so far, without waiting.
    pub fn latest(&mut self, prefix: &str) -> Option<String> {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        self.seen
            .iter()
            .rev()
            .find_map(|l| l.strip_prefix(prefix).map(|r| r.trim().to_string()))
    }

    /// Every line read so far, including those arrived and not yet
    /// looked at.
    pub fn seen_lines(&mut self) -> &[String] {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        &self.seen
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for exit and returns the status code.
    pub fn wait(&mut self) -> Option<i32> {
        self.child.wait().ok().and_then(|s| s.code())
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A copy of `shmbus-testpeer` that any user can run: the build directory
/// may sit below a directory other users cannot enter.
fn world_readable_testpeer() -> PathBuf {
    static COPY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    COPY.get_or_init(|| {
        use std::os::unix::fs::PermissionsExt;
        let src = bin("shmbus-testpeer");
        let meta = std::fs::metadata(&src).expect("testpeer metadata");
        let stamp = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        // One copy per build, shared by the test processes of a run.
        let path = std::env::temp_dir().join(format!("shmbus-testpeer-{stamp}-{}", meta.len()));
        if !path.exists() {
            let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
            std::fs::copy(&src, &tmp).expect("copy testpeer");
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).expect("chmod");
            std::fs::rename(&tmp, &path).expect("rename copy");
        }
        path
    })
    .clone()
}

fn pump(out: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits until `service` is registered on the broker.
pub fn wait_for_service(conn: &Connection, service: &str) {
    wait_until(Duration::from_secs(10), || {
        conn.list()
            .map(|s| s.services.iter().any(|x| x.name == service))
            .unwrap_or(false)
    });
}

/// A hand-driven protocol client, for playing a hostile or minimal peer.
pub struct RawClient {
    /// The socket.
    pub sock: std::os::unix::net::UnixStream,
    buf: Vec<u8>,
    fds: std::collections::VecDeque<std::os::fd::OwnedFd>,
}

impl RawClient {
    /// Connects without a handshake.
    pub fn connect(broker: &Broker) -> RawClient {
        let sock = std::os::unix::net::UnixStream::connect(&broker.socket).expect("connect");
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        RawClient {
            sock,
            buf: Vec::new(),
            fds: Default::default(),
        }
    }

    /// Connects and completes the handshake.
    pub fn hello(broker: &Broker, shared_memory: bool) -> RawClient {
        let mut c = Self::connect(broker);
        c.send(&shmbus::Frame::Hello {
            version: shmbus::frame::PROTOCOL_VERSION,
            caps: shmbus::Capabilities { shared_memory },
        });
        match c.recv() {
            Some((shmbus::Frame::Welcome { .. }, _)) => c,
            other => panic!("expected welcome, got {other:?}"),
        }
    }

    /// Sends raw bytes with descriptors attached.
    pub fn send_raw(
        &mut self,
        bytes: &[u8],
        fds: &[std::os::fd::BorrowedFd<'_>],
    ) -> std::io::Result<()> {
        use std::os::fd::AsFd;
        let mut rest = bytes;
        let mut first = true;
        while !rest.is_empty() {
            let n = shmbus::sys::send_with_fds(
                self.sock.as_fd(),
                rest,
                if first { fds } else { &[] },
                true,
            )?;
            first = false;
            rest = &rest[n..];
        }
        Ok(())
    }

    /// Sends a frame.
    pub fn send(&mut self, frame: &shmbus::Frame) {
        let mut b = Vec::new();
        shmbus::frame::encode(frame, &mut b);
        self.send_raw(&b, &[]).expect("send frame");
    }

    /// The next frame and its descriptors; `None` when the broker closed.
    pub fn recv(&mut self) -> Option<(shmbus::Frame, Vec<std::os::fd::OwnedFd>)> {
        use std::os::fd::AsFd;
        loop {
            if let Ok(Some((h, body))) = shmbus::frame::split_frame(&self.buf, 1 << 24) {
                let fds: Vec<_> = self.fds.drain(..h.fds as usize).collect();
                let frame = shmbus::frame::decode(&self.buf[body.clone()], fds.len())
                    .expect("broker frame");
                self.buf.drain(..body.end);
                return Some((frame, fds));
            }
            let mut chunk = vec![0u8; 65536];
            match shmbus::sys::recv_with_fds(self.sock.as_fd(), &mut chunk, &mut self.fds, true) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

/// A small deterministic random generator (xorshift64*), for hostile peers
/// and property tests.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded generator (a zero seed is replaced).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// A deterministic item sequence both peers can produce and check.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct SeqSpec {
    /// Seed of the contents and sizes.
    pub seed: u64,
    /// Items in the stream.
    pub count: u64,
    /// Largest payload after the 8-byte index.
    pub max_size: u32,
}

impl SeqSpec {
    /// Item `i`: its index, then pseudo-random bytes of a pseudo-random length.
    pub fn item(&self, i: u64) -> Vec<u8> {
        let mut rng = Rng::new(self.seed ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let len = rng.below(self.max_size as u64 + 1) as usize;
        let mut v = i.to_le_bytes().to_vec();
        v.extend((0..len).map(|_| rng.next_u64() as u8));
        v
    }

    /// The custom size function both sides use: one credit per started 16 bytes.
    pub fn custom_charge(item: &[u8]) -> u64 {
        item.len() as u64 / 16 + 1
    }
}

/// The preference that asks for exactly this transport.
pub fn pref(t: shmbus_client::Transport) -> shmbus_client::TransportPreference {
    use shmbus_client::{Transport, TransportPreference};
    match t {
        Transport::SharedMemory => TransportPreference::SharedMemory,
        Transport::Socket => TransportPreference::Socket,
    }
}

/// Declares each named `fn(Transport)` as two tests, `shm::NAME` and
/// `socket::NAME`.
#[macro_export]
macro_rules! both_transports {
    ($($name:ident),* $(,)?) => {
        mod shm {
            $(#[test] fn $name() { super::$name(shmbus_client::Transport::SharedMemory) })*
        }
        mod socket {
            $(#[test] fn $name() { super::$name(shmbus_client::Transport::Socket) })*
        }
    };
}

/// The two tokio runtimes the async tests run on: multi-thread with two
/// workers, and current-thread, each with its I/O and time drivers.
pub fn tokio_runtimes() -> Vec<(&'static str, tokio::runtime::Runtime)> {
    vec![
        (
            "multi-thread",
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("a multi-thread runtime"),
        ),
        (
            "current-thread",
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a current-thread runtime"),
        ),
    ]
}
