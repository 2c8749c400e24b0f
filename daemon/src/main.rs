//! `shmbusd`: the shmbus broker daemon.

use std::process::ExitCode;

use clap::Parser;
use shmbusd::config::Args;
use shmbusd::server::{bind, Server};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let args = Args::parse();
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&args.log_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let limits = match args.limits() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("shmbusd: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = shmbus::sys::ignore_file_size_signal() {
        eprintln!("shmbusd: {e}");
        return ExitCode::FAILURE;
    }
    let path = args
        .socket
        .clone()
        .unwrap_or_else(shmbus::default_socket_path);
    let listener = match bind(&path) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("shmbusd: cannot listen on {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    let mut server = match Server::new(listener, Some(path), limits) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("shmbusd: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = server.stop_on_signals() {
        eprintln!("shmbusd: cannot install signal handlers: {e}");
        return ExitCode::FAILURE;
    }
    match server.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shmbusd: {e}");
            ExitCode::FAILURE
        }
    }
}
