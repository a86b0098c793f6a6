#!/usr/bin/env bash
# Quick start command 2: the whole test suite, in its own environment.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup_env.sh"
cd "$root"
exec .venv/bin/python -m pytest -q "$@"
