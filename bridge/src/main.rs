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

/// Zenoh's runtimes (`app`, `acc`, `tx`, `rx`, `net`: five thread pools by
/// default) handed over to one pool of two workers, unless `ZENOH_RUNTIME` in
/// the environment says otherwise. With separate pools every 64 KiB batch
/// of a stream crossed threads several times (the socket's readiness is
/// seen on one pool, the link's reader and writer run on others); on one
/// pool a bridged stream of 64 KiB items moved about 15% more.
const ZENOH_RUNTIME: &str = "(app: (worker_threads: 2), acc: (handover: app), \
     tx: (handover: app), rx: (handover: app), net: (handover: app))";

fn main() -> ExitCode {
    if std::env::var_os("ZENOH_RUNTIME").is_none() {
        // No other thread runs yet: Zenoh reads this when it first starts
        // a runtime, and the bridge's own runtime is built below.
        std::env::set_var("ZENOH_RUNTIME", ZENOH_RUNTIME);
    }
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(bridge_main()),
        Err(e) => {
            eprintln!("shmbus-bridge: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn bridge_main() -> ExitCode {
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
