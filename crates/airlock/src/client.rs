//! The CLI's HTTP client for the Airlock API: finds the token (flag, env, or the bootstrap
//! admin token file), sends authenticated requests, and turns every failure into one clear
//! line: an unreachable server, or the API's own `error` message with its HTTP status.

use crate::cli::{Cli, DEFAULT_TOKEN_FILE};
use anyhow::{anyhow, bail, Context};
use reqwest::{Method, RequestBuilder, Response, Url};
use serde::Serialize;
use serde_json::Value;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Long enough for a slow store; exports stream and are exempt.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Client {
    http: reqwest::Client,
    base: Url,
    server: String,
    token: String,
}

/// The token from `--token` / `AIRLOCK_TOKEN`, else from `./airlock-data/admin.token`.
fn find_token(given: Option<&str>) -> anyhow::Result<String> {
    if let Some(token) = given.map(str::trim).filter(|t| !t.is_empty()) {
        return Ok(token.to_string());
    }
    let path = Path::new(DEFAULT_TOKEN_FILE);
    if path.exists() {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the token file ./{DEFAULT_TOKEN_FILE}"))?;
        let token = text.trim();
        if token.is_empty() {
            bail!("the token file ./{DEFAULT_TOKEN_FILE} is empty");
        }
        return Ok(token.to_string());
    }
    bail!(
        "no API token: pass --token, set AIRLOCK_TOKEN, or run from the directory where \
         `airlock serve` wrote {DEFAULT_TOKEN_FILE}"
    )
}

/// The most specific description of why a connection failed, from the innermost I/O error.
fn root_cause(e: &reqwest::Error) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    let mut last = e.to_string();
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
                std::io::ErrorKind::TimedOut => "timed out".into(),
                _ => io.to_string(),
            };
        }
        last = s.to_string();
        source = s.source();
    }
    last
}

impl Client {
    pub fn new(cli: &Cli) -> anyhow::Result<Client> {
        let server = cli.server.trim().trim_end_matches('/').to_string();
        let base = Url::parse(&format!("{server}/"))
            .map_err(|e| anyhow!("invalid --server URL `{server}`: {e}"))?;
        if !matches!(base.scheme(), "http" | "https") {
            bail!("invalid --server URL `{server}`: use http:// or https://");
        }
        let token = find_token(cli.token.as_deref())?;
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("airlock-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot set up the HTTP client")?;
        Ok(Client {
            http,
            base,
            server,
            token,
        })
    }

    fn request(&self, method: Method, path: &str) -> anyhow::Result<RequestBuilder> {
        let url = self
            .base
            .join(path.trim_start_matches('/'))
            .map_err(|e| anyhow!("invalid API path {path}: {e}"))?;
        Ok(self.http.request(method, url).bearer_auth(&self.token))
    }

    /// Sends, and turns transport failures and non-2xx answers into one-line errors.
    async fn send(&self, request: RequestBuilder) -> anyhow::Result<Response> {
        let response = self.transmit(request).await?;
        Self::check(response).await
    }

    /// Sends, turning only transport failures into one-line errors.
    async fn transmit(&self, request: RequestBuilder) -> anyhow::Result<Response> {
        request.send().await.map_err(|e| {
            if e.is_connect() {
                anyhow!(
                    "cannot reach the Airlock server at {}: {}",
                    self.server,
                    root_cause(&e)
                )
            } else if e.is_timeout() {
                anyhow!(
                    "the Airlock server at {} did not answer in time",
                    self.server
                )
            } else {
                anyhow!(
                    "request to the Airlock server at {} failed: {}",
                    self.server,
                    root_cause(&e)
                )
            }
        })
    }

    /// Passes a 2xx answer on and turns any other into a one-line error.
    async fn check(response: Response) -> anyhow::Result<Response> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let text = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_else(|| {
                let text = text.trim();
                if text.is_empty() || text.len() > 300 {
                    "the server gave no explanation".to_string()
                } else {
                    text.to_string()
                }
            });
        bail!("{message} (HTTP {status})")
    }

    async fn json(&self, request: RequestBuilder) -> anyhow::Result<Value> {
        let response = self.send(request.timeout(REQUEST_TIMEOUT)).await?;
        response.json().await.with_context(|| {
            format!(
                "the Airlock server at {} sent an unreadable answer",
                self.server
            )
        })
    }

    pub async fn get(&self, path: &str, query: &[(&str, String)]) -> anyhow::Result<Value> {
        self.json(self.request(Method::GET, path)?.query(query))
            .await
    }

    pub async fn post(&self, path: &str, body: &impl Serialize) -> anyhow::Result<Value> {
        self.json(self.request(Method::POST, path)?.json(body))
            .await
    }

    /// PUTs a text document (YAML) as the body.
    pub async fn put_text(&self, path: &str, body: String) -> anyhow::Result<Value> {
        let request = self
            .request(Method::PUT, path)?
            .header(reqwest::header::CONTENT_TYPE, "application/yaml")
            .body(body);
        self.json(request).await
    }

    pub async fn delete(&self, path: &str) -> anyhow::Result<Value> {
        self.json(self.request(Method::DELETE, path)?).await
    }

    /// Calls an exec route, whose answers carry a `status` (`ok`, `denied`, `pending`, …)
    /// whatever their HTTP status: such an answer is returned as it is, any other failure is
    /// an error. `timeout` bounds the call, which may wait for a decision on the server.
    pub async fn exec_answer(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
        timeout: Duration,
    ) -> anyhow::Result<Value> {
        let mut request = self.request(method, path)?.query(query).timeout(timeout);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = self.transmit(request).await?;
        let status = response.status();
        let text = response.text().await.with_context(|| {
            format!(
                "the answer from the Airlock server at {} broke off",
                self.server
            )
        })?;
        // Denials (403) and upstream failures (502, 503) come with such an answer too.
        match serde_json::from_str::<Value>(&text) {
            Ok(value) if value.get("status").is_some_and(Value::is_string) => Ok(value),
            Ok(value) if status.is_success() => Ok(value),
            _ => {
                let message = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
                    .unwrap_or_else(|| "the server gave no explanation".to_string());
                bail!("{message} (HTTP {status})")
            }
        }
    }

    /// Copies a streamed answer to `out` as it arrives, so a large export never sits in memory.
    pub async fn download(
        &self,
        path: &str,
        query: &[(&str, String)],
        out: &mut impl Write,
    ) -> anyhow::Result<()> {
        let mut response = self
            .send(self.request(Method::GET, path)?.query(query))
            .await?;
        while let Some(chunk) = response.chunk().await.map_err(|e| {
            anyhow!(
                "the download from {} broke off: {}; the output is incomplete",
                self.server,
                root_cause(&e)
            )
        })? {
            out.write_all(&chunk).context("cannot write the output")?;
        }
        out.flush().context("cannot write the output")
    }
}
