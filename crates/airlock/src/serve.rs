//! `airlock serve`: loads and validates the config, opens the store, seals the upstream
//! credentials into it, creates the bootstrap admin token on first start, and runs the API and
//! protocol listeners until SIGINT/SIGTERM. With a config file, its policies are reloaded when
//! it changes (see [`crate::reload`]).

use crate::reload;
use airlock_api::{router, ApiState};
use airlock_core::checkpoint::{self, CheckpointKey};
use airlock_core::config::{Config, ConnectionKind, LoadedConfig};
use airlock_core::gate::Gate;
use airlock_core::mask::MaskPolicy;
use airlock_core::notify::{redact, Notifier};
use airlock_core::sealer::{create_private, Sealer};
use airlock_core::store::{Store, StoredConnection};
use airlock_core::upkeep;
use airlock_mysql::MysqlGateway;
use airlock_postgres::preview::PgPreviewer;
use airlock_postgres::upstream::UpstreamTarget;
use airlock_postgres::PgGateway;
use airlock_store::SqliteStore;
use anyhow::{bail, Context};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

pub async fn run(config_path: Option<PathBuf>) -> anyhow::Result<()> {
    let (LoadedConfig { config, policies }, watcher) = match &config_path {
        Some(path) => {
            let (loaded, watcher) = reload::load(path)?;
            (loaded, Some(watcher))
        }
        None => (Config::parse("", "<defaults>", None)?, None),
    };
    let store = open_store(&config.store).await?;
    let sealer = Sealer::load_or_create(Path::new(&config.secret_key_file))?;
    for c in &config.connections {
        store
            .upsert_connection(&StoredConnection {
                name: c.name.clone(),
                kind: format!("{:?}", c.kind).to_lowercase(),
                address: c.address.clone(),
                database: c.database.clone(),
                user: c.user.clone(),
                sealed_password: c
                    .password
                    .as_ref()
                    .map(|p| sealer.seal(p.expose().as_bytes())),
            })
            .await
            .context("storing connections")?;
    }

    let journal = config.data_dir().join("events.journal");
    let checkpoint_key = Arc::new(CheckpointKey::load_or_create(
        &config.data_dir().join(checkpoint::KEY_FILE),
    )?);
    tracing::info!(
        public_key = %checkpoint_key.public_hex(),
        "audit checkpoints are signed with this key; keep its public half elsewhere to verify the record with"
    );
    let gate = Arc::new(
        Gate::open(store.clone(), policies, &config.identity, &journal)
            .await
            .with_context(|| format!("opening the recorder journal {}", journal.display()))?
            .with_notifier(Notifier::start(
                &config.notify,
                store.clone(),
                &format!("http://{}", config.listen.api),
            ))
            .with_checkpoint_key(checkpoint_key.clone())
            .with_previewer(Arc::new(PgPreviewer::new(pg_targets(&config))))
            .with_masking(
                MaskPolicy::new(config.masking.clone(), sealer.masking_key()),
                config.recording.results,
            ),
    );
    let recording = config.recording.clone();
    let signer = upkeep::SharedSigner::default();
    tokio::spawn(upkeep::run(
        gate.clone(),
        checkpoint_key.clone(),
        recording.clone(),
        signer.clone(),
    ));
    for (index, hook) in config.notify.iter().enumerate() {
        tracing::info!(
            webhook = index,
            target = %redact(hook.webhook.expose()),
            format = hook.format.as_str(),
            "approval notifications go to this webhook"
        );
    }
    bootstrap_admin(&gate, &config).await?;
    let resumed = gate
        .watch_pending_approvals()
        .await
        .context("reading the approval requests left pending")?;
    if resumed > 0 {
        tracing::info!(
            requests = resumed,
            "approval requests left pending by an earlier run are watched again until they settle"
        );
    }
    if let Some(watcher) = watcher {
        tokio::spawn(watcher.watch(gate.clone()));
    }

    let targets = pg_targets(&config);

    let mysql_targets: HashMap<String, airlock_mysql::upstream::UpstreamTarget> = config
        .connections
        .iter()
        .filter(|c| c.kind == ConnectionKind::Mysql)
        .map(|c| {
            (
                c.name.clone(),
                airlock_mysql::upstream::UpstreamTarget {
                    address: c.address.clone(),
                    database: c.database.clone().unwrap_or_default(),
                    user: c.user.clone().unwrap_or_default(),
                    password: c.password.clone(),
                },
            )
        })
        .collect();

    let tls = airlock_core::tls::server_config(
        config.tls.as_ref(),
        &config.data_dir(),
        &[&config.listen.postgres, &config.listen.mysql],
    )
    .context("preparing TLS for client connections")?;
    let api_listener = bind(&config.listen.api, "api").await?;
    let mysql_listener = bind(&config.listen.mysql, "mysql").await?;
    let pg_listener = bind(&config.listen.postgres, "postgres")
        .await?
        .into_std()
        .context("preparing the PostgreSQL listener")?;
    let pg_threads = relay_threads();
    tracing::info!(
        api = %config.listen.api,
        postgres = %config.listen.postgres,
        mysql = %config.listen.mysql,
        connections = config.connections.len(),
        "airlock is serving (SSH and HTTP listeners are not part of this version)"
    );

    let api = router(ApiState {
        gate: gate.clone(),
        config: Arc::new(config),
    });
    let pg = PgGateway::new(gate.clone(), targets, tls.clone());
    let mysql = MysqlGateway::new(gate.clone(), mysql_targets, TlsAcceptor::from(tls));
    tokio::select! {
        result = mysql.serve(mysql_listener) => result.context("MySQL listener failed")?,
        result = axum::serve(api_listener, api) => result.context("API listener failed")?,
        result = pg.serve(pg_listener, pg_threads) => result.context("PostgreSQL listener failed")?,
        _ = shutdown_signal() => tracing::info!("shutting down"),
    }
    gate.sync_records().await;
    upkeep::sign_at_exit(
        &gate,
        &signer,
        checkpoint_key,
        recording.checkpoint_interval,
    )
    .await;
    Ok(())
}

