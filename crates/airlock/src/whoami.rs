//! `airlock whoami`: the identity and groups the gateway resolved from the current token — the
//! first thing to run when a policy does not match.

use crate::cli::{Cli, Output};
use crate::client::Client;
use crate::output;
use anyhow::Context;
use serde::Deserialize;

#[derive(Deserialize)]
struct WhoAmI {
    subject: String,
    name: String,
    groups: Vec<String>,
    method: String,
    expires_at: Option<i64>,
    admin: bool,
}

pub async fn run(cli: &Cli) -> anyhow::Result<()> {
    let value = Client::new(cli)?.get("/api/v1/whoami", &[]).await?;
    if cli.output == Output::Json {
        return output::emit(&output::json(&value));
    }
    let me: WhoAmI = serde_json::from_value(value)
        .context("the server sent an identity this CLI cannot read")?;
    output::emit(&output::fields(&[
        ("subject", me.subject),
        ("name", me.name),
        ("groups", output::list(&me.groups)),
        ("method", me.method),
        (
            "expires",
            me.expires_at
                .map(output::time)
                .unwrap_or_else(|| "never".into()),
        ),
        ("admin", if me.admin { "yes" } else { "no" }.into()),
    ]))
}
