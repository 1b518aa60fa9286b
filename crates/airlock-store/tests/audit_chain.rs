//! The tamper-evident chain against the real SQLite store: events appended by the recorder
//! verify, the chain resumes across a restart and after events recorded before it existed, and
//! editing, deleting, swapping or re-hashing a row in the database file breaks it at that row.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use airlock_core::chain::{self, ChainReport};
use airlock_core::checkpoint::{self, CheckpointKey, Checkpointer};
use airlock_core::recorder::Recorder;
use airlock_core::store::{
    EventDetail, EventRecord, JournalEvent, NewEvent, NewSession, OutcomeStatus, Store,
};
use airlock_store::SqliteStore;
use sqlx::sqlite::SqlitePool;
use tempfile::TempDir;

fn outcome(n: i64) -> EventDetail {
    EventDetail::Outcome {
        statement_event: n,
        status: OutcomeStatus::Ok,
        rows: Some(n as u64),
        tag: Some(format!("SELECT {n}")),
        error: None,
        masked: Default::default(),
    }
}

struct Fixture {
    dir: TempDir,
    db: String,
    store: Arc<SqliteStore>,
    session: i64,
}

impl Fixture {
    async fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let db = format!("sqlite://{}", dir.path().join("airlock.db").display());
        let store = Arc::new(SqliteStore::open(&db).await.unwrap());
        let session = store
            .open_session(&NewSession {
                protocol: "postgres".into(),
                connection: "prod".into(),
                subject: "token:t".into(),
                display_name: "agent".into(),
                groups: vec!["agents".into()],
                auth_method: "agent-token".into(),
                client_addr: "127.0.0.1:1".into(),
                started_at: 1,
            })
            .await
            .unwrap();
        Fixture {
            dir,
            db,
            store,
            session,
        }
    }

    /// Appends `n` events through a freshly opened recorder and waits until they are stored.
    async fn record(&self, n: i64) -> Vec<i64> {
        let recorder = Recorder::open(self.store.clone(), &self.dir.path().join("events.journal"))
            .await
            .unwrap();
        let ids = (0..n)
            .map(|i| {
                recorder
                    .append(NewEvent {
                        session_id: self.session,
                        at: 1000 + i,
                        detail: outcome(i),
                    })
                    .unwrap()
            })
            .collect();
        recorder.sync().await;
        ids
    }

    async fn verify(&self) -> ChainReport {
        chain::verify(self.store.as_ref(), None, None)
            .await
            .unwrap()
    }

    /// Runs SQL on the database file behind the store's back, as a tamperer would.
    async fn tamper(&self, sql: &str) {
        let pool = SqlitePool::connect(&self.db).await.unwrap();
        sqlx::query(sql).execute(&pool).await.unwrap();
        pool.close().await;
    }

    async fn broken_at(&self) -> i64 {
        let report = self.verify().await;
        assert!(!report.ok, "{report:?}");
        report.first_break.unwrap().id
    }
}

#[tokio::test]
async fn an_intact_chain_verifies_and_resumes_across_restarts() {
    let f = Fixture::new().await;
    assert_eq!(f.record(4).await, vec![1, 2, 3, 4]);
    assert_eq!(
        f.record(3).await,
        vec![5, 6, 7],
        "a second recorder resumes"
    );
    let report = f.verify().await;
    assert_eq!(
        report,
        ChainReport {
            ok: true,
            events_checked: 7,
            first_break: None,
            checkpoints_checked: 0,
            signed_through: None,
            pruned_through: None,
        }
    );
    let events = f.store.list_events(f.session).await.unwrap();
    assert_eq!(events[0].prev_hash.as_deref(), Some(chain::GENESIS));
    for pair in events.windows(2) {
        assert_eq!(pair[1].prev_hash, pair[0].hash);
    }
    // The journal line carries the links too.
    let journal = std::fs::read_to_string(f.dir.path().join("events.journal")).unwrap();
    let first: serde_json::Value = serde_json::from_str(journal.lines().next().unwrap()).unwrap();
    assert_eq!(first["hash"].as_str(), events[0].hash.as_deref());
}

#[tokio::test]
async fn the_chain_starts_after_events_recorded_before_it() {
    let f = Fixture::new().await;
    let old = EventRecord {
        id: 1,
        session_id: f.session,
        at: 1,
        detail: outcome(0),
        prev_hash: None,
        hash: None,
    };
    f.store
        .ingest_events(vec![JournalEvent::encode(&old).unwrap()], 0)
        .await
        .unwrap();
    assert_eq!(f.record(3).await, vec![2, 3, 4]);
    let report = f.verify().await;
    assert!(report.ok, "{report:?}");
    assert_eq!(report.events_checked, 3);
}

