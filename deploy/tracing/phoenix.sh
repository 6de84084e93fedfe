#!/usr/bin/env bash
# A local trace backend for faultlab without a container engine: Arize
# Phoenix from PyPI, in a virtualenv of its own (first install: ~2 minutes
# of pip; ~450 MB of memory when running). The UI and OTLP/HTTP listen on
# 127.0.0.1:6006, OTLP/gRPC on port 4317 of every address (Phoenix binds it
# so; the agents of faultlab's network-namespace lab reach it at the lab's
# 198.18.x.1).
#
#   deploy/tracing/phoenix.sh serve [DIR]   # DIR holds the venv and the data
#   export OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317 OTEL_EXPORTER_OTLP_PROTOCOL=grpc
#   faultlab run --suite seed               # prints "run ID: trace TRACE_ID"
#   # then open http://127.0.0.1:6006 (project "default", or the one named by
#   # OTEL_RESOURCE_ATTRIBUTES=openinference.project.name=NAME)
#
# `install [DIR]` only installs. PHOENIX_PORT, PHOENIX_GRPC_PORT and
# PHOENIX_WORKING_DIR, when set, override the ports and the data directory
# (the trace tests use their own).
set -euo pipefail
action=${1:-serve}
dir=${2:-${XDG_DATA_HOME:-$HOME/.local/share}/faultlab/phoenix}
version=20.26.1
case $action in install | serve) ;; *)
  echo "usage: $0 install|serve [DIR]" >&2
  exit 2
  ;;
esac
mkdir -p "$dir"
if ! [ -x "$dir/venv/bin/phoenix" ]; then
  python3 -m venv "$dir/venv"
  "$dir/venv/bin/pip" install --quiet "arize-phoenix==$version"
fi
[ "$action" = install ] && exit 0
export PHOENIX_HOST=127.0.0.1
export PHOENIX_PORT=${PHOENIX_PORT:-6006} PHOENIX_GRPC_PORT=${PHOENIX_GRPC_PORT:-4317}
export PHOENIX_WORKING_DIR=${PHOENIX_WORKING_DIR:-$dir/data} PHOENIX_TELEMETRY_ENABLED=false
exec "$dir/venv/bin/phoenix" serve
