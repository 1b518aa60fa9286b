//! `airlock policy test FILE --config CONFIG`: a team's policy kept under test. FILE is a YAML
//! list of cases, each run through the same pure `explain` the gateway's `decide` is, against
//! the config's policies; a table (or JSON) of pass/fail with the actual decision and rule, and
//! exit status 0 only when every case passes (1 otherwise, so CI fails on a policy regression).

use crate::cli::Output;
use crate::output;
use airlock_core::classify_mysql::classify_for;
use airlock_core::config::{ActionName, Config, LoadedConfig};
use airlock_core::policy::{self, Decision};
use anyhow::{anyhow, bail, Context};
use serde::Deserialize;
use serde_json::json;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

/// One case: who (a group, or several), where, what, and the decision expected.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    groups: Vec<String>,
    connection: String,
    sql: String,
    expect: ActionName,
    /// The label of the rule expected to decide (`name:` of the rule, or `match: …`).
    #[serde(default)]
    rule: Option<String>,
}

fn action_name(action: ActionName) -> &'static str {
    match action {
        ActionName::Allow => "allow",
        ActionName::Deny => "deny",
        ActionName::RequireApproval => "require-approval",
    }
}

struct Outcome<'c> {
    case: &'c Case,
    decision: Result<Decision, String>,
}

impl Outcome<'_> {
    fn passed(&self) -> bool {
        match &self.decision {
            Ok(decision) => {
                decision.action.name() == action_name(self.case.expect)
                    && self
                        .case
                        .rule
                        .as_ref()
                        .is_none_or(|rule| decision.rule.as_ref() == Some(rule))
            }
            Err(_) => false,
        }
    }
}

fn judge<'c>(loaded: &LoadedConfig, case: &'c Case) -> Outcome<'c> {
    let groups: Vec<String> = case
        .group
        .iter()
        .chain(&case.groups)
        .map(|g| g.trim().to_string())
        .filter(|g| !g.is_empty())
        .collect();
    let decision = if groups.is_empty() {
        Err("the case names no `group` or `groups`".to_string())
    } else if let Some(connection) = loaded.config.connection(&case.connection) {
        let classification = Arc::new(classify_for(connection.kind, &case.sql));
        Ok(policy::explain(
            &loaded.policies,
            groups,
            &case.connection,
            &case.sql,
            classification,
        )
        .decision)
    } else {
        Err(format!("no connection is named `{}`", case.connection))
    };
    Outcome { case, decision }
}

pub fn run(file: &Path, config: &Path, format: Output) -> anyhow::Result<ExitCode> {
    let loaded = Config::load(config)
        .map_err(|e| anyhow!("{} is not a valid config:\n{e}", config.display()))?;
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let cases: Vec<Case> = serde_yaml::from_str(&text)
        .map_err(|e| anyhow!("{}: not a list of test cases: {e}", file.display()))?;
    if cases.is_empty() {
        bail!("{}: no test cases", file.display());
    }
    let outcomes: Vec<Outcome> = cases.iter().map(|case| judge(&loaded, case)).collect();
    let failed = outcomes.iter().filter(|o| !o.passed()).count();
    output::emit(&match format {
        Output::Table => render(&outcomes, failed),
        Output::Json => output::json(&json!({
            "passed": outcomes.len() - failed,
            "failed": failed,
            "cases": outcomes.iter().map(|o| json!({
                "name": o.case.name,
                "connection": o.case.connection,
                "sql": o.case.sql,
                "expect": action_name(o.case.expect),
                "expect_rule": o.case.rule,
                "pass": o.passed(),
                "decision": o.decision.as_ref().ok(),
                "error": o.decision.as_ref().err(),
            })).collect::<Vec<_>>(),
        })),
    })?;
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn render(outcomes: &[Outcome], failed: usize) -> String {
    let rows: Vec<Vec<String>> = outcomes
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let expected = match &o.case.rule {
                Some(rule) => format!("{} ({rule})", action_name(o.case.expect)),
                None => action_name(o.case.expect).to_string(),
            };
            let (actual, rule) = match &o.decision {
                Ok(d) => (
                    d.action.name().to_string(),
                    output::opt(d.rule.as_deref()).to_string(),
                ),
                Err(e) => (format!("error: {e}"), "-".to_string()),
            };
            let case = o
                .case
                .name
                .clone()
                .unwrap_or_else(|| output::one_line(&o.case.sql, 50));
            vec![
                (i + 1).to_string(),
                if o.passed() { "pass" } else { "FAIL" }.to_string(),
                expected,
                actual,
                rule,
                case,
            ]
        })
        .collect();
    let mut text = output::table(
        &["#", "RESULT", "EXPECTED", "ACTUAL", "RULE", "CASE"],
        &rows,
        "no cases",
    );
    text.push_str(&format!(
        "{} passed, {failed} failed\n",
        outcomes.len() - failed
    ));
    text
}
