#!/usr/bin/env bash
# Quick start command 1: a short CMTA training run on MT10-Fixed with evaluation
# (about ten minutes on 2 CPU cores). Creates ./.venv on first use; re-running
# resumes (or, once finished, re-prints) the run in runs/quickstart.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup_env.sh"
cd "$root"
exec .venv/bin/python experiments/train.py --preset=quickstart --run_dir=runs/quickstart "$@"
