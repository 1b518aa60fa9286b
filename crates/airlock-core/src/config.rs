//! The YAML configuration: its types (serde, unknown keys rejected in security sections),
//! `${env:X}` / `${file:P}` expansion of connection fields, and validation whose errors carry
//! the line they refer to.

use crate::mask::MaskRuleConfig;
use crate::notify::{check_webhook_url, WebhookConfig};
use crate::policy::PolicySet;
use crate::secret::Secret;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

pub const DEFAULT_ADMIN_GROUP: &str = "airlock-admins";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub listen: Listen,
    #[serde(default = "default_store")]
    pub store: String,
    #[serde(default = "default_secret_key_file")]
    pub secret_key_file: String,
    #[serde(default)]
    pub identity: IdentityConfig,
    #[serde(default = "default_admin_groups")]
    pub admin_groups: Vec<String>,
    #[serde(default)]
    pub connections: Vec<ConnectionConfig>,
    #[serde(default)]
    pub policies: Vec<PolicyConfig>,
    /// Changes to the built-in list of dangerous functions; part of the policies.
    #[serde(default)]
    pub dangerous_functions: DangerousFunctionsConfig,
    /// Masking of result values (see [`crate::mask`]).
    #[serde(default)]
    pub masking: Vec<MaskRuleConfig>,
    /// Webhooks told about approval requests (see [`crate::notify`]).
    #[serde(default)]
    pub notify: Vec<WebhookConfig>,
    #[serde(default)]
    pub recording: RecordingConfig,
    /// The MCP face (`airlock mcp`, `/mcp`).
    #[serde(default)]
    pub mcp: McpConfig,
    /// The certificate the gateway shows clients that ask for TLS; without it, one generated
    /// on first start into the data directory.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

/// The gateway's TLS certificate chain and private key, both PEM files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl TlsConfig {
    /// Reads and checks both files: `(field, problem)` for each one that cannot serve.
    pub fn check(&self) -> Vec<(&'static str, String)> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let mut problems = Vec::new();
        match std::fs::read(&self.cert_file) {
            Ok(pem) => {
                let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&pem).collect();
                match certs {
                    Ok(certs) if certs.is_empty() => problems.push((
                        "cert_file",
                        format!("{} holds no PEM certificate", self.cert_file.display()),
                    )),
                    Ok(_) => {}
                    Err(e) => problems.push((
                        "cert_file",
                        format!(
                            "{} is not a PEM certificate chain: {e}",
                            self.cert_file.display()
                        ),
                    )),
                }
            }
            Err(e) => problems.push((
                "cert_file",
                format!("cannot read {}: {e}", self.cert_file.display()),
            )),
        }
        match std::fs::read(&self.key_file) {
            Ok(pem) => {
                if let Err(e) = PrivateKeyDer::from_pem_slice(&pem) {
                    problems.push((
                        "key_file",
                        format!("{} holds no PEM private key: {e}", self.key_file.display()),
                    ));
                }
            }
            Err(e) => problems.push((
                "key_file",
                format!("cannot read {}: {e}", self.key_file.display()),
            )),
        }
        problems
    }
}

/// How the MCP tools behave.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct McpConfig {
    /// The longest one tool call blocks on a held statement before answering "pending":
    /// MCP clients drop calls that block for about a minute.
    #[serde(deserialize_with = "required_duration")]
    pub max_wait: Duration,
}

impl Default for McpConfig {
    fn default() -> Self {
        McpConfig {
            max_wait: Duration::from_secs(45),
        }
    }
}

/// `recording:` — how much of each response is kept, how long the record is kept, and how often
/// it is signed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordingConfig {
    /// How much of each statement's (masked) response is kept in its record.
    #[serde(default)]
    pub results: ResultsLimit,
    /// History older than this is pruned in the background (`90d`); kept forever when absent.
    #[serde(default, deserialize_with = "human_duration")]
    pub retention: Option<Duration>,
    /// How often the chain's head is signed (see [`crate::checkpoint`]).
    #[serde(
        default = "default_checkpoint_interval",
        deserialize_with = "required_duration"
    )]
    pub checkpoint_interval: Duration,
}

impl Default for RecordingConfig {
    fn default() -> Self {
        RecordingConfig {
            results: ResultsLimit::default(),
            retention: None,
            checkpoint_interval: default_checkpoint_interval(),
        }
    }
}

fn default_checkpoint_interval() -> Duration {
    crate::chain::DEFAULT_CHECKPOINT_INTERVAL
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Listen {
    pub api: String,
    pub postgres: String,
    pub mysql: String,
    pub ssh: String,
    pub http: String,
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            api: "127.0.0.1:8700".into(),
            postgres: "127.0.0.1:15432".into(),
            mysql: "127.0.0.1:13306".into(),
            ssh: "127.0.0.1:12222".into(),
            http: "127.0.0.1:18080".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    #[serde(default)]
    pub oidc: Vec<OidcIssuerConfig>,
    #[serde(default = "yes")]
    pub agent_tokens: bool,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            oidc: Vec::new(),
            agent_tokens: true,
        }
    }
}

