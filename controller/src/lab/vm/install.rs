//! Agents installed on a lab's Debian hosts the way a user installs them on
//! their own: certificates from `faultlab certs` (each host's names its
//! management address), then the project's Ansible role over SSH, which
//! copies the agent, the shipped systemd unit and its drop-ins, and has
//! systemd start it. The role is the one in `deploy/ansible`, built into
//! this binary so that a lab installs exactly what the project ships.

use super::VmError;
use super::debian::{ADMIN, Image};
use crate::agents::ClientTls;
use crate::lab::AgentGrants;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `deploy/`'s files the role uses, as shipped (path under `deploy/`).
const DEPLOY: &[(&str, &str)] = &[
    (
        "ansible/site.yml",
        include_str!("../../../../deploy/ansible/site.yml"),
    ),
    (
        "ansible/roles/faultlab_agent/defaults/main.yml",
        include_str!("../../../../deploy/ansible/roles/faultlab_agent/defaults/main.yml"),
    ),
    (
        "ansible/roles/faultlab_agent/handlers/main.yml",
        include_str!("../../../../deploy/ansible/roles/faultlab_agent/handlers/main.yml"),
    ),
    (
        "ansible/roles/faultlab_agent/tasks/main.yml",
        include_str!("../../../../deploy/ansible/roles/faultlab_agent/tasks/main.yml"),
    ),
    (
        "ansible/roles/faultlab_agent/tasks/linux.yml",
        include_str!("../../../../deploy/ansible/roles/faultlab_agent/tasks/linux.yml"),
    ),
    (
        "ansible/roles/faultlab_agent/tasks/windows.yml",
        include_str!("../../../../deploy/ansible/roles/faultlab_agent/tasks/windows.yml"),
    ),
    (
        "ansible/roles/faultlab_agent/templates/agent.toml.j2",
        include_str!("../../../../deploy/ansible/roles/faultlab_agent/templates/agent.toml.j2"),
    ),
    (
        "systemd/faultlab-agent.service",
        include_str!("../../../../deploy/systemd/faultlab-agent.service"),
    ),
    (
        "systemd/allow-reboot.conf",
        include_str!("../../../../deploy/systemd/allow-reboot.conf"),
    ),
    (
        "systemd/50-faultlab-reboot.rules",
        include_str!("../../../../deploy/systemd/50-faultlab-reboot.rules"),
    ),
    (
        "systemd/allow-process.conf",
        include_str!("../../../../deploy/systemd/allow-process.conf"),
    ),
    (
        "ansible/roles/faultlab_agent/templates/50-faultlab-units.rules.j2",
        include_str!(
            "../../../../deploy/ansible/roles/faultlab_agent/templates/50-faultlab-units.rules.j2"
        ),
    ),
];

/// One host to install: its name and management address.
pub struct Host {
    /// Its name (the inventory's, the certificate's).
    pub name: String,
    /// Where SSH and the agent listen.
    pub management: Ipv4Addr,
}

