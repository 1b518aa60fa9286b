//! What a SQL string does, from PostgreSQL's own parser (`pg_query`): the kind of each
//! statement plus every data-modifying statement nested anywhere inside it (CTEs, subqueries,
//! EXPLAIN, COPY (…), CREATE TABLE AS, …). Comments and case cannot disguise anything because
//! nothing here looks at the text. Results are cached by exact text.

use pg_query::NodeEnum;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

/// A statement kind that a rule's `match` can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StatementKind {
    Select,
    Insert,
    Update,
    Delete,
    Merge,
    Truncate,
    Copy,
    Create,
    Alter,
    Drop,
    Grant,
    Revoke,
    Do,
    Call,
    Set,
    Show,
    Explain,
    Prepare,
    Execute,
    Deallocate,
    Declare,
    Fetch,
    Close,
    Listen,
    Notify,
    Unlisten,
    Vacuum,
    Analyze,
    Lock,
    Transaction,
    Discard,
    Comment,
    Other,
}

impl StatementKind {
    pub const ALL: [StatementKind; 33] = [
        StatementKind::Select,
        StatementKind::Insert,
        StatementKind::Update,
        StatementKind::Delete,
        StatementKind::Merge,
        StatementKind::Truncate,
        StatementKind::Copy,
        StatementKind::Create,
        StatementKind::Alter,
        StatementKind::Drop,
        StatementKind::Grant,
        StatementKind::Revoke,
        StatementKind::Do,
        StatementKind::Call,
        StatementKind::Set,
        StatementKind::Show,
        StatementKind::Explain,
        StatementKind::Prepare,
        StatementKind::Execute,
        StatementKind::Deallocate,
        StatementKind::Declare,
        StatementKind::Fetch,
        StatementKind::Close,
        StatementKind::Listen,
        StatementKind::Notify,
        StatementKind::Unlisten,
        StatementKind::Vacuum,
        StatementKind::Analyze,
        StatementKind::Lock,
        StatementKind::Transaction,
        StatementKind::Discard,
        StatementKind::Comment,
        StatementKind::Other,
    ];

    pub fn name(self) -> &'static str {
        match self {
            StatementKind::Select => "SELECT",
            StatementKind::Insert => "INSERT",
            StatementKind::Update => "UPDATE",
            StatementKind::Delete => "DELETE",
            StatementKind::Merge => "MERGE",
            StatementKind::Truncate => "TRUNCATE",
            StatementKind::Copy => "COPY",
            StatementKind::Create => "CREATE",
            StatementKind::Alter => "ALTER",
            StatementKind::Drop => "DROP",
            StatementKind::Grant => "GRANT",
            StatementKind::Revoke => "REVOKE",
            StatementKind::Do => "DO",
            StatementKind::Call => "CALL",
            StatementKind::Set => "SET",
            StatementKind::Show => "SHOW",
            StatementKind::Explain => "EXPLAIN",
            StatementKind::Prepare => "PREPARE",
            StatementKind::Execute => "EXECUTE",
            StatementKind::Deallocate => "DEALLOCATE",
            StatementKind::Declare => "DECLARE",
            StatementKind::Fetch => "FETCH",
            StatementKind::Close => "CLOSE",
            StatementKind::Listen => "LISTEN",
            StatementKind::Notify => "NOTIFY",
            StatementKind::Unlisten => "UNLISTEN",
            StatementKind::Vacuum => "VACUUM",
            StatementKind::Analyze => "ANALYZE",
            StatementKind::Lock => "LOCK",
            StatementKind::Transaction => "TRANSACTION",
            StatementKind::Discard => "DISCARD",
            StatementKind::Comment => "COMMENT",
            StatementKind::Other => "OTHER",
        }
    }

    /// Parses a kind name as written in a rule's `match` (case-insensitive).
    pub fn from_name(name: &str) -> Option<StatementKind> {
        let upper = name.trim().to_ascii_uppercase();
        StatementKind::ALL.into_iter().find(|k| k.name() == upper)
    }

    /// The kind of a statement from the variant name of its parse node.
    fn of_node_name(name: &str) -> Option<StatementKind> {
        Some(match name {
            "SelectStmt" => StatementKind::Select,
            "InsertStmt" => StatementKind::Insert,
            "UpdateStmt" => StatementKind::Update,
            "DeleteStmt" => StatementKind::Delete,
            "MergeStmt" => StatementKind::Merge,
            _ => return None,
        })
    }
}

