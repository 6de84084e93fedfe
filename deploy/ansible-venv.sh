#!/usr/bin/env bash
# Ansible (and the Kubernetes manifest validator deploy/check.sh uses) from
# PyPI in a virtual environment: DIR/bin/ansible-playbook. Idempotent.
#
#   bash deploy/ansible-venv.sh target/deploy-venv
set -euo pipefail
venv=${1:?usage: $0 DIR}
if ! [ -x "$venv/bin/ansible-playbook" ] || ! [ -x "$venv/bin/kubernetes-validate" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "ansible==11.*" "kubernetes-validate==1.37.0"
fi
# The whole output read before its first line is printed: `| head -1` under
# pipefail failed whenever head closed the pipe before ansible had written.
version=$("$venv/bin/ansible-playbook" --version)
echo "${version%%$'\n'*}"
