//! What a MySQL/MariaDB SQL string does, from `sqlparser`'s MySQL dialect, in the same
//! statement kinds as the PostgreSQL classifier (`classify`), so one policy speaks of both.
//!
//! MySQL runs the text of executable comments (`/*! … */`, `/*!50001 … */`): the tokenizer
//! reads them as code, so they are judged as code. MariaDB's `/*M! … */` form is refused
//! (unparseable). Statements the parser does not know but MySQL runs (`LOAD DATA`, `HANDLER`,
//! `DO`, `SELECT … INTO OUTFILE`) are recognized from their tokens; anything else that does not
//! parse is unparseable, which policies deny unless their `default` says otherwise.
//!
//! Finer kinds take PostgreSQL's names (`DROP TABLE`, `CREATE INDEX`, `COPY FROM FILE`), so a
//! rule written for one reads the same on the other: a MySQL database is also a schema
//! (`DROP DATABASE` and `DROP SCHEMA` name both), a user is a `ROLE`, `LOAD DATA LOCAL` reads
//! from the client (`COPY FROM`), `LOAD DATA` without `LOCAL` and `SELECT … INTO
//! OUTFILE/DUMPFILE` use a server file (`COPY FROM FILE`, `COPY TO FILE`, `COPY FILE`).

use crate::classify::{
    Classification, ClassifiedStatement, StatementKind as K, MAX_CLASSIFIED_LEN,
};
use crate::config::ConnectionKind;
use sqlparser::ast::{
    visit_expressions, visit_relations, visit_statements, Expr, ObjectName, ObjectNamePart,
    ObjectType, OnInsert, Query, Statement, TableFactor, Visit, Visitor,
};
use sqlparser::dialect::MySqlDialect;
use sqlparser::keywords::Keyword;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer, Whitespace};
use std::ops::ControlFlow;

/// Functions whose call is more than a read: they touch the server's files, hold locks across
/// sessions, stall the server, or write sequences.
const DANGEROUS_FUNCTIONS: [&str; 12] = [
    "load_file",
    "sys_exec",
    "sys_eval",
    "get_lock",
    "release_lock",
    "release_all_locks",
    "benchmark",
    "sleep",
    "master_pos_wait",
    "master_gtid_wait",
    "nextval",
    "setval",
];

/// Session variables that change how the server reads later SQL text (its character set, or
/// the SQL mode's `ANSI_QUOTES` / `NO_BACKSLASH_ESCAPES`): setting them would make the server
/// read differently from this parser, so such statements are refused.
const LEXER_SETTINGS: [&str; 5] = ["names", "character", "charset", "sql_mode", "collation"];

/// MySQL's parser recursion: deep enough for any real statement, shallow enough for any stack.
const RECURSION_LIMIT: usize = 200;

/// Classifies SQL text as the server of a connection of `kind` reads it.
pub fn classify_for(kind: ConnectionKind, sql: &str) -> Classification {
    match kind {
        ConnectionKind::Mysql => classify_mysql(sql),
        _ => crate::classify::classify(sql),
    }
}

/// Classifies MySQL SQL text.
pub fn classify_mysql(sql: &str) -> Classification {
    if sql.len() > MAX_CLASSIFIED_LEN {
        return Classification::Unparseable(format!(
            "the statement is {} bytes long; the gateway classifies statements up to {} bytes",
            sql.len(),
            MAX_CLASSIFIED_LEN
        ));
    }
    let dialect = MySqlDialect {};
    let tokens = match Tokenizer::new(&dialect, sql).tokenize_with_location() {
        Ok(tokens) => tokens,
        Err(e) => return Classification::Unparseable(e.to_string()),
    };
    if tokens.iter().any(|t| {
        matches!(&t.token, Token::Whitespace(Whitespace::MultiLineComment(c)) if c.starts_with("M!"))
    }) {
        return Classification::Unparseable(
            "MariaDB executable comments (/*M! … */) are not accepted through the gateway".into(),
        );
    }
    let whole = Parser::new(&dialect)
        .with_recursion_limit(RECURSION_LIMIT)
        .with_tokens_with_locations(tokens.clone())
        .parse_statements();
    if let Ok(statements) = whole {
        return Classification::Parsed(statements.iter().map(classify_statement).collect());
    }
    // Some statement the parser does not know: judge each statement on its own.
    let mut classified = Vec::new();
    for segment in split_statements(tokens) {
        let mut parser = Parser::new(&dialect)
            .with_recursion_limit(RECURSION_LIMIT)
            .with_tokens_with_locations(segment.clone());
        let parsed = parser
            .parse_statement()
            .and_then(|s| match parser.peek_token().token {
                Token::EOF => Ok(s),
                other => Err(sqlparser::parser::ParserError::ParserError(format!(
                    "unexpected {other} after the statement"
                ))),
            });
        match parsed {
            Ok(statement) => classified.push(classify_statement(&statement)),
            Err(e) => match from_tokens(&segment) {
                Some(statement) => classified.push(statement),
                None => return Classification::Unparseable(e.to_string()),
            },
        }
    }
    Classification::Parsed(classified)
}

