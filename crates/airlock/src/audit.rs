//! `airlock audit verify`: walks the tamper-evident chain of the recorded events, over the API
//! or (`--db`) straight from a SQLite file, offline. Prints "N events verified" and exits 0, or
//! prints the first broken link and exits 1.

use crate::cli::{Cli, Output};
use crate::client::Client;
use crate::output;
use airlock_core::chain::{self, ChainReport};
use airlock_store::SqliteStore;
use anyhow::Context;
use std::path::Path;
use std::process::ExitCode;

pub async fn verify(cli: &Cli, db: Option<&Path>) -> anyhow::Result<ExitCode> {
    let report = match db {
        Some(path) => verify_file(path).await?,
        None => {
            let value = Client::new(cli)?.get("/api/v1/audit/verify", &[]).await?;
            serde_json::from_value(value)
                .context("the server sent an audit report this CLI cannot read")?
        }
    };
    if cli.output == Output::Json {
        output::emit(&output::json(&serde_json::to_value(&report)?))?;
    } else {
        output::emit(&describe(&report))?;
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Verifies a database file directly. Opening it applies any pending migrations, as the
/// gateway would; a missing file is an error rather than a new, empty (and valid) store.
async fn verify_file(path: &Path) -> anyhow::Result<ChainReport> {
    if !path.is_file() {
        anyhow::bail!("{} is not a database file", path.display());
    }
    let location = path
        .to_str()
        .with_context(|| format!("{} is not a UTF-8 path", path.display()))?;
    let store = SqliteStore::open(location)
        .await
        .with_context(|| format!("cannot open {}", path.display()))?;
    let report = chain::verify(&store).await;
    store.close().await;
    Ok(report?)
}

fn describe(report: &ChainReport) -> String {
    match &report.first_break {
        None => format!("{} events verified\n", report.events_checked),
        Some(broken) => format!(
            "the audit chain is broken at event {}: {} ({} events checked)\n",
            broken.id, broken.reason, report.events_checked
        ),
    }
}
