//! End-to-end harness: a throwaway PostgreSQL server ([`PgServer`]) and an Airlock gateway
//! ([`Gateway`]) on free loopback ports in temporary directories, driven by real clients: the
//! `psql` binary, the `airlock` CLI, `tokio-postgres` and raw sockets.
//!
//! Every test starts its own servers, so tests run in parallel without sharing state. Waits are
//! polling loops with deadlines; every child process is stopped when its handle is dropped.

// Test code: a failed expectation is a failed test, with its message.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Map, Value};
use std::collections::HashSet;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tempfile::TempDir;

/// How long any single client command may take before the test fails instead of hanging.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(90);
/// How long to wait for something asynchronous (a request to appear, a client to finish).
pub const WAIT: Duration = Duration::from_secs(30);

/// The env variable the template config reads the upstream password from.
pub const PASSWORD_ENV: &str = "AIRLOCK_TEST_UPSTREAM_PASSWORD";

// ---------------------------------------------------------------------------------------------
// Small utilities
// ---------------------------------------------------------------------------------------------

/// A string nobody else will produce: time, pid and a counter.
pub fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // A cheap mix so the digits do not look sequential.
    let mut x = (nanos as u64) ^ ((std::process::id() as u64) << 32) ^ n.wrapping_mul(0x9E37_79B9);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    format!("{x:016x}")
}

/// A loopback port nothing listens on right now, never handed out twice by this process.
pub fn free_port() -> u16 {
    static HANDED_OUT: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let handed = HANDED_OUT.get_or_init(|| Mutex::new(HashSet::new()));
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral loopback port");
        let port = listener.local_addr().expect("local address").port();
        drop(listener);
        if handed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(port)
        {
            return port;
        }
    }
}

pub fn is_root() -> bool {
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

fn postgres_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("run `id`");
        assert!(
            out.status.success(),
            "running as root, but there is no `postgres` user to run PostgreSQL as (install the \
             `postgresql` package; scripts/test.sh does)"
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("numeric id")
    };
    (id("-u"), id("-g"))
}

/// Runs a command with stdin closed, collecting its output; fails the test if it takes longer
/// than `timeout` (the process is killed first).
pub fn run_with_timeout(mut cmd: Command, timeout: Duration, what: &str) -> Output {
    cmd.stdin(Stdio::null());
    run_with_timeout_stdin(cmd, timeout, what)
}

/// [`run_with_timeout`] for a command whose stdin is already set up.
pub fn run_with_timeout_stdin(mut cmd: Command, timeout: Duration, what: &str) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    match status {
        Some(status) => Output {
            status,
            stdout,
            stderr,
        },
        None => panic!(
            "{what} did not finish within {timeout:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        ),
    }
}

pub fn stdout_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// stdout and stderr together, for messages and for "never contains" checks.
pub fn all_output(out: &Output) -> String {
    format!("{}{}", stdout_of(out), stderr_of(out))
}

/// `out` succeeded; its stdout.
pub fn assert_ok(out: &Output, what: &str) -> String {
    assert!(out.status.success(), "{what} failed: {}", describe(out));
    stdout_of(out)
}

/// `out` failed, and its output mentions every one of `needles`.
pub fn assert_fails_with(out: &Output, what: &str, needles: &[&str]) {
    assert!(
        !out.status.success(),
        "{what} should have failed: {}",
        describe(out)
    );
    let text = all_output(out);
    for needle in needles {
        assert!(
            text.contains(needle),
            "{what}: expected {needle:?} in the output: {}",
            describe(out)
        );
    }
}

pub fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status.code(),
        stdout_of(out),
        stderr_of(out)
    )
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_until<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// The last `lines` lines of a text, for failure messages.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Whether `needle` occurs anywhere in `haystack`, byte for byte.
pub fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// A minimal HTTP GET on the loopback; the status code, or `None` if nothing answered.
pub fn http_status(port: u16, path: &str) -> Option<u16> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .set_write_timeout(Some(Duration::from_secs(5)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while head.len() < 256 {
        match stream.read(&mut byte) {
            Ok(1) if byte[0] == b'\n' => break,
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    let line = String::from_utf8_lossy(&head);
    line.split_whitespace().nth(1)?.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// JSON helpers: tolerant of how the CLI wraps its output
// ---------------------------------------------------------------------------------------------

/// Every object in a JSON tree, outermost first.
pub fn json_objects(value: &Value) -> Vec<&Map<String, Value>> {
    let mut found = Vec::new();
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        match v {
            Value::Object(map) => {
                found.push(map);
                stack.extend(map.values().rev());
            }
            Value::Array(items) => stack.extend(items.iter().rev()),
            _ => {}
        }
    }
    found
}

/// An id as text, whether the JSON has it as a number or a string.
pub fn id_text(value: &Value) -> Option<String> {
    match value {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

/// The approval requests in a JSON document: objects with an `id` and a `state`.
pub fn approval_objects(doc: &Value) -> Vec<&Map<String, Value>> {
    json_objects(doc)
        .into_iter()
        .filter(|o| o.get("id").and_then(id_text).is_some() && o.get("state").is_some())
        .collect()
}

/// Whether one of the object's own string fields is exactly `text` (ignoring surrounding space).
pub fn has_field_equal(object: &Map<String, Value>, text: &str) -> bool {
    object
        .values()
        .any(|v| v.as_str().map(|s| s.trim() == text.trim()).unwrap_or(false))
}

pub fn state_of(object: &Map<String, Value>) -> String {
    object
        .get("state")
        .and_then(|s| s.as_str())
        .unwrap_or("")
        .to_string()
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------------------------

/// How the throwaway server authenticates TCP clients (the gateway, upstream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamAuth {
    ScramSha256,
    Md5,
    Trust,
}

impl UpstreamAuth {
    fn hba_method(self) -> &'static str {
        match self {
            UpstreamAuth::ScramSha256 => "scram-sha-256",
            UpstreamAuth::Md5 => "md5",
            UpstreamAuth::Trust => "trust",
        }
    }
}

/// The directory of the highest installed PostgreSQL server version.
pub fn pg_bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let mut found: Vec<(Vec<u32>, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let version: Vec<u32> = entry
                    .file_name()
                    .to_string_lossy()
                    .split('.')
                    .map(|p| p.parse().ok())
                    .collect::<Option<Vec<u32>>>()?;
                let bin = entry.path().join("bin");
                ["initdb", "pg_ctl", "postgres"]
                    .iter()
                    .all(|b| bin.join(b).is_file())
                    .then_some((version, bin))
            })
            .collect();
        found.sort();
        found
            .pop()
            .map(|(_, bin)| bin)
            .expect(
                "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found under \
                 /usr/lib/postgresql/*/bin: install the `postgresql` package (scripts/test.sh does)",
            )
    })
}

