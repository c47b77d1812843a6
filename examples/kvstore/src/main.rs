//! The kvstore service.
//!
//! ```text
//! cargo run -p kvstore -- --dir /tmp/kv \
//!     --admin-listen 127.0.0.1:9868 --admin-token-file /tmp/kv-token
//! ```
//!
//! Prints its addresses, then serves until it is stopped (Ctrl-C, SIGTERM, a kill: redb
//! commits are durable, so a kill loses no acknowledged write) or, when its stdin is a
//! pipe, until that pipe closes (a clean stop, for a supervising process or a test).
//!
//! Cluster mode (see docs/kvstore.md, "Run a 3-node cluster"):
//!
//! ```text
//! kvstore --dir /tmp/kv0 --node-id kv0 --coordinator --cluster-dir /tmp/kv-cluster --coordinator-port 9870 \
//!     --cluster-token-file /tmp/kv-cluster-token \
//!     --admin-listen 127.0.0.1:9868 --admin-token-file /tmp/kv-token
//! kvstore --dir /tmp/kv1 --node-id kv1 --join 127.0.0.1:9870 --cluster-token-file /tmp/kv-cluster-token
//! ```
//!
//! Every node of a cluster needs the cluster token (`--cluster-token-file`,
//! `--cluster-token` or `$KVSTORE_CLUSTER_TOKEN`): the coordinator serves the member link
//! behind it and admits only members presenting it.
//!
//! TLS: `--tls-cert FILE --tls-key FILE` serve the HTTP API, the admin endpoint and (on
//! the coordinator) the member link over TLS; `--tls-client-ca FILE` also requires client
//! certificates signed by that CA. A member reaches a TLS coordinator with `--tls-ca FILE`
//! (and presents its `--tls-cert`); with TLS the coordinator may serve members beyond
//! loopback (`--coordinator-host 0.0.0.0`).
//!
//! The value-index migration: `--migration-batch-size N`, `--migration-max-rows-per-sec N`
//! and `--migration-latency-budget-ms N` set its batch size and throttle (changeable while
//! it runs with `layoutctl migration-settings`). A single node killed or restarted while
//! it runs resumes it by itself at start-up unless an operator cancelled the finalization.
//!
//! Logs go to stderr, filtered by `RUST_LOG` (default `info`).
//!
//! The coordinator node's admin token guards `POST /cluster/finalize` and
//! `GET /cluster/status` (`Authorization: Bearer <token>`); a coordinator without one
//! refuses `POST /cluster/finalize` (403).

use std::io::Read as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use kvstore::{
    ClusterConfig, ClusterStoreConfig, FencedReads, KvFeature, KvNode, KvNodeConfig, KvOptions,
};
use layout_core::http::{BearerToken, ClientTls, ServerTls};
use layout_core::{LayoutFeature, StartIntent};

/// The environment variable holding the admin token when no flag gives it.
const ADMIN_TOKEN_ENV: &str = "KVSTORE_ADMIN_TOKEN";

/// The environment variable holding the cluster token when no flag gives it.
const CLUSTER_TOKEN_ENV: &str = "KVSTORE_CLUSTER_TOKEN";

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Intent {
    Normal,
    Upgrade,
    Downgrade,
}