/// The names a statement gives to rows that are not a table's own: derived tables, common
/// table expressions and `JSON_TABLE`s, lower-cased. MySQL describes a column read through one
/// as a column of a table of that name (`org_table`), which hides where its values come from.
/// `None` when that cannot be known (the text does not parse, or uses a table source the
/// gateway does not know).
pub fn derived_table_names(sql: &str) -> Option<Vec<String>> {
    #[derive(Default)]
    struct Names {
        names: Vec<String>,
        unknown: bool,
    }
    impl Visitor for Names {
        type Break = ();
        fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
            if let Some(with) = &query.with {
                let ctes = with.cte_tables.iter();
                self.names
                    .extend(ctes.map(|cte| cte.alias.name.value.to_lowercase()));
            }
            ControlFlow::Continue(())
        }
        fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
            match factor {
                TableFactor::Table { .. } | TableFactor::NestedJoin { alias: None, .. } => {}
                TableFactor::Derived {
                    alias: Some(alias), ..
                }
                | TableFactor::JsonTable {
                    alias: Some(alias), ..
                }
                | TableFactor::NestedJoin {
                    alias: Some(alias), ..
                } => self.names.push(alias.name.value.to_lowercase()),
                _ => self.unknown = true,
            }
            ControlFlow::Continue(())
        }
    }
    if sql.len() > MAX_CLASSIFIED_LEN {
        return None;
    }
    let statements = Parser::new(&MySqlDialect {})
        .with_recursion_limit(RECURSION_LIMIT)
        .try_with_sql(sql)
        .and_then(|mut parser| parser.parse_statements())
        .ok()?;
    let mut names = Names::default();
    for statement in &statements {
        let _ = statement.visit(&mut names);
    }
    (!names.unknown).then_some(names.names)
}

/// The statements of a token stream, split at top-level semicolons (strings and comments are
/// single tokens, so a `;` inside them does not split). Empty statements are left out.
fn split_statements(tokens: Vec<TokenWithSpan>) -> Vec<Vec<TokenWithSpan>> {
    let mut segments = Vec::new();
    let mut current = Vec::new();
    for token in tokens {
        match token.token {
            Token::SemiColon | Token::EOF => {
                if current
                    .iter()
                    .any(|t: &TokenWithSpan| !matches!(t.token, Token::Whitespace(_)))
                {
                    segments.push(std::mem::take(&mut current));
                } else {
                    current.clear();
                }
            }
            _ => current.push(token),
        }
    }
    if current
        .iter()
        .any(|t| !matches!(t.token, Token::Whitespace(_)))
    {
        segments.push(current);
    }
    segments
}

