//! The verifier against a local issuer (discovery + JWKS on a loopback port): valid tokens of
//! each key type, and every refusal the verifier owes.

use super::*;
use axum::routing::get;
use axum::{Json, Router};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

const RSA_1: &str = include_str!("../../../airlock/tests/fixtures/oidc-rsa-1.pem");
const RSA_2: &str = include_str!("../../../airlock/tests/fixtures/oidc-rsa-2.pem");
const EC_1: &str = include_str!("../../../airlock/tests/fixtures/oidc-ec-1.pem");
const AUDIENCE: &str = "api://airlock";

struct Idp {
    issuer: String,
    jwks: Arc<Mutex<Value>>,
    hits: Arc<AtomicUsize>,
    server: tokio::task::JoinHandle<()>,
}

async fn idp() -> Idp {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());
    let jwks = Arc::new(Mutex::new(json!({ "keys": [] })));
    let hits = Arc::new(AtomicUsize::new(0));
    let (iss, keys, count, count2) = (issuer.clone(), jwks.clone(), hits.clone(), hits.clone());
    let app = Router::new()
        .route(
            "/.well-known/openid-configuration",
            get(move || {
                count.fetch_add(1, Ordering::SeqCst);
                let doc = json!({ "issuer": iss, "jwks_uri": format!("{iss}/keys") });
                async move { Json(doc) }
            }),
        )
        .route(
            "/keys",
            get(move || {
                count2.fetch_add(1, Ordering::SeqCst);
                let doc = keys.lock().unwrap().clone();
                async move { Json(doc) }
            }),
        );
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Idp {
        issuer,
        jwks,
        hits,
        server,
    }
}

impl Idp {
    fn publish(&self, keys: &[(&EncodingKey, Algorithm, &str)]) {
        let keys: Vec<Value> = keys
            .iter()
            .map(|(key, alg, kid)| {
                let mut jwk = Jwk::from_encoding_key(key, *alg).unwrap();
                jwk.common.key_id = Some(kid.to_string());
                serde_json::to_value(jwk).unwrap()
            })
            .collect();
        *self.jwks.lock().unwrap() = json!({ "keys": keys });
    }

    fn config(&self) -> OidcIssuerConfig {
        config_for(&self.issuer)
    }

    fn claims(&self) -> Value {
        json!({
            "iss": self.issuer,
            "aud": AUDIENCE,
            "sub": "agent-7",
            "preferred_username": "etl-agent@example.com",
            "groups": ["2f7c5a1e-0000-4000-8000-000000000001", "plain-group"],
            "exp": now() + 600,
            "iat": now(),
        })
    }
}

fn config_for(issuer: &str) -> OidcIssuerConfig {
    let text = format!(
        "identity:\n  oidc:\n    - issuer: {issuer}\n      audience: [\"{AUDIENCE}\", other]\n      group_map:\n        2f7c5a1e-0000-4000-8000-000000000001: db-maintenance-agents\n"
    );
    crate::config::Config::parse(&text, "t.yaml", None)
        .unwrap()
        .config
        .identity
        .oidc
        .remove(0)
}

fn now() -> i64 {
    crate::store::now_millis() / 1000
}

fn rsa(pem: &str) -> EncodingKey {
    EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap()
}