/// One trusted OpenID Connect issuer (Entra ID, Okta, Google, ...): whose JWTs are accepted as
/// identities, and which claims carry the subject, display name and groups.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcIssuerConfig {
    /// Exactly the token's `iss`; discovery is `<issuer>/.well-known/openid-configuration`.
    pub issuer: String,
    /// Accepted `aud` values (one or several).
    #[serde(deserialize_with = "one_or_many")]
    pub audience: Vec<String>,
    /// Claims whose values are the identity's groups (Entra app roles arrive in `roles`).
    #[serde(default = "default_groups_claim", deserialize_with = "one_or_many")]
    pub groups_claim: Vec<String>,
    /// The claim that identifies the principal; `sub` when absent.
    #[serde(default)]
    pub subject_claim: Option<String>,
    /// The claim shown as the display name; else `preferred_username`, `email`, `name`, subject.
    #[serde(default)]
    pub name_claim: Option<String>,
    /// Renames IdP group values (Entra sends object GUIDs) to policy group names.
    #[serde(default)]
    pub group_map: std::collections::BTreeMap<String, String>,
    /// The JWKS address, when discovery is not wanted.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// Accept plain-http issuer and JWKS addresses that are not on a loopback address.
    #[serde(default)]
    pub allow_insecure_http: bool,
    /// Clock skew tolerated on `exp` and `nbf`.
    #[serde(default = "default_leeway", deserialize_with = "required_duration")]
    pub leeway: Duration,
}

/// The largest clock skew accepted: beyond it, an expired token would live on for minutes.
const MAX_LEEWAY: Duration = Duration::from_secs(300);

/// The longest `mcp.max_wait`: what `POST /api/v1/exec` waits at most in one call.
const MAX_MCP_WAIT: Duration = Duration::from_secs(300);

fn default_groups_claim() -> Vec<String> {
    vec!["groups".into()]
}
fn default_leeway() -> Duration {
    Duration::from_secs(30)
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(one) => vec![one],
        OneOrMany::Many(many) => many,
    })
}

fn required_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text)
        .map_err(|e| serde::de::Error::custom(format!("invalid duration `{text}`: {e}")))
}

/// Why an issuer or JWKS address may not be used: only HTTPS, or plain http on a loopback
/// address (a local IdP, tests) or when explicitly allowed, since keys fetched in clear could
/// be replaced by anyone on the path.
fn check_idp_url(url: &str, allow_insecure_http: bool) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if allow_insecure_http => Ok(()),
        "http" => {
            let host = parsed.host_str().unwrap_or_default();
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let loopback = host.eq_ignore_ascii_case("localhost")
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if loopback {
                Ok(())
            } else {
                Err(format!(
                    "`{url}` is plain http on a non-loopback host; use https (or set allow_insecure_http: true)"
                ))
            }
        }
        other => Err(format!(
            "`{url}`: scheme `{other}` is not supported; use https"
        )),
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ConnectionKind {
    Postgres,
    Mysql,
    Ssh,
    Http,
    Kubernetes,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionConfig {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: ConnectionKind,
    pub address: String,
    #[serde(default)]
    pub database: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub password: Option<Secret<String>>,
}

impl ConnectionConfig {
    /// The upstream database; like libpq, it defaults to the user name.
    pub fn database_or_default(&self) -> &str {
        self.database
            .as_deref()
            .or(self.user.as_deref())
            .unwrap_or("postgres")
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ActionName {
    Allow,
    Deny,
    RequireApproval,
}

/// A policy as written. It also serializes back to the same form, so the live policies can be
/// shown (`GET /api/v1/policies`), PUT back, and compared as text when they change.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    pub name: String,
    pub groups: Vec<String>,
    pub connections: Vec<String>,
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    #[serde(default = "yes")]
    pub record: bool,
    /// What happens to statements no rule matches, and to unparseable SQL. Deny when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<ActionName>,
    /// The `approval_window` of the policy's require-approval rules that set none.
    #[serde(
        default,
        deserialize_with = "human_duration",
        serialize_with = "write_human_duration",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, example = "15m")]
    pub approval_window: Option<Duration>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(rename = "match")]
    pub matches: String,
    pub action: ActionName,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reviewers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approvals: Option<u32>,
    #[serde(
        default,
        deserialize_with = "human_duration",
        serialize_with = "write_human_duration",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, example = "15m")]
    pub timeout: Option<Duration>,
    /// Shown to the agent when the rule denies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Globs over the relations a statement touches; the rule matches a statement when any one
    /// of them matches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tables: Vec<String>,
    /// Globs over the functions a statement calls; the rule matches a statement when any one
    /// of them matches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub functions: Vec<String>,
    /// `where: missing` matches only statements with an UPDATE or DELETE that has no WHERE.
    #[serde(rename = "where", default, skip_serializing_if = "Option::is_none")]
    pub where_clause: Option<WhereCondition>,
    /// With several `reviewers` groups: an approval from a member of each one is needed, on
    /// top of `approvals` distinct reviewers.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all_groups_must_approve: bool,
    /// How long the `reviewers` alone may decide before `escalate_to` may too.
    #[serde(
        default,
        deserialize_with = "human_duration",
        serialize_with = "write_human_duration",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, example = "15m")]
    pub escalate_after: Option<Duration>,
    /// The groups that may also decide once `escalate_after` has passed (and are notified).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub escalate_to: Vec<String>,
    /// How long an approved request whose client went away may still be run by its requester
    /// re-sending the identical statement on the same connection (once).
    #[serde(
        default,
        deserialize_with = "human_duration",
        serialize_with = "write_human_duration",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, example = "15m")]
    pub approval_window: Option<Duration>,
    /// Reviewers are reminded of a request still pending after this long (and every such
    /// period until it settles).
    #[serde(
        default,
        deserialize_with = "human_duration",
        serialize_with = "write_human_duration",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, example = "15m")]
    pub remind_after: Option<Duration>,
    /// The rule matches an UPDATE or DELETE only when the gateway counted, just before
    /// deciding, that the operation changes at most this many rows (see the README).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows_limit: Option<u64>,
}