impl fmt::Display for StatementKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One statement of a SQL string: its own kind, and every kind that runs as part of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassifiedStatement {
    pub kind: StatementKind,
    /// `kind` plus any data-modifying statements nested inside (sorted, unique).
    pub kinds: Vec<StatementKind>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Classification {
    /// The parser accepted the text; one entry per statement (none for an empty query).
    Parsed(Vec<ClassifiedStatement>),
    /// The parser rejected the text; such SQL is never forwarded unless a policy's default
    /// allows it.
    Unparseable(String),
}

impl Classification {
    /// Every kind involved, sorted and unique, for records and notifications.
    pub fn kinds(&self) -> Vec<StatementKind> {
        match self {
            Classification::Parsed(statements) => {
                let mut all: Vec<StatementKind> = statements
                    .iter()
                    .flat_map(|s| s.kinds.iter().copied())
                    .collect();
                all.sort();
                all.dedup();
                all
            }
            Classification::Unparseable(_) => Vec::new(),
        }
    }

    pub fn kind_names(&self) -> Vec<String> {
        self.kinds().iter().map(|k| k.name().to_string()).collect()
    }
}

/// Classifies SQL with PostgreSQL's parser.
pub fn classify(sql: &str) -> Classification {
    let parsed = match pg_query::parse(sql) {
        Ok(parsed) => parsed,
        Err(e) => return Classification::Unparseable(e.to_string()),
    };
    let mut statements = Vec::with_capacity(parsed.protobuf.stmts.len());
    for raw in &parsed.protobuf.stmts {
        let Some(node) = raw.stmt.as_ref().and_then(|n| n.node.as_ref()) else {
            continue;
        };
        let kind = top_level_kind(node);
        let mut kinds = vec![kind];
        if may_nest_statements(node, sql) {
            match serde_json::to_value(node) {
                Ok(tree) => collect_nested_writes(&tree, &mut kinds),
                // Cannot look inside: treat it as something no rule can name.
                Err(_) => kinds.push(StatementKind::Other),
            }
        }
        kinds.sort();
        kinds.dedup();
        statements.push(ClassifiedStatement { kind, kinds });
    }
    Classification::Parsed(statements)
}

/// Whether a statement can contain another. Inside SELECT, INSERT, UPDATE, DELETE and MERGE a
/// statement can only nest through a WITH clause, and a text without the letters `with` has
/// none; every other statement kind (EXPLAIN, COPY, PREPARE, CREATE …) is always walked.
fn may_nest_statements(node: &NodeEnum, sql: &str) -> bool {
    let plain_dml = matches!(
        node,
        NodeEnum::SelectStmt(_)
            | NodeEnum::InsertStmt(_)
            | NodeEnum::UpdateStmt(_)
            | NodeEnum::DeleteStmt(_)
            | NodeEnum::MergeStmt(_)
    );
    !plain_dml
        || sql
            .as_bytes()
            .windows(4)
            .any(|w| w.eq_ignore_ascii_case(b"with"))
}

/// Walks the whole serialized parse tree. Node variants appear as object keys
/// (`{"DeleteStmt": {…}}`), literal text only as string values, so no literal can fake a node.
fn collect_nested_writes(value: &serde_json::Value, kinds: &mut Vec<StatementKind>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, child) in map {
                if let Some(kind) = StatementKind::of_node_name(key) {
                    if kind != StatementKind::Select {
                        kinds.push(kind);
                    }
                }
                collect_nested_writes(child, kinds);
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                collect_nested_writes(item, kinds);
            }
        }
        _ => {}
    }
}