/// A PostgreSQL server of its own, in a temporary directory, on a free loopback port, with a
/// role `app_owner` (password [`PgServer::password`]) owning database `app` and its table
/// `items(id int primary key, name text)` holding (1,'alpha'), (2,'beta'), (3,'gamma'), and a
/// function `shout()` that raises the NOTICE "upstream says hi" and returns 1.
pub struct PgServer {
    dir: TempDir,
    data: PathBuf,
    port: u16,
    password: String,
    auth: UpstreamAuth,
    as_postgres: bool,
    running: bool,
}

impl PgServer {
    pub fn start(auth: UpstreamAuth) -> PgServer {
        let as_postgres = is_root();
        let dir = tempfile::Builder::new()
            .prefix("airlock-pg-")
            .tempdir_in("/tmp")
            .expect("create a temporary directory for PostgreSQL");
        if as_postgres {
            let (uid, gid) = postgres_ids();
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .expect("chown the PostgreSQL directory to `postgres`");
        }
        let data = dir.path().join("data");
        let mut server = PgServer {
            dir,
            data,
            port: 0,
            password: format!("Upstr3am-S3cret-{}", unique_suffix()),
            auth,
            as_postgres,
            running: false,
        };
        server.initdb();
        server.start_on_a_free_port();
        server.create_app();
        server
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn password(&self) -> &str {
        &self.password
    }

    pub fn auth(&self) -> UpstreamAuth {
        self.auth
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn command(&self, program: &str) -> Command {
        let path = pg_bin_dir().join(program);
        if self.as_postgres {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(path);
            cmd
        } else {
            Command::new(path)
        }
    }

    fn initdb(&self) {
        let mut cmd = self.command("initdb");
        cmd.arg("-D")
            .arg(&self.data)
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8"])
            .args(["--locale=C", "--no-sync"]);
        let out = run_with_timeout(cmd, COMMAND_TIMEOUT, "initdb");
        assert!(out.status.success(), "initdb failed: {}", describe(&out));

        let conf = format!(
            "\n# airlock tests\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{dir}'\n\
             fsync = off\nfull_page_writes = off\n\
             max_connections = 40\nshared_buffers = 16MB\nmax_wal_size = 64MB\n\
             password_encryption = '{enc}'\nlog_connections = off\n",
            dir = self.dir.path().display(),
            enc = if self.auth == UpstreamAuth::Md5 {
                "md5"
            } else {
                "scram-sha-256"
            }
        );
        append(&self.data.join("postgresql.conf"), &conf);
        let hba = format!(
            "local all all trust\nhost all all 127.0.0.1/32 {}\n",
            self.auth.hba_method()
        );
        fs::write(self.data.join("pg_hba.conf"), hba).expect("write pg_hba.conf");
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    fn pg_ctl_start(&self) -> Output {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(self.log_path())
            .args(["-w", "-t", "60", "-s", "start"]);
        run_with_timeout(cmd, COMMAND_TIMEOUT, "pg_ctl start")
    }

    fn start_on_a_free_port(&mut self) {
        for _attempt in 0..5 {
            self.port = free_port();
            append(
                &self.data.join("postgresql.conf"),
                &format!("port = {}\n", self.port),
            );
            let out = self.pg_ctl_start();
            if out.status.success() {
                self.running = true;
                return;
            }
            let log = fs::read_to_string(self.log_path()).unwrap_or_default();
            if !log.contains("already in use") {
                panic!(
                    "PostgreSQL did not start: {}\n--- postgres.log ---\n{}",
                    describe(&out),
                    tail(&log, 30)
                );
            }
        }
        panic!("PostgreSQL found no free port in 5 attempts");
    }

    fn create_app(&self) {
        let password = self.password.replace('\'', "''");
        self.psql_as(
            "postgres",
            "postgres",
            &[
                &format!("CREATE ROLE app_owner LOGIN PASSWORD '{password}'"),
                "CREATE DATABASE app OWNER app_owner",
            ],
        );
        self.psql_as(
            "app_owner",
            "app",
            &[
                "CREATE TABLE items (id int PRIMARY KEY, name text)",
                "INSERT INTO items VALUES (1, 'alpha'), (2, 'beta'), (3, 'gamma')",
                // A read that makes the upstream send a NOTICE, for pass-through tests. STABLE:
                // the gateway judges a VOLATILE user function as a possible write.
                "CREATE FUNCTION shout() RETURNS int LANGUAGE plpgsql STABLE AS \
                 $$ BEGIN RAISE NOTICE 'upstream says hi'; RETURN 1; END $$",
            ],
        );
    }

    /// Runs statements (each its own `-c`) over the local socket; panics on failure.
    fn psql_as(&self, user: &str, db: &str, statements: &[&str]) -> String {
        let mut cmd = Command::new("psql");
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .arg("-h")
            .arg(self.dir.path())
            .args(["-p", &self.port.to_string(), "-U", user, "-d", db]);
        for statement in statements {
            cmd.args(["-c", statement]);
        }
        let out = run_with_timeout(cmd, COMMAND_TIMEOUT, "psql (admin)");
        assert!(
            out.status.success(),
            "admin psql {statements:?} failed: {}",
            describe(&out)
        );
        stdout_of(&out).trim().to_string()
    }

    /// One SQL string as the superuser in database `app`, over the local socket: the upstream's
    /// own view, for assertions. Returns the trimmed unaligned output.
    pub fn psql_admin(&self, sql: &str) -> String {
        self.psql_as("postgres", "app", &[sql])
    }

    /// The ids left in `items`, in order, e.g. "1,2,3".
    pub fn item_ids(&self) -> String {
        self.psql_admin("SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM items")
    }

    /// Stops the server at once (like a crash).
    pub fn kill(&mut self) {
        if !self.running {
            return;
        }
        let mut cmd = self.command("pg_ctl");
        cmd.arg("-D")
            .arg(&self.data)
            .args(["-w", "-t", "60", "-s", "-m", "immediate", "stop"]);
        let out = run_with_timeout(cmd, COMMAND_TIMEOUT, "pg_ctl stop");
        assert!(
            out.status.success(),
            "pg_ctl stop failed: {}",
            describe(&out)
        );
        self.running = false;
    }

    /// Starts a killed server again, on the same port and data.
    pub fn restart(&mut self) {
        assert!(!self.running, "restart() of a running server");
        let out = self.pg_ctl_start();
        assert!(
            out.status.success(),
            "PostgreSQL did not restart: {}\n--- postgres.log ---\n{}",
            describe(&out),
            tail(&fs::read_to_string(self.log_path()).unwrap_or_default(), 30)
        );
        self.running = true;
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if self.running {
            let mut cmd = self.command("pg_ctl");
            cmd.arg("-D")
                .arg(&self.data)
                .args(["-w", "-t", "30", "-s", "-m", "immediate", "stop"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let _ = cmd.status();
        }
    }
}

fn append(path: &Path, text: &str) {
    let mut file = fs::OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    file.write_all(text.as_bytes())
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

// ---------------------------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------------------------

/// One upstream PostgreSQL connection's YAML (list item under `connections:`).
pub fn connection_yaml(name: &str, port: u16, password_expr: &str) -> String {
    format!(
        "  - name: {name}\n    type: postgres\n    address: 127.0.0.1:{port}\n    database: app\n    \
         user: app_owner\n    password: {password_expr}\n"
    )
}

/// The policy of the test story for group `agents` on `connections`: reads run, DELETE / DROP /
/// UPDATE wait for one reviewer of `dba` (`timeout`), TRUNCATE is denied, transactions run,
/// everything else (INSERT, unparseable SQL) is denied by default. A second policy lets group
/// `loaders` run SELECT and COPY.
pub fn policy_yaml(connections: &[&str], timeout: &str) -> String {
    policy_yaml_with(connections, timeout, 1)
}

/// [`policy_yaml`] with `approvals` distinct reviewers needed.
pub fn policy_yaml_with(connections: &[&str], timeout: &str, approvals: u32) -> String {
    let connections = connections.join(", ");
    format!(
        "policies:\n  - name: agents-on-prod\n    groups: [agents]\n    connections: [{connections}]\n    rules:\n      \
         - match: SELECT\n        action: allow\n      \
         - match: TRANSACTION\n        action: allow\n      \
         - match: DELETE|DROP|UPDATE\n        action: require-approval\n        reviewers: [dba]\n        \
         approvals: {approvals}\n        timeout: {timeout}\n      \
         - match: TRUNCATE\n        action: deny\n        reason: {TRUNCATE_REASON}\n    record: true\n  \
         - name: loaders\n    groups: [loaders]\n    connections: [{connections}]\n    rules:\n      \
         - match: SELECT|COPY\n        action: allow\n    record: true\n",
    )
}

/// The reason the template's TRUNCATE rule gives.
pub const TRUNCATE_REASON: &str = "TRUNCATE is never allowed on prod";

/// The template config: connection `prod` to `pg` (password from [`PASSWORD_ENV`]) and
/// [`policy_yaml`]. `listen`, `store` and `secret_key_file` are added by [`Gateway::start`].
pub fn template_config(pg: &PgServer, timeout: &str) -> String {
    template_config_with(pg, timeout, 1)
}

/// [`template_config`] with `approvals` distinct reviewers needed for held statements.
pub fn template_config_with(pg: &PgServer, timeout: &str, approvals: u32) -> String {
    format!(
        "connections:\n{}{}",
        connection_yaml("prod", pg.port(), &format!("${{env:{PASSWORD_ENV}}}")),
        policy_yaml_with(&["prod"], timeout, approvals)
    )
}

// ---------------------------------------------------------------------------------------------
// Gateway
// ---------------------------------------------------------------------------------------------

/// A token minted through the CLI.
#[derive(Debug, Clone)]
pub struct Minted {
    pub id: String,
    pub token: String,
    pub name: String,
}

/// An `airlock serve` of its own, with a config in a temporary directory.
pub struct Gateway {
    dir: TempDir,
    child: Child,
    pub api_port: u16,
    pub pg_port: u16,
    pub admin_token: String,
    config_path: PathBuf,
    log_path: PathBuf,
    env: Vec<(String, String)>,
}

/// `airlock serve` on `config_path` in `dir`, its output in `log_path`, with `env` added.
fn serve_command<K: AsRef<str>, V: AsRef<str>>(
    dir: &Path,
    config_path: &Path,
    log_path: &Path,
    env: &[(K, V)],
) -> Command {
    let log = fs::File::create(log_path).expect("create the gateway log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_airlock"));
    cmd.arg("serve")
        .arg("--config")
        .arg(config_path)
        .current_dir(dir)
        .env_remove("AIRLOCK_SERVER")
        .env_remove("AIRLOCK_TOKEN")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone log handle"))
        .stderr(log);
    for (key, value) in env {
        cmd.env(key.as_ref(), value.as_ref());
    }
    cmd
}

impl Gateway {
    /// Starts the gateway with the template config for `pg` (approval timeout `timeout`).
    pub fn for_pg(pg: &PgServer, timeout: &str) -> Gateway {
        Gateway::for_pg_config(pg, &template_config(pg, timeout))
    }

    /// Starts the gateway with `yaml`, which reads `pg`'s password from [`PASSWORD_ENV`].
    pub fn for_pg_config(pg: &PgServer, yaml: &str) -> Gateway {
        Gateway::start_with_env(yaml, &[(PASSWORD_ENV, pg.password())])
    }

    pub fn start(yaml: &str) -> Gateway {
        Gateway::start_with_env(yaml, &[])
    }

    /// Writes `yaml` (plus `listen`, `store` and `secret_key_file`) and runs `airlock serve`
    /// with `env` added to its environment, until `/readyz` answers 200.
    pub fn start_with_env(yaml: &str, env: &[(&str, &str)]) -> Gateway {
        let dir = tempfile::Builder::new()
            .prefix("airlock-gw-")
            .tempdir_in("/tmp")
            .expect("create a temporary directory for the gateway");
        let data = dir.path().join("data");
        fs::create_dir_all(&data).expect("create the data directory");
        let config_path = dir.path().join("airlock.yaml");
        let mut last_log = String::new();
        for attempt in 0..3 {
            let api_port = free_port();
            let pg_port = free_port();
            let config = format!(
                "listen:\n  api: 127.0.0.1:{api_port}\n  postgres: 127.0.0.1:{pg_port}\n  \
                 mysql: 127.0.0.1:{}\n  ssh: 127.0.0.1:{}\n  http: 127.0.0.1:{}\n\
                 store: sqlite://{data}/airlock.db\nsecret_key_file: {data}/secret.key\n{yaml}",
                free_port(),
                free_port(),
                free_port(),
                data = data.display(),
            );
            fs::write(&config_path, config).expect("write the gateway config");
            let log_path = dir.path().join(format!("gateway-{attempt}.log"));
            let mut child = serve_command(dir.path(), &config_path, &log_path, env)
                .spawn()
                .expect("start `airlock serve`");
            let deadline = Instant::now() + WAIT;
            let ready = loop {
                if let Ok(Some(status)) = child.try_wait() {
                    break Err(format!("`airlock serve` exited with {status}"));
                }
                if http_status(api_port, "/readyz") == Some(200) {
                    break Ok(());
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break Err(format!("`/readyz` did not answer 200 within {WAIT:?}"));
                }
                thread::sleep(Duration::from_millis(100));
            };
            last_log = fs::read_to_string(&log_path).unwrap_or_default();
            match ready {
                Ok(()) => {
                    let token_file = data.join("admin.token");
                    let admin_token = wait_until(
                        Duration::from_secs(10),
                        "the bootstrap admin token in data/admin.token",
                        || {
                            fs::read_to_string(&token_file)
                                .ok()
                                .map(|t| t.trim().to_string())
                                .filter(|t| !t.is_empty())
                        },
                    );
                    return Gateway {
                        dir,
                        child,
                        api_port,
                        pg_port,
                        admin_token,
                        config_path,
                        log_path,
                        env: env
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect(),
                    };
                }
                Err(why) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let lower = last_log.to_lowercase();
                    if lower.contains("address already in use") || lower.contains("addrinuse") {
                        continue; // a port was taken between choosing and binding: try others
                    }
                    panic!(
                        "the gateway did not become ready: {why}\n--- gateway log (tail) ---\n{}",
                        tail(&last_log, 40)
                    );
                }
            }
        }
        panic!(
            "the gateway could not bind free ports in 3 attempts\n--- gateway log (tail) ---\n{}",
            tail(&last_log, 40)
        );
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn server_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }

    /// Everything the gateway wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn db_file(&self) -> PathBuf {
        self.dir.path().join("data").join("airlock.db")
    }

    pub fn readyz(&self) -> Option<u16> {
        http_status(self.api_port, "/readyz")
    }

    /// Kills the gateway with SIGKILL: nothing of it runs on, as after a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the gateway again on the same config, data and ports, until `/readyz` answers 200;
    /// its output goes to a new log.
    pub fn restart(&mut self) {
        let restarts = fs::read_dir(self.dir.path())
            .map(|entries| entries.count())
            .unwrap_or(0);
        self.log_path = self
            .dir
            .path()
            .join(format!("gateway-restart-{restarts}.log"));
        self.child = serve_command(
            self.dir.path(),
            &self.config_path,
            &self.log_path,
            &self.env,
        )
        .spawn()
        .expect("restart `airlock serve`");
        let api_port = self.api_port;
        let child = &mut self.child;
        wait_until(WAIT, "the restarted gateway's /readyz", || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the restarted gateway exited with {status}");
            }
            (http_status(api_port, "/readyz") == Some(200)).then_some(())
        });
    }

    /// Whether the gateway process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    // --- the CLI -------------------------------------------------------------------------------

    /// `airlock ARGS` as the bootstrap admin.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_as(&self.admin_token, args)
    }

