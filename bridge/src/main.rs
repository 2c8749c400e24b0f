//! `shmbus-bridge`: carries shmbus calls and streams between hosts over
//! Zenoh. It is an ordinary client of the local broker (whose policy and
//! quotas apply to it) and a Zenoh peer. The services it exports are
//! announced to the other nodes; the services other nodes export are
//! registered on the local broker as `NODE/SERVICE`, so that unmodified
//! callers reach them.
//!
//! - [`wire`]: keys and messages, without I/O;
//! - [`config`]: flags, the TOML file, the Zenoh configuration;
//! - [`relay`]: one call's streams, with credit end to end;
//! - [`export`]: the service's side; [`import`]: the caller's side.

mod config;
mod export;
mod import;
mod relay;
mod wire;

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let settings = match config::Settings::from_cli(config::Cli::parse()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("shmbus-bridge: {e}");
            return ExitCode::from(2);
        }
    };
    match run(settings).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shmbus-bridge: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(s: config::Settings) -> Result<(), String> {
    let session = zenoh::open(s.zenoh()?)
        .await
        .map_err(|e| format!("cannot open the zenoh session: {e}"))?;
    let conn = shmbus_client::Connection::connect_async(&s.socket)
        .await
        .map_err(|e| e.to_string())?;
    let _alive = session
        .liveliness()
        .declare_token(wire::node_key(&s.node))
        .await
        .map_err(|e| format!("zenoh token: {e}"))?;
    let streams = relay::Streams::start(&session, &s.node).await?;
    println!("ready {}", s.node);
    let exports = tokio::spawn(export::run(
        session.clone(),
        streams.clone(),
        conn,
        s.node.clone(),
        s.export.clone(),
    ));
    let imports = tokio::spawn(import::run(
        session.clone(),
        streams,
        s.socket.clone(),
        s.node.clone(),
    ));
    tokio::select! {
        r = exports => r.map_err(|e| e.to_string())?,
        r = imports => r.map_err(|e| e.to_string())?,
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}