#[tokio::test]
async fn an_edited_detail_breaks_the_chain_at_that_event() {
    let f = Fixture::new().await;
    f.record(5).await;
    f.tamper("UPDATE events SET detail = replace(detail, 'SELECT 2', 'SELECT 9') WHERE id = 3")
        .await;
    assert_eq!(f.broken_at().await, 3);
    let report = f.verify().await;
    assert_eq!(report.events_checked, 3);
}

#[tokio::test]
async fn an_edited_time_breaks_the_chain() {
    let f = Fixture::new().await;
    f.record(5).await;
    f.tamper("UPDATE events SET at = at + 1 WHERE id = 4").await;
    assert_eq!(f.broken_at().await, 4);
}

#[tokio::test]
async fn a_deleted_event_breaks_the_chain_after_it() {
    let f = Fixture::new().await;
    f.record(5).await;
    f.tamper("DELETE FROM events WHERE id = 3").await;
    assert_eq!(f.broken_at().await, 4);

    let g = Fixture::new().await;
    g.record(3).await;
    g.tamper("DELETE FROM events WHERE id = 1").await;
    assert_eq!(g.broken_at().await, 2, "deleting the first event shows too");
}

#[tokio::test]
async fn deleting_and_renumbering_breaks_the_chain() {
    let f = Fixture::new().await;
    f.record(5).await;
    // Close the gap a deletion leaves: the links no longer match.
    f.tamper("DELETE FROM events WHERE id = 3").await;
    f.tamper("UPDATE events SET id = id - 1 WHERE id > 3").await;
    assert_eq!(f.broken_at().await, 3);
}

#[tokio::test]
async fn swapped_contents_break_the_chain_at_the_first_of_them() {
    let f = Fixture::new().await;
    f.record(5).await;
    f.tamper(
        "UPDATE events SET detail = CASE id \
         WHEN 2 THEN (SELECT detail FROM events WHERE id = 4) \
         ELSE (SELECT detail FROM events WHERE id = 2) END WHERE id IN (2, 4)",
    )
    .await;
    assert_eq!(f.broken_at().await, 2);
}

#[tokio::test]
async fn a_changed_hash_breaks_the_chain() {
    let f = Fixture::new().await;
    f.record(5).await;
    f.tamper(&format!(
        "UPDATE events SET hash = '{}' WHERE id = 4",
        "ab".repeat(32)
    ))
    .await;
    assert_eq!(f.broken_at().await, 4);
    let report = f.verify().await;
    assert!(report.first_break.unwrap().reason.contains("hash"));

    // Recomputing that one hash still leaves the next event pointing at the old one.
    let g = Fixture::new().await;
    g.record(5).await;
    g.tamper("UPDATE events SET detail = replace(detail, 'SELECT 1', 'SELECT 7') WHERE id = 2")
        .await;
    let link = g.store.list_chain_after(1, 1).await.unwrap().remove(0);
    let rehashed = chain::event_hash(
        link.prev_hash.as_deref().unwrap(),
        link.id,
        link.session_id,
        link.at,
        &link.detail,
    );
    g.tamper(&format!(
        "UPDATE events SET hash = '{rehashed}' WHERE id = 2"
    ))
    .await;
    assert_eq!(g.broken_at().await, 3);
}

#[tokio::test]
async fn an_inserted_event_breaks_the_chain() {
    let f = Fixture::new().await;
    f.record(3).await;
    f.tamper(
        "INSERT INTO events (id, session_id, at, kind, detail, prev_hash, hash) \
         SELECT 4, session_id, at, kind, detail, prev_hash, hash FROM events WHERE id = 3",
    )
    .await;
    assert_eq!(f.broken_at().await, 4);
}

