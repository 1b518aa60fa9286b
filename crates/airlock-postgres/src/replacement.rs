//! Whether a reviewer's replacement (`airlock approve --replace-with`) can run in place of a
//! held Execute of the extended protocol. The client's portal was bound upstream from its own
//! Parse and Bind; the gateway runs the replacement instead through the unnamed statement and
//! portal, with no parameters, and the client reads the answer as its own Execute's. So the
//! replacement must need no parameters, and the answer must have the shape the client awaits:
//! the held statement and its replacement are each one statement that returns no rows, so the
//! client reads only a command tag. Anything else stays refused.

use pg_query::protobuf::{node::Node as NodeEnum, Token};

/// `Ok` when `replacement` can run in place of the held `original`; else why not.
pub(crate) fn can_stand_in(original: &str, replacement: &str) -> Result<(), String> {
    let scanned =
        pg_query::scan(replacement).map_err(|e| format!("the replacement does not parse: {e}"))?;
    if scanned
        .tokens
        .iter()
        .any(|t| t.token == Token::Param as i32)
    {
        return Err("the replacement has parameters, which only the client could bind".into());
    }
    returns_no_rows(original).map_err(|why| format!("the held statement {why}"))?;
    returns_no_rows(replacement).map_err(|why| format!("the replacement {why}"))
}

/// `Ok` for one statement that answers with a command tag only.
fn returns_no_rows(sql: &str) -> Result<(), String> {
    let parsed = pg_query::parse(sql).map_err(|e| format!("does not parse: {e}"))?;
    let [statement] = parsed.protobuf.stmts.as_slice() else {
        return Err("is not exactly one statement".into());
    };
    let returning = match statement.stmt.as_ref().and_then(|n| n.node.as_ref()) {
        Some(NodeEnum::InsertStmt(s)) => &s.returning_list,
        Some(NodeEnum::UpdateStmt(s)) => &s.returning_list,
        Some(NodeEnum::DeleteStmt(s)) => &s.returning_list,
        Some(NodeEnum::MergeStmt(s)) => &s.returning_list,
        Some(
            NodeEnum::TruncateStmt(_)
            | NodeEnum::DropStmt(_)
            | NodeEnum::AlterTableStmt(_)
            | NodeEnum::CreateStmt(_)
            | NodeEnum::IndexStmt(_),
        ) => return Ok(()),
        _ => return Err("may return rows".into()),
    };
    if returning.is_empty() {
        Ok(())
    } else {
        Err("returns rows (RETURNING)".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_without_rows_stands_in_for_another() {
        assert!(can_stand_in(
            "DELETE FROM items WHERE id < $1",
            "DELETE FROM items WHERE id = 1"
        )
        .is_ok());
        assert!(can_stand_in("UPDATE t SET a = $1", "TRUNCATE t").is_ok());
    }

    #[test]
    fn rows_parameters_and_batches_stay_refused() {
        let refused = |original: &str, replacement: &str| {
            can_stand_in(original, replacement).expect_err(replacement)
        };
        assert!(refused("DELETE FROM t", "SELECT * FROM t").contains("may return rows"));
        assert!(refused("DELETE FROM t", "DELETE FROM t RETURNING id").contains("RETURNING"));
        assert!(refused("DELETE FROM t RETURNING id", "DELETE FROM t").contains("held"));
        assert!(refused("DELETE FROM t", "DELETE FROM t WHERE id = $1").contains("parameters"));
        assert!(refused("DELETE FROM t", "DELETE FROM t; SELECT 1").contains("one statement"));
        assert!(refused("DELETE FROM t", "DELETE FROM").contains("parse"));
    }
}
