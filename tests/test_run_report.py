"""experiments/run_report.py on hand-written metrics files: the numbers in its tables, and
young runs (no evaluation, one evaluation, a few hundred steps) reported as they are."""

import json
import os
import re
import subprocess
import sys

from cmta_jax import testing

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


def _clean_report(*args) -> str:
  """The report of `args`, which must succeed with no NaN and no warning on the console."""
  code, out, err = _report(*args)
  assert code == 0, err
  assert not re.search(r"\bnan\b", out + err, re.IGNORECASE), out + err
  assert "Mean of empty slice" not in err and "Warning" not in err, err
  return out


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
    == f"error: {tmp_path} has neither config.json nor records in metrics.jsonl "
    "(is it a run directory?)"
  )


def test_runs_without_evaluations_say_so_and_have_no_table(tmp_path):
  started = testing.write_synthetic_run(str(tmp_path / "started"), [])
  training = testing.write_synthetic_run(str(tmp_path / "training"), [], agent="mtsac")
  with open(os.path.join(training, "metrics.jsonl"), "w") as f:
    record = {"kind": "train", "time/elapsed_sec": 30.0, "time/steps_per_sec": 10.0}
    f.write(json.dumps({"step": 300, **record}) + "\n")
  out = _clean_report(started, training)
  assert out.splitlines()[:3] == [
    f"#### cmta ({started})",
    "No records yet (the run has not logged a step).",
    "No evaluation yet.",
  ]
  assert f"#### mtsac ({training})\n300 steps, 0.5 min of training-loop wall-clock" in out
  assert "| task |" not in out
  assert out.rstrip().endswith("No run has an evaluation yet: nothing to compare.")


def test_a_run_with_one_evaluation_says_so(tmp_path):
  run = str(tmp_path / "one")
  _write_run(run, "cmta", [(1, 0)], [(0.5, 0.0)])
  out = _clean_report(run)
  assert out.splitlines()[1:3] == [
    "1k steps, 1.0 min of training-loop wall-clock, 16.7 steps/s on average (since the last "
    "start).",
    "One evaluation so far: mean eval success 0.50 at step 1k.",
  ]
  assert _row(out, "task") == (
    "| task | eval success at 1k | mean of these "
    "| train-episode success, last 1k steps (the whole run) |"
  )
  assert _row(out, "**mean**") == "| **mean** | | 0.50 | 0.25 |"


def test_steps_of_a_short_run_are_exact_and_the_window_is_the_run(tmp_path):
  run = testing.write_synthetic_run(str(tmp_path / "short"), [0.0, 0.5, 1.0, 0.5], eval_every=100)
  out = _clean_report(run)
  assert out.splitlines()[1] == "300 steps (no wall-clock recorded)."
  assert out.splitlines()[2].endswith("Curve (step: success): 0: 0.0, 100: 0.5, 200: 1.0, 300: 0.5")
  assert _row(out, "task") == (
    "| task | eval success at 0, 100, 200, 300 | mean of these "
    "| train-episode success, last 300 steps (the whole run) |"
  )
  assert "0k" not in out


def test_steps_of_a_1500_step_run_are_exact(tmp_path):
  run = testing.write_synthetic_run(str(tmp_path / "short"), [0.0, 0.5, 1.0, 0.5], eval_every=500)
  out = _clean_report(run, "--train_window=1000", "--last_evals=3")
  assert out.splitlines()[1] == "1.5k steps (no wall-clock recorded)."
  assert "Curve (step: success): 0: 0.0, 500: 0.5, 1k: 1.0, 1.5k: 0.5" in out
  assert _row(out, "task") == (
    "| task | eval success at 500, 1k, 1.5k | mean of these "
    "| train-episode success, last 1k steps |"
  )


def test_the_comparison_names_runs_with_fewer_evaluations(tmp_path):
  several = str(tmp_path / "several")
  _write_run(several, "cmta", [(0, 0), (1, 0), (1, 1)], [(0.0, 0.0)] * 3)
  one = testing.write_synthetic_run(str(tmp_path / "one"), [0.5], agent="mtsac", tasks=TASKS)
  none = testing.write_synthetic_run(str(tmp_path / "none"), [], agent="care", tasks=TASKS)
  out = _clean_report(several, one, none, "--last_evals=2")
  comparison = out[out.index("Mean eval success over each run's last 2 evaluations") :]
  assert comparison.splitlines()[0] == (
    "Mean eval success over each run's last 2 evaluations "
    "(fewer so far: mtsac has 1, care has none yet):"
  )
  assert _row(comparison, "reach-v3") == "| reach-v3 | 1.00 | 0.50 | - |"
  assert _row(comparison, "**mean**") == "| **mean** | 0.75 | 0.50 | no evaluation yet |"