/// A statement MySQL runs that the parser does not know, recognized from its words.
fn from_tokens(tokens: &[TokenWithSpan]) -> Option<ClassifiedStatement> {
    let words: Vec<&Token> = tokens
        .iter()
        .map(|t| &t.token)
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .collect();
    let keyword = |t: &Token| match t {
        Token::Word(w) if w.quote_style.is_none() => Some(w.value.to_ascii_uppercase()),
        _ => None,
    };
    let name_after = |index: usize| -> Option<String> {
        let mut parts = Vec::new();
        let mut i = index;
        while let Some(Token::Word(w)) = words.get(i) {
            parts.push(w.value.clone());
            if words.get(i + 1) != Some(&&Token::Period) {
                break;
            }
            i += 2;
        }
        (!parts.is_empty()).then(|| parts.join("."))
    };
    let first = keyword(words.first()?)?;
    let mut statement = ClassifiedStatement {
        kind: K::Other,
        kinds: Vec::new(),
        subkinds: Vec::new(),
        runs: Vec::new(),
        forbidden: None,
        tables: Vec::new(),
        functions: Vec::new(),
        unfiltered_write: false,
    };
    let position = |word: &str| {
        words
            .iter()
            .position(|t| keyword(t).as_deref() == Some(word))
    };
    let writes_file = words.windows(2).any(|pair| {
        keyword(pair[0]).as_deref() == Some("INTO")
            && matches!(keyword(pair[1]).as_deref(), Some("OUTFILE" | "DUMPFILE"))
    });
    match first.as_str() {
        "LOAD" => {
            statement.kind = K::Copy;
            statement.subkinds = copy_subkinds("FROM", position("LOCAL").is_none());
            if let Some(at) = position("TABLE") {
                statement.tables.extend(name_after(at + 1));
            }
        }
        "HANDLER" => {
            statement.kind = K::Select;
            statement.tables.extend(name_after(1));
        }
        "DO" => statement.kind = K::Do,
        "SELECT" | "WITH" | "(" if writes_file => {
            statement.kind = K::Select;
            statement.kinds.push(K::Copy);
            statement.subkinds = copy_subkinds("TO", true);
            if let Some(at) = position("FROM") {
                statement.tables.extend(name_after(at + 1));
            }
        }
        _ => return None,
    }
    // Function calls: a name followed by `(`.
    for pair in words.windows(2) {
        if let (Token::Word(w), Token::LParen) = (pair[0], pair[1]) {
            if w.keyword == Keyword::NoKeyword || w.quote_style.is_some() {
                note_function(&mut statement, &w.value);
            }
        }
    }
    Some(finish(statement))
}

fn note_function(statement: &mut ClassifiedStatement, name: &str) {
    let bare = name.rsplit('.').next().unwrap_or(name).to_ascii_lowercase();
    if DANGEROUS_FUNCTIONS.contains(&bare.as_str()) {
        statement.kinds.push(K::Function);
    }
    statement.functions.push(name.to_string());
}

/// A COPY's finer kinds: its direction, and whether a server file is at the other end.
fn copy_subkinds(direction: &str, server_file: bool) -> Vec<String> {
    let mut names = vec![format!("COPY {direction}")];
    if server_file {
        names.push(format!("COPY {direction} FILE"));
        names.push("COPY FILE".to_string());
    }
    names
}

/// The finer kinds of one statement (see the module header).
fn subkinds(statement: &Statement) -> Vec<String> {
    let kind = top_level_kind(statement);
    let details: Vec<String> = match statement {
        Statement::LoadData { local, .. } => return copy_subkinds("FROM", !local),
        Statement::CreateTable(_) | Statement::AlterTable(_) | Statement::RenameTable(_) => {
            vec!["TABLE".into()]
        }
        Statement::CreateView(view) if view.materialized => vec!["MATERIALIZED VIEW".into()],
        Statement::CreateView(_) | Statement::AlterView(_) => vec!["VIEW".into()],
        Statement::CreateIndex(_) | Statement::AlterIndex { .. } => vec!["INDEX".into()],
        Statement::CreateRole(_)
        | Statement::CreateUser(_)
        | Statement::AlterRole { .. }
        | Statement::AlterUser(_) => vec!["ROLE".into()],
        Statement::CreateDatabase { .. }
        | Statement::CreateSchema { .. }
        | Statement::AlterSchema(_) => vec!["DATABASE".into(), "SCHEMA".into()],
        Statement::CreateFunction(_) | Statement::AlterFunction(_) | Statement::DropFunction(_) => {
            vec!["FUNCTION".into()]
        }
        Statement::CreateProcedure { .. } | Statement::DropProcedure { .. } => {
            vec!["PROCEDURE".into()]
        }
        Statement::CreateTrigger(_) | Statement::AlterTrigger(_) | Statement::DropTrigger(_) => {
            vec!["TRIGGER".into()]
        }
        Statement::CreateSequence { .. } => vec!["SEQUENCE".into()],
        Statement::Drop { object_type, .. } => match object_type {
            ObjectType::Database | ObjectType::Schema => {
                vec!["DATABASE".into(), "SCHEMA".into()]
            }
            ObjectType::User | ObjectType::Role | ObjectType::Group => vec!["ROLE".into()],
            other => vec![other.to_string()],
        },
        _ => Vec::new(),
    };
    let known = kind.subkind_names();
    details
        .into_iter()
        .filter(|detail| known.contains(&detail.as_str()))
        .map(|detail| format!("{} {detail}", kind.name()))
        .collect()
}