fn top_level_kind(node: &NodeEnum) -> StatementKind {
    use StatementKind as K;
    match node {
        // SELECT … INTO creates a table.
        NodeEnum::SelectStmt(s) if s.into_clause.is_some() => K::Create,
        NodeEnum::SelectStmt(_) => K::Select,
        NodeEnum::InsertStmt(_) => K::Insert,
        NodeEnum::UpdateStmt(_) => K::Update,
        NodeEnum::DeleteStmt(_) => K::Delete,
        NodeEnum::MergeStmt(_) => K::Merge,
        NodeEnum::TruncateStmt(_) => K::Truncate,
        NodeEnum::CopyStmt(_) => K::Copy,
        NodeEnum::DropStmt(_)
        | NodeEnum::DropRoleStmt(_)
        | NodeEnum::DropdbStmt(_)
        | NodeEnum::DropOwnedStmt(_)
        | NodeEnum::DropSubscriptionStmt(_)
        | NodeEnum::DropTableSpaceStmt(_)
        | NodeEnum::DropUserMappingStmt(_) => K::Drop,
        NodeEnum::GrantStmt(g) if !g.is_grant => K::Revoke,
        NodeEnum::GrantRoleStmt(g) if !g.is_grant => K::Revoke,
        NodeEnum::GrantStmt(_) | NodeEnum::GrantRoleStmt(_) => K::Grant,
        NodeEnum::DoStmt(_) => K::Do,
        NodeEnum::CallStmt(_) => K::Call,
        NodeEnum::VariableSetStmt(_) => K::Set,
        NodeEnum::VariableShowStmt(_) => K::Show,
        NodeEnum::ExplainStmt(_) => K::Explain,
        NodeEnum::PrepareStmt(_) => K::Prepare,
        NodeEnum::ExecuteStmt(_) => K::Execute,
        NodeEnum::DeallocateStmt(_) => K::Deallocate,
        NodeEnum::DeclareCursorStmt(_) => K::Declare,
        NodeEnum::FetchStmt(_) => K::Fetch,
        NodeEnum::ClosePortalStmt(_) => K::Close,
        NodeEnum::ListenStmt(_) => K::Listen,
        NodeEnum::NotifyStmt(_) => K::Notify,
        NodeEnum::UnlistenStmt(_) => K::Unlisten,
        NodeEnum::VacuumStmt(v) if !v.is_vacuumcmd => K::Analyze,
        NodeEnum::VacuumStmt(_) => K::Vacuum,
        NodeEnum::LockStmt(_) => K::Lock,
        NodeEnum::TransactionStmt(_) => K::Transaction,
        NodeEnum::DiscardStmt(_) => K::Discard,
        NodeEnum::CommentStmt(_) => K::Comment,
        other => {
            let name = format!("{other:?}");
            let variant = name.split('(').next().unwrap_or("");
            if variant.starts_with("Create")
                || variant == "IndexStmt"
                || variant == "ViewStmt"
                || variant == "DefineStmt"
                || variant == "RuleStmt"
                || variant == "CompositeTypeStmt"
            {
                K::Create
            } else if variant.starts_with("Alter") || variant == "RenameStmt" {
                K::Alter
            } else {
                K::Other
            }
        }
    }
}

/// A bounded, shared cache of classifications keyed by exact SQL text.
pub struct ClassifierCache {
    entries: Mutex<HashMap<Arc<str>, Arc<Classification>>>,
    capacity: usize,
}

