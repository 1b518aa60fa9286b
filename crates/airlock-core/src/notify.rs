//! Webhook notifications about approval requests (`notify:` in the config): the payloads
//! (`json`, a versioned object; `slack`, Block Kit; `teams`, an Adaptive Card) and the
//! [`Notifier`] that delivers them off the hot path. Each webhook has its own bounded queue and
//! background task that POSTs with retries and exponential backoff; every attempt is recorded
//! in the store, so a notifier that is down is visible in `airlock approvals show` and never
//! delays or loses the request itself.

use crate::secret::Secret;
use crate::store::{now_millis, ApprovalRecord, ApprovalState, NewDelivery, Store};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// The version of the `json` payload; bumped on any incompatible change.
pub const PAYLOAD_VERSION: u32 = 1;
/// Attempts per notification and webhook before it is given up (each one recorded).
const ATTEMPTS: u32 = 5;
/// The wait before the first retry; doubled after each failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(8);
/// How long one POST may take, so a webhook that hangs cannot stall its queue for long.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Notifications waiting per webhook; beyond it new ones are dropped (and logged) rather than
/// slowing down the statement that caused them.
const QUEUE: usize = 256;
/// Longest statement text put into chat messages (Slack refuses sections over 3000 chars).
const CHAT_STATEMENT_MAX: usize = 2500;

/// One `notify:` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// The address to POST to; a secret (Slack and Teams URLs carry their credential), so it is
    /// only ever shown in its [`redact`]ed form.
    pub webhook: Secret<String>,
    #[serde(default)]
    pub format: WebhookFormat,
    #[serde(default = "all_events")]
    pub events: Vec<NotifyEvent>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    #[default]
    Json,
    Slack,
    Teams,
}

impl WebhookFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookFormat::Json => "json",
            WebhookFormat::Slack => "slack",
            WebhookFormat::Teams => "teams",
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NotifyEvent {
    Requested,
    Decided,
    Expired,
    Canceled,
    /// A pending request reached its `escalate_after`: its escalation groups may now decide.
    Escalated,
    /// A request is still pending after its rule's `remind_after` (and every such period).
    Reminder,
}

impl NotifyEvent {
    /// The event a request in `state` announces.
    pub fn of(state: ApprovalState) -> NotifyEvent {
        match state {
            ApprovalState::Pending => NotifyEvent::Requested,
            ApprovalState::Approved | ApprovalState::Denied => NotifyEvent::Decided,
            ApprovalState::Expired => NotifyEvent::Expired,
            ApprovalState::Canceled => NotifyEvent::Canceled,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            NotifyEvent::Requested => "requested",
            NotifyEvent::Decided => "decided",
            NotifyEvent::Expired => "expired",
            NotifyEvent::Canceled => "canceled",
            NotifyEvent::Escalated => "escalated",
            NotifyEvent::Reminder => "reminder",
        }
    }
}

fn all_events() -> Vec<NotifyEvent> {
    vec![
        NotifyEvent::Requested,
        NotifyEvent::Decided,
        NotifyEvent::Expired,
        NotifyEvent::Canceled,
        NotifyEvent::Escalated,
        NotifyEvent::Reminder,
    ]
}

/// Checks an (expanded) webhook address. Messages never quote it: it is a secret.
pub fn check_webhook_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("the webhook is not a URL ({e})"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "webhook scheme `{}` is not supported; use https (or http)",
            parsed.scheme()
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("the webhook URL names no host".into());
    }
    Ok(())
}

/// What may be shown of a webhook address: scheme, host and port only, since the path and
/// query of Slack and Teams webhooks are their credential.
pub fn redact(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => match (u.host_str(), u.port()) {
            (Some(host), Some(port)) => format!("{}://{host}:{port}/…", u.scheme()),
            (Some(host), None) => format!("{}://{host}/…", u.scheme()),
            _ => "<webhook>".into(),
        },
        Err(_) => "<webhook>".into(),
    }
}