/// The first `rows` rows, and at most `bytes` bytes of values, of a response are recorded;
/// none by default. Row counts are recorded always.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ResultsLimit {
    #[serde(default)]
    pub rows: u64,
    #[serde(default)]
    pub bytes: u64,
}

impl ResultsLimit {
    /// The largest values accepted: a record is one line of the journal, read back whole.
    pub const MAX_ROWS: u64 = 100_000;
    pub const MAX_BYTES: u64 = 16 * 1024 * 1024;

    pub fn keeps_rows(&self) -> bool {
        self.rows > 0 && self.bytes > 0
    }
}

/// The condition of a rule's `where`.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum WhereCondition {
    /// An UPDATE or DELETE without a WHERE clause: it touches every row.
    Missing,
}

/// Additions to and removals from the built-in list of dangerous functions (see
/// [`crate::classify::DANGEROUS_FUNCTIONS`]). Part of the policies: reloaded, replaced through
/// the API and recorded with them.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DangerousFunctionsConfig {
    /// Globs over function names (`name` or `schema.name`) that count as dangerous too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<String>,
    /// Built-in entries, exactly as listed, that do not count as dangerous here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

impl DangerousFunctionsConfig {
    pub fn is_default(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }
}

/// A document that holds only policies: the body of `PUT /api/v1/policies`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PoliciesDocument {
    policies: Vec<PolicyConfig>,
    #[serde(default)]
    dangerous_functions: DangerousFunctionsConfig,
}

fn yes() -> bool {
    true
}
fn default_store() -> String {
    "sqlite://airlock-data/airlock.db".into()
}
fn default_secret_key_file() -> String {
    "airlock-data/secret.key".into()
}
fn default_admin_groups() -> Vec<String> {
    vec![DEFAULT_ADMIN_GROUP.into()]
}

fn write_human_duration<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
        None => s.serialize_none(),
    }
}

fn human_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    required_duration(d).map(Some)
}

impl Default for Config {
    fn default() -> Self {
        // An empty document takes every default.
        Config {
            listen: Listen::default(),
            store: default_store(),
            secret_key_file: default_secret_key_file(),
            identity: IdentityConfig::default(),
            admin_groups: default_admin_groups(),
            connections: Vec::new(),
            policies: Vec::new(),
            dangerous_functions: DangerousFunctionsConfig::default(),
            masking: Vec::new(),
            notify: Vec::new(),
            recording: RecordingConfig::default(),
            mcp: McpConfig::default(),
            tls: None,
        }
    }
}

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigIssue {
    pub line: Option<usize>,
    pub path: String,
    pub message: String,
}

#[derive(Debug, Clone)]
pub struct ConfigError {
    pub source: String,
    pub issues: Vec<ConfigIssue>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, issue) in self.issues.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            match issue.line {
                Some(line) => write!(f, "{}:{line}: ", self.source)?,
                None => write!(f, "{}: ", self.source)?,
            }
            if !issue.path.is_empty() {
                write!(f, "{}: ", issue.path)?;
            }
            write!(f, "{}", issue.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// A validated configuration and the policy compiled from it.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub config: Config,
    pub policies: PolicySet,
}

