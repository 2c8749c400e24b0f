//! The bench service's process, and the far host of the bridge scenario: a
//! broker of its own with the bench service on it, exported by a bridge
//! whose Zenoh peer listens on 127.0.0.1, and the near bridge on the run's
//! broker connected to it. Stopped (every process killed) when dropped.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::broker;

/// Waits until `child` prints the line `want` on its standard output,
/// which is read on (and dropped) to its end, so that the child never
/// writes into a closed pipe.
fn wait_line(child: &mut Child, want: &str, timeout: Duration) -> Result<(), String> {
    let out = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = mpsc::channel();
    let wanted = want.to_string();
    std::thread::spawn(move || {
        let mut found = false;
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if !found && line == wanted {
                found = true;
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(timeout)
        .map_err(|_| format!("did not print {want:?} within {timeout:?}"))
}

/// Starts this binary as the bench service `name` on the broker at
/// `socket` (it stops when its standard input closes) and waits until it
/// is registered.
pub fn service(socket: &Path, name: &str) -> Result<Child, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .args(["--role", "service", "--service", name, "--socket"])
        .arg(socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the service: {e}"))?;
    if let Err(e) = wait_line(&mut child, "ready", Duration::from_secs(10)) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!("bench service {e}"));
    }
    Ok(child)
}

/// The far host and the two bridges.
pub struct FarHost {
    /// Broker, service, far bridge, near bridge: killed in reverse order.
    children: Vec<Child>,
    _dir: tempfile::TempDir,
}

impl FarHost {
    /// Starts the far broker, the bench service `service` on it, the far
    /// bridge (node `node`, exporting the service, listening on a free
    /// loopback port) and the near bridge on the broker at `near`; returns
    /// once `node/service` is registered there.
    pub fn start(bridge: &Path, near: &Path, node: &str, name: &str) -> Result<FarHost, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let socket = dir.path().join("far.sock");
        let mut host = FarHost {
            children: Vec::new(),
            _dir: dir,
        };
        host.children.push(broker::start(&socket)?);
        host.children.push(service(&socket, name)?);
        let port = free_port()?;
        let endpoint = format!("tcp/127.0.0.1:{port}");
        let args = ["--node", node, "--listen", &endpoint, "--export", name];
        host.bridge(bridge, &socket, node, &args)?;
        host.bridge(bridge, near, "a", &["--node", "a", "--connect", &endpoint])?;
        let conn = shmbus_client::Connection::connect(near).map_err(|e| e.to_string())?;
        let name = format!("{node}/{name}");
        let t = Instant::now();
        loop {
            let listed = conn.list().map_err(|e| e.to_string())?;
            if listed.services.iter().any(|s| s.name == name) {
                return Ok(host);
            }
            if t.elapsed() > Duration::from_secs(20) {
                return Err(format!("{name} was not registered through the bridges"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts a bridge on the broker at `socket` and waits for its
    /// `ready NODE` line.
    fn bridge(
        &mut self,
        exe: &Path,
        socket: &Path,
        node: &str,
        args: &[&str],
    ) -> Result<(), String> {
        let mut child = Command::new(exe)
            .arg("--socket")
            .arg(socket)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
        let r = wait_line(
            &mut child,
            &format!("ready {node}"),
            Duration::from_secs(20),
        );
        self.children.push(child);
        r.map_err(|e| format!("bridge {node} {e}"))
    }
}

impl Drop for FarHost {
    fn drop(&mut self) {
        for mut c in self.children.drain(..).rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A TCP port on 127.0.0.1 free a moment ago.
fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind(("127.0.0.1", 0)).map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}
