//! `layoutctl`: drive a component's layout upgrade from a terminal.
//!
//! Talks to the component's admin endpoint (feature `admin-http`) with a bearer token,
//! and reads `VERSION` files offline (`inspect`). See `docs/cli.md` for the reference
//! and the exit codes.

mod inspect;
mod terminal;

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use layout_core::admin::http::{
    AdminClient, AdminClientError, DEFAULT_ADMIN_PORT, DEFAULT_CLIENT_TIMEOUT,
};
use layout_core::admin::{
    CancelFinalizationParams, ErrorCode, FeatureView, FinalizationStatusParams,
    FinalizationStatusResponse, FinalizeParams, FinalizeResponse, MigrationSettingsParams,
    MigrationView, PrepareParams, PrepareResponse, StatusResponse, WirePrepareState,
};
use layout_core::http::BearerToken;
use layout_core::http::{ClientConfig, ClientTls};
use serde::Serialize;
use terminal::{say, warn_line};

/// Exit codes (documented in `docs/cli.md`).
mod exit {
    /// Success.
    pub(crate) const OK: u8 = 0;
    /// The operation was refused or failed (conflict, prepared, failing conditions,
    /// a failed finalization or prepare).
    pub(crate) const REFUSED: u8 = 1;
    /// Usage: bad command line, or the endpoint rejected the request as malformed.
    pub(crate) const USAGE: u8 = 2;
    /// The endpoint could not be reached, timed out, or refused the token.
    pub(crate) const CONNECTION: u8 = 3;
    /// `inspect`: the VERSION file is damaged or unreadable by this release.
    pub(crate) const DAMAGED: u8 = 4;
    /// `inspect`: there is no VERSION file.
    pub(crate) const MISSING: u8 = 5;
    /// `finalize`: the request was sent but its answer was lost, and the status read
    /// afterwards does not show the target reached: the outcome is unknown.
    pub(crate) const UNKNOWN_OUTCOME: u8 = 6;
}

const TOKEN_ENV: &str = "LAYOUTCTL_TOKEN";
const TOKEN_FILE_ENV: &str = "LAYOUTCTL_TOKEN_FILE";

#[derive(Parser)]
#[command(
    name = "layoutctl",
    version,
    about = "Drive a component's layout upgrade: status, finalize, prepare, inspect",
    after_help = "Exit codes: 0 ok, 1 refused or failed, 2 usage, 3 connection or \
                  authentication, 4 damaged VERSION file, 5 no VERSION file, 6 finalize \
                  sent but its answer lost and the target not reached (outcome unknown).\n\
                  The token comes from --token, --token-file, $LAYOUTCTL_TOKEN or \
                  $LAYOUTCTL_TOKEN_FILE, in that order."
)]
struct Cli {
    /// The component's admin endpoint.
    #[arg(
        long,
        global = true,
        env = "LAYOUTCTL_ENDPOINT",
        default_value_t = format!("http://127.0.0.1:{DEFAULT_ADMIN_PORT}")
    )]
    endpoint: String,
    /// The bearer token (visible in the process list: prefer --token-file or the
    /// environment).
    #[arg(long, global = true)]
    token: Option<String>,
    /// A file holding the bearer token.
    #[arg(long, global = true, value_name = "PATH")]
    token_file: Option<PathBuf>,
    /// Who is asking (recorded in the finalization history).
    #[arg(long, global = true, env = "LAYOUTCTL_CLIENT_ID")]
    client_id: Option<String>,
    /// How long one call to the endpoint may take, in seconds (1 to 86400).
    #[arg(
        long,
        global = true,
        default_value_t = DEFAULT_CLIENT_TIMEOUT.as_secs(),
        value_name = "SECONDS",
        value_parser = clap::value_parser!(u64).range(1..=86_400)
    )]
    timeout: u64,
    /// The CA certificate (PEM) that signed the endpoint's certificate: speak TLS
    /// (https://) and trust only this CA.
    #[arg(long, global = true, env = "LAYOUTCTL_CA", value_name = "PATH")]
    ca: Option<PathBuf>,
    /// A client certificate (PEM) to present to an endpoint that requires one (mTLS);
    /// needs --key and --ca.
    #[arg(
        long,
        global = true,
        env = "LAYOUTCTL_CERT",
        value_name = "PATH",
        requires_all = ["key", "ca"]
    )]
    cert: Option<PathBuf>,
    /// The private key (PEM) of --cert.
    #[arg(
        long,
        global = true,
        env = "LAYOUTCTL_KEY",
        value_name = "PATH",
        requires = "cert"
    )]
    key: Option<PathBuf>,
    /// Log what the client does to stderr (-v: each request and its answer, -vv: the
    /// HTTP client's own trace); `$RUST_LOG`, when set, chooses instead.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// MLV, SLV, finalization status, prepare state and features.
    Status,
    /// The catalog's features and whether each is finalized.
    Features,
    /// Finalize the component (in the background), or plan it with --dry-run.
    Finalize(FinalizeArgs),
    /// The finalization status and progress (read-only).
    FinalizationStatus,
    /// Prepare the component: gate writes, flush, snapshot, purge the log.
    Prepare,
    /// Cancel prepare: accept writes again.
    CancelPrepare,
    /// Cancel the finalization: a running one stops before its next feature (a
    /// background migration between batches), and the component does not resume it by
    /// itself at its next start; `finalize` continues it.
    CancelFinalize,
    /// The component's background migrations: progress (elapsed time excludes downtime)
    /// and settings.
    Migrations,
    /// Change a background migration's batch size and throttle while it runs (from its
    /// next batch). Prints the migration with its new settings.
    MigrationSettings(MigrationSettingsArgs),
    /// A cluster's coordinator: status, exclude a dead member, move the cluster state
    /// to another store. Talks to the coordinator node's cluster routes
    /// (`<endpoint><prefix>/...`; for kvstore, --endpoint is the node's data endpoint).
    Cluster {
        /// The path prefix of the cluster routes on the endpoint.
        #[arg(long, default_value = "/cluster", value_name = "PATH")]
        prefix: String,
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Explain a VERSION file offline, damaged or not.
    Inspect {
        /// The component's directory (holding VERSION), or the VERSION file itself.
        #[arg(long, value_name = "PATH")]
        dir: PathBuf,
    },
}