/// Where the PostgreSQL adapter (and its previewer) logs in, by connection name.
fn pg_targets(config: &Config) -> HashMap<String, UpstreamTarget> {
    config
        .connections
        .iter()
        .filter(|c| c.kind == ConnectionKind::Postgres)
        .map(|c| (c.name.clone(), UpstreamTarget::of(c)))
        .collect()
}

async fn open_store(url: &str) -> anyhow::Result<Arc<dyn Store>> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        bail!("store `{url}`: a PostgreSQL store is not supported by this version yet; use sqlite://PATH");
    }
    let store = SqliteStore::open(url)
        .await
        .with_context(|| format!("opening the store {url}"))?;
    Ok(Arc::new(store))
}

async fn bind(address: &str, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address} ({what})"))
}

/// On first start (no tokens at all), mints an admin token and writes it, mode 0600, to
/// `admin.token` beside the store. The token itself is never logged.
async fn bootstrap_admin(gate: &Gate, config: &Config) -> anyhow::Result<()> {
    if gate.store().count_tokens().await? > 0 {
        return Ok(());
    }
    let dir = config.data_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("admin.token");
    let minted = gate
        .identity()
        .mint("bootstrap-admin", config.admin_groups.clone(), None)
        .await?;
    if path.exists() {
        std::fs::remove_file(&path).with_context(|| format!("replacing {}", path.display()))?;
    }
    let mut file = create_private(&path).with_context(|| format!("writing {}", path.display()))?;
    writeln!(file, "{}", minted.token)?;
    file.sync_all()?;
    tracing::info!(path = %path.display(), "created the bootstrap admin token; read it from this file");
    Ok(())
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
}

/// How many threads relay PostgreSQL sessions: `AIRLOCK_RELAY_THREADS`, or one per core but
/// one, which is left to the record copier, the store and the API. On a 2-core machine one
/// relay thread serves 8 busy clients with about a fifth less CPU per transaction than two,
/// because each wake-up then finds more sessions ready (bench/profile.py).
fn relay_threads() -> usize {
    std::env::var("AIRLOCK_RELAY_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1))
        })
}