/// The links a notification carries to act on the request.
fn links(record: &ApprovalRecord, server: &str) -> (String, String) {
    (
        format!("airlock approve {}", record.id),
        format!(
            "{}/api/v1/approvals/{}",
            server.trim_end_matches('/'),
            record.id
        ),
    )
}

/// The `json` payload (version [`PAYLOAD_VERSION`]).
pub fn json_payload(event: NotifyEvent, record: &ApprovalRecord, server: &str) -> Value {
    let q = &record.request;
    let (approve_cli, api) = links(record, server);
    json!({
        "version": PAYLOAD_VERSION,
        "event": event.as_str(),
        "request": {
            "id": record.id,
            "connection": q.connection,
            "protocol": q.protocol,
            "requester": {
                "subject": q.requester_subject,
                "name": q.requester_name,
                "groups": q.requester_groups,
            },
            "operation": q.operation,
            "params": q.params,
            "statement_kinds": q.statement_kinds,
            "policy": q.policy,
            "rule": q.rule,
            "reviewers": q.reviewers,
            "approvals_needed": q.approvals_needed,
            "all_groups_must_approve": q.all_groups_must_approve,
            "escalate_at": q.escalate_at,
            "escalate_to": q.escalate_to,
            "preview": q.preview,
            "approval_window_ms": q.approval_window_ms,
            "created_at": q.created_at,
            "expires_at": q.expires_at,
            "state": record.state.as_str(),
            "decided_at": record.decided_at,
            "reason": record.reason,
            "replacement": record.replacement,
            "claimed_at": record.claimed_at,
            "votes": record.votes.iter().map(|v| json!({
                "reviewer_subject": v.reviewer_subject,
                "reviewer_name": v.reviewer_name,
                "approve": v.approve,
                "reason": v.reason,
                "at": v.at,
            })).collect::<Vec<_>>(),
        },
        "links": { "approve_cli": approve_cli, "api": api },
    })
}

/// The one-line headline of a notification, shared by the chat formats.
fn headline(event: NotifyEvent, record: &ApprovalRecord) -> String {
    let id = record.id;
    match event {
        NotifyEvent::Requested => format!("Approval request {id} is waiting for review"),
        NotifyEvent::Decided => {
            let by = record
                .votes
                .last()
                .map(|v| v.reviewer_name.as_str())
                .unwrap_or("a reviewer");
            format!(
                "Approval request {id} was {} by {by}",
                record.state.as_str()
            )
        }
        NotifyEvent::Expired => format!("Approval request {id} expired without a decision"),
        NotifyEvent::Canceled => format!("Approval request {id} was withdrawn"),
        NotifyEvent::Escalated => format!(
            "Approval request {id} was escalated to {}",
            record.request.escalate_to.join(", ")
        ),
        NotifyEvent::Reminder => {
            format!("Reminder: approval request {id} is still waiting for review")
        }
    }
}

/// The statement as chat messages show it: cut to a size every chat tool accepts.
fn chat_statement(record: &ApprovalRecord) -> String {
    let text = &record.request.operation;
    match text.char_indices().nth(CHAT_STATEMENT_MAX) {
        Some((cut, _)) => format!("{}… (cut; see the request)", &text[..cut]),
        None => text.clone(),
    }
}

/// The "what now" line: how to act on a pending request, or why it ended.
fn next_step(event: NotifyEvent, record: &ApprovalRecord, approve_cli: &str) -> String {
    match event {
        NotifyEvent::Requested | NotifyEvent::Reminder => format!(
            "Approve: {approve_cli} · Deny: airlock deny {} --reason TEXT (reviewers: {})",
            record.id,
            record.request.reviewers.join(", ")
        ),
        NotifyEvent::Escalated => format!(
            "Approve: {approve_cli} · Deny: airlock deny {} --reason TEXT (reviewers: {})",
            record.id,
            record
                .request
                .reviewers
                .iter()
                .chain(&record.request.escalate_to)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ),
        _ => format!(
            "Reason: {}",
            record.reason.as_deref().unwrap_or("no reason given")
        ),
    }
}

