//! OIDC identities end to end: a local issuer (discovery + JWKS on a loopback port, in the test
//! process) with three tenants shaped like Entra ID, Okta and Google; the real `airlock serve`
//! in front of a real PostgreSQL; psql and the airlock CLI presenting the JWTs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};
use support::*;

const RSA_1: &str = include_str!("fixtures/oidc-rsa-1.pem");
const RSA_2: &str = include_str!("fixtures/oidc-rsa-2.pem");
const EC_1: &str = include_str!("fixtures/oidc-ec-1.pem");
/// psql prints no SQLSTATE for a refused login (28P01); this is its message.
const LOGIN_REFUSED: &str = "password authentication failed";
const AUDIENCE: &str = "api://airlock";
const GOOGLE_CLIENT: &str = "1234-abc.apps.googleusercontent.com";
const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
/// Entra object ids of the groups `agents` and `dba`, mapped by `group_map`.
const GUID_AGENTS: &str = "0b6f1b2c-4d0e-4c57-9c1e-6a1f00000001";
const GUID_DBA: &str = "0b6f1b2c-4d0e-4c57-9c1e-6a1f00000002";

/// The local identity provider: every tenant `/{tenant}` is an issuer sharing one JWKS.
#[derive(Clone)]
struct Idp {
    base: String,
    jwks: Arc<Mutex<Value>>,
    down: Arc<AtomicBool>,
}

async fn discovery(State(idp): State<Idp>, Path(tenant): Path<String>) -> Response {
    if idp.down.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let issuer = format!("{}/{tenant}", idp.base);
    Json(json!({ "issuer": issuer, "jwks_uri": format!("{issuer}/keys") })).into_response()
}

async fn keys(State(idp): State<Idp>) -> Response {
    if idp.down.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let doc = idp.jwks.lock().unwrap().clone();
    Json(doc).into_response()
}

impl Idp {
    fn start(rt: &tokio::runtime::Runtime) -> Idp {
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let idp = Idp {
            base: format!("http://{}", listener.local_addr().unwrap()),
            jwks: Arc::new(Mutex::new(json!({ "keys": [] }))),
            down: Arc::new(AtomicBool::new(false)),
        };
        let app = Router::new()
            .route("/{tenant}/.well-known/openid-configuration", get(discovery))
            .route("/{tenant}/keys", get(keys))
            .with_state(idp.clone());
        rt.spawn(async move { axum::serve(listener, app).await });
        idp
    }

    fn issuer(&self, tenant: &str) -> String {
        format!("{}/{tenant}", self.base)
    }

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

    fn identity_yaml(&self) -> String {
        format!(
            "identity:\n  oidc:\n\
             \x20   - issuer: {entra}\n      audience: [\"{AUDIENCE}\"]\n      groups_claim: [groups, roles]\n      subject_claim: oid\n      group_map:\n        {GUID_AGENTS}: agents\n        {GUID_DBA}: dba\n\
             \x20   - issuer: {okta}\n      audience: \"{AUDIENCE}\"\n\
             \x20   - issuer: {google}\n      audience: {GOOGLE_CLIENT}\n      groups_claim: hd\n      name_claim: email\n      group_map:\n        example.com: loaders\n",
            entra = self.issuer("entra"),
            okta = self.issuer("okta"),
            google = self.issuer("google"),
        )
    }

    /// An Entra ID v2 access token for a service principal (app roles and GUID groups).
    fn entra_claims(&self, oid: &str, group: &str) -> Value {
        json!({
            "iss": self.issuer("entra"), "aud": AUDIENCE, "tid": TENANT, "oid": oid,
            "sub": format!("pairwise-{oid}"), "azp": "5e3ce6c0-2b1f-4285-8d4b-75ee78787346",
            "roles": ["Airlock.Agent"], "groups": [group], "name": format!("spn {oid}"),
            "ver": "2.0", "iat": now(), "nbf": now() - 5, "exp": now() + 600,
        })
    }

    /// An Okta access token: group names in `groups`.
    fn okta_claims(&self, user: &str, groups: &[&str]) -> Value {
        json!({
            "iss": self.issuer("okta"), "aud": AUDIENCE, "sub": format!("00u{user}"),
            "preferred_username": format!("{user}@example.com"), "groups": groups,
            "cid": "0oa1abcd", "iat": now(), "exp": now() + 600,
        })
    }