    /// `airlock ARGS` with `token`.
    pub fn cli_as(&self, token: &str, args: &[&str]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_airlock"));
        cmd.args(args)
            .current_dir(self.dir.path())
            .env("AIRLOCK_SERVER", self.server_url())
            .env("AIRLOCK_TOKEN", token);
        run_with_timeout(cmd, COMMAND_TIMEOUT, &format!("airlock {}", args.join(" ")))
    }

    /// `airlock ARGS --output json` with `token`, which must succeed and print JSON.
    pub fn cli_json_as(&self, token: &str, args: &[&str]) -> Value {
        let mut full: Vec<&str> = args.to_vec();
        full.extend(["--output", "json"]);
        let out = self.cli_as(token, &full);
        assert!(
            out.status.success(),
            "airlock {} failed: {}",
            full.join(" "),
            describe(&out)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "airlock {} did not print JSON ({e}): {}",
                full.join(" "),
                describe(&out)
            )
        })
    }

    pub fn cli_json(&self, args: &[&str]) -> Value {
        self.cli_json_as(&self.admin_token, args)
    }

    /// A new agent token (`airlock tokens create --name N --groups G1,G2 --output json`).
    pub fn mint_full(&self, name: &str, groups: &[&str]) -> Minted {
        let groups = groups.join(",");
        let doc = self.cli_json(&["tokens", "create", "--name", name, "--groups", &groups]);
        let objects = json_objects(&doc);
        let token = objects
            .iter()
            .find_map(|o| o.get("token").and_then(|t| t.as_str()))
            .unwrap_or_else(|| panic!("no `token` in the output of tokens create: {doc}"))
            .to_string();
        let id = objects
            .iter()
            .find_map(|o| o.get("id").and_then(id_text))
            .unwrap_or_default();
        Minted {
            id,
            token,
            name: name.to_string(),
        }
    }

    pub fn mint(&self, name: &str, groups: &[&str]) -> String {
        self.mint_full(name, groups).token
    }

    /// Waits until the approval queue holds a pending request for exactly `sql`; its id.
    pub fn wait_for_pending(&self, sql: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let out = self.cli(&[
                "approvals",
                "list",
                "--state",
                "pending",
                "--output",
                "json",
            ]);
            if out.status.success() {
                if let Ok(doc) = serde_json::from_slice::<Value>(&out.stdout) {
                    if let Some(id) = approval_objects(&doc)
                        .into_iter()
                        .find(|o| state_of(o) == "pending" && has_field_equal(o, sql))
                        .and_then(|o| o.get("id").and_then(id_text))
                    {
                        return id;
                    }
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "no pending approval request for {sql:?} after {WAIT:?}; last `approvals list`: \
                     {}\n--- gateway log (tail) ---\n{}",
                    describe(&out),
                    tail(&self.log(), 30)
                );
            }
            thread::sleep(Duration::from_millis(150));
        }
    }

    /// One approval request as `approvals show ID --output json` prints it.
    pub fn approval(&self, id: &str) -> Map<String, Value> {
        let doc = self.cli_json(&["approvals", "show", id]);
        approval_objects(&doc)
            .into_iter()
            .find(|o| o.get("id").and_then(id_text).as_deref() == Some(id))
            .cloned()
            .unwrap_or_else(|| panic!("approvals show {id} has no request {id}: {doc}"))
    }

    pub fn approval_state(&self, id: &str) -> String {
        state_of(&self.approval(id))
    }

    /// Waits until request `id` is in `state`.
    pub fn wait_for_state(&self, id: &str, state: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let seen = self.approval_state(id);
            if seen == state {
                return;
            }
            if Instant::now() >= deadline {
                panic!("approval request {id} is `{seen}`, expected `{state}` within {WAIT:?}");
            }
            thread::sleep(Duration::from_millis(150));
        }
    }

    // --- psql ----------------------------------------------------------------------------------

    fn psql_command(&self, token: &str, connection: &str, sql: &str) -> Command {
        self.psql_command_with(token, connection, "", sql)
    }

    /// The psql command with `extra` appended to its connection string (`sslmode=require`, …).
    fn psql_command_with(&self, token: &str, connection: &str, extra: &str, sql: &str) -> Command {
        let conninfo = format!(
            "host=127.0.0.1 port={} dbname={} user=agent password={} {extra}",
            self.pg_port,
            conninfo_quote(connection),
            conninfo_quote(token)
        );
        let mut cmd = Command::new("psql");
        cmd.arg(conninfo)
            .args(["-v", "ON_ERROR_STOP=1", "-v", "VERBOSITY=verbose"])
            .args(["-X", "-A", "-t", "-c", sql])
            .env("PGCONNECT_TIMEOUT", "10");
        for var in [
            "PGHOST",
            "PGHOSTADDR",
            "PGPORT",
            "PGUSER",
            "PGDATABASE",
            "PGPASSWORD",
            "PGPASSFILE",
            "PGSERVICE",
            "PGSSLMODE",
            "PGOPTIONS",
        ] {
            cmd.env_remove(var);
        }
        cmd
    }

    /// `psql "host=… port=… dbname=CONNECTION user=agent password=TOKEN" -c SQL`, to the end.
    /// psql runs with `VERBOSITY=verbose`, so errors carry their SQLSTATE.
    pub fn psql(&self, token: &str, connection: &str, sql: &str) -> Output {
        run_with_timeout(
            self.psql_command(token, connection, sql),
            COMMAND_TIMEOUT,
            &format!("psql -c {sql:?}"),
        )
    }

    /// [`Gateway::psql`] with `extra` appended to the connection string.
    pub fn psql_with(&self, token: &str, connection: &str, extra: &str, sql: &str) -> Output {
        run_with_timeout(
            self.psql_command_with(token, connection, extra, sql),
            COMMAND_TIMEOUT,
            &format!("psql ({extra}) -c {sql:?}"),
        )
    }

    /// psql with several `-c` commands in one session; no ON_ERROR_STOP, so it goes on after
    /// errors.
    pub fn psql_session(&self, token: &str, connection: &str, commands: &[&str]) -> Output {
        let mut cmd = self.psql_command(token, connection, commands.first().copied().unwrap_or(""));
        cmd.args(["-v", "ON_ERROR_STOP=0"]);
        for c in commands.iter().skip(1) {
            cmd.args(["-c", c]);
        }
        run_with_timeout(cmd, COMMAND_TIMEOUT, &format!("psql session {commands:?}"))
    }

    /// [`Gateway::psql`] with `input` on psql's standard input (for `COPY … FROM STDIN`).
    pub fn psql_with_stdin(&self, token: &str, connection: &str, sql: &str, input: &str) -> Output {
        let path = self
            .dir
            .path()
            .join(format!("psql-{}.stdin", unique_suffix()));
        fs::write(&path, input).expect("write psql input");
        let mut cmd = self.psql_command(token, connection, sql);
        cmd.stdin(fs::File::open(&path).expect("open psql input"));
        run_with_timeout_stdin(cmd, COMMAND_TIMEOUT, &format!("psql -c {sql:?} < input"))
    }

    /// psql in the background (for statements that are held), output going to files.
    pub fn psql_spawn(&self, token: &str, connection: &str, sql: &str) -> BackgroundPsql {
        self.psql_spawn_with(token, connection, "", sql)
    }

    /// [`Gateway::psql_spawn`] with `extra` appended to the connection string.
    pub fn psql_spawn_with(
        &self,
        token: &str,
        connection: &str,
        extra: &str,
        sql: &str,
    ) -> BackgroundPsql {
        let n = unique_suffix();
        let stdout_path = self.dir.path().join(format!("psql-{n}.stdout"));
        let stderr_path = self.dir.path().join(format!("psql-{n}.stderr"));
        let mut cmd = self.psql_command_with(token, connection, extra, sql);
        cmd.stdin(Stdio::null())
            .stdout(fs::File::create(&stdout_path).expect("create psql stdout file"))
            .stderr(fs::File::create(&stderr_path).expect("create psql stderr file"));
        let child = cmd.spawn().expect("start psql");
        BackgroundPsql {
            child,
            stdout_path,
            stderr_path,
            sql: sql.to_string(),
            status: None,
        }
    }

    // --- tokio-postgres ------------------------------------------------------------------------

    pub fn pg_config(&self, token: &str, connection: &str) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(self.pg_port)
            .dbname(connection)
            .user("agent")
            .password(token)
            .connect_timeout(Duration::from_secs(10));
        config
    }

    /// Connects with tokio-postgres (no TLS) and drives the connection on the current runtime;
    /// notices the server sends are collected in the returned [`Notices`].
    pub async fn connect(
        &self,
        token: &str,
        connection: &str,
    ) -> Result<(tokio_postgres::Client, Notices), tokio_postgres::Error> {
        let (client, mut conn) = self
            .pg_config(token, connection)
            .connect(tokio_postgres::NoTls)
            .await?;
        let notices = Notices::default();
        let sink = notices.clone();
        tokio::spawn(async move {
            loop {
                match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                    Some(Ok(tokio_postgres::AsyncMessage::Notice(notice))) => {
                        let detail = notice
                            .detail()
                            .map(|d| format!(" (DETAIL: {d})"))
                            .unwrap_or_default();
                        sink.push(format!(
                            "{}: {}{detail}",
                            notice.code().code(),
                            notice.message()
                        ))
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break,
                }
            }
        });
        Ok((client, notices))
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!(
                "--- gateway log (tail) at {} ---\n{}",
                self.log_path.display(),
                tail(&self.log(), 40)
            );
        }
    }
}

