//! `SqliteStore` against real SQLite files in a temporary directory.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use airlock_core::store::{
    ApprovalState, EventDetail, EventRecord, JournalEvent, NewApproval, NewDelivery, NewEvent,
    NewPolicyChange, NewSession, OutcomeStatus, SessionFilter, Store, StoreError, StoredConnection,
    TokenRecord, Vote,
};
use airlock_store::SqliteStore;
use tempfile::TempDir;

async fn open_temp() -> (TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}",
        dir.path().join("nested/dir/airlock.db").display()
    );
    let store = SqliteStore::open(&url).await.unwrap();
    (dir, store)
}

fn token(id: &str, created_at: i64) -> TokenRecord {
    TokenRecord {
        id: id.to_owned(),
        name: format!("agent {id}"),
        groups: vec!["agents".to_owned(), "etl".to_owned()],
        created_at,
        expires_at: Some(created_at + 86_400_000),
        revoked_at: None,
    }
}

fn session(subject: &str, started_at: i64) -> NewSession {
    NewSession {
        protocol: "postgres".to_owned(),
        connection: "prod".to_owned(),
        subject: subject.to_owned(),
        display_name: format!("{subject} (display)"),
        groups: vec!["dba".to_owned()],
        auth_method: "token".to_owned(),
        client_addr: "127.0.0.1:5000".to_owned(),
        started_at,
    }
}

fn approval(session_id: i64, needed: u32, created_at: i64) -> NewApproval {
    NewApproval {
        session_id,
        requester_subject: "agent:etl".to_owned(),
        requester_name: "ETL agent".to_owned(),
        requester_groups: vec!["agents".to_owned()],
        connection: "prod".to_owned(),
        protocol: "postgres".to_owned(),
        operation: "DELETE FROM users WHERE id = $1".to_owned(),
        params: vec![Some("42".to_owned()), None],
        statement_kinds: vec!["delete".to_owned()],
        policy: "prod-writes".to_owned(),
        rule: "deletes-need-review".to_owned(),
        reviewers: vec!["group:dba".to_owned()],
        approvals_needed: needed,
        created_at,
        expires_at: created_at + 600_000,
        all_groups_must_approve: false,
        escalate_at: None,
        escalate_to: Vec::new(),
        preview: None,
        approval_window_ms: None,
        remind_after_ms: None,
    }
}

fn vote(subject: &str, approve: bool, at: i64) -> Vote {
    Vote {
        reviewer_subject: subject.to_owned(),
        reviewer_name: format!("{subject} name"),
        reviewer_groups: vec!["dba".to_owned()],
        approve,
        reason: Some(format!("{subject} says {approve}")),
        at,
        replacement: None,
    }
}

fn all_event_details() -> Vec<EventDetail> {
    vec![
        EventDetail::Statement {
            operation: "SELECT $1".to_owned(),
            params: vec![Some("x".to_owned()), None],
            statement_kinds: vec!["select".to_owned()],
            action: "allow".to_owned(),
            policy: Some("p".to_owned()),
            rule: Some("r".to_owned()),
            reason: None,
            request_id: Some(7),
        },
        EventDetail::Resolution {
            statement_event: 1,
            request_id: 7,
            state: ApprovalState::Approved,
            reason: Some("fine".to_owned()),
            decided_by: vec!["alice".to_owned(), "bob".to_owned()],
            replaced_with: None,
            votes: Vec::new(),
        },
        EventDetail::Outcome {
            statement_event: 1,
            status: OutcomeStatus::Ok,
            rows: Some(3),
            tag: Some("SELECT 3".to_owned()),
            error: None,
            masked: Default::default(),
        },
        EventDetail::Outcome {
            statement_event: 1,
            status: OutcomeStatus::Error,
            rows: None,
            tag: None,
            error: Some("boom".to_owned()),
            masked: [("email".to_owned(), 2)].into(),
        },
        EventDetail::Outcome {
            statement_event: 1,
            status: OutcomeStatus::NotRun,
            rows: None,
            tag: None,
            error: None,
            masked: Default::default(),
        },
    ]
}