impl ClassifierCache {
    pub fn new(capacity: usize) -> Self {
        ClassifierCache {
            entries: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    pub fn classify(&self, sql: &str) -> Arc<Classification> {
        if let Ok(entries) = self.entries.lock() {
            if let Some(hit) = entries.get(sql) {
                return hit.clone();
            }
        }
        let classification = Arc::new(classify(sql));
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= self.capacity {
                entries.clear();
            }
            entries.insert(Arc::from(sql), classification.clone());
        }
        classification
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use StatementKind as K;
    #[test]
    fn zz_scratch_dump() {
        for sql in [
            "select set_config('a','b',false)",
            "select pg_catalog.set_config($1,'b',false)",
            "execute d(1)",
            "fetch all from p",
            "move next in p",
            "set names 'SJIS'",
            "reset all",
            "set standard_conforming_strings to default",
            "set local client_encoding = 'x'",
            "alter system set x = 1",
            "insert into t values (1) on conflict (id) do update set a = 1",
            "insert into t values (1) on conflict do nothing",
            "explain analyze select 1 into t3",
            "select 1",
            "set time zone 'UTC'",
            "reset client_encoding",
        ] {
            let parsed = pg_query::parse(sql).unwrap();
            let node = parsed.protobuf.stmts[0]
                .stmt
                .as_ref()
                .unwrap()
                .node
                .as_ref()
                .unwrap();
            println!("{sql}\n  {}", serde_json::to_value(node).unwrap());
        }
    }

    fn kinds(sql: &str) -> Vec<Vec<StatementKind>> {
        match classify(sql) {
            Classification::Parsed(s) => s.into_iter().map(|s| s.kinds).collect(),
            Classification::Unparseable(e) => panic!("unparseable {sql}: {e}"),
        }
    }

    #[test]
    fn plain_statements() {
        assert_eq!(kinds("select 1"), vec![vec![K::Select]]);
        assert_eq!(kinds("DELETE FROM t WHERE id = 1"), vec![vec![K::Delete]]);
        assert_eq!(kinds("update t set a = 1"), vec![vec![K::Update]]);
        assert_eq!(kinds("insert into t values (1)"), vec![vec![K::Insert]]);
        assert_eq!(kinds("drop table t"), vec![vec![K::Drop]]);
        assert_eq!(kinds("truncate t"), vec![vec![K::Truncate]]);
        assert_eq!(kinds("create table t (a int)"), vec![vec![K::Create]]);
        assert_eq!(kinds("create index i on t (a)"), vec![vec![K::Create]]);
        assert_eq!(
            kinds("alter table t add column b int"),
            vec![vec![K::Alter]]
        );
        assert_eq!(kinds("grant select on t to bob"), vec![vec![K::Grant]]);
        assert_eq!(kinds("revoke select on t from bob"), vec![vec![K::Revoke]]);
        assert_eq!(kinds("begin"), vec![vec![K::Transaction]]);
        assert_eq!(kinds("set search_path = x"), vec![vec![K::Set]]);
        assert_eq!(kinds("do $$ begin end $$"), vec![vec![K::Do]]);
        assert_eq!(kinds("analyze t"), vec![vec![K::Analyze]]);
        assert_eq!(kinds("vacuum t"), vec![vec![K::Vacuum]]);
        assert_eq!(kinds("checkpoint"), vec![vec![K::Other]]);
    }

    #[test]
    fn disguises_are_seen_through() {
        assert_eq!(kinds("/* x */ DELETE FROM t"), vec![vec![K::Delete]]);
        assert_eq!(kinds("-- hi\n dElEtE from t"), vec![vec![K::Delete]]);
        assert_eq!(
            kinds("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d"),
            vec![vec![K::Select, K::Delete]]
        );
        assert_eq!(
            kinds("SELECT 1; DROP TABLE t"),
            vec![vec![K::Select], vec![K::Drop]]
        );
        assert_eq!(
            kinds("select * from (select 1) s where exists (select 1)"),
            vec![vec![K::Select]]
        );
        assert_eq!(
            kinds("select * from (with d as (delete from t returning *) select * from d) s"),
            vec![vec![K::Select, K::Delete]]
        );
        assert_eq!(
            kinds("insert into t wItH x as (update t set a = 1 returning *) select * from x"),
            vec![vec![K::Insert, K::Update]]
        );
        assert_eq!(
            kinds("explain analyze delete from t"),
            vec![vec![K::Delete, K::Explain]]
        );
        assert_eq!(
            kinds("copy (delete from t returning *) to stdout"),
            vec![vec![K::Delete, K::Copy]]
        );
        assert_eq!(kinds("select * into t2 from t"), vec![vec![K::Create]]);
        assert_eq!(
            kinds("prepare p as update t set a = 1"),
            vec![vec![K::Update, K::Prepare]]
        );
    }

    #[test]
    fn literals_cannot_fake_statements() {
        assert_eq!(
            kinds("select '{\"DeleteStmt\": 1}', 'DeleteStmt'"),
            vec![vec![K::Select]]
        );
    }

    #[test]
    fn garbage_is_unparseable_and_empty_is_empty() {
        assert!(matches!(
            classify("DELET FROM t"),
            Classification::Unparseable(_)
        ));
        assert_eq!(classify(""), Classification::Parsed(vec![]));
        assert_eq!(classify(" ; "), Classification::Parsed(vec![]));
    }

    #[test]
    fn kind_names_round_trip() {
        for kind in StatementKind::ALL {
            assert_eq!(
                StatementKind::from_name(&kind.name().to_lowercase()),
                Some(kind)
            );
        }
        assert_eq!(StatementKind::from_name("DELET"), None);
    }

    #[test]
    fn cache_returns_same_answer() {
        let cache = ClassifierCache::new(2);
        let a = cache.classify("select 1");
        let b = cache.classify("select 1");
        assert!(Arc::ptr_eq(&a, &b));
        cache.classify("select 2");
        cache.classify("select 3");
        assert_eq!(*cache.classify("select 1"), *a);
    }
}