/// Quotes a libpq conninfo value.
fn conninfo_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Notices a tokio-postgres connection received, as `SQLSTATE: message (DETAIL: detail)`.
#[derive(Clone, Default)]
pub struct Notices(Arc<Mutex<Vec<String>>>);

impl Notices {
    fn push(&self, notice: String) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(notice);
    }

    pub fn all(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// A psql started in the background.
pub struct BackgroundPsql {
    child: Child,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    sql: String,
    status: Option<ExitStatus>,
}

impl BackgroundPsql {
    /// Sends SIGINT, as Ctrl-C in a terminal does (psql then sends a CancelRequest).
    pub fn interrupt(&self) {
        let status = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -INT psql failed");
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn stdout(&self) -> String {
        fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    /// The exit status if psql has finished.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Waits for the held statement's request to appear in the queue (failing early, with
    /// psql's output, if psql finishes instead); the request id.
    pub fn wait_pending(&mut self, gateway: &Gateway) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.try_status() {
                panic!(
                    "psql finished ({status}) instead of being held for {:?}\n--- stdout ---\n{}\n\
                     --- stderr ---\n{}",
                    self.sql,
                    self.stdout(),
                    self.stderr()
                );
            }
            let out = gateway.cli(&[
                "approvals",
                "list",
                "--state",
                "pending",
                "--output",
                "json",
            ]);
            if out.status.success() {
                if let Ok(doc) = serde_json::from_slice::<Value>(&out.stdout) {
                    if let Some(id) = approval_objects(&doc)
                        .into_iter()
                        .find(|o| state_of(o) == "pending" && has_field_equal(o, &self.sql))
                        .and_then(|o| o.get("id").and_then(id_text))
                    {
                        return id;
                    }
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "no pending approval request for {:?} after {WAIT:?}; last `approvals list`: \
                     {}\n--- psql stderr ---\n{}\n--- gateway log (tail) ---\n{}",
                    self.sql,
                    describe(&out),
                    self.stderr(),
                    tail(&gateway.log(), 30)
                );
            }
            thread::sleep(Duration::from_millis(150));
        }
    }

    /// Waits until psql's stderr contains `needle`; false after `timeout`.
    pub fn wait_stderr_contains(&mut self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.stderr().contains(needle) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for psql to finish (failing the test after `timeout`); its output.
    pub fn finish(mut self, timeout: Duration) -> Output {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.try_status() {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "psql {:?} did not finish within {timeout:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                    self.sql,
                    self.stdout(),
                    self.stderr()
                );
            }
            thread::sleep(Duration::from_millis(50));
        };
        Output {
            status,
            stdout: self.stdout().into_bytes(),
            stderr: self.stderr().into_bytes(),
        }
    }
}