/// `layoutctl migration-settings ...`.
#[derive(clap::Args)]
struct MigrationSettingsArgs {
    /// The migration (may be left out when the component has only one).
    #[arg(long)]
    name: Option<String>,
    /// Keys per batch (at least 1).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    batch_size: Option<u64>,
    /// The most rows per second (0: no limit).
    #[arg(long)]
    max_rows_per_sec: Option<u64>,
    /// The foreground-latency budget in milliseconds (0: none): the migration waits
    /// between batches while the component's request latency (p99) is over it.
    #[arg(long)]
    latency_budget_ms: Option<u64>,
}

/// `layoutctl cluster ...`.
#[derive(Subcommand)]
enum ClusterCommand {
    /// The cluster's version, finalization checkpoint and members (exclusions with
    /// who, when and the SLV they need).
    Status,
    /// Exclude a dead member so it no longer blocks finalization (recorded with the
    /// --client-id as who, and when, in the audit trail and the status).
    Exclude {
        /// The member's id.
        member: String,
        /// Why (required; recorded).
        #[arg(long, value_name = "TEXT")]
        reason: String,
    },
    /// Move the cluster state to another store, live.
    Move {
        #[command(subcommand)]
        command: MoveCommand,
    },
}

/// `layoutctl cluster move ...`.
#[derive(Subcommand)]
enum MoveCommand {
    /// Begin (or resume) a move: refused for a destination that is not empty or records
    /// another move, and for a store already moved.
    Begin {
        /// The new store: an embedded store in this directory (on the coordinator's
        /// machine).
        #[arg(long, value_name = "DIR", conflicts_with_all = ["etcd_endpoint", "etcd_prefix"], required_unless_present = "etcd_prefix")]
        embedded_dir: Option<PathBuf>,
        /// The new store: an etcd endpoint (repeatable; with --etcd-prefix).
        #[arg(long, value_name = "URL", requires = "etcd_prefix")]
        etcd_endpoint: Vec<String>,
        /// The new store: the etcd key prefix.
        #[arg(long, value_name = "PREFIX", requires = "etcd_endpoint")]
        etcd_prefix: Option<String>,
    },
    /// Where the move stands (read-only).
    Status,
    /// Compare both stores (waits for the mirror to drain).
    Verify,
    /// Recopy what differs into the new store.
    CatchUp,
    /// Commit the move: catch up with writes held, verify, serve from the new store.
    Switch,
    /// Abandon the move before its switch.
    Rollback,
}