#[tokio::test]
async fn opens_plain_paths_and_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/plain.db");
    let store = SqliteStore::open(path.to_str().unwrap()).await.unwrap();
    store.ping().await.unwrap();
    assert!(path.exists());
    store.close().await;

    let memory = SqliteStore::open_in_memory().await.unwrap();
    memory.ping().await.unwrap();
    assert_eq!(memory.count_tokens().await.unwrap(), 0);
    let memory = SqliteStore::open("sqlite::memory:").await.unwrap();
    memory.ping().await.unwrap();
}

#[tokio::test]
async fn uses_wal() {
    let (dir, store) = open_temp().await;
    store.ping().await.unwrap();
    store.close().await;
    // WAL mode is persistent in the file: a plain connection sees it.
    let url = format!(
        "sqlite://{}",
        dir.path().join("nested/dir/airlock.db").display()
    );
    let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url)
        .await
        .unwrap();
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
}

#[tokio::test]
async fn tokens() {
    let (_dir, store) = open_temp().await;
    assert_eq!(store.count_tokens().await.unwrap(), 0);
    store
        .create_token(&token("t1", 1000), "hash-1")
        .await
        .unwrap();
    store
        .create_token(&token("t2", 2000), "hash-2")
        .await
        .unwrap();

    // The same hash, or the same id, again is a conflict.
    let err = store
        .create_token(&token("t3", 3000), "hash-1")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    let err = store
        .create_token(&token("t1", 3000), "hash-9")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");

    assert_eq!(store.count_tokens().await.unwrap(), 2);
    assert_eq!(
        store.find_token_by_hash("hash-1").await.unwrap(),
        Some(token("t1", 1000))
    );
    assert_eq!(store.find_token_by_hash("nope").await.unwrap(), None);
    assert_eq!(
        store.list_tokens().await.unwrap(),
        vec![token("t1", 1000), token("t2", 2000)]
    );

    assert!(store.revoke_token("t1", 5000).await.unwrap());
    assert!(
        !store.revoke_token("t1", 6000).await.unwrap(),
        "already revoked"
    );
    assert!(!store.revoke_token("missing", 6000).await.unwrap());
    let revoked = store.find_token_by_hash("hash-1").await.unwrap().unwrap();
    assert_eq!(revoked.revoked_at, Some(5000));
    assert_eq!(store.count_tokens().await.unwrap(), 2);
}

#[tokio::test]
async fn sessions_open_close_list() {
    let (_dir, store) = open_temp().await;
    let a1 = store.open_session(&session("alice", 1000)).await.unwrap();
    let b1 = store.open_session(&session("bob", 2000)).await.unwrap();
    let a2 = store.open_session(&session("alice", 3000)).await.unwrap();

    let got = store.get_session(a1).await.unwrap().unwrap();
    assert_eq!(got.id, a1);
    assert_eq!(got.session, session("alice", 1000));
    assert_eq!(got.ended_at, None);
    assert_eq!(got.event_count, 0);
    assert_eq!(store.get_session(9999).await.unwrap(), None);

    store
        .close_session(a1, 1500, "client closed")
        .await
        .unwrap();
    // A second close keeps the first end.
    store.close_session(a1, 1600, "again").await.unwrap();
    let got = store.get_session(a1).await.unwrap().unwrap();
    assert_eq!(got.ended_at, Some(1500));
    assert_eq!(got.end_reason.as_deref(), Some("client closed"));
    assert!(matches!(
        store.close_session(9999, 1, "x").await,
        Err(StoreError::NotFound)
    ));

    let ids = |records: Vec<airlock_core::store::SessionRecord>| {
        records.into_iter().map(|r| r.id).collect::<Vec<_>>()
    };
    let all = store
        .list_sessions(&SessionFilter::default())
        .await
        .unwrap();
    assert_eq!(ids(all), vec![a2, b1, a1]);
    let alice = SessionFilter {
        subject: Some("alice".to_owned()),
        ..Default::default()
    };
    assert_eq!(
        ids(store.list_sessions(&alice).await.unwrap()),
        vec![a2, a1]
    );
    let since = SessionFilter {
        since: Some(2000),
        ..Default::default()
    };
    assert_eq!(
        ids(store.list_sessions(&since).await.unwrap()),
        vec![a2, b1]
    );
    let both = SessionFilter {
        subject: Some("alice".to_owned()),
        since: Some(2000),
        limit: None,
    };
    assert_eq!(ids(store.list_sessions(&both).await.unwrap()), vec![a2]);
    let limited = SessionFilter {
        limit: Some(1),
        ..Default::default()
    };
    assert_eq!(ids(store.list_sessions(&limited).await.unwrap()), vec![a2]);
    let zero = SessionFilter {
        limit: Some(0),
        ..Default::default()
    };
    assert!(store.list_sessions(&zero).await.unwrap().is_empty());
    let nobody = SessionFilter {
        subject: Some("carol".to_owned()),
        ..Default::default()
    };
    assert!(store.list_sessions(&nobody).await.unwrap().is_empty());
}

