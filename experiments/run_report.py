"""Per-task success report of one or more training runs, as Markdown.

  python experiments/run_report.py runs/cmta runs/mtsac --last_evals=5

For each run: its agent, steps reached, wall-clock, average steps/s, the mean
evaluation-success curve (max smoothed, max, final, and every point), then one
table with a row per task: evaluation success at each of the last
`--last_evals` evaluations, their mean, and the success rate of training
episodes that ended in the last `--train_window` steps. With several runs it
ends with a task x run table of the mean over the last evaluations, for
comparing agents at the same budget.
"""

import os

import numpy as np
from absl import app, flags

from cmta_jax import cli, success_curve
from cmta_jax.training.metrics_log import read_records
from cmta_jax.training.run_dir import read_saved_config

_LAST_EVALS = flags.DEFINE_integer("last_evals", 5, "Evaluations per task shown (the last N).")
_TRAIN_WINDOW = flags.DEFINE_integer(
  "train_window", 6000, "Training-episode success is averaged over records in the last N steps."
)


class RunSummary:
  """What the report needs from one run directory."""

  def __init__(self, run_dir: str):
    if not os.path.isdir(run_dir):
      raise ValueError(f"{run_dir} is not a directory (give run directories)")
    records = read_records(run_dir)
    self.evals = [r for r in records if r["kind"] == "eval"]
    self.trains = [r for r in records if r["kind"] == "train"]
    if not self.evals:
      raise ValueError(f"{run_dir} has no evaluation records (is it a run directory?)")
    config = read_saved_config(run_dir) or {}
    self.run_dir = run_dir
    self.agent = config.get("agent", "?")
    self.tasks = list(self.evals[-1]["success"])
    self.last_step = max(r["step"] for r in records)

  def curve(self) -> tuple[list[int], np.ndarray]:
    return [r["step"] for r in self.evals], np.array([r["mean_success"] for r in self.evals])

  def last_eval_success(self, count: int) -> dict[str, list[float]]:
    return {task: [r["success"][task] for r in self.evals[-count:]] for task in self.tasks}

  def train_success(self, window: int) -> dict[str, float]:
    """Per-task success of training episodes logged in the last `window` steps (mean of records)."""
    recent = [
      r
      for r in self.trains
      if "train_success_per_task" in r and r["step"] > self.last_step - window
    ]
    return {
      task: float(np.mean([r["train_success_per_task"][task] for r in recent]))
      if recent
      else float("nan")
      for task in self.tasks
    }

  def wall_clock(self) -> tuple[float, float]:
    """(elapsed seconds, average steps/s) of the last train record; NaN if none."""
    if not self.trains:
      return float("nan"), float("nan")
    last = self.trains[-1]
    return last.get("time/elapsed_sec", float("nan")), last.get("time/steps_per_sec", float("nan"))


def _fmt(x: float) -> str:
  return "-" if np.isnan(x) else f"{x:.2f}"


def report_run(run: RunSummary, last_evals: int, train_window: int) -> str:
  steps, curve = run.curve()
  summary = success_curve.summarize_curve(curve)
  elapsed, rate = run.wall_clock()
  shown = run.last_eval_success(last_evals)
  eval_steps = steps[-last_evals:]
  train = run.train_success(train_window)
  lines = [
    f"#### {run.agent} ({run.run_dir})",
    f"{run.last_step} steps, {elapsed / 60:.1f} min of training-loop wall-clock, "
    f"{rate:.1f} steps/s on average (since the last start).",
    f"Mean eval success: max smoothed {summary['max_smoothed']:.3f} | max {summary['max']:.2f} | "
    f"final {summary['final']:.2f}. Curve (step: success): "
    + ", ".join(f"{s // 1000}k: {v:.1f}" for s, v in zip(steps, curve)),
    "",
    f"| task | eval success at {', '.join(f'{s // 1000}k' for s in eval_steps)} | mean of these "
    f"| train-episode success, last {train_window} steps |",
    "|---|---|---|---|",
  ]
  for task in run.tasks:
    values = shown[task]
    lines.append(
      f"| {task} | {' '.join(f'{v:g}' for v in values)} | {np.mean(values):.2f} "
      f"| {_fmt(train[task])} |"
    )
  mean_shown = np.mean([np.mean(v) for v in shown.values()])
  lines.append(f"| **mean** | | {mean_shown:.2f} | {_fmt(np.nanmean(list(train.values())))} |")
  return "\n".join(lines)


def comparison_table(runs: list[RunSummary], last_evals: int) -> str:
  agents = [r.agent for r in runs]
  labels = [
    a if agents.count(a) == 1 else os.path.basename(os.path.normpath(r.run_dir))
    for a, r in zip(agents, runs)
  ]
  header = "| task | " + " | ".join(labels) + " |"
  lines = [
    f"Mean eval success over each run's last {last_evals} evaluations:",
    "",
    header,
    "|---|" + "---|" * len(runs),
  ]
  per_run = [{t: np.mean(v) for t, v in r.last_eval_success(last_evals).items()} for r in runs]
  for task in runs[0].tasks:
    lines.append(
      f"| {task} | " + " | ".join(_fmt(p.get(task, float("nan"))) for p in per_run) + " |"
    )
  lines.append(
    "| **mean** | " + " | ".join(_fmt(np.mean(list(p.values()))) for p in per_run) + " |"
  )
  return "\n".join(lines)


def main(argv):
  run_dirs = argv[1:]
  if not run_dirs:
    cli.fail("usage: run_report.py RUN_DIR [RUN_DIR ...] [--last_evals=N]")
  if _LAST_EVALS.value < 1 or _TRAIN_WINDOW.value < 1:
    cli.fail("--last_evals and --train_window must be positive")
  runs = [RunSummary(d) for d in run_dirs]
  print("\n\n".join(report_run(r, _LAST_EVALS.value, _TRAIN_WINDOW.value) for r in runs))
  if len(runs) > 1:
    print("\n" + comparison_table(runs, _LAST_EVALS.value))


if __name__ == "__main__":
  app.run(cli.one_line_errors(main), flags_parser=cli.parse_flags)