/// `cluster ...`: one request to the coordinator node's cluster routes.
fn cluster(
    client: &AdminClient,
    client_id: &str,
    prefix: &str,
    command: ClusterCommand,
    json: bool,
) -> Result<u8, Failure> {
    let prefix = prefix.trim_end_matches('/');
    let path = |rest: &str| format!("{prefix}/{rest}");
    let (answer, kind) = match command {
        ClusterCommand::Status => (client.request_json("GET", &path("status"), None)?, "status"),
        ClusterCommand::Exclude { member, reason } => {
            let body =
                serde_json::json!({"client_id": client_id, "member": member, "reason": reason});
            (
                client.request_json("POST", &path("exclude"), Some(&body))?,
                "exclusion",
            )
        }
        ClusterCommand::Move { command } => {
            let answer = match command {
                MoveCommand::Begin {
                    embedded_dir,
                    etcd_endpoint,
                    etcd_prefix,
                } => {
                    let mut to = serde_json::Map::new();
                    if let Some(dir) = embedded_dir {
                        to.insert("embedded_dir".into(), dir.display().to_string().into());
                    }
                    if let Some(prefix) = etcd_prefix {
                        to.insert("etcd_endpoints".into(), etcd_endpoint.into());
                        to.insert("etcd_prefix".into(), prefix.into());
                    }
                    let body = serde_json::json!({"client_id": client_id, "to": to});
                    client.request_json("POST", &path("move/begin"), Some(&body))?
                }
                MoveCommand::Status => client.request_json("GET", &path("move"), None)?,
                MoveCommand::Verify => client.request_json("POST", &path("move/verify"), None)?,
                MoveCommand::CatchUp => {
                    client.request_json("POST", &path("move/catch-up"), None)?
                }
                MoveCommand::Switch => client.request_json("POST", &path("move/switch"), None)?,
                MoveCommand::Rollback => {
                    client.request_json("POST", &path("move/rollback"), None)?
                }
            };
            (answer, "move")
        }
    };
    if json {
        print_json(&answer);
    } else {
        print_cluster(kind, &answer);
    }
    Ok(exit::OK)
}

/// Prints a cluster answer as `key: value` lines (members one per line).
fn print_cluster(kind: &str, answer: &serde_json::Value) {
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".to_owned(),
        other => other.to_string(),
    };
    let Some(fields) = answer.as_object() else {
        println!("{answer}");
        return;
    };
    println!("{kind}:");
    for (key, value) in fields {
        match (key.as_str(), value) {
            ("members", serde_json::Value::Array(members)) => {
                println!("  members:");
                for m in members {
                    let field = |name: &str| m.get(name).map_or_else(String::new, text);
                    let mut line = format!(
                        "    {} slv {} mlv {} {}",
                        field("member_id"),
                        field("software_layout_version"),
                        field("metadata_layout_version"),
                        if m.get("live").and_then(serde_json::Value::as_bool) == Some(true) {
                            "live"
                        } else {
                            "not live"
                        }
                    );
                    if let Some(x) = m.get("exclusion").filter(|x| !x.is_null()) {
                        let get = |name: &str| x.get(name).map_or_else(String::new, text);
                        line = format!(
                            "{line} excluded by {} at {} ms: {} (needs SLV {})",
                            get("excluded_by"),
                            get("at_ms"),
                            get("reason"),
                            get("required_software_layout_version")
                        );
                    }
                    println!("{line}");
                }
            }
            (key, serde_json::Value::Array(items)) => {
                println!(
                    "  {key}: {}",
                    items.iter().map(text).collect::<Vec<_>>().join("; ")
                );
            }
            (key, value) => println!("  {key}: {}", text(value)),
        }
    }
}

/// The options of `finalize`.
#[derive(clap::Args)]
struct FinalizeArgs {
    /// Finalize up to this feature (default: the software layout version).
    #[arg(long, value_name = "FEATURE")]
    to: Option<String>,
    /// Only show what would run and the conditions' results.
    #[arg(long)]
    dry_run: bool,
    /// Take over an unfinished finalization bound to another client.
    #[arg(long)]
    takeover: bool,
    /// Override a failing finalize condition (repeatable; needs --reason).
    #[arg(long = "override", value_name = "CONDITION", requires = "reason")]
    overrides: Vec<String>,
    /// Why the conditions are overridden (recorded in the history).
    #[arg(long, value_name = "TEXT", requires = "overrides")]
    reason: Option<String>,
    /// Follow the finalization until it ends, with a progress bar.
    #[arg(long, conflicts_with = "dry_run")]
    watch: bool,
    /// How often --watch asks for the status, in milliseconds.
    #[arg(long, default_value_t = 200, hide = true)]
    interval_ms: u64,
}

/// A failure: what to print and the exit code.
struct Failure {
    code: u8,
    message: String,
    error_code: Option<ErrorCode>,
    http_status: Option<u16>,
    /// The exchange with the endpoint broke (nothing, or no answer, came back).
    transport: bool,
    /// What the failure may mean, on a line of its own (see [`hint`]).
    hint: Option<&'static str>,
}

