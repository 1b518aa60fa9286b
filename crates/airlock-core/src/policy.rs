//! The policy engine: policies compiled from config, and [`decide`], a pure function of
//! (policy snapshot, identity, operation). No I/O, no clock: `airlock policy explain` and the
//! gateway call the same code.

use crate::classify::{
    normalize_name, Classification, ClassifiedStatement, StatementKind, DANGEROUS_FUNCTIONS,
};
use crate::config::{
    ActionName, DangerousFunctionsConfig, PolicyConfig, RuleConfig, WhereCondition,
};
use crate::identity::Identity;
use crate::operation::Operation;
use serde::Serialize;
use smallvec::SmallVec;
use std::borrow::Cow;
use std::time::Duration;

pub const DEFAULT_APPROVAL_TIMEOUT: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ApprovalSpec {
    pub reviewers: Vec<String>,
    pub approvals: u32,
    #[serde(with = "duration_secs")]
    #[schema(value_type = u64)]
    pub timeout: Duration,
    /// An approval from a member of each `reviewers` group is needed, on top of `approvals`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub all_groups_must_approve: bool,
    /// When `escalate_to` may decide too (and is notified), counted from the request.
    #[serde(with = "opt_duration_secs", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<u64>)]
    pub escalate_after: Option<Duration>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub escalate_to: Vec<String>,
    /// How long an approved request stays runnable by its requester re-sending it after its
    /// client went away (rule, else policy `approval_window`).
    #[serde(with = "opt_duration_secs", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<u64>)]
    pub approval_window: Option<Duration>,
    /// Reviewers are reminded of a still pending request every `remind_after`.
    #[serde(with = "opt_duration_secs", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<u64>)]
    pub remind_after: Option<Duration>,
}

mod duration_secs {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

mod opt_duration_secs {
    pub fn serialize<S: serde::Serializer>(
        d: &Option<std::time::Duration>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::duration_secs::serialize(d, s),
            None => s.serialize_none(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Action {
    Allow,
    Deny { reason: String },
    RequireApproval(ApprovalSpec),
}

impl Action {
    fn severity(&self) -> u8 {
        match self {
            Action::Allow => 0,
            Action::RequireApproval(spec) => 1 + (spec.approvals.min(100) as u8),
            Action::Deny { .. } => u8::MAX,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny { .. } => "deny",
            Action::RequireApproval(_) => "require-approval",
        }
    }
}

/// The verdict of the policy on one operation, and where it came from.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Decision {
    #[serde(flatten)]
    pub action: Action,
    pub policy: Option<String>,
    pub rule: Option<String>,
    /// Whether the session's operations are recorded (`record:` of the policies that apply).
    pub record: bool,
    /// A `rows_limit` rule applies to the operation but no exact row count was given: decide
    /// again with the count (see [`decide_with_rows`]).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub needs_rows: bool,
}

#[derive(Debug, Clone)]
enum KindMatcher {
    Any,
    Kinds(Vec<KindTerm>),
}

/// One `|`-separated part of a rule's `match`: a kind (`DROP`), or a kind with a detail
/// (`DROP TABLE`) that matches only statements with that finer kind.
#[derive(Debug, Clone)]
struct KindTerm {
    kind: StatementKind,
    /// The full finer kind (`DROP TABLE`), as in [`ClassifiedStatement::subkinds`].
    subkind: Option<String>,
}

impl KindTerm {
    /// As a rule writes it: `DROP TABLE`, or the kind alone.
    fn name(&self) -> String {
        self.subkind
            .clone()
            .unwrap_or_else(|| self.kind.name().to_string())
    }

    fn parse(text: &str) -> Option<KindTerm> {
        let text = normalize_name(text);
        if let Some(kind) = StatementKind::from_name(&text) {
            return Some(KindTerm {
                kind,
                subkind: None,
            });
        }
        let (head, detail) = text.split_once(' ')?;
        let kind = StatementKind::from_name(head)?;
        kind.subkind_names().contains(&detail).then(|| KindTerm {
            kind,
            subkind: Some(text.clone()),
        })
    }

    fn matches(&self, kind: StatementKind, statement: &ClassifiedStatement) -> bool {
        self.kind == kind
            && self
                .subkind
                .as_ref()
                .is_none_or(|subkind| statement.subkinds.contains(subkind))
    }
}

/// The functions a call to which makes a statement [`StatementKind::Function`]: the built-in
/// globs minus `remove`, plus `add`.
#[derive(Debug, Clone, Default)]
struct FunctionList {
    config: DangerousFunctionsConfig,
}

impl FunctionList {
    /// Whether a called function (`name` or `schema.name`) is dangerous under this list.
    fn is_dangerous(&self, called: &str) -> bool {
        let called = called.to_ascii_lowercase();
        let bare = called.rsplit('.').next().unwrap_or(&called);
        let builtin = DANGEROUS_FUNCTIONS.iter().any(|glob| {
            glob_match(glob, bare)
                && !self
                    .config
                    .remove
                    .iter()
                    .any(|removed| removed.trim().eq_ignore_ascii_case(glob))
        });
        builtin
            || self.config.add.iter().any(|glob| {
                let glob = glob.trim().to_ascii_lowercase();
                glob_match(&glob, &called) || glob_match(&glob, bare)
            })
    }
}

#[derive(Debug, Clone)]
struct CompiledRule {
    label: String,
    matcher: KindMatcher,
    /// Globs over touched relations (lowercase); empty means any statement.
    tables: Vec<String>,
    /// Globs over called functions (lowercase); empty means any statement.
    functions: Vec<String>,
    /// Only statements with an UPDATE or DELETE without WHERE.
    unfiltered_only: bool,
    /// Only operations counted to change at most this many rows.
    rows_limit: Option<u64>,
    action: Action,
}

impl CompiledRule {
    /// What the rule matches, in words: `DELETE|UPDATE on tables [items] without WHERE`.
    fn describe(&self) -> String {
        let mut text = match &self.matcher {
            KindMatcher::Any => "any statement".to_string(),
            KindMatcher::Kinds(kinds) => {
                kinds.iter().map(|k| k.name()).collect::<Vec<_>>().join("|")
            }
        };
        if !self.tables.is_empty() {
            text += &format!(" on tables [{}]", self.tables.join(", "));
        }
        if !self.functions.is_empty() {
            text += &format!(" calling [{}]", self.functions.join(", "));
        }
        if self.unfiltered_only {
            text += " without WHERE";
        }
        text
    }

    /// Whether the rule's matchers other than `match` accept the statement; they are
    /// combined with AND, and a list matches when any one name matches any one glob.
    fn accepts(&self, statement: &ClassifiedStatement) -> bool {
        (!self.unfiltered_only || statement.unfiltered_write)
            && (self.tables.is_empty()
                || any_name_matches(&self.tables, &statement.tables, Some("public")))
            && (self.functions.is_empty()
                || any_name_matches(&self.functions, &statement.functions, None))
    }
}

/// Whether a glob matches a name as written (`schema.name`) or its bare last part (`name`),
/// ignoring ASCII case: PostgreSQL folds unquoted names to lowercase, and matching a quoted
/// spelling too errs on the side of the rule. An unqualified name is also matched as
/// `default_schema.name` when there is one: relations resolve against the search path, and the
/// default one (`"$user", public`) finds them in `public`.
fn any_name_matches(globs: &[String], names: &[String], default_schema: Option<&str>) -> bool {
    names.iter().any(|name| {
        let name = name.to_ascii_lowercase();
        let bare = name.rsplit('.').next().unwrap_or(&name);
        let resolved = default_schema
            .filter(|_| !name.contains('.'))
            .map(|schema| format!("{schema}.{name}"));
        globs.iter().any(|glob| {
            glob_match(glob, &name)
                || glob_match(glob, bare)
                || resolved.as_deref().is_some_and(|r| glob_match(glob, r))
        })
    })
}

#[derive(Debug, Clone)]
struct CompiledPolicy {
    name: String,
    groups: Vec<String>,
    connections: Vec<String>,
    rules: Vec<CompiledRule>,
    record: bool,
    default: ActionName,
}

/// An immutable snapshot of every policy; swapped whole when policies change.
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    policies: Vec<CompiledPolicy>,
    /// The policies as written, kept with their compiled form so that what is shown and
    /// recorded is always exactly what decides.
    sources: Vec<PolicyConfig>,
    dangerous: FunctionList,
}

impl PolicySet {
    /// Compiles policies; errors are (config path, message) pairs.
    pub fn compile(configs: &[PolicyConfig]) -> Result<PolicySet, Vec<(String, String)>> {
        let mut errors = Vec::new();
        let mut policies = Vec::new();
        for (i, p) in configs.iter().enumerate() {
            if p.groups.is_empty() {
                errors.push((
                    format!("policies[{i}].groups"),
                    "a policy needs at least one group".into(),
                ));
            }
            if p.default == Some(ActionName::RequireApproval) {
                errors.push((
                    format!("policies[{i}].default"),
                    "`default` may be allow or deny (a held default has no reviewers)".into(),
                ));
            }
            let mut rules = Vec::new();
            for (j, r) in p.rules.iter().enumerate() {
                match compile_rule(r, p.approval_window).and_then(|rule| compile_matchers(r, rule))
                {
                    Ok(rule) => rules.push(rule),
                    Err((field, message)) => {
                        errors.push((format!("policies[{i}].rules[{j}].{field}"), message))
                    }
                }
            }
            policies.push(CompiledPolicy {
                name: p.name.clone(),
                groups: p.groups.clone(),
                connections: p.connections.clone(),
                rules,
                record: p.record,
                default: p.default.unwrap_or(ActionName::Deny),
            });
        }
        if errors.is_empty() {
            Ok(PolicySet {
                policies,
                sources: configs.to_vec(),
                dangerous: FunctionList::default(),
            })
        } else {
            Err(errors)
        }
    }

