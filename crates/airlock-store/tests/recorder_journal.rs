//! The recorder's journal against the real SQLite store: appended events reach the store,
//! survive a restart that happens before they were copied, and a torn last line is cut off; a
//! copier left far behind copies from the journal itself.
//! Both the journal and the database are readable by their owner only.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::sync::Arc;

use airlock_core::chain;
use airlock_core::recorder::Recorder;
use airlock_core::store::{EventDetail, NewEvent, NewSession, OutcomeStatus, Store};
use airlock_store::SqliteStore;

fn outcome(n: i64) -> EventDetail {
    EventDetail::Outcome {
        statement_event: n,
        status: OutcomeStatus::Ok,
        rows: Some(1),
        tag: Some("SELECT 1".into()),
        error: None,
        masked: Default::default(),
    }
}

async fn session(store: &SqliteStore) -> i64 {
    store
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
        .unwrap()
}

/// A store and a journal in a fresh directory, with one session (`s`) to record into.
struct Journaled {
    /// Removed when dropped: keep it bound (`dir: _dir`) for the test's length.
    dir: tempfile::TempDir,
    db: String,
    journal: std::path::PathBuf,
    store: Arc<SqliteStore>,
    s: i64,
}

async fn journaled() -> Journaled {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("airlock.db").display());
    let journal = dir.path().join("events.journal");
    let store = Arc::new(SqliteStore::open(&db).await.unwrap());
    let s = session(&store).await;
    Journaled {
        dir,
        db,
        journal,
        store,
        s,
    }
}

fn event(session_id: i64, n: i64) -> NewEvent {
    NewEvent {
        session_id,
        at: n,
        detail: outcome(n),
    }
}

#[tokio::test]
async fn appended_events_reach_the_store_and_survive_restarts() {
    let Journaled {
        dir: _dir,
        journal,
        store,
        s,
        ..
    } = journaled().await;

    let recorder = Recorder::open(store.clone(), &journal).await.unwrap();
    let ids: Vec<i64> = (0..5)
        .map(|n| recorder.append(event(s, n)).unwrap())
        .collect();
    assert_eq!(ids, vec![1, 2, 3, 4, 5]);
    recorder.sync().await;
    let stored = store.list_events(s).await.unwrap();
    assert_eq!(stored.iter().map(|e| e.id).collect::<Vec<_>>(), ids);
    assert_eq!(stored[2].detail, outcome(2));

    // A record written but never copied (the copy point is moved back, as after a crash
    // between the write and the copy), then a torn line from a write cut short.
    store.ingest_events(Vec::new(), 0).await.unwrap();
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&journal)
        .unwrap();
    file.write_all(br#"{"id":6,"session_id":1,"at":9,"kind":"outcome","statement_e"#)
        .unwrap();
    drop(file);
    let reopened = Recorder::open(store.clone(), &journal).await.unwrap();
    assert_eq!(
        store.list_events(s).await.unwrap().len(),
        5,
        "nothing duplicated"
    );
    let next = reopened.append(event(s, 10)).unwrap();
    assert_eq!(next, 6, "ids continue after the largest stored id");
    reopened.sync().await;
    let text = std::fs::read_to_string(&journal).unwrap();
    assert!(text
        .lines()
        .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()));
    assert_eq!(store.list_events(s).await.unwrap().len(), 6);
}

#[tokio::test]
async fn deferred_events_go_out_ahead_of_the_next_line_or_soon_after() {
    let Journaled {
        dir: _dir,
        journal,
        store,
        s,
        ..
    } = journaled().await;
    let recorder = Recorder::open(store.clone(), &journal).await.unwrap();
    let event = |n: i64| event(s, n);
    let ids_in_journal = || -> Vec<i64> {
        std::fs::read_to_string(&journal)
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                    .as_i64()
                    .unwrap()
            })
            .collect()
    };

    assert_eq!(recorder.append(event(0)).unwrap(), 1);
    recorder.append_deferred(event(1));
    recorder.append_deferred(event(2));
    assert_eq!(
        recorder.append(event(3)).unwrap(),
        4,
        "deferred events take ids at once"
    );
    assert_eq!(
        ids_in_journal(),
        [1, 2, 3, 4],
        "written ahead of the next line, in id order"
    );

    // With no later line, the copier writes it within its linger, without being asked.
    recorder.append_deferred(event(4));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while ids_in_journal().len() < 5 {
        assert!(
            std::time::Instant::now() < deadline,
            "the deferred event was never written"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(ids_in_journal(), [1, 2, 3, 4, 5]);

    recorder.append_deferred(event(5));
    recorder.sync().await;
    let stored = store.list_events(s).await.unwrap();
    assert_eq!(
        stored.iter().map(|e| e.id).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6]
    );
    assert_eq!(stored[5].detail, outcome(5));
    let links = store.list_chain_after(0, 100).await.unwrap();
    for pair in links.windows(2) {
        assert_eq!(
            pair[1].prev_hash, pair[0].hash,
            "the chain follows the id order"
        );
    }
}