impl Failure {
    fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            error_code: None,
            http_status: None,
            transport: false,
            hint: None,
        }
    }
}

impl From<AdminClientError> for Failure {
    fn from(err: AdminClientError) -> Self {
        let code = match &err {
            AdminClientError::InvalidEndpoint { .. } => exit::USAGE,
            AdminClientError::Api { status, .. } => match status {
                401 | 408 => exit::CONNECTION,
                400 | 404 | 405 | 413 | 431 => exit::USAGE,
                _ => exit::REFUSED,
            },
            _ => exit::CONNECTION,
        };
        Self {
            code,
            error_code: err.code(),
            http_status: err.http_status(),
            transport: matches!(
                err,
                AdminClientError::Transport { .. } | AdminClientError::AnswerLost { .. }
            ),
            hint: None,
            message: err.to_string(),
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            });
        }
    };
    init_logging(cli.verbose);
    let json = cli.json;
    let tls = (cli.ca.is_some(), cli.cert.is_some());
    match run(cli).map_err(|failure| hint(tls, failure)) {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            if json {
                #[derive(Serialize)]
                struct JsonFailure<'a> {
                    error: &'a str,
                    code: Option<ErrorCode>,
                    http_status: Option<u16>,
                    exit_code: u8,
                }
                let error = match failure.hint {
                    Some(hint) => format!("{}\n{hint}", failure.message),
                    None => failure.message.clone(),
                };
                print_json(&JsonFailure {
                    error: &error,
                    code: failure.error_code,
                    http_status: failure.http_status,
                    exit_code: failure.code,
                });
            } else {
                // The message may carry the endpoint's text: cleaned.
                warn_line!("layoutctl: error: {}", failure.message);
                if let Some(hint) = failure.hint {
                    eprintln!("{hint}");
                }
            }
            ExitCode::from(failure.code)
        }
    }
}

fn run(cli: Cli) -> Result<u8, Failure> {
    if let Command::Inspect { dir } = &cli.command {
        return Ok(inspect::run(dir, cli.json));
    }
    let token = token(&cli)?;
    let client = AdminClient::with_config(&cli.endpoint, token.expose(), client_config(&cli)?)?;
    let client_id = cli.client_id.clone().unwrap_or_else(default_client_id);
    let json = cli.json;
    match cli.command {
        Command::Status => {
            let status = client.status()?;
            if json {
                print_json(&status);
            } else {
                print_status(&status);
            }
        }
        Command::Features => {
            let features = client.features()?;
            if json {
                print_json(&features);
            } else {
                print_features(&features.features);
            }
        }
        Command::FinalizationStatus => {
            let status = client.finalization_status()?;
            if json {
                print_json(&status);
            } else {
                print_finalization(&status);
            }
        }
        Command::Prepare | Command::CancelPrepare => {
            let prepare = matches!(cli.command, Command::Prepare);
            let params = PrepareParams::new(Some(client_id));
            let sent = if prepare {
                client.prepare(&params)
            } else {
                client.cancel_prepare(&params)
            };
            let state = match sent {
                Ok(state) => state,
                Err(lost @ AdminClientError::AnswerLost { .. }) => {
                    return after_lost_prepare(&client, &lost, prepare, json);
                }
                Err(e) => return Err(e.into()),
            };
            if json {
                print_json(&state);
            } else {
                print_prepare(&state);
            }
        }
        Command::CancelFinalize => {
            let status = client.cancel_finalization(&CancelFinalizationParams::new(client_id))?;
            if json {
                print_json(&status);
            } else {
                match &status.cancelled_by {
                    Some(_) => say!("finalization cancelled; it will not be resumed at start-up"),
                    None if status.running => {
                        say!("finalization cancelled: the run stops before its next feature");
                    }
                    None => say!("nothing to cancel: no finalization is unfinished"),
                }
                print_finalization(&status);
            }
        }
        Command::Migrations => {
            let migrations = client.migrations()?;
            if json {
                print_json(&migrations);
            } else if migrations.migrations.is_empty() {
                say!("no background migrations");
            } else {
                for m in &migrations.migrations {
                    print_migration(m);
                }
            }
        }
        Command::MigrationSettings(args) => migration_settings(&client, client_id, args, json)?,
        Command::Finalize(args) => return finalize(&client, &client_id, args, json),
        Command::Cluster { prefix, command } => {
            return cluster(&client, &client_id, &prefix, command, json)
        }
        Command::Inspect { .. } => unreachable!("handled above"),
    }
    Ok(exit::OK)
}

