#!/usr/bin/env bash
# Check the deploy material as far as this machine allows (CI runs it, as
# root, after the build): the systemd unit verifies and installs under a
# prefix; the Kubernetes manifests validate against the API schemas; the
# Ansible playbook passes its syntax check, and applied to localhost under a
# temporary prefix it installs an agent that really serves over mutual TLS.
#
#   deploy/check.sh [RELEASE_DIR]   (default target/release)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
bin=$(cd "${1:-$repo/target/release}" && pwd)
venv=$repo/target/deploy-venv
work=$(mktemp -d)
agent_pid=
cleanup() {
  [ -n "$agent_pid" ] && kill "$agent_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

echo "-- systemd: systemd-analyze verify"
mkdir -p "$work/unit"
sed "s|/usr/local/bin/faultlab-agent|$bin/faultlab-agent|" \
  "$repo/deploy/systemd/faultlab-agent.service" >"$work/unit/faultlab-agent.service"
said=$(systemd-analyze verify "$work/unit/faultlab-agent.service" 2>&1 || true)
if [ -n "$said" ]; then
  echo "$said"
  exit 1
fi
echo "-- systemd: install.sh under a prefix"
"$bin/faultlab" certs init --dir "$work/certs" >/dev/null
"$bin/faultlab" certs issue localhost --role agent --san 127.0.0.1 --dir "$work/certs" >/dev/null
"$bin/faultlab" certs issue controller --role client --dir "$work/certs" >/dev/null
"$bin/faultlab" certs issue intern --role client --dir "$work/certs" >/dev/null
bash "$repo/deploy/systemd/install.sh" "$bin/faultlab-agent" "$work/certs" localhost \
  --prefix "$work/sd" --allow-reboot --allow-process
for file in usr/local/bin/faultlab-agent etc/systemd/system/faultlab-agent.service \
  etc/faultlab/agent.toml etc/faultlab/agent.key etc/faultlab/ca.pem \
  etc/systemd/system/faultlab-agent.service.d/allow-reboot.conf \
  etc/systemd/system/faultlab-agent.service.d/allow-process.conf; do
  [ -e "$work/sd/$file" ] || { echo "install.sh did not install $file"; exit 1; }
done

bash "$repo/deploy/ansible-venv.sh" "$venv"

echo "-- kubernetes: the manifests validate (API 1.31, strict)"
"$venv/bin/kubernetes-validate" --strict --kubernetes-version 1.31.0 \
  "$repo/deploy/kubernetes/faultlab-agent.yaml"

echo "-- ansible: syntax check"
cd "$repo/deploy/ansible"
"$venv/bin/ansible-playbook" --syntax-check -i inventory.example.ini site.yml

echo "-- ansible: apply to localhost under a prefix"
"$venv/bin/ansible-playbook" -i localhost, -c local site.yml \
  -e faultlab_hosts=localhost -e "faultlab_prefix=$work/ansible" \
  -e "ansible_python_interpreter=$venv/bin/python" \
  -e "faultlab_agent_binary=$bin/faultlab-agent" -e "faultlab_certs_dir=$work/certs" \
  -e faultlab_cert_name=localhost -e faultlab_allow_isolate=true \
  -e '{"faultlab_allow_process": true, "faultlab_process_units": ["echo.service"],
       "faultlab_restart": {"echo_server.py": "python3 /opt/echo_server.py --listen \"0.0.0.0:7000\""},
       "faultlab_access": {"default": ["connections"],
                           "rules": [{"group": "ci", "may": ["connections", "isolate"]},
                                     {"caller": "controller", "may": ["all"]}]}}'
root=$work/ansible
grep -q '^isolate = true' "$root/etc/faultlab/agent.toml"
grep -q '^"echo_server.py" = "python3 /opt/echo_server.py --listen \\"0.0.0.0:7000\\""$' "$root/etc/faultlab/agent.toml"
grep -q '"echo.service"' "$root/etc/polkit-1/rules.d/50-faultlab-units.rules"
[ -e "$root/etc/systemd/system/faultlab-agent.service.d/allow-process.conf" ]
echo "-- the installed agent serves over mutual TLS"
"$root/usr/local/bin/faultlab-agent" --config "$root/etc/faultlab/agent.toml" \
  --listen 127.0.0.1:0 >"$work/agent.out" 2>"$work/agent.log" &
agent_pid=$!
for _ in $(seq 1 100); do
  grep -q "listening on" "$work/agent.out" && break
  sleep 0.05
done
address=$(sed -n 's/^listening on //p' "$work/agent.out")
[ -n "$address" ] || { cat "$work/agent.log"; exit 1; }
"$bin/faultlab" agents "$address" --tls-ca "$work/certs/ca.pem" \
  --tls-cert "$work/certs/controller.pem" --tls-key "$work/certs/controller.key" | tee "$work/agents.txt"
grep -q ' ok ' "$work/agents.txt"
if grep -q 'not for you' "$work/agents.txt"; then
  echo "the access rules deny the lab owner's controller something"
  exit 1
fi
echo "-- the installed agent's access rules keep isolation from a caller no rule names"
"$bin/faultlab" agents "$address" --tls-ca "$work/certs/ca.pem" \
  --tls-cert "$work/certs/intern.pem" --tls-key "$work/certs/intern.key" | tee "$work/intern.txt"
grep -q 'not for you (intern), by its access rules: isolate,' "$work/intern.txt"
if "$bin/faultlab" agents "$address" >/dev/null 2>&1; then
  echo "the installed agent answered a client without a certificate"
  exit 1
fi
echo "deploy checks passed"