/// Install the agent `agent` on `hosts` (booted from `image`, sshd up) from
/// `dir`, allowed what `allow` lists and `grants` gives: certificates in
/// `dir/certs`, the role in `dir/deploy`, the Ansible inventory and log in
/// `dir`. The controller's side of mutual TLS.
pub fn agents(
    agent: &Path,
    hosts: &[Host],
    image: &Image,
    allow: &[&str],
    grants: &AgentGrants,
    dir: &Path,
) -> Result<ClientTls, VmError> {
    let failed = |what: &str, error: &dyn std::fmt::Display| {
        VmError::Guest(format!("installing the agents: {what}: {error}"))
    };
    let certs = dir.join("certs");
    let _ = std::fs::remove_dir_all(&certs);
    crate::certs::init(&certs, "faultlab lab CA").map_err(|error| failed("certs init", &error))?;
    let validity = crate::certs::Validity::days(30);
    for host in hosts {
        crate::certs::issue(
            &certs,
            &host.name,
            &[host.management.to_string()],
            validity,
            crate::certs::CertRole::Agent,
        )
        .map_err(|error| failed("certs issue", &error))?;
    }
    crate::certs::issue(
        &certs,
        "controller",
        &[],
        validity,
        crate::certs::CertRole::Client,
    )
    .map_err(|error| failed("certs issue", &error))?;
    let deploy = dir.join("deploy");
    for (path, contents) in DEPLOY {
        let file = deploy.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent).map_err(|error| failed("mkdir", &error))?;
        }
        std::fs::write(&file, contents).map_err(|error| failed(path, &error))?;
    }
    let inventory = dir.join("ansible-inventory.ini");
    std::fs::write(
        &inventory,
        inventory_ini(agent, hosts, image, allow, grants, &certs),
    )
    .map_err(|error| failed("the Ansible inventory", &error))?;
    let log = dir.join("ansible.log");
    let playbook = ansible_playbook().ok_or_else(|| {
        VmError::Guest(
            "ansible-playbook is not installed (pip install ansible, or set FAULTLAB_ANSIBLE_PLAYBOOK)"
                .to_owned(),
        )
    })?;
    let _ = std::fs::remove_file(&log);
    super::debian::run(
        Command::new(&playbook)
            .arg("-i")
            .arg(&inventory)
            .arg(deploy.join("ansible/site.yml"))
            // A first install has nothing running to roll over: all at once.
            .args(["-e", "faultlab_serial=100%"])
            .env("ANSIBLE_NOCOLOR", "1")
            .env("ANSIBLE_HOST_KEY_CHECKING", "False")
            // One SSH round per task, not three: what makes a playbook
            // fast on slow hosts (Debian's sudo does not require a tty).
            .env("ANSIBLE_PIPELINING", "True")
            .env("ANSIBLE_RETRY_FILES_ENABLED", "False"),
        &log,
    )?;
    Ok(ClientTls {
        ca: certs.join("ca.pem"),
        cert: certs.join("controller.pem"),
        key: certs.join("controller.key"),
    })
}

/// The Ansible inventory of `hosts`: logged in as the image's
/// administrator with its key, each agent listening on its management
/// address only, allowed `allow`, with the units and restart commands of
/// `grants` (as Python literals, which Ansible reads from an INI file).
fn inventory_ini(
    agent: &Path,
    hosts: &[Host],
    image: &Image,
    allow: &[&str],
    grants: &AgentGrants,
    certs: &Path,
) -> String {
    let mut ini = String::from("[faultlab_agents]\n");
    for host in hosts {
        ini.push_str(&format!(
            "{} ansible_host={} faultlab_listen={}:{}\n",
            host.name,
            host.management,
            host.management,
            super::VM_CONTROL_PORT
        ));
    }
    ini.push_str("\n[faultlab_agents:vars]\n");
    for (key, value) in [
        ("ansible_user", ADMIN.to_owned()),
        ("ansible_become", "true".to_owned()),
        ("ansible_python_interpreter", "/usr/bin/python3".to_owned()),
        (
            "ansible_ssh_private_key_file",
            image.key.display().to_string(),
        ),
        // Hosts made a minute ago, with keys of their own: nothing to pin.
        (
            "ansible_ssh_common_args",
            "'-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR'"
                .to_owned(),
        ),
        ("faultlab_agent_binary", agent.display().to_string()),
        ("faultlab_certs_dir", certs.display().to_string()),
    ] {
        ini.push_str(&format!("{key}={value}\n"));
    }
    for capability in allow {
        ini.push_str(&format!("faultlab_allow_{capability}=true\n"));
    }
    if !grants.units.is_empty() {
        let units = serde_json::to_string(&grants.units).unwrap_or_default();
        ini.push_str(&format!("faultlab_process_units={units}\n"));
    }
    if !grants.restart.is_empty() {
        let commands: std::collections::BTreeMap<&str, &str> = grants
            .restart
            .iter()
            .map(|(name, command)| (name.as_str(), command.as_str()))
            .collect();
        let commands = serde_json::to_string(&commands).unwrap_or_default();
        ini.push_str(&format!("faultlab_restart={commands}\n"));
    }
    ini
}

/// `FAULTLAB_ANSIBLE_PLAYBOOK`, one on `PATH`, or the one `deploy/check.sh`
/// installs beside this build (`target/deploy-venv`).
pub fn ansible_playbook() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("FAULTLAB_ANSIBLE_PLAYBOOK") {
        return Some(path.into());
    }
    if let Some(found) = super::guest::which("ansible-playbook") {
        return Some(found);
    }
    let me = std::env::current_exe().ok()?;
    me.ancestors()
        .skip(1)
        .take(4)
        .map(|dir| dir.join("deploy-venv/bin/ansible-playbook"))
        .find(|candidate| candidate.is_file())
}
