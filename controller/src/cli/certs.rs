//! `faultlab certs`: a lab CA and its certificates for mutual TLS.

use super::say;
use clap::Subcommand;
use faultlab::certs;
use std::io::Write;
use std::path::PathBuf;

/// What to make, and where.
#[derive(clap::Args)]
pub struct CertsArgs {
    #[command(subcommand)]
    action: CertsAction,
    /// Where the CA and the certificates live.
    #[arg(
        long,
        value_name = "DIR",
        default_value = "faultlab-certs",
        global = true
    )]
    dir: PathBuf,
}

#[derive(Subcommand)]
enum CertsAction {
    /// Make the CA (ca.pem, ca.key); refuses to overwrite.
    Init {
        /// The CA's name.
        #[arg(long, default_value = "faultlab lab CA")]
        name: String,
    },
    /// Make NAME.pem and NAME.key, signed by the CA, for one role.
    Issue {
        /// Certificate name: an agent, or a client (a controller, a person,
        /// a CI job; agents' audit lines name it).
        name: String,
        /// What it is for: `agent` (it serves; give its address with
        /// --san) or `client` (it calls agents). Each end refuses a
        /// certificate of the other role.
        #[arg(long, value_enum)]
        role: certs::CertRole,
        /// Addresses and DNS names the certificate is valid for (repeatable;
        /// default NAME): an agent's must include the address the controller dials.
        #[arg(long = "san", value_name = "ADDRESS|NAME")]
        sans: Vec<String>,
        /// Days of validity (1 to 36500).
        #[arg(long, default_value_t = certs::DEFAULT_DAYS,
              value_parser = clap::value_parser!(i64).range(1..=certs::MAX_DAYS))]
        days: i64,
        /// A group the certificate carries (an organizational unit), which
        /// agents' access rules may name (`group = "ci"`); repeatable.
        #[arg(long = "group", value_name = "GROUP")]
        groups: Vec<String>,
    },
}

/// Make the CA or a certificate.
pub fn certs(args: CertsArgs) -> anyhow::Result<bool> {
    let dir = args.dir;
    match args.action {
        CertsAction::Init { name } => {
            let ca = certs::init(&dir, &name)?;
            say!(
                "made CA {} (keep {} private)",
                ca.display(),
                dir.join(certs::CA_KEY).display()
            );
        }
        CertsAction::Issue {
            name,
            role,
            sans,
            days,
            groups,
        } => {
            let (cert, key) = certs::issue_in_groups(
                &dir,
                &name,
                &sans,
                certs::Validity::days(days),
                role,
                &groups,
            )?;
            say!("issued {} and {}", cert.display(), key.display());
        }
    }
    Ok(true)
}