#[derive(Parser, Debug)]
#[command(
    about = "A key/value service whose on-disk layout upgrades with layout-core",
    after_help = "Side-by-side copy into another kvstore: kvstore copy --from URL --to URL \
                  [--transform NAME] [--continuous] (kvstore copy --help)"
)]
struct Args {
    /// A test seam: run the store's clock this many ms ahead (negative: behind) of the
    /// system clock, to simulate clock skew between nodes.
    #[arg(long, hide = true, allow_hyphen_values = true)]
    clock_offset_ms: Option<i64>,
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
    /// The admin bearer token (on the command line it shows in the process list). Without
    /// it or `--admin-token-file`, `$KVSTORE_ADMIN_TOKEN`.
    #[arg(long)]
    admin_token: Option<String>,
    /// The software version this binary plays: a feature name or a layout version.
    #[arg(long, default_value = "CompareAndSwap")]
    software_version: String,
    /// Why it starts.
    #[arg(long, value_enum, default_value = "normal")]
    intent: Intent,
    /// The layout version a fresh install starts at (default: the software version). A
    /// new member of a pre-finalized cluster needs the cluster's version.
    #[arg(long)]
    initial_version: Option<String>,
    /// Run the cluster coordinator in this node (members join it with `--join`). Give it
    /// an admin token (`--admin-listen` with a token): the token guards
    /// `/cluster/finalize`, which is refused without one.
    #[arg(long, conflicts_with = "join")]
    coordinator: bool,
    /// Where the coordinator keeps the cluster state: `embedded` (a file in
    /// `--cluster-dir`) or `etcd:URL[,URL...]` (needs the `etcd` feature).
    #[arg(long, default_value = "embedded", requires = "coordinator")]
    cluster_store: String,
    /// The embedded cluster store's directory (coordinator).
    #[arg(long, requires = "coordinator")]
    cluster_dir: Option<PathBuf>,
    /// The etcd key prefix of this cluster (`--cluster-store etcd:...`).
    #[arg(long, default_value = "/kvstore/cluster", requires = "coordinator")]
    etcd_prefix: String,
    /// The port the coordinator serves members on (0: any; printed).
    #[arg(long, default_value_t = 0, requires = "coordinator")]
    coordinator_port: u16,
    /// The address the coordinator serves members on; anything but loopback needs
    /// `--tls-cert` (the member link is then served over TLS, requiring member
    /// certificates with `--tls-client-ca`).
    #[arg(long, default_value = "127.0.0.1", requires = "coordinator")]
    coordinator_host: std::net::IpAddr,
    /// Join the cluster whose coordinator serves members at this address, as a member.
    #[arg(long)]
    join: Option<SocketAddr>,
    /// This node's id in the cluster, stable across restarts.
    #[arg(long)]
    node_id: Option<String>,
    /// A file holding the cluster token (cluster mode: the coordinator serves the member
    /// link behind it, members present it; the same on every node, not the admin token).
    #[arg(long, conflicts_with = "cluster_token")]
    cluster_token_file: Option<PathBuf>,
    /// The cluster token (on the command line it shows in the process list). Without it
    /// or `--cluster-token-file`, `$KVSTORE_CLUSTER_TOKEN`.
    #[arg(long)]
    cluster_token: Option<String>,
    /// How often a member heartbeats, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    heartbeat_ms: u64,
    /// How long the coordinator takes a member for live after its last heartbeat, in
    /// milliseconds (a few heartbeat intervals).
    #[arg(long, default_value_t = 10_000, requires = "coordinator")]
    member_lease_ms: u64,
    /// What a member does with reads while the coordinator refuses it (fenced): `allow`
    /// (serve them) or `refuse` (503, as writes, which are always refused while fenced).
    #[arg(long, default_value = "allow", value_parser = ["allow", "refuse"], requires = "join")]
    fenced_reads: String,
    /// Serve the HTTP API and the admin endpoint over TLS with this certificate chain
    /// (PEM, leaf first).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of `--tls-cert` (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require client certificates signed by the CA(s) in this PEM file (mTLS), on the
    /// HTTP API, the admin endpoint and (coordinator) the member link.
    #[arg(long, requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// A member: reach the coordinator over TLS, trusting the CA(s) in this PEM file for
    /// its certificate; the node's `--tls-cert`/`--tls-key`, if given, are presented to a
    /// coordinator that requires client certificates.
    #[arg(long, requires = "join")]
    tls_ca: Option<PathBuf>,
    /// Keys per batch of the value-index migration (one transaction and checkpoint
    /// each); changeable while it runs with `layoutctl migration-settings`.
    #[arg(long, default_value = "10000", value_parser = clap::value_parser!(u64).range(1..))]
    migration_batch_size: u64,
    /// The most rows per second the value-index migration copies (default: no limit).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    migration_max_rows_per_sec: Option<u64>,
    /// A foreground-latency budget for the value-index migration, in milliseconds: it
    /// waits between batches while the 99th percentile of the puts' latency is over it
    /// (default: none).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    migration_latency_budget_ms: Option<u64>,
}

fn cluster_config(args: &Args) -> Result<Option<ClusterConfig>, String> {
    if !args.coordinator && args.join.is_none() {
        return Ok(None);
    }
    let node_id = args
        .node_id
        .clone()
        .ok_or("--coordinator and --join need --node-id (stable across restarts)")?;
    let token = cluster_token(args)?;
    let config = match args.join {
        Some(coordinator) => {
            let reads = if args.fenced_reads == "refuse" {
                FencedReads::Refuse
            } else {
                FencedReads::Allow
            };
            let config = ClusterConfig::member(node_id, coordinator).with_fenced_reads(reads);
            match link_tls(args)? {
                Some(tls) => config.with_link_tls(tls),
                None => config,
            }
        }
        None => ClusterConfig::coordinator(node_id, cluster_store(args)?)
            .with_coordinator_port(args.coordinator_port)
            .with_link_host(args.coordinator_host),
    };
    Ok(Some(
        config
            .with_cluster_token(token)
            .with_heartbeat_interval(Duration::from_millis(args.heartbeat_ms.max(1)))
            .with_member_lease_ttl(Duration::from_millis(args.member_lease_ms.max(1))),
    ))
}