impl Config {
    pub fn load(path: &Path) -> Result<LoadedConfig, ConfigError> {
        let source = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            source: source.clone(),
            issues: vec![ConfigIssue {
                line: None,
                path: String::new(),
                message: format!("cannot read: {e}"),
            }],
        })?;
        Config::parse(&text, &source, path.parent())
    }

    /// Parses and validates; `base_dir` resolves relative `${file:…}` paths.
    pub fn parse(
        text: &str,
        source: &str,
        base_dir: Option<&Path>,
    ) -> Result<LoadedConfig, ConfigError> {
        let fail = |issues| ConfigError {
            source: source.to_string(),
            issues,
        };
        let mut config: Config = if text.trim().is_empty() {
            Config::default()
        } else {
            from_yaml(text, source)?
        };
        let lines = LineIndex::build(text);
        let mut issues = Vec::new();
        let mut issue = |path: String, message: String| {
            issues.push(ConfigIssue {
                line: lines.line_of(&path),
                path,
                message,
            })
        };

        if config.mcp.max_wait > MAX_MCP_WAIT {
            issue(
                "mcp.max_wait".into(),
                format!(
                    "at most {} (one tool call is one HTTP call to the gateway)",
                    humantime::format_duration(MAX_MCP_WAIT)
                ),
            );
        }
        let mut issuers = HashSet::new();
        for (i, oidc) in config.identity.oidc.iter().enumerate() {
            let at = |field: &str| format!("identity.oidc[{i}].{field}");
            if !issuers.insert(oidc.issuer.trim_end_matches('/')) {
                issue(at("issuer"), format!("duplicate issuer `{}`", oidc.issuer));
            }
            if let Err(message) = check_idp_url(&oidc.issuer, oidc.allow_insecure_http) {
                issue(at("issuer"), message);
            }
            if let Some(jwks) = &oidc.jwks_uri {
                if let Err(message) = check_idp_url(jwks, oidc.allow_insecure_http) {
                    issue(at("jwks_uri"), message);
                }
            }
            if oidc.audience.is_empty() || oidc.audience.iter().any(|a| a.trim().is_empty()) {
                issue(
                    at("audience"),
                    "needs at least one non-empty audience (the `aud` Airlock's tokens carry)"
                        .into(),
                );
            }
            let claims = oidc.groups_claim.iter().map(|c| ("groups_claim", Some(c)));
            let named = [
                ("subject_claim", oidc.subject_claim.as_ref()),
                ("name_claim", oidc.name_claim.as_ref()),
            ];
            if oidc.groups_claim.is_empty() {
                issue(at("groups_claim"), "names no claim".into());
            }
            for (field, claim) in claims.chain(named) {
                if claim.is_some_and(|c| c.trim().is_empty()) {
                    issue(at(field), "a claim name cannot be empty".into());
                }
            }
            if oidc.leeway > MAX_LEEWAY {
                issue(
                    at("leeway"),
                    format!(
                        "at most {} of clock skew is accepted",
                        humantime::format_duration(MAX_LEEWAY)
                    ),
                );
            }
        }
        for (field, value) in [
            ("api", &config.listen.api),
            ("postgres", &config.listen.postgres),
            ("mysql", &config.listen.mysql),
            ("ssh", &config.listen.ssh),
            ("http", &config.listen.http),
        ] {
            if value.parse::<SocketAddr>().is_err() {
                issue(
                    format!("listen.{field}"),
                    format!("`{value}` is not an address of the form IP:PORT"),
                );
            }
        }

        let mut names = HashSet::new();
        for (i, conn) in config.connections.iter_mut().enumerate() {
            let at = |field: &str| format!("connections[{i}].{field}");
            if !names.insert(conn.name.clone()) {
                issue(
                    at("name"),
                    format!("duplicate connection name `{}`", conn.name),
                );
            }
            if conn.name.is_empty() || conn.name.contains(['/', ' ', '*']) {
                issue(
                    at("name"),
                    "a connection name must be non-empty, without spaces, `/` or `*`".into(),
                );
            }
            if !matches!(conn.kind, ConnectionKind::Postgres | ConnectionKind::Mysql) {
                issue(
                    at("type"),
                    format!(
                        "connection type `{:?}` is not supported by this version of Airlock yet (postgres and mysql are)",
                        conn.kind
                    )
                    .to_lowercase(),
                );
            }
            for (field, value) in [
                ("address", Some(&mut conn.address)),
                ("database", conn.database.as_mut()),
                ("user", conn.user.as_mut()),
            ] {
                if let Some(value) = value {
                    match expand(value, base_dir) {
                        Ok(expanded) => *value = expanded,
                        Err(message) => issue(at(field), message),
                    }
                }
            }
            if let Some(password) = conn.password.take() {
                match expand(password.expose(), base_dir) {
                    Ok(expanded) => conn.password = Some(Secret::new(expanded)),
                    Err(message) => issue(at("password"), message),
                }
            }
            if conn.kind == ConnectionKind::Mysql {
                if conn.user.is_none() {
                    issue(
                        at("user"),
                        "a mysql connection needs the upstream `user`".into(),
                    );
                }
                if !conn.address.contains(':') {
                    issue(
                        at("address"),
                        format!("`{}` needs a port (host:port)", conn.address),
                    );
                }
            }
            if conn.kind == ConnectionKind::Postgres {
                if conn.user.is_none() {
                    issue(
                        at("user"),
                        "a postgres connection needs the upstream `user`".into(),
                    );
                }
                if !conn.address.contains(':') {
                    issue(
                        at("address"),
                        format!("`{}` needs a port (host:port)", conn.address),
                    );
                }
            }
        }

        for (i, hook) in config.notify.iter_mut().enumerate() {
            let at = |field: &str| format!("notify[{i}].{field}");
            // The address is a secret (Slack and Teams put the credential in it): expanded
            // like a password, and no message quotes it.
            match expand(hook.webhook.expose(), base_dir) {
                Ok(url) => {
                    if let Err(message) = check_webhook_url(&url) {
                        issue(at("webhook"), message);
                    }
                    hook.webhook = Secret::new(url);
                }
                Err(message) => issue(at("webhook"), message),
            }
            if hook.events.is_empty() {
                issue(
                    at("events"),
                    "names no event; remove `events` to send every event".into(),
                );
            }
        }

        if config.recording.checkpoint_interval < Duration::from_secs(1) {
            issue(
                "recording.checkpoint_interval".into(),
                "must be at least 1s".into(),
            );
        }
        if let Some(retention) = config.recording.retention {
            // Pruning needs a checkpoint older than the cutoff to anchor at.
            if retention < config.recording.checkpoint_interval * 2 {
                issue(
                    "recording.retention".into(),
                    "must be at least twice recording.checkpoint_interval".into(),
                );
            }
        }
        if let Some(tls) = &config.tls {
            for (field, message) in tls.check() {
                issue(format!("tls.{field}"), message);
            }
        }
        for (path, message) in crate::mask::check_rules(&config.masking) {
            issue(path, message);
        }
        for (i, rule) in config.masking.iter().enumerate() {
            for (j, pattern) in rule.connections.iter().enumerate() {
                if !pattern.contains(['*', '?']) && !names.contains(pattern) {
                    issue(
                        format!("masking[{i}].connections[{j}]"),
                        format!("no connection is named `{pattern}`"),
                    );
                }
            }
        }
        let results = config.recording.results;
        if results.rows > ResultsLimit::MAX_ROWS {
            issue(
                "recording.results.rows".into(),
                format!(
                    "at most {} rows can be kept per statement",
                    ResultsLimit::MAX_ROWS
                ),
            );
        }
        if results.bytes > ResultsLimit::MAX_BYTES {
            issue(
                "recording.results.bytes".into(),
                format!(
                    "at most {} bytes can be kept per statement",
                    ResultsLimit::MAX_BYTES
                ),
            );
        }
        if (results.rows == 0) != (results.bytes == 0) {
            issue(
                "recording.results".into(),
                "give both `rows` and `bytes` (or neither, to keep no rows)".into(),
            );
        }

        let policies = check_policies(
            &config.policies,
            &config.dangerous_functions,
            &names,
            &mut issue,
        );
        if issues.is_empty() {
            Ok(LoadedConfig { config, policies })
        } else {
            Err(fail(issues))
        }
    }

    /// Parses and validates a document that holds only `policies:` (YAML, or JSON, which is
    /// YAML too) against the running `connections`, with the messages and line numbers of
    /// [`Config::parse`]: how a policy replaced at run time is checked.
    pub fn parse_policies(
        text: &str,
        source: &str,
        connections: &[ConnectionConfig],
    ) -> Result<PolicySet, ConfigError> {
        let document: PoliciesDocument = from_yaml(text, source)?;
        let lines = LineIndex::build(text);
        let mut issues = Vec::new();
        let mut issue = |path: String, message: String| {
            issues.push(ConfigIssue {
                line: lines.line_of(&path),
                path,
                message,
            })
        };
        let names: HashSet<String> = connections.iter().map(|c| c.name.clone()).collect();
        let policies = check_policies(
            &document.policies,
            &document.dangerous_functions,
            &names,
            &mut issue,
        );
        if issues.is_empty() {
            Ok(policies)
        } else {
            Err(ConfigError {
                source: source.to_string(),
                issues,
            })
        }
    }

    /// The directory that holds the embedded store (and the bootstrap admin token).
    pub fn data_dir(&self) -> PathBuf {
        let path = self.store.strip_prefix("sqlite://").unwrap_or(&self.store);
        Path::new(path)
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    }

    pub fn connection(&self, name: &str) -> Option<&ConnectionConfig> {
        self.connections.iter().find(|c| c.name == name)
    }
}