    /// The same policies with the built-in list of dangerous functions changed.
    pub fn with_dangerous_functions(mut self, config: DangerousFunctionsConfig) -> PolicySet {
        self.dangerous = FunctionList { config };
        self
    }

    /// The changes to the built-in list of dangerous functions, as written.
    pub fn dangerous_functions(&self) -> &DangerousFunctionsConfig {
        &self.dangerous.config
    }

    /// The kinds a statement has under these policies: the classifier marks calls to the
    /// built-in dangerous functions as FUNCTION; a changed list decides that afresh from the
    /// functions the statement calls.
    pub fn kinds_of<'s>(&self, statement: &'s ClassifiedStatement) -> Cow<'s, [StatementKind]> {
        if self.dangerous.config.is_default() {
            return Cow::Borrowed(&statement.kinds);
        }
        let mut kinds: Vec<StatementKind> = statement
            .kinds
            .iter()
            .copied()
            .filter(|k| *k != StatementKind::Function)
            .collect();
        if statement
            .functions
            .iter()
            .any(|f| self.dangerous.is_dangerous(f))
        {
            kinds.push(StatementKind::Function);
            kinds.sort();
        }
        Cow::Owned(kinds)
    }

    /// Every kind and finer kind of a classification under these policies, sorted and unique:
    /// what records, requests and explanations show.
    pub fn kind_names(&self, classification: &Classification) -> Vec<String> {
        let Classification::Parsed(statements) = classification else {
            return Vec::new();
        };
        // The kinds present, one bit each in declaration order: sorted and unique for free.
        let mut present = 0u64;
        for statement in statements {
            for kind in self.kinds_of(statement).iter() {
                present |= kind_bit(*kind);
            }
        }
        let mut subkinds: Vec<&String> = statements.iter().flat_map(|s| &s.subkinds).collect();
        subkinds.sort();
        subkinds.dedup();
        let mut names = Vec::with_capacity(present.count_ones() as usize + subkinds.len());
        names.extend(
            StatementKind::ALL
                .iter()
                .filter(|kind| present & kind_bit(**kind) != 0)
                .map(|kind| kind.name().to_string()),
        );
        names.extend(subkinds.into_iter().cloned());
        names
    }

    pub fn len(&self) -> usize {
        self.policies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// The policies as written.
    pub fn configs(&self) -> &[PolicyConfig] {
        &self.sources
    }

    /// The policies as a `policies:` YAML document, the form they are recorded and compared in.
    pub fn to_yaml(&self) -> String {
        #[derive(Serialize)]
        struct Document<'a> {
            policies: &'a [PolicyConfig],
            #[serde(skip_serializing_if = "DangerousFunctionsConfig::is_default")]
            dangerous_functions: &'a DangerousFunctionsConfig,
        }
        serde_yaml::to_string(&Document {
            policies: &self.sources,
            dangerous_functions: &self.dangerous.config,
        })
        // Plain structs of strings and numbers always serialize; this is only a fallback.
        .unwrap_or_else(|e| format!("# the policies cannot be shown: {e}\n"))
    }