/// The blast-radius preview as chat messages show it.
fn chat_preview(record: &ApprovalRecord) -> String {
    match &record.request.preview {
        Some(preview) if !preview.impacts.is_empty() => preview.describe(),
        _ => "not computed for this operation".into(),
    }
}

/// Escapes the three characters Slack's mrkdwn gives a meaning to.
fn mrkdwn(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The `slack` payload: a Block Kit message for an incoming webhook.
pub fn slack_payload(event: NotifyEvent, record: &ApprovalRecord, server: &str) -> Value {
    let q = &record.request;
    let (approve_cli, api) = links(record, server);
    let title = headline(event, record);
    let field = |name: &str, value: String| json!({ "type": "mrkdwn", "text": format!("*{name}*\n{}", mrkdwn(&value)) });
    json!({
        "text": format!("{title}: {} on {} by {}", q.statement_kinds.join(", "), q.connection, q.requester_name),
        "blocks": [
            { "type": "header", "text": { "type": "plain_text", "text": title } },
            { "type": "section", "fields": [
                field("Who", format!("{} ({})", q.requester_name, q.requester_subject)),
                field("Connection", format!("{} ({})", q.connection, q.protocol)),
                field("Kinds", q.statement_kinds.join(", ")),
                field("State", record.state.as_str().to_string()),
            ] },
            { "type": "section", "text": { "type": "mrkdwn",
                "text": format!("```{}```", mrkdwn(&chat_statement(record))) } },
            { "type": "section", "text": { "type": "mrkdwn",
                "text": format!("*Blast radius*\n{}", mrkdwn(&chat_preview(record))) } },
            { "type": "section", "text": { "type": "mrkdwn",
                "text": mrkdwn(&next_step(event, record, &approve_cli)) } },
            { "type": "context", "elements": [ { "type": "mrkdwn", "text": mrkdwn(&format!("API: {api}")) } ] },
        ],
    })
}

/// The `teams` payload: an Adaptive Card in the `message` envelope Teams webhooks expect.
pub fn teams_payload(event: NotifyEvent, record: &ApprovalRecord, server: &str) -> Value {
    let q = &record.request;
    let (approve_cli, api) = links(record, server);
    let fact = |title: &str, value: String| json!({ "title": title, "value": value });
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "body": [
                    { "type": "TextBlock", "size": "Large", "weight": "Bolder", "wrap": true,
                      "text": headline(event, record) },
                    { "type": "FactSet", "facts": [
                        fact("Who", format!("{} ({})", q.requester_name, q.requester_subject)),
                        fact("Connection", format!("{} ({})", q.connection, q.protocol)),
                        fact("Kinds", q.statement_kinds.join(", ")),
                        fact("State", record.state.as_str().to_string()),
                    ] },
                    { "type": "TextBlock", "fontType": "Monospace", "wrap": true,
                      "text": chat_statement(record) },
                    { "type": "FactSet", "facts": [ fact("Blast radius", chat_preview(record)) ] },
                    { "type": "TextBlock", "wrap": true, "text": next_step(event, record, &approve_cli) },
                ],
                "actions": [ { "type": "Action.OpenUrl", "title": "Open the request (API)", "url": api } ],
            },
        }],
    })
}

/// A notification waiting in a webhook's queue.
struct Job {
    event: NotifyEvent,
    record: Arc<ApprovalRecord>,
}

/// One webhook's end of the notifier: which events it wants and its queue.
#[derive(Clone)]
struct Outlet {
    index: usize,
    target: String,
    events: Vec<NotifyEvent>,
    queue: mpsc::Sender<Arc<Job>>,
}

/// Sends notifications; cheap to clone. With no webhooks configured it does nothing.
#[derive(Clone, Default)]
pub struct Notifier {
    outlets: Vec<Outlet>,
}

impl Notifier {
    /// A notifier that sends nothing.
    pub fn disabled() -> Notifier {
        Notifier::default()
    }