fn finish(mut statement: ClassifiedStatement) -> ClassifiedStatement {
    statement.kinds.push(statement.kind);
    statement.kinds.sort();
    statement.kinds.dedup();
    statement.subkinds.sort();
    statement.subkinds.dedup();
    statement.tables.sort();
    statement.tables.dedup();
    statement.functions.sort();
    statement.functions.dedup();
    statement
}

fn object_name(name: &ObjectName) -> String {
    name.0
        .iter()
        .map(|part| match part {
            ObjectNamePart::Identifier(ident) => ident.value.clone(),
            ObjectNamePart::Function(f) => f.name.value.clone(),
        })
        .collect::<Vec<_>>()
        .join(".")
}

fn classify_statement(top: &Statement) -> ClassifiedStatement {
    let mut statement = ClassifiedStatement {
        kind: top_level_kind(top),
        kinds: Vec::new(),
        subkinds: Vec::new(),
        runs: Vec::new(),
        forbidden: None,
        tables: Vec::new(),
        functions: Vec::new(),
        unfiltered_write: false,
    };
    // Every statement inside (EXPLAIN's, a prepared body's) adds what it does.
    let _ = visit_statements(top, |s| {
        let kind = top_level_kind(s);
        statement.kinds.push(kind);
        statement.subkinds.extend(subkinds(s));
        match s {
            Statement::Insert(insert) => {
                if insert.replace_into {
                    // REPLACE deletes the rows whose keys the new ones take.
                    statement.kinds.push(K::Delete);
                }
                if matches!(insert.on, Some(OnInsert::DuplicateKeyUpdate(_))) {
                    statement.kinds.push(K::Update);
                }
            }
            Statement::Update(update) => {
                statement.unfiltered_write |= update.selection.is_none();
            }
            Statement::Delete(delete) => {
                statement.unfiltered_write |= delete.selection.is_none();
            }
            Statement::Set(set) => {
                let text = set.to_string().to_ascii_lowercase();
                if LEXER_SETTINGS.iter().any(|word| text.contains(word)) {
                    statement.forbidden = Some(
                        "it changes the character set or SQL mode the server reads statements \
                         with, which the gateway pins"
                            .into(),
                    );
                }
            }
            Statement::Execute { .. } => {
                // What a SQL-level prepared statement runs is not known here.
                statement.kinds.push(K::Other);
            }
            _ => {}
        }
        ControlFlow::<()>::Continue(())
    });
    let _ = visit_relations(top, |name| {
        statement.tables.push(object_name(name));
        ControlFlow::<()>::Continue(())
    });
    let mut called = Vec::new();
    let _ = visit_expressions(top, |expr| {
        if let Expr::Function(f) = expr {
            called.push(object_name(&f.name));
        }
        ControlFlow::<()>::Continue(())
    });
    for name in called {
        note_function(&mut statement, &name);
    }
    finish(statement)
}

fn top_level_kind(statement: &Statement) -> K {
    match statement {
        Statement::Query(_) => K::Select,
        Statement::Insert(_) => K::Insert,
        Statement::Update(_) => K::Update,
        Statement::Delete(_) => K::Delete,
        Statement::Merge(_) => K::Merge,
        Statement::Truncate(_) => K::Truncate,
        Statement::LoadData { .. } | Statement::Copy { .. } => K::Copy,
        Statement::Call(_) => K::Call,
        // A schema switch changes what later names mean: a session setting.
        Statement::Set(_) | Statement::Use(_) => K::Set,
        Statement::Explain { .. } => K::Explain,
        // DESCRIBE t / SHOW … read the catalog.
        Statement::ExplainTable { .. } => K::Show,
        Statement::Prepare { .. } => K::Prepare,
        Statement::Execute { .. } => K::Execute,
        Statement::Deallocate { .. } => K::Deallocate,
        Statement::Lock(_) | Statement::LockTables { .. } | Statement::UnlockTables => K::Lock,
        Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. }
        | Statement::Savepoint { .. }
        | Statement::ReleaseSavepoint { .. } => K::Transaction,
        Statement::Grant(_) | Statement::GrantRole(_) => K::Grant,
        Statement::Revoke(_) | Statement::RevokeRole(_) => K::Revoke,
        Statement::Analyze(_) => K::Analyze,
        Statement::Comment { .. } => K::Comment,
        Statement::RenameTable(_) => K::Alter,
        Statement::Declare { .. } => K::Declare,
        Statement::Fetch { .. } => K::Fetch,
        Statement::Close { .. } => K::Close,
        other => by_variant_name(other),
    }
}