#[tokio::test]
async fn ingest_events_in_order_and_round_trip() {
    let (_dir, store) = open_temp().await;
    let s1 = store.open_session(&session("alice", 1000)).await.unwrap();
    let s2 = store.open_session(&session("bob", 1000)).await.unwrap();

    assert!(append(&store, &[]).await.unwrap().is_empty());
    assert_eq!(store.journal_state().await.unwrap(), (0, 0));

    let details = all_event_details();
    let batch: Vec<NewEvent> = details
        .iter()
        .enumerate()
        .map(|(i, detail)| NewEvent {
            session_id: if i % 2 == 0 { s1 } else { s2 },
            at: 2000 + i as i64,
            detail: detail.clone(),
        })
        .collect();
    let ids = append(&store, &batch).await.unwrap();
    assert_eq!(ids.len(), batch.len());
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids ascend: {ids:?}");

    let more = append(&store, &batch[..1]).await.unwrap();
    assert!(more[0] > ids[ids.len() - 1]);

    let mut listed = store.list_events(s1).await.unwrap();
    listed.extend(store.list_events(s2).await.unwrap());
    listed.sort_by_key(|e| e.id);
    let expected: Vec<_> = ids
        .iter()
        .zip(&batch)
        .chain(more.iter().zip(&batch[..1]))
        .collect();
    assert_eq!(listed.len(), expected.len());
    for (record, (id, event)) in listed.iter().zip(expected) {
        assert_eq!(record.id, *id);
        assert_eq!(record.session_id, event.session_id);
        assert_eq!(record.at, event.at);
        assert_eq!(record.detail, event.detail);
    }
    let s1_events = store.list_events(s1).await.unwrap();
    assert!(s1_events.windows(2).all(|w| w[0].id < w[1].id));
    assert_eq!(store.get_session(s1).await.unwrap().unwrap().event_count, 4);
    assert_eq!(store.get_session(s2).await.unwrap().unwrap().event_count, 2);
    assert_eq!(
        store
            .list_sessions(&SessionFilter::default())
            .await
            .unwrap()[0]
            .event_count,
        2
    );
}

#[tokio::test]
async fn ingest_events_is_all_or_nothing() {
    let (_dir, store) = open_temp().await;
    let s1 = store.open_session(&session("alice", 1000)).await.unwrap();
    let detail = all_event_details().remove(0);
    let batch = vec![
        NewEvent {
            session_id: s1,
            at: 1,
            detail: detail.clone(),
        },
        NewEvent {
            session_id: 9999,
            at: 2,
            detail,
        },
    ];
    let err = append(&store, &batch).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert!(store.list_events(s1).await.unwrap().is_empty());
}

