#!/usr/bin/env bash
# Refresh requirements-dev.lock, the fully pinned dev environment (every package, with its sha256 hashes) that
# bootstrap.sh installs into .venv. Run it after changing a dependency in pyproject.toml: it keeps every pin it can
# and resolves only what changed. To take newer releases: ./scripts/lock.sh --upgrade (everything) or
# ./scripts/lock.sh --upgrade-package NAME. Then run ./scripts/test.sh and commit the lock with the change.
# uv resolves for CPython 3.11 (Debian 12's python3) on x86_64 Linux, from PyPI; it runs from its own venv in
# .tools/uv so that .venv holds exactly the lock.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

UV_VERSION=0.13.9
if [ "$(.tools/uv/bin/uv --version 2>/dev/null | cut -d' ' -f2)" != "$UV_VERSION" ]; then
    python3 -m venv --clear .tools/uv
    .tools/uv/bin/pip install -q "uv==$UV_VERSION"
fi
exec .tools/uv/bin/uv pip compile pyproject.toml --extra dev --generate-hashes --python-version 3.11 \
    --python-platform x86_64-unknown-linux-gnu --custom-compile-command ./scripts/lock.sh \
    --output-file requirements-dev.lock "$@"
