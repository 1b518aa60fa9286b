//! The `airlock` binary: parses the command line and hands each command to its module. Owns
//! the exit status contract: 0 on success, 1 on any error with one `error: …` line on stderr
//! (usage errors included, so a script never mistakes one for a command's own status).

mod approvals;
mod audit;
mod cli;
mod client;
mod config_check;
mod exec;
mod explain;
mod mcp;
mod output;
mod policy_admin;
mod policy_test;
mod reload;
mod replay;
mod serve;
mod sessions;
mod tokens;
mod when;
mod whoami;

use clap::Parser;
use cli::{
    ApprovalsCommand, AuditCommand, Cli, Command, ConfigCommand, PolicyCommand, SessionsCommand,
    TokensCommand,
};
use std::io::IsTerminal;
use std::process::ExitCode;

/// Parsing SQL recurses as deep as the statement nests; a generous stack keeps a hostile
/// statement from overflowing it (memory is only committed as it is used).
const THREAD_STACK: usize = 1024 * 1024 * 1024;

fn main() -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(THREAD_STACK)
        .build()
    {
        Ok(runtime) => runtime.block_on(run_main()),
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run_main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(&cli).await {
        Ok(code) => code,
        // Like `cat | head`: the reader leaving early is not our failure.
        Err(e) if output::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Serve { config } => {
            init_tracing();
            serve::run(config.clone()).await?;
        }
        Command::Config(ConfigCommand::Check { file }) => {
            return config_check::run(file, cli.output)
        }
        Command::Policy(PolicyCommand::Explain(args)) => explain::run(cli, args).await?,
        Command::Policy(PolicyCommand::Test { file, config }) => {
            return policy_test::run(file, config, cli.output)
        }
        Command::Policy(PolicyCommand::Get) => policy_admin::get(cli).await?,
        Command::Policy(PolicyCommand::Put { file }) => policy_admin::put(cli, file).await?,
        Command::Approvals(ApprovalsCommand::List { state }) => {
            approvals::list(cli, *state).await?
        }
        Command::Approvals(ApprovalsCommand::Show { id }) => approvals::show(cli, *id).await?,
        Command::Approve {
            id,
            reason,
            replace_with,
        } => approvals::approve(cli, *id, reason.as_deref(), replace_with.as_deref()).await?,
        Command::Deny { id, reason } => approvals::deny(cli, *id, reason).await?,
        Command::Exec(args) => return exec::run(cli, args).await,
        Command::Sessions(SessionsCommand::List { since, limit }) => {
            sessions::list(cli, *since, *limit).await?
        }
        Command::Sessions(SessionsCommand::Show { id }) => sessions::show(cli, *id).await?,
        Command::Sessions(SessionsCommand::Export {
            format,
            since,
            connection,
            identity,
        }) => {
            sessions::export(
                cli,
                *format,
                *since,
                connection.as_deref(),
                identity.as_deref(),
            )
            .await?
        }
        Command::Sessions(SessionsCommand::Replay { id }) => replay::run(cli, *id).await?,
        Command::Audit(AuditCommand::Verify {
            db,
            public_key,
            checkpoint_interval,
        }) => {
            let offline = audit::Offline {
                public_key: public_key.as_deref(),
                checkpoint_interval: *checkpoint_interval,
            };
            return audit::verify(cli, db.as_deref(), offline).await;
        }
        Command::Tokens(TokensCommand::Create { name, groups, ttl }) => {
            tokens::create(cli, name, groups, ttl.as_deref()).await?
        }
        Command::Tokens(TokensCommand::List) => tokens::list(cli).await?,
        Command::Tokens(TokensCommand::Revoke { id }) => tokens::revoke(cli, id).await?,
        Command::Whoami => whoami::run(cli).await?,
        Command::Mcp => mcp::run(cli).await?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Logs go to stderr, filtered by `RUST_LOG` (default `info`); only the gateway logs.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
