//! What a SQL string does, from PostgreSQL's own parser (`pg_query`): the kind of each
//! statement plus every data-modifying statement nested anywhere inside it (CTEs, subqueries,
//! EXPLAIN, COPY (…), CREATE TABLE AS, …). Comments and case cannot disguise anything because
//! nothing here looks at the text. Results are cached by exact text.

use pg_query::{NodeEnum, NodeRef};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

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
    /// SET ROLE / SET SESSION AUTHORIZATION (and their RESET, and `set_config('role', …)`):
    /// a change of privileges, never covered by `SET`.
    SetRole,
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
    /// Calls a function with side effects or dangerous reach (see [`DANGEROUS_FUNCTIONS`]).
    Function,
    /// Calls a user-defined function the upstream declares VOLATILE (it may write), or one
    /// whose volatility could not be learned. Added by the adapter that looks it up (see
    /// [`crate::functions`]); the classifier alone never knows.
    VolatileFunction,
    Other,
}

impl StatementKind {
    pub const ALL: [StatementKind; 36] = [
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
        StatementKind::SetRole,
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
        StatementKind::Function,
        StatementKind::VolatileFunction,
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
            StatementKind::SetRole => "SET ROLE",
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
            StatementKind::Function => "FUNCTION",
            StatementKind::VolatileFunction => "VOLATILE FUNCTION",
            StatementKind::Other => "OTHER",
        }
    }

    /// Parses a kind name as written in a rule's `match` (case-insensitive; runs of spaces
    /// count as one).
    pub fn from_name(name: &str) -> Option<StatementKind> {
        let upper = normalize_name(name);
        StatementKind::ALL.into_iter().find(|k| k.name() == upper)
    }

    /// The finer kinds a statement of this kind can have (`DROP TABLE`, `COPY TO PROGRAM`),
    /// without the kind's own name; empty for kinds that have none.
    pub fn subkind_names(self) -> Vec<&'static str> {
        match self {
            StatementKind::Copy => COPY_SUBKINDS.to_vec(),
            StatementKind::Create | StatementKind::Alter | StatementKind::Drop => {
                let mut names: Vec<&'static str> = OBJECT_TYPES
                    .iter()
                    .copied()
                    .chain(["OWNED", "SYSTEM"])
                    .filter(|n| !n.is_empty())
                    .collect();
                names.sort();
                names.dedup();
                names
            }
            _ => Vec::new(),
        }
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

/// Upper case, single spaces: how kind names are compared.
pub fn normalize_name(name: &str) -> String {
    name.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_ascii_uppercase()
}

/// What a COPY does, beyond its kind: the direction (`TO` the client, `FROM` the client), and
/// whether a server file or a server program is at the other end.
const COPY_SUBKINDS: [&str; 8] = [
    "TO",
    "FROM",
    "TO FILE",
    "FROM FILE",
    "FILE",
    "TO PROGRAM",
    "FROM PROGRAM",
    "PROGRAM",
];

/// The object type names of CREATE, ALTER and DROP, indexed by pg_query's `ObjectType`.
/// Parts of an object (a column, a constraint, an operator family member) are named by the
/// object they belong to.
const OBJECT_TYPES: [&str; 53] = [
    "",
    "ACCESS METHOD",
    "AGGREGATE",
    "OPERATOR FAMILY",
    "OPERATOR FAMILY",
    "TYPE",
    "CAST",
    "COLUMN",
    "COLLATION",
    "CONVERSION",
    "DATABASE",
    "DEFAULT",
    "DEFAULT PRIVILEGES",
    "DOMAIN",
    "DOMAIN",
    "EVENT TRIGGER",
    "EXTENSION",
    "FOREIGN DATA WRAPPER",
    "SERVER",
    "FOREIGN TABLE",
    "FUNCTION",
    "INDEX",
    "LANGUAGE",
    "LARGE OBJECT",
    "MATERIALIZED VIEW",
    "OPERATOR CLASS",
    "OPERATOR",
    "OPERATOR FAMILY",
    "PARAMETER",
    "POLICY",
    "PROCEDURE",
    "PUBLICATION",
    "PUBLICATION",
    "PUBLICATION",
    "ROLE",
    "ROUTINE",
    "RULE",
    "SCHEMA",
    "SEQUENCE",
    "SUBSCRIPTION",
    "STATISTICS",
    "CONSTRAINT",
    "TABLE",
    "TABLESPACE",
    "TRANSFORM",
    "TRIGGER",
    "TEXT SEARCH CONFIGURATION",
    "TEXT SEARCH DICTIONARY",
    "TEXT SEARCH PARSER",
    "TEXT SEARCH TEMPLATE",
    "TYPE",
    "USER MAPPING",
    "VIEW",
];

fn object_type_name(object_type: i32) -> Option<&'static str> {
    usize::try_from(object_type)
        .ok()
        .and_then(|i| OBJECT_TYPES.get(i))
        .copied()
        .filter(|name| !name.is_empty())
}

/// Something defined earlier in the session that a statement runs by name; what it does is
/// only known from the statement that defined it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NamedObject {
    /// A prepared statement (`EXECUTE name`).
    Statement(String),
    /// A cursor (`FETCH` / `MOVE … FROM name`).
    Portal(String),
}

/// One statement of a SQL string: its own kind, and every kind that runs as part of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassifiedStatement {
    pub kind: StatementKind,
    /// `kind` plus any data-modifying statements nested inside (sorted, unique).
    pub kinds: Vec<StatementKind>,
    /// Finer names of kinds in `kinds`, each `KIND DETAIL` (`DROP TABLE`, `CREATE EXTENSION`,
    /// `COPY TO PROGRAM`, `COPY PROGRAM`), sorted and unique. A rule that names one matches
    /// only statements that have it; a rule that names the kind alone matches them all.
    #[serde(default)]
    pub subkinds: Vec<String>,
    /// Prepared statements and portals run by name anywhere inside; their kinds are not in
    /// `kinds` and must be looked up by the caller.
    #[serde(default)]
    pub runs: Vec<NamedObject>,
    /// Why the statement must never be forwarded: it could make the server read later SQL
    /// text differently from this parser, which would void every later classification.
    #[serde(default)]
    pub forbidden: Option<String>,
    /// Relations referenced anywhere inside, as written (`schema.table` or `table`), sorted and
    /// unique. A CTE reference is listed under its name too: telling it from a table of the same
    /// name needs scoping rules, and listing too much only makes a `tables` rule match more.
    #[serde(default)]
    pub tables: Vec<String>,
    /// Functions called anywhere inside, as written (`schema.name` or `name`), sorted and unique.
    #[serde(default)]
    pub functions: Vec<String>,
    /// An UPDATE or DELETE without a WHERE clause runs anywhere inside: it touches every row.
    #[serde(default)]
    pub unfiltered_write: bool,
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
    /// Whether any statement is of `kind`.
    pub fn has_kind(&self, kind: StatementKind) -> bool {
        match self {
            Classification::Parsed(statements) => {
                statements.iter().any(|s| s.kinds.contains(&kind))
            }
            Classification::Unparseable(_) => false,
        }
    }

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