/// `finalize`: run, plan (`--dry-run`) or follow (`--watch`) a finalization.
fn finalize(
    client: &AdminClient,
    client_id: &str,
    args: FinalizeArgs,
    json: bool,
) -> Result<u8, Failure> {
    let FinalizeArgs {
        to,
        dry_run,
        takeover,
        overrides,
        reason,
        watch,
        interval_ms,
    } = args;
    let mut params = FinalizeParams::new(client_id)
        .with_takeover(takeover)
        .with_dry_run(dry_run);
    if let Some(to) = &to {
        params = params.with_target(to.clone());
    }
    let reason = reason.unwrap_or_default();
    for condition in overrides {
        params = params.with_override(condition, reason.clone());
    }
    let interval = Duration::from_millis(interval_ms.max(10));
    let response = match client.finalize(&params) {
        Ok(response) => response,
        Err(lost @ AdminClientError::AnswerLost { .. }) if !dry_run => {
            let follow = watch.then_some(interval);
            return after_lost_answer(client, &lost, to.as_deref(), client_id, follow, json);
        }
        Err(e) => return Err(e.into()),
    };
    if watch {
        return match response {
            FinalizeResponse::AlreadyFinalized { .. } => {
                Ok(report_already_finalized(client, &response, json))
            }
            FinalizeResponse::Started { target_version, .. } => watch_finalization(
                client,
                client_id,
                Some(target_version),
                None,
                json,
                interval,
            ),
            _ => watch_finalization(client, client_id, None, Some(&response), json, interval),
        };
    }
    if json {
        print_json(&response);
    } else {
        print_finalize(&response);
    }
    Ok(exit::OK)
}

/// Logs to stderr: warnings by default, each request with -v, everything with -vv;
/// `RUST_LOG` overrides.
fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "warn",
        1 => "info,layout_core=debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// The timeout and, with --ca, TLS (and the client certificate of --cert/--key).
fn client_config(cli: &Cli) -> Result<ClientConfig, Failure> {
    let config = ClientConfig::new(Duration::from_secs(cli.timeout));
    let Some(ca) = &cli.ca else {
        return Ok(config);
    };
    let usage = |e: &dyn std::fmt::Display| Failure::new(exit::USAGE, e.to_string());
    let mut tls = ClientTls::with_ca_file(ca).map_err(|e| usage(&e))?;
    if let (Some(cert), Some(key)) = (&cli.cert, &cli.key) {
        tls = tls.with_identity_files(cert, key).map_err(|e| usage(&e))?;
    }
    Ok(config.with_tls(tls))
}

/// Adds what a connection failure may mean to its message, given whether TLS (--ca)
/// and a client certificate (--cert) were configured.
fn hint((ca, cert): (bool, bool), mut failure: Failure) -> Failure {
    if failure.transport {
        if !ca {
            failure.hint =
                Some("(if the endpoint serves TLS, call it as https://host:port with --ca CA.pem)");
        } else if !cert {
            failure.hint =
                Some("(if the endpoint requires a client certificate, pass --cert and --key)");
        }
    }
    failure
}

fn token(cli: &Cli) -> Result<BearerToken, Failure> {
    let auth = |e: &dyn std::fmt::Display| Failure::new(exit::CONNECTION, e.to_string());
    if let Some(token) = &cli.token {
        return BearerToken::new(token.clone()).map_err(|e| auth(&e));
    }
    if let Some(path) = &cli.token_file {
        return BearerToken::from_file(path).map_err(|e| auth(&e));
    }
    if let Ok(token) = std::env::var(TOKEN_ENV) {
        return BearerToken::new(token).map_err(|e| auth(&e));
    }
    if let Some(path) = std::env::var_os(TOKEN_FILE_ENV) {
        return BearerToken::from_file(Path::new(&path)).map_err(|e| auth(&e));
    }
    Err(Failure::new(
        exit::CONNECTION,
        format!(
            "no admin token: pass --token-file PATH (or --token), or set ${TOKEN_ENV} or \
             ${TOKEN_FILE_ENV}"
        ),
    ))
}

fn default_client_id() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".to_owned());
    format!("layoutctl:{user}")
}

fn print_json<T: Serialize>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(e) => eprintln!("layoutctl: cannot encode JSON: {e}"),
    }
}

