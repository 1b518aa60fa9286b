//! `airlock policy get` and `airlock policy put FILE`: the live policies over the API
//! (`GET` / `PUT /api/v1/policies`). `get` prints a `policies:` YAML document that `put` takes
//! back, so a team can keep its policies in a file, review changes, and apply them at once on
//! every session; the server validates before anything changes and records who changed what.

use crate::cli::{Cli, Output};
use crate::client::Client;
use crate::output;
use anyhow::Context;
use serde_json::Value;
use std::io::Read;
use std::path::Path;

pub async fn get(cli: &Cli) -> anyhow::Result<()> {
    let policies = Client::new(cli)?.get("/api/v1/policies", &[]).await?;
    output::emit(&match cli.output {
        Output::Json => output::json(&policies),
        Output::Table => serde_yaml::to_string(&policies)
            .context("the server's policies cannot be shown as YAML")?,
    })
}

/// Replaces the live policies with the document in `file` (`-`: standard input).
pub async fn put(cli: &Cli, file: &Path) -> anyhow::Result<()> {
    let text = if file == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read the policies from standard input")?;
        text
    } else {
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?
    };
    let answer = Client::new(cli)?.put_text("/api/v1/policies", text).await?;
    output::emit(&match cli.output {
        Output::Json => output::json(&answer),
        Output::Table => render(&answer),
    })
}

fn render(answer: &Value) -> String {
    let count = answer["policies"].as_u64().unwrap_or_default();
    if answer["changed"].as_bool() != Some(true) {
        return format!("no change: the {count} live policies are the same\n");
    }
    let change = &answer["change"];
    format!(
        "policies replaced ({count} now live): change {}, {}\n",
        change["id"],
        change["summary"].as_str().unwrap_or("changed")
    )
}
