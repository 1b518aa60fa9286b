//! A statement's shape: its text with plain literal values replaced by placeholders, the key
//! under which statements that differ only in those values share one classification. In the
//! simple query protocol every distinct value (`… WHERE aid = 48213`) is a new text, and parsing
//! each one would cost more than everything else the gateway does for a statement.
//!
//! Sharing is sound only where a literal's value cannot change what the statement is, so the
//! scan is deliberately narrow and gives up (no shape, the exact text is classified) on anything
//! outside a small language: one statement starting with SELECT, INSERT, UPDATE, DELETE, VALUES,
//! TABLE or WITH, made of keywords, identifiers, operators, unsigned decimal numbers and plain
//! `'…'` strings. No comments, dollar quotes, parameters, backslashes, double-quoted
//! identifiers, prefixed strings (`E''`, `B''`, `X''`, `U&''`), non-ASCII outside strings, or
//! a second statement. And no text that mentions `set` or `explain` outside its strings: that is
//! where a value changes meaning (`SET client_encoding = '…'`, `set_config(…)`,
//! `EXPLAIN (ANALYZE 1)`), so such texts are always classified as written.

/// The cache key of `sql`'s shape: a NUL, which no SQL text sent over the wire can contain (so
/// the key never meets an exact-text key), then the shape; `None` when the text is outside the
/// language described above.
pub fn shape_key(sql: &str) -> Option<String> {
    if !starts_with_data_statement(sql) {
        return None;
    }
    let bytes = sql.as_bytes();
    let mut shape = String::with_capacity(sql.len() + 1);
    shape.push('\0');
    let mut copied_to = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\'' => {
                if i > 0 && is_word_byte(bytes[i - 1]) {
                    return None;
                }
                let end = string_end(bytes, i)?;
                shape.push_str(&sql[copied_to..i]);
                shape.push_str("$s");
                i = end;
                copied_to = i;
            }
            b'0'..=b'9' if i == 0 || !(is_word_byte(bytes[i - 1]) || bytes[i - 1] == b'.') => {
                let end = number_end(bytes, i)?;
                shape.push_str(&sql[copied_to..i]);
                shape.push_str("$n");
                i = end;
                copied_to = i;
            }
            b'$' | b'\\' | b'"' | b'&' | b'`' => return None,
            b'-' if bytes.get(i + 1) == Some(&b'-') => return None,
            b'/' if bytes.get(i + 1) == Some(&b'*') => return None,
            b';' if !sql[i + 1..].trim().is_empty() => return None,
            b if !b.is_ascii() => return None,
            _ => i += 1,
        }
    }
    shape.push_str(&sql[copied_to..]);
    if mentions(&shape, b"set") || mentions(&shape, b"explain") {
        return None;
    }
    Some(shape)
}