/// CREATE …, ALTER …, DROP … and SHOW … statements by their family; anything else is OTHER.
fn by_variant_name(statement: &Statement) -> K {
    let debug = format!("{statement:?}");
    let name: String = debug
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    if name.starts_with("Create") {
        K::Create
    } else if name.starts_with("Alter") {
        K::Alter
    } else if name.starts_with("Drop") {
        K::Drop
    } else if name.starts_with("Show") {
        K::Show
    } else {
        K::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(sql: &str) -> Vec<Vec<K>> {
        match classify_mysql(sql) {
            Classification::Parsed(s) => s.into_iter().map(|s| s.kinds).collect(),
            Classification::Unparseable(e) => panic!("unparseable {sql}: {e}"),
        }
    }

    fn one(sql: &str) -> ClassifiedStatement {
        match classify_mysql(sql) {
            Classification::Parsed(mut s) if s.len() == 1 => s.remove(0),
            other => panic!("not one statement: {sql}: {other:?}"),
        }
    }

    #[test]
    fn plain_statements_have_the_postgres_kinds() {
        assert_eq!(kinds("select * from items"), vec![vec![K::Select]]);
        assert_eq!(
            kinds("INSERT INTO items VALUES (1, 'a')"),
            vec![vec![K::Insert]]
        );
        assert_eq!(
            kinds("update items set name = 'x' where id = 1"),
            vec![vec![K::Update]]
        );
        assert_eq!(
            kinds("DELETE FROM items WHERE id = 1"),
            vec![vec![K::Delete]]
        );
        assert_eq!(kinds("drop table items"), vec![vec![K::Drop]]);
        assert_eq!(kinds("create table t (id int)"), vec![vec![K::Create]]);
        assert_eq!(
            kinds("alter table t add column c int"),
            vec![vec![K::Alter]]
        );
        assert_eq!(kinds("truncate table items"), vec![vec![K::Truncate]]);
        assert_eq!(kinds("call p(1)"), vec![vec![K::Call]]);
        assert_eq!(kinds("set @a = 1"), vec![vec![K::Set]]);
        assert_eq!(kinds("use app"), vec![vec![K::Set]]);
        assert_eq!(kinds("show tables"), vec![vec![K::Show]]);
        assert_eq!(kinds("lock tables items read"), vec![vec![K::Lock]]);
        assert_eq!(kinds("unlock tables"), vec![vec![K::Lock]]);
        assert_eq!(kinds("begin"), vec![vec![K::Transaction]]);
        assert_eq!(kinds("commit"), vec![vec![K::Transaction]]);
        assert_eq!(
            kinds("select @@version_comment limit 1"),
            vec![vec![K::Select]]
        );
    }

    #[test]
    fn disguises_are_seen_through() {
        assert_eq!(kinds("/* x */ DeLeTe FROM items"), vec![vec![K::Delete]]);
        assert_eq!(
            kinds("select 1; drop table items"),
            vec![vec![K::Select], vec![K::Drop]]
        );
        assert_eq!(kinds("/*! DELETE FROM items */"), vec![vec![K::Delete]]);
        assert_eq!(
            kinds("select 1 /*!50001 ; delete from items */"),
            vec![vec![K::Select], vec![K::Delete]]
        );
        assert_eq!(kinds("select '/*! delete */'"), vec![vec![K::Select]]);
        assert!(matches!(
            classify_mysql("select 1 /*M! ; delete from items */"),
            Classification::Unparseable(_)
        ));
    }

    #[test]
    fn mysql_writes_are_named() {
        assert_eq!(
            kinds("REPLACE INTO items VALUES (1, 'a')"),
            vec![vec![K::Insert, K::Delete]]
        );
        assert_eq!(
            kinds("insert into items values (1,'a') on duplicate key update name = 'b'"),
            vec![vec![K::Insert, K::Update]]
        );
        assert_eq!(
            kinds("select * from items into outfile '/tmp/x'"),
            vec![vec![K::Select, K::Copy]]
        );
        assert_eq!(
            kinds("SELECT name FROM items INTO DUMPFILE '/tmp/x'"),
            vec![vec![K::Select, K::Copy]]
        );
        assert_eq!(
            kinds("load data local infile '/etc/passwd' into table items"),
            vec![vec![K::Copy]]
        );
        assert_eq!(kinds("handler items read first"), vec![vec![K::Select]]);
        assert_eq!(one("handler items open").tables, vec!["items"]);
        assert_eq!(
            kinds("select load_file('/etc/passwd')"),
            vec![vec![K::Select, K::Function]]
        );
        assert_eq!(kinds("do sleep(5)"), vec![vec![K::Do, K::Function]]);
        assert_eq!(
            kinds("explain delete from items"),
            vec![vec![K::Delete, K::Explain]]
        );
    }

    #[test]
    fn finer_kinds_have_the_postgres_names() {
        let sub = |sql: &str| one(sql).subkinds;
        for (sql, expected) in [
            ("drop table items", &["DROP TABLE"][..]),
            ("DROP TEMPORARY TABLE IF EXISTS a, b", &["DROP TABLE"]),
            ("drop view v", &["DROP VIEW"]),
            ("drop index i on items", &["DROP INDEX"]),
            ("drop database app", &["DROP DATABASE", "DROP SCHEMA"]),
            ("drop schema app", &["DROP DATABASE", "DROP SCHEMA"]),
            ("drop user bob", &["DROP ROLE"]),
            ("drop function f", &["DROP FUNCTION"]),
            ("drop procedure p", &["DROP PROCEDURE"]),
            ("drop trigger t", &["DROP TRIGGER"]),
            ("create table t (id int)", &["CREATE TABLE"]),
            ("create table t as select * from items", &["CREATE TABLE"]),
            ("create index i on items (name)", &["CREATE INDEX"]),
            ("create view v as select 1", &["CREATE VIEW"]),
            ("create database d", &["CREATE DATABASE", "CREATE SCHEMA"]),
            ("create user bob", &["CREATE ROLE"]),
            ("alter table items add column c int", &["ALTER TABLE"]),
            ("rename table items to things", &["ALTER TABLE"]),
            (
                "load data local infile '/tmp/x' into table items",
                &["COPY FROM"],
            ),
            (
                "load data infile '/tmp/x' into table items",
                &["COPY FILE", "COPY FROM", "COPY FROM FILE"],
            ),
            (
                "select * from items into outfile '/tmp/x'",
                &["COPY FILE", "COPY TO", "COPY TO FILE"],
            ),
            ("explain select 1", &[]),
            ("select 1", &[]),
        ] {
            assert_eq!(sub(sql), expected, "{sql}");
        }
        // Executable comments and multi-statements carry theirs.
        assert_eq!(
            match classify_mysql("select 1 /*! ; drop table items */") {
                Classification::Parsed(s) => s[1].subkinds.clone(),
                other => panic!("{other:?}"),
            },
            ["DROP TABLE"]
        );
    }

    #[test]
    fn derived_tables_and_ctes_are_named() {
        assert_eq!(
            derived_table_names("select x from (select ssn as x from users) AS T"),
            Some(vec!["t".to_string()])
        );
        assert_eq!(
            derived_table_names(
                "with c as (select ssn from users) select * from c join items i on true"
            ),
            Some(vec!["c".to_string()])
        );
        assert_eq!(
            derived_table_names("select 1 /*! , (select 2 from (select 3) d) */"),
            Some(vec!["d".to_string()])
        );
        assert_eq!(
            derived_table_names(
                "select j.a from json_table('[1]', '$[*]' columns (a int path '$')) as j"
            ),
            Some(vec!["j".to_string()])
        );
        assert_eq!(derived_table_names("select ssn from users u"), Some(vec![]));
        assert_eq!(derived_table_names("selec 1"), None);
    }

    #[test]
    fn tables_functions_and_unfiltered_writes() {
        let s = one("delete from app.items");
        assert!(s.unfiltered_write);
        assert_eq!(s.tables, vec!["app.items"]);
        let s = one("update `items` set name = upper(name) where id = 2");
        assert!(!s.unfiltered_write);
        assert_eq!(s.tables, vec!["items"]);
        assert_eq!(s.functions, vec!["upper"]);
    }

    #[test]
    fn settings_that_change_reading_are_forbidden() {
        assert!(one("set names gbk").forbidden.is_some());
        assert!(one("SET sql_mode = 'ANSI_QUOTES'").forbidden.is_some());
        assert!(one("set @@session.character_set_client = 'gbk'")
            .forbidden
            .is_some());
        assert!(one("set @x = 1").forbidden.is_none());
    }

    #[test]
    fn garbage_is_unparseable() {
        assert!(matches!(
            classify_mysql("selec 1 frm"),
            Classification::Unparseable(_)
        ));
        assert_eq!(classify_mysql(""), Classification::Parsed(Vec::new()));
    }
}
