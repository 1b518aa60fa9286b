//! OpenID Connect identities: JWTs from the configured issuers (Entra ID, Okta, Google, …)
//! verified against the issuer's published keys and turned into an [`Identity`] — subject,
//! display name and groups from the claims the issuer's config names. Owns which algorithms are
//! accepted, the `iss`/`aud`/`exp`/`nbf` checks and the refusal reasons that go to the log.

mod keys;
#[cfg(test)]
mod tests;

use crate::config::OidcIssuerConfig;
use crate::identity::{AuthMethod, Identity};
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use keys::{KeyStore, SigningKey};
use serde_json::{Map, Value};
use std::str::FromStr;
use std::time::Duration;

/// How long one request to an IdP may take; verification must not hang on a slow IdP.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Public-key algorithms only: a shared-secret (HS*) token "signed" with a public key is the
/// classic key-confusion attack, and `none` is no signature at all.
const ACCEPTED: [Algorithm; 8] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
];

/// Why an OIDC token was refused; for the log, never for the client.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("the token is not a well-formed JWT: {0}")]
    Malformed(String),
    #[error("the token is unsigned (alg `none`)")]
    Unsigned,
    #[error("the token uses the shared-secret algorithm `{0}`; only the issuer's public keys (RS*, PS*, ES*) verify tokens")]
    SharedSecret(String),
    #[error("the token's algorithm `{0}` is not accepted (RS*, PS*, ES256, ES384 are)")]
    UnsupportedAlgorithm(String),
    #[error("the token's issuer `{0}` is not a configured OIDC issuer")]
    UnknownIssuer(String),
    #[error("issuer {issuer} publishes no key {kid} usable with {alg:?}, even after refreshing its keys")]
    UnknownKey {
        issuer: String,
        kid: String,
        alg: Algorithm,
    },
    #[error("no signing keys are available for issuer {0}: its JWKS could not be fetched")]
    NoKeys(String),
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (its nbf is in the future)")]
    NotYetValid,
    #[error("the token's audience is not one of {0:?}")]
    WrongAudience(Vec<String>),
    #[error("the token's iss claim does not match issuer {0}")]
    WrongIssuer(String),
    #[error("the token's claims are unusable: {0}")]
    Claims(String),
    #[error("issuer {0} sent a group overage (`_claim_names` instead of the groups): the principal is in too many groups for the token. Configure the app registration to emit app roles (groups_claim: roles) or only the groups assigned to the application")]
    GroupOverage(String),
    #[error("fetching keys failed: {0}")]
    KeyFetch(String),
}

struct Issuer {
    config: OidcIssuerConfig,
    keys: KeyStore,
}

/// The configured issuers and their cached keys.
pub struct OidcVerifier {
    issuers: Vec<Issuer>,
}

impl OidcVerifier {
    pub fn new(configs: &[OidcIssuerConfig]) -> OidcVerifier {
        // Building fails only when no TLS backend can start, where `Client::new` would fail too.
        let http = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .build()
            .unwrap_or_default();
        OidcVerifier {
            issuers: configs
                .iter()
                .map(|config| Issuer {
                    keys: KeyStore::new(config, http.clone()),
                    config: config.clone(),
                })
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.issuers.is_empty()
    }

    /// Fetches every issuer's keys once (at startup); an unreachable IdP is logged, not fatal.
    pub async fn prefetch(&self) {
        for issuer in &self.issuers {
            issuer.keys.refresh().await;
        }
    }

    pub async fn verify(&self, token: &str) -> Result<Identity, OidcError> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(OidcError::Malformed("not three dot-separated parts".into()));
        };
        let alg = algorithm_of(&decode_part(header, "header")?)?;
        let unverified = decode_part(payload, "payload")?;
        let iss = unverified
            .get("iss")
            .and_then(Value::as_str)
            .ok_or_else(|| OidcError::Claims("no `iss` claim".into()))?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.config.issuer == iss)
            .ok_or_else(|| OidcError::UnknownIssuer(iss.to_string()))?;
        let kid = jsonwebtoken::decode_header(token)
            .map_err(|e| OidcError::Malformed(e.to_string()))?
            .kid;

        let usable =
            |keys: &[SigningKey]| -> bool { keys.iter().any(|k| fits(k, kid.as_deref(), alg)) };
        let mut keys = issuer.keys.cached();
        if !usable(&keys) {
            keys = issuer.keys.refresh().await;
        }
        if keys.is_empty() {
            return Err(OidcError::NoKeys(issuer.config.issuer.clone()));
        }
        let mut validation = Validation::new(alg);
        validation.set_issuer(&[&issuer.config.issuer]);
        validation.set_audience(&issuer.config.audience);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = issuer.config.leeway.as_secs();

        let mut verified = None;
        for key in keys.iter().filter(|k| fits(k, kid.as_deref(), alg)) {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation) {
                Ok(data) => {
                    verified = Some(data.claims);
                    break;
                }
                // Without a kid several keys may fit; only a signature failure tries the next.
                Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => continue,
                Err(e) => return Err(refusal(e.into_kind(), &issuer.config)),
            }
        }
        match verified {
            Some(claims) => identity_from(&issuer.config, &claims),
            None if usable(&keys) => Err(OidcError::BadSignature),
            None => Err(OidcError::UnknownKey {
                issuer: issuer.config.issuer.clone(),
                kid: kid.unwrap_or_else(|| "(none named)".into()),
                alg,
            }),
        }
    }
}

