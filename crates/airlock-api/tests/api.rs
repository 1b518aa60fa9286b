//! The REST API driven through its router (no sockets) over a real SQLite store in a
//! temporary directory: authentication, who may see and do what, and the response shapes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use airlock_api::{router, ApiState};
use airlock_core::config::Config;
use airlock_core::gate::Gate;
use airlock_core::identity::AuthError;
use airlock_core::store::{
    now_millis, EventDetail, EventRecord, JournalEvent, NewApproval, NewSession, Store,
};
use airlock_store::SqliteStore;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use std::sync::Arc;
use tempfile::TempDir;
use tower::ServiceExt;

const UPSTREAM_PASSWORD: &str = "upstream-pw-never-shown";

const CONFIG: &str = r#"
connections:
  - name: prod
    type: postgres
    address: db.internal:5432
    database: app
    user: maintenance
    password: upstream-pw-never-shown
  - name: staging
    type: postgres
    address: db-staging:5432
    user: staging
    password: upstream-pw-never-shown
policies:
  - name: maintenance
    groups: [agents]
    connections: [prod]
    rules:
      - match: SELECT
        action: allow
      - match: DELETE|UPDATE
        action: require-approval
        reviewers: [dba]
        timeout: 5m
"#;

struct Harness {
    _dir: TempDir,
    store: Arc<SqliteStore>,
    app: Router,
    admin: String,
    agent: String,
    agent_subject: String,
    dba: String,
    outsider: String,
}

async fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("airlock.db").display());
    let store = Arc::new(SqliteStore::open(&url).await.unwrap());
    let loaded = Config::parse(CONFIG, "test.yaml", None).unwrap();
    let journal = dir.path().join("events.journal");
    let gate = Arc::new(
        Gate::open(
            store.clone(),
            loaded.policies,
            &loaded.config.identity,
            &journal,
        )
        .await
        .unwrap(),
    );
    let app = router(ApiState {
        gate: gate.clone(),
        config: Arc::new(loaded.config),
    });
    let mint = |name: &'static str, group: &'static str| {
        let gate = gate.clone();
        async move {
            gate.identity()
                .mint(name, vec![group.to_string()], None)
                .await
                .unwrap()
        }
    };
    let admin = mint("admin", "airlock-admins").await;
    let agent = mint("agent", "agents").await;
    let dba = mint("dba", "dba").await;
    let outsider = mint("outsider", "marketing").await;
    Harness {
        _dir: dir,
        store,
        app,
        admin: admin.token,
        agent_subject: format!("token:{}", agent.record.id),
        agent: agent.token,
        dba: dba.token,
        outsider: outsider.token,
    }
}

impl Harness {
    async fn raw(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, String, Option<String>) {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = match body {
            Some(body) => request
                .header("content-type", "application/json")
                .body(Body::from(body.to_string())),
            None => request.body(Body::empty()),
        }
        .unwrap();
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string());
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            String::from_utf8(bytes.to_vec()).unwrap(),
            content_type,
        )
    }

    async fn call(
        &self,
        method: Method,
        uri: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let (status, text, _) = self.raw(method, uri, Some(token), body).await;
        let value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{uri} answered {status} with non-JSON {text:?}: {e}"));
        (status, value)
    }

    async fn get(&self, uri: &str, token: &str) -> (StatusCode, Value) {
        self.call(Method::GET, uri, token, None).await
    }

    async fn post(&self, uri: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, uri, token, Some(body)).await
    }

    /// A session of the agent with one recorded statement and a pending approval request.
    async fn held_delete(&self) -> (i64, i64) {
        let session_id = self
            .store
            .open_session(&NewSession {
                protocol: "postgres".into(),
                connection: "prod".into(),
                subject: self.agent_subject.clone(),
                display_name: "agent".into(),
                groups: vec!["agents".into()],
                auth_method: "agent-token".into(),
                client_addr: "127.0.0.1:40000".into(),
                started_at: now_millis(),
            })
            .await
            .unwrap();
        let now = now_millis();
        let approval = self
            .store
            .create_approval(&NewApproval {
                session_id,
                requester_subject: self.agent_subject.clone(),
                requester_name: "agent".into(),
                requester_groups: vec!["agents".into()],
                connection: "prod".into(),
                protocol: "postgres".into(),
                operation: "DELETE FROM users WHERE id = $1".into(),
                params: vec![Some("42".into())],
                statement_kinds: vec!["DELETE".into()],
                policy: "maintenance".into(),
                rule: "match: DELETE|UPDATE".into(),
                reviewers: vec!["dba".into()],
                approvals_needed: 1,
                created_at: now,
                expires_at: now + 300_000,
                all_groups_must_approve: false,
                escalate_at: None,
                escalate_to: Vec::new(),
                preview: None,
                approval_window_ms: None,
                remind_after_ms: None,
            })
            .await
            .unwrap();
        self.store
            .ingest_events(
                vec![JournalEvent::encode(&EventRecord {
                    id: 1,
                    session_id,
                    at: now,
                    detail: EventDetail::Statement {
                        operation: "DELETE FROM users WHERE id = $1".into(),
                        params: vec![Some("42".into())],
                        statement_kinds: vec!["DELETE".into()],
                        action: "require-approval".into(),
                        policy: Some("maintenance".into()),
                        rule: Some("match: DELETE|UPDATE".into()),
                        reason: None,
                        request_id: Some(approval),
                    },
                    prev_hash: None,
                    hash: None,
                })
                .unwrap()],
                1,
            )
            .await
            .unwrap();
        (session_id, approval)
    }
}