/// A member's TLS for the member link: `--tls-ca`, and the node's own certificate.
fn link_tls(args: &Args) -> Result<Option<ClientTls>, String> {
    let Some(ca) = &args.tls_ca else {
        return Ok(None);
    };
    let tls = ClientTls::with_ca_file(ca).map_err(|e| format!("--tls-ca: {e}"))?;
    match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => tls
            .with_identity_files(cert, key)
            .map(Some)
            .map_err(|e| format!("--tls-cert/--tls-key: {e}")),
        _ => Ok(Some(tls)),
    }
}

/// The cluster token of `--cluster-token-file`, `--cluster-token` or
/// `$KVSTORE_CLUSTER_TOKEN`, in that order (the environment is a fallback, as for the
/// admin token).
fn cluster_token(args: &Args) -> Result<BearerToken, String> {
    let (token, from) = match (&args.cluster_token_file, &args.cluster_token) {
        (Some(path), _) => (
            std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read the cluster token file {}: {e}", path.display()))?
                .trim()
                .to_owned(),
            "--cluster-token-file",
        ),
        (None, Some(token)) => (token.clone(), "--cluster-token"),
        (None, None) => (
            std::env::var(CLUSTER_TOKEN_ENV).map_err(|_| {
                format!(
                    "--coordinator and --join need the cluster token: \
                     --cluster-token-file, --cluster-token or {CLUSTER_TOKEN_ENV}"
                )
            })?,
            CLUSTER_TOKEN_ENV,
        ),
    };
    BearerToken::new(token).map_err(|e| format!("{from}: {e}"))
}

fn cluster_store(args: &Args) -> Result<ClusterStoreConfig, String> {
    match args.cluster_store.as_str() {
        "embedded" => {
            let dir = args
                .cluster_dir
                .clone()
                .ok_or("--cluster-store embedded needs --cluster-dir")?;
            Ok(ClusterStoreConfig::Embedded { dir })
        }
        other => match other.strip_prefix("etcd:") {
            Some(endpoints) => etcd_store(endpoints, &args.etcd_prefix),
            None => Err(format!(
                "--cluster-store {other:?}: expected `embedded` or `etcd:URL[,URL...]`"
            )),
        },
    }
}

#[cfg(feature = "etcd")]
fn etcd_store(endpoints: &str, prefix: &str) -> Result<ClusterStoreConfig, String> {
    let endpoints: Vec<String> = endpoints
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::to_owned)
        .collect();
    if endpoints.is_empty() {
        return Err("--cluster-store etcd: needs at least one endpoint URL".to_owned());
    }
    Ok(ClusterStoreConfig::Etcd {
        endpoints,
        prefix: prefix.to_owned(),
    })
}