impl Drop for BackgroundPsql {
    fn drop(&mut self) {
        if self.try_status().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A raw PostgreSQL wire client, for malformed input
// ---------------------------------------------------------------------------------------------

/// A bare TCP connection to the gateway's PostgreSQL listener.
pub struct RawPg {
    pub stream: TcpStream,
}

/// What the gateway did with raw input.
#[derive(Debug, PartialEq, Eq)]
pub enum RawReply {
    /// A message: its type byte and body.
    Message(u8, Vec<u8>),
    /// The gateway closed the connection.
    Closed,
}

impl RawPg {
    pub fn connect(port: u16) -> RawPg {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .expect("connect to the gateway's PostgreSQL port");
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .expect("set read timeout");
        stream
            .set_write_timeout(Some(Duration::from_secs(15)))
            .expect("set write timeout");
        RawPg { stream }
    }

    /// Sends bytes; a write error (the gateway already closed) is not a test failure.
    pub fn send(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes);
        let _ = self.stream.flush();
    }

    pub fn read_byte(&mut self) -> Option<u8> {
        let mut b = [0u8; 1];
        loop {
            // A signal can cut a read with a timeout short whatever SA_RESTART says.
            match self.stream.read(&mut b) {
                Ok(1) => return Some(b[0]),
                Ok(_) => return None,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if is_timeout(&e) => {
                    panic!("the gateway neither answered nor closed the connection within 15 s")
                }
                Err(e) => {
                    // Said, so that a test expecting an answer shows why it got none.
                    eprintln!("raw connection: read failed: {e}");
                    return None;
                }
            }
        }
    }

    /// The next message, or `Closed`; panics when the gateway neither answers nor closes.
    pub fn read_message(&mut self) -> RawReply {
        let Some(tag) = self.read_byte() else {
            return RawReply::Closed;
        };
        let mut len = [0u8; 4];
        if !self.read_rest(&mut len) {
            return RawReply::Closed;
        }
        let len = u32::from_be_bytes(len) as usize;
        assert!(
            (4..=16 * 1024 * 1024).contains(&len),
            "the gateway sent a message of length {len}"
        );
        let mut body = vec![0u8; len - 4];
        if !self.read_rest(&mut body) {
            return RawReply::Closed;
        }
        RawReply::Message(tag, body)
    }

    /// Fills `buf` with the rest of a message; false when the connection ended first.
    fn read_rest(&mut self, buf: &mut [u8]) -> bool {
        match self.stream.read_exact(buf) {
            Ok(()) => true,
            Err(e) if is_timeout(&e) => panic!("the gateway stalled in the middle of a message"),
            Err(e) => {
                eprintln!("raw connection: read failed mid-message: {e}");
                false
            }
        }
    }

    /// Sends an SSLRequest; the one-byte answer (`N` or `S`).
    pub fn ssl_request(&mut self) -> Option<u8> {
        self.send(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]);
        self.read_byte()
    }

