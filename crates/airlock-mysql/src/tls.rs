//! TLS toward clients: the certificate of the `tls:` config section, or else a self-signed one
//! the gateway generates on first start into its data directory ([`GENERATED_CERT`], and
//! [`GENERATED_KEY`] with mode 0600) and reuses afterwards; and the rustls acceptor built from
//! it. Clients that ask for TLS (the SSL request of the MySQL handshake) get it, so their token
//! does not cross the network in clear.

use airlock_core::config::TlsConfig;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

/// The generated certificate and key, in the data directory.
pub const GENERATED_CERT: &str = "tls-cert.pem";
pub const GENERATED_KEY: &str = "tls-key.pem";
/// The names the generated certificate is valid for: loopback only, since it is for clients
/// that skip verification or pin it.
const GENERATED_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

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

/// The acceptor for the configured certificate, or for the generated one.
pub fn acceptor(config: Option<&TlsConfig>, data_dir: &Path) -> Result<TlsAcceptor, TlsError> {
    let (cert_file, key_file) = match config {
        Some(tls) => (tls.cert_file.clone(), tls.key_file.clone()),
        None => generated(data_dir)?,
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
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The generated certificate and key files, created when neither exists.
fn generated(data_dir: &Path) -> Result<(PathBuf, PathBuf), TlsError> {
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
    let names: Vec<String> = GENERATED_NAMES.iter().map(|n| n.to_string()).collect();
    let generated =
        rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Generate(e.to_string()))?;
    // The key first, so that a certificate never exists without its key.
    write_new(&key, generated.key_pair.serialize_pem().as_bytes(), 0o600)?;
    write_new(&cert, generated.cert.pem().as_bytes(), 0o644)?;
    tracing::info!(
        certificate = %cert.display(),
        "generated a self-signed TLS certificate for client connections (set `tls:` to use your own)"
    );
    Ok((cert, key))
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
        acceptor(None, dir.path()).unwrap();
        let key = dir.path().join(GENERATED_KEY);
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let first = std::fs::read(dir.path().join(GENERATED_CERT)).unwrap();
        acceptor(None, dir.path()).unwrap();
        assert_eq!(
            std::fs::read(dir.path().join(GENERATED_CERT)).unwrap(),
            first
        );

        std::fs::remove_file(&key).unwrap();
        assert!(matches!(
            acceptor(None, dir.path()),
            Err(TlsError::HalfPair { .. })
        ));
    }
}
