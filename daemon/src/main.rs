//! `shmbusd`: the shmbus broker daemon.

#![forbid(unsafe_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use shmbusd::config::{Args, Settings};
use shmbusd::server::{bind, Server};
use tracing::info;

/// Takes the socket systemd passed (socket activation), if any.
fn activated_listener() -> Result<Option<mio::net::UnixListener>, String> {
    let mut fds = sd_notify::listen_fds().map_err(|e| format!("LISTEN_FDS: {e}"))?;
    let Some(fd) = fds.next() else {
        return Ok(None);
    };
    if fds.len() > 0 {
        return Err("more than one socket passed; expected exactly one".into());
    }
    let listener = shmbus::sys::adopt_listener(fd).map_err(|e| format!("passed socket: {e}"))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("passed socket: {e}"))?;
    // Children must not think the socket is theirs.
    std::env::remove_var("LISTEN_FDS");
    std::env::remove_var("LISTEN_PID");
    std::env::remove_var("LISTEN_FDNAMES");
    Ok(Some(mio::net::UnixListener::from_std(listener)))
}

/// Binds the configured socket and applies its mode and group.
fn early_signals() -> nix::sys::signal::SigSet {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        set.add(sig);
    }
    set
}

fn own_listener(settings: &Settings) -> Result<mio::net::UnixListener, String> {
    let path = &settings.socket;
    let at = |e: &dyn std::fmt::Display| format!("cannot listen on {}: {e}", path.display());
    let listener = bind(path).map_err(|e| at(&e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(settings.socket_mode))
        .map_err(|e| at(&e))?;
    if let Some(group) = &settings.socket_group {
        set_group(path, group).map_err(|e| at(&e))?;
    }
    Ok(listener)
}

fn set_group(path: &Path, group: &str) -> Result<(), String> {
    let gid = match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => g.gid,
        Ok(None) => return Err(format!("no group named {group}")),
        Err(e) => return Err(format!("group {group}: {e}")),
    };
    nix::unistd::chown(path, None, Some(gid)).map_err(|e| format!("chown to group {group}: {e}"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let settings = match args.settings() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("shmbusd: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let log = shmbusd::logging::init(&settings.log_level);
    if let Err(e) = shmbus::sys::ignore_file_size_signal() {
        eprintln!("shmbusd: {e}");
        return ExitCode::FAILURE;
    }
    // Stop and reload signals stay pending until their handlers are in
    // place: a SIGTERM right after the socket appears then stops the broker
    // cleanly instead of killing it. Threads started meanwhile keep them
    // blocked, so they always reach the main thread.
    let early = early_signals();
    let _ = early.thread_block();
    let (listener, owned_path) = match activated_listener() {
        Ok(Some(l)) => {
            info!("using the socket passed by the service manager");
            (l, None)
        }
        Ok(None) => match own_listener(&settings) {
            Ok(l) => (l, Some(settings.socket.clone())),
            Err(e) => {
                eprintln!("shmbusd: {e}");
                return ExitCode::FAILURE;
            }
        },
        Err(e) => {
            eprintln!("shmbusd: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut server = match Server::new(listener, owned_path, settings.limits.clone()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("shmbusd: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = server.handle_signals() {
        eprintln!("shmbusd: cannot install signal handlers: {e}");
        return ExitCode::FAILURE;
    }
    let _ = early.thread_unblock();
    server.set_reloader(settings, Box::new(move || args.settings()), log);
    match server.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shmbusd: {e}");
            ExitCode::FAILURE
        }
    }
}
