//! A throwaway MariaDB server for the MySQL adapter's tests, and the `mariadb` CLI through the
//! gateway. Declared by the tests that use it (`#[path = "support/mariadb.rs"] mod mariadb;`),
//! beside `support`.

use crate::support::*;
use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};
use tempfile::TempDir;

fn mysql_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "mysql"])
            .output()
            .expect("run `id`");
        assert!(
            out.status.success(),
            "running as root, but there is no `mysql` user to run MariaDB as (install the \
             `mariadb-server` package; scripts/test.sh does)"
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("numeric id")
    };
    (id("-u"), id("-g"))
}

/// A MariaDB server of its own, in a temporary directory, on a free loopback port, with a user
/// `app_owner` (password [`MariaDb::password`], `mysql_native_password`) owning schema `app` and
/// its table `items(id int primary key, name varchar(50))` holding (1,'alpha'), (2,'beta'),
/// (3,'gamma').
pub struct MariaDb {
    dir: TempDir,
    child: Child,
    port: u16,
    password: String,
}

impl MariaDb {
    pub fn start() -> MariaDb {
        let as_mysql = is_root();
        let dir = tempfile::Builder::new()
            .prefix("airlock-mariadb-")
            .tempdir_in("/tmp")
            .expect("create a temporary directory for MariaDB");
        if as_mysql {
            let (uid, gid) = mysql_ids();
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .expect("chown the MariaDB directory to `mysql`");
        }
        let data = dir.path().join("data");
        let command = |program: &str| {
            if as_mysql {
                let mut cmd = Command::new("runuser");
                cmd.args(["-u", "mysql", "--", program]);
                cmd
            } else {
                Command::new(program)
            }
        };
        // Several servers bootstrap at once on a small machine; a failed bootstrap is retried
        // in a fresh directory before the test gives up.
        let mut installed = None;
        for _attempt in 0..3 {
            let _ = fs::remove_dir_all(&data);
            let mut install = command("mariadb-install-db");
            install
                .arg("--no-defaults")
                .arg(format!("--datadir={}", data.display()))
                .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
                .arg("--innodb-buffer-pool-size=16M");
            let out = run_with_timeout(install, COMMAND_TIMEOUT, "mariadb-install-db");
            let ok = out.status.success();
            installed = Some(out);
            if ok {
                break;
            }
        }
        if let Some(out) = installed.filter(|out| !out.status.success()) {
            panic!("mariadb-install-db failed: {}", describe(&out));
        }
        let socket = dir.path().join("sock");
        let mut last_log = String::new();
        for attempt in 0..5 {
            let port = free_port();
            let log_path = dir.path().join(format!("mariadb-{attempt}.log"));
            let log = fs::File::create(&log_path).expect("create the MariaDB log");
            let mut cmd = command("mariadbd");
            cmd.arg("--no-defaults")
                .arg(format!("--datadir={}", data.display()))
                .arg(format!("--port={port}"))
                .arg("--bind-address=127.0.0.1")
                .arg(format!("--socket={}", socket.display()))
                .arg(format!("--pid-file={}", dir.path().join("pid").display()))
                .args([
                    "--skip-log-bin",
                    "--innodb-buffer-pool-size=16M",
                    "--innodb-log-file-size=8M",
                    "--max-connections=60",
                    "--local-infile=1",
                ])
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("clone log handle"))
                .stderr(log);
            let mut child = cmd.spawn().expect("start mariadbd");
            let deadline = Instant::now() + Duration::from_secs(60);
            let started = loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break false;
                }
                if socket.exists() && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    break true;
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break false;
                }
                thread::sleep(Duration::from_millis(100));
            };
            last_log = fs::read_to_string(&log_path).unwrap_or_default();
            if started {
                wait_until(WAIT, "MariaDB answering on its socket", || {
                    let mut ping = Command::new("mariadb-admin");
                    ping.arg("--no-defaults")
                        .arg(format!("--socket={}", socket.display()))
                        .args(["-u", "root", "ping"]);
                    run_with_timeout(ping, COMMAND_TIMEOUT, "mariadb-admin ping")
                        .status
                        .success()
                        .then_some(())
                });
                let server = MariaDb {
                    dir,
                    child,
                    port,
                    password: format!("Upstr3am-S3cret-{}", unique_suffix()),
                };
                server.create_app();
                return server;
            }
            if !last_log.contains("already in use") {
                break;
            }
        }
        panic!(
            "MariaDB did not start\n--- mariadbd log ---\n{}",
            tail(&last_log, 30)
        );
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn password(&self) -> &str {
        &self.password
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    /// Runs SQL as root over the socket; panics on failure. Returns the tab-separated rows.
    pub fn admin(&self, sql: &str) -> String {
        let mut cmd = Command::new("mariadb");
        cmd.arg("--no-defaults")
            .arg(format!("--socket={}", self.socket().display()))
            .args(["-u", "root", "--batch", "--skip-column-names", "-e", sql]);
        let out = run_with_timeout(cmd, COMMAND_TIMEOUT, "mariadb (admin)");
        assert!(
            out.status.success(),
            "admin {sql:?} failed: {}",
            describe(&out)
        );
        stdout_of(&out).trim().to_string()
    }

    /// The ids in `app.items`, as the upstream sees them.
    pub fn item_ids(&self) -> String {
        self.admin("SELECT GROUP_CONCAT(id ORDER BY id) FROM app.items")
    }

    fn create_app(&self) {
        let password = self.password.replace('\'', "''");
        self.admin(&format!(
            "CREATE DATABASE app; \
             CREATE USER 'app_owner'@'127.0.0.1' IDENTIFIED VIA mysql_native_password USING PASSWORD('{password}'); \
             GRANT ALL ON app.* TO 'app_owner'@'127.0.0.1'; \
             CREATE TABLE app.items (id INT PRIMARY KEY, name VARCHAR(50)); \
             INSERT INTO app.items VALUES (1, 'alpha'), (2, 'beta'), (3, 'gamma')"
        ));
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One upstream MySQL connection's YAML (list item under `connections:`).
pub fn mysql_connection_yaml(name: &str, port: u16, password_expr: &str) -> String {
    format!(
        "  - name: {name}\n    type: mysql\n    address: 127.0.0.1:{port}\n    database: app\n    \
         user: app_owner\n    password: {password_expr}\n"
    )
}

/// The gateway's MySQL listener port, read back from the config it was started with.
pub fn mysql_port(gw: &Gateway) -> u16 {
    let config = fs::read_to_string(gw.dir().join("airlock.yaml")).expect("read the config");
    config
        .lines()
        .find_map(|line| line.trim().strip_prefix("mysql: 127.0.0.1:"))
        .and_then(|port| port.trim().parse().ok())
        .expect("a mysql listener in the gateway config")
}

/// `mariadb` through the gateway with the token as the password, sent in clear.
pub fn mariadb_command(gw: &Gateway, token: &str, connection: &str, sql: &str) -> Command {
    mariadb_command_with(gw, token, connection, sql, &[])
}

/// [`mariadb_command`] with more options.
pub fn mariadb_command_with(
    gw: &Gateway,
    token: &str,
    connection: &str,
    sql: &str,
    options: &[&str],
) -> Command {
    mariadb_through(
        gw,
        token,
        connection,
        sql,
        &[&["--skip-ssl"], options].concat(),
    )
}

/// `mariadb` through the gateway over TLS, with more options (to verify the certificate, say).
pub fn mariadb_tls(
    gw: &Gateway,
    token: &str,
    connection: &str,
    sql: &str,
    options: &[&str],
) -> Output {
    run_with_timeout(
        mariadb_through(gw, token, connection, sql, &[&["--ssl"], options].concat()),
        COMMAND_TIMEOUT,
        &format!("mariadb --ssl -e {sql:?}"),
    )
}

fn mariadb_through(
    gw: &Gateway,
    token: &str,
    connection: &str,
    sql: &str,
    options: &[&str],
) -> Command {
    let mut cmd = Command::new("mariadb");
    cmd.arg("--no-defaults")
        .args(options)
        .args(["-h", "127.0.0.1", "-P", &mysql_port(gw).to_string()])
        .args(["-u", "agent", &format!("-p{token}")])
        .args(["--protocol=TCP", "--default-auth=mysql_clear_password"])
        .args(["--batch", "--skip-column-names"])
        .args(["--connect-timeout=10", "-e", sql, connection]);
    cmd
}

pub fn mariadb(gw: &Gateway, token: &str, connection: &str, sql: &str) -> Output {
    run_with_timeout(
        mariadb_command(gw, token, connection, sql),
        COMMAND_TIMEOUT,
        &format!("mariadb -e {sql:?}"),
    )
}

/// `mariadb` in the background (a held statement blocks it).
pub fn mariadb_spawn(gw: &Gateway, token: &str, connection: &str, sql: &str) -> Child {
    let mut cmd = mariadb_command(gw, token, connection, sql);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.spawn().expect("start mariadb")
}

/// Waits for a background client and collects its output.
pub fn finish(child: Child, what: &str) -> Output {
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let mut child = child;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return child
                .wait_with_output()
                .expect("collect the client's output");
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("{what} did not finish within {COMMAND_TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(50));
    }
}
