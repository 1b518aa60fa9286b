//! The command line as clap sees it: global options, every command and its arguments, with
//! the names of the product contract. Parsing only; each command's behaviour lives in its own
//! module.

use crate::when;
use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8700";

/// Where `airlock serve` writes the bootstrap admin token with the default config.
pub const DEFAULT_TOKEN_FILE: &str = "airlock-data/admin.token";

#[derive(Debug, Parser)]
#[command(
    name = "airlock",
    version,
    about = "Airlock: an identity-aware gateway between AI agents and databases",
    after_help = "The API token is taken from --token, else from AIRLOCK_TOKEN, else from \
                  ./airlock-data/admin.token (the bootstrap admin token that `airlock serve` \
                  writes on first start with the default config) when that file exists."
)]
pub struct Cli {
    /// The Airlock API to talk to.
    #[arg(long, global = true, env = "AIRLOCK_SERVER", default_value = DEFAULT_SERVER, help_heading = "Global options")]
    pub server: String,

    /// API token [default: the contents of ./airlock-data/admin.token, if that file exists].
    #[arg(
        long,
        global = true,
        env = "AIRLOCK_TOKEN",
        hide_env_values = true,
        help_heading = "Global options"
    )]
    pub token: Option<String>,

    /// How results are printed.
    #[arg(long, global = true, value_enum, default_value_t = Output::Table, help_heading = "Global options")]
    pub output: Output,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Serve {
        /// The YAML config; without it every default applies (SQLite in ./airlock-data/).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Work with config files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Ask what the policy decides, without running anything; test a policy against cases.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// The approval queue.
    #[command(subcommand)]
    Approvals(ApprovalsCommand),
    /// Approve a held operation (as one of its reviewers).
    Approve {
        /// The approval request id.
        id: i64,
        /// Why, for the record.
        #[arg(long)]
        reason: Option<String>,
        /// Approve a modified operation instead of the one requested.
        #[arg(long, value_name = "SQL")]
        replace_with: Option<String>,
    },
    /// Deny a held operation (as one of its reviewers).
    Deny {
        /// The approval request id.
        id: i64,
        /// Why; the requester is told.
        #[arg(long)]
        reason: String,
    },
    /// Run one SQL statement through the gateway (for CI/CD pipelines); exit 0 ok, 1 error,
    /// 2 denied, 3 expired, 4 pending (held for review, no --wait).
    Exec(ExecArgs),
    /// The recorded history.
    #[command(subcommand)]
    Sessions(SessionsCommand),
    /// Checks of the recorded history as evidence.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Airlock-issued agent tokens (admins).
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// The identity and groups the gateway resolves from the current token.
    Whoami,
    /// A Model Context Protocol server on stdio: the gateway's connections as tools for an AI
    /// agent, with the agent's token (`AIRLOCK_TOKEN`).
    Mcp,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a config file, policies included; exit 1 with line-numbered errors.
    Check {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Print the decision for an operation and the rule that produced it.
    Explain(ExplainArgs),
    /// Run a YAML list of cases (groups, connection, sql, expect, optional rule) against a
    /// config's policies; exit 0 when every case passes, 1 otherwise.
    Test {
        /// The cases.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// The config whose policies are tested (local; asking a server is not supported yet).
        #[arg(long, value_name = "CONFIG", required = true)]
        config: PathBuf,
    },
    /// Print the live policies as a `policies:` YAML document (admins).
    Get,
    /// Replace the live policies with a `policies:` document (YAML or JSON; `-` reads standard
    /// input). Validated first; takes effect at once on every session and is recorded (admins).
    Put {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("operation").required(true).args(["sql", "command", "http"])))]
