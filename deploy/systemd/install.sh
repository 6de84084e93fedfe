#!/usr/bin/env bash
# Install the faultlab agent as a systemd service.
#
#   deploy/systemd/install.sh AGENT_BINARY [CERT_DIR HOSTNAME] [--prefix DIR] [--allow-reboot] [--allow-process]
#
# CERT_DIR holds ca.pem and HOSTNAME.pem/.key (`faultlab certs issue
# HOSTNAME --role agent --san ADDRESS`). With --prefix, files go under DIR and nothing
# is started (no user, no systemctl): for packaging and for the tests.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
prefix=/ allow_reboot=0 allow_process=0 args=()
while (($#)); do
  case $1 in
  --prefix) prefix=$2; shift 2 ;;
  --allow-reboot) allow_reboot=1; shift ;;
  --allow-process) allow_process=1; shift ;;
  *) args+=("$1"); shift ;;
  esac
done
((${#args[@]} == 1 || ${#args[@]} == 3)) || {
  echo "usage: $0 AGENT_BINARY [CERT_DIR HOSTNAME] [--prefix DIR] [--allow-reboot] [--allow-process]" >&2
  exit 2
}
binary=${args[0]}
root=${prefix%/}
install -D -m 0755 "$binary" "$root/usr/local/bin/faultlab-agent"
install -D -m 0644 "$here/faultlab-agent.service" "$root/etc/systemd/system/faultlab-agent.service"
install -d -m 0750 "$root/etc/faultlab"
[ -e "$root/etc/faultlab/agent.toml" ] || install -m 0640 "$here/agent.toml" "$root/etc/faultlab/agent.toml"
if ((${#args[@]} == 3)); then
  certs=${args[1]} host=${args[2]}
  install -m 0644 "$certs/ca.pem" "$root/etc/faultlab/ca.pem"
  install -m 0644 "$certs/$host.pem" "$root/etc/faultlab/agent.pem"
  install -m 0640 "$certs/$host.key" "$root/etc/faultlab/agent.key"
fi
if ((allow_reboot)); then
  install -D -m 0644 "$here/allow-reboot.conf" "$root/etc/systemd/system/faultlab-agent.service.d/allow-reboot.conf"
  install -D -m 0644 "$here/50-faultlab-reboot.rules" "$root/etc/polkit-1/rules.d/50-faultlab-reboot.rules"
fi
# Programs of other users visible and signalled (set allow.process = true
# too); an application that is a systemd unit needs a polkit rule instead
# (docs/security.md).
if ((allow_process)); then
  install -D -m 0644 "$here/allow-process.conf" "$root/etc/systemd/system/faultlab-agent.service.d/allow-process.conf"
fi
if [ "$prefix" = / ]; then
  getent passwd faultlab >/dev/null ||
    useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin faultlab
  chgrp faultlab /etc/faultlab /etc/faultlab/agent.toml
  [ -e /etc/faultlab/agent.key ] && chgrp faultlab /etc/faultlab/agent.key
  systemctl daemon-reload
  systemctl enable --now faultlab-agent.service
  # Done once the agent listens (systemd says "started" as soon as the
  # process runs), like the Ansible role; a slow host gets 60 s.
  port=$(sed -n 's/^listen *= *"[^"]*:\([0-9][0-9]*\)".*/\1/p;T;q' /etc/faultlab/agent.toml)
  listening() { [ -n "$port" ] && [ -n "$(ss -ltnH "sport = :$port")" ]; }
  for _ in $(seq 1 120); do
    listening && break
    sleep 0.5
  done
  if ! listening; then
    echo "faultlab-agent did not start listening${port:+ on port $port} within 60 s: journalctl -u faultlab-agent" >&2
    exit 1
  fi
  echo "faultlab-agent installed and started (listening on port $port); edit /etc/faultlab/agent.toml, then: systemctl restart faultlab-agent"
else
  echo "faultlab-agent installed under $prefix (nothing started)"
fi
