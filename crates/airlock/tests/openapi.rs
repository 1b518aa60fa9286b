//! The OpenAPI document as a client reads it: fetched from a running `airlock serve` over HTTP,
//! parsed as an OpenAPI 3.1 document by an independent implementation, every reference
//! resolved, and a documented answer checked against its schema.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::Value;
use support::*;

const CONFIG: &str = "policies: []\n";

async fn get(gw: &Gateway, path: &str, token: Option<&str>) -> reqwest::Response {
    let mut request = reqwest::Client::new().get(format!("{}{path}", gw.server_url()));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.expect("call the API")
}

#[tokio::test]
async fn the_served_document_is_valid_openapi_3_and_describes_the_answers() {
    let gw = Gateway::start(CONFIG);
    let response = get(&gw, "/api/openapi.json", None).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let text = response.text().await.unwrap();

    let spec = oas3::from_json(&text).expect("an OpenAPI 3 document");
    let version = spec
        .validate_version()
        .expect("a supported OpenAPI version");
    assert_eq!((version.major, version.minor), (3, 1));
    assert!(matches!(
        spec.components.as_ref().unwrap().security_schemes.get("bearer"),
        Some(oas3::spec::ObjectOrReference::Object(
            oas3::spec::SecurityScheme::Http { scheme, .. }
        )) if scheme.eq_ignore_ascii_case("bearer")
    ));
    let mut operations = 0;
    for (path, method, operation) in spec.operations() {
        operations += 1;
        let what = format!("{method} {path}");
        operation
            .request_body(&spec)
            .unwrap_or_else(|e| panic!("{what}: request body: {e}"));
        for parameter in &operation.parameters {
            parameter
                .resolve(&spec)
                .unwrap_or_else(|e| panic!("{what}: parameter: {e}"));
        }
        let declared = operation.responses.as_ref().map_or(0, |r| r.len());
        let responses = operation.responses(&spec);
        assert!(declared > 0, "{what} documents no answer");
        assert_eq!(
            responses.len(),
            declared,
            "{what}: a response does not resolve"
        );
        for (status, response) in responses {
            for (media, content) in &response.content {
                if let Some(schema) = &content.schema {
                    schema
                        .resolve(&spec)
                        .unwrap_or_else(|e| panic!("{what} {status} {media}: {e}"));
                }
            }
        }
    }
    assert!(operations >= 27, "only {operations} operations");

    // The documented shape of an answer is the shape the gateway sends.
    let whoami = get(&gw, "/api/v1/whoami", Some(&gw.admin_token)).await;
    assert_eq!(whoami.status(), 200);
    let whoami: Value = whoami.json().await.unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    let schema = &doc["paths"]["/api/v1/whoami"]["get"]["responses"]["200"]["content"]
        ["application/json"]["schema"]["$ref"];
    let name = schema.as_str().unwrap().rsplit('/').next().unwrap();
    let schema = &doc["components"]["schemas"][name];
    let properties = schema["properties"].as_object().unwrap();
    let answered = whoami.as_object().unwrap();
    for key in answered.keys() {
        assert!(properties.contains_key(key), "`{key}` is not documented");
    }
    for required in schema["required"].as_array().unwrap() {
        assert!(
            answered.contains_key(required.as_str().unwrap()),
            "`{required}` is missing"
        );
    }

    // A route without its token is refused as documented.
    let refused = get(&gw, "/api/v1/approvals", None).await;
    assert_eq!(refused.status(), 401);
    let refused: Value = refused.json().await.unwrap();
    assert!(refused["error"].is_string());
    assert!(doc["paths"]["/api/v1/approvals"]["get"]["responses"]["401"].is_object());
}
