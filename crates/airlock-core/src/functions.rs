//! User-defined functions judged by their volatility. The parser sees `select f()` as a read,
//! but `f` may write: only the upstream's catalog (`pg_proc.provolatile`) says. An adapter
//! looks the called names up (with [`LOOKUP_SQL`]) and hands the answer to
//! [`judge_volatility`], which stays a pure function of the classification and that answer:
//! a call to a VOLATILE function, or to one the answer does not know, adds
//! [`StatementKind::VolatileFunction`]; STABLE and IMMUTABLE functions are reads. Functions of
//! `pg_catalog` are built-ins, judged by the dangerous-function list instead.

use crate::classify::{Classification, StatementKind};
use std::collections::HashMap;
use std::sync::Arc;

/// Every function of the given names, in every schema, with its volatility and kind; `$1` is
/// a `text[]` of names exactly as the parser produced them.
pub const LOOKUP_SQL: &str = "SELECT p.proname::text, n.nspname::text, p.provolatile::text, \
     p.prokind::text FROM pg_catalog.pg_proc p \
     JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
     WHERE p.proname = ANY($1::text[])";

const BUILTIN_SCHEMA: &str = "pg_catalog";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Volatility {
    Immutable,
    Stable,
    Volatile,
}

impl Volatility {
    /// From `pg_proc.provolatile` (`i`, `s`, `v`); anything else is not known.
    pub fn from_code(code: &str) -> Option<Volatility> {
        match code {
            "i" => Some(Volatility::Immutable),
            "s" => Some(Volatility::Stable),
            "v" => Some(Volatility::Volatile),
            _ => None,
        }
    }
}

/// One function of a looked-up name, as the upstream's catalog has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogEntry {
    pub schema: String,
    /// `None` when the catalog answered something the gateway does not know: volatile.
    pub volatility: Option<Volatility>,
    /// A procedure (`prokind = 'p'`) runs only through CALL, which is its own kind.
    pub is_procedure: bool,
}

/// The upstream's answer by function name. A name missing here, or with no entries, is not
/// known: it may be anything, so it counts as volatile.
pub type Catalog = HashMap<String, Vec<CatalogEntry>>;

/// A called function split into (schema, name); `db.schema.name` names the current database.
fn split(called: &str) -> (Option<&str>, &str) {
    let parts: Vec<&str> = called.split('.').collect();
    match parts.as_slice() {
        [.., schema, name] => (Some(schema), name),
        [name] => (None, name),
        [] => (None, called),
    }
}

/// The names whose catalog entries [`judge_volatility`] needs, sorted and unique: every called
/// function not qualified with `pg_catalog`.
pub fn names_to_look_up(classification: &Classification) -> Vec<String> {
    let Classification::Parsed(statements) = classification else {
        return Vec::new();
    };
    let mut names: Vec<String> = statements
        .iter()
        .flat_map(|s| s.functions.iter())
        .filter_map(|called| match split(called) {
            (Some(schema), _) if schema == BUILTIN_SCHEMA => None,
            (_, name) => Some(name.to_string()),
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Whether a call may write, by what the catalog says of its name. An unqualified name is
/// resolved by the search path and by argument types, which the gateway does not know, so
/// every function of that name outside `pg_catalog` is considered; `pg_catalog` alone means a
/// built-in.
fn may_write(called: &str, catalog: &Catalog) -> bool {
    let (schema, name) = split(called);
    if schema == Some(BUILTIN_SCHEMA) {
        return false;
    }
    let Some(entries) = catalog.get(name).filter(|e| !e.is_empty()) else {
        return true;
    };
    let candidates: Vec<&CatalogEntry> = entries
        .iter()
        .filter(|e| match schema {
            Some(schema) => e.schema == schema,
            None => e.schema != BUILTIN_SCHEMA,
        })
        .collect();
    if candidates.is_empty() {
        // Qualified with a schema that has no such function: unknown. Unqualified: only
        // built-ins carry the name.
        return schema.is_some();
    }
    candidates.iter().filter(|e| !e.is_procedure).any(|e| {
        e.volatility != Some(Volatility::Immutable) && e.volatility != Some(Volatility::Stable)
    })
}

/// The classification with [`StatementKind::VolatileFunction`] added to every statement that
/// calls a function that may write, by `catalog`.
pub fn judge_volatility(
    classification: Arc<Classification>,
    catalog: &Catalog,
) -> Arc<Classification> {
    let Classification::Parsed(statements) = classification.as_ref() else {
        return classification;
    };
    let writes = |s: &crate::classify::ClassifiedStatement| {
        s.functions.iter().any(|called| may_write(called, catalog))
            && !s.kinds.contains(&StatementKind::VolatileFunction)
    };
    if !statements.iter().any(writes) {
        return classification;
    }
    let mut judged = statements.clone();
    for statement in &mut judged {
        if writes(statement) {
            statement.kinds.push(StatementKind::VolatileFunction);
            statement.kinds.sort();
        }
    }
    Arc::new(Classification::Parsed(judged))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::classify;

    fn entry(schema: &str, code: &str, procedure: bool) -> CatalogEntry {
        CatalogEntry {
            schema: schema.into(),
            volatility: Volatility::from_code(code),
            is_procedure: procedure,
        }
    }

    fn catalog() -> Catalog {
        let mut c = Catalog::new();
        c.insert("count".into(), vec![entry("pg_catalog", "i", false)]);
        c.insert("lower".into(), vec![entry("pg_catalog", "i", false)]);
        c.insert("writer".into(), vec![entry("public", "v", false)]);
        c.insert("reader".into(), vec![entry("app", "s", false)]);
        c.insert("pure".into(), vec![entry("public", "i", false)]);
        c.insert(
            "upper".into(),
            vec![entry("pg_catalog", "i", false), entry("public", "v", false)],
        );
        c.insert("proc".into(), vec![entry("public", "v", true)]);
        c.insert("odd".into(), vec![entry("public", "x", false)]);
        c
    }

    fn volatile(sql: &str) -> bool {
        let judged = judge_volatility(Arc::new(classify(sql)), &catalog());
        judged.has_kind(StatementKind::VolatileFunction)
    }

    #[test]
    fn volatile_and_unknown_user_functions_are_their_own_kind() {
        for sql in [
            "select writer()",
            "select * from items where id = writer()",
            "select public.writer()",
            "select missing()",
            "select app.pure()",
            "select upper('a')",
            "select odd()",
            "with x as (select writer()) select * from x",
            "select 1; select writer()",
        ] {
            assert!(volatile(sql), "{sql}");
        }
        for sql in [
            "select count(*), lower('A') from items",
            "select reader(), app.reader(), pure()",
            "select pg_catalog.upper('a'), pg_catalog.anything()",
            "call proc()",
            "select 1",
        ] {
            assert!(!volatile(sql), "{sql}");
        }
    }

    #[test]
    fn only_names_outside_pg_catalog_are_looked_up() {
        assert_eq!(
            names_to_look_up(&classify(
                "select pg_catalog.lower('a'), count(*), app.f(1), db.app.g() from t"
            )),
            vec!["count", "f", "g"]
        );
        assert!(names_to_look_up(&classify("select 1")).is_empty());
    }

    #[test]
    fn a_lookup_that_failed_fails_closed() {
        let judged = judge_volatility(
            Arc::new(classify("select count(*) from t")),
            &Catalog::new(),
        );
        assert!(judged.has_kind(StatementKind::VolatileFunction));
    }
}