fn print_status(s: &StatusResponse) {
    say!("component      {} (catalog {})", s.component, s.catalog);
    say!(
        "MLV            {} ({})",
        s.metadata_layout_version,
        s.metadata_layout_feature
    );
    say!(
        "SLV            {} ({})",
        s.software_layout_version,
        s.software_layout_feature
    );
    let stage = if s.needs_finalization {
        "pre-finalized (downgrade still possible)"
    } else {
        "finalized"
    };
    say!("layout         {stage}");
    say!("finalization   {}", s.finalization.status);
    if let Some(p) = &s.finalization.progress {
        say!(
            "progress       feature {} of {}: {} ({} done)",
            p.feature_index,
            p.feature_count,
            p.feature,
            p.done
        );
    }
    if let Some(e) = &s.finalization.last_error {
        say!("last error     {e}");
    }
    print_prepare_line(&s.prepare);
    say!("features:");
    print_features(&s.features);
}

fn print_features(features: &[FeatureView]) {
    let width = features.iter().map(|f| f.name.len()).max().unwrap_or(0);
    for f in features {
        let deprecated = if f.deprecated { " (deprecated)" } else { "" };
        say!(
            "  {:>3}  {:<width$}  {:<15}  {}{deprecated}",
            f.version,
            f.name,
            f.status,
            f.description
        );
    }
}

fn print_finalization(s: &FinalizationStatusResponse) {
    say!("status         {}", s.status);
    say!(
        "MLV / SLV      {} / {}",
        s.metadata_layout_version,
        s.software_layout_version
    );
    if let Some(target) = s.target_version {
        say!("target         {target}");
    }
    if let Some(client) = &s.client_id {
        say!("client         {client}");
    }
    if let Some(by) = &s.cancelled_by {
        say!("cancelled      by {by}: not resumed at start-up; finalize to continue");
    }
    if s.resumed_at_startup {
        say!(
            "resumed        at start-up, without an operator ({} time(s) in all)",
            s.resumes
        );
    }
    if let Some(p) = &s.progress {
        let total = p.total.map(|t| format!(" of {t}")).unwrap_or_default();
        say!(
            "progress       feature {} of {}: {} (action {}, {}{total} done, {} ms)",
            p.feature_index,
            p.feature_count,
            p.feature,
            p.action.as_deref().unwrap_or("none"),
            p.done,
            p.elapsed_ms
        );
    }
    if let Some(e) = &s.last_error {
        say!("last error     {e}");
    }
    if let Some(v) = &s.veto {
        let state = if s.veto_active { "active" } else { "expired" };
        say!("veto           {state}: {} (by {})", v.reason, v.client_id);
    }
    for m in &s.messages {
        say!("message        {m}");
    }
}

/// `layoutctl migration-settings`.
fn migration_settings(
    client: &AdminClient,
    client_id: String,
    args: MigrationSettingsArgs,
    json: bool,
) -> Result<(), Failure> {
    let mut params = MigrationSettingsParams::new().with_client_id(client_id);
    if let Some(name) = args.name {
        params = params.with_name(name);
    }
    if let Some(batch) = args.batch_size {
        let batch = usize::try_from(batch)
            .map_err(|_| Failure::new(exit::USAGE, format!("--batch-size {batch} is too large")))?;
        params = params.with_batch_size(batch);
    }
    if let Some(rate) = args.max_rows_per_sec {
        params = params.with_max_rows_per_sec(rate);
    }
    if let Some(budget) = args.latency_budget_ms {
        params = params.with_latency_budget_ms(budget);
    }
    let view = client.set_migration_settings(&params)?;
    if json {
        print_json(&view);
    } else {
        print_migration(&view);
    }
    Ok(())
}

fn print_migration(m: &MigrationView) {
    let total = m.total.map(|t| format!(" of {t}")).unwrap_or_default();
    say!(
        "migration      {}: {} ({}{total} rows, {} batches, run {}, {} ms)",
        m.name,
        m.state,
        m.done,
        m.batches,
        m.runs,
        m.elapsed_ms
    );
    say!(
        "settings       batch size {}, max rows/s {}, latency budget {}{}",
        m.batch_size,
        m.max_rows_per_sec
            .map_or_else(|| "none".to_owned(), |r| r.to_string()),
        m.latency_budget_ms
            .map_or_else(|| "none".to_owned(), |b| format!("{b} ms")),
        if m.latency_delay_ms > 0 {
            format!(" (waiting {} ms before each batch)", m.latency_delay_ms)
        } else {
            String::new()
        }
    );
}

fn print_prepare_line(p: &PrepareResponse) {
    match (p.supported, p.index) {
        (false, _) => say!("prepare        not supported by this component"),
        (true, Some(index)) => say!("prepare        {} at index {index}", p.state),
        (true, None) => say!("prepare        {}", p.state),
    }
    if let Some(failure) = &p.last_failure {
        say!("last prepare   failed: {failure}");
    }
}

fn print_prepare(p: &PrepareResponse) {
    match p.index {
        Some(index) => say!(
            "prepared at log index {index} ({}): writes and finalize are refused until \
             cancel-prepare",
            p.state
        ),
        None => say!("{}: the component accepts writes", p.state),
    }
}

