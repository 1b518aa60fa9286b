//! `airlock tokens create|list|revoke`: Airlock-issued agent tokens, over the API (admins).
//! A created token goes to stdout alone, so `airlock tokens create … > agent.token` keeps just
//! the secret; the notes about it go to stderr.

use crate::cli::{Cli, Output};
use crate::client::Client;
use crate::output;
use airlock_core::store::TokenRecord;
use anyhow::Context;
use serde_json::{json, Value};

pub async fn create(
    cli: &Cli,
    name: &str,
    groups: &[String],
    ttl: Option<&str>,
) -> anyhow::Result<()> {
    let groups: Vec<&str> = groups
        .iter()
        .map(|g| g.trim())
        .filter(|g| !g.is_empty())
        .collect();
    let value = Client::new(cli)?
        .post(
            "/api/v1/tokens",
            &json!({ "name": name, "groups": groups, "ttl": ttl }),
        )
        .await?;
    if cli.output == Output::Json {
        return output::emit(&output::json(&value));
    }
    let token = value
        .get("token")
        .and_then(Value::as_str)
        .context("the server did not return the new token")?;
    let record: TokenRecord = serde_json::from_value(value.clone())
        .context("the server sent a token this CLI cannot read")?;
    eprintln!(
        "created token {} ({}) for groups {}; expires {}",
        record.id,
        record.name,
        output::list(&record.groups),
        record
            .expires_at
            .map(output::time)
            .unwrap_or_else(|| "never".into())
    );
    eprintln!("store it now: it is not shown again");
    output::emit(&format!("{token}\n"))
}

pub async fn list(cli: &Cli) -> anyhow::Result<()> {
    let value = Client::new(cli)?.get("/api/v1/tokens", &[]).await?;
    if cli.output == Output::Json {
        return output::emit(&output::json(&value));
    }
    let tokens: Vec<TokenRecord> =
        serde_json::from_value(value).context("the server sent tokens this CLI cannot read")?;
    let rows: Vec<Vec<String>> = tokens
        .iter()
        .map(|t| {
            vec![
                t.id.clone(),
                t.name.clone(),
                output::list(&t.groups),
                output::time(t.created_at),
                t.expires_at
                    .map(output::time)
                    .unwrap_or_else(|| "never".into()),
                output::opt_time(t.revoked_at),
            ]
        })
        .collect();
    output::emit(&output::table(
        &["ID", "NAME", "GROUPS", "CREATED", "EXPIRES", "REVOKED"],
        &rows,
        "no tokens",
    ))
}

pub async fn revoke(cli: &Cli, id: &str) -> anyhow::Result<()> {
    if id.is_empty() || id.contains(['/', '?', '#']) {
        anyhow::bail!("`{id}` is not a token id (they look like tok_0123456789ab)");
    }
    let value = Client::new(cli)?
        .delete(&format!("/api/v1/tokens/{id}"))
        .await?;
    output::emit(&match cli.output {
        Output::Json => output::json(&value),
        Output::Table => format!("token {id} revoked\n"),
    })
}