    /// Starts one delivery task per webhook (must run inside a Tokio runtime). `server` is the
    /// API's base URL, for the links in the payloads.
    pub fn start(webhooks: &[WebhookConfig], store: Arc<dyn Store>, server: &str) -> Notifier {
        let client = match reqwest::Client::builder().timeout(ATTEMPT_TIMEOUT).build() {
            Ok(client) => client,
            Err(e) => {
                tracing::error!(error = %e, "cannot build the webhook client; notifications are off");
                return Notifier::disabled();
            }
        };
        let outlets = webhooks
            .iter()
            .enumerate()
            .map(|(index, hook)| {
                let (queue, jobs) = mpsc::channel(QUEUE);
                let target = redact(hook.webhook.expose());
                tokio::spawn(
                    Delivery {
                        index,
                        url: hook.webhook.clone(),
                        target: target.clone(),
                        format: hook.format,
                        client: client.clone(),
                        store: store.clone(),
                        server: server.to_string(),
                    }
                    .run(jobs),
                );
                Outlet {
                    index,
                    target,
                    events: hook.events.clone(),
                    queue,
                }
            })
            .collect();
        Notifier { outlets }
    }

    /// Announces `record` as it now stands (its state says which event) to every webhook that
    /// wants that event. Never waits: a full queue drops the notification with a warning.
    pub fn announce(&self, record: &ApprovalRecord) {
        self.send(NotifyEvent::of(record.state), record);
    }

    /// Reminds reviewers of a request still pending.
    pub fn announce_reminder(&self, record: &ApprovalRecord) {
        self.send(NotifyEvent::Reminder, record);
    }

    /// Announces that a pending request escalated to its `escalate_to` groups.
    pub fn announce_escalation(&self, record: &ApprovalRecord) {
        self.send(NotifyEvent::Escalated, record);
    }

    fn send(&self, event: NotifyEvent, record: &ApprovalRecord) {
        let mut job = None;
        for outlet in self.outlets.iter().filter(|o| o.events.contains(&event)) {
            let job = job
                .get_or_insert_with(|| {
                    Arc::new(Job {
                        event,
                        record: Arc::new(record.clone()),
                    })
                })
                .clone();
            if outlet.queue.try_send(job).is_err() {
                tracing::warn!(
                    request = record.id,
                    webhook = outlet.index,
                    target = %outlet.target,
                    event = event.as_str(),
                    "webhook queue full or closed; notification dropped"
                );
            }
        }
    }
}

/// The task that delivers one webhook's notifications, in order.
struct Delivery {
    index: usize,
    url: Secret<String>,
    target: String,
    format: WebhookFormat,
    client: reqwest::Client,
    store: Arc<dyn Store>,
    server: String,
}

impl Delivery {
    async fn run(self, mut jobs: mpsc::Receiver<Arc<Job>>) {
        while let Some(job) = jobs.recv().await {
            self.deliver(&job).await;
        }
    }