#[tokio::test]
async fn approvals_create_list_get() {
    let (_dir, store) = open_temp().await;
    let s = store
        .open_session(&session("agent:etl", 1000))
        .await
        .unwrap();
    let first = store.create_approval(&approval(s, 1, 1000)).await.unwrap();
    let second = store.create_approval(&approval(s, 2, 2000)).await.unwrap();

    let got = store.get_approval(first).await.unwrap().unwrap();
    assert_eq!(got.id, first);
    assert_eq!(got.request, approval(s, 1, 1000));
    assert_eq!(got.state, ApprovalState::Pending);
    assert_eq!(got.decided_at, None);
    assert_eq!(got.reason, None);
    assert!(got.votes.is_empty());
    assert_eq!(store.get_approval(9999).await.unwrap(), None);

    let all = store.list_approvals(None).await.unwrap();
    assert_eq!(
        all.iter().map(|a| a.id).collect::<Vec<_>>(),
        vec![second, first]
    );

    store
        .cast_vote(first, &vote("alice", true, 1500))
        .await
        .unwrap();
    let pending = store
        .list_approvals(Some(ApprovalState::Pending))
        .await
        .unwrap();
    assert_eq!(
        pending.iter().map(|a| a.id).collect::<Vec<_>>(),
        vec![second]
    );
    let approved = store
        .list_approvals(Some(ApprovalState::Approved))
        .await
        .unwrap();
    assert_eq!(approved.len(), 1);
    assert_eq!(approved[0].id, first);
    assert_eq!(approved[0].votes, vec![vote("alice", true, 1500)]);
    assert!(store
        .list_approvals(Some(ApprovalState::Denied))
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn cast_vote_rules() {
    let (_dir, store) = open_temp().await;
    let s = store
        .open_session(&session("agent:etl", 1000))
        .await
        .unwrap();
    let id = store.create_approval(&approval(s, 2, 1000)).await.unwrap();

    assert!(matches!(
        store.cast_vote(9999, &vote("alice", true, 1100)).await,
        Err(StoreError::NotFound)
    ));

    let after_one = store
        .cast_vote(id, &vote("alice", true, 1100))
        .await
        .unwrap();
    assert_eq!(after_one.state, ApprovalState::Pending);
    assert_eq!(after_one.votes, vec![vote("alice", true, 1100)]);

    match store.cast_vote(id, &vote("alice", true, 1150)).await {
        Err(StoreError::Conflict(message)) => {
            assert!(message.contains("already voted"), "{message}")
        }
        other => panic!("expected a conflict, got {other:?}"),
    }

    let after_two = store.cast_vote(id, &vote("bob", true, 1200)).await.unwrap();
    assert_eq!(after_two.state, ApprovalState::Approved);
    assert_eq!(after_two.decided_at, Some(1200));
    assert_eq!(after_two.reason.as_deref(), Some("bob says true"));
    assert_eq!(
        after_two.votes,
        vec![vote("alice", true, 1100), vote("bob", true, 1200)]
    );
    assert_eq!(store.get_approval(id).await.unwrap().unwrap(), after_two);

    match store.cast_vote(id, &vote("carol", false, 1300)).await {
        Err(StoreError::Conflict(message)) => {
            assert_eq!(message, format!("request {id} is already approved"));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }

    // One deny ends a request, whatever approvals it had.
    let denied = store.create_approval(&approval(s, 2, 2000)).await.unwrap();
    store
        .cast_vote(denied, &vote("alice", true, 2100))
        .await
        .unwrap();
    let record = store
        .cast_vote(denied, &vote("bob", false, 2200))
        .await
        .unwrap();
    assert_eq!(record.state, ApprovalState::Denied);
    assert_eq!(record.decided_at, Some(2200));
    assert_eq!(record.reason.as_deref(), Some("bob says false"));
    assert_eq!(record.votes.len(), 2);
    match store.cast_vote(denied, &vote("carol", true, 2300)).await {
        Err(StoreError::Conflict(message)) => {
            assert_eq!(message, format!("request {denied} is already denied"));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(
        store
            .get_approval(denied)
            .await
            .unwrap()
            .unwrap()
            .votes
            .len(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_votes_settle_once() {
    let (_dir, store) = open_temp().await;
    let store = Arc::new(store);
    let s = store
        .open_session(&session("agent:etl", 1000))
        .await
        .unwrap();
    let id = store.create_approval(&approval(s, 2, 1000)).await.unwrap();

    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            store
                .cast_vote(id, &vote(&format!("reviewer-{i}"), true, 1100 + i))
                .await
        }));
    }
    let mut accepted = 0;
    let mut conflicts = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => accepted += 1,
            Err(StoreError::Conflict(_)) => conflicts += 1,
            Err(other) => panic!("unexpected error {other:?}"),
        }
    }
    assert_eq!(accepted, 2);
    assert_eq!(conflicts, 6);
    let record = store.get_approval(id).await.unwrap().unwrap();
    assert_eq!(record.state, ApprovalState::Approved);
    assert_eq!(record.votes.len(), 2);
}

#[tokio::test]
async fn chains_and_replacements_are_settled_and_kept_by_the_store() {
    let (_dir, store) = open_temp().await;
    let s = store
        .open_session(&session("agent:etl", 1000))
        .await
        .unwrap();
    let mut chained = approval(s, 2, 1000);
    chained.reviewers = vec!["dba".to_owned(), "security".to_owned()];
    chained.all_groups_must_approve = true;
    chained.escalate_at = Some(5000);
    chained.escalate_to = vec!["oncall".to_owned()];
    let id = store.create_approval(&chained).await.unwrap();
    assert_eq!(
        store.get_approval(id).await.unwrap().unwrap().request,
        chained
    );

    store
        .cast_vote(id, &vote("alice", true, 1100))
        .await
        .unwrap();
    let two_dba = store.cast_vote(id, &vote("bob", true, 1200)).await.unwrap();
    assert_eq!(
        two_dba.state,
        ApprovalState::Pending,
        "no security approval yet"
    );
    let mut security = vote("carol", true, 1300);
    security.reviewer_groups = vec!["security".to_owned()];
    let settled = store.cast_vote(id, &security).await.unwrap();
    assert_eq!(settled.state, ApprovalState::Approved);

    let id = store.create_approval(&approval(s, 2, 2000)).await.unwrap();
    let mut modified = vote("alice", true, 2100);
    modified.replacement = Some("DELETE FROM users WHERE id = 1".to_owned());
    let first = store.cast_vote(id, &modified).await.unwrap();
    assert_eq!(first.replacement, modified.replacement);
    assert_eq!(first.request.operation, "DELETE FROM users WHERE id = $1");
    let mut late = vote("bob", true, 2200);
    late.replacement = Some("DELETE FROM users WHERE id = 2".to_owned());
    match store.cast_vote(id, &late).await {
        Err(StoreError::Conflict(message)) => {
            assert!(message.contains("first one"), "{message}")
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    let done = store.cast_vote(id, &vote("bob", true, 2300)).await.unwrap();
    assert_eq!(done.state, ApprovalState::Approved);
    assert_eq!(done.replacement, modified.replacement);
    assert_eq!(done.votes[0], modified);
}

#[tokio::test]
async fn finish_approval_only_when_pending() {
    let (_dir, store) = open_temp().await;
    let s = store
        .open_session(&session("agent:etl", 1000))
        .await
        .unwrap();
    let id = store.create_approval(&approval(s, 1, 1000)).await.unwrap();

    assert!(store
        .finish_approval(id, ApprovalState::Expired, "timed out", 5000)
        .await
        .unwrap());
    assert!(!store
        .finish_approval(id, ApprovalState::Canceled, "late", 6000)
        .await
        .unwrap());
    let record = store.get_approval(id).await.unwrap().unwrap();
    assert_eq!(record.state, ApprovalState::Expired);
    assert_eq!(record.decided_at, Some(5000));
    assert_eq!(record.reason.as_deref(), Some("timed out"));
    assert!(matches!(
        store.cast_vote(id, &vote("alice", true, 7000)).await,
        Err(StoreError::Conflict(_))
    ));

    let approved = store.create_approval(&approval(s, 1, 2000)).await.unwrap();
    store
        .cast_vote(approved, &vote("alice", true, 2100))
        .await
        .unwrap();
    assert!(!store
        .finish_approval(approved, ApprovalState::Canceled, "x", 2200)
        .await
        .unwrap());
    assert_eq!(
        store.get_approval(approved).await.unwrap().unwrap().state,
        ApprovalState::Approved
    );
    assert!(!store
        .finish_approval(9999, ApprovalState::Expired, "x", 1)
        .await
        .unwrap());
}

#[tokio::test]
async fn connections_upsert_and_list() {
    let (_dir, store) = open_temp().await;
    let mut prod = StoredConnection {
        name: "prod".to_owned(),
        kind: "postgres".to_owned(),
        address: "db.internal:5432".to_owned(),
        database: Some("app".to_owned()),
        user: Some("airlock".to_owned()),
        sealed_password: Some(vec![0, 1, 2, 255]),
    };
    let analytics = StoredConnection {
        name: "analytics".to_owned(),
        kind: "postgres".to_owned(),
        address: "olap:5432".to_owned(),
        database: None,
        user: None,
        sealed_password: None,
    };
    store.upsert_connection(&prod).await.unwrap();
    store.upsert_connection(&analytics).await.unwrap();
    assert_eq!(
        store.list_connections().await.unwrap(),
        vec![analytics.clone(), prod.clone()]
    );

    prod.address = "db2.internal:5432".to_owned();
    prod.sealed_password = None;
    store.upsert_connection(&prod).await.unwrap();
    assert_eq!(
        store.list_connections().await.unwrap(),
        vec![analytics, prod]
    );
}

#[tokio::test]
async fn data_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("airlock.db");
    let location = path.to_str().unwrap().to_owned();

    let (session_id, approval_id, event_ids) = {
        let store = SqliteStore::open(&location).await.unwrap();
        store
            .create_token(&token("t1", 1000), "hash-1")
            .await
            .unwrap();
        let session_id = store.open_session(&session("alice", 1000)).await.unwrap();
        let events: Vec<NewEvent> = all_event_details()
            .into_iter()
            .map(|detail| NewEvent {
                session_id,
                at: 1100,
                detail,
            })
            .collect();
        let event_ids = append(&store, &events).await.unwrap();
        let approval_id = store
            .create_approval(&approval(session_id, 1, 1200))
            .await
            .unwrap();
        store
            .cast_vote(approval_id, &vote("bob", true, 1300))
            .await
            .unwrap();
        store
            .upsert_connection(&StoredConnection {
                name: "prod".to_owned(),
                kind: "postgres".to_owned(),
                address: "db:5432".to_owned(),
                database: None,
                user: None,
                sealed_password: Some(vec![9; 16]),
            })
            .await
            .unwrap();
        store.close().await;
        (session_id, approval_id, event_ids)
    };

    // Reopening runs the migrations again, which must be a no-op.
    let store = SqliteStore::open(&format!("sqlite://{location}"))
        .await
        .unwrap();
    assert_eq!(
        store.find_token_by_hash("hash-1").await.unwrap(),
        Some(token("t1", 1000))
    );
    let got = store.get_session(session_id).await.unwrap().unwrap();
    assert_eq!(got.event_count, event_ids.len() as i64);
    let events = store.list_events(session_id).await.unwrap();
    assert_eq!(events.iter().map(|e| e.id).collect::<Vec<_>>(), event_ids);
    assert_eq!(
        events.into_iter().map(|e| e.detail).collect::<Vec<_>>(),
        all_event_details()
    );
    let record = store.get_approval(approval_id).await.unwrap().unwrap();
    assert_eq!(record.state, ApprovalState::Approved);
    assert_eq!(record.votes, vec![vote("bob", true, 1300)]);
    assert_eq!(
        store.list_connections().await.unwrap()[0].sealed_password,
        Some(vec![9; 16])
    );
}

/// Stores events the way the recorder does: ids assigned after the largest stored one, the
/// journal offset advanced by one per event.
async fn append(store: &SqliteStore, events: &[NewEvent]) -> Result<Vec<i64>, StoreError> {
    let (offset, max_id) = store.journal_state().await?;
    let records: Vec<EventRecord> = events
        .iter()
        .enumerate()
        .map(|(i, e)| EventRecord {
            id: max_id + 1 + i as i64,
            session_id: e.session_id,
            at: e.at,
            detail: e.detail.clone(),
            prev_hash: None,
            hash: None,
        })
        .collect();
    let encoded: Vec<JournalEvent> = records
        .iter()
        .map(|r| JournalEvent::encode(r).unwrap())
        .collect();
    store
        .ingest_events(encoded, offset + events.len() as u64)
        .await?;
    Ok(records.iter().map(|r| r.id).collect())
}

#[tokio::test]
async fn ingesting_again_skips_stored_events() {
    let (_dir, store) = open_temp().await;
    let s1 = store.open_session(&session("alice", 1000)).await.unwrap();
    let record = EventRecord {
        id: 7,
        session_id: s1,
        at: 1,
        detail: all_event_details().remove(0),
        prev_hash: None,
        hash: None,
    };
    let record = JournalEvent::encode(&record).unwrap();
    store
        .ingest_events(vec![record.clone()], 100)
        .await
        .unwrap();
    store.ingest_events(vec![record], 100).await.unwrap();
    assert_eq!(store.list_events(s1).await.unwrap().len(), 1);
    assert_eq!(store.journal_state().await.unwrap(), (100, 7));
}

#[tokio::test]
async fn policy_changes_are_kept_newest_first() {
    let (_dir, store) = open_temp().await;
    assert!(store.list_policy_changes().await.unwrap().is_empty());
    let first = NewPolicyChange {
        at: 1_000,
        source: "config-file".to_owned(),
        changed_by_subject: None,
        changed_by: "config file".to_owned(),
        summary: "added `a`".to_owned(),
        old_policies: "policies: []\n".to_owned(),
        new_policies: "policies:\n- name: a\n".to_owned(),
    };
    let second = NewPolicyChange {
        at: 2_000,
        source: "api".to_owned(),
        changed_by_subject: Some("token:t1".to_owned()),
        changed_by: "alice".to_owned(),
        summary: "removed `a`".to_owned(),
        old_policies: first.new_policies.clone(),
        new_policies: first.old_policies.clone(),
    };
    let id1 = store.record_policy_change(&first).await.unwrap();
    let id2 = store.record_policy_change(&second).await.unwrap();
    assert!(id2 > id1);
    let listed = store.list_policy_changes().await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!((listed[0].id, &listed[0].change), (id2, &second));
    assert_eq!((listed[1].id, &listed[1].change), (id1, &first));
}

#[tokio::test]
async fn notification_deliveries_are_kept_per_request_in_order() {
    let (_dir, store) = open_temp().await;
    let s = store.open_session(&session("agent-1", 1000)).await.unwrap();
    let first = store.create_approval(&approval(s, 1, 1000)).await.unwrap();
    let second = store.create_approval(&approval(s, 1, 2000)).await.unwrap();
    let attempt =
        |request_id, attempt, status_code: Option<i64>, error: Option<&str>| NewDelivery {
            request_id,
            event: "requested".into(),
            webhook: 1,
            target: "https://hooks.slack.com/…".into(),
            format: "slack".into(),
            attempt,
            at: 1000 + attempt,
            status_code,
            error: error.map(str::to_owned),
            delivered: status_code == Some(200),
        };
    let tries = [
        attempt(first, 1, None, Some("connection refused")),
        attempt(first, 2, Some(500), None),
        attempt(second, 1, Some(200), None),
        attempt(first, 3, Some(200), None),
    ];
    for t in &tries {
        store.record_delivery(t).await.unwrap();
    }
    let listed = store.list_deliveries(first).await.unwrap();
    let got: Vec<NewDelivery> = listed.into_iter().map(|d| d.delivery).collect();
    assert_eq!(got, [tries[0].clone(), tries[1].clone(), tries[3].clone()]);
    assert_eq!(store.list_deliveries(second).await.unwrap().len(), 1);
    assert!(store.list_deliveries(999).await.unwrap().is_empty());
}
