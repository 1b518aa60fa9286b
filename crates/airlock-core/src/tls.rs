//! TLS toward clients, shared by the PostgreSQL and MySQL listeners: the certificate of the
//! `tls:` config section, or else a self-signed one the gateway generates on first start into
//! its data directory ([`GENERATED_CERT`], and [`GENERATED_KEY`] with mode 0600) and reuses
//! afterwards; and the rustls server configuration built from it, from which each listener
//! makes its acceptor. Clients that ask for TLS (PostgreSQL's SSLRequest or direct TLS, the SSL
//! request of the MySQL handshake) get it, so their token does not cross the network in clear.

use crate::config::TlsConfig;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::ServerConfig;

/// The generated certificate and key, in the data directory.
pub const GENERATED_CERT: &str = "tls-cert.pem";
pub const GENERATED_KEY: &str = "tls-key.pem";
/// The names the generated certificate is valid for besides the listeners' own hosts: the
/// loopback ones, so that a client on the gateway's machine can verify it by its usual name.
const LOOPBACK_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("cannot write {path}: {reason}")]
    Write { path: PathBuf, reason: String },
    #[error("{path} is missing while {other} exists; remove both to have new ones generated")]
    HalfPair { path: PathBuf, other: PathBuf },
    #[error("cannot generate a certificate: {0}")]
    Generate(String),
    #[error("the certificate and key cannot serve TLS: {0}")]
    Unusable(String),
}

/// The server configuration for the configured certificate, or for the generated one. `listen`
/// are the listeners' addresses (`host:port`): a certificate generated now is valid for their
/// hosts too (one generated earlier is kept as it is).
pub fn server_config(
    config: Option<&TlsConfig>,
    data_dir: &Path,
    listen: &[&str],
) -> Result<Arc<ServerConfig>, TlsError> {
    let (cert_file, key_file) = match config {
        Some(tls) => (tls.cert_file.clone(), tls.key_file.clone()),
        None => generated(data_dir, listen)?,
    };
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| TlsError::Read {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    };
    let unreadable = |path: &Path, e: &dyn std::fmt::Display| TlsError::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let certs = CertificateDer::pem_slice_iter(&read(&cert_file)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unreadable(&cert_file, &e))?;
    let key =
        PrivateKeyDer::from_pem_slice(&read(&key_file)?).map_err(|e| unreadable(&key_file, &e))?;
    let config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Unusable(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Unusable(e.to_string()))?;
    Ok(Arc::new(config))
}

/// The generated certificate and key files, created when neither exists.
fn generated(data_dir: &Path, listen: &[&str]) -> Result<(PathBuf, PathBuf), TlsError> {
    let cert = data_dir.join(GENERATED_CERT);
    let key = data_dir.join(GENERATED_KEY);
    match (cert.exists(), key.exists()) {
        (true, true) => return Ok((cert, key)),
        (true, false) => {
            return Err(TlsError::HalfPair {
                path: key,
                other: cert,
            })
        }
        (false, true) => {
            return Err(TlsError::HalfPair {
                path: cert,
                other: key,
            })
        }
        (false, false) => {}
    }
    let generated = rcgen::generate_simple_self_signed(certificate_names(listen))
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    // The key first, so that a certificate never exists without its key.
    write_new(&key, generated.key_pair.serialize_pem().as_bytes(), 0o600)?;
    write_new(&cert, generated.cert.pem().as_bytes(), 0o644)?;
    tracing::info!(
        certificate = %cert.display(),
        "generated a self-signed TLS certificate for client connections (set `tls:` to use your own)"
    );
    Ok((cert, key))
}

/// The loopback names and the hosts the listeners are bound to, less the wildcard ones (which
/// name no host a client could ask for).
fn certificate_names(listen: &[&str]) -> Vec<String> {
    let mut names: Vec<String> = LOOPBACK_NAMES.iter().map(|n| n.to_string()).collect();
    for address in listen {
        let host = match address.parse::<SocketAddr>() {
            Ok(socket) if socket.ip().is_unspecified() => continue,
            Ok(socket) => socket.ip().to_string(),
            Err(_) => match address.rsplit_once(':') {
                Some((host, _)) if !host.is_empty() && host.is_ascii() => host.to_string(),
                _ => continue,
            },
        };
        if !names.contains(&host) {
            names.push(host);
        }
    }
    names
}

fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    let failed = |e: std::io::Error| TlsError::Write {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(failed)?;
    file.write_all(contents).map_err(failed)?;
    file.sync_all().map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_certificate_is_generated_once_with_a_private_key_file() {
        let dir = tempfile::tempdir().unwrap();
        server_config(None, dir.path(), &[]).unwrap();
        let key = dir.path().join(GENERATED_KEY);
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let first = std::fs::read(dir.path().join(GENERATED_CERT)).unwrap();
        server_config(None, dir.path(), &[]).unwrap();
        assert_eq!(
            std::fs::read(dir.path().join(GENERATED_CERT)).unwrap(),
            first
        );

        std::fs::remove_file(&key).unwrap();
        assert!(matches!(
            server_config(None, dir.path(), &[]),
            Err(TlsError::HalfPair { .. })
        ));
    }

    #[test]
    fn the_generated_certificate_names_loopback_and_the_listening_hosts() {
        let names = certificate_names(&[
            "0.0.0.0:15432",
            "[::]:13306",
            "10.1.2.3:15432",
            "[fe80::1]:1",
            "gw.example:8700",
            "127.0.0.1:1",
        ]);
        assert_eq!(
            names,
            [
                "localhost",
                "127.0.0.1",
                "::1",
                "10.1.2.3",
                "fe80::1",
                "gw.example"
            ]
        );
    }
}
