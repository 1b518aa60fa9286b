//! Who is asking. Turns a presented token into an [`Identity`]: Airlock agent tokens (random,
//! shown once, stored as a SHA-256 hash) or OIDC JWTs from a configured issuer (see
//! [`crate::oidc`]). The two are told apart by shape: agent tokens start with `alk_`, a JWT is
//! three base64url segments.

use crate::config::IdentityConfig;
use crate::oidc::{OidcError, OidcVerifier};
use crate::store::{now_millis, Millis, Store, StoreError, TokenRecord};
use base64::Engine;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Every Airlock agent token starts with this, which tells it apart from a JWT (`eyJ…`).
pub const AGENT_TOKEN_PREFIX: &str = "alk_";

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMethod {
    AgentToken,
    Oidc,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::AgentToken => "agent-token",
            AuthMethod::Oidc => "oidc",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Identity {
    /// Stable and unique: `token:<id>` for agent tokens, `oidc:<issuer>#<subject>` for OIDC.
    pub subject: String,
    pub name: String,
    pub groups: Vec<String>,
    pub method: AuthMethod,
    pub expires_at: Option<Millis>,
}

impl Identity {
    pub fn in_any_group(&self, groups: &[String]) -> bool {
        self.groups.iter().any(|g| groups.contains(g))
    }
}

/// Why a token was refused. The detail is for logs; clients get [`AuthError::CLIENT_MESSAGE`].
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no token was presented")]
    Missing,
    #[error("the token is neither an Airlock agent token nor a JWT")]
    Malformed,
    #[error("agent tokens are disabled by configuration")]
    Disabled,
    #[error("a JWT was presented but no OIDC issuer is configured")]
    OidcDisabled,
    #[error("OIDC token refused: {0}")]
    Oidc(#[from] OidcError),
    #[error("unknown token")]
    Unknown,
    #[error("token {0} was revoked")]
    Revoked(String),
    #[error("token {0} has expired")]
    Expired(String),
    #[error("identity store unavailable: {0}")]
    Store(#[from] StoreError),
}

impl AuthError {
    pub const CLIENT_MESSAGE: &'static str =
        "authentication failed: invalid, expired or revoked token";
}

/// A freshly minted agent token: the plaintext is shown once and never stored.
pub struct MintedToken {
    pub token: String,
    pub record: TokenRecord,
}

pub fn hash_token(token: &str) -> String {
    hex::encode(sha256(token.as_bytes()))
}

fn sha256(data: &[u8]) -> ring::digest::Digest {
    ring::digest::digest(&ring::digest::SHA256, data)
}

fn random_b64(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buf);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}

/// Whether a token has the shape of a JWS compact serialization: three base64url segments
/// (the last may be empty, as in an unsigned token, which the verifier then refuses).
fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

pub struct IdentityService {
    store: Arc<dyn Store>,
    agent_tokens: bool,
    oidc: OidcVerifier,
}

impl IdentityService {
    pub fn new(store: Arc<dyn Store>, config: &IdentityConfig) -> Self {
        IdentityService {
            store,
            agent_tokens: config.agent_tokens,
            oidc: OidcVerifier::new(&config.oidc),
        }
    }

    /// Fetches the OIDC issuers' keys ahead of the first token (at startup).
    pub async fn prefetch_keys(&self) {
        self.oidc.prefetch().await;
    }

    pub async fn authenticate(&self, token: &str) -> Result<Identity, AuthError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if !token.starts_with(AGENT_TOKEN_PREFIX) {
            if !looks_like_jwt(token) {
                return Err(AuthError::Malformed);
            }
            if self.oidc.is_empty() {
                return Err(AuthError::OidcDisabled);
            }
            return Ok(self.oidc.verify(token).await?);
        }
        if !self.agent_tokens {
            return Err(AuthError::Disabled);
        }
        let record = self
            .store
            .find_token_by_hash(&hash_token(token))
            .await?
            .ok_or(AuthError::Unknown)?;
        if record.revoked_at.is_some() {
            return Err(AuthError::Revoked(record.id));
        }
        if record.expires_at.is_some_and(|at| at <= now_millis()) {
            return Err(AuthError::Expired(record.id));
        }
        Ok(Identity {
            subject: format!("token:{}", record.id),
            name: record.name,
            groups: record.groups,
            method: AuthMethod::AgentToken,
            expires_at: record.expires_at,
        })
    }

    /// Creates an agent token and stores its hash; the plaintext is returned once.
    pub async fn mint(
        &self,
        name: &str,
        groups: Vec<String>,
        ttl: Option<std::time::Duration>,
    ) -> Result<MintedToken, StoreError> {
        let now = now_millis();
        let record = TokenRecord {
            id: format!(
                "tok_{}",
                hex::encode(&sha256(random_b64(16).as_bytes()).as_ref()[..6])
            ),
            name: name.to_string(),
            groups,
            created_at: now,
            expires_at: ttl.map(|d| now.saturating_add(d.as_millis() as Millis)),
            revoked_at: None,
        };
        let token = format!("{AGENT_TOKEN_PREFIX}{}", random_b64(32));
        self.store
            .create_token(&record, &hash_token(&token))
            .await?;
        Ok(MintedToken { token, record })
    }
}
