#!/usr/bin/env bash
# The main job, end to end: start nexusd (unless one already serves), boot a microVM (fetching the kernel and
# building the default image on first use, with progress), run commands inside it, then remove it and stop
# the nexusd this script started. Installs what it needs first.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/bootstrap.sh

export NEXUS_SOCKET=${NEXUS_SOCKET:-/run/nexus/nexusd.sock}
ctl() { echo "+ nexusctl $*" >&2; .venv/bin/nexusctl "$@"; }

name=demo-$$
daemon_pid=""
cleanup() {
    .venv/bin/nexusctl vm rm --force "$name" >/dev/null 2>&1 || true
    if [ -n "$daemon_pid" ]; then
        kill -TERM "$daemon_pid" 2>/dev/null || true
        wait "$daemon_pid" 2>/dev/null || true
    fi
}
trap cleanup EXIT

if ! .venv/bin/nexusctl status >/dev/null 2>&1; then
    log=${TMPDIR:-/tmp}/nexusd-demo.log
    echo "starting nexusd (log: $log)"
    # The demo makes no bridge or firewall rule on this host unless asked (NEXUS_DEMO_NETWORK=1): with networking,
    # nexusd adds a bridge and an nftables table to the host's own network namespace.
    net_flag=--no-network
    [ "${NEXUS_DEMO_NETWORK:-0}" = 1 ] && net_flag=
    .venv/bin/nexusd --socket "$NEXUS_SOCKET" $net_flag >"$log" 2>&1 &
    daemon_pid=$!
    for _ in $(seq 100); do
        .venv/bin/nexusctl status >/dev/null 2>&1 && break
        kill -0 "$daemon_pid" 2>/dev/null || { cat "$log" >&2; exit 1; }
        sleep 0.1
    done
fi

ctl status
ctl vm run "$name" --mem 512 --tag demo
ctl vm exec "$name" -- uname -a
ctl vm exec "$name" -- python3 -c 'import platform, os; print("python", platform.python_version(), "on", os.cpu_count(), "vCPU")'
ctl vm list --tag demo
ctl vm stop "$name"
ctl vm history "$name"
ctl vm rm "$name"
