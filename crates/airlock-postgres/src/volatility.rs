//! The session's view of the upstream's function catalog, for judging calls to user-defined
//! functions by their volatility (see `airlock_core::functions`). Looked up on a side
//! connection that logs in with the connection's own credential, opened on first need and
//! kept for the session; answers are cached briefly, since a function can be replaced (CREATE
//! OR REPLACE) by another session at any time. Any failure leaves the names unknown, which
//! judges them volatile: fail closed.

use crate::upstream::UpstreamTarget;
use airlock_core::classify::Classification;
use airlock_core::functions::{self, Catalog, CatalogEntry, Volatility};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres::NoTls;

/// How long an answer is trusted. Short: a cached STABLE must not outlive a replacement by
/// long, and one round trip per few seconds per session costs little.
const FRESH_FOR: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) struct FunctionCatalog {
    target: UpstreamTarget,
    client: Option<tokio_postgres::Client>,
    answers: HashMap<String, (Instant, Vec<CatalogEntry>)>,
}

impl FunctionCatalog {
    pub(crate) fn new(target: UpstreamTarget) -> Self {
        FunctionCatalog {
            target,
            client: None,
            answers: HashMap::new(),
        }
    }

    /// The classification with calls to functions that may write marked
    /// `VOLATILE FUNCTION`; statements without calls outside `pg_catalog` cost nothing.
    pub(crate) async fn judge(
        &mut self,
        classification: Arc<Classification>,
    ) -> Arc<Classification> {
        let names = functions::names_to_look_up(&classification);
        if names.is_empty() {
            return classification;
        }
        let now = Instant::now();
        let stale: Vec<String> = names
            .iter()
            .filter(|name| {
                self.answers
                    .get(*name)
                    .is_none_or(|(at, _)| now.duration_since(*at) > FRESH_FOR)
            })
            .cloned()
            .collect();
        if !stale.is_empty() {
            match self.fetch(&stale).await {
                Ok(mut found) => {
                    for name in stale {
                        let entries = found.remove(&name).unwrap_or_default();
                        self.answers.insert(name, (now, entries));
                    }
                }
                Err(e) => {
                    // A broken side connection is opened afresh next time.
                    self.client = None;
                    tracing::warn!(error = %e, "cannot look up function volatility; calls count as volatile");
                }
            }
        }
        let catalog: Catalog = names
            .into_iter()
            .filter_map(|name| {
                let (at, entries) = self.answers.get(&name)?;
                (now.duration_since(*at) <= FRESH_FOR).then(|| (name, entries.clone()))
            })
            .collect();
        functions::judge_volatility(classification, &catalog)
    }

    async fn fetch(&mut self, names: &[String]) -> Result<Catalog, String> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            self.client = Some(self.connect().await?);
        }
        let Some(client) = self.client.as_ref() else {
            return Err("no side connection".into());
        };
        lookup(client, names).await
    }

    async fn connect(&self) -> Result<tokio_postgres::Client, String> {
        let config = self
            .target
            .side_config("airlock-catalog", CONNECT_TIMEOUT)?;
        // The error's text never carries the password; it is logged by the caller only.
        let (client, connection) = config.connect(NoTls).await.map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }
}

/// Looks `names` up in the upstream's `pg_proc` (see [`functions::LOOKUP_SQL`]).
pub async fn lookup(client: &tokio_postgres::Client, names: &[String]) -> Result<Catalog, String> {
    let rows = client
        .query(functions::LOOKUP_SQL, &[&names])
        .await
        .map_err(|e| e.to_string())?;
    let mut catalog = Catalog::new();
    for row in rows {
        let get = |i: usize| row.try_get::<_, String>(i).map_err(|e| e.to_string());
        let (name, schema, volatility, kind) = (get(0)?, get(1)?, get(2)?, get(3)?);
        catalog.entry(name).or_default().push(CatalogEntry {
            schema,
            volatility: Volatility::from_code(&volatility),
            is_procedure: kind == "p",
        });
    }
    Ok(catalog)
}
