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
# Two workers by default (CI's 2 cores; PYTEST_WORKERS=0 runs in this process); the tests
# sharing the driver's baseline run stay together (tests/conftest.py).
exec .venv/bin/python -m pytest -q -n "${PYTEST_WORKERS:-2}" --dist loadgroup "$@"