#[tokio::test]
async fn a_failed_copy_is_retried_from_the_journal() {
    use sqlx::Connection;
    let Journaled {
        dir: _dir,
        db,
        journal,
        store,
        s,
    } = journaled().await;
    let recorder = Recorder::open(store.clone(), &journal).await.unwrap();
    let event = |n: i64| event(s, n);
    for n in 0..3 {
        recorder.append(event(n)).unwrap();
    }
    recorder.sync().await;

    // The store cannot take the next copy: the events handed over in memory are dropped
    // with the failed transaction, and only the journal still has them.
    let mut admin = sqlx::SqliteConnection::connect(&db).await.unwrap();
    sqlx::query("ALTER TABLE events RENAME TO events_away")
        .execute(&mut admin)
        .await
        .unwrap();
    recorder.append(event(3)).unwrap();
    recorder.append_deferred(event(4));
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    sqlx::query("ALTER TABLE events_away RENAME TO events")
        .execute(&mut admin)
        .await
        .unwrap();
    recorder.append(event(5)).unwrap();
    recorder.sync().await;
    let stored = store.list_events(s).await.unwrap();
    assert_eq!(
        stored.iter().map(|e| e.id).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6]
    );
    assert_eq!(stored[4].detail, outcome(4));
}

#[tokio::test]
async fn a_copier_left_far_behind_copies_from_the_journal() {
    use std::os::unix::fs::FileExt;
    let Journaled {
        dir: _dir,
        journal,
        store,
        s,
        ..
    } = journaled().await;
    let recorder = Recorder::open(store.clone(), &journal).await.unwrap();
    // The test's runtime has one thread: the copier cannot run before the first `await`, so
    // these pile up past what is handed over in memory.
    let appended = 20_000;
    for n in 0..appended {
        recorder.append(event(s, n)).unwrap();
    }
    // Edit the first line in place (same length): only a copy read from the file sees it.
    let text = std::fs::read_to_string(&journal).unwrap();
    let at = text.find(r#""tag":"SELECT 1""#).unwrap() + r#""tag":"SELECT "#.len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&journal)
        .unwrap();
    file.write_all_at(b"2", at as u64).unwrap();
    drop(file);

    recorder.sync().await;
    let stored = store.list_events(s).await.unwrap();
    assert_eq!(stored.len(), appended as usize);
    assert!(stored.iter().zip(1..).all(|(e, id)| e.id == id));
    let EventDetail::Outcome { tag, .. } = &stored[0].detail else {
        panic!("not an outcome: {:?}", stored[0].detail);
    };
    assert_eq!(tag.as_deref(), Some("SELECT 2"), "copied from the journal");
    // And the chain catches the edit.
    let report = chain::verify(store.as_ref(), None, None).await.unwrap();
    assert_eq!(report.first_break.map(|b| b.id), Some(1));
}

#[tokio::test]
async fn the_journal_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("airlock.db").display());
    let journal = dir.path().join("sub").join("events.journal");
    let store = Arc::new(SqliteStore::open(&db).await.unwrap());
    Recorder::open(store, &journal).await.unwrap();
    let mode = std::fs::metadata(&journal).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[tokio::test]
async fn the_database_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data").join("airlock.db");
    SqliteStore::open(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

/// A line of the earlier journal layout (the detail's fields inline, hashed as a JSON value with
/// sorted keys), left uncopied by a crash before an upgrade, is copied with the text it was
/// hashed over, so the chain still verifies.
#[tokio::test]
async fn a_line_of_the_earlier_layout_is_copied_as_it_was_hashed() {
    let Journaled {
        dir: _dir,
        journal,
        store,
        s,
        ..
    } = journaled().await;
    let recorder = Recorder::open(store.clone(), &journal).await.unwrap();
    for n in 0..2 {
        recorder.append(event(s, n)).unwrap();
    }
    recorder.sync().await;
    drop(recorder);

    let (_, head) = store.chain_head().await.unwrap().unwrap();
    let detail = serde_json::to_value(outcome(2)).unwrap().to_string();
    let hash = chain::event_hash(&head, 3, s, 2, &detail);
    let line = format!(
        "{{\"id\":3,\"session_id\":{s},\"at\":2,\"prev_hash\":\"{head}\",\"hash\":\"{hash}\",{}\n",
        &detail[1..]
    );
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&journal)
        .unwrap();
    file.write_all(line.as_bytes()).unwrap();
    drop(file);

    let reopened = Recorder::open(store.clone(), &journal).await.unwrap();
    let stored = store.list_events(s).await.unwrap();
    assert_eq!(stored.len(), 3);
    assert_eq!(stored[2].detail, outcome(2));
    let next = reopened.append(event(s, 3)).unwrap();
    assert_eq!(next, 4);
    reopened.sync().await;
    let report = chain::verify(store.as_ref(), None, None).await.unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(report.events_checked, 4);
}

#[test]
fn the_kind_column_is_the_serde_tag() {
    for detail in [
        outcome(1),
        EventDetail::Statement {
            operation: "SELECT 1".into(),
            params: vec![],
            statement_kinds: vec!["SELECT".into()],
            action: "allow".into(),
            policy: None,
            rule: None,
            reason: None,
            request_id: None,
        },
        EventDetail::Resolution {
            statement_event: 1,
            request_id: 1,
            state: airlock_core::store::ApprovalState::Denied,
            reason: None,
            decided_by: vec![],
            replaced_with: None,
            votes: vec![],
        },
        EventDetail::Response {
            statement_event: 1,
            columns: vec![],
            rows: vec![],
            truncated: false,
            masked: Default::default(),
        },
    ] {
        let value = serde_json::to_value(&detail).unwrap();
        assert_eq!(value["kind"], detail.kind());
    }
}
