//! `airlock config check FILE`: validates a config locally with the same loader `serve` uses.
//! Success is one line on stdout; failure is every problem, each `file:line: path: message`,
//! on stderr and exit status 1.

use crate::cli::Output;
use crate::output;
use airlock_core::config::Config;
use serde_json::json;
use std::path::Path;
use std::process::ExitCode;

pub fn run(file: &Path, format: Output) -> anyhow::Result<ExitCode> {
    let shown = file.display().to_string();
    match Config::load(file) {
        Ok(loaded) => {
            let (connections, policies) = (loaded.config.connections.len(), loaded.policies.len());
            output::emit(&match format {
                Output::Table => {
                    format!("{shown}: ok ({connections} connections, {policies} policies)\n")
                }
                Output::Json => output::json(&json!({
                    "file": shown,
                    "ok": true,
                    "connections": connections,
                    "policies": policies,
                })),
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            match format {
                Output::Table => eprintln!("{error}"),
                Output::Json => output::emit(&output::json(&json!({
                    "file": shown,
                    "ok": false,
                    "errors": error.issues.iter().map(|issue| json!({
                        "line": issue.line,
                        "path": issue.path,
                        "message": issue.message,
                    })).collect::<Vec<_>>(),
                })))?,
            }
            Ok(ExitCode::FAILURE)
        }
    }
}
