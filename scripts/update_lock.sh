#!/usr/bin/env bash
# Regenerates requirements.lock, the exact versions scripts/setup_env.sh installs, from
# pyproject.toml's ranges (with its test and wandb extras), for CPython 3.11 on Linux x86-64: the
# platform the tests and BUILD_NOTES.md's figures ran on. Run it after changing the
# dependencies in pyproject.toml, then run the tests on what it installs and commit both.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
tools="${TMPDIR:-/tmp}/cmta_jax_lock_tools"
if [ ! -x "$tools/bin/uv" ]; then
  python3 -m venv "$tools"
  "$tools/bin/python" -m pip install --quiet uv
fi
"$tools/bin/uv" pip compile pyproject.toml --extra test --extra wandb --python-version 3.11 \
  --python-platform x86_64-manylinux_2_28 --custom-compile-command "bash scripts/update_lock.sh" --quiet -o requirements.lock "$@"