    pub fn startup_message(user: &str, database: &str) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&196_608u32.to_be_bytes());
        for (k, v) in [("user", user), ("database", database)] {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut msg = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        msg.extend(body);
        msg
    }

    pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut msg = vec![tag];
        msg.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        msg.extend_from_slice(body);
        msg
    }

    /// Startup and cleartext password login with `token`, up to the first ReadyForQuery.
    pub fn login(port: u16, token: &str, database: &str) -> RawPg {
        let mut raw = RawPg::connect(port);
        raw.send(&RawPg::startup_message("agent", database));
        loop {
            match raw.read_message() {
                RawReply::Message(b'R', body) if body.len() >= 4 => {
                    let code = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                    match code {
                        0 => {}
                        3 => {
                            let mut password = token.as_bytes().to_vec();
                            password.push(0);
                            raw.send(&RawPg::message(b'p', &password));
                        }
                        other => panic!("the gateway asked for authentication type {other}"),
                    }
                }
                RawReply::Message(b'Z', _) => return raw,
                RawReply::Message(b'E', body) => panic!(
                    "raw login failed: {}",
                    String::from_utf8_lossy(&body).replace('\0', " ")
                ),
                RawReply::Message(..) => {}
                RawReply::Closed => panic!("the gateway closed the raw login"),
            }
        }
    }

    /// Reads until an ErrorResponse or the end of the connection: whether an ErrorResponse came
    /// (true) or the gateway just closed (false), with the error text.
    pub fn error_or_close(&mut self) -> (bool, String) {
        loop {
            match self.read_message() {
                RawReply::Message(b'E', body) => {
                    return (true, String::from_utf8_lossy(&body).replace('\0', " "))
                }
                RawReply::Message(..) => {}
                RawReply::Closed => return (false, String::new()),
            }
        }
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// A multi-threaded tokio runtime for tests that mix async clients with blocking CLI calls:
/// blocking calls run on the test thread, async work on the runtime's workers.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("build a tokio runtime")
}