/// Longest SQL text classified. Parsing recurses as deep as the text nests, and the gateway's
/// threads have stacks sized for this much (see the PostgreSQL adapter); longer text is refused.
pub const MAX_CLASSIFIED_LEN: usize = 256 * 1024;

/// Classifies SQL with PostgreSQL's parser.
pub fn classify(sql: &str) -> Classification {
    if sql.len() > MAX_CLASSIFIED_LEN {
        return Classification::Unparseable(format!(
            "the statement is {} bytes long; the gateway classifies statements up to {} bytes",
            sql.len(),
            MAX_CLASSIFIED_LEN
        ));
    }
    let parsed = match pg_query::parse(sql) {
        Ok(parsed) => parsed,
        Err(e) => return Classification::Unparseable(e.to_string()),
    };
    let mut statements = Vec::with_capacity(parsed.protobuf.stmts.len());
    for raw in &parsed.protobuf.stmts {
        let Some(node) = raw.stmt.as_ref().and_then(|n| n.node.as_ref()) else {
            continue;
        };
        statements.push(classify_statement(node, sql));
    }
    Classification::Parsed(statements)
}

/// Classifies one top-level statement. EXPLAIN ANALYZE runs its statement, so it is that
/// statement; EXPLAIN alone only plans it (running nothing), so it is EXPLAIN, with the
/// relations it names still listed for `tables` rules.
fn classify_statement(node: &NodeEnum, sql: &str) -> ClassifiedStatement {
    if let NodeEnum::ExplainStmt(explain) = node {
        if let Some(inner) = explain.query.as_ref().and_then(|q| q.node.as_ref()) {
            let mut statement = classify_statement(inner, sql);
            if !explain_analyzes(&explain.options) {
                statement.kind = StatementKind::Explain;
                statement.kinds = vec![StatementKind::Explain];
                statement.subkinds.clear();
                statement.runs.clear();
                statement.functions.clear();
                statement.unfiltered_write = false;
            }
            return statement;
        }
    }
    let kind = top_level_kind(node);
    let mut walk = Walk {
        kinds: vec![kind],
        subkinds: top_level_subkinds(node),
        runs: Vec::new(),
        forbidden: None,
        tables: Vec::new(),
        functions: Vec::new(),
        unfiltered_write: false,
    };
    if !needs_walk(node, sql) {
        walk.visit_plain(node);
    } else {
        match serde_json::to_value(node) {
            Ok(tree) => walk.visit(&tree),
            Err(_) => {
                // Cannot look inside: treat it as something no rule can name, and since a
                // hidden set_config cannot be ruled out, refuse it outright.
                walk.kinds.push(StatementKind::Other);
                walk.forbid("its parse tree could not be inspected".to_string());
            }
        }
    }
    if let NodeEnum::DropStmt(drop) = node {
        walk.dropped_relations(drop);
    }
    let Walk {
        mut kinds,
        mut subkinds,
        runs,
        forbidden,
        mut tables,
        mut functions,
        unfiltered_write,
    } = walk;
    for list in [&mut subkinds, &mut tables, &mut functions] {
        list.sort();
        list.dedup();
    }
    kinds.sort();
    kinds.dedup();
    ClassifiedStatement {
        kind,
        kinds,
        subkinds,
        runs,
        forbidden,
        tables,
        functions,
        unfiltered_write,
    }
}

/// Whether EXPLAIN's options turn ANALYZE on. PostgreSQL reads a bare `ANALYZE` as true and
/// accepts only true/false/on/off or a number as a value; anything else is taken as true, so a
/// spelling the gateway does not know errs towards "it runs".
fn explain_analyzes(options: &[pg_query::Node]) -> bool {
    options.iter().any(|option| {
        let Some(NodeEnum::DefElem(def)) = option.node.as_ref() else {
            return false;
        };
        if !def.defname.eq_ignore_ascii_case("analyze") {
            return false;
        }
        let off = match def.arg.as_ref().and_then(|a| a.node.as_ref()) {
            None => false,
            Some(NodeEnum::Boolean(b)) => !b.boolval,
            Some(NodeEnum::Integer(i)) => i.ival == 0,
            Some(NodeEnum::String(s)) => {
                s.sval.eq_ignore_ascii_case("false") || s.sval.eq_ignore_ascii_case("off")
            }
            Some(_) => false,
        };
        !off
    })
}

