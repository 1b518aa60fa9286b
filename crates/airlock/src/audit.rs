//! `airlock audit verify`: walks the tamper-evident chain of the recorded events and checks its
//! signed checkpoints, over the API or (`--db`) straight from a SQLite file, offline. Prints
//! "N events verified" and exits 0, or prints the first broken link and exits 1.

use crate::cli::{Cli, Output};
use crate::client::Client;
use crate::output;
use airlock_core::chain::{self, ChainReport};
use airlock_core::checkpoint::{self, CheckpointKey};
use airlock_store::SqliteStore;
use anyhow::Context;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

/// What an offline check (`--db`) is told instead of asking the gateway.
pub struct Offline<'a> {
    /// The checkpoint public key, hex; else the key file beside the database is read.
    pub public_key: Option<&'a str>,
    pub checkpoint_interval: Option<Duration>,
}

pub async fn verify(
    cli: &Cli,
    db: Option<&Path>,
    offline: Offline<'_>,
) -> anyhow::Result<ExitCode> {
    let report = match db {
        Some(path) => verify_file(path, offline).await?,
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
/// Checkpoints are checked with the given public key, else with the signing key file beside
/// the database (the data directory).
async fn verify_file(path: &Path, offline: Offline<'_>) -> anyhow::Result<ChainReport> {
    if !path.is_file() {
        anyhow::bail!("{} is not a database file", path.display());
    }
    let key = match offline.public_key {
        Some(hex) => checkpoint::parse_public_key(hex)?,
        None => {
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
            let file = dir.unwrap_or(Path::new(".")).join(checkpoint::KEY_FILE);
            CheckpointKey::read_public(&file)
                .context("pass the gateway's checkpoint public key with --public-key")?
        }
    };
    let location = path
        .to_str()
        .with_context(|| format!("{} is not a UTF-8 path", path.display()))?;
    let store = SqliteStore::open(location)
        .await
        .with_context(|| format!("cannot open {}", path.display()))?;
    let report = chain::verify(&store, Some(&key), offline.checkpoint_interval).await;
    store.close().await;
    Ok(report?)
}

fn describe(report: &ChainReport) -> String {
    match &report.first_break {
        None => {
            let mut text = format!("{} events verified", report.events_checked);
            if report.checkpoints_checked > 0 {
                text.push_str(&format!(
                    ", {} signed checkpoints, signed through event {}",
                    report.checkpoints_checked,
                    report.signed_through.unwrap_or(0)
                ));
            }
            if let Some(pruned) = report.pruned_through {
                text.push_str(&format!(" (events up to {pruned} pruned by retention)"));
            }
            text.push('\n');
            text
        }
        Some(broken) => format!(
            "the audit chain is broken at event {}: {} ({} events checked)\n",
            broken.id, broken.reason, report.events_checked
        ),
    }
}