fn mint(key: &EncodingKey, alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn b64(value: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
}

/// An issuer with the RSA key `k1` and the EC key `e1` published, and its verifier.
async fn ready() -> (Idp, OidcVerifier) {
    let idp = idp().await;
    idp.publish(&[
        (&rsa(RSA_1), Algorithm::RS256, "k1"),
        (
            &EncodingKey::from_ec_pem(EC_1.as_bytes()).unwrap(),
            Algorithm::ES256,
            "e1",
        ),
    ]);
    let verifier = OidcVerifier::new(&[idp.config()]);
    verifier.prefetch().await;
    (idp, verifier)
}

#[tokio::test]
async fn valid_rsa_and_ec_tokens_become_identities() {
    let (idp, verifier) = ready().await;
    let claims = idp.claims();
    let token = mint(&rsa(RSA_1), Algorithm::RS256, Some("k1"), &claims);
    let identity = verifier.verify(&token).await.unwrap();
    assert_eq!(identity.subject, format!("oidc:{}#agent-7", idp.issuer));
    assert_eq!(identity.name, "etl-agent@example.com");
    assert_eq!(identity.groups, ["db-maintenance-agents", "plain-group"]);
    assert_eq!(identity.method, AuthMethod::Oidc);
    assert_eq!(
        identity.expires_at,
        Some(claims["exp"].as_i64().unwrap() * 1000)
    );

    let ec = EncodingKey::from_ec_pem(EC_1.as_bytes()).unwrap();
    let token = mint(&ec, Algorithm::ES256, Some("e1"), &claims);
    assert!(verifier.verify(&token).await.is_ok());
    // `k1` declares RS256, so a PS256 token under it is refused.
    let token = mint(&rsa(RSA_1), Algorithm::PS256, Some("k1"), &claims);
    let err = verifier.verify(&token).await.unwrap_err();
    assert!(matches!(err, OidcError::UnknownKey { .. }), "{err}");
}

#[tokio::test]
async fn attacks_and_bad_tokens_are_refused_with_their_reason() {
    let (idp, verifier) = ready().await;
    let key = rsa(RSA_1);
    let good = idp.claims();
    let with = |patch: Value| {
        let mut claims = good.clone();
        for (k, v) in patch.as_object().unwrap() {
            claims[k] = v.clone();
        }
        claims
    };
    let refused = |token: String| {
        let verifier = &verifier;
        async move { verifier.verify(&token).await.unwrap_err() }
    };

    let unsigned = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "kid": "k1"})),
        b64(&good)
    );
    assert!(matches!(refused(unsigned).await, OidcError::Unsigned));

    // Key confusion: an HMAC "signature" keyed with the public key everyone can fetch.
    let jwks = idp.jwks.lock().unwrap().to_string();
    let hs = mint(
        &EncodingKey::from_secret(jwks.as_bytes()),
        Algorithm::HS256,
        Some("k1"),
        &good,
    );
    assert!(matches!(refused(hs).await, OidcError::SharedSecret(_)));

    let expired = mint(
        &key,
        Algorithm::RS256,
        Some("k1"),
        &with(json!({"exp": now() - 120})),
    );
    assert!(matches!(refused(expired).await, OidcError::Expired));
    let leeway = mint(
        &key,
        Algorithm::RS256,
        Some("k1"),
        &with(json!({"exp": now() - 5})),
    );
    assert!(verifier.verify(&leeway).await.is_ok(), "within the leeway");

    let early = mint(
        &key,
        Algorithm::RS256,
        Some("k1"),
        &with(json!({"nbf": now() + 600})),
    );
    assert!(matches!(refused(early).await, OidcError::NotYetValid));

    let foreign = mint(
        &key,
        Algorithm::RS256,
        Some("k1"),
        &with(json!({"iss": "https://evil.example"})),
    );
    assert!(matches!(
        refused(foreign).await,
        OidcError::UnknownIssuer(_)
    ));

    let aud = mint(
        &key,
        Algorithm::RS256,
        Some("k1"),
        &with(json!({"aud": "api://someone-else"})),
    );
    assert!(matches!(refused(aud).await, OidcError::WrongAudience(_)));
    let no_aud = {
        let mut claims = good.clone();
        claims.as_object_mut().unwrap().remove("aud");
        mint(&key, Algorithm::RS256, Some("k1"), &claims)
    };
    assert!(matches!(refused(no_aud).await, OidcError::Claims(_)));

    // Signed by a key the issuer never published, under a published kid.
    let forged = mint(&rsa(RSA_2), Algorithm::RS256, Some("k1"), &good);
    assert!(matches!(refused(forged).await, OidcError::BadSignature));
    let token = mint(&key, Algorithm::RS256, Some("k1"), &good);
    let (head, _) = token.rsplit_once('.').unwrap();
    let tampered = format!("{head}.{}", b64(&json!("not a signature")));
    assert!(matches!(refused(tampered).await, OidcError::BadSignature));
    // An EC token presented under the RSA key's id.
    let ec = EncodingKey::from_ec_pem(EC_1.as_bytes()).unwrap();
    let crossed = mint(&ec, Algorithm::ES256, Some("k1"), &good);
    assert!(matches!(
        refused(crossed).await,
        OidcError::UnknownKey { .. }
    ));

    for junk in ["a.b.c", "eyJhbGciOiJSUzI1NiJ9.e30", "x.y.z.w", "...."] {
        assert!(
            matches!(refused(junk.to_string()).await, OidcError::Malformed(_)),
            "{junk}"
        );
    }

    let overage = with(json!({
        "_claim_names": {"groups": "src1"},
        "_claim_sources": {"src1": {"endpoint": "https://graph.microsoft.com/v1.0/users/x/getMemberObjects"}},
    }));
    let mut overage = overage;
    overage.as_object_mut().unwrap().remove("groups");
    let err = refused(mint(&key, Algorithm::RS256, Some("k1"), &overage)).await;
    assert!(matches!(err, OidcError::GroupOverage(_)));
    assert!(err.to_string().contains("app roles"), "{err}");
}