#[cfg(not(feature = "etcd"))]
fn etcd_store(_endpoints: &str, _prefix: &str) -> Result<ClusterStoreConfig, String> {
    Err(
        "--cluster-store etcd:... needs a kvstore built with the `etcd` feature \
         (cargo run -p kvstore --features etcd); \
         the embedded store needs nothing extra"
            .to_owned(),
    )
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

/// The TLS settings of `--tls-cert`, `--tls-key` and `--tls-client-ca`, if given.
fn server_tls(args: &Args) -> Result<Option<ServerTls>, Box<dyn std::error::Error>> {
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        return Ok(None);
    };
    let tls = ServerTls::from_pem_files(cert, key)?;
    Ok(Some(match &args.tls_client_ca {
        Some(ca) => tls.with_client_ca_file(ca)?,
        None => tls,
    }))
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`), so warnings such as a reset
/// of the index migration reach the operator.
fn install_logging() {
    use std::io::IsTerminal as _;
    use tracing_subscriber::EnvFilter;
    let filter = match EnvFilter::try_from_default_env() {
        Ok(filter) => filter,
        Err(e) => {
            if std::env::var_os(EnvFilter::DEFAULT_ENV).is_some() {
                eprintln!("kvstore: warning: ignoring RUST_LOG ({e}); logging at info");
            }
            EnvFilter::new("info")
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let mut config = KvNodeConfig::new(&args.dir)
        .with_software_version(feature(&args.software_version)?)
        .with_intent(match args.intent {
            Intent::Normal => StartIntent::Normal,
            Intent::Upgrade => StartIntent::Upgrade,
            Intent::Downgrade => StartIntent::Downgrade,
        })
        .with_listen(args.listen)
        .with_store_options(
            KvOptions::default()
                .with_migration_batch(usize::try_from(args.migration_batch_size).map_err(|_| {
                    format!(
                        "--migration-batch-size {} is too large",
                        args.migration_batch_size
                    )
                })?)
                .with_migration_max_rows_per_sec(args.migration_max_rows_per_sec)
                .with_migration_latency_budget(
                    args.migration_latency_budget_ms.map(Duration::from_millis),
                ),
        );
    if let Some(initial) = &args.initial_version {
        config = config.with_initial_version(feature(initial)?);
    }
    if let Some(cluster) = cluster_config(args)? {
        config = config.with_cluster(cluster);
    }
    if let Some(listen) = args.admin_listen {
        let token = match (&args.admin_token_file, &args.admin_token) {
            (Some(path), _) => std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?
                .trim()
                .to_owned(),
            (None, Some(token)) => token.clone(),
            // The environment is a fallback, not a third flag: a token exported in the
            // shell or the unit must not make `--admin-token-file` a usage error.
            (None, None) => std::env::var(ADMIN_TOKEN_ENV).map_err(|_| {
                format!(
                    "--admin-listen needs --admin-token-file, --admin-token or {ADMIN_TOKEN_ENV}"
                )
            })?,
        };
        config = config.with_admin(listen, token);
    }
    if args.coordinator && args.admin_listen.is_none() {
        eprintln!(
            "kvstore: warning: this coordinator node has no admin token, so it refuses \
             POST /cluster/finalize (403); start it with --admin-listen and a token to \
             finalize the cluster"
        );
    }
    if let Some(tls) = server_tls(args)? {
        config = config.with_tls(tls);
    }
    if let Some(offset_ms) = args.clock_offset_ms {
        let clock = kvstore::copy::OffsetClock { offset_ms };
        config.store = config.store.clone().with_clock(std::sync::Arc::new(clock));
    }
    let node = KvNode::start(config)?;
    println!("http {}", node.http_addr());
    if let Some(admin) = node.admin_addr() {
        println!("admin {admin}");
    }
    if let Some(members) = node.coordinator_addr() {
        let role = if node.coordinator().is_some() {
            "coordinator"
        } else {
            "member of"
        };
        println!("cluster {role} {members}");
    }
    println!(
        "slv {} mlv {}",
        node.manager().software_layout_version(),
        node.manager().metadata_layout_version()
    );
    serve_until_stopped();
    node.shutdown()?;
    Ok(())
}

/// Returns when a supervising process closes this one's stdin pipe (a clean stop), and
/// never otherwise: stdin on a terminal, `/dev/null` (a service manager, or a script's
/// `kvstore ... &`) or a file is no stop signal, so the node serves until it is killed
/// (redb commits are durable). Reading a terminal from the background would stop the
/// whole process (SIGTTIN), and `/dev/null` ends at once.
fn serve_until_stopped() {
    if stdin_is_a_pipe() {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        return;
    }
    loop {
        std::thread::park();
    }
}

#[cfg(unix)]
fn stdin_is_a_pipe() -> bool {
    use std::os::fd::AsFd as _;
    use std::os::unix::fs::FileTypeExt as _;
    std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .and_then(|fd| std::fs::File::from(fd).metadata())
        .is_ok_and(|m| m.file_type().is_fifo() || m.file_type().is_socket())
}

#[cfg(not(unix))]
fn stdin_is_a_pipe() -> bool {
    true
}

fn main() -> ExitCode {
    // `kvstore copy ...`: the side-by-side copy (docs/kvstore.md, "Copy side by side").
    if std::env::args_os().nth(1).is_some_and(|a| a == "copy") {
        install_logging();
        return kvstore::copy::run_cli(std::env::args_os().skip(2));
    }
    let args = Args::parse();
    install_logging();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kvstore: {e}");
            ExitCode::FAILURE
        }
    }
}