pub struct ExplainArgs {
    /// A group of the identity (repeatable, or comma-separated).
    #[arg(
        long = "group",
        value_name = "G",
        required = true,
        value_delimiter = ','
    )]
    pub groups: Vec<String>,
    /// The connection the operation targets.
    #[arg(long)]
    pub connection: String,
    /// A SQL operation.
    #[arg(long, value_name = "S")]
    pub sql: Option<String>,
    /// A shell command (SSH connections).
    #[arg(long, value_name = "S")]
    pub command: Option<String>,
    /// An HTTP request, "METHOD PATH" (HTTP and Kubernetes connections).
    #[arg(long, value_name = "METHOD PATH")]
    pub http: Option<String>,
    /// Decide locally with this config instead of asking the server.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Decide as if the gateway counted this many rows changed (rules with `rows_limit`).
    #[arg(long, value_name = "N")]
    pub rows: Option<u64>,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The Airlock connection to run on.
    pub connection: String,
    /// The SQL to run (several statements are run as one batch and judged together).
    #[arg(long, value_name = "S", required = true)]
    pub sql: String,
    /// When the statement is held for review, wait for the decision and run it if approved.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up (and withdraw the request) after this long, such as 30m.
    #[arg(long, value_name = "D", requires = "wait", value_parser = humantime::parse_duration)]
    pub timeout: Option<std::time::Duration>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StateFilter {
    Pending,
    Approved,
    Denied,
    Expired,
    Canceled,
}

impl StateFilter {
    pub fn as_str(self) -> &'static str {
        match self {
            StateFilter::Pending => "pending",
            StateFilter::Approved => "approved",
            StateFilter::Denied => "denied",
            StateFilter::Expired => "expired",
            StateFilter::Canceled => "canceled",
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum ApprovalsCommand {
    /// List the approval requests you may see.
    List {
        #[arg(long, value_enum)]
        state: Option<StateFilter>,
    },
    /// One request in full: who, what, which rule, reviewers and votes.
    Show { id: i64 },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ExportFormat {
    Jsonl,
    Csv,
}

impl ExportFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ExportFormat::Jsonl => "jsonl",
            ExportFormat::Csv => "csv",
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum SessionsCommand {
    /// Recorded sessions, newest first.
    List {
        /// Only sessions started since then: a time (RFC 3339) or a duration ago (1h, 7d).
        #[arg(long, value_name = "T", value_parser = when::parse_since)]
        since: Option<i64>,
        /// At most this many.
        #[arg(long, value_name = "N")]
        limit: Option<u32>,
    },
    /// One session and its events, in order.
    Show { id: i64 },
    /// Every event of the sessions you may see, one line per event, to stdout.
    Export {
        #[arg(long, value_enum, default_value_t = ExportFormat::Jsonl)]
        format: ExportFormat,
        /// Only events since then: a time (RFC 3339) or a duration ago (1h, 7d).
        #[arg(long, value_name = "T", value_parser = when::parse_since)]
        since: Option<i64>,
        /// Only sessions on this connection.
        #[arg(long, value_name = "C")]
        connection: Option<String>,
        /// Only sessions of this identity (its subject or display name).
        #[arg(long, value_name = "I")]
        identity: Option<String>,
    },
    /// One session as a timeline to read: statements, decisions, approvals, results, errors.
    Replay { id: i64 },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the tamper-evident chain of the recorded events; exit 1 with the first broken
    /// link when it fails (admins).
    Verify {
        /// Check this SQLite database file directly instead of asking the server.
        #[arg(long, value_name = "PATH")]
        db: Option<PathBuf>,
        /// With --db: the gateway's checkpoint public key (hex, as `airlock serve` logs it);
        /// by default it is read from the signing key file beside the database.
        #[arg(long, value_name = "HEX", requires = "db")]
        public_key: Option<String>,
        /// With --db: the gateway's `recording.checkpoint_interval`, which bounds how long the
        /// unsigned tail may span [default: the newest checkpoint's, else 1m].
        #[arg(long, value_name = "D", requires = "db", value_parser = humantime::parse_duration)]
        checkpoint_interval: Option<std::time::Duration>,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Mint an agent token; it is printed once, on stdout, and never shown again.
    Create {
        /// Who or what uses the token (shown in sessions and approval requests).
        #[arg(long)]
        name: String,
        /// The token's groups, comma-separated.
        #[arg(long, value_name = "G1,G2", required = true, value_delimiter = ',')]
        groups: Vec<String>,
        /// Lifetime, such as 24h or 30d; without it the token does not expire.
        #[arg(long, value_name = "D")]
        ttl: Option<String>,
    },
    /// Every agent token (never the tokens themselves).
    List,
    /// Revoke a token at once.
    Revoke { id: String },
}