#[tokio::test]
async fn bad_or_missing_tokens_get_401_and_health_needs_none() {
    let h = harness().await;
    for token in [Some("alk_not-a-real-token"), Some("eyJhbGciOi.x.y"), None] {
        let (status, body, _) = h.raw(Method::GET, "/api/v1/approvals", token, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body, json!({ "error": AuthError::CLIENT_MESSAGE }));
    }
    let (status, body, _) = h.raw(Method::GET, "/healthz", None, None).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
    let (status, _, _) = h.raw(Method::GET, "/readyz", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = h.get("/api/v1/nope", &h.admin).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"].is_string());
}

/// The routes the CLI, the console and the README rely on, as `METHOD /path`.
const ROUTES: [&str; 27] = [
    "GET /healthz",
    "GET /readyz",
    "GET /api/openapi.json",
    "GET /api/v1/approvals",
    "GET /api/v1/audit/verify",
    "GET /api/v1/approvals/{id}",
    "POST /api/v1/approvals/{id}/approve",
    "POST /api/v1/approvals/{id}/deny",
    "GET /api/v1/sessions",
    "GET /api/v1/sessions/export",
    "GET /api/v1/sessions/{id}",
    "GET /api/v1/sessions/{id}/events",
    "GET /api/v1/tokens",
    "POST /api/v1/tokens",
    "DELETE /api/v1/tokens/{id}",
    "GET /api/v1/connections",
    "POST /api/v1/policies/explain",
    "GET /api/v1/policies",
    "PUT /api/v1/policies",
    "GET /api/v1/policies/changes",
    "GET /api/v1/whoami",
    "POST /api/v1/exec",
    "GET /api/v1/exec/{id}",
    "DELETE /api/v1/exec/{id}",
    "GET /mcp",
    "POST /mcp",
    "DELETE /mcp",
];

/// Routes are mounted only through their `#[utoipa::path]` descriptions, so the document lists
/// exactly what is served: every route above is in it, nothing else is, and each one it lists
/// is really answered by its handler — without a token, 401 where the document asks for the
/// bearer scheme and 200 where it does not.
#[tokio::test]
async fn the_openapi_document_describes_every_route() {
    let h = harness().await;
    let (status, text, content_type) = h.raw(Method::GET, "/api/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type.as_deref(), Some("application/json"));
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["security"], json!([{ "bearer": [] }]));
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    let mut documented = Vec::new();
    let mut operation_ids = std::collections::HashSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let route = format!("{} {path}", method.to_uppercase());
            let id = operation["operationId"].as_str().unwrap();
            assert!(
                operation_ids.insert(id),
                "{route}: operationId {id} is not unique"
            );
            let open = operation["security"] == json!([{}]);
            let uri = path.replace("{id}", "1");
            let method = Method::from_bytes(route.split(' ').next().unwrap().as_bytes()).unwrap();
            let (status, body, _) = h.raw(method, &uri, None, None).await;
            let expected = if open {
                StatusCode::OK
            } else {
                StatusCode::UNAUTHORIZED
            };
            assert_eq!(status, expected, "{route} answered {body}");
            if !open {
                assert!(
                    operation["responses"]["401"]["content"]["application/json"]["schema"]["$ref"]
                        .is_string(),
                    "{route} does not document its 401"
                );
            }
            documented.push(route);
        }
    }
    documented.sort();
    let mut expected = ROUTES.to_vec();
    expected.sort();
    assert_eq!(documented, expected);
    // Every schema reference resolves.
    for reference in text.match_indices("#/components/schemas/") {
        let rest = &text[reference.0 + reference.1.len()..];
        let name = &rest[..rest.find('"').unwrap()];
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "dangling $ref {name}"
        );
    }
    // The approval queue's shapes come from the handlers' types.
    let approval = &doc["components"]["schemas"]["ApprovalRecord"];
    assert!(approval.to_string().contains("replacement"), "{approval}");
}