#[tokio::test]
async fn unknown_kids_refresh_the_keys_at_a_limited_rate() {
    let idp = idp().await;
    idp.publish(&[(&rsa(RSA_1), Algorithm::RS256, "k1")]);
    let verifier = OidcVerifier::new(&[idp.config()]);
    let claims = idp.claims();
    // The first unknown kid fetches (discovery + JWKS); it is still unknown afterwards.
    let token = mint(&rsa(RSA_2), Algorithm::RS256, Some("k2"), &claims);
    let err = verifier.verify(&token).await.unwrap_err();
    assert!(matches!(err, OidcError::UnknownKey { .. }), "{err}");
    assert_eq!(idp.hits.load(Ordering::SeqCst), 2);
    // A flood of made-up kids does not reach the IdP again within the interval.
    for i in 0..20 {
        let token = mint(
            &rsa(RSA_2),
            Algorithm::RS256,
            Some(&format!("bogus-{i}")),
            &claims,
        );
        assert!(verifier.verify(&token).await.is_err());
    }
    assert_eq!(idp.hits.load(Ordering::SeqCst), 2);
    // Rotation: once the new key is published and the interval passed, it verifies.
    idp.publish(&[
        (&rsa(RSA_1), Algorithm::RS256, "k1"),
        (&rsa(RSA_2), Algorithm::RS256, "k2"),
    ]);
    tokio::time::sleep(keys::REFRESH_INTERVAL).await;
    let identity = verifier.verify(&token).await.unwrap();
    assert_eq!(identity.groups, ["db-maintenance-agents", "plain-group"]);
}

#[tokio::test]
async fn an_unreachable_idp_keeps_cached_keys_and_without_keys_refuses() {
    let (idp, verifier) = ready().await;
    let token = mint(&rsa(RSA_1), Algorithm::RS256, Some("k1"), &idp.claims());
    idp.server.abort();
    let _ = (&mut { idp.server }).await;
    assert!(
        verifier.verify(&token).await.is_ok(),
        "cached keys still verify"
    );

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let verifier = OidcVerifier::new(&[config_for(&down)]);
    verifier.prefetch().await;
    let mut claims = json!({"iss": down, "aud": AUDIENCE, "sub": "x", "exp": now() + 60});
    let token = mint(&rsa(RSA_1), Algorithm::RS256, Some("k1"), &claims);
    assert!(matches!(
        verifier.verify(&token).await,
        Err(OidcError::NoKeys(_))
    ));
    claims["groups"] = json!("single");
    let token = mint(&rsa(RSA_1), Algorithm::RS256, None, &claims);
    assert!(matches!(
        verifier.verify(&token).await,
        Err(OidcError::NoKeys(_))
    ));
}
