//! Who may talk to this agent: mutual TLS, and the name of whoever did.
//!
//! An agent can cut its host off the network or reboot it, so off loopback
//! it answers only clients whose certificate chains to the lab's CA (made
//! by `faultlab certs`, or your own). The caller's certificate name is what
//! the audit log records for every call that changes something.

use std::path::{Path, PathBuf};
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

/// The PEM files of an agent's TLS setup.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// This agent's certificate (its name or address among the SANs).
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// The CA that client certificates must chain to.
    pub ca: PathBuf,
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {what} {}: {source}", path.display())]
pub struct TlsError {
    what: &'static str,
    path: PathBuf,
    source: std::io::Error,
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError {
        what,
        path: path.to_owned(),
        source,
    })
}

impl TlsFiles {
    /// The server side: present our certificate, require a client
    /// certificate that chains to the CA.
    pub fn server_config(&self) -> Result<ServerTlsConfig, TlsError> {
        let cert = read("the certificate", &self.cert)?;
        let key = read("the private key", &self.key)?;
        let ca = read("the CA certificate", &self.ca)?;
        Ok(ServerTlsConfig::new()
            .identity(Identity::from_pem(cert, key))
            .client_ca_root(Certificate::from_pem(ca))
            .client_auth_optional(false))
    }
}

/// Who made `request`: the common name of its client certificate, or,
/// without TLS, its address.
pub fn caller<T>(request: &tonic::Request<T>) -> String {
    let name = request
        .peer_certs()
        .and_then(|chain| chain.first().and_then(|leaf| common_name(leaf)));
    match (name, request.remote_addr()) {
        (Some(name), _) => name,
        (None, Some(address)) => format!("{address} (no certificate)"),
        (None, None) => "unknown (no certificate)".to_owned(),
    }
}

/// The subject's common name of a DER certificate.
fn common_name(der: &[u8]) -> Option<String> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der).ok()?;
    let name = certificate
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_owned();
    Some(name)
}