    /// What changed from `self` to `new`, by policy name: "added `a`; changed `b`; removed `c`".
    pub fn change_summary(&self, new: &PolicySet) -> String {
        fn find<'s>(set: &'s PolicySet, name: &str) -> Option<&'s PolicyConfig> {
            set.sources.iter().find(|p| p.name == name)
        }
        let mut added = Vec::new();
        let mut changed = Vec::new();
        for policy in &new.sources {
            match find(self, &policy.name) {
                None => added.push(format!("`{}`", policy.name)),
                Some(old) if old != policy => changed.push(format!("`{}`", policy.name)),
                Some(_) => {}
            }
        }
        let removed: Vec<String> = self
            .sources
            .iter()
            .filter(|p| find(new, &p.name).is_none())
            .map(|p| format!("`{}`", p.name))
            .collect();
        if self.dangerous.config != new.dangerous.config {
            changed.push("`dangerous_functions`".to_string());
        }
        let mut parts = Vec::new();
        for (what, list) in [("added", added), ("changed", changed), ("removed", removed)] {
            if !list.is_empty() {
                parts.push(format!("{what} {}", list.join(", ")));
            }
        }
        if parts.is_empty() && self.sources != new.sources {
            parts.push("reordered".into());
        }
        if parts.is_empty() {
            "no change".into()
        } else {
            parts.join("; ")
        }
    }

    /// In one line, what the policies that apply let `identity` do on `connection` (what
    /// they allow, hold for review and deny, and their default), or `None` when none applies.
    /// The most restrictive matching rule still wins: this only lists them.
    pub fn summary(&self, identity: &Identity, connection: &str) -> Option<String> {
        let lines: Vec<String> = self
            .policies
            .iter()
            .filter(|p| applies(p, identity, connection))
            .map(|p| {
                let (mut allows, mut holds, mut denies) = (Vec::new(), Vec::new(), Vec::new());
                for rule in &p.rules {
                    match &rule.action {
                        Action::Allow => allows.push(rule.describe()),
                        Action::RequireApproval(spec) => holds.push(format!(
                            "{} (reviewers: {})",
                            rule.describe(),
                            spec.reviewers.join(", ")
                        )),
                        Action::Deny { .. } => denies.push(rule.describe()),
                    }
                }
                let mut parts = Vec::new();
                for (verb, list) in [
                    ("allows", allows),
                    ("holds for approval", holds),
                    ("denies", denies),
                ] {
                    if !list.is_empty() {
                        parts.push(format!("{verb} {}", list.join(", ")));
                    }
                }
                let default = match p.default {
                    ActionName::Allow => "allowed",
                    _ => "denied",
                };
                parts.push(format!("anything else {default}"));
                format!("policy `{}`: {}", p.name, parts.join("; "))
            })
            .collect();
        (!lines.is_empty()).then(|| lines.join(" | "))
    }

    /// Whether any policy lets this identity use the connection at all.
    pub fn grants_connection(&self, identity: &Identity, connection: &str) -> bool {
        self.policies
            .iter()
            .any(|p| applies(p, identity, connection))
    }
}

fn compile_rule(
    r: &RuleConfig,
    policy_window: Option<Duration>,
) -> Result<CompiledRule, (&'static str, String)> {
    let matcher = if r.matches.trim() == "*" {
        KindMatcher::Any
    } else {
        let mut terms = Vec::new();
        for part in r.matches.split('|') {
            match KindTerm::parse(part) {
                Some(term) => terms.push(term),
                None => return Err(("match", unknown_kind_message(part))),
            }
        }
        KindMatcher::Kinds(terms)
    };
    let approval_fields = !r.reviewers.is_empty()
        || r.approvals.is_some()
        || r.timeout.is_some()
        || r.all_groups_must_approve
        || r.escalate_after.is_some()
        || !r.escalate_to.is_empty()
        || r.approval_window.is_some()
        || r.remind_after.is_some();
    let action = match r.action {
        ActionName::Allow | ActionName::Deny if approval_fields => {
            return Err((
                "action",
                "`reviewers`, `approvals`, `timeout`, `all_groups_must_approve`, \
                 `escalate_*`, `approval_window` and `remind_after` belong to \
                 `action: require-approval`"
                    .into(),
            ))
        }
        ActionName::Allow => Action::Allow,
        ActionName::Deny => Action::Deny {
            reason: r.reason.clone().unwrap_or_default(),
        },
        ActionName::RequireApproval => {
            if r.reviewers.is_empty() {
                return Err((
                    "reviewers",
                    "`action: require-approval` needs `reviewers` (the groups that may decide)"
                        .into(),
                ));
            }
            let approvals = r.approvals.unwrap_or(1);
            if approvals == 0 {
                return Err(("approvals", "`approvals` must be at least 1".into()));
            }
            let timeout = r.timeout.unwrap_or(DEFAULT_APPROVAL_TIMEOUT);
            if timeout.is_zero() {
                return Err(("timeout", "`timeout` must be longer than zero".into()));
            }
            check_escalation(r, timeout)?;
            let approval_window = r.approval_window.or(policy_window);
            if approval_window.is_some_and(|w| w.is_zero()) {
                return Err((
                    "approval_window",
                    "`approval_window` must be longer than zero".into(),
                ));
            }
            if r.remind_after
                .is_some_and(|after| after.is_zero() || after >= timeout)
            {
                return Err((
                    "remind_after",
                    "`remind_after` must be longer than zero and shorter than `timeout` (the \
                     request would expire before any reminder)"
                        .into(),
                ));
            }
            Action::RequireApproval(ApprovalSpec {
                approval_window,
                remind_after: r.remind_after,
                reviewers: r.reviewers.clone(),
                approvals,
                timeout,
                all_groups_must_approve: r.all_groups_must_approve,
                escalate_after: r.escalate_after,
                escalate_to: r.escalate_to.clone(),
            })
        }
    };
    Ok(CompiledRule {
        label: r
            .name
            .clone()
            .unwrap_or_else(|| format!("match: {}", r.matches.trim())),
        matcher,
        tables: Vec::new(),
        functions: Vec::new(),
        unfiltered_only: false,
        rows_limit: None,
        action,
    })
}

/// Why a `match` part names no kind: the kinds, and the finer kinds of the kind it starts
/// with, if any.
fn unknown_kind_message(part: &str) -> String {
    let text = normalize_name(part);
    let head = text.split(' ').next().unwrap_or_default();
    if let Some(kind) = StatementKind::from_name(head) {
        let details = kind.subkind_names();
        if !details.is_empty() {
            return format!(
                "unknown statement kind `{}`; {kind} is followed by one of: {}",
                part.trim(),
                details.join(", ")
            );
        }
    }
    let known: Vec<&str> = StatementKind::ALL.iter().map(|k| k.name()).collect();
    format!(
        "unknown statement kind `{}`; use `*` or kinds separated by `|`: {} (COPY, CREATE, \
         ALTER and DROP may be followed by a detail, such as `COPY TO PROGRAM` or `DROP TABLE`)",
        part.trim(),
        known.join(", ")
    )
}

/// `escalate_after` and `escalate_to` come together, and the escalation must come before the
/// request expires, or it could never widen anything.
fn check_escalation(r: &RuleConfig, timeout: Duration) -> Result<(), (&'static str, String)> {
    match (r.escalate_after, r.escalate_to.is_empty()) {
        (Some(_), true) => Err((
            "escalate_to",
            "`escalate_after` needs `escalate_to` (the groups that may then decide)".into(),
        )),
        (None, false) => Err((
            "escalate_after",
            "`escalate_to` needs `escalate_after` (when those groups may decide)".into(),
        )),
        (Some(after), false) if after.is_zero() || after >= timeout => Err((
            "escalate_after",
            "`escalate_after` must be longer than zero and shorter than `timeout` (the request \
             would expire before it escalates)"
                .into(),
        )),
        _ => Ok(()),
    }
}

