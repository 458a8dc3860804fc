#!/usr/bin/env bash
# The whole test suite: lint, types, layers, then unit, integration and e2e tests. Installs what it needs first.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/bootstrap.sh
.venv/bin/ruff format --check src tests bench examples
.venv/bin/ruff check src tests bench examples
.venv/bin/mypy
.venv/bin/lint-imports  # the layer table ([tool.importlinter] in pyproject.toml)
exec .venv/bin/python -m pytest "$@"