/// Deserializes YAML; a syntax error or unknown key is one issue with its line.
fn from_yaml<T: serde::de::DeserializeOwned>(text: &str, source: &str) -> Result<T, ConfigError> {
    serde_yaml::from_str(text).map_err(|e| ConfigError {
        source: source.to_string(),
        issues: vec![ConfigIssue {
            line: e.location().map(|l| l.line()),
            path: String::new(),
            message: e.to_string(),
        }],
    })
}

/// The policy checks shared by a whole config and a policies-only document: unique names,
/// connections that exist (globs excepted), and everything [`PolicySet::compile`] checks.
/// Problems go to `issue`; the set is only meaningful when there were none.
fn check_policies(
    policies: &[PolicyConfig],
    dangerous_functions: &DangerousFunctionsConfig,
    connection_names: &HashSet<String>,
    issue: &mut impl FnMut(String, String),
) -> PolicySet {
    for (j, glob) in dangerous_functions.add.iter().enumerate() {
        if glob.trim().is_empty() {
            issue(
                format!("dangerous_functions.add[{j}]"),
                "a function glob must not be empty".into(),
            );
        }
    }
    for (j, name) in dangerous_functions.remove.iter().enumerate() {
        let builtin = crate::classify::DANGEROUS_FUNCTIONS
            .iter()
            .any(|f| f.eq_ignore_ascii_case(name.trim()));
        if !builtin {
            issue(
                format!("dangerous_functions.remove[{j}]"),
                format!(
                    "`{name}` is not on the built-in list; `remove` takes built-in entries as \
                     written: {}",
                    crate::classify::DANGEROUS_FUNCTIONS.join(", ")
                ),
            );
        }
    }
    let mut policy_names = HashSet::new();
    for (i, policy) in policies.iter().enumerate() {
        if !policy_names.insert(policy.name.clone()) {
            issue(
                format!("policies[{i}].name"),
                format!("duplicate policy name `{}`", policy.name),
            );
        }
        for (j, pattern) in policy.connections.iter().enumerate() {
            if !pattern.contains(['*', '?']) && !connection_names.contains(pattern) {
                issue(
                    format!("policies[{i}].connections[{j}]"),
                    format!("no connection is named `{pattern}`"),
                );
            }
        }
    }
    match PolicySet::compile(policies) {
        Ok(policies) => policies.with_dangerous_functions(dangerous_functions.clone()),
        Err(errors) => {
            for (path, message) in errors {
                issue(path, message);
            }
            PolicySet::default()
        }
    }
}

/// Expands `${env:NAME}` and `${file:PATH}` (trailing newline removed) inside a value.
fn expand(value: &str, base_dir: Option<&Path>) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| "unterminated `${` in value".to_string())?;
        let reference = &after[..end];
        if let Some(name) = reference.strip_prefix("env:") {
            let v = std::env::var(name)
                .map_err(|_| format!("environment variable `{name}` is not set"))?;
            out.push_str(&v);
        } else if let Some(file) = reference.strip_prefix("file:") {
            let path = match base_dir {
                Some(dir) if Path::new(file).is_relative() => dir.join(file),
                _ => PathBuf::from(file),
            };
            let v = std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
            out.push_str(v.trim_end_matches(['\n', '\r']));
        } else {
            return Err(format!(
                "unknown reference `${{{reference}}}` (use ${{env:NAME}} or ${{file:PATH}})"
            ));
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Maps a key path such as `policies[0].rules[1].match` to its line in the YAML text.
struct LineIndex {
    lines: HashMap<String, usize>,
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, index: usize },
}