    /// A Google ID token of a Workspace user (hosted domain `hd`).
    fn google_claims(&self, email: &str) -> Value {
        json!({
            "iss": self.issuer("google"), "aud": GOOGLE_CLIENT, "azp": GOOGLE_CLIENT,
            "sub": "110169484474386276334", "email": email, "email_verified": true,
            "hd": "example.com", "iat": now(), "exp": now() + 600,
        })
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn rsa(pem: &str) -> EncodingKey {
    EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap()
}

fn ec() -> EncodingKey {
    EncodingKey::from_ec_pem(EC_1.as_bytes()).unwrap()
}

fn mint(key: &EncodingKey, alg: Algorithm, kid: &str, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_string());
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn rs256(claims: &Value) -> String {
    mint(&rsa(RSA_1), Algorithm::RS256, "k1", claims)
}

fn b64(value: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
}

struct Setup {
    _rt: tokio::runtime::Runtime,
    idp: Idp,
    _pg: PgServer,
    gw: Gateway,
}

fn setup() -> Setup {
    let rt = runtime();
    let idp = Idp::start(&rt);
    idp.publish(&[
        (&rsa(RSA_1), Algorithm::RS256, "k1"),
        (&ec(), Algorithm::ES256, "e1"),
    ]);
    let pg = PgServer::start(UpstreamAuth::ScramSha256);
    let yaml = format!("{}{}", template_config(&pg, "60s"), idp.identity_yaml());
    let gw = Gateway::for_pg_config(&pg, &yaml);
    Setup {
        _rt: rt,
        idp,
        _pg: pg,
        gw,
    }
}

fn assert_refused(out: &std::process::Output, what: &str, code: &str) {
    assert!(
        !out.status.success(),
        "{what} should have been refused: {}",
        describe(out)
    );
    assert!(
        all_output(out).contains(code),
        "{what}: expected {code}: {}",
        describe(out)
    );
}

#[test]
fn entra_okta_and_google_tokens_get_their_groups_policy() {
    let s = setup();
    let entra_agent = rs256(&s.idp.entra_claims("agent-oid-1", GUID_AGENTS));
    let okta_agent = mint(
        &ec(),
        Algorithm::ES256,
        "e1",
        &s.idp.okta_claims("etl", &["agents", "everyone"]),
    );
    let google = rs256(&s.idp.google_claims("ana@example.com"));

    for (who, token) in [("entra", &entra_agent), ("okta", &okta_agent)] {
        let out = s.gw.psql(token, "prod", "select count(*) from items");
        assert_eq!(assert_ok(&out, who).trim(), "3", "{who}");
        let out = s.gw.psql(token, "prod", "truncate items");
        assert_refused(&out, &format!("{who} truncate"), "42501");
    }
    // Google: `hd` mapped to `loaders`, whose policy reads but does not delete.
    let out =
        s.gw.psql(&google, "prod", "select name from items where id = 1");
    assert_eq!(assert_ok(&out, "google select").trim(), "alpha");
    let out = s.gw.psql(&google, "prod", "delete from items");
    assert_refused(&out, "google delete", "42501");

    // whoami shows what the gateway resolved.
    let me = s.gw.cli_json_as(&entra_agent, &["whoami"]);
    assert_eq!(
        me["subject"],
        format!("oidc:{}#agent-oid-1", s.idp.issuer("entra"))
    );
    assert_eq!(me["method"], "oidc");
    assert_eq!(me["groups"], json!(["agents", "Airlock.Agent"]));
    assert_eq!(me["name"], "spn agent-oid-1");
    assert!(me["expires_at"].as_i64().unwrap() > now() * 1000);
    let out = s.gw.cli_as(&google, &["whoami"]);
    let table = assert_ok(&out, "whoami (table)");
    for needle in ["ana@example.com", "loaders", "oidc", "expires"] {
        assert!(table.contains(needle), "{needle} in {table}");
    }
    let admin = s.gw.cli_json(&["whoami"]);
    assert_eq!(admin["method"], "agent-token");
    assert_eq!(admin["admin"], true);

    // A held DELETE is approved by a reviewer whose `dba` group comes from an Entra GUID.
    let reviewer = rs256(&s.idp.entra_claims("dba-oid-9", GUID_DBA));
    let mut held =
        s.gw.psql_spawn(&okta_agent, "prod", "delete from items where id = 3");
    let id = held.wait_pending(&s.gw);
    let out = s.gw.cli_as(&okta_agent, &["approve", &id]);
    assert!(!out.status.success(), "the agent approved its own request");
    let out =
        s.gw.cli_as(&reviewer, &["approve", &id, "--reason", "ok by dba"]);
    assert_ok(&out, "approve as an OIDC reviewer");
    let out = held.finish(WAIT);
    assert_ok(&out, "held delete");
    let request = s.gw.approval(&id);
    let text = serde_json::to_string(&request).unwrap();
    assert!(text.contains("spn dba-oid-9"), "approver recorded: {text}");
    assert!(
        text.contains("etl@example.com"),
        "requester recorded: {text}"
    );
}

#[test]
fn forged_and_invalid_tokens_are_refused_everywhere() {
    let s = setup();
    let good = s.idp.okta_claims("etl", &["agents"]);
    let with = |patch: Value| {
        let mut claims = good.clone();
        for (k, v) in patch.as_object().unwrap() {
            claims[k] = v.clone();
        }
        claims
    };
    let jwks = s.idp.jwks.lock().unwrap().to_string();
    let mut overage = s.idp.entra_claims("agent-oid-2", GUID_AGENTS);
    overage.as_object_mut().unwrap().remove("groups");
    overage["_claim_names"] = json!({ "groups": "src1" });
    let attacks = [
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(&json!({"alg": "none", "kid": "k1"})),
                b64(&good)
            ),
            "alg `none`",
        ),
        (
            "HS256 keyed with the public JWKS",
            mint(
                &EncodingKey::from_secret(jwks.as_bytes()),
                Algorithm::HS256,
                "k1",
                &good,
            ),
            "shared-secret",
        ),
        (
            "expired",
            rs256(&with(json!({"exp": now() - 300}))),
            "has expired",
        ),
        (
            "not yet valid",
            rs256(&with(json!({"nbf": now() + 300}))),
            "not valid yet",
        ),
        (
            "wrong issuer",
            rs256(&with(json!({"iss": "https://evil.example"}))),
            "not a configured OIDC issuer",
        ),
        (
            "wrong audience",
            rs256(&with(json!({"aud": "api://other"}))),
            "audience",
        ),
        (
            "unknown key",
            mint(&rsa(RSA_2), Algorithm::RS256, "k9", &good),
            "publishes no key",
        ),
        (
            "bad signature",
            mint(&rsa(RSA_2), Algorithm::RS256, "k1", &good),
            "signature does not verify",
        ),
        (
            "malformed",
            "eyJhbGciOiJSUzI1NiJ9.bm90IGpzb24.c2ln".to_string(),
            "not a well-formed JWT",
        ),
        ("group overage", rs256(&overage), "group overage"),
    ];
    for (what, token, reason) in &attacks {
        let out = s.gw.psql(token, "prod", "select 1");
        assert_refused(&out, what, LOGIN_REFUSED);
        let out = s.gw.cli_as(token, &["whoami"]);
        assert!(!out.status.success(), "{what}: whoami accepted it");
        assert!(
            all_output(&out).contains("401"),
            "{what}: {}",
            describe(&out)
        );
        assert!(
            s.gw.log().contains(reason),
            "{what}: no `{reason}` in the gateway log"
        );
    }
    assert!(
        s.gw.log().contains("app roles"),
        "the overage refusal tells the admin what to do"
    );
}