/// The finer kinds of a top-level statement: `KIND DETAIL` names (see
/// [`ClassifiedStatement::subkinds`]).
fn top_level_subkinds(node: &NodeEnum) -> Vec<String> {
    use pg_query::protobuf::ObjectType;
    let named = |kind: StatementKind, detail: &str| format!("{} {detail}", kind.name());
    if let NodeEnum::CopyStmt(copy) = node {
        let direction = if copy.is_from { "FROM" } else { "TO" };
        let end = if copy.is_program {
            Some("PROGRAM")
        } else if !copy.filename.is_empty() {
            Some("FILE")
        } else {
            None
        };
        let mut names = vec![named(StatementKind::Copy, direction)];
        if let Some(end) = end {
            names.push(named(StatementKind::Copy, &format!("{direction} {end}")));
            names.push(named(StatementKind::Copy, end));
        }
        return names;
    }
    let object = |t: ObjectType| t as i32;
    let detail: Option<&str> = match node {
        NodeEnum::CreateStmt(_) => object_type_name(object(ObjectType::ObjectTable)),
        NodeEnum::SelectStmt(s) if s.into_clause.is_some() => {
            object_type_name(object(ObjectType::ObjectTable))
        }
        NodeEnum::CreateTableAsStmt(c) => object_type_name(c.objtype),
        NodeEnum::IndexStmt(_) => object_type_name(object(ObjectType::ObjectIndex)),
        NodeEnum::ViewStmt(_) => object_type_name(object(ObjectType::ObjectView)),
        NodeEnum::CreateFunctionStmt(f) if f.is_procedure => {
            object_type_name(object(ObjectType::ObjectProcedure))
        }
        NodeEnum::CreateFunctionStmt(_) => object_type_name(object(ObjectType::ObjectFunction)),
        NodeEnum::CreateRoleStmt(_)
        | NodeEnum::AlterRoleStmt(_)
        | NodeEnum::AlterRoleSetStmt(_)
        | NodeEnum::DropRoleStmt(_) => Some("ROLE"),
        NodeEnum::CreateExtensionStmt(_)
        | NodeEnum::AlterExtensionStmt(_)
        | NodeEnum::AlterExtensionContentsStmt(_) => Some("EXTENSION"),
        NodeEnum::CreateSchemaStmt(_) => Some("SCHEMA"),
        NodeEnum::CreateSeqStmt(_) | NodeEnum::AlterSeqStmt(_) => Some("SEQUENCE"),
        NodeEnum::CreateTrigStmt(_) => Some("TRIGGER"),
        NodeEnum::RuleStmt(_) => Some("RULE"),
        NodeEnum::CreatedbStmt(_)
        | NodeEnum::AlterDatabaseStmt(_)
        | NodeEnum::AlterDatabaseSetStmt(_)
        | NodeEnum::AlterDatabaseRefreshCollStmt(_)
        | NodeEnum::DropdbStmt(_) => Some("DATABASE"),
        NodeEnum::DefineStmt(d) => object_type_name(d.kind),
        NodeEnum::CompositeTypeStmt(_)
        | NodeEnum::CreateEnumStmt(_)
        | NodeEnum::CreateRangeStmt(_)
        | NodeEnum::AlterEnumStmt(_)
        | NodeEnum::AlterTypeStmt(_) => Some("TYPE"),
        NodeEnum::CreateDomainStmt(_) | NodeEnum::AlterDomainStmt(_) => Some("DOMAIN"),
        NodeEnum::CreatePolicyStmt(_) | NodeEnum::AlterPolicyStmt(_) => Some("POLICY"),
        NodeEnum::CreateEventTrigStmt(_) | NodeEnum::AlterEventTrigStmt(_) => Some("EVENT TRIGGER"),
        NodeEnum::CreateForeignServerStmt(_) | NodeEnum::AlterForeignServerStmt(_) => {
            Some("SERVER")
        }
        NodeEnum::CreateFdwStmt(_) | NodeEnum::AlterFdwStmt(_) => Some("FOREIGN DATA WRAPPER"),
        NodeEnum::CreateForeignTableStmt(_) => Some("FOREIGN TABLE"),
        NodeEnum::CreatePlangStmt(_) => Some("LANGUAGE"),
        NodeEnum::CreatePublicationStmt(_) | NodeEnum::AlterPublicationStmt(_) => {
            Some("PUBLICATION")
        }
        NodeEnum::CreateSubscriptionStmt(_)
        | NodeEnum::AlterSubscriptionStmt(_)
        | NodeEnum::DropSubscriptionStmt(_) => Some("SUBSCRIPTION"),
        NodeEnum::CreateTableSpaceStmt(_)
        | NodeEnum::AlterTableSpaceOptionsStmt(_)
        | NodeEnum::AlterTableMoveAllStmt(_)
        | NodeEnum::DropTableSpaceStmt(_) => Some("TABLESPACE"),
        NodeEnum::CreateUserMappingStmt(_)
        | NodeEnum::AlterUserMappingStmt(_)
        | NodeEnum::DropUserMappingStmt(_) => Some("USER MAPPING"),
        NodeEnum::CreateCastStmt(_) => Some("CAST"),
        NodeEnum::CreateConversionStmt(_) => Some("CONVERSION"),
        NodeEnum::CreateOpClassStmt(_) => Some("OPERATOR CLASS"),
        NodeEnum::CreateOpFamilyStmt(_) | NodeEnum::AlterOpFamilyStmt(_) => Some("OPERATOR FAMILY"),
        NodeEnum::AlterOperatorStmt(_) => Some("OPERATOR"),
        NodeEnum::CreateStatsStmt(_) | NodeEnum::AlterStatsStmt(_) => Some("STATISTICS"),
        NodeEnum::CreateTransformStmt(_) => Some("TRANSFORM"),
        NodeEnum::CreateAmStmt(_) => Some("ACCESS METHOD"),
        NodeEnum::AlterCollationStmt(_) => Some("COLLATION"),
        NodeEnum::AlterTsdictionaryStmt(_) => Some("TEXT SEARCH DICTIONARY"),
        NodeEnum::AlterTsconfigurationStmt(_) => Some("TEXT SEARCH CONFIGURATION"),
        NodeEnum::AlterDefaultPrivilegesStmt(_) => Some("DEFAULT PRIVILEGES"),
        NodeEnum::AlterSystemStmt(_) => Some("SYSTEM"),
        NodeEnum::AlterTableStmt(a) => object_type_name(a.objtype),
        NodeEnum::AlterFunctionStmt(a) => object_type_name(a.objtype),
        NodeEnum::AlterObjectSchemaStmt(a) => object_type_name(a.object_type),
        NodeEnum::AlterOwnerStmt(a) => object_type_name(a.object_type),
        NodeEnum::AlterObjectDependsStmt(a) => object_type_name(a.object_type),
        // Renaming a column or a constraint alters the relation that holds it.
        NodeEnum::RenameStmt(r)
            if r.rename_type == object(ObjectType::ObjectColumn)
                || r.rename_type == object(ObjectType::ObjectTabconstraint) =>
        {
            object_type_name(r.relation_type)
        }
        NodeEnum::RenameStmt(r) => object_type_name(r.rename_type),
        NodeEnum::DropStmt(d) => object_type_name(d.remove_type),
        NodeEnum::DropOwnedStmt(_) => Some("OWNED"),
        _ => None,
    };
    let kind = top_level_kind(node);
    match detail {
        Some(detail)
            if matches!(
                kind,
                StatementKind::Create | StatementKind::Alter | StatementKind::Drop
            ) =>
        {
            vec![named(kind, detail)]
        }
        _ => Vec::new(),
    }
}

/// Whether the parse tree must be walked. Every statement kind other than SELECT, INSERT,
/// UPDATE, DELETE and MERGE (EXPLAIN, COPY, PREPARE, SET, CREATE …) always is. Inside those
/// five the walk can only find something when the text shows it:
/// - a nested statement needs a WITH clause, i.e. the letters `with`;
/// - a function call (set_config, a dangerous function, any name a `functions` rule may
///   match) needs a `(`, whatever its name's spelling;
/// - a write to `pg_settings` (whose update rule calls set_config) needs those letters,
///   unless the identifier is spelled with Unicode escapes (`U&"…"`), hence the check for `u&`;
/// - ON CONFLICT DO UPDATE is read from the top-level node itself;
/// - relations and an UPDATE/DELETE without WHERE are found by [`Walk::visit_plain`].
///
/// EXECUTE and FETCH cannot appear inside these five at all; SELECT … INTO is walked so that
/// its new table is listed the same way on both paths.
fn needs_walk(node: &NodeEnum, sql: &str) -> bool {
    let plain_dml = match node {
        NodeEnum::InsertStmt(insert) => insert.on_conflict_clause.is_none(),
        NodeEnum::SelectStmt(select) => select.into_clause.is_none(),
        NodeEnum::UpdateStmt(_) | NodeEnum::DeleteStmt(_) | NodeEnum::MergeStmt(_) => true,
        _ => false,
    };
    !plain_dml
        || [
            b"with".as_slice(),
            b"(".as_slice(),
            b"pg_settings".as_slice(),
            b"u&".as_slice(),
        ]
        .iter()
        .any(|needle| contains_ignore_ascii_case(sql.as_bytes(), needle))
}