/// Adds a rule's `tables`, `functions` and `where` to its compiled form, and to its label when
/// it has no name, so that a decision names exactly what matched.
fn compile_matchers(
    r: &RuleConfig,
    mut rule: CompiledRule,
) -> Result<CompiledRule, (&'static str, String)> {
    for (field, globs) in [("tables", &r.tables), ("functions", &r.functions)] {
        if globs.iter().any(|g| g.trim().is_empty()) {
            return Err((field, format!("`{field}` globs must not be empty")));
        }
    }
    let writes = match &rule.matcher {
        KindMatcher::Any => true,
        KindMatcher::Kinds(terms) => terms
            .iter()
            .any(|t| matches!(t.kind, StatementKind::Update | StatementKind::Delete)),
    };
    if r.rows_limit.is_some() && !writes {
        return Err((
            "rows_limit",
            "`rows_limit` applies to UPDATE and DELETE; `match` names neither".into(),
        ));
    }
    rule.rows_limit = r.rows_limit;
    if r.where_clause == Some(WhereCondition::Missing) {
        if !writes {
            return Err((
                "where",
                "`where: missing` applies to UPDATE and DELETE; `match` names neither".into(),
            ));
        }
        rule.unfiltered_only = true;
    }
    let lower = |globs: &[String]| -> Vec<String> {
        globs
            .iter()
            .map(|g| g.trim().to_ascii_lowercase())
            .collect()
    };
    rule.tables = lower(&r.tables);
    rule.functions = lower(&r.functions);
    if r.name.is_none() {
        if !rule.tables.is_empty() {
            rule.label += &format!(", tables: [{}]", rule.tables.join(", "));
        }
        if !rule.functions.is_empty() {
            rule.label += &format!(", functions: [{}]", rule.functions.join(", "));
        }
        if rule.unfiltered_only {
            rule.label += ", where: missing";
        }
        if let Some(limit) = rule.rows_limit {
            rule.label += &format!(", rows_limit: {limit}");
        }
    }
    Ok(rule)
}

fn applies(policy: &CompiledPolicy, identity: &Identity, connection: &str) -> bool {
    identity.in_any_group(&policy.groups)
        && policy
            .connections
            .iter()
            .any(|pattern| glob_match(pattern, connection))
}

/// `*` matches any run of characters, `?` any one character.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    // Every statement is matched against rule globs: ASCII (names, kinds) needs no copy.
    if pattern.is_ascii() && text.is_ascii() {
        return wildcard_match(pattern.as_bytes(), text.as_bytes());
    }
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    wildcard_match(&p, &t)
}

fn wildcard_match<C: Copy + PartialEq + From<u8>>(p: &[C], t: &[C]) -> bool {
    let (any_run, any_one) = (C::from(b'*'), C::from(b'?'));
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == any_one || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == any_run {
            star = Some(pi);
            pi += 1;
            mark = ti;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == any_run)
}

struct Candidate<'a> {
    action: Action,
    policy: Option<&'a str>,
    rule: Option<&'a str>,
}

fn kind_bit(kind: StatementKind) -> u64 {
    1 << kind as u32
}

fn stricter<'a>(current: Option<Candidate<'a>>, next: Candidate<'a>) -> Option<Candidate<'a>> {
    match current {
        Some(c) if c.action.severity() >= next.action.severity() => Some(c),
        _ => Some(next),
    }
}

/// Decides an operation with no row count: rules with `rows_limit` do not allow anything
/// (see [`decide_with_rows`]).
pub fn decide(set: &PolicySet, identity: &Identity, op: &Operation) -> Decision {
    decide_with_rows(set, identity, op, None)
}

/// Decides an operation. Most restrictive wins across statements, kinds and rules:
/// deny over require-approval over allow. Transaction control no rule names is allowed. Other
/// unmatched kinds and unparseable SQL take the applicable
/// policies' `default` (deny unless every applicable policy says allow).
///
/// `rows` is the exact number of rows the operation would change, counted by the caller just
/// before (the blast-radius preview); it is an input, so the decision stays a pure function.
/// A rule with `rows_limit` matches only when `rows` is at most its limit, and within its
/// policy it then takes the place of the rules without `rows_limit` (a small write escapes the
/// policy's require-approval rules), except that a deny still wins. Without a count, such a
/// rule does not match, unless it denies: a missing count never makes a decision milder.
pub fn decide_with_rows(
    set: &PolicySet,
    identity: &Identity,
    op: &Operation,
    rows: Option<u64>,
) -> Decision {
    let applicable: SmallVec<[&CompiledPolicy; 4]> = set
        .policies
        .iter()
        .filter(|p| applies(p, identity, &op.connection))
        .collect();
    if applicable.is_empty() {
        return Decision {
            action: Action::Deny {
                reason: format!(
                    "no policy lets {} use connection `{}`",
                    identity.name, op.connection
                ),
            },
            policy: None,
            rule: None,
            record: true,
            needs_rows: false,
        };
    }
    let record = applicable.iter().any(|p| p.record);
    let fallback = |what: String| -> Candidate {
        match applicable.iter().find(|p| p.default == ActionName::Deny) {
            Some(p) => Candidate {
                action: Action::Deny { reason: what },
                policy: Some(&p.name),
                rule: Some("default: deny"),
            },
            None => Candidate {
                action: Action::Allow,
                policy: Some(&applicable[0].name),
                rule: Some("default: allow"),
            },
        }
    };

    let mut verdict: Option<Candidate> = None;
    let mut needs_rows = false;
    match op.classification.as_ref() {
        Classification::Unparseable(error) => {
            verdict = stricter(
                verdict,
                fallback(format!("the statement could not be parsed: {error}")),
            );
        }
        Classification::Parsed(statements) => {
            if let Some(reason) = statements.iter().find_map(|s| s.forbidden.clone()) {
                return Decision {
                    action: Action::Deny { reason },
                    policy: None,
                    rule: Some("built-in: the server must read SQL as the gateway does".into()),
                    record,
                    needs_rows: false,
                };
            }
            for statement in statements {
                for &kind in set.kinds_of(statement).iter() {
                    let mut for_kind: Option<Candidate> = None;
                    for policy in &applicable {
                        let pick = policy_pick(policy, statement, kind, op, rows, &mut needs_rows);
                        if let Some(pick) = pick {
                            for_kind = stricter(for_kind, pick);
                        }
                    }
                    let for_kind = for_kind.unwrap_or_else(|| {
                        if kind == StatementKind::Transaction {
                            // BEGIN/COMMIT/ROLLBACK/SAVEPOINT change no data; drivers send them on
                            // their own. A rule that names TRANSACTION still decides them.
                            return Candidate {
                                action: Action::Allow,
                                policy: None,
                                rule: Some("implicit: transaction control"),
                            };
                        }
                        fallback(format!(
                            "no rule allows {kind} on connection `{}`",
                            op.connection
                        ))
                    });
                    verdict = stricter(verdict, for_kind);
                }
            }
        }
    }
    match verdict {
        Some(c) => Decision {
            action: c.action,
            policy: c.policy.map(str::to_string),
            rule: c.rule.map(str::to_string),
            record,
            needs_rows,
        },
        // An empty query (only whitespace or `;`) runs nothing.
        None => Decision {
            action: Action::Allow,
            policy: None,
            rule: None,
            record,
            needs_rows,
        },
    }
}