struct IndexBuilder {
    stack: Vec<Frame>,
    lines: HashMap<String, usize>,
}

impl IndexBuilder {
    /// The path of the value about to be read, or `None` when a mapping key is expected.
    fn value_path(&self) -> Option<String> {
        match self.stack.last() {
            None => Some(String::new()),
            Some(Frame::Map { key: None, .. }) => None,
            Some(Frame::Map {
                path,
                key: Some(key),
            }) => Some(join(path, key)),
            Some(Frame::Seq { path, index }) => Some(format!("{path}[{index}]")),
        }
    }

    fn value_done(&mut self) {
        match self.stack.last_mut() {
            Some(Frame::Map { key, .. }) => *key = None,
            Some(Frame::Seq { index, .. }) => *index += 1,
            None => {}
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

impl MarkedEventReceiver for IndexBuilder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(text, ..) => match self.value_path() {
                None => {
                    if let Some(Frame::Map { path, key }) = self.stack.last_mut() {
                        self.lines.insert(join(path, &text), mark.line());
                        *key = Some(text);
                    }
                }
                Some(path) => {
                    self.lines.entry(path).or_insert(mark.line());
                    self.value_done();
                }
            },
            Event::Alias(_) => self.value_done(),
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let path = self.value_path().unwrap_or_default();
                self.lines.entry(path.clone()).or_insert(mark.line());
                self.stack.push(if matches!(ev, Event::MappingStart(..)) {
                    Frame::Map { path, key: None }
                } else {
                    Frame::Seq { path, index: 0 }
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                self.value_done();
            }
            _ => {}
        }
    }
}

impl LineIndex {
    fn build(text: &str) -> LineIndex {
        let mut builder = IndexBuilder {
            stack: Vec::new(),
            lines: HashMap::new(),
        };
        // The text already parsed as YAML; a failure here only costs line numbers.
        let _ = Parser::new_from_str(text).load(&mut builder, false);
        LineIndex {
            lines: builder.lines,
        }
    }

