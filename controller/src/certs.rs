//! A lab's own certificate authority: `faultlab certs init` and `certs issue`.
//!
//! Agents off loopback answer only clients whose certificate chains to the
//! lab's CA, and the controller checks each agent's certificate against the
//! same CA. This module makes that CA and the certificates it signs (ECDSA
//! P-256, with rcgen), so a lab needs no OpenSSL recipe. Users with their
//! own PKI skip it and point agents and controller at their files.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

/// CA file names inside the certificates directory.
pub const CA_CERT: &str = "ca.pem";
/// The CA's private key.
pub const CA_KEY: &str = "ca.key";
/// A CA lasts ten years.
const CA_DAYS: i64 = 3650;
/// Default lifetime of an issued certificate.
pub const DEFAULT_DAYS: i64 = 825;

/// Why certificates could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    File {
        /// Which.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file is in the way (nothing is overwritten).
    #[error("{} exists already; remove it first (nothing was changed)", .0.display())]
    Exists(PathBuf),
    /// The name cannot go into a certificate.
    #[error(
        "{0:?} is not usable as a certificate name or group: letters, digits, '-', '_' and '.' only"
    )]
    BadName(String),
    /// rcgen refused (bad SAN, unreadable CA...).
    #[error("{context}: {source}")]
    Certificate {
        /// What was being done.
        context: String,
        /// Why it failed.
        source: rcgen::Error,
    },
}

fn rcgen_error(context: &str) -> impl FnOnce(rcgen::Error) -> CertsError + '_ {
    move |source| CertsError::Certificate {
        context: context.to_owned(),
        source,
    }
}

fn write_new(path: &Path, contents: &str, private: bool) -> Result<(), CertsError> {
    let failed = |source| CertsError::File {
        path: path.to_owned(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            CertsError::Exists(path.to_owned())
        } else {
            failed(source)
        }
    })?;
    std::io::Write::write_all(&mut file, contents.as_bytes()).map_err(failed)
}

fn read(path: &Path) -> Result<String, CertsError> {
    std::fs::read_to_string(path).map_err(|source| CertsError::File {
        path: path.to_owned(),
        source,
    })
}