/// What one policy says of one kind of a statement: its strictest matching rule without
/// `rows_limit`, or the strictest with one that `rows` fits (a deny among the former still
/// wins). Sets `needs_rows` when a `rows_limit` rule could decide once the count is known.
fn policy_pick<'a>(
    policy: &'a CompiledPolicy,
    statement: &ClassifiedStatement,
    kind: StatementKind,
    op: &Operation,
    rows: Option<u64>,
    needs_rows: &mut bool,
) -> Option<Candidate<'a>> {
    let mut general: Option<Candidate> = None;
    let mut small: Option<Candidate> = None;
    for rule in &policy.rules {
        let hit = match &rule.matcher {
            KindMatcher::Any => true,
            KindMatcher::Kinds(terms) => terms.iter().any(|t| t.matches(kind, statement)),
        };
        if !hit || !rule.accepts(statement) {
            continue;
        }
        let candidate = Candidate {
            action: rule_action(rule, kind, &op.connection, &policy.name),
            policy: Some(&policy.name),
            rule: Some(&rule.label),
        };
        match (rule.rows_limit, rows) {
            (None, _) => general = stricter(general, candidate),
            (Some(limit), Some(rows)) if rows <= limit => small = stricter(small, candidate),
            (Some(_), Some(_)) => {}
            (Some(_), None) if matches!(candidate.action, Action::Deny { .. }) => {
                small = stricter(small, candidate)
            }
            (Some(_), None) => *needs_rows = true,
        }
    }
    match (small, general) {
        (Some(small), Some(general)) if matches!(general.action, Action::Deny { .. }) => {
            stricter(Some(small), general)
        }
        (Some(small), _) => Some(small),
        (None, general) => general,
    }
}

/// A matching rule's action, with a deny's default reason filled in.
fn rule_action(rule: &CompiledRule, kind: StatementKind, connection: &str, policy: &str) -> Action {
    let mut action = rule.action.clone();
    if let Action::Deny { reason } = &mut action {
        if reason.is_empty() {
            *reason = format!(
                "{kind}{} is denied on connection `{connection}` by policy `{policy}`",
                if rule.unfiltered_only {
                    " without WHERE"
                } else {
                    ""
                },
            );
        }
    }
    action
}

/// What the policy would decide for a member of `groups` running `sql` on `connection`, for
/// `airlock policy explain`: nothing runs and nothing is recorded.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Explanation {
    pub decision: Decision,
    pub statement_kinds: Vec<String>,
}

pub fn explain(
    set: &PolicySet,
    groups: Vec<String>,
    connection: &str,
    sql: &str,
    classification: std::sync::Arc<crate::classify::Classification>,
) -> Explanation {
    explain_with_rows(set, groups, connection, sql, classification, None)
}