fn contains_ignore_ascii_case(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

/// Settings that change how the server tokenizes SQL text: the encoding decides which bytes
/// belong to a multibyte character (and so where a quote ends), and
/// standard_conforming_strings decides whether backslashes escape quotes in `'…'`.
const LEXER_SETTINGS: [&str; 2] = ["client_encoding", "standard_conforming_strings"];

fn is_lexer_setting(name: &str) -> bool {
    // GUC names are case-insensitive in the server.
    LEXER_SETTINGS.iter().any(|s| s.eq_ignore_ascii_case(name))
}

/// Settings that change whose privileges the session runs with.
fn is_role_setting(name: &str) -> bool {
    name.eq_ignore_ascii_case("role") || name.eq_ignore_ascii_case("session_authorization")
}

/// Functions that are not plain reads, as globs over their own name (`*` any run of
/// characters): they signal or stop backends, read or list server files, create, write or move
/// large objects, reach other servers, run SQL text the gateway cannot see (`query_to_xml`,
/// `ts_stat`), change server state (configuration, WAL, replication, statistics), or advance
/// sequences. A call to one adds [`StatementKind::Function`]; a policy can add to the list or
/// take built-in entries out (see [`crate::policy::FunctionList`]). `set_config` is not here:
/// it is a SET (or SET ROLE), judged by its setting name.
pub const DANGEROUS_FUNCTIONS: &[&str] = &[
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_read_file",
    "pg_read_binary_file",
    "pg_ls_*",
    "pg_stat_file",
    "pg_file_*",
    "lo_import",
    "lo_export",
    "lo_unlink",
    "lo_create",
    "lo_creat",
    "lo_from_bytea",
    "lo_put",
    "lowrite",
    "lo_truncate",
    "lo_truncate64",
    "dblink*",
    "query_to_xml*",
    "cursor_to_xml*",
    "ts_stat",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_promote",
    "pg_switch_wal",
    "pg_create_restore_point",
    "pg_backup_*",
    "pg_start_backup",
    "pg_stop_backup",
    "pg_wal_replay_*",
    "pg_log_backend_memory_contexts",
    "pg_stat_reset*",
    "pg_*replication_slot*",
    "pg_replication_origin_*",
    "pg_logical_*",
    "pg_import_system_collations",
    "nextval",
    "setval",
];

/// Whether a function's own name (without schema) is on the built-in dangerous list. Names
/// are compared ignoring ASCII case, so a quoted `"PG_READ_FILE"` errs on the side of caution.
pub fn is_dangerous_function(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    DANGEROUS_FUNCTIONS
        .iter()
        .any(|glob| crate::policy::glob_match(glob, &name))
}

/// `schema.name` or `name`, as a statement names a relation or function.
fn qualified(schema: &str, name: &str) -> String {
    if schema.is_empty() {
        name.to_string()
    } else {
        format!("{schema}.{name}")
    }
}

/// What a walk of the serialized parse tree found.
struct Walk {
    kinds: Vec<StatementKind>,
    subkinds: Vec<String>,
    runs: Vec<NamedObject>,
    forbidden: Option<String>,
    tables: Vec<String>,
    functions: Vec<String>,
    unfiltered_write: bool,
}

impl Walk {
    /// DROP names its relations as name lists, not as the range variables other statements
    /// use, so they are listed here for `tables` rules.
    fn dropped_relations(&mut self, drop: &pg_query::protobuf::DropStmt) {
        use pg_query::protobuf::ObjectType;
        let relation_types = [
            ObjectType::ObjectTable,
            ObjectType::ObjectView,
            ObjectType::ObjectMatview,
            ObjectType::ObjectForeignTable,
            ObjectType::ObjectSequence,
            ObjectType::ObjectIndex,
        ];
        if !relation_types.iter().any(|t| *t as i32 == drop.remove_type) {
            return;
        }
        for object in &drop.objects {
            let Some(NodeEnum::List(list)) = object.node.as_ref() else {
                continue;
            };
            let parts: Vec<&str> = list
                .items
                .iter()
                .filter_map(|item| match item.node.as_ref() {
                    Some(NodeEnum::String(s)) => Some(s.sval.as_str()),
                    _ => None,
                })
                .collect();
            // `db.schema.name` names the current database; the last two parts say the rest.
            let start = parts.len().saturating_sub(2);
            if !parts.is_empty() {
                self.tables.push(parts[start..].join("."));
            }
        }
    }

    fn forbid(&mut self, reason: String) {
        // The first reason is enough to refuse; keep it stable.
        if self.forbidden.is_none() {
            self.forbidden = Some(reason);
        }
    }

    /// The fast path's share of the walk, for a statement [`needs_walk`] let through: pg_query's
    /// own traversal reaches every relation and call such a statement can hold (FROM, JOIN,
    /// USING, set operations, INSERT … SELECT, MERGE … USING), and without WITH the only
    /// UPDATE or DELETE is the statement itself.
    fn visit_plain(&mut self, node: &NodeEnum) {
        self.unfiltered_write = match node {
            NodeEnum::UpdateStmt(update) => update.where_clause.is_none(),
            NodeEnum::DeleteStmt(delete) => delete.where_clause.is_none(),
            _ => false,
        };
        for (child, ..) in node.nodes() {
            match child {
                NodeRef::RangeVar(range) => {
                    self.tables
                        .push(qualified(&range.schemaname, &range.relname));
                }
                NodeRef::FuncCall(call) => {
                    let parts: Vec<&str> = call
                        .funcname
                        .iter()
                        .filter_map(|part| match part.node.as_ref() {
                            Some(NodeEnum::String(s)) => Some(s.sval.as_str()),
                            _ => None,
                        })
                        .collect();
                    self.call(&parts);
                }
                _ => {}
            }
        }
    }

    /// Records a function call by its name parts (`[schema,] name`).
    fn call(&mut self, parts: &[&str]) {
        let Some(name) = parts.last() else {
            return;
        };
        if is_dangerous_function(name) {
            self.kinds.push(StatementKind::Function);
        }
        // pg_notify is NOTIFY by another name.
        if name.eq_ignore_ascii_case("pg_notify") {
            self.kinds.push(StatementKind::Notify);
        }
        self.functions.push(parts.join("."));
    }

    fn run(&mut self, object: NamedObject) {
        if !self.runs.contains(&object) {
            self.runs.push(object);
        }
    }

    /// Walks the whole serialized parse tree. Node variants appear as object keys
    /// (`{"DeleteStmt": {…}}`), literal text only as string values, so no literal can fake a
    /// node.
    fn visit(&mut self, value: &serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                // Found by shape rather than by a `{"RangeVar": …}` wrapper, because most
                // relations sit in typed fields (`relation`, `rel`, `view`) that have none.
                if let (Some(relname), Some(_)) = (
                    map.get("relname").and_then(|v| v.as_str()),
                    map.get("relpersistence"),
                ) {
                    let schema = map
                        .get("schemaname")
                        .and_then(|v| v.as_str())
                        .unwrap_or_default();
                    self.tables.push(qualified(schema, relname));
                }
                // Likewise a call: CALL keeps its FuncCall in a typed `funccall` field.
                if map.contains_key("funcname") && map.contains_key("agg_star") {
                    self.visit_func_call(value);
                }
                for (key, child) in map {
                    self.visit_key(key, child);
                    self.visit(child);
                }
            }
            serde_json::Value::Array(items) => {
                for item in items {
                    self.visit(item);
                }
            }
            _ => {}
        }
    }

    fn visit_key(&mut self, key: &str, node: &serde_json::Value) {
        use StatementKind as K;
        if let Some(kind) = StatementKind::of_node_name(key) {
            if kind != K::Select {
                self.kinds.push(kind);
            }
        }
        if matches!(key, "UpdateStmt" | "DeleteStmt") && node["where_clause"].is_null() {
            self.unfiltered_write = true;
        }
        match key {
            // SELECT … INTO creates a table, also under EXPLAIN ANALYZE.
            "SelectStmt" if !node["into_clause"].is_null() => {
                self.kinds.push(K::Create);
                self.subkinds.push("CREATE TABLE".to_string());
            }
            "CreateTableAsStmt" => {
                self.kinds.push(K::Create);
                let objtype = node["objtype"].as_i64().and_then(|t| i32::try_from(t).ok());
                if let Some(name) = objtype.and_then(object_type_name) {
                    self.subkinds.push(format!("CREATE {name}"));
                }
            }
            "ExecuteStmt" => {
                self.kinds.push(K::Execute);
                let name = node["name"].as_str().unwrap_or_default();
                self.run(NamedObject::Statement(name.to_string()));
            }
            "FetchStmt" => {
                // MOVE runs the cursor's query just like FETCH does.
                let name = node["portalname"].as_str().unwrap_or_default();
                self.run(NamedObject::Portal(name.to_string()));
            }
            "on_conflict_clause"
                if node["action"].as_i64()
                    == Some(pg_query::protobuf::OnConflictAction::OnconflictUpdate as i64) =>
            {
                self.kinds.push(K::Update);
            }
            "UpdateStmt" | "InsertStmt" | "MergeStmt" => {
                let relname = node["relation"]["relname"].as_str().unwrap_or_default();
                if relname.eq_ignore_ascii_case("pg_settings") {
                    self.forbid(
                        "writes to pg_settings, whose update rule calls set_config".to_string(),
                    );
                }
            }
            "VariableSetStmt" => self.visit_variable_set(node),
            "AlterSystemStmt" => {
                self.forbid("ALTER SYSTEM changes server settings".to_string());
            }
            "DiscardStmt"
                if node["target"].as_i64()
                    == Some(pg_query::protobuf::DiscardMode::DiscardAll as i64) =>
            {
                self.forbid(
                    "DISCARD ALL runs RESET ALL, which resets client_encoding and \
                     standard_conforming_strings"
                        .to_string(),
                );
            }
            _ => {}
        }
    }

    fn visit_variable_set(&mut self, node: &serde_json::Value) {
        let reset_all =
            node["kind"].as_i64() == Some(pg_query::protobuf::VariableSetKind::VarResetAll as i64);
        let name = node["name"].as_str().unwrap_or_default();
        if is_role_setting(name) {
            self.kinds.push(StatementKind::SetRole);
        }
        if reset_all {
            self.forbid(
                "RESET ALL resets client_encoding and standard_conforming_strings".to_string(),
            );
        } else if is_lexer_setting(name) {
            self.forbid(format!(
                "changing {} would make the server read SQL text differently",
                name.to_ascii_lowercase()
            ));
        }
    }

    fn visit_func_call(&mut self, node: &serde_json::Value) {
        // Match the last name part so any schema qualification (pg_catalog.set_config, a
        // quoted or Unicode-escaped spelling) is caught; quoted case variants are matched too,
        // erring on the side of refusing.
        let parts: Vec<&str> = node["funcname"]
            .as_array()
            .map(|parts| {
                parts
                    .iter()
                    .filter_map(|part| part["node"]["String"]["sval"].as_str())
                    .collect()
            })
            .unwrap_or_default();
        self.call(&parts);
        let Some(last_name) = parts.last() else {
            return;
        };
        if !last_name.eq_ignore_ascii_case("set_config") {
            return;
        }
        // Only a plain string constant proves which setting is changed; parameters,
        // expressions, casts and named arguments could all name a lexer setting.
        let setting = node["args"]
            .as_array()
            .and_then(|args| args.first())
            .map(|arg| &arg["node"]["AConst"])
            .filter(|constant| constant["isnull"].as_bool() != Some(true))
            .and_then(|constant| constant["val"]["Sval"]["sval"].as_str());
        self.kinds.push(match setting {
            Some(name) if is_role_setting(name) => StatementKind::SetRole,
            _ => StatementKind::Set,
        });
        match setting {
            Some(name) if !is_lexer_setting(name) => {}
            Some(name) => self.forbid(format!(
                "set_config of {} would make the server read SQL text differently",
                name.to_ascii_lowercase()
            )),
            None => self
                .forbid("set_config with a setting name that is not a string constant".to_string()),
        }
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
        NodeEnum::VariableSetStmt(v) if is_role_setting(&v.name) => K::SetRole,
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
        NodeEnum::CreateStmt(_)
        | NodeEnum::CreateAmStmt(_)
        | NodeEnum::CreateCastStmt(_)
        | NodeEnum::CreateConversionStmt(_)
        | NodeEnum::CreateDomainStmt(_)
        | NodeEnum::CreateEnumStmt(_)
        | NodeEnum::CreateEventTrigStmt(_)
        | NodeEnum::CreateExtensionStmt(_)
        | NodeEnum::CreateFdwStmt(_)
        | NodeEnum::CreateForeignServerStmt(_)
        | NodeEnum::CreateForeignTableStmt(_)
        | NodeEnum::CreateFunctionStmt(_)
        | NodeEnum::CreateOpClassStmt(_)
        | NodeEnum::CreateOpFamilyStmt(_)
        | NodeEnum::CreatePlangStmt(_)
        | NodeEnum::CreatePolicyStmt(_)
        | NodeEnum::CreatePublicationStmt(_)
        | NodeEnum::CreateRangeStmt(_)
        | NodeEnum::CreateRoleStmt(_)
        | NodeEnum::CreateSchemaStmt(_)
        | NodeEnum::CreateSeqStmt(_)
        | NodeEnum::CreateStatsStmt(_)
        | NodeEnum::CreateSubscriptionStmt(_)
        | NodeEnum::CreateTableAsStmt(_)
        | NodeEnum::CreateTableSpaceStmt(_)
        | NodeEnum::CreateTransformStmt(_)
        | NodeEnum::CreateTrigStmt(_)
        | NodeEnum::CreateUserMappingStmt(_)
        | NodeEnum::CreatedbStmt(_)
        | NodeEnum::IndexStmt(_)
        | NodeEnum::ViewStmt(_)
        | NodeEnum::DefineStmt(_)
        | NodeEnum::RuleStmt(_)
        | NodeEnum::CompositeTypeStmt(_) => K::Create,
        NodeEnum::AlterCollationStmt(_)
        | NodeEnum::AlterDatabaseRefreshCollStmt(_)
        | NodeEnum::AlterDatabaseSetStmt(_)
        | NodeEnum::AlterDatabaseStmt(_)
        | NodeEnum::AlterDefaultPrivilegesStmt(_)
        | NodeEnum::AlterDomainStmt(_)
        | NodeEnum::AlterEnumStmt(_)
        | NodeEnum::AlterEventTrigStmt(_)
        | NodeEnum::AlterExtensionContentsStmt(_)
        | NodeEnum::AlterExtensionStmt(_)
        | NodeEnum::AlterFdwStmt(_)
        | NodeEnum::AlterForeignServerStmt(_)
        | NodeEnum::AlterFunctionStmt(_)
        | NodeEnum::AlterObjectDependsStmt(_)
        | NodeEnum::AlterObjectSchemaStmt(_)
        | NodeEnum::AlterOpFamilyStmt(_)
        | NodeEnum::AlterOperatorStmt(_)
        | NodeEnum::AlterOwnerStmt(_)
        | NodeEnum::AlterPolicyStmt(_)
        | NodeEnum::AlterPublicationStmt(_)
        | NodeEnum::AlterRoleSetStmt(_)
        | NodeEnum::AlterRoleStmt(_)
        | NodeEnum::AlterSeqStmt(_)
        | NodeEnum::AlterStatsStmt(_)
        | NodeEnum::AlterSubscriptionStmt(_)
        | NodeEnum::AlterSystemStmt(_)
        | NodeEnum::AlterTableMoveAllStmt(_)
        | NodeEnum::AlterTableSpaceOptionsStmt(_)
        | NodeEnum::AlterTableStmt(_)
        | NodeEnum::AlterTsconfigurationStmt(_)
        | NodeEnum::AlterTsdictionaryStmt(_)
        | NodeEnum::AlterTypeStmt(_)
        | NodeEnum::AlterUserMappingStmt(_)
        | NodeEnum::RenameStmt(_) => K::Alter,
        _ => K::Other,
    }
}

