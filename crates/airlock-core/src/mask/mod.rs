//! Masking: the `masking` rules of the config, compiled once into a [`MaskPolicy`], and per
//! session into a [`SessionMasker`] that adapters apply to every value an agent receives (and
//! that is recorded).
//!
//! A rule applies to a session when one of its `connections` globs matches the connection and,
//! if it names `groups`, the identity is in one of them. Its `columns` globs mask whole
//! columns: a glob with a dot matches `table.column` (or `schema.table.column`) of the column's
//! source, one without matches the column's name (as labelled, or at its source). Its
//! `detectors` scan the values of every other column. Adapters describe each result column as a
//! [`ColumnSource`]; [`SessionMasker::plan`] turns a row shape into one [`ColumnAction`] per
//! column, so that columns no rule touches cost nothing per row.
//!
//! Modules: `detect` (the detectors), `style` (what a masked value becomes).

pub mod detect;
pub mod style;

use crate::policy::glob_match;
pub use detect::{Detector, DetectorSet};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
pub use style::{HashKey, MaskStyle};

/// One `masking` rule as written.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MaskRuleConfig {
    pub connections: Vec<String>,
    /// Only identities in one of these groups are masked by the rule; every identity when
    /// empty.
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub columns: Vec<String>,
    #[serde(default)]
    pub detectors: Vec<Detector>,
    #[serde(default)]
    pub style: MaskStyle,
}

/// The problems of the `masking` section: `(path under masking[i], message)`.
pub fn check_rules(rules: &[MaskRuleConfig]) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let at = |field: &str| format!("masking[{i}].{field}");
        if rule.connections.is_empty() {
            problems.push((
                at("connections"),
                "names no connection (use `*` for every one)".into(),
            ));
        }
        for (field, globs) in [
            ("connections", &rule.connections),
            ("groups", &rule.groups),
            ("columns", &rule.columns),
        ] {
            for (j, glob) in globs.iter().enumerate() {
                if glob.trim().is_empty() {
                    problems.push((format!("{}[{j}]", at(field)), "must not be empty".into()));
                }
            }
        }
        for (j, glob) in rule.columns.iter().enumerate() {
            if glob.split('.').count() > 3 || glob.split('.').any(str::is_empty) {
                problems.push((
                    format!("{}[{j}]", at("columns")),
                    format!("`{glob}` is not `column`, `table.column` or `schema.table.column`"),
                ));
            }
        }
        if rule.columns.is_empty() && rule.detectors.is_empty() {
            problems.push((
                at("columns"),
                "the rule masks nothing: give `columns`, `detectors` or both".into(),
            ));
        }
    }
    problems
}

/// What an adapter knows about one result column.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ColumnSource {
    /// The name the result gives the column (after any alias).
    pub label: String,
    /// Where the column comes from, when it is a plain column of a table or view.
    pub origin: Option<ColumnOrigin>,
    /// The column's type (PostgreSQL OID), 0 when unknown.
    pub type_oid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnOrigin {
    pub schema: String,
    pub table: String,
    pub column: String,
}

/// What to do with one column of every row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnAction {
    /// Nothing applies: the value goes through untouched.
    Pass,
    /// A `columns` rule matched: the whole value is masked.
    Mask(MaskStyle),
    /// Detectors scan the value.
    Scan,
}

/// How many values each detector (and `column` for whole columns) masked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaskCounts(pub BTreeMap<String, u64>);

