"""experiments/run_report.py on hand-written metrics files: the numbers in its tables."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "experiments", "run_report.py")
TASKS = ("reach-v3", "push-v3")


def _write_run(run_dir, agent, eval_success, train_success):
  """eval_success: per evaluation, (reach, push) success; train_success: per train record."""
  os.makedirs(run_dir)
  with open(os.path.join(run_dir, "config.json"), "w") as f:
    json.dump({"agent": agent}, f)
  with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
    for i, (train, success) in enumerate(zip(train_success, eval_success)):
      step = 1000 * (i + 1)
      f.write(
        json.dumps(
          {
            "step": step,
            "kind": "train",
            "time/elapsed_sec": 60.0 * (i + 1),
            "time/steps_per_sec": 16.7,
            "train_success_per_task": dict(zip(TASKS, train)),
          }
        )
        + "\n"
      )
      f.write(
        json.dumps(
          {
            "step": step,
            "kind": "eval",
            "mean_success": sum(success) / 2,
            "success": dict(zip(TASKS, success)),
          }
        )
        + "\n"
      )


def _report(*args):
  result = subprocess.run(
    [sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=60
  )
  return result.returncode, result.stdout, result.stderr


def _row(text, first_cell):
  return next(line for line in text.splitlines() if line.startswith(f"| {first_cell} |"))


def test_per_task_table_and_comparison(tmp_path):
  cmta, mtsac = str(tmp_path / "cmta"), str(tmp_path / "mtsac")
  _write_run(cmta, "cmta", [(0, 0), (1, 0), (1, 1)], [(0.0, 0.0), (0.5, 0.0), (1.0, 0.25)])
  _write_run(mtsac, "mtsac", [(0, 0), (0, 0), (1, 0)], [(0.0, 0.0), (0.0, 0.0), (0.5, 0.0)])
  code, out, err = _report(cmta, mtsac, "--last_evals=2", "--train_window=1500")
  assert code == 0, err
  # cmta: last two evals of reach are 1, 1; push 0, 1. Train window 1500 keeps steps 2000, 3000.
  assert _row(out, "reach-v3").startswith("| reach-v3 | 1 1 | 1.00 | 0.75 |")
  # Mean curve 0, 0.5, 1 -> smoothed (factor 0.8) 0, 0.1, 0.28.
  assert "max smoothed 0.280 | max 1.00 | final 1.00" in out
  # Comparison table: one column per agent, mean of the last 2 evaluations.
  comparison = out[out.index("Mean eval success over each run's last 2 evaluations") :]
  assert _row(comparison, "task") == "| task | cmta | mtsac |"
  assert _row(comparison, "push-v3") == "| push-v3 | 0.50 | 0.00 |"
  assert comparison.rstrip().splitlines()[-1] == "| **mean** | 0.75 | 0.25 |"


def test_not_a_run_directory_is_a_one_line_error(tmp_path):
  code, out, err = _report(str(tmp_path))
  assert code != 0
  assert (
    err.strip().splitlines()[-1]
    == f"error: {tmp_path} has no evaluation records (is it a run directory?)"
  )