/// The SQLSTATE of a tokio-postgres error, if the server sent one.
pub fn sqlstate(err: &tokio_postgres::Error) -> Option<String> {
    err.as_db_error().map(|db| db.code().code().to_string())
}

/// The server's message of a tokio-postgres error (or the error's own text).
pub fn db_message(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => err.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Config changes under a running gateway
// ---------------------------------------------------------------------------------------------

impl Gateway {
    /// The config file the gateway runs with.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The gateway's process id, to signal it.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Replaces everything after the gateway's own `listen`, `store` and `secret_key_file`
    /// lines in its config file with `yaml`, atomically (written aside, then renamed), as a
    /// deploy tool would.
    pub fn rewrite_config(&self, yaml: &str) {
        let current = fs::read_to_string(&self.config_path).expect("read the gateway config");
        let end = current
            .find("\nsecret_key_file:")
            .and_then(|at| current[at + 1..].find('\n').map(|n| at + 1 + n + 1))
            .expect("the gateway config has its secret_key_file line");
        let aside = self
            .config_path
            .with_extension(format!("{}.tmp", unique_suffix()));
        fs::write(&aside, format!("{}{yaml}", &current[..end])).expect("write the new config");
        fs::rename(&aside, &self.config_path).expect("replace the gateway config");
    }

    /// How often `needle` occurs in the gateway log.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log().matches(needle).count()
    }

    /// Waits until the gateway log holds `needle` at least `count` times.
    pub fn wait_for_log(&self, needle: &str, count: usize) {
        let deadline = Instant::now() + WAIT;
        while self.log_count(needle) < count {
            if Instant::now() >= deadline {
                panic!(
                    "the gateway log does not show {needle:?} {count} times after {WAIT:?}:\n{}",
                    tail(&self.log(), 30)
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Webhook receiver
// ---------------------------------------------------------------------------------------------

/// A tiny HTTP server on a loopback port that records every POST body (as JSON) by path, and
/// answers 500 to the first `fail_first` requests of each path, then 200.
pub struct WebhookReceiver {
    pub port: u16,
    seen: Arc<Mutex<Vec<(String, Value)>>>,
}

impl WebhookReceiver {
    pub fn start(fail_first: usize) -> WebhookReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the webhook receiver");
        let port = listener.local_addr().expect("receiver address").port();
        let seen: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
        let counts: Arc<Mutex<std::collections::HashMap<String, usize>>> = Arc::default();
        let (recorded, counts_in) = (seen.clone(), counts.clone());
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (recorded, counts) = (recorded.clone(), counts_in.clone());
                thread::spawn(move || serve_webhook(stream, fail_first, &recorded, &counts));
            }
        });
        WebhookReceiver { port, seen }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Every body received on `path` so far (failed attempts included), in order.
    pub fn bodies(&self, path: &str) -> Vec<Value> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, body)| body.clone())
            .collect()
    }

    /// Every body received on any path, as text.
    pub fn all_text(&self) -> String {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|(_, body)| body.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits for `count` bodies on `path` for which `matches` holds; returns them.
    pub fn wait_for(
        &self,
        path: &str,
        count: usize,
        matches: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + WAIT;
        loop {
            let found: Vec<Value> = self
                .bodies(path)
                .into_iter()
                .filter(|b| matches(b))
                .collect();
            if found.len() >= count {
                return found;
            }
            if Instant::now() >= deadline {
                panic!(
                    "the webhook receiver got {} matching bodies on {path} (wanted {count}) after \
                     {WAIT:?}; everything received:\n{}",
                    found.len(),
                    self.all_text()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

fn serve_webhook(
    mut stream: TcpStream,
    fail_first: usize,
    recorded: &Mutex<Vec<(String, Value)>>,
    counts: &Mutex<std::collections::HashMap<String, usize>>,
) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    // One request per connection (the answer says `Connection: close`).
    let (head_end, length) = loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            break (end + 4, length);
        }
    };
    while data.len() < head_end + length {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&data[..head_end]).to_string();
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    let body: Value = serde_json::from_slice(&data[head_end..head_end + length])
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&data[head_end..]).into()));
    recorded.lock().unwrap().push((path.clone(), body));
    let attempt = {
        let mut counts = counts.lock().unwrap();
        let n = counts.entry(path).or_insert(0);
        *n += 1;
        *n
    };
    let status = if attempt <= fail_first {
        "500 Internal Server Error"
    } else {
        "200 OK"
    };
    let _ = stream.write_all(
        format!("HTTP/1.1 {status}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok").as_bytes(),
    );
}