/// [`explain`] as if the gateway had counted `rows` rows the operation would change (for
/// rules with `rows_limit`).
pub fn explain_with_rows(
    set: &PolicySet,
    groups: Vec<String>,
    connection: &str,
    sql: &str,
    classification: std::sync::Arc<crate::classify::Classification>,
    rows: Option<u64>,
) -> Explanation {
    let identity = Identity {
        subject: "explain".into(),
        name: format!("a member of [{}]", groups.join(", ")),
        groups,
        method: crate::identity::AuthMethod::AgentToken,
        expires_at: None,
    };
    let statement_kinds = set.kind_names(&classification);
    let op = Operation {
        connection: connection.to_string(),
        text: std::sync::Arc::from(sql),
        params: Vec::new(),
        classification,
    };
    Explanation {
        decision: decide_with_rows(set, &identity, &op, rows),
        statement_kinds,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::classify;
    use crate::config::Config;
    use crate::identity::AuthMethod;
    use std::sync::Arc;

    const POLICIES: &str = r#"
connections:
  - { name: prod, type: postgres, address: "db:5432", user: u }
  - { name: prod-replica, type: postgres, address: "db2:5432", user: u }
  - { name: staging, type: postgres, address: "db3:5432", user: u }
policies:
  - name: maintenance
    groups: [agents]
    connections: ["prod*"]
    rules:
      - match: SELECT
        action: allow
      - match: DELETE|DROP|UPDATE
        action: require-approval
        reviewers: [dba]
        approvals: 2
        timeout: 5m
      - name: no-truncate
        match: truncate
        action: deny
        reason: never truncate prod
  - name: lenient
    groups: [lenient]
    connections: [staging]
    default: allow
    rules:
      - match: DROP
        action: deny
"#;

    fn set() -> PolicySet {
        Config::parse(POLICIES, "t.yaml", None).unwrap().policies
    }

    fn who(groups: &[&str]) -> Identity {
        Identity {
            subject: "token:t1".into(),
            name: "agent-1".into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            method: AuthMethod::AgentToken,
            expires_at: None,
        }
    }

    fn decide_sql(groups: &[&str], connection: &str, sql: &str) -> Decision {
        let op = Operation {
            connection: connection.into(),
            text: Arc::from(sql),
            params: vec![],
            classification: Arc::new(classify(sql)),
        };
        decide(&set(), &who(groups), &op)
    }

    #[test]
    fn reads_pass_writes_wait_truncates_fail() {
        assert_eq!(
            decide_sql(&["agents"], "prod", "select 1").action,
            Action::Allow
        );
        let held = decide_sql(&["agents"], "prod", "delete from t");
        match held.action {
            Action::RequireApproval(spec) => {
                assert_eq!(spec.reviewers, vec!["dba"]);
                assert_eq!(spec.approvals, 2);
                assert_eq!(spec.timeout, Duration::from_secs(300));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(held.rule.as_deref(), Some("match: DELETE|DROP|UPDATE"));
        assert_eq!(held.policy.as_deref(), Some("maintenance"));
        let denied = decide_sql(&["agents"], "prod-replica", "TRUNCATE t");
        assert_eq!(
            denied.action,
            Action::Deny {
                reason: "never truncate prod".into()
            }
        );
        assert_eq!(denied.rule.as_deref(), Some("no-truncate"));
    }

    #[test]
    fn summary_lists_what_the_applicable_policies_allow_hold_and_deny() {
        assert_eq!(
            set().summary(&who(&["agents"]), "prod").as_deref(),
            Some(
                "policy `maintenance`: allows SELECT; holds for approval DELETE|DROP|UPDATE \
                 (reviewers: dba); denies TRUNCATE; anything else denied"
            )
        );
        assert_eq!(
            set().summary(&who(&["lenient"]), "staging").as_deref(),
            Some("policy `lenient`: denies DROP; anything else allowed")
        );
        assert_eq!(set().summary(&who(&["agents"]), "staging"), None);
    }

    #[test]
    fn most_restrictive_wins_across_statements() {
        assert!(matches!(
            decide_sql(&["agents"], "prod", "select 1; drop table t").action,
            Action::RequireApproval(_)
        ));
        assert!(matches!(
            decide_sql(&["agents"], "prod", "select 1; truncate t; delete from t").action,
            Action::Deny { .. }
        ));
        assert!(matches!(
            decide_sql(
                &["agents"],
                "prod",
                "/* hi */ with d as (delete from t returning *) select * from d"
            )
            .action,
            Action::RequireApproval(_)
        ));
    }

    #[test]
    fn fail_closed_without_rule_policy_or_parse() {
        let d = decide_sql(&["agents"], "prod", "insert into t values (1)");
        assert!(
            matches!(&d.action, Action::Deny { reason } if reason.contains("no rule allows INSERT"))
        );
        let d = decide_sql(&["agents"], "prod", "selec 1");
        assert!(
            matches!(&d.action, Action::Deny { reason } if reason.contains("could not be parsed"))
        );
        let d = decide_sql(&["agents"], "staging", "select 1");
        assert!(matches!(&d.action, Action::Deny { reason } if reason.contains("no policy")));
        let d = decide_sql(&["someone-else"], "prod", "select 1");
        assert!(matches!(d.action, Action::Deny { .. }));
    }

    #[test]
    fn statements_that_change_how_sql_is_read_are_refused_whatever_the_policy() {
        let d = decide_sql(
            &["lenient"],
            "staging",
            "set standard_conforming_strings = off",
        );
        assert!(
            matches!(&d.action, Action::Deny { reason } if reason.contains("standard_conforming_strings")),
            "{d:?}"
        );
        assert_eq!(
            d.rule.as_deref(),
            Some("built-in: the server must read SQL as the gateway does")
        );
    }

    #[test]
    fn a_policy_default_can_allow() {
        assert_eq!(
            decide_sql(&["lenient"], "staging", "insert into t values (1)").action,
            Action::Allow
        );
        assert_eq!(
            decide_sql(&["lenient"], "staging", "selec 1").action,
            Action::Allow
        );
        assert!(matches!(
            decide_sql(&["lenient"], "staging", "drop table t").action,
            Action::Deny { .. }
        ));
    }

    #[test]
    fn transaction_control_is_implicitly_allowed_unless_a_rule_names_it() {
        let d = decide_sql(&["agents"], "prod", "begin");
        assert_eq!(d.action, Action::Allow);
        assert_eq!(d.rule.as_deref(), Some("implicit: transaction control"));
        assert!(matches!(
            decide_sql(&["agents"], "prod", "begin; delete from t; commit").action,
            Action::RequireApproval(_)
        ));
        assert!(matches!(
            decide_sql(&["someone"], "prod", "begin").action,
            Action::Deny { .. }
        ));
    }

    #[test]
    fn empty_queries_are_allowed_when_the_connection_is_granted() {
        assert_eq!(decide_sql(&["agents"], "prod", " ; ").action, Action::Allow);
    }

    const MATCHERS: &str = r#"
connections:
  - { name: prod, type: postgres, address: "db:5432", user: u }
policies:
  - name: guarded
    groups: [agents]
    connections: [prod]
    rules:
      - match: SELECT|INSERT|UPDATE|DELETE
        action: allow
      - match: FUNCTION
        action: deny
      - match: DELETE|UPDATE
        where: missing
        action: deny
      - match: DELETE
        tables: [items]
        action: require-approval
        reviewers: [dba]
      - match: "*"
        tables: ["secret.*"]
        action: deny
        reason: no secrets
      - match: SELECT
        functions: [pg_sleep]
        action: require-approval
        reviewers: [dba]
"#;

    fn decide_with(text: &str, sql: &str) -> Decision {
        let set = Config::parse(text, "m.yaml", None).unwrap().policies;
        let op = Operation {
            connection: "prod".into(),
            text: Arc::from(sql),
            params: vec![],
            classification: Arc::new(classify(sql)),
        };
        decide(&set, &who(&["agents"]), &op)
    }

    fn outcome(sql: &str) -> (&'static str, Option<String>) {
        let d = decide_with(MATCHERS, sql);
        (d.action.name(), d.rule)
    }

    #[test]
    fn matchers_beyond_kind_combine_with_kinds() {
        let rule = |r: &str| Some(r.to_string());
        assert_eq!(
            outcome("select * from items"),
            ("allow", rule("match: SELECT|INSERT|UPDATE|DELETE"))
        );
        for sql in [
            "select pg_terminate_backend(1)",
            "select * from t where id = pg_catalog.pg_read_file('x')::int",
            "select nextval('s')",
        ] {
            assert_eq!(outcome(sql), ("deny", rule("match: FUNCTION")), "{sql}");
        }
        let unfiltered = rule("match: DELETE|UPDATE, where: missing");
        for sql in [
            "delete from t",
            "update t set a = 1",
            "with d as (delete from t returning *) select * from d",
        ] {
            assert_eq!(outcome(sql), ("deny", unfiltered.clone()), "{sql}");
        }
        let d = decide_with(MATCHERS, "delete from t");
        assert!(
            matches!(&d.action, Action::Deny { reason } if reason.contains("DELETE without WHERE")),
            "{d:?}"
        );
        assert_eq!(outcome("delete from t where id = 1").0, "allow");
        assert_eq!(outcome("update items set a = 1 where id = 1").0, "allow");
        let held = rule("match: DELETE, tables: [items]");
        for sql in [
            "delete from items where id = 1",
            "DELETE FROM public.Items WHERE id = 1",
            "delete from other where id in (select id from items)",
        ] {
            assert_eq!(outcome(sql), ("require-approval", held.clone()), "{sql}");
        }
        // Only the statement that touches the table is held by the table rule.
        assert_eq!(
            outcome("select * from items; delete from t where id = 1").0,
            "allow"
        );
        assert_eq!(outcome("delete from items").0, "deny");
        assert_eq!(outcome("select * from secret.keys").0, "deny");
        assert_eq!(outcome("select * from keys").0, "allow");
        let sleepy = rule("match: SELECT, functions: [pg_sleep]");
        assert_eq!(
            outcome("select pg_sleep(1)"),
            ("require-approval", sleepy.clone())
        );
        assert_eq!(
            outcome("select PG_CATALOG.PG_SLEEP(1)"),
            ("require-approval", sleepy)
        );
        // A `functions` rule names calls, not kinds: INSERT is not SELECT.
        assert_eq!(outcome("insert into t values (pg_sleep(1))").0, "allow");
    }

    #[test]
    fn matcher_errors_name_their_line() {
        let base = "connections:\n  - { name: prod, type: postgres, address: \"db:5432\", user: u }\npolicies:\n  - name: p\n    groups: [g]\n    connections: [prod]\n    rules:\n      - match: SELECT\n        action: deny\n";
        let err = |extra: &str| {
            Config::parse(&format!("{base}{extra}"), "c.yaml", None)
                .unwrap_err()
                .to_string()
        };
        let shown = err("        where: missing\n");
        assert!(
            shown.contains("c.yaml:10: policies[0].rules[0].where: `where: missing` applies to UPDATE and DELETE"),
            "{shown}"
        );
        let shown = err("        tables: [a, \"\"]\n");
        assert!(
            shown.contains("c.yaml:10: policies[0].rules[0].tables"),
            "{shown}"
        );
        let shown = err("        functions: [\" \"]\n");
        assert!(
            shown.contains("c.yaml:10: policies[0].rules[0].functions"),
            "{shown}"
        );
        let shown = err("        where: required\n");
        assert!(
            shown.contains("c.yaml:10:") && shown.contains("missing"),
            "{shown}"
        );
        // Written matchers survive the round trip through the shown form.
        let set = Config::parse(MATCHERS, "m.yaml", None).unwrap().policies;
        let again = Config::parse(
            &format!("connections:\n  - {{ name: prod, type: postgres, address: \"db:5432\", user: u }}\n{}", set.to_yaml()),
            "m.yaml",
            None,
        )
        .unwrap()
        .policies;
        assert_eq!(set.change_summary(&again), "no change");
        assert!(
            set.to_yaml().contains("where: missing"),
            "{}",
            set.to_yaml()
        );
    }

    const FINER: &str = r#"
connections:
  - { name: prod, type: postgres, address: "db:5432", user: u }
dangerous_functions:
  add: ["app.purge_*"]
  remove: [nextval]
policies:
  - name: finer
    groups: [agents]
    connections: [prod]
    rules:
      - match: SELECT|DROP|COPY|SET|CREATE INDEX
        action: allow
      - match: DROP TABLE|COPY PROGRAM
        action: deny
      - match: COPY FILE
        action: require-approval
        reviewers: [dba]
      - match: "*"
        tables: [public.secrets]
        action: deny
"#;

    #[test]
    fn finer_kinds_narrow_a_rule_and_the_kind_alone_catches_them_all() {
        let d = |sql: &str| decide_with(FINER, sql).action.name();
        assert_eq!(d("drop index i"), "allow");
        assert_eq!(d("drop view v"), "allow");
        assert_eq!(d("drop table t"), "deny");
        assert_eq!(d("drop table if exists t, u cascade"), "deny");
        assert_eq!(d("copy items to stdout"), "allow");
        assert_eq!(d("copy items to program 'id'"), "deny");
        assert_eq!(d("copy items from '/etc/passwd'"), "require-approval");
        assert_eq!(d("create index on t (a)"), "allow");
        assert_eq!(d("create table t (a int)"), "deny");
        // SET does not cover a change of role.
        assert_eq!(d("set search_path = app"), "allow");
        assert_eq!(d("set role postgres"), "deny");
        // Unqualified names are found in `public`.
        assert_eq!(d("select * from secrets"), "deny");
        assert_eq!(d("select * from public.secrets"), "deny");
        assert_eq!(d("drop index public.secrets"), "deny");
        assert_eq!(d("select * from other.secrets"), "allow");
        // The policy's own function list: nextval taken out, app.purge_* added.
        assert_eq!(d("select nextval('s')"), "allow");
        assert_eq!(d("select setval('s', 1)"), "deny");
        assert_eq!(d("select app.purge_all()"), "deny");
        assert_eq!(d("select other.purge_all()"), "allow");
        let set = Config::parse(FINER, "f.yaml", None).unwrap().policies;
        let names = set.kind_names(&classify("select nextval('s'); drop table t"));
        assert_eq!(names, vec!["SELECT", "DROP", "DROP TABLE"]);
        assert!(set.to_yaml().contains("purge_*"), "{}", set.to_yaml());
    }

    #[test]
    fn unknown_finer_kinds_and_function_entries_are_refused_with_their_line() {
        let base = "connections:\n  - { name: prod, type: postgres, address: \"db:5432\", user: u }\npolicies:\n  - name: p\n    groups: [g]\n    connections: [prod]\n    rules:\n      - match: DROP TABL\n        action: deny\n";
        let shown = Config::parse(base, "c.yaml", None).unwrap_err().to_string();
        assert!(
            shown.contains("c.yaml:8:") && shown.contains("DROP is followed by one of"),
            "{shown}"
        );
        let text = format!(
            "dangerous_functions:\n  remove: [lower]\n{}",
            base.replace("DROP TABL", "DROP TABLE")
        );
        let shown = Config::parse(&text, "c.yaml", None)
            .unwrap_err()
            .to_string();
        assert!(
            shown.contains("c.yaml:2:") && shown.contains("not on the built-in list"),
            "{shown}"
        );
    }

    #[test]
    fn globs() {
        assert!(glob_match("prod*", "prod"));
        assert!(glob_match("prod*", "prod-replica"));
        assert!(glob_match("*", "x"));
        assert!(glob_match("p?od", "prod"));
        assert!(!glob_match("prod", "prod-replica"));
        assert!(!glob_match("*-db", "prod-dbx"));
        // `?` is one character, not one byte.
        assert!(glob_match("caf?", "café"));
        assert!(glob_match("*é", "résumé"));
        assert!(!glob_match("caf??", "café"));
    }

    #[test]
    fn changes_are_summarised_by_policy_name() {
        let old = set();
        let text = POLICIES
            .replace("reason: never truncate prod", "reason: not on prod")
            .replace("name: lenient", "name: relaxed");
        let new = Config::parse(&text, "t.yaml", None).unwrap().policies;
        assert_eq!(
            old.change_summary(&new),
            "added `relaxed`; changed `maintenance`; removed `lenient`"
        );
        assert_eq!(old.change_summary(&old.clone()), "no change");
        let mut reordered = old.configs().to_vec();
        reordered.reverse();
        let reordered = PolicySet::compile(&reordered).unwrap();
        assert_eq!(old.change_summary(&reordered), "reordered");
    }

    #[test]
    fn chains_and_escalation_compile_into_the_spec_and_are_checked() {
        let base = "connections:\n  - { name: prod, type: postgres, address: \"db:5432\", user: u }\npolicies:\n  - name: p\n    groups: [agents]\n    connections: [prod]\n    rules:\n      - match: DELETE\n        action: require-approval\n        reviewers: [dba, security]\n        timeout: 15m\n";
        let parse = |extra: &str| Config::parse(&format!("{base}{extra}"), "c.yaml", None);
        let set = parse("        all_groups_must_approve: true\n        escalate_after: 10m\n        escalate_to: [oncall]\n")
            .unwrap()
            .policies;
        let op = Operation {
            connection: "prod".into(),
            text: Arc::from("delete from t"),
            params: vec![],
            classification: Arc::new(classify("delete from t")),
        };
        let Action::RequireApproval(spec) = decide(&set, &who(&["agents"]), &op).action else {
            panic!("held");
        };
        assert!(spec.all_groups_must_approve);
        assert_eq!(spec.escalate_after, Some(Duration::from_secs(600)));
        assert_eq!(spec.escalate_to, vec!["oncall".to_string()]);
        // The keys survive the round trip through the shown form.
        assert!(
            set.to_yaml().contains("escalate_after: 10m"),
            "{}",
            set.to_yaml()
        );
        assert!(set.to_yaml().contains("all_groups_must_approve: true"));

        let err = |extra: &str| parse(extra).unwrap_err().to_string();
        let shown = err("        escalate_after: 10m\n");
        assert!(
            shown.contains("rules[0].escalate_to: `escalate_after` needs `escalate_to`"),
            "{shown}"
        );
        let shown = err("        escalate_to: [oncall]\n");
        assert!(
            shown.contains("rules[0].escalate_after: `escalate_to` needs"),
            "{shown}"
        );
        let shown = err("        escalate_after: 20m\n        escalate_to: [oncall]\n");
        assert!(shown.contains("shorter than `timeout`"), "{shown}");
        let denied = base.replace(
            "action: require-approval\n        reviewers: [dba, security]\n        timeout: 15m\n",
            "action: deny\n        all_groups_must_approve: true\n",
        );
        let shown = Config::parse(&denied, "c.yaml", None)
            .unwrap_err()
            .to_string();
        assert!(
            shown.contains("belong to `action: require-approval`"),
            "{shown}"
        );
    }

    const ROWS: &str = r#"
connections:
  - { name: prod, type: postgres, address: "db:5432", user: u }
policies:
  - name: p
    groups: [agents]
    connections: [prod]
    approval_window: 10m
    rules:
      - match: SELECT
        action: allow
      - match: DELETE|UPDATE
        rows_limit: 100
        action: allow
      - match: DELETE|UPDATE
        action: require-approval
        reviewers: [dba]
        remind_after: 5m
      - match: DELETE
        tables: [audit*]
        action: deny
"#;

    fn decide_rows(sql: &str, rows: Option<u64>) -> Decision {
        let set = Config::parse(ROWS, "r.yaml", None).unwrap().policies;
        let op = Operation {
            connection: "prod".into(),
            text: Arc::from(sql),
            params: vec![],
            classification: Arc::new(classify(sql)),
        };
        decide_with_rows(&set, &who(&["agents"]), &op, rows)
    }

    #[test]
    fn rows_limit_lets_counted_small_writes_through_and_never_overrides_a_deny() {
        let unknown = decide_rows("delete from items where id = 1", None);
        assert_eq!(unknown.action.name(), "require-approval");
        assert!(unknown.needs_rows, "the gate must count and decide again");
        let small = decide_rows("delete from items where id = 1", Some(100));
        assert_eq!(small.action, Action::Allow);
        assert_eq!(
            small.rule.as_deref(),
            Some("match: DELETE|UPDATE, rows_limit: 100")
        );
        assert!(!small.needs_rows);
        let large = decide_rows("delete from items where id > 1", Some(101));
        assert_eq!(large.action.name(), "require-approval");
        // A deny stays a deny, however few rows.
        let audit = decide_rows("delete from audit_log where id = 1", Some(1));
        assert_eq!(audit.action.name(), "deny");
        // Every statement of the operation must qualify (the count is their total).
        let mixed = decide_rows("delete from items where id = 1; drop table items", Some(1));
        assert_eq!(
            mixed.action.name(),
            "deny",
            "DROP has no rule: default deny"
        );
        // Reads are not held back waiting for a count.
        assert!(!decide_rows("select 1", None).needs_rows);
    }

    #[test]
    fn rows_limit_without_a_count_never_makes_a_decision_milder() {
        let text = ROWS.replace(
            "      - match: DELETE|UPDATE\n        rows_limit: 100\n        action: allow\n",
            "      - match: DELETE\n        rows_limit: 5\n        action: deny\n        reason: small deletes go through the app\n",
        );
        let set = Config::parse(&text, "r.yaml", None).unwrap().policies;
        let decide_it = |rows| {
            let sql = "delete from items where id = 1";
            let op = Operation {
                connection: "prod".into(),
                text: Arc::from(sql),
                params: vec![],
                classification: Arc::new(classify(sql)),
            };
            decide_with_rows(&set, &who(&["agents"]), &op, rows).action
        };
        assert_eq!(decide_it(None).name(), "deny");
        assert_eq!(decide_it(Some(3)).name(), "deny");
        assert_eq!(decide_it(Some(6)).name(), "require-approval");
    }

    #[test]
    fn approval_window_and_reminders_compile_into_the_spec_and_are_checked() {
        let Action::RequireApproval(spec) = decide_rows("update items set a = 1", None).action
        else {
            panic!("held");
        };
        assert_eq!(spec.approval_window, Some(Duration::from_secs(600)));
        assert_eq!(spec.remind_after, Some(Duration::from_secs(300)));
        let set = Config::parse(ROWS, "r.yaml", None).unwrap().policies;
        assert!(set.to_yaml().contains("approval_window: 10m"));
        assert!(set.to_yaml().contains("rows_limit: 100"));

        let err = |from: &str, to: &str| {
            Config::parse(&ROWS.replace(from, to), "r.yaml", None)
                .unwrap_err()
                .to_string()
        };
        let shown = err("remind_after: 5m", "remind_after: 15m");
        assert!(shown.contains("rules[2].remind_after"), "{shown}");
        let shown = err("approval_window: 10m", "approval_window: 0s");
        assert!(shown.contains("approval_window"), "{shown}");
        let shown = err(
            "      - match: SELECT\n        action: allow\n",
            "      - match: SELECT\n        rows_limit: 3\n        action: allow\n",
        );
        assert!(shown.contains("rules[0].rows_limit"), "{shown}");
        let shown = err(
            "      - match: SELECT\n        action: allow\n",
            "      - match: SELECT\n        action: allow\n        remind_after: 1m\n",
        );
        assert!(
            shown.contains("belong to `action: require-approval`"),
            "{shown}"
        );
    }
}
