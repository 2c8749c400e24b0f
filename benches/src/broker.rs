//! The private broker: this binary re-run as `--role broker`, serving on a
//! socket of its own until its standard input closes.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Starts this binary as a private broker on `socket` (it stops when its
/// standard input closes) and waits until it answers a handshake. A socket
/// that merely accepts is not enough: the broker binds it before it sets
/// up its event loop and stop handle, so descriptor counts taken then would
/// miss those (a fault scenario would see them appear later as a leak).
pub fn start(socket: &Path) -> Result<Child, String> {
    let mut child = Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
        .args(["--role", "broker", "--socket"])
        .arg(socket)
        .stdin(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the broker: {e}"))?;
    let t = Instant::now();
    while shmbus_client::Connection::connect(socket).is_err() {
        if t.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            return Err("the private broker did not start".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(child)
}

/// Runs the private broker in this process until standard input closes.
pub fn run(socket: &Path) -> Result<(), String> {
    let listener = shmbusd::server::bind(socket).map_err(|e| e.to_string())?;
    let mut server =
        shmbusd::server::Server::new(listener, Some(socket.to_path_buf()), Default::default())
            .map_err(|e| e.to_string())?;
    let stop = server.stop_handle().map_err(|e| e.to_string())?;
    std::thread::spawn(move || {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        stop.stop();
    });
    server.run().map_err(|e| e.to_string())
}