    /// The line of `path`, or of its nearest ancestor that has one.
    fn line_of(&self, path: &str) -> Option<usize> {
        let mut path = path;
        loop {
            if let Some(line) = self.lines.get(path) {
                return Some(*line);
            }
            let cut = path.rfind(['.', '['])?;
            path = &path[..cut];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
listen:
  postgres: 127.0.0.1:15432
connections:
  - name: prod-maintenance
    type: postgres
    address: db.internal:5432
    database: app
    user: maintenance
    password: ${env:AIRLOCK_TEST_PW}
policies:
  - name: db-maintenance-agents
    groups: [db-maintenance-agents]
    connections: [prod-maintenance]
    rules:
      - match: SELECT
        action: allow
      - match: DELETE|DROP|UPDATE
        action: require-approval
        reviewers: [dba]
        approvals: 1
        timeout: 15m
    record: true
"#;

    #[test]
    fn the_brief_example_loads_and_expands() {
        std::env::set_var("AIRLOCK_TEST_PW", "pw-from-env");
        let loaded = Config::parse(EXAMPLE, "airlock.yaml", None).unwrap();
        let conn = loaded.config.connection("prod-maintenance").unwrap();
        assert_eq!(conn.password.as_ref().unwrap().expose(), "pw-from-env");
        assert_eq!(loaded.config.listen.api, "127.0.0.1:8700");
        assert_eq!(loaded.policies.len(), 1);
    }

    #[test]
    fn errors_name_their_line() {
        let text = EXAMPLE
            .replace("match: SELECT", "match: SELEKT")
            .replace("${env:AIRLOCK_TEST_PW}", "${env:AIRLOCK_SURELY_UNSET}");
        let err = Config::parse(&text, "airlock.yaml", None).unwrap_err();
        let shown = err.to_string();
        assert!(
            shown.contains("airlock.yaml:16: policies[0].rules[0].match"),
            "{shown}"
        );
        assert!(
            shown.contains("airlock.yaml:10: connections[0].password"),
            "{shown}"
        );
        assert!(shown.contains("AIRLOCK_SURELY_UNSET"), "{shown}");
    }

    #[test]
    fn recording_takes_a_retention_and_a_checkpoint_interval() {
        let loaded = Config::parse("recording:\n  retention: 90d\n", "c.yaml", None).unwrap();
        let recording = &loaded.config.recording;
        assert_eq!(recording.retention, Some(Duration::from_secs(90 * 86_400)));
        assert_eq!(recording.checkpoint_interval, Duration::from_secs(60));
        let defaults = Config::parse("", "c.yaml", None).unwrap();
        assert_eq!(defaults.config.recording.retention, None);
        for bad in [
            "recording:\n  retention: soon\n",
            "recording:\n  checkpoint_interval: 10ms\n",
            "recording:\n  retention: 1m\n  checkpoint_interval: 1m\n",
            "recording:\n  kept: forever\n",
        ] {
            let err = Config::parse(bad, "c.yaml", None).unwrap_err();
            assert!(err.to_string().contains("recording"), "{bad}: {err}");
        }
    }

    #[test]
    fn unknown_keys_are_rejected_with_a_line() {
        let text = EXAMPLE.replace("action: allow", "action: allow\n        sneaky: true");
        let err = Config::parse(&text, "c.yaml", None).unwrap_err();
        assert_eq!(err.issues[0].line, Some(18), "{err}");
        assert!(err.to_string().contains("sneaky"));
    }

    #[test]
    fn approval_rules_need_reviewers_and_policies_need_known_connections() {
        let text = EXAMPLE
            .replace("        reviewers: [dba]\n", "")
            .replace("connections: [prod-maintenance]", "connections: [nope]");
        let err = Config::parse(&text, "c.yaml", None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("c.yaml:14: policies[0].connections[0]: no connection is named `nope`"),
            "{err}"
        );
        assert!(err.contains("reviewers"), "{err}");
    }

    #[test]
    fn empty_config_is_all_defaults() {
        let loaded = Config::parse("", "c.yaml", None).unwrap();
        assert_eq!(loaded.config.data_dir(), PathBuf::from("airlock-data"));
    }

    #[test]
    fn mcp_max_wait_is_a_bounded_human_duration() {
        let loaded = Config::parse("", "c.yaml", None).unwrap();
        assert_eq!(loaded.config.mcp.max_wait, Duration::from_secs(45));
        let loaded = Config::parse("mcp:\n  max_wait: 2s\n", "c.yaml", None).unwrap();
        assert_eq!(loaded.config.mcp.max_wait, Duration::from_secs(2));
        let err = Config::parse("mcp:\n  max_wait: 1h\n", "c.yaml", None).unwrap_err();
        assert!(
            err.to_string()
                .contains("c.yaml:2: mcp.max_wait: at most 5m"),
            "{err}"
        );
        assert!(Config::parse("mcp:\n  max_wait: soon\n", "c.yaml", None).is_err());
        assert!(Config::parse("mcp:\n  wait: 2s\n", "c.yaml", None).is_err());
    }

    #[test]
    fn oidc_issuers_are_typed_and_validated() {
        let text = "identity:\n  oidc:\n    - issuer: https://login.microsoftonline.com/t/v2.0\n      audience: api://airlock\n      groups_claim: [groups, roles]\n      group_map: { 0a1b: dba }\n";
        let loaded = Config::parse(text, "c.yaml", None).unwrap();
        let oidc = &loaded.config.identity.oidc[0];
        assert_eq!(oidc.audience, ["api://airlock"]);
        assert_eq!(oidc.groups_claim, ["groups", "roles"]);
        assert_eq!(oidc.leeway, Duration::from_secs(30));
        assert_eq!(oidc.group_map["0a1b"], "dba");
        let defaults =
            "identity:\n  oidc:\n    - issuer: http://127.0.0.1:9000\n      audience: [a, b]\n";
        let loaded = Config::parse(defaults, "c.yaml", None).unwrap();
        assert_eq!(loaded.config.identity.oidc[0].groups_claim, ["groups"]);

        let bad = "identity:\n  oidc:\n    - issuer: http://idp.example.com\n      audience: []\n      leeway: 1h\n";
        let err = Config::parse(bad, "c.yaml", None).unwrap_err().to_string();
        assert!(
            err.contains(
                "c.yaml:3: identity.oidc[0].issuer: `http://idp.example.com` is plain http"
            ),
            "{err}"
        );
        assert!(err.contains("c.yaml:4: identity.oidc[0].audience"), "{err}");
        assert!(err.contains("c.yaml:5: identity.oidc[0].leeway"), "{err}");
        let allowed =
            bad.replace("[]", "x").replace("1h", "10s") + "      allow_insecure_http: true\n";
        assert!(Config::parse(&allowed, "c.yaml", None).is_ok());
        let unknown = defaults.to_string() + "      client_secret: nope\n";
        let err = Config::parse(&unknown, "c.yaml", None).unwrap_err();
        assert!(err.to_string().contains("client_secret"), "{err}");
    }

    #[test]
    fn notify_webhooks_are_typed_validated_and_secret() {
        // The form of PRODUCT.md.
        let text = "notify:\n  - webhook: https://hooks.slack.com/services/...\n    format: slack               # slack | teams | json\n";
        let loaded = Config::parse(text, "c.yaml", None).unwrap();
        let hook = &loaded.config.notify[0];
        assert_eq!(hook.format, crate::notify::WebhookFormat::Slack);
        // requested, decided, expired, canceled, escalated, reminder
        assert_eq!(hook.events.len(), 6);
        assert!(!format!("{:?}", loaded.config).contains("hooks.slack.com"));

        std::env::set_var("AIRLOCK_TEST_HOOK", "http://127.0.0.1:9/secret-path");
        let text =
            "notify:\n  - webhook: ${env:AIRLOCK_TEST_HOOK}\n    events: [decided, expired]\n";
        let loaded = Config::parse(text, "c.yaml", None).unwrap();
        let hook = &loaded.config.notify[0];
        assert_eq!(hook.webhook.expose(), "http://127.0.0.1:9/secret-path");
        assert_eq!(hook.format, crate::notify::WebhookFormat::Json);
        assert_eq!(
            hook.events,
            [
                crate::notify::NotifyEvent::Decided,
                crate::notify::NotifyEvent::Expired
            ]
        );

        let bad = "listen: {}\nnotify:\n  - webhook: ftp://x.example/secret-token\n  - webhook: https://ok.example/h\n    events: []\n  - webhook: ${env:AIRLOCK_SURELY_UNSET}\n";
        let err = Config::parse(bad, "c.yaml", None).unwrap_err().to_string();
        assert!(
            err.contains("c.yaml:3: notify[0].webhook: webhook scheme `ftp`"),
            "{err}"
        );
        assert!(err.contains("c.yaml:5: notify[1].events"), "{err}");
        assert!(err.contains("c.yaml:6: notify[2].webhook"), "{err}");
        assert!(!err.contains("secret-token"), "{err}");
        for unknown in [
            "notify:\n  - webhook: https://a.example/\n    channel: x\n",
            "notify:\n  - webhook: https://a.example/\n    format: discord\n",
            "notify:\n  - webhook: https://a.example/\n    events: [reminded]\n",
        ] {
            let err = Config::parse(unknown, "c.yaml", None).unwrap_err();
            assert_eq!(err.issues[0].line, Some(3), "{err}");
        }
    }

    #[test]
    fn file_references_expand() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pw"), "from-file\n").unwrap();
        let text = EXAMPLE.replace("${env:AIRLOCK_TEST_PW}", "${file:pw}");
        let loaded = Config::parse(&text, "c.yaml", Some(dir.path())).unwrap();
        let conn = &loaded.config.connections[0];
        assert_eq!(conn.password.as_ref().unwrap().expose(), "from-file");
    }

    #[test]
    fn a_policies_document_is_checked_like_the_config_and_round_trips() {
        std::env::set_var("AIRLOCK_TEST_PW", "pw-from-env");
        let loaded = Config::parse(EXAMPLE, "airlock.yaml", None).unwrap();
        let connections = &loaded.config.connections;
        let text = loaded.policies.to_yaml();
        let again = Config::parse_policies(&text, "body", connections).unwrap();
        assert_eq!(again.configs(), loaded.policies.configs());
        assert!(text.contains("timeout: 15m"), "{text}");

        let bad = "policies:\n  - name: p\n    groups: []\n    connections: [nope]\n  - name: p\n    groups: [g]\n    connections: [prod-*]\n";
        let err = Config::parse_policies(bad, "body", connections)
            .unwrap_err()
            .to_string();
        assert!(err.contains("body:3: policies[0].groups"), "{err}");
        assert!(
            err.contains("body:4: policies[0].connections[0]: no connection is named `nope`"),
            "{err}"
        );
        assert!(
            err.contains("body:5: policies[1].name: duplicate policy name `p`"),
            "{err}"
        );
        let err =
            Config::parse_policies("listen: {}\npolicies: []\n", "body", connections).unwrap_err();
        assert_eq!(err.issues[0].line, Some(1), "{err}");
        assert!(Config::parse_policies("", "body", connections).is_err());
    }

    #[test]
    fn masking_and_recording_are_typed_and_validated() {
        std::env::set_var("AIRLOCK_TEST_PW", "pw-from-env");
        // The form of PRODUCT.md.
        let text = format!(
            "{EXAMPLE}masking:\n  - connections: [prod-*]\n    columns: [\"*.email\", \"users.ssn\"]\n    detectors: [email, credit_card, us_ssn, phone, iban, secret]\n    style: redact               # redact | partial | hash\nrecording:\n  results: {{ rows: 100, bytes: 65536 }}   # masked response kept per statement\n  retention: 90d\n"
        );
        let loaded = Config::parse(&text, "c.yaml", None).unwrap();
        let rule = &loaded.config.masking[0];
        assert_eq!(rule.columns, ["*.email", "users.ssn"]);
        assert_eq!(rule.detectors.len(), 6);
        assert_eq!(rule.style, crate::mask::MaskStyle::Redact);
        let recording = &loaded.config.recording;
        assert_eq!(recording.results.rows, 100);
        assert_eq!(recording.results.bytes, 65536);
        assert_eq!(recording.retention, Some(Duration::from_secs(90 * 86400)));

        let bad = format!(
            "{EXAMPLE}masking:\n  - connections: [nope]\n    columns: [\"a..b\"]\n  - connections: [prod-maintenance]\n    style: partial\nrecording:\n  results: {{ rows: 10 }}\n  retention: 1m\n"
        );
        let err = Config::parse(&bad, "c.yaml", None).unwrap_err().to_string();
        assert!(
            err.contains("c.yaml:25: masking[0].connections[0]: no connection"),
            "{err}"
        );
        assert!(err.contains("c.yaml:26: masking[0].columns[0]"), "{err}");
        assert!(
            err.contains("c.yaml:27: masking[1].columns: the rule masks nothing"),
            "{err}"
        );
        assert!(
            err.contains("c.yaml:30: recording.results: give both"),
            "{err}"
        );
        assert!(err.contains("c.yaml:31: recording.retention"), "{err}");
        for unknown in [
            "masking:\n  - connections: ['*']\n    detectors: [dna]\n",
            "masking:\n  - connections: ['*']\n    columns: [a]\n    style: scramble\n",
            "masking:\n  - connections: ['*']\n    colums: [a]\n",
            "recording:\n  results: { rows: 1, bytes: 1, lines: 1 }\n",
            "recording:\n  retention: forever\n",
        ] {
            let err = Config::parse(unknown, "c.yaml", None).unwrap_err();
            assert!(err.issues[0].line.is_some(), "{err}");
        }
    }
}