fn print_finalize(r: &FinalizeResponse) {
    match r {
        FinalizeResponse::Started {
            client_id,
            target_version,
            ..
        } => say!(
            "finalization started by {client_id} towards layout version {target_version}; \
             follow it with `layoutctl finalization-status` (or finalize --watch)"
        ),
        FinalizeResponse::AlreadyFinalized {
            metadata_layout_version,
            ..
        } => say!("already finalized: metadata layout version {metadata_layout_version}"),
        FinalizeResponse::Done {
            finalized,
            metadata_layout_version,
            ..
        } => say!(
            "finalized {}; metadata layout version is now {metadata_layout_version}",
            finalized.join(", ")
        ),
        FinalizeResponse::DryRun { plan, .. } => {
            say!(
                "dry run: would finalize from layout version {} to {}",
                plan.from_version,
                plan.target_version
            );
            for step in &plan.steps {
                say!(
                    "  {:>3}  {}  (action: {})",
                    step.version,
                    step.feature,
                    step.action.as_deref().unwrap_or("none")
                );
            }
            for c in &plan.conditions {
                match &c.reason {
                    None => say!("  condition {}: passes", c.name),
                    Some(reason) => say!("  condition {}: FAILS: {reason}", c.name),
                }
            }
            if let Some(blocked) = &plan.blocked_by {
                say!("  blocked: {blocked}");
            }
        }
        _ => say!("{r:?}"),
    }
}

/// What `finalize --watch --json` prints at the end.
#[derive(Serialize)]
struct Watched {
    ok: bool,
    finalization: FinalizationStatusResponse,
}

/// `finalize --watch` answered "already finalized" (the MLV is at the target): there is
/// nothing to follow, whoever asks and whoever finalized, so it succeeds and says so.
/// The status shown is the read-only one: it is bound to no client, drains no one's
/// messages.
fn report_already_finalized(client: &AdminClient, response: &FinalizeResponse, json: bool) -> u8 {
    let status = client.finalization_status();
    if json {
        match status {
            Ok(mut finalization) => {
                finalization.messages.clear();
                print_json(&Watched {
                    ok: true,
                    finalization,
                });
            }
            Err(_) => print_json(response),
        }
    } else {
        if let Ok(mut shown) = status {
            shown.messages.clear();
            print_finalization(&shown);
        }
        print_finalize(response);
    }
    exit::OK
}

/// The finalize request was sent but its answer was lost: the layout may have moved.
/// Reads the status to say where it is: exit 0 when the MLV reached the target; with
/// `follow` (--watch), follows a finalization of this client still running; otherwise
/// [`exit::UNKNOWN_OUTCOME`] with what the status says.
fn after_lost_answer(
    client: &AdminClient,
    lost: &AdminClientError,
    to: Option<&str>,
    client_id: &str,
    follow: Option<Duration>,
    json: bool,
) -> Result<u8, Failure> {
    let unknown = |detail: String| {
        Failure::new(
            exit::UNKNOWN_OUTCOME,
            format!("{lost}; the outcome of finalize is unknown: {detail}"),
        )
    };
    let status = client.status().map_err(|e| {
        unknown(format!(
            "the status cannot be read either ({e}); check with `layoutctl status` before \
             finalizing again"
        ))
    })?;
    let mlv = status.metadata_layout_version;
    let target = match to {
        None => Some(status.software_layout_version),
        Some(name) => status
            .features
            .iter()
            .find(|f| f.name == name)
            .map(|f| f.version),
    };
    if let Some(target) = target.filter(|&t| mlv >= t) {
        if json {
            #[derive(Serialize)]
            struct LostAnswer<'a> {
                outcome: &'static str,
                target_reached: bool,
                target_version: u32,
                status: &'a StatusResponse,
            }
            print_json(&LostAnswer {
                outcome: "answer-lost",
                target_reached: true,
                target_version: target,
                status: &status,
            });
        } else {
            warn_line!("layoutctl: warning: {lost}");
            say!(
                "finalized: the status read afterwards shows metadata layout version {mlv} \
                 ({}), at the target {target}",
                status.metadata_layout_feature
            );
        }
        return Ok(exit::OK);
    }
    let f = &status.finalization;
    if let (Some(interval), Some(target)) = (follow, target) {
        if f.running && f.client_id.as_deref() == Some(client_id) {
            if !json {
                warn_line!("layoutctl: warning: {lost}; the finalization is running: following it");
            }
            return watch_finalization(client, client_id, Some(target), None, json, interval);
        }
    }
    let Some(target) = target else {
        return Err(unknown(format!(
            "the status read afterwards shows metadata layout version {mlv} ({}) and no \
             feature {:?}; check with `layoutctl status`",
            status.metadata_layout_feature,
            to.unwrap_or_default()
        )));
    };
    let running = match (&f.running, &f.client_id) {
        (true, Some(c)) => format!(", running for client {c}"),
        (true, None) => ", running".to_owned(),
        (false, _) => String::new(),
    };
    let last_error = f
        .last_error
        .as_ref()
        .map(|e| format!(", last error: {e}"))
        .unwrap_or_default();
    Err(unknown(format!(
        "the status read afterwards shows metadata layout version {mlv} ({}), below the \
         target {target}; finalization {}{running}{last_error}. Follow it with `layoutctl \
         finalization-status`, then finalize again if it is not running",
        status.metadata_layout_feature, f.status
    )))
}