impl MaskCounts {
    pub fn add(&mut self, what: &str, n: u64) {
        *self.0.entry(what.to_string()).or_default() += n;
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What masking made of a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Masked {
    Unchanged,
    Null,
    Text(String),
}

/// Types whose text can never hold anything a detector finds (numbers too short to be card
/// numbers, times, booleans, UUIDs): they are not scanned.
const UNSCANNED_TYPES: [u32; 13] = [
    16,   // bool
    21,   // int2
    23,   // int4
    26,   // oid
    700,  // float4
    701,  // float8
    1082, // date
    1083, // time
    1266, // timetz
    1114, // timestamp
    1184, // timestamptz
    1186, // interval
    2950, // uuid
];

/// Maskers already compiled, by connection and groups.
type MaskerCache = HashMap<(String, Vec<String>), Option<Arc<SessionMasker>>>;

/// The `masking` section, with the key of the `hash` style. Each distinct (connection,
/// groups) gets its masker compiled once and shared by its sessions.
#[derive(Debug, Clone, Default)]
pub struct MaskPolicy {
    rules: Vec<MaskRuleConfig>,
    key: Option<Arc<HashKey>>,
    compiled: Arc<Mutex<MaskerCache>>,
}

impl MaskPolicy {
    pub fn new(rules: Vec<MaskRuleConfig>, key: HashKey) -> MaskPolicy {
        MaskPolicy {
            rules,
            key: Some(Arc::new(key)),
            compiled: Arc::default(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The masker of a session on `connection` by an identity in `groups`; `None` when no rule
    /// applies (the relay then does no masking work at all).
    pub fn for_session(
        &self,
        connection: &str,
        groups: &[String],
    ) -> Result<Option<Arc<SessionMasker>>, detect::DetectError> {
        let cache_key = (connection.to_string(), groups.to_vec());
        if let Some(known) = self
            .compiled
            .lock()
            .ok()
            .and_then(|c| c.get(&cache_key).cloned())
        {
            return Ok(known);
        }
        let masker = self.compile(connection, groups)?;
        if let Ok(mut cache) = self.compiled.lock() {
            cache.insert(cache_key, masker.clone());
        }
        Ok(masker)
    }

    fn compile(
        &self,
        connection: &str,
        groups: &[String],
    ) -> Result<Option<Arc<SessionMasker>>, detect::DetectError> {
        let Some(key) = &self.key else {
            return Ok(None);
        };
        let applicable: Vec<&MaskRuleConfig> = self
            .rules
            .iter()
            .filter(|r| r.connections.iter().any(|g| glob_match(g, connection)))
            .filter(|r| {
                r.groups.is_empty()
                    || r.groups
                        .iter()
                        .any(|g| groups.iter().any(|have| glob_match(g, have)))
            })
            .collect();
        if applicable.is_empty() {
            return Ok(None);
        }
        let columns = applicable
            .iter()
            .flat_map(|r| r.columns.iter().map(|c| (c.to_lowercase(), r.style)))
            .collect();
        // A detector named by several rules masks in the style of the first.
        let mut styles: BTreeMap<Detector, MaskStyle> = BTreeMap::new();
        for rule in &applicable {
            for detector in &rule.detectors {
                styles.entry(*detector).or_insert(rule.style);
            }
        }
        let enabled: Vec<Detector> = styles.keys().copied().collect();
        Ok(Some(Arc::new(SessionMasker {
            columns,
            detectors: DetectorSet::compile(&enabled)?,
            styles,
            key: key.clone(),
        })))
    }
}

/// The masking of one session.
#[derive(Debug)]
pub struct SessionMasker {
    /// Lower-case globs and the style of their rule, in config order.
    columns: Vec<(String, MaskStyle)>,
    detectors: DetectorSet,
    styles: BTreeMap<Detector, MaskStyle>,
    key: Arc<HashKey>,
}

impl SessionMasker {
    /// Whether column rules need to know where columns come from (a catalog lookup).
    pub fn needs_origins(&self) -> bool {
        !self.columns.is_empty()
    }

    /// The action for each column of a row shape.
    pub fn plan(&self, columns: &[ColumnSource]) -> Vec<ColumnAction> {
        columns.iter().map(|c| self.action(c)).collect()
    }

    fn action(&self, column: &ColumnSource) -> ColumnAction {
        let label = column.label.to_lowercase();
        let origin = column.origin.as_ref().map(|o| {
            (
                o.schema.to_lowercase(),
                o.table.to_lowercase(),
                o.column.to_lowercase(),
            )
        });
        for (glob, style) in &self.columns {
            let parts: Vec<&str> = glob.split('.').collect();
            let hit = match (parts.as_slice(), &origin) {
                ([name], origin) => {
                    glob_match(name, &label)
                        || origin.as_ref().is_some_and(|(_, _, c)| glob_match(name, c))
                }
                ([table, name], Some((_, t, c))) => glob_match(table, t) && glob_match(name, c),
                ([schema, table, name], Some((s, t, c))) => {
                    glob_match(schema, s) && glob_match(table, t) && glob_match(name, c)
                }
                // Not a column of a table (an expression): whatever table the glob names, a
                // column of that name is masked rather than risked.
                ([.., name], None) => glob_match(name, &label),
                _ => false,
            };
            if hit {
                return ColumnAction::Mask(*style);
            }
        }
        if self.detectors.is_empty() || UNSCANNED_TYPES.contains(&column.type_oid) {
            ColumnAction::Pass
        } else {
            ColumnAction::Scan
        }
    }

    /// Masks one value (its text, as received) by `action`, counting what was masked.
    pub fn apply(&self, action: ColumnAction, value: &[u8], counts: &mut MaskCounts) -> Masked {
        match action {
            ColumnAction::Pass => Masked::Unchanged,
            ColumnAction::Mask(style) => {
                counts.add("column", 1);
                style::whole(style, value, &self.key)
            }
            ColumnAction::Scan => self.scan(value, counts),
        }
    }

    /// Masks what the detectors find in `value`.
    pub fn scan(&self, value: &[u8], counts: &mut MaskCounts) -> Masked {
        self.scan_with(value, counts, true)
    }

    /// Masks what the detectors find in a stretch of text that holds several values (a line of
    /// COPY data): `null` cannot null one value of it, so it redacts instead.
    pub fn scan_text(&self, value: &[u8], counts: &mut MaskCounts) -> Masked {
        self.scan_with(value, counts, false)
    }

    fn scan_with(&self, value: &[u8], counts: &mut MaskCounts, may_null: bool) -> Masked {
        // Text that is not UTF-8 cannot be scanned, so it cannot be shown either.
        let Ok(text) = std::str::from_utf8(value) else {
            counts.add("unreadable", 1);
            return Masked::Text(style::REDACTED.into());
        };
        let findings = self.detectors.find(text);
        if findings.is_empty() {
            return Masked::Unchanged;
        }
        let mut out = String::with_capacity(text.len());
        let mut from = 0;
        for finding in &findings {
            counts.add(finding.detector.name(), 1);
            let style = self
                .styles
                .get(&finding.detector)
                .copied()
                .unwrap_or_default();
            if style == MaskStyle::Null && may_null {
                return Masked::Null;
            }
            out.push_str(&text[from..finding.start]);
            out.push_str(&style::found(
                style,
                finding.detector,
                &text[finding.start..finding.end],
                &self.key,
            ));
            from = finding.end;
        }
        out.push_str(&text[from..]);
        Masked::Text(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> MaskPolicy {
        let rules: Vec<MaskRuleConfig> = serde_yaml::from_str(yaml).unwrap();
        assert!(check_rules(&rules).is_empty(), "{:?}", check_rules(&rules));
        MaskPolicy::new(rules, HashKey::new([7; 32]))
    }

    fn column(label: &str, origin: Option<(&str, &str, &str)>) -> ColumnSource {
        ColumnSource {
            label: label.into(),
            origin: origin.map(|(s, t, c)| ColumnOrigin {
                schema: s.into(),
                table: t.into(),
                column: c.into(),
            }),
            type_oid: 25,
        }
    }

    #[test]
    fn rules_are_scoped_by_connection_and_group() {
        let p = policy("- connections: [prod-*]\n  groups: [agents]\n  columns: [ssn]\n");
        assert!(p
            .for_session("prod-eu", &["agents".into()])
            .unwrap()
            .is_some());
        assert!(p.for_session("prod-eu", &["dba".into()]).unwrap().is_none());
        assert!(p
            .for_session("staging", &["agents".into()])
            .unwrap()
            .is_none());
    }

    #[test]
    fn columns_by_name_table_and_schema() {
        let p = policy(
            "- connections: ['*']\n  columns: ['users.ssn', 'card_*', 'billing.*.iban']\n  style: hash\n- connections: ['*']\n  columns: ['*.email']\n  detectors: [email]\n  style: partial\n",
        );
        let m = p.for_session("x", &[]).unwrap().unwrap();
        let plan = m.plan(&[
            column("ssn", Some(("public", "users", "ssn"))),
            column("x", Some(("public", "users", "ssn"))),
            column("ssn", Some(("public", "orders", "ssn"))),
            column("card_no", None),
            column("iban", Some(("billing", "accounts", "iban"))),
            column("email", None),
            column("note", Some(("public", "users", "note"))),
            ColumnSource {
                label: "n".into(),
                origin: None,
                type_oid: 23,
            },
        ]);
        use ColumnAction::*;
        assert_eq!(
            plan,
            [
                Mask(MaskStyle::Hash),
                Mask(MaskStyle::Hash),
                Scan,
                Mask(MaskStyle::Hash),
                Mask(MaskStyle::Hash),
                Mask(MaskStyle::Partial),
                Scan,
                Pass,
            ]
        );
    }

    #[test]
    fn an_expression_is_masked_by_a_table_glob_of_its_name() {
        let p = policy("- connections: ['*']\n  columns: ['users.ssn']\n");
        let m = p.for_session("x", &[]).unwrap().unwrap();
        assert_eq!(
            m.plan(&[column("ssn", None), column("lower", None)]),
            [ColumnAction::Mask(MaskStyle::Redact), ColumnAction::Pass]
        );
    }

    #[test]
    fn scanning_masks_each_finding_in_its_style_and_counts() {
        let p = policy(
            "- connections: ['*']\n  detectors: [email, credit_card]\n  style: partial\n- connections: ['*']\n  detectors: [us_ssn, email]\n",
        );
        let m = p.for_session("x", &[]).unwrap().unwrap();
        let mut counts = MaskCounts::default();
        let text = b"ann@example.com paid with 4111 1111 1111 1111, ssn 123-45-6789";
        assert_eq!(
            m.scan(text, &mut counts),
            Masked::Text("****@example.com paid with ****1111, ssn [us_ssn]".into())
        );
        assert_eq!(counts.0["email"], 1);
        assert_eq!(counts.0["credit_card"], 1);
        assert_eq!(counts.0["us_ssn"], 1);
        assert_eq!(m.scan(b"nothing here", &mut counts), Masked::Unchanged);
        assert_eq!(
            m.scan(&[0xff, 0xfe], &mut counts),
            Masked::Text(style::REDACTED.into())
        );
    }

    #[test]
    fn null_style_nulls_the_whole_value() {
        let p = policy("- connections: ['*']\n  detectors: [ipv4]\n  style: 'null'\n");
        let m = p.for_session("x", &[]).unwrap().unwrap();
        let mut counts = MaskCounts::default();
        assert_eq!(m.scan(b"from 10.1.2.3", &mut counts), Masked::Null);
        assert_eq!(
            m.scan_text(b"1\tfrom 10.1.2.3\n", &mut counts),
            Masked::Text("1\tfrom [ipv4]\n".into())
        );
    }

    #[test]
    fn config_problems_are_reported() {
        let rules: Vec<MaskRuleConfig> =
            serde_yaml::from_str("- connections: []\n- connections: [a]\n  columns: ['a..b']\n")
                .unwrap();
        let problems = check_rules(&rules);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(serde_yaml::from_str::<Vec<MaskRuleConfig>>(
            "- connections: [a]\n  detectors: [dna]\n"
        )
        .is_err());
    }
}