/// Whether `word` occurs in `text`, in any letter case.
fn mentions(text: &str, word: &[u8]) -> bool {
    text.as_bytes()
        .windows(word.len())
        .any(|w| w.eq_ignore_ascii_case(word))
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn starts_with_data_statement(sql: &str) -> bool {
    let text = sql.trim_start_matches(|c: char| c.is_ascii_whitespace() || c == '(');
    let word_len = text.bytes().take_while(|&b| is_word_byte(b)).count();
    let word = &text[..word_len];
    [
        "select", "insert", "update", "delete", "values", "table", "with",
    ]
    .iter()
    .any(|k| word.eq_ignore_ascii_case(k))
}

/// The index just past the string literal opening at `start` (`''` is a quote inside it).
fn string_end(bytes: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    loop {
        match bytes.get(i)? {
            b'\'' if bytes.get(i + 1) == Some(&b'\'') => i += 2,
            b'\'' => return Some(i + 1),
            b'\\' => return None,
            _ => i += 1,
        }
    }
}

/// The index just past the number starting at `start`: digits, optionally `.` and digits.
/// Anything else glued to it (`1e5`, `0x1F`, `1_000`, `1.`) is left to the parser.
fn number_end(bytes: &[u8], start: usize) -> Option<usize> {
    let digits = |from: usize| {
        bytes[from..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count()
    };
    let mut i = start + digits(start);
    if bytes.get(i) == Some(&b'.') {
        let fraction = digits(i + 1);
        if fraction == 0 {
            return None;
        }
        i += 1 + fraction;
    }
    match bytes.get(i) {
        Some(&b) if is_word_byte(b) || b == b'.' => None,
        _ => Some(i),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::classify;

    fn shape(sql: &str) -> Option<String> {
        shape_key(sql).map(|key| key[1..].to_string())
    }

    #[test]
    fn literals_become_placeholders() {
        assert_eq!(
            shape("SELECT abalance FROM pgbench_accounts WHERE aid = 48213;").as_deref(),
            Some("SELECT abalance FROM pgbench_accounts WHERE aid = $n;")
        );
        assert_eq!(
            shape("insert into t1 (a, b) values (1.5, 'it''s')").as_deref(),
            Some("insert into t1 (a, b) values ($n, $s)")
        );
        assert_eq!(
            shape("select * from t2 where x > -3 and y = 'é'").as_deref(),
            Some("select * from t2 where x > -$n and y = $s")
        );
    }

    #[test]
    fn anything_unusual_has_no_shape() {
        for sql in [
            "SELECT 1; DELETE FROM t",
            "SELECT 1 -- c",
            "SELECT /* c */ 1",
            "SELECT $1",
            "SELECT $$x$$",
            "SELECT E'\\''",
            "SELECT e'x'",
            "SELECT B'101'",
            "SELECT X'1F'",
            "SELECT U&'d\\0061t'",
            "SELECT \"a\" FROM t",
            "SELECT 1e5",
            "SELECT 0x1F",
            "SELECT 1_000",
            "SELECT 'unterminated",
            "SELECT set_config('client_encoding', 'LATIN1', false)",
            "UPDATE t SET a = 1",
            "SELECT * FROM t OFFSET 5",
            "DELETE FROM t; EXPLAIN ANALYZE DELETE FROM t",
            "SET client_encoding = 'LATIN1'",
            "EXPLAIN (ANALYZE 1) DELETE FROM t",
            "COPY t TO PROGRAM 'rm -rf /'",
            "DO 'DELETE FROM t'",
            "PREPARE p AS DELETE FROM t",
            "EXECUTE p(1)",
            "SELECT café FROM t",
        ] {
            assert_eq!(shape(sql), None, "{sql}");
        }
    }

    /// Texts of one shape classify alike; the statements cover the kinds the cache shares.
    #[test]
    fn one_shape_one_classification() {
        let pairs = [
            (
                "SELECT abalance FROM pgbench_accounts WHERE aid = 1",
                "SELECT abalance FROM pgbench_accounts WHERE aid = 99999",
            ),
            (
                "WITH d AS (DELETE FROM t WHERE id = 1 RETURNING *) SELECT count(*) FROM d",
                "WITH d AS (DELETE FROM t WHERE id = 2 RETURNING *) SELECT count(*) FROM d",
            ),
            (
                "SELECT pg_terminate_backend(123)",
                "SELECT pg_terminate_backend(456)",
            ),
            (
                "SELECT pg_read_file('/etc/passwd')",
                "SELECT pg_read_file('x')",
            ),
            (
                "DELETE FROM t WHERE a = 'x' OR b = 2.5",
                "DELETE FROM t WHERE a = 'y' OR b = 3.25",
            ),
            (
                "INSERT INTO t VALUES (1, 'a') RETURNING id",
                "INSERT INTO t VALUES (2, 'b') RETURNING id",
            ),
        ];
        for (a, b) in pairs {
            assert_eq!(shape(a), shape(b), "{a} / {b}");
            assert!(shape(a).is_some(), "{a}");
            assert_eq!(classify(a), classify(b), "{a} / {b}");
        }
    }
}