#[tokio::test]
async fn a_pruned_chain_verifies_from_its_signed_anchor() {
    let f = Fixture::new().await;
    let key =
        Arc::new(CheckpointKey::load_or_create(&f.dir.path().join(checkpoint::KEY_FILE)).unwrap());
    let public = key.public();
    let interval = std::time::Duration::from_secs(60);
    f.record(4).await;
    let mut signer = Checkpointer::resume(f.store.as_ref(), key.clone(), interval)
        .await
        .unwrap();
    assert_eq!(
        signer.sign_head(f.store.as_ref(), None).await.unwrap(),
        Some(4)
    );
    assert_eq!(
        signer.sign_head(f.store.as_ref(), None).await.unwrap(),
        None
    );
    // Without the key, a checkpoint is not taken on trust.
    assert!(
        !chain::verify(f.store.as_ref(), None, None)
            .await
            .unwrap()
            .ok
    );

    // Every event is older than the cutoff and the session is idle since: all of it goes, in
    // batches of whole segments.
    assert_eq!(
        signer.sign_head(f.store.as_ref(), None).await.unwrap(),
        None
    );
    checkpoint_over(&f.store, &key, 2).await;
    let pruned = f.store.prune(5_000, 1).await.unwrap();
    assert_eq!((pruned.pruned_through, pruned.events), (Some(2), 2));
    let report = chain::verify(f.store.as_ref(), Some(&public), None)
        .await
        .unwrap();
    assert!(report.ok, "{report:?}");
    let pruned = f.store.prune(5_000, 1).await.unwrap();
    assert_eq!((pruned.pruned_through, pruned.events), (Some(4), 2));
    let pruned = f.store.prune(5_000, 1).await.unwrap();
    assert_eq!(pruned.pruned_through, None);
    let report = chain::verify(f.store.as_ref(), Some(&public), None)
        .await
        .unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(report.pruned_through, Some(4));

    // Recording resumes from the anchor, and a journal copied again keeps pruned events out.
    assert_eq!(f.record(2).await, vec![5, 6]);
    f.tamper("UPDATE journal SET offset = 0").await;
    f.record(0).await;
    let report = chain::verify(f.store.as_ref(), Some(&public), None)
        .await
        .unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(report.events_checked, 2);
    assert_eq!(
        signer.sign_head(f.store.as_ref(), None).await.unwrap(),
        Some(6)
    );

    // An event slipped in below the anchor is no part of the chain.
    f.tamper(
        "INSERT INTO events (id, session_id, at, kind, detail, prev_hash, hash) \
         SELECT 2, session_id, at, kind, detail, prev_hash, hash FROM events WHERE id = 5",
    )
    .await;
    let report = chain::verify(f.store.as_ref(), Some(&public), None)
        .await
        .unwrap();
    assert_eq!(
        report.first_break.as_ref().map(|b| b.id),
        Some(2),
        "{report:?}"
    );
    f.tamper("DELETE FROM events WHERE id = 2").await;

    // A chain that does not continue the last checkpoint is not signed, and does not verify.
    f.tamper("UPDATE events SET detail = replace(detail, 'SELECT 1', 'SELECT 9') WHERE id = 6")
        .await;
    assert!(
        !chain::verify(f.store.as_ref(), Some(&public), None)
            .await
            .unwrap()
            .ok
    );
    f.record(1).await;
    assert!(signer.sign_head(f.store.as_ref(), None).await.is_err());
}

/// Stores `key`'s checkpoint over event `event_id`, as the gateway would have signed it then.
async fn checkpoint_over(store: &SqliteStore, key: &CheckpointKey, event_id: i64) {
    let link = store.list_chain_after(event_id - 1, 1).await.unwrap();
    let hash = link[0].hash.clone().unwrap();
    let interval = std::time::Duration::from_secs(60);
    store
        .record_checkpoint(&key.sign(event_id, &hash, link[0].at, interval))
        .await
        .unwrap();
}

#[tokio::test]
async fn checkpoints_are_walked_page_by_page_and_a_cut_off_end_shows() {
    let f = Fixture::new().await;
    let key = CheckpointKey::load_or_create(&f.dir.path().join(checkpoint::KEY_FILE)).unwrap();
    f.record(1100).await;
    // One statement, not 1100 commits.
    let interval = std::time::Duration::from_secs(60);
    let rows: Vec<String> = f
        .store
        .list_chain_after(0, 2000)
        .await
        .unwrap()
        .iter()
        .map(|link| {
            let c = key.sign(link.id, link.hash.as_deref().unwrap(), link.at, interval);
            format!(
                "({}, {}, '{}', {}, '{}', '{}')",
                c.at, c.event_id, c.hash, c.interval_ms, c.public_key, c.signature
            )
        })
        .collect();
    f.tamper(&format!(
        "INSERT INTO checkpoints (at, event_id, hash, interval_ms, public_key, signature) VALUES {}",
        rows.join(", ")
    ))
    .await;
    let report = chain::verify(f.store.as_ref(), Some(&key.public()), None)
        .await
        .unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(report.checkpoints_checked, 1100);
    assert_eq!(report.signed_through, Some(1100));

    f.tamper("DELETE FROM events WHERE id > 1090").await;
    let report = chain::verify(f.store.as_ref(), Some(&key.public()), None)
        .await
        .unwrap();
    assert_eq!(
        report.first_break.as_ref().map(|b| b.id),
        Some(1091),
        "{report:?}"
    );
}

