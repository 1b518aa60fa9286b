//! `/api/v1/whoami`: the identity the gateway resolved from the caller's token — subject, name,
//! groups, how it authenticated, when it expires, and whether it is an admin. The first thing
//! to check when a policy does not match.

use crate::auth::Caller;
use airlock_core::identity::AuthMethod;
use airlock_core::store::Millis;
use axum::Json;
use serde::Serialize;

#[derive(Serialize, utoipa::ToSchema)]
pub struct WhoAmI {
    subject: String,
    name: String,
    groups: Vec<String>,
    method: AuthMethod,
    expires_at: Option<Millis>,
    admin: bool,
}

#[utoipa::path(
    get,
    path = "/whoami",
    operation_id = "whoami",
    tag = "identity",
    responses((status = 200, description = "The caller's identity", body = WhoAmI))
)]
pub async fn show(caller: Caller) -> Json<WhoAmI> {
    let identity = caller.identity;
    Json(WhoAmI {
        subject: identity.subject,
        name: identity.name,
        groups: identity.groups,
        method: identity.method,
        expires_at: identity.expires_at,
        admin: caller.admin,
    })
}