#[test]
fn rotated_keys_are_picked_up_and_a_down_idp_lets_nothing_new_through() {
    let s = setup();
    let claims = s.idp.okta_claims("etl", &["agents"]);
    // The IdP rotates: a new key `k2` is published beside the old one.
    s.idp.publish(&[
        (&rsa(RSA_1), Algorithm::RS256, "k1"),
        (&rsa(RSA_2), Algorithm::RS256, "k2"),
    ]);
    let rotated = mint(&rsa(RSA_2), Algorithm::RS256, "k2", &claims);
    // Refreshes are rate-limited (one per 5 s), so the new key may take a moment to be fetched.
    wait_until(Duration::from_secs(20), "the rotated key to verify", || {
        let out = s.gw.psql(&rotated, "prod", "select 1");
        if out.status.success() {
            Some(())
        } else {
            thread::sleep(Duration::from_millis(500));
            None
        }
    });

    // The IdP goes down: cached keys still verify, a key it never served does not.
    s.idp.down.store(true, Ordering::SeqCst);
    let out = s.gw.psql(&rs256(&claims), "prod", "select 1");
    assert_ok(&out, "cached key while the IdP is down");
    thread::sleep(Duration::from_secs(6));
    let unknown = mint(&ec(), Algorithm::ES256, "e-new", &claims);
    let out = s.gw.psql(&unknown, "prod", "select 1");
    assert_refused(&out, "unknown key while the IdP is down", LOGIN_REFUSED);
    assert!(s.gw.log().contains("cached keys stay in use"));
}

#[test]
fn a_session_does_not_outlive_its_token() {
    let s = setup();
    let mut claims = s.idp.okta_claims("etl", &["agents"]);
    let expires = now() + 3;
    claims["exp"] = json!(expires);
    let token = rs256(&claims);
    let rt = runtime();
    rt.block_on(async {
        let (client, _) = s.gw.connect(&token, "prod").await.expect("connect");
        let rows = client
            .query("select count(*) from items", &[])
            .await
            .unwrap();
        assert_eq!(rows.len(), 1);
        let wait = Duration::from_secs((expires - now() + 1).max(0) as u64);
        tokio::time::sleep(wait).await;
        let started = Instant::now();
        let err = client
            .query("select count(*) from items", &[])
            .await
            .unwrap_err();
        assert_eq!(
            sqlstate(&err).as_deref(),
            Some("28000"),
            "{}",
            db_message(&err)
        );
        assert!(db_message(&err).contains("expired"), "{}", db_message(&err));
        assert!(started.elapsed() < Duration::from_secs(5));
        // The gateway closed the connection.
        let again = client.query("select 1", &[]).await;
        assert!(again.is_err());
        assert!(client.is_closed());
    });
}