/// Whether a key may verify a token naming `kid` (when it names one) signed with `alg`.
fn fits(key: &SigningKey, kid: Option<&str>, alg: Algorithm) -> bool {
    key.algorithms.contains(&alg) && kid.is_none_or(|kid| key.kid.as_deref() == Some(kid))
}

fn decode_part(part: &str, what: &str) -> Result<Map<String, Value>, OidcError> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|e| OidcError::Malformed(format!("the {what} is not base64url: {e}")))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| OidcError::Malformed(format!("the {what} is not a JSON object: {e}")))
}

/// The header's `alg`, refused unless it is a public-key algorithm.
fn algorithm_of(header: &Map<String, Value>) -> Result<Algorithm, OidcError> {
    let name = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or_else(|| OidcError::Malformed("the header has no `alg`".into()))?;
    if name.eq_ignore_ascii_case("none") {
        return Err(OidcError::Unsigned);
    }
    if name.to_ascii_uppercase().starts_with("HS") {
        return Err(OidcError::SharedSecret(name.to_string()));
    }
    Algorithm::from_str(name)
        .ok()
        .filter(|alg| ACCEPTED.contains(alg))
        .ok_or_else(|| OidcError::UnsupportedAlgorithm(name.to_string()))
}

fn refusal(kind: ErrorKind, config: &OidcIssuerConfig) -> OidcError {
    match kind {
        ErrorKind::ExpiredSignature => OidcError::Expired,
        ErrorKind::ImmatureSignature => OidcError::NotYetValid,
        ErrorKind::InvalidAudience => OidcError::WrongAudience(config.audience.clone()),
        ErrorKind::InvalidIssuer => OidcError::WrongIssuer(config.issuer.clone()),
        ErrorKind::InvalidSignature => OidcError::BadSignature,
        ErrorKind::MissingRequiredClaim(claim) => OidcError::Claims(format!("no `{claim}` claim")),
        ErrorKind::InvalidClaimFormat(claim) => {
            OidcError::Claims(format!("the `{claim}` claim has the wrong type"))
        }
        ErrorKind::InvalidAlgorithm => {
            OidcError::UnsupportedAlgorithm("(does not match the key)".into())
        }
        other => OidcError::Malformed(format!("{other:?}")),
    }
}

/// Subject, name, groups and expiry from verified claims.
fn identity_from(
    config: &OidcIssuerConfig,
    claims: &Map<String, Value>,
) -> Result<Identity, OidcError> {
    // Entra replaces the groups with a pointer to the Graph API when there are too many
    // (`_claim_names`, or `hasgroups` in implicit flows). Treating that as "no groups" would
    // silently change which policy applies, so it is refused.
    let overage = claims
        .get("_claim_names")
        .and_then(Value::as_object)
        .is_some_and(|names| {
            names.contains_key("groups")
                || config.groups_claim.iter().any(|c| names.contains_key(c))
        })
        || claims.get("hasgroups").and_then(Value::as_bool) == Some(true);
    if overage {
        return Err(OidcError::GroupOverage(config.issuer.clone()));
    }
    let subject_claim = config.subject_claim.as_deref().unwrap_or("sub");
    let subject = text_claim(claims, subject_claim).ok_or_else(|| {
        OidcError::Claims(format!(
            "no `{subject_claim}` claim to identify the principal"
        ))
    })?;
    let name = config
        .name_claim
        .iter()
        .map(String::as_str)
        .chain(["preferred_username", "email", "name"])
        .find_map(|claim| text_claim(claims, claim))
        .unwrap_or_else(|| subject.clone());

    let mut groups: Vec<String> = Vec::new();
    for claim in &config.groups_claim {
        let values = match claims.get(claim) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(one)) => vec![one.clone()],
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    OidcError::Claims(format!("`{claim}` holds something other than strings"))
                })?,
            Some(_) => {
                return Err(OidcError::Claims(format!(
                    "`{claim}` is neither a string nor a list of strings"
                )))
            }
        };
        for value in values {
            let group = config.group_map.get(&value).cloned().unwrap_or(value);
            if !groups.contains(&group) {
                groups.push(group);
            }
        }
    }
    let expires_at = claims
        .get("exp")
        .and_then(Value::as_f64)
        .map(|exp| (exp * 1000.0) as i64);
    Ok(Identity {
        subject: format!("oidc:{}#{subject}", config.issuer),
        name,
        groups,
        method: AuthMethod::Oidc,
        expires_at,
    })
}

/// A claim as text: strings as they are, numbers (some IdPs send numeric ids) as digits.
fn text_claim(claims: &Map<String, Value>, claim: &str) -> Option<String> {
    match claims.get(claim)? {
        Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}
