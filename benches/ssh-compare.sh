#!/usr/bin/env bash
# How lab scripts drive hosts today (ssh HOST true) against a faultlab agent
# round trip, both on loopback. Installs openssh-server if missing (root),
# runs a throwaway sshd on 127.0.0.1 with its own host key and a key of its
# own for root, and times N sequential `ssh ... true`.
#
#   benches/ssh-compare.sh [N]     (default 200)
# The agent side: cargo bench -p faultlab-agent --bench roundtrip
set -euo pipefail
n=${1:-200}
command -v sshd >/dev/null || command -v /usr/sbin/sshd >/dev/null || {
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server openssh-client
}
work=$(mktemp -d)
pid=
cleanup() {
  ssh -o "ControlPath=$work/mux" -O exit root@127.0.0.1 2>/dev/null || true
  [ -n "$pid" ] && kill "$pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
ssh-keygen -q -t ed25519 -N '' -f "$work/host_key"
ssh-keygen -q -t ed25519 -N '' -f "$work/client_key"
cp "$work/client_key.pub" "$work/authorized_keys"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p /run/sshd
/usr/sbin/sshd -D -f /dev/null -p "$port" -o ListenAddress=127.0.0.1 -h "$work/host_key" \
  -o AuthorizedKeysFile="$work/authorized_keys" -o PermitRootLogin=prohibit-password \
  -o StrictModes=no -o PidFile="$work/sshd.pid" -o UsePAM=no -o UseDNS=no &
pid=$!
sleep 0.5
ssh_cmd=(ssh -q -p "$port" -i "$work/client_key" -o StrictHostKeyChecking=no
  -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o GSSAPIAuthentication=no \
  -o IdentitiesOnly=yes root@127.0.0.1 true)
"${ssh_cmd[@]}"
# Fresh connections, as a script does by default; then one multiplexed
# connection (ControlMaster), the fastest ssh can be.
mux=(-o ControlMaster=auto -o "ControlPath=$work/mux" -o ControlPersist=60)
"${ssh_cmd[@]:0:1}" "${mux[@]}" "${ssh_cmd[@]:1}"
for label in fresh multiplexed; do
  if [ "$label" = fresh ]; then cmd=("${ssh_cmd[@]}"); else cmd=("${ssh_cmd[0]}" "${mux[@]}" "${ssh_cmd[@]:1}"); fi
python3 - "$n" "$label" "${cmd[@]}" <<'PY'
import subprocess, sys, time
n, label, cmd = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
times = []
for _ in range(n):
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    times.append((time.perf_counter() - start) * 1e6)
times.sort()
print(f"ssh {label} connection, `true`, {n} times: p50 {times[n // 2]:.0f} us, p99 {times[min(n - 1, n * 99 // 100)]:.0f} us")
PY
done