    async fn deliver(&self, job: &Job) {
        let record = &job.record;
        let body = match self.format {
            WebhookFormat::Json => json_payload(job.event, record, &self.server),
            WebhookFormat::Slack => slack_payload(job.event, record, &self.server),
            WebhookFormat::Teams => teams_payload(job.event, record, &self.server),
        };
        let mut backoff = FIRST_BACKOFF;
        for attempt in 1..=ATTEMPTS {
            let (status, error) = match self
                .client
                .post(self.url.expose().as_str())
                .json(&body)
                .send()
                .await
            {
                Ok(response) => (Some(response.status()), None),
                Err(e) => (None, Some(describe(e))),
            };
            let delivered = status.is_some_and(|s| s.is_success());
            self.record(
                job,
                attempt,
                status.map(|s| s.as_u16()),
                error.clone(),
                delivered,
            )
            .await;
            if delivered {
                return;
            }
            // A client error other than a timeout or rate limit will not go away by itself.
            let hopeless = status.is_some_and(|s| {
                s.is_client_error()
                    && s != reqwest::StatusCode::REQUEST_TIMEOUT
                    && s != reqwest::StatusCode::TOO_MANY_REQUESTS
            });
            tracing::warn!(
                request = record.id,
                webhook = self.index,
                target = %self.target,
                attempt,
                status = status.map(|s| s.as_u16()),
                error = error.as_deref().unwrap_or(""),
                "webhook delivery failed"
            );
            if hopeless || attempt == ATTEMPTS {
                tracing::error!(
                    request = record.id,
                    webhook = self.index,
                    target = %self.target,
                    event = job.event.as_str(),
                    "giving up on a webhook notification"
                );
                return;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn record(
        &self,
        job: &Job,
        attempt: u32,
        status: Option<u16>,
        error: Option<String>,
        delivered: bool,
    ) {
        let delivery = NewDelivery {
            request_id: job.record.id,
            event: job.event.as_str().into(),
            webhook: self.index as i64,
            target: self.target.clone(),
            format: self.format.as_str().into(),
            attempt: i64::from(attempt),
            at: now_millis(),
            status_code: status.map(i64::from),
            error,
            delivered,
        };
        if let Err(e) = self.store.record_delivery(&delivery).await {
            tracing::error!(request = job.record.id, error = %e, "could not record a webhook delivery attempt");
        }
    }
}

/// A transport error as recorded: its causes, without the URL (a secret) reqwest would print.
fn describe(e: reqwest::Error) -> String {
    if e.is_timeout() {
        return format!(
            "timed out after {}",
            humantime::format_duration(ATTEMPT_TIMEOUT)
        );
    }
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::{NewApproval, Vote};

    fn record(state: ApprovalState) -> ApprovalRecord {
        ApprovalRecord {
            id: 7,
            request: NewApproval {
                session_id: 3,
                requester_subject: "tok-1".into(),
                requester_name: "agent-1".into(),
                requester_groups: vec!["agents".into()],
                connection: "prod".into(),
                protocol: "postgres".into(),
                operation: "DELETE FROM items WHERE id < 3".into(),
                params: vec![Some("x".into()), None],
                statement_kinds: vec!["DELETE".into()],
                policy: "p".into(),
                rule: "match: DELETE".into(),
                reviewers: vec!["dba".into()],
                approvals_needed: 1,
                created_at: 1000,
                expires_at: 2000,
                all_groups_must_approve: false,
                escalate_at: None,
                escalate_to: Vec::new(),
                preview: None,
                approval_window_ms: None,
                remind_after_ms: None,
            },
            state,
            decided_at: (state != ApprovalState::Pending).then_some(1500),
            reason: (state == ApprovalState::Approved).then(|| "ticket OPS-42".into()),
            votes: if state == ApprovalState::Approved {
                vec![Vote {
                    reviewer_subject: "tok-2".into(),
                    reviewer_name: "alice".into(),
                    reviewer_groups: vec!["dba".into()],
                    approve: true,
                    reason: Some("ticket OPS-42".into()),
                    at: 1500,
                    replacement: None,
                }]
            } else {
                Vec::new()
            },
            replacement: None,
            claimed_at: None,
            claimed_by_session: None,
        }
    }

    #[test]
    fn json_payload_is_versioned_and_complete() {
        let r = record(ApprovalState::Pending);
        let v = json_payload(NotifyEvent::of(r.state), &r, "http://127.0.0.1:8700/");
        assert_eq!(v["version"], 1);
        assert_eq!(v["event"], "requested");
        let q = &v["request"];
        assert_eq!(q["id"], 7);
        assert_eq!(q["operation"], "DELETE FROM items WHERE id < 3");
        assert_eq!(
            q["requester"],
            json!({"subject": "tok-1", "name": "agent-1", "groups": ["agents"]})
        );
        assert_eq!(q["params"], json!(["x", null]));
        assert_eq!(q["statement_kinds"], json!(["DELETE"]));
        assert_eq!(q["approvals_needed"], 1);
        assert_eq!(q["state"], "pending");
        assert_eq!(q["votes"], json!([]));
        assert_eq!(
            v["links"],
            json!({"approve_cli": "airlock approve 7", "api": "http://127.0.0.1:8700/api/v1/approvals/7"})
        );

        let r = record(ApprovalState::Approved);
        let v = json_payload(NotifyEvent::of(r.state), &r, "http://h");
        assert_eq!(v["event"], "decided");
        assert_eq!(v["request"]["state"], "approved");
        assert_eq!(v["request"]["reason"], "ticket OPS-42");
        assert_eq!(v["request"]["votes"][0]["reviewer_name"], "alice");
        assert_eq!(v["request"]["votes"][0]["approve"], true);
    }

    #[test]
    fn slack_payload_is_block_kit() {
        let r = record(ApprovalState::Pending);
        let v = slack_payload(NotifyEvent::Requested, &r, "http://h");
        let blocks = v["blocks"].as_array().unwrap();
        assert_eq!(blocks[0]["type"], "header");
        assert_eq!(blocks[0]["text"]["type"], "plain_text");
        let fields = blocks[1]["fields"].as_array().unwrap();
        assert!(fields[0]["text"].as_str().unwrap().contains("agent-1"));
        assert!(fields[1]["text"].as_str().unwrap().contains("prod"));
        assert!(fields[2]["text"].as_str().unwrap().contains("DELETE"));
        // mrkdwn escapes `<`, so Slack shows the statement exactly.
        assert_eq!(
            blocks[2]["text"]["text"],
            "```DELETE FROM items WHERE id &lt; 3```"
        );
        assert_eq!(
            blocks[3]["text"]["text"],
            "*Blast radius*\nnot computed for this operation"
        );
        assert!(blocks[4]["text"]["text"]
            .as_str()
            .unwrap()
            .contains("airlock approve 7"));
        assert!(v["text"].as_str().unwrap().contains("waiting for review"));

        let r = record(ApprovalState::Approved);
        let v = slack_payload(NotifyEvent::Decided, &r, "http://h");
        assert_eq!(
            v["blocks"][0]["text"]["text"],
            "Approval request 7 was approved by alice"
        );
    }

    #[test]
    fn teams_payload_is_an_adaptive_card_in_a_message() {
        let r = record(ApprovalState::Pending);
        let v = teams_payload(NotifyEvent::Requested, &r, "http://h");
        assert_eq!(v["type"], "message");
        let attachment = &v["attachments"][0];
        assert_eq!(
            attachment["contentType"],
            "application/vnd.microsoft.card.adaptive"
        );
        let card = &attachment["content"];
        assert_eq!(card["type"], "AdaptiveCard");
        assert_eq!(card["body"][1]["type"], "FactSet");
        assert_eq!(card["body"][1]["facts"][0]["value"], "agent-1 (tok-1)");
        assert_eq!(card["body"][2]["fontType"], "Monospace");
        assert_eq!(card["body"][2]["text"], "DELETE FROM items WHERE id < 3");
        assert_eq!(card["actions"][0]["url"], "http://h/api/v1/approvals/7");
    }

    #[test]
    fn long_statements_are_cut_in_chat_but_not_in_json() {
        let mut r = record(ApprovalState::Pending);
        r.request.operation = "x".repeat(CHAT_STATEMENT_MAX + 10);
        assert!(chat_statement(&r).ends_with("(cut; see the request)"));
        let v = json_payload(NotifyEvent::Requested, &r, "http://h");
        assert_eq!(
            v["request"]["operation"].as_str().unwrap().len(),
            CHAT_STATEMENT_MAX + 10
        );
    }

    #[test]
    fn webhook_addresses_are_checked_and_redacted() {
        let slack = "https://hooks.slack.com/services/T000/B000/XXXX";
        assert!(check_webhook_url(slack).is_ok());
        assert!(check_webhook_url("http://127.0.0.1:9/hook").is_ok());
        let err = check_webhook_url("ftp://files.example.com/secret").unwrap_err();
        assert!(!err.contains("secret"), "{err}");
        assert!(check_webhook_url("not a url").is_err());
        assert_eq!(redact(slack), "https://hooks.slack.com/…");
        assert_eq!(
            redact("http://127.0.0.1:9/hook?k=v"),
            "http://127.0.0.1:9/…"
        );
        assert_eq!(redact("::"), "<webhook>");
    }
}
