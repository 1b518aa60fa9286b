//! One issuer's signing keys: the discovery document and JWKS fetched over HTTP(S), cached, and
//! refreshed when a token names a key id the cache does not hold — at most once per
//! [`REFRESH_INTERVAL`], so a flood of made-up key ids cannot hammer the IdP. When the IdP is
//! unreachable the cached keys keep verifying; with no keys at all every token is refused.

use super::OidcError;
use crate::config::OidcIssuerConfig;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// The least time between two fetches of an issuer's keys.
pub(crate) const REFRESH_INTERVAL: Duration = Duration::from_secs(5);

/// A public key from the JWKS and the algorithms it may verify.
pub(crate) struct SigningKey {
    pub kid: Option<String>,
    pub algorithms: Vec<Algorithm>,
    pub key: DecodingKey,
}

impl SigningKey {
    /// `None` for keys that must never verify a token: encryption keys, symmetric secrets
    /// (a JWKS is public, so an HMAC "key" from it would let anyone sign), unknown types.
    fn from_jwk(jwk: &Jwk) -> Option<SigningKey> {
        if matches!(
            jwk.common.public_key_use,
            Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
        ) {
            return None;
        }
        let family = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => vec![
                Algorithm::RS256,
                Algorithm::RS384,
                Algorithm::RS512,
                Algorithm::PS256,
                Algorithm::PS384,
                Algorithm::PS512,
            ],
            AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
                EllipticCurve::P256 => vec![Algorithm::ES256],
                EllipticCurve::P384 => vec![Algorithm::ES384],
                _ => return None,
            },
            _ => return None,
        };
        // A key that declares its algorithm verifies that one only.
        let algorithms = match &jwk.common.key_algorithm {
            None => family,
            Some(declared) => match Algorithm::from_str(&declared.to_string()) {
                Ok(alg) if family.contains(&alg) => vec![alg],
                _ => return None,
            },
        };
        let key = DecodingKey::from_jwk(jwk).ok()?;
        Some(SigningKey {
            kid: jwk.common.key_id.clone(),
            algorithms,
            key,
        })
    }
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

/// A JWKS read key by key, so one key of an unknown type does not hide the others.
#[derive(Deserialize)]
struct RawJwks {
    keys: Vec<serde_json::Value>,
}

struct Cache {
    keys: Arc<Vec<SigningKey>>,
    last_fetch: Option<Instant>,
}

pub(crate) struct KeyStore {
    issuer: String,
    jwks_uri: Option<String>,
    http: reqwest::Client,
    cache: RwLock<Cache>,
    /// One fetch at a time; whoever waited re-checks the cache instead of fetching again.
    fetching: tokio::sync::Mutex<()>,
}

impl KeyStore {
    pub fn new(config: &OidcIssuerConfig, http: reqwest::Client) -> KeyStore {
        KeyStore {
            issuer: config.issuer.clone(),
            jwks_uri: config.jwks_uri.clone(),
            http,
            cache: RwLock::new(Cache {
                keys: Arc::new(Vec::new()),
                last_fetch: None,
            }),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    pub fn cached(&self) -> Arc<Vec<SigningKey>> {
        match self.cache.read() {
            Ok(cache) => cache.keys.clone(),
            Err(poisoned) => poisoned.into_inner().keys.clone(),
        }
    }

    fn last_fetch(&self) -> Option<Instant> {
        match self.cache.read() {
            Ok(cache) => cache.last_fetch,
            Err(poisoned) => poisoned.into_inner().last_fetch,
        }
    }

    /// Fetches the keys unless that was done less than [`REFRESH_INTERVAL`] ago. Returns the
    /// keys now cached; a failed fetch keeps the old ones and is logged.
    pub async fn refresh(&self) -> Arc<Vec<SigningKey>> {
        let _one_at_a_time = self.fetching.lock().await;
        if self
            .last_fetch()
            .is_some_and(|at| at.elapsed() < REFRESH_INTERVAL)
        {
            return self.cached();
        }
        let fetched = self.fetch().await;
        let mut cache = match self.cache.write() {
            Ok(cache) => cache,
            Err(poisoned) => poisoned.into_inner(),
        };
        cache.last_fetch = Some(Instant::now());
        match fetched {
            Ok(keys) => {
                tracing::info!(issuer = %self.issuer, keys = keys.len(), "fetched the issuer's signing keys");
                cache.keys = Arc::new(keys);
            }
            Err(e) => tracing::warn!(
                issuer = %self.issuer,
                error = %e,
                cached_keys = cache.keys.len(),
                "could not fetch the issuer's signing keys; the cached keys stay in use"
            ),
        }
        cache.keys.clone()
    }

    async fn fetch(&self) -> Result<Vec<SigningKey>, OidcError> {
        let jwks_uri = match &self.jwks_uri {
            Some(uri) => uri.clone(),
            None => {
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    self.issuer.trim_end_matches('/')
                );
                let discovery: Discovery = self.get_json(&url).await?;
                // OpenID Connect Discovery 1.0 §4.3: a document for another issuer is not ours.
                if discovery.issuer != self.issuer {
                    return Err(OidcError::KeyFetch(format!(
                        "the discovery document at {url} is for issuer `{}`",
                        discovery.issuer
                    )));
                }
                discovery.jwks_uri
            }
        };
        let raw: RawJwks = self.get_json(&jwks_uri).await?;
        Ok(raw
            .keys
            .into_iter()
            .filter_map(|value| serde_json::from_value::<Jwk>(value).ok())
            .filter_map(|jwk| SigningKey::from_jwk(&jwk))
            .collect())
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, OidcError> {
        let fail = |e: reqwest::Error| OidcError::KeyFetch(format!("{url}: {e}"));
        self.http
            .get(url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(fail)?
            .json()
            .await
            .map_err(fail)
    }
}
