#!/usr/bin/env bash
# The main job, end to end: start nexusd (unless one already serves), create a VM, list it, inspect it,
# remove it, and stop the nexusd it started. Installs what it needs first.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/bootstrap.sh

export NEXUS_SOCKET=${NEXUS_SOCKET:-/run/nexus/nexusd.sock}
ctl() { echo "+ nexusctl $*" >&2; .venv/bin/nexusctl "$@"; }

daemon_pid=""
cleanup() {
    if [ -n "$daemon_pid" ]; then
        kill -TERM "$daemon_pid" 2>/dev/null || true
        wait "$daemon_pid" 2>/dev/null || true
    fi
}
trap cleanup EXIT

if ! .venv/bin/nexusctl status >/dev/null 2>&1; then
    log=${TMPDIR:-/tmp}/nexusd-demo.log
    echo "starting nexusd (log: $log)"
    .venv/bin/nexusd --socket "$NEXUS_SOCKET" >"$log" 2>&1 &
    daemon_pid=$!
    for _ in $(seq 100); do
        .venv/bin/nexusctl status >/dev/null 2>&1 && break
        kill -0 "$daemon_pid" 2>/dev/null || { cat "$log" >&2; exit 1; }
        sleep 0.1
    done
fi

name=demo-$$
ctl status
ctl vm create "$name" --vcpus 1 --mem 256 --tag demo
ctl vm list
ctl vm inspect "$name"
ctl vm history "$name"
ctl vm rm "$name"
ctl vm list --tag demo
