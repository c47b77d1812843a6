//! The kvstore service.
//!
//! ```text
//! cargo run -p layout-examples --example kvstore -- --dir /tmp/kv \
//!     --admin-listen 127.0.0.1:9868 --admin-token-file /tmp/kv-token
//! ```
//!
//! Prints its addresses, then serves until stdin closes (or the process is stopped;
//! redb commits are durable, so a kill loses no acknowledged write).

use std::io::Read as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use layout_core::{LayoutFeature, StartIntent};
use layout_examples::kvstore::{KvFeature, KvNode, KvNodeConfig};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Intent {
    Normal,
    Upgrade,
    Downgrade,
}

#[derive(Parser, Debug)]
#[command(about = "A key/value service whose on-disk layout upgrades with layout-core")]
struct Args {
    /// The node's directory (layout state in `layout/`, data in `data/`).
    #[arg(long)]
    dir: PathBuf,
    /// Where the HTTP API listens.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Where the admin endpoint listens (none without it).
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// A file holding the admin bearer token.
    #[arg(long, conflicts_with = "admin_token")]
    admin_token_file: Option<PathBuf>,
    /// The admin bearer token.
    #[arg(long, env = "KVSTORE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// The software version this binary plays: a feature name or a layout version.
    #[arg(long, default_value = "CompareAndSwap")]
    software_version: String,
    /// Why it starts.
    #[arg(long, value_enum, default_value = "normal")]
    intent: Intent,
}

fn feature(name: &str) -> Result<KvFeature, String> {
    if let Ok(version) = name.parse::<u32>() {
        return KvFeature::from_layout_version(version)
            .ok_or_else(|| format!("no kvstore layout version {version}"));
    }
    KvFeature::ALL
        .iter()
        .copied()
        .find(|f| f.name().eq_ignore_ascii_case(name))
        .ok_or_else(|| {
            let names: Vec<_> = KvFeature::ALL.iter().map(|f| f.name()).collect();
            format!(
                "no kvstore layout feature {name:?}; known: {}",
                names.join(", ")
            )
        })
}

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let mut config = KvNodeConfig::new(&args.dir)
        .with_software_version(feature(&args.software_version)?)
        .with_intent(match args.intent {
            Intent::Normal => StartIntent::Normal,
            Intent::Upgrade => StartIntent::Upgrade,
            Intent::Downgrade => StartIntent::Downgrade,
        })
        .with_listen(args.listen);
    if let Some(listen) = args.admin_listen {
        let token = match (&args.admin_token_file, &args.admin_token) {
            (Some(path), _) => std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?
                .trim()
                .to_owned(),
            (None, Some(token)) => token.clone(),
            (None, None) => {
                return Err("--admin-listen needs --admin-token-file or KVSTORE_ADMIN_TOKEN".into())
            }
        };
        config = config.with_admin(listen, token);
    }
    let node = KvNode::start(config)?;
    println!("http {}", node.http_addr());
    if let Some(admin) = node.admin_addr() {
        println!("admin {admin}");
    }
    println!(
        "slv {} mlv {}",
        node.manager().software_layout_version(),
        node.manager().metadata_layout_version()
    );
    // Serve until stdin closes.
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    node.shutdown()?;
    Ok(())
}

fn main() -> ExitCode {
    match run(&Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kvstore: {e}");
            ExitCode::FAILURE
        }
    }
}