/// Recomputes the hashes of every event from `from` on, as someone with write access to the
/// file but not the signing key would after editing one.
async fn rehash_from(f: &Fixture, from: i64) {
    let pool = SqlitePool::connect(&f.db).await.unwrap();
    let rows: Vec<(i64, i64, i64, String, String)> = sqlx::query_as(
        "SELECT id, session_id, at, detail, prev_hash FROM events WHERE id >= ? ORDER BY id",
    )
    .bind(from)
    .fetch_all(&pool)
    .await
    .unwrap();
    let mut prev = rows[0].4.clone();
    for (id, session, at, detail, _) in rows {
        let hash = chain::event_hash(&prev, id, session, at, &detail);
        sqlx::query("UPDATE events SET prev_hash = ?, hash = ? WHERE id = ?")
            .bind(&prev)
            .bind(&hash)
            .bind(id)
            .execute(&pool)
            .await
            .unwrap();
        prev = hash;
    }
    pool.close().await;
}

/// A running gateway's recorder and checkpoint signer over the fixture's store.
struct Signing {
    key: Arc<CheckpointKey>,
    recorder: Recorder,
    signer: Checkpointer,
}

impl Signing {
    async fn new(f: &Fixture) -> Signing {
        let key = Arc::new(
            CheckpointKey::load_or_create(&f.dir.path().join(checkpoint::KEY_FILE)).unwrap(),
        );
        let recorder = Recorder::open(f.store.clone(), &f.dir.path().join("events.journal"))
            .await
            .unwrap();
        let signer = Checkpointer::resume(
            f.store.as_ref(),
            key.clone(),
            std::time::Duration::from_secs(60),
        )
        .await
        .unwrap();
        Signing {
            key,
            recorder,
            signer,
        }
    }

    /// Records `n` events and waits until they are stored.
    async fn record(&self, f: &Fixture, n: i64) {
        for i in 0..n {
            self.recorder
                .append(NewEvent {
                    session_id: f.session,
                    at: 2000 + i,
                    detail: outcome(i),
                })
                .unwrap();
        }
        self.recorder.sync().await;
    }

    /// Signs, as the running gateway does, with the recorder's head.
    async fn sign(&mut self, f: &Fixture) -> Result<Option<i64>, checkpoint::CheckpointError> {
        let head = self.recorder.copied_head();
        self.signer.sign_head(f.store.as_ref(), head).await
    }
}

#[tokio::test]
async fn after_one_walk_the_signer_signs_the_recorders_own_head() {
    let f = Fixture::new().await;
    let mut s = Signing::new(&f).await;
    s.record(&f, 3).await;
    assert_eq!(s.recorder.copied_head().map(|h| h.0), Some(3));
    // The first signing of a run walks the stored events.
    assert_eq!(s.sign(&f).await.unwrap(), Some(3));

    // Later ones sign the recorder's head without reading the events between: a detail edited
    // behind the hashes' back is not seen then, but the signature covers the hash the recorder
    // chained, so verification names the edited event.
    s.record(&f, 3).await;
    f.tamper("UPDATE events SET detail = replace(detail, 'SELECT 1', 'SELECT 7') WHERE id = 5")
        .await;
    assert_eq!(s.sign(&f).await.unwrap(), Some(6));
    let report = chain::verify(f.store.as_ref(), Some(&s.key.public()), None)
        .await
        .unwrap();
    assert_eq!(
        report.first_break.as_ref().map(|b| b.id),
        Some(5),
        "{report:?}"
    );

    // A rewrite that recomputes the hashes changes the signed event's: the signer walks, and
    // refuses.
    rehash_from(&f, 5).await;
    s.record(&f, 1).await;
    assert!(s.sign(&f).await.is_err());
}

#[tokio::test]
async fn a_gap_after_the_signed_event_sends_the_signer_walking() {
    let f = Fixture::new().await;
    let mut s = Signing::new(&f).await;
    s.record(&f, 4).await;
    assert_eq!(s.sign(&f).await.unwrap(), Some(4));
    s.record(&f, 3).await;
    // The signed event and the head are intact; one between is gone.
    f.tamper("DELETE FROM events WHERE id = 6").await;
    let refused = s.sign(&f).await.unwrap_err();
    assert!(
        refused.to_string().contains("events 6 to 6 are missing"),
        "{refused}"
    );
}

#[tokio::test]
async fn with_nothing_signed_yet_the_walk_covers_the_chain_from_its_start() {
    let f = Fixture::new().await;
    let mut s = Signing::new(&f).await;
    // At start the store is empty: the walk finds nothing to sign.
    assert_eq!(s.sign(&f).await.unwrap(), None);
    s.record(&f, 3).await;
    // Everything stored since is this run's own: its head is signed without a walk (which
    // would refuse the edited event), and verification finds the edit.
    f.tamper("UPDATE events SET detail = replace(detail, 'SELECT 1', 'SELECT 7') WHERE id = 2")
        .await;
    assert_eq!(s.sign(&f).await.unwrap(), Some(3));
    let report = chain::verify(f.store.as_ref(), Some(&s.key.public()), None)
        .await
        .unwrap();
    assert_eq!(report.first_break.map(|b| b.id), Some(2));
}