/// A bounded cache of classifications, shared by every session without a global lock (the relay
/// runs a thread per core); the least useful entries are evicted. Texts that have a
/// [shape](crate::shape) share the entry of their shape; others are keyed by their exact text.
pub struct ClassifierCache {
    entries: quick_cache::sync::Cache<Arc<str>, Arc<Classification>>,
}

impl ClassifierCache {
    pub fn new(capacity: usize) -> Self {
        ClassifierCache {
            entries: quick_cache::sync::Cache::new(capacity),
        }
    }

    pub fn classify(&self, sql: &str) -> Arc<Classification> {
        if let Some(hit) = self.entries.get(sql) {
            return hit;
        }
        let key: Arc<str> = match crate::shape::shape_key(sql) {
            Some(key) => {
                if let Some(hit) = self.entries.get(key.as_str()) {
                    return hit;
                }
                Arc::from(key)
            }
            None => Arc::from(sql),
        };
        let classification = Arc::new(classify(sql));
        self.entries.insert(key, classification.clone());
        classification
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use StatementKind as K;

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
        assert_eq!(kinds("load 'plugin'"), vec![vec![K::Other]]);
        assert_eq!(kinds("create view v as select 1"), vec![vec![K::Create]]);
        assert_eq!(kinds("create extension dblink"), vec![vec![K::Create]]);
        assert_eq!(kinds("create role r"), vec![vec![K::Create]]);
        assert_eq!(kinds("alter role r nologin"), vec![vec![K::Alter]]);
        assert_eq!(kinds("alter table t rename to u"), vec![vec![K::Alter]]);
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
        // EXPLAIN ANALYZE runs its statement: it is that statement.
        assert_eq!(
            kinds("explain analyze delete from t"),
            vec![vec![K::Delete]]
        );
        assert_eq!(
            kinds("explain (analyze, format json) update t set a = 1"),
            vec![vec![K::Update]]
        );
        // EXPLAIN alone runs nothing.
        assert_eq!(kinds("explain delete from t"), vec![vec![K::Explain]]);
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

    fn one(sql: &str) -> ClassifiedStatement {
        match classify(sql) {
            Classification::Parsed(mut s) if s.len() == 1 => s.remove(0),
            other => panic!("expected one statement for {sql}: {other:?}"),
        }
    }

    fn forbidden(sql: &str) -> bool {
        one(sql).forbidden.is_some()
    }

    #[test]
    fn set_config_is_set_and_lexer_settings_are_forbidden() {
        let s = one("select set_config('standard_conforming_strings','off',false)");
        assert!(s.forbidden.is_some());
        assert!(s.kinds.contains(&K::Set));
        let s = one("SELECT set_config('search_path','x',false)");
        assert_eq!(s.forbidden, None);
        assert_eq!(s.kinds, vec![K::Select, K::Set]);
        assert!(forbidden(
            "select * from t where set_config($1, 'off', false) = ''"
        ));
        assert!(forbidden(
            "select 1 from t where pg_catalog.set_config('Client_Encoding', 'SJIS', false) = ''"
        ));
        assert!(forbidden(
            r#"select U&"\0073et_config"('standard_conforming_strings','off',false)"#
        ));
        assert!(forbidden(
            "select set_config(setting_name => 'search_path', new_value => 'x', is_local => false)"
        ));
        assert!(forbidden(
            "update pg_settings set setting = 'off' where name = 'standard_conforming_strings'"
        ));
        assert!(forbidden(
            "alter system set standard_conforming_strings = off"
        ));
        assert!(forbidden("alter system set work_mem = '1MB'"));
    }

    #[test]
    fn set_of_lexer_settings_is_forbidden() {
        for sql in [
            "SET standard_conforming_strings = off",
            "SET LOCAL standard_conforming_strings = on",
            "set session client_encoding to 'SJIS'",
            "set client_encoding to 'SJIS'",
            "SET NAMES 'SJIS'",
            "RESET ALL",
            "reset client_encoding",
            "set standard_conforming_strings to default",
            "discard all",
        ] {
            assert!(forbidden(sql), "{sql}");
        }
        for sql in [
            "SET search_path = x",
            "set escape_string_warning = off",
            "set backslash_quote = on",
            "reset search_path",
            "discard plans",
        ] {
            assert!(!forbidden(sql), "{sql}");
        }
        assert_eq!(one("SET NAMES 'SJIS'").kinds, vec![K::Set]);
    }

    #[test]
    fn named_prepared_statements_and_portals_are_reported() {
        let s = one("EXECUTE d");
        assert_eq!(s.runs, vec![NamedObject::Statement("d".to_string())]);
        assert!(s.kinds.contains(&K::Execute));
        let s = one("EXPLAIN ANALYZE EXECUTE d");
        assert_eq!(s.runs, vec![NamedObject::Statement("d".to_string())]);
        assert_eq!(s.kinds, vec![K::Execute]);
        assert_eq!(one("EXPLAIN EXECUTE d").runs, vec![]);
        let s = one("create table t4 as execute d(1)");
        assert_eq!(s.runs, vec![NamedObject::Statement("d".to_string())]);
        assert_eq!(s.kinds, vec![K::Create, K::Execute]);
        for sql in ["FETCH ALL FROM p", "MOVE NEXT IN p"] {
            let s = one(sql);
            assert_eq!(s.runs, vec![NamedObject::Portal("p".to_string())], "{sql}");
            assert_eq!(s.kinds, vec![K::Fetch], "{sql}");
        }
        assert_eq!(one("select 1").runs, vec![]);
    }

    #[test]
    fn nested_creates_and_upserts_are_seen() {
        assert_eq!(
            kinds("EXPLAIN ANALYZE CREATE TABLE t2 AS SELECT 1"),
            vec![vec![K::Create]]
        );
        assert_eq!(
            one("EXPLAIN ANALYZE CREATE TABLE t2 AS SELECT 1").subkinds,
            vec!["CREATE TABLE"]
        );
        assert_eq!(
            kinds("EXPLAIN ANALYZE SELECT 1 INTO t3"),
            vec![vec![K::Create]]
        );
        assert_eq!(
            kinds("insert into t values (1) on conflict (id) do update set a = 1"),
            vec![vec![K::Insert, K::Update]]
        );
        assert_eq!(
            kinds("insert into t values (1) on conflict do nothing"),
            vec![vec![K::Insert]]
        );
        assert_eq!(
            kinds(
                "with x as (insert into t values (1) on conflict (id) do update set a = 1 \
                 returning *) select * from x"
            ),
            vec![vec![K::Select, K::Insert, K::Update]]
        );
    }

    #[test]
    fn plain_dml_stays_on_the_fast_path() {
        let sql = "SELECT abalance FROM pgbench_accounts WHERE aid = 1";
        let parsed = pg_query::parse(sql).expect("parses");
        let node = parsed.protobuf.stmts[0]
            .stmt
            .as_ref()
            .and_then(|n| n.node.as_ref())
            .expect("one statement");
        assert!(!needs_walk(node, sql));
        // A call needs a parenthesis, so any parenthesis means a walk.
        assert!(needs_walk(node, "select count(*) from t"));
        // The same tree with text that could hide an escaped set_config must be walked.
        assert!(needs_walk(
            node,
            r#"select U&"\0073et_config"('a','b',false)"#
        ));
        assert_eq!(one(sql).kinds, vec![K::Select]);
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
    fn dangerous_functions_are_their_own_kind_wherever_they_are_called() {
        let mut names: Vec<String> = DANGEROUS_FUNCTIONS
            .iter()
            .map(|f| f.replace('*', "x"))
            .collect();
        names.extend(["dblink".to_string(), "dblink_exec".to_string()]);
        for name in &names {
            for sql in [
                format!("select {name}(1)"),
                format!("SELECT PG_CATALOG.{}(1)", name.to_uppercase()),
                format!("select * from (select {name}(1)) s"),
                format!("select a from t where a = {name}(1)"),
                format!("select * from {name}(1)"),
                format!("with x as (select {name}(1)) select * from x"),
            ] {
                let s = one(&sql);
                assert!(s.kinds.contains(&K::Function), "{sql}: {:?}", s.kinds);
                assert!(s.kinds.contains(&K::Select), "{sql}");
            }
        }
        let s = one("select pg_catalog.pg_read_file('x')");
        assert_eq!(s.kinds, vec![K::Select, K::Function]);
        assert_eq!(s.functions, vec!["pg_catalog.pg_read_file"]);
        let s = one(r#"select U&"\0070g_read_file"('x')"#);
        assert_eq!(s.kinds, vec![K::Select, K::Function]);
        assert_eq!(s.functions, vec!["pg_read_file"]);
        assert_eq!(
            one("update t set a = nextval('s') where id = 1").kinds,
            vec![K::Update, K::Function]
        );
        assert_eq!(
            one("explain analyze select pg_terminate_backend(1)").kinds,
            vec![K::Select, K::Function]
        );
        assert_eq!(
            one("explain select pg_terminate_backend(1)").kinds,
            vec![K::Explain]
        );
        assert_eq!(
            one("select pg_notify('c', 'x')").kinds,
            vec![K::Select, K::Notify]
        );
        // Reads stay reads; set_config stays a SET only.
        for sql in [
            "select count(*), now(), lower('A') from t",
            "select pg_read_file_ok(1)",
            "select 'pg_read_file(1)'",
        ] {
            assert!(!one(sql).kinds.contains(&K::Function), "{sql}");
        }
        assert_eq!(
            one("select set_config('search_path','x',false)").kinds,
            vec![K::Select, K::Set]
        );
    }

    #[test]
    fn tables_and_functions_are_listed_per_statement() {
        let s = one(
            "with c as (select * from orders o join app.customers cu on o.cid = cu.id) \
             select count(*), app.f(1) from c, lateral (select * from items) i \
             where exists (select 1 from secret.keys)",
        );
        assert_eq!(
            s.tables,
            vec!["app.customers", "c", "items", "orders", "secret.keys"]
        );
        assert_eq!(s.functions, vec!["app.f", "count"]);
        match classify("select * from a; delete from b where x = 1") {
            Classification::Parsed(s) => {
                assert_eq!(s[0].tables, vec!["a"]);
                assert_eq!(s[1].tables, vec!["b"]);
            }
            other => panic!("{other:?}"),
        }
        // A CTE that shadows a table's name cannot hide the table a DELETE really targets.
        assert_eq!(
            one("with items as (select 1) delete from items").tables,
            vec!["items"]
        );
        assert_eq!(one("call app.do_it(1)").functions, vec!["app.do_it"]);
        assert_eq!(one("truncate a, s.b").tables, vec!["a", "s.b"]);
        assert_eq!(one("copy (select * from t) to stdout").tables, vec!["t"]);
        assert_eq!(one("prepare p as delete from items").tables, vec!["items"]);
        assert_eq!(one("select * into t2 from t").tables, vec!["t", "t2"]);
        assert_eq!(one("select 1").tables, Vec::<String>::new());
    }

    #[test]
    fn unfiltered_writes_are_flagged_anywhere() {
        for sql in [
            "delete from t",
            "update t set a = 1",
            "with d as (delete from t returning *) select * from d",
            "with d as (update t set a = 1 returning *) select * from d where a = 1",
            "explain analyze delete from t",
            "prepare p as update t set a = 1",
            "DELETE FROM t USING u",
        ] {
            assert!(one(sql).unfiltered_write, "{sql}");
        }
        for sql in [
            "delete from t where id = 1",
            "update t set a = 1 where id = (select 1)",
            "with d as (delete from t where id = 1 returning *) select * from d",
            "insert into t values (1)",
            "select * from t",
            "truncate t",
        ] {
            assert!(!one(sql).unfiltered_write, "{sql}");
        }
    }

    /// The fast path must find exactly what the walk finds for every statement it takes.
    #[test]
    fn the_fast_path_lists_what_the_walk_lists() {
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 1",
            "select * from a join s.b on a.id = b.id natural join c",
            "select * from a, b where a.x like b.y escape '!'",
            "select ts at time zone 'utc' from a",
            "select * from a union select * from b except select * from c",
            "table s.t",
            "insert into a select * from b",
            "update a set x = b.x from b where a.id = b.id",
            "update a set x = 1",
            "delete from a using b",
            "delete from only a where current of c",
            "merge into a using b on a.id = b.id when matched then delete",
        ] {
            let parsed = pg_query::parse(sql).expect("parses");
            let node = parsed.protobuf.stmts[0]
                .stmt
                .as_ref()
                .and_then(|n| n.node.as_ref())
                .expect("one statement");
            assert!(!needs_walk(node, sql), "{sql}");
            let fresh = || Walk {
                kinds: Vec::new(),
                subkinds: Vec::new(),
                runs: Vec::new(),
                forbidden: None,
                tables: Vec::new(),
                functions: Vec::new(),
                unfiltered_write: false,
            };
            let mut plain = fresh();
            plain.visit_plain(node);
            let mut walked = fresh();
            walked.visit(&serde_json::to_value(node).expect("serializes"));
            for w in [&mut plain, &mut walked] {
                w.tables.sort();
                w.tables.dedup();
                w.functions.sort();
                w.functions.dedup();
            }
            assert_eq!(plain.tables, walked.tables, "{sql}");
            assert_eq!(plain.functions, walked.functions, "{sql}");
            assert_eq!(plain.unfiltered_write, walked.unfiltered_write, "{sql}");
            assert!(!plain.tables.is_empty(), "{sql}");
        }
    }

    #[test]
    fn finer_kinds_name_copy_direction_and_object_types() {
        let sub = |sql: &str| one(sql).subkinds;
        assert_eq!(sub("copy t to stdout"), vec!["COPY TO"]);
        assert_eq!(sub("copy t from stdin"), vec!["COPY FROM"]);
        assert_eq!(
            sub("copy (select 1) to program 'id'"),
            vec!["COPY PROGRAM", "COPY TO", "COPY TO PROGRAM"]
        );
        assert_eq!(
            sub("copy t from '/etc/passwd'"),
            vec!["COPY FILE", "COPY FROM", "COPY FROM FILE"]
        );
        for (sql, expected) in [
            ("drop table a, s.b", "DROP TABLE"),
            ("drop index i", "DROP INDEX"),
            ("drop role r", "DROP ROLE"),
            ("drop extension e", "DROP EXTENSION"),
            ("drop function f()", "DROP FUNCTION"),
            ("drop owned by r", "DROP OWNED"),
            ("drop database d", "DROP DATABASE"),
            ("create table t (a int)", "CREATE TABLE"),
            ("create table t as select 1", "CREATE TABLE"),
            (
                "create materialized view m as select 1",
                "CREATE MATERIALIZED VIEW",
            ),
            ("select 1 into t", "CREATE TABLE"),
            ("create index on t (a)", "CREATE INDEX"),
            ("create extension dblink", "CREATE EXTENSION"),
            ("create role r", "CREATE ROLE"),
            ("create user u", "CREATE ROLE"),
            (
                "create function f() returns int language sql as 'select 1'",
                "CREATE FUNCTION",
            ),
            (
                "create procedure p() language sql as 'select 1'",
                "CREATE PROCEDURE",
            ),
            (
                "create rule r as on insert to t do instead nothing",
                "CREATE RULE",
            ),
            ("create view v as select 1", "CREATE VIEW"),
            ("create schema s", "CREATE SCHEMA"),
            ("alter table t add column b int", "ALTER TABLE"),
            ("alter table t rename column a to b", "ALTER TABLE"),
            ("alter table t rename to u", "ALTER TABLE"),
            ("alter index i rename to j", "ALTER INDEX"),
            ("alter role r superuser", "ALTER ROLE"),
            ("alter function f() stable", "ALTER FUNCTION"),
            ("alter system set work_mem = '1MB'", "ALTER SYSTEM"),
            ("alter extension e update", "ALTER EXTENSION"),
        ] {
            assert_eq!(sub(sql), vec![expected], "{sql}");
        }
        assert_eq!(sub("select 1"), Vec::<String>::new());
        assert_eq!(
            one("drop table a, s.b, db.s.c").tables,
            vec!["a", "s.b", "s.c"]
        );
        assert_eq!(one("drop index s.i").tables, vec!["s.i"]);
        assert_eq!(one("drop function f()").tables, Vec::<String>::new());
        assert_eq!(one("alter table s.t add column b int").tables, vec!["s.t"]);
    }

    #[test]
    fn role_changes_are_their_own_kind() {
        for sql in [
            "SET ROLE postgres",
            "set local role none",
            "RESET ROLE",
            "SET SESSION AUTHORIZATION postgres",
            "reset session authorization",
            "select set_config('role', 'postgres', false)",
        ] {
            let s = one(sql);
            assert!(s.kinds.contains(&K::SetRole), "{sql}: {:?}", s.kinds);
            assert!(!s.kinds.contains(&K::Set), "{sql}: {:?}", s.kinds);
        }
        assert_eq!(one("set search_path = x").kinds, vec![K::Set]);
        assert_eq!(StatementKind::from_name("set  role"), Some(K::SetRole));
        assert_eq!(
            StatementKind::from_name("volatile function"),
            Some(K::VolatileFunction)
        );
    }

    #[test]
    fn explain_analyze_options_are_read_like_the_server() {
        for sql in [
            "explain analyze delete from t",
            "explain (analyze) delete from t",
            "explain (analyze true) delete from t",
            "explain (ANALYZE on, costs off) delete from t",
            "explain (analyze 1) delete from t",
            "explain (analyze false, analyze true) delete from t",
            "explain (analyze 'maybe') delete from t",
        ] {
            assert_eq!(one(sql).kinds, vec![K::Delete], "{sql}");
        }
        for sql in [
            "explain delete from t",
            "explain (analyze false) delete from t",
            "explain (analyze off) delete from t",
            "explain (analyze 0) delete from t",
            "explain (costs off) delete from t",
        ] {
            assert_eq!(one(sql).kinds, vec![K::Explain], "{sql}");
        }
        assert_eq!(one("explain select * from s.t").tables, vec!["s.t"]);
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