/// Make a new CA in `dir` (`ca.pem`, `ca.key`), named `name`.
pub fn init(dir: &Path, name: &str) -> Result<PathBuf, CertsError> {
    std::fs::create_dir_all(dir).map_err(|source| CertsError::File {
        path: dir.to_owned(),
        source,
    })?;
    for file in [CA_CERT, CA_KEY] {
        if dir.join(file).exists() {
            return Err(CertsError::Exists(dir.join(file)));
        }
    }
    let key = KeyPair::generate().map_err(rcgen_error("generating the CA key"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = named(name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + Duration::days(CA_DAYS);
    let cert = params
        .self_signed(&key)
        .map_err(rcgen_error("signing the CA"))?;
    write_new(&dir.join(CA_KEY), &key.serialize_pem(), true)?;
    write_new(&dir.join(CA_CERT), &cert.pem(), false)?;
    Ok(dir.join(CA_CERT))
}

fn named(name: &str) -> DistinguishedName {
    let mut distinguished = DistinguishedName::new();
    distinguished.push(DnType::CommonName, name);
    distinguished.push(DnType::OrganizationName, "faultlab lab");
    distinguished
}

/// When an issued certificate is valid.
#[derive(Clone, Copy, Debug)]
pub struct Validity {
    /// From.
    pub not_before: OffsetDateTime,
    /// Until.
    pub not_after: OffsetDateTime,
}

/// The longest validity `faultlab certs issue` gives: 100 years (X.509
/// dates end in 9999; a lab's certificates should end long before).
pub const MAX_DAYS: i64 = 36_500;

impl Validity {
    /// From now for `days`, held to 1 ..= [`MAX_DAYS`].
    pub fn days(days: i64) -> Self {
        let now = OffsetDateTime::now_utc();
        let days = Duration::days(days.clamp(1, MAX_DAYS));
        Self {
            not_before: now.saturating_sub(Duration::minutes(5)),
            not_after: now.saturating_add(days),
        }
    }
}

/// What a certificate is for: one role each, so that an agent's
/// certificate cannot act as a client of other agents, nor a client's
/// serve as an agent (each end's TLS checks the other's extended key
/// usage).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CertRole {
    /// An agent: it serves (server authentication only).
    Agent,
    /// A controller, a person or a CI job: it calls agents (client
    /// authentication only).
    Client,
}

/// Issue `NAME.pem` and `NAME.key` in `dir`, signed by the CA there, for
/// `role`; `sans` are the addresses and DNS names it is valid for
/// (default: `name`).
pub fn issue(
    dir: &Path,
    name: &str,
    sans: &[String],
    validity: Validity,
    role: CertRole,
) -> Result<(PathBuf, PathBuf), CertsError> {
    issue_in_groups(dir, name, sans, validity, role, &[])
}

/// [`issue`], the certificate carrying `groups` (organizational units of
/// its subject), which agents' access rules may name (`group = "ci"`).
pub fn issue_in_groups(
    dir: &Path,
    name: &str,
    sans: &[String],
    validity: Validity,
    role: CertRole,
    groups: &[String],
) -> Result<(PathBuf, PathBuf), CertsError> {
    let usable = |text: &str| {
        !text.is_empty()
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    if !usable(name) {
        return Err(CertsError::BadName(name.to_owned()));
    }
    if let Some(group) = groups.iter().find(|group| !usable(group)) {
        return Err(CertsError::BadName(group.clone()));
    }
    let (cert_path, key_path) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    for path in [&cert_path, &key_path] {
        if path.exists() {
            return Err(CertsError::Exists(path.clone()));
        }
    }
    let ca_key =
        KeyPair::from_pem(&read(&dir.join(CA_KEY))?).map_err(rcgen_error("reading the CA key"))?;
    let issuer = Issuer::from_ca_cert_pem(&read(&dir.join(CA_CERT))?, ca_key)
        .map_err(rcgen_error("reading the CA certificate"))?;
    let sans = if sans.is_empty() {
        vec![name.to_owned()]
    } else {
        sans.to_vec()
    };
    let mut params =
        CertificateParams::new(sans).map_err(rcgen_error("a subject alternative name"))?;
    params.distinguished_name = named(name);
    for group in groups {
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, group.as_str());
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![match role {
        CertRole::Agent => ExtendedKeyUsagePurpose::ServerAuth,
        CertRole::Client => ExtendedKeyUsagePurpose::ClientAuth,
    }];
    params.use_authority_key_identifier_extension = true;
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    let key = KeyPair::generate().map_err(rcgen_error("generating the key"))?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(rcgen_error("signing the certificate"))?;
    write_new(&key_path, &key.serialize_pem(), true)?;
    write_new(&cert_path, &cert.pem(), false)?;
    Ok((cert_path, key_path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validity_is_held_to_its_bounds_whatever_is_asked() {
        for asked in [i64::MIN, -1, 0, 99_999_999, i64::MAX] {
            let validity = Validity::days(asked);
            assert!(validity.not_after > validity.not_before, "{asked}");
            assert!(validity.not_after.year() <= 2200, "{asked}");
        }
    }

    #[test]
    fn a_ca_issues_and_nothing_is_overwritten() -> Result<(), Box<dyn std::error::Error>> {
        let dir = std::env::temp_dir().join(format!("faultlab-certs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        init(&dir, "test lab")?;
        assert!(matches!(init(&dir, "again"), Err(CertsError::Exists(_))));
        let (cert, key) = issue(
            &dir,
            "host-1",
            &["198.18.0.2".to_owned(), "host-1.lab".to_owned()],
            Validity::days(1),
            CertRole::Agent,
        )?;
        assert!(std::fs::read_to_string(cert)?.starts_with("-----BEGIN CERTIFICATE-----"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(key)?.permissions().mode() & 0o777, 0o600);
        }
        assert!(matches!(
            issue(&dir, "host-1", &[], Validity::days(1), CertRole::Agent),
            Err(CertsError::Exists(_))
        ));
        assert!(matches!(
            issue(&dir, "../escape", &[], Validity::days(1), CertRole::Client),
            Err(CertsError::BadName(_))
        ));
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
