#!/usr/bin/env bash
# Quick start command 2: ruff (lint + format check), then the whole test suite, in its own
# environment.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup_env.sh"
cd "$root"
# Lint and format first (seconds): configured in pyproject.toml, [tool.ruff].
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/python -m pytest -q "$@"
