//! Who may talk to this agent: mutual TLS, and the name of whoever did.
//!
//! An agent can cut its host off the network or reboot it, so off loopback
//! it answers only clients whose certificate chains to the lab's CA (made
//! by `faultlab certs`, or your own). The caller's certificate name is what
//! the audit log records for every call that changes something, and what
//! [`crate::access`] decides by.

use crate::access::Caller;
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

/// Who made `request`: its client certificate's names and groups, or,
/// without TLS, its address.
pub fn caller<T>(request: &tonic::Request<T>) -> Caller {
    let named = request
        .peer_certs()
        .and_then(|chain| chain.first().and_then(|leaf| identity(leaf)));
    match (named, request.remote_addr()) {
        (Some(caller), _) => caller,
        (None, Some(address)) => Caller::anonymous(format!("{address} (no certificate)")),
        (None, None) => Caller::anonymous("unknown (no certificate)".to_owned()),
    }
}

/// The caller a DER certificate names: its subject's common name, its
/// subject alternative names, its organizational units.
fn identity(der: &[u8]) -> Option<Caller> {
    use x509_parser::extensions::GeneralName;
    let (_, certificate) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = certificate.subject();
    let text =
        |value: &x509_parser::x509::AttributeTypeAndValue| value.as_str().ok().map(str::to_owned);
    let common_name = subject.iter_common_name().find_map(text);
    let mut names: Vec<String> = common_name.iter().cloned().collect();
    if let Ok(Some(alternatives)) = certificate.subject_alternative_name() {
        for name in &alternatives.value.general_names {
            match name {
                GeneralName::DNSName(name)
                | GeneralName::RFC822Name(name)
                | GeneralName::URI(name) => names.push((*name).to_owned()),
                _ => {}
            }
        }
    }
    let groups = subject
        .iter_organizational_unit()
        .filter_map(text)
        .collect();
    let name = common_name.or_else(|| names.first().cloned())?;
    names.sort_unstable();
    names.dedup();
    Some(Caller {
        name,
        names,
        groups,
    })
}