#[tokio::test]
async fn admins_mint_list_and_revoke_tokens() {
    let h = harness().await;
    let (status, created) = h
        .post(
            "/api/v1/tokens",
            &h.admin,
            json!({ "name": "ci", "groups": ["agents", " etl "], "ttl": "24h" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let token = created["token"].as_str().unwrap().to_string();
    let id = created["id"].as_str().unwrap().to_string();
    assert!(token.starts_with("alk_"));
    assert_eq!(created["groups"], json!(["agents", "etl"]));
    let ttl = created["expires_at"].as_i64().unwrap() - created["created_at"].as_i64().unwrap();
    assert_eq!(ttl, 24 * 3600 * 1000);

    // The new token works, and is no admin.
    let (status, _) = h.get("/api/v1/tokens", &token).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let (status, list) = h.get("/api/v1/tokens", &h.admin).await;
    assert_eq!(status, StatusCode::OK);
    let listed: Vec<&Value> = list.as_array().unwrap().iter().collect();
    assert_eq!(listed.len(), 5);
    assert!(listed.iter().any(|t| t["id"] == id.as_str()));
    assert!(!list.to_string().contains(&token));
    assert!(listed.iter().all(|t| t.get("token").is_none()));

    let (status, revoked) = h
        .call(
            Method::DELETE,
            &format!("/api/v1/tokens/{id}"),
            &h.admin,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{revoked}");
    assert_eq!(revoked["id"], id.as_str());
    let (status, _) = h.get("/api/v1/connections", &token).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = h
        .call(
            Method::DELETE,
            &format!("/api/v1/tokens/{id}"),
            &h.admin,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    for (body, needle) in [
        (json!({ "name": "", "groups": ["a"] }), "name"),
        (json!({ "name": "x", "groups": [] }), "group"),
        (
            json!({ "name": "x", "groups": ["a"], "ttl": "soon" }),
            "ttl",
        ),
        (json!({ "name": "x" }), "groups"),
    ] {
        let (status, answer) = h.post("/api/v1/tokens", &h.admin, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(needle),
            "{answer}"
        );
    }
}

#[tokio::test]
async fn non_admins_cannot_touch_tokens() {
    let h = harness().await;
    for token in [&h.agent, &h.dba] {
        let (status, body) = h.get("/api/v1/tokens", token).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(body["error"].as_str().unwrap().contains("admin"));
        let (status, _) = h
            .post(
                "/api/v1/tokens",
                token,
                json!({ "name": "mine", "groups": ["airlock-admins"] }),
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, _) = h
            .call(Method::DELETE, "/api/v1/tokens/tok_x", token, None)
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
    }
}

#[tokio::test]
async fn explain_decides_without_running_anything() {
    let h = harness().await;
    let explain = |sql: &'static str, groups: Value| json!({ "groups": groups, "connection": "prod", "sql": sql });
    let (status, body) = h
        .post(
            "/api/v1/policies/explain",
            &h.admin,
            explain("select * from users", json!(["agents"])),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["decision"]["action"], "allow");
    assert_eq!(body["decision"]["policy"], "maintenance");
    assert_eq!(body["decision"]["rule"], "match: SELECT");
    assert_eq!(body["statement_kinds"], json!(["SELECT"]));

    let (_, body) = h
        .post(
            "/api/v1/policies/explain",
            &h.admin,
            explain("/* hi */ delete from users", json!(["agents"])),
        )
        .await;
    assert_eq!(body["decision"]["action"], "require-approval");
    assert_eq!(body["decision"]["reviewers"], json!(["dba"]));
    assert_eq!(body["decision"]["timeout"], "5m");
    assert_eq!(body["statement_kinds"], json!(["DELETE"]));

    let (_, body) = h
        .post(
            "/api/v1/policies/explain",
            &h.admin,
            explain("select 1", json!(["marketing"])),
        )
        .await;
    assert_eq!(body["decision"]["action"], "deny");
    assert!(body["decision"]["reason"]
        .as_str()
        .unwrap()
        .contains("no policy"));

    let (status, _) = h
        .post(
            "/api/v1/policies/explain",
            &h.agent,
            explain("select 1", json!(["agents"])),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = h
        .post(
            "/api/v1/policies/explain",
            &h.admin,
            json!({ "groups": ["agents"], "connection": "nope", "sql": "select 1" }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"].as_str().unwrap().contains("nope"));
    // Nothing was recorded.
    assert!(h
        .store
        .list_sessions(&Default::default())
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn connections_never_show_the_password_and_follow_grants() {
    let h = harness().await;
    let (status, text, _) = h
        .raw(Method::GET, "/api/v1/connections", Some(&h.admin), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(!text.contains(UPSTREAM_PASSWORD), "{text}");
    assert!(!text.contains("password"), "{text}");
    let all: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        all,
        json!([
            { "name": "prod", "type": "postgres", "address": "db.internal:5432",
              "database": "app", "user": "maintenance", "granted": false, "policy": null },
            { "name": "staging", "type": "postgres", "address": "db-staging:5432",
              "database": null, "user": "staging", "granted": false, "policy": null },
        ])
    );
    let (_, mine) = h.get("/api/v1/connections", &h.agent).await;
    assert_eq!(mine[0]["granted"], true);
    assert!(
        mine[0]["policy"]
            .as_str()
            .unwrap()
            .contains("allows SELECT"),
        "{mine}"
    );
    let names: Vec<&str> = mine
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["prod"]);
    let (_, none) = h.get("/api/v1/connections", &h.outsider).await;
    assert_eq!(none, json!([]));
}

#[tokio::test]
async fn approvals_are_visible_to_the_right_people_and_votes_follow_the_rules() {
    let h = harness().await;
    let (_, id) = h.held_delete().await;
    let one = format!("/api/v1/approvals/{id}");

    for token in [&h.admin, &h.agent, &h.dba] {
        let (status, list) = h.get("/api/v1/approvals?state=pending", token).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
        let (status, record) = h.get(&one, token).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(record["operation"], "DELETE FROM users WHERE id = $1");
        assert_eq!(record["params"], json!(["42"]));
    }
    let (_, list) = h.get("/api/v1/approvals", &h.outsider).await;
    assert_eq!(list, json!([]));
    let (status, _) = h.get(&one, &h.outsider).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = h.get("/api/v1/approvals?state=bogus", &h.admin).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // The requester cannot approve its own request; a non-reviewer (even an admin) cannot vote.
    let (status, body) = h.post(&format!("{one}/approve"), &h.agent, json!({})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body["error"].as_str().unwrap().contains("own request"));
    for token in [&h.admin, &h.outsider] {
        let (status, body) = h
            .post(&format!("{one}/approve"), token, json!({ "reason": "ok" }))
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert!(body["error"].as_str().unwrap().contains("dba"), "{body}");
    }
    // A denial needs a reason.
    for body in [json!({}), json!({ "reason": "  " })] {
        let (status, answer) = h.post(&format!("{one}/deny"), &h.dba, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    }
    let (_, still) = h.get(&one, &h.admin).await;
    assert_eq!(still["state"], "pending");

    // A reviewer approves, with no body at all.
    let (status, approved) = h
        .call(Method::POST, &format!("{one}/approve"), &h.dba, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{approved}");
    assert_eq!(approved["state"], "approved");
    assert_eq!(approved["votes"][0]["reviewer_name"], "dba");
    let (_, list) = h.get("/api/v1/approvals?state=approved", &h.agent).await;
    assert_eq!(list.as_array().unwrap().len(), 1);

    let (status, body) = h
        .post(
            &format!("{one}/deny"),
            &h.dba,
            json!({ "reason": "too late" }),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, _) = h
        .post("/api/v1/approvals/999/approve", &h.dba, json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = h.get("/api/v1/approvals/not-a-number", &h.dba).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_reviewer_denial_carries_its_reason() {
    let h = harness().await;
    let (_, id) = h.held_delete().await;
    let (status, denied) = h
        .post(
            &format!("/api/v1/approvals/{id}/deny"),
            &h.dba,
            json!({ "reason": "not during business hours" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{denied}");
    assert_eq!(denied["state"], "denied");
    assert_eq!(denied["votes"][0]["reason"], "not during business hours");
}

#[tokio::test]
async fn sessions_are_visible_to_their_subject_and_admins() {
    let h = harness().await;
    let (session, _) = h.held_delete().await;
    let one = format!("/api/v1/sessions/{session}");

    for token in [&h.admin, &h.agent] {
        let (status, list) = h.get("/api/v1/sessions", token).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(list.as_array().unwrap().len(), 1);
        let (status, record) = h.get(&one, token).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(record["subject"], h.agent_subject.as_str());
        let (status, events) = h.get(&format!("{one}/events"), token).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(events[0]["kind"], "statement");
        assert_eq!(events[0]["action"], "require-approval");
    }
    for token in [&h.dba, &h.outsider] {
        let (_, list) = h.get("/api/v1/sessions", token).await;
        assert_eq!(list, json!([]));
        let (status, _) = h.get(&one, token).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _) = h.get(&format!("{one}/events"), token).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    let future = now_millis() + 60_000;
    let (_, later) = h
        .get(&format!("/api/v1/sessions?since={future}"), &h.admin)
        .await;
    assert_eq!(later, json!([]));
    let (status, _) = h.get("/api/v1/sessions?limit=0", &h.admin).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn exports_are_one_row_per_event_in_jsonl_and_csv() {
    let h = harness().await;
    let (session, _) = h.held_delete().await;

    let (status, text, content_type) = h
        .raw(
            Method::GET,
            "/api/v1/sessions/export?format=jsonl",
            Some(&h.agent),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type.as_deref(), Some("application/x-ndjson"));
    let rows: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 1, "{text}");
    assert_eq!(rows[0]["session_id"], session);
    assert_eq!(rows[0]["subject"], h.agent_subject.as_str());
    assert_eq!(rows[0]["groups"], json!(["agents"]));
    assert_eq!(rows[0]["client_addr"], "127.0.0.1:40000");
    assert_eq!(rows[0]["kind"], "statement");
    assert_eq!(rows[0]["operation"], "DELETE FROM users WHERE id = $1");
    assert!(rows[0]["event_id"].is_i64() && rows[0]["at"].is_i64());

    let (status, csv, content_type) = h
        .raw(
            Method::GET,
            "/api/v1/sessions/export?format=csv",
            Some(&h.admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(content_type.unwrap().starts_with("text/csv"));
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 2, "{csv}");
    assert!(lines[0].starts_with("session_id,protocol,connection,subject,display_name,groups,"));
    assert!(lines[1].contains(",\"[\"\"agents\"\"]\","), "{csv}");

    // Someone else's sessions are not in their export; a later `since` leaves nothing.
    let (_, text, _) = h
        .raw(
            Method::GET,
            "/api/v1/sessions/export",
            Some(&h.outsider),
            None,
        )
        .await;
    assert_eq!(text, "");
    let future = now_millis() + 60_000;
    let (_, text, _) = h
        .raw(
            Method::GET,
            &format!("/api/v1/sessions/export?since={future}"),
            Some(&h.admin),
            None,
        )
        .await;
    assert_eq!(text, "");
    let (status, _) = h.get("/api/v1/sessions/export?format=xml", &h.admin).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

impl Harness {
    /// A PUT of `text` (YAML) to `/api/v1/policies`.
    async fn put_policies(&self, token: &str, text: &str) -> (StatusCode, Value) {
        let request = Request::builder()
            .method(Method::PUT)
            .uri("/api/v1/policies")
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/yaml")
            .body(Body::from(text.to_string()))
            .unwrap();
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap())
    }
}

#[tokio::test]
async fn admins_replace_policies_and_every_change_is_audited() {
    let h = harness().await;
    let (status, live) = h.get("/api/v1/policies", &h.admin).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(live["policies"][0]["name"], "maintenance");
    assert_eq!(live["policies"][0]["rules"][1]["timeout"], "5m");
    for token in [&h.agent, &h.dba] {
        assert_eq!(
            h.get("/api/v1/policies", token).await.0,
            StatusCode::FORBIDDEN
        );
        let (status, _) = h.put_policies(token, "policies: []\n").await;
        assert_eq!(status, StatusCode::FORBIDDEN);
    }

    // Invalid: rejected with line numbers, and the live policy is unchanged.
    let invalid = "policies:\n  - name: p\n    groups: [agents]\n    connections: [nope]\n    rules:\n      - match: SELEKT\n        action: allow\n";
    let (status, body) = h.put_policies(&h.admin, invalid).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("body:4: policies[0].connections[0]: no connection is named `nope`"),
        "{error}"
    );
    assert!(
        error.contains("body:6: policies[0].rules[0].match: unknown statement kind `SELEKT`"),
        "{error}"
    );
    let (_, unknown_key) = h
        .put_policies(&h.admin, "policies: []\nconnections: []\n")
        .await;
    assert!(
        unknown_key["error"]
            .as_str()
            .unwrap()
            .contains("connections"),
        "{unknown_key}"
    );
    assert_eq!(h.get("/api/v1/policies", &h.admin).await.1, live);

    // Valid YAML: swapped, and the explain endpoint sees the new policy at once.
    let readers = "policies:\n  - name: readers\n    groups: [agents]\n    connections: [prod, staging]\n    rules:\n      - match: SELECT\n        action: allow\n";
    let (status, body) = h.put_policies(&h.admin, readers).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["changed"], true);
    assert_eq!(
        body["change"]["summary"],
        "added `readers`; removed `maintenance`"
    );
    let explain = json!({ "groups": ["agents"], "connection": "staging", "sql": "select 1" });
    let (_, decided) = h.post("/api/v1/policies/explain", &h.admin, explain).await;
    assert_eq!(decided["decision"]["action"], "allow");

    // The same again changes nothing; JSON (what GET returns) is accepted as the body too.
    let (_, same) = h.put_policies(&h.admin, readers).await;
    assert_eq!(same["changed"], false);
    let (status, body) = h
        .call(
            Method::PUT,
            "/api/v1/policies",
            &h.admin,
            Some(live.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(h.get("/api/v1/policies", &h.admin).await.1, live);

    let (status, changes) = h.get("/api/v1/policies/changes", &h.admin).await;
    assert_eq!(status, StatusCode::OK);
    let changes = changes.as_array().unwrap();
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert_eq!(
        changes[0]["summary"],
        "added `maintenance`; removed `readers`"
    );
    assert_eq!(changes[1]["changed_by"], "admin");
    assert_eq!(changes[1]["source"], "api");
    assert!(changes[1]["changed_by_subject"]
        .as_str()
        .unwrap()
        .starts_with("token:"));
    assert!(changes[1]["old_policies"]
        .as_str()
        .unwrap()
        .contains("name: maintenance"));
    assert!(changes[1]["new_policies"]
        .as_str()
        .unwrap()
        .contains("name: readers"));
    assert_eq!(
        h.get("/api/v1/policies/changes", &h.agent).await.0,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn only_admins_verify_the_audit_chain() {
    let h = harness().await;
    let (status, report) = h.get("/api/v1/audit/verify", &h.admin).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        report,
        json!({
            "ok": true,
            "events_checked": 0,
            "first_break": null,
            "checkpoints_checked": 0,
            "signed_through": null,
            "pruned_through": null
        })
    );
    let (status, _) = h.get("/api/v1/audit/verify", &h.agent).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}