/// `prepare` (or `cancel-prepare`) was sent and its answer lost: the status tells whether
/// it took effect. Reached: the state as the answer would have shown it, exit 0, with a
/// warning. Otherwise an unknown outcome (exit 6) saying where the component stands.
fn after_lost_prepare(
    client: &AdminClient,
    lost: &AdminClientError,
    prepare: bool,
    json: bool,
) -> Result<u8, Failure> {
    let command = if prepare { "prepare" } else { "cancel-prepare" };
    let unknown = |detail: String| {
        Failure::new(
            exit::UNKNOWN_OUTCOME,
            format!("{lost}; the outcome of {command} is unknown: {detail}"),
        )
    };
    let status = client.status().map_err(|e| {
        unknown(format!(
            "the status cannot be read either ({e}); check with `layoutctl status` before \
             running {command} again"
        ))
    })?;
    let state = &status.prepare;
    let reached = if prepare {
        state.state == WirePrepareState::Prepared
    } else {
        state.state == WirePrepareState::NotPrepared
    };
    if reached {
        if !json {
            warn_line!(
                "layoutctl: warning: {lost}; the status read afterwards shows it took effect"
            );
        }
        if json {
            print_json(state);
        } else {
            print_prepare(state);
        }
        return Ok(exit::OK);
    }
    let last_failure = state
        .last_failure
        .as_ref()
        .map(|e| format!(", last failure: {e}"))
        .unwrap_or_default();
    Err(unknown(format!(
        "the status read afterwards shows prepare state {}{last_failure}; check with \
         `layoutctl status`, then run {command} again",
        state.state
    )))
}

/// Follows a finalization to its end; exit 0 when the MLV reached `target` (when known)
/// without an error. `finished`: the answer of a finalization that ended before the
/// watch began, shown at the end.
fn watch_finalization(
    client: &AdminClient,
    client_id: &str,
    target: Option<u32>,
    finished: Option<&FinalizeResponse>,
    json: bool,
    interval: Duration,
) -> Result<u8, Failure> {
    let bar = if json || !std::io::stderr().is_terminal() {
        ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden())
    } else {
        ProgressBar::new(0)
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} features  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let params = FinalizationStatusParams::new(Some(client_id.to_owned()));
    let mut messages = Vec::new();
    let last = loop {
        let status = client.finalization_status_as(&params)?;
        for m in &status.messages {
            if json {
                messages.push(m.clone());
            } else {
                bar.suspend(|| say!("{m}"));
            }
        }
        if let Some(p) = &status.progress {
            bar.set_length(p.feature_count as u64);
            bar.set_position(p.feature_index.saturating_sub(1) as u64);
            let units = match p.total {
                Some(total) => format!(" {}/{total}", p.done),
                None if p.done > 0 => format!(" {}", p.done),
                None => String::new(),
            };
            bar.set_message(format!("{}{units}", terminal::clean(&p.feature)));
        }
        if !status.running {
            break status;
        }
        std::thread::sleep(interval);
    };
    bar.finish_and_clear();
    let reached = target.is_none_or(|t| last.metadata_layout_version >= t);
    let ok = reached && last.last_error.is_none();
    if json {
        let mut finalization = last;
        finalization.messages = messages;
        print_json(&Watched { ok, finalization });
    } else {
        let mut shown = last.clone();
        shown.messages.clear();
        print_finalization(&shown);
        if let Some(finished) = finished {
            print_finalize(finished);
        }
        if !ok {
            warn_line!(
                "layoutctl: error: finalization did not complete: {}",
                last.last_error
                    .as_deref()
                    .unwrap_or("it stopped before reaching the target")
            );
        }
    }
    Ok(if ok { exit::OK } else { exit::REFUSED })
}
