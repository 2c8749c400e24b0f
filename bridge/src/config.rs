//! The bridge's settings: command-line flags over a TOML file, and the
//! Zenoh configuration they make.

use std::path::PathBuf;

use clap::Parser;
use serde::Deserialize;

use crate::wire::valid_node;

/// `shmbus-bridge`: carries shmbus calls and streams between hosts over Zenoh.
#[derive(Parser, Debug, Default)]
#[command(version, about)]
pub struct Cli {
    /// A TOML file with the same keys (`socket`, `node`, `listen`,
    /// `connect`, `export`, `scouting`); flags win.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The local broker's socket [default: $SHMBUS_SOCKET, else the default socket].
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// This node's name on the bridge network (letters, digits, - and _).
    #[arg(long)]
    pub node: Option<String>,
    /// Zenoh endpoints to listen on (`tcp/127.0.0.1:7447`).
    #[arg(long)]
    pub listen: Vec<String>,
    /// Zenoh endpoints to connect to.
    #[arg(long)]
    pub connect: Vec<String>,
    /// Local services offered to other nodes (glob patterns, `*` and `?`);
    /// nothing is exported unless named.
    #[arg(long)]
    pub export: Vec<String>,
    /// Find other nodes by multicast scouting (off unless asked for).
    #[arg(long)]
    pub scouting: bool,
    /// A Zenoh configuration file (JSON5) to start from, for what the flags
    /// do not cover: TLS certificates, say. The flags' settings go over it.
    #[arg(long)]
    pub zenoh_config: Option<PathBuf>,
}

/// The same keys in a file.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    socket: Option<PathBuf>,
    node: Option<String>,
    #[serde(default)]
    listen: Vec<String>,
    #[serde(default)]
    connect: Vec<String>,
    #[serde(default)]
    export: Vec<String>,
    #[serde(default)]
    scouting: bool,
    zenoh_config: Option<PathBuf>,
}

/// Bytes of read buffers a link keeps (Zenoh's default: 64 KiB, one). A
/// link reads each 64 KiB batch into a buffer of its own, which stays taken
/// until the bridge has written the batch's items on; past the pool, each
/// batch gets a new allocation (slower: about 20% at 64 KiB items). 16 MiB
/// (256 batches) holds four streams' windows at once.
const RX_BUFFER: usize = 16 << 20;

/// The bridge's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The local broker's socket.
    pub socket: PathBuf,
    /// This node's name.
    pub node: String,
    /// Endpoints to listen on.
    pub listen: Vec<String>,
    /// Endpoints to connect to.
    pub connect: Vec<String>,
    /// Export patterns.
    pub export: Vec<String>,
    /// Multicast scouting on.
    pub scouting: bool,
    /// A Zenoh configuration file to start from.
    pub zenoh_config: Option<PathBuf>,
}

impl Settings {
    /// Flags over the file's keys; an error names what is wrong.
    pub fn from_cli(cli: Cli) -> Result<Settings, String> {
        let file = match &cli.config {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| format!("cannot read {}: {e}", p.display()))?;
                toml::from_str::<FileConfig>(&text).map_err(|e| format!("{}: {e}", p.display()))?
            }
            None => FileConfig::default(),
        };
        let pick = |flag: Vec<String>, file: Vec<String>| if flag.is_empty() { file } else { flag };
        let node = cli
            .node
            .or(file.node)
            .ok_or("--node NAME is required: this node's name on the bridge network")?;
        if !valid_node(&node) {
            return Err(format!(
                "node name {node:?}: use 1 to 64 letters, digits, - or _"
            ));
        }
        Ok(Settings {
            socket: cli
                .socket
                .or(file.socket)
                .unwrap_or_else(shmbus_client::default_socket_path),
            node,
            listen: pick(cli.listen, file.listen),
            connect: pick(cli.connect, file.connect),
            export: pick(cli.export, file.export),
            scouting: cli.scouting || file.scouting,
            zenoh_config: cli.zenoh_config.or(file.zenoh_config),
        })
    }

    /// The Zenoh configuration: a peer with these endpoints, scouting off
    /// unless asked for, and links declared dead after a second of silence
    /// (so that a dropped path fails calls within two).
    pub fn zenoh(&self) -> Result<zenoh::Config, String> {
        let list = |v: &[String]| {
            let items: Vec<String> = v.iter().map(|s| format!("{s:?}")).collect();
            format!("[{}]", items.join(","))
        };
        let mut c = match &self.zenoh_config {
            Some(p) => zenoh::Config::from_file(p)
                .map_err(|e| format!("zenoh configuration {}: {e}", p.display()))?,
            None => zenoh::Config::default(),
        };
        for (key, value) in [
            ("mode", "\"peer\"".to_string()),
            ("listen/endpoints", list(&self.listen)),
            ("connect/endpoints", list(&self.connect)),
            ("scouting/multicast/enabled", self.scouting.to_string()),
            ("scouting/gossip/enabled", self.scouting.to_string()),
            ("transport/link/tx/lease", "1000".to_string()),
            ("transport/link/tx/keep_alive", "4".to_string()),
            // Streams: the most batches Zenoh queues (16 of 64 KiB, against
            // 2), so that a link's writer takes a megabyte or more per
            // wake-up, and read buffers for a window of batches.
            ("transport/link/tx/queue/size/data", "16".to_string()),
            ("transport/link/rx/buffer_size", RX_BUFFER.to_string()),
        ] {
            c.insert_json5(key, &value)
                .map_err(|e| format!("zenoh setting {key} = {value}: {e}"))?;
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_and_a_node_is_required() {
        let dir = std::env::temp_dir().join(format!("bridge-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("b.toml");
        std::fs::write(
            &file,
            "node = \"a\"\nexport = [\"x*\"]\nlisten = [\"tcp/127.0.0.1:7000\"]\n",
        )
        .unwrap();
        let s = Settings::from_cli(Cli {
            config: Some(file.clone()),
            export: vec!["y".into()],
            ..Cli::default()
        })
        .unwrap();
        assert_eq!(
            (s.node.as_str(), s.export.clone()),
            ("a", vec!["y".to_string()])
        );
        assert_eq!(s.listen, vec!["tcp/127.0.0.1:7000"]);
        assert!(!s.scouting);
        s.zenoh().unwrap();
        let e = Settings::from_cli(Cli::default()).unwrap_err();
        assert!(e.contains("--node"), "{e}");
        let e = Settings::from_cli(Cli {
            node: Some("a b".into()),
            ..Cli::default()
        })
        .unwrap_err();
        assert!(e.contains("letters"), "{e}");
        // A Zenoh file to start from, under the bridge's own settings.
        let z = dir.join("zenoh.json5");
        std::fs::write(
            &z,
            "{ mode: \"client\", transport: { link: { tls: { enable_mtls: true } } } }",
        )
        .unwrap();
        let s = Settings::from_cli(Cli {
            node: Some("a".into()),
            zenoh_config: Some(z),
            ..Cli::default()
        })
        .unwrap();
        let c = s.zenoh().unwrap();
        assert_eq!(c.get_json("mode").unwrap(), "\"peer\"");
        assert_eq!(c.get_json("scouting/multicast/enabled").unwrap(), "false");
        // What the flags do not set stays as the file says.
        assert_eq!(
            c.get_json("transport/link/tls/enable_mtls").unwrap(),
            "true"
        );
        std::fs::write(&file, "nod = 1\n").unwrap();
        let e = Settings::from_cli(Cli {
            config: Some(file),
            ..Cli::default()
        })
        .unwrap_err();
        assert!(e.contains("unknown field"), "{e}");
    }
}
