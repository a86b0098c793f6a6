"""Per-task success report of one or more training runs, as Markdown.

  python experiments/run_report.py runs/cmta runs/mtsac --last_evals=5

For each run: its agent, steps reached, wall-clock, average steps/s, the mean
evaluation-success curve (max smoothed, max, final, and every point), then one
table with a row per task: evaluation success at each of the last
`--last_evals` evaluations, their mean, and the success rate of training
episodes that ended in the last `--train_window` steps. With several runs it
ends with a task x run table of the mean over the last evaluations, for
comparing agents at the same budget.

Steps read as 150, 1.5k, 2.4M (exact). A young run is reported as it is: "No evaluation
yet." (and no table), "One evaluation so far: ...", a training window longer than the run
as "last 300 steps (the whole run)", a run with fewer evaluations than --last_evals named
above the comparison, and "-" where there is no number (no training episode in the window,
no wall-clock recorded).
"""

import math
import os

import numpy as np
from absl import app, flags

from cmta_jax import cli, success_curve
from cmta_jax.step_labels import step_label
from cmta_jax.training import change_log
from cmta_jax.training.change_log import CHANGES_FILE
from cmta_jax.training.metrics_log import METRICS_FILE, read_records
from cmta_jax.training.run_dir import CONFIG_FILE, read_saved_config

_LAST_EVALS = flags.DEFINE_integer("last_evals", 5, "Evaluations per task shown (the last N).")
_TRAIN_WINDOW = flags.DEFINE_integer(
  "train_window", 6000, "Training-episode success is averaged over records in the last N steps."
)


class RunSummary:
  """What the report needs from one run directory (evaluated yet or not)."""

  def __init__(self, run_dir: str):
    if not os.path.isdir(run_dir):
      raise ValueError(f"{run_dir} is not a directory (give run directories)")
    records = read_records(run_dir)
    config = read_saved_config(run_dir)
    if config is None and not records:
      raise ValueError(
        f"{run_dir} has neither {CONFIG_FILE} nor records in {METRICS_FILE} "
        "(is it a run directory?)"
      )
    self.evals = [r for r in records if r["kind"] == "eval"]
    self.trains = [r for r in records if r["kind"] == "train"]
    self.run_dir = run_dir
    self.agent = (config or {}).get("agent", "?")
    self.tasks = list(self.evals[-1]["success"]) if self.evals else []
    self.last_step = max((r["step"] for r in records), default=None)
    self.changes = change_log.read(run_dir)

  def curve(self) -> tuple[list[int], np.ndarray]:
    return [r["step"] for r in self.evals], np.array([r["mean_success"] for r in self.evals])

  def last_eval_success(self, count: int) -> dict[str, list[float]]:
    return {task: [r["success"][task] for r in self.evals[-count:]] for task in self.tasks}

  def covers_whole_run(self, window: int) -> bool:
    """Whether the last `window` steps reach back to the run's start."""
    return window >= (self.last_step or 0)

  def train_success(self, window: int) -> dict[str, float | None]:
    """Per-task success of training episodes logged in the last `window` steps (mean of
    records); None for a task without such records."""
    recent = [
      r["train_success_per_task"]
      for r in self.trains
      if "train_success_per_task" in r
      and (self.covers_whole_run(window) or r["step"] > self.last_step - window)
    ]
    return {task: _mean([success[task] for success in recent]) for task in self.tasks}

  def wall_clock(self) -> tuple[float, float] | None:
    """(elapsed seconds, average steps/s) of the last train record; None if not recorded."""
    if not self.trains:
      return None
    last = self.trains[-1]
    elapsed, rate = last.get("time/elapsed_sec"), last.get("time/steps_per_sec")
    if not all(isinstance(x, (int, float)) and math.isfinite(x) for x in (elapsed, rate)):
      return None
    return elapsed, rate


def _mean(values) -> float | None:
  return float(np.mean(values)) if len(values) else None


def _fmt(x: float | None) -> str:
  return "-" if x is None else f"{x:.2f}"


def _steps(steps: list[int]) -> str:
  return ", ".join(step_label(s) for s in steps)


def _progress_line(run: RunSummary) -> str:
  """How far the run got and how fast."""
  if run.last_step is None:
    return "No records yet (the run has not logged a step)."
  timing = run.wall_clock()
  if timing is None:
    return f"{step_label(run.last_step)} steps (no wall-clock recorded)."
  elapsed, rate = timing
  return (
    f"{step_label(run.last_step)} steps, {elapsed / 60:.1f} min of training-loop wall-clock, "
    f"{rate:.1f} steps/s on average (since the last start)."
  )


def _curve_line(run: RunSummary) -> str:
  """The mean evaluation-success curve, or that there is none (yet) to speak of."""
  steps, curve = run.curve()
  if not steps:
    return "No evaluation yet."
  if len(steps) == 1:
    return (
      f"One evaluation so far: mean eval success {curve[0]:.2f} at step {step_label(steps[0])}."
    )
  summary = success_curve.summarize_curve(curve)
  return (
    f"Mean eval success: max smoothed {summary['max_smoothed']:.3f} | max {summary['max']:.2f} | "
    f"final {summary['final']:.2f}. Curve (step: success): "
    + ", ".join(f"{step_label(s)}: {v:.1f}" for s, v in zip(steps, curve))
  )


def _window_text(run: RunSummary, window: int) -> str:
  """'last 6k steps', or 'last 300 steps (the whole run)' when the window reaches its start."""
  if run.covers_whole_run(window):
    last = run.last_step or 0
    return f"last {step_label(last)} steps (the whole run)" if last else "step 0 (the whole run)"
  return f"last {step_label(window)} steps"


def _task_table(run: RunSummary, last_evals: int, train_window: int) -> list[str]:
  """A row per task: the last evaluations, their mean, recent training-episode success."""
  shown = run.last_eval_success(last_evals)
  train = run.train_success(train_window)
  lines = [
    f"| task | eval success at {_steps(run.curve()[0][-last_evals:])} | mean of these "
    f"| train-episode success, {_window_text(run, train_window)} |",
    "|---|---|---|---|",
  ]
  for task in run.tasks:
    values = shown[task]
    lines.append(
      f"| {task} | {' '.join(f'{v:g}' for v in values)} | {np.mean(values):.2f} "
      f"| {_fmt(train[task])} |"
    )
  mean_shown = np.mean([np.mean(v) for v in shown.values()])
  mean_train = _mean([v for v in train.values() if v is not None])
  lines.append(f"| **mean** | | {mean_shown:.2f} | {_fmt(mean_train)} |")
  return lines


def _changes_lines(run: RunSummary) -> list[str]:
  """What changes.jsonl records: config changes a resume accepted, lost history, files
  moved aside, each with its step."""
  if not run.changes:
    return []
  return [
    f"Recorded changes ({CHANGES_FILE}): "
    + "; ".join(change_log.describe(entry) for entry in run.changes)
    + "."
  ]


def report_run(run: RunSummary, last_evals: int, train_window: int) -> str:
  lines = [
    f"#### {run.agent} ({run.run_dir})",
    _progress_line(run),
    *_changes_lines(run),
    _curve_line(run),
  ]
  if run.evals:
    lines += ["", *_task_table(run, last_evals, train_window)]
  return "\n".join(lines)


def _evaluations_text(labels: list[str], runs: list[RunSummary], last_evals: int) -> str:
  """Which evaluations the comparison averages, naming the runs that have fewer."""
  text = "last evaluation" if last_evals == 1 else f"last {last_evals} evaluations"
  fewer = [
    f"{label} has {len(run.evals) or 'none yet'}"
    for label, run in zip(labels, runs)
    if len(run.evals) < last_evals
  ]
  return f"Mean eval success over each run's {text}" + (
    f" (fewer so far: {', '.join(fewer)}):" if fewer else ":"
  )


def comparison_table(runs: list[RunSummary], last_evals: int) -> str:
  agents = [r.agent for r in runs]
  labels = [
    a if agents.count(a) == 1 else os.path.basename(os.path.normpath(r.run_dir))
    for a, r in zip(agents, runs)
  ]
  tasks = list(dict.fromkeys(task for run in runs for task in run.tasks))
  if not tasks:
    return "No run has an evaluation yet: nothing to compare."
  lines = [
    _evaluations_text(labels, runs, last_evals),
    "",
    "| task | " + " | ".join(labels) + " |",
    "|---|" + "---|" * len(runs),
  ]
  per_run = [{t: np.mean(v) for t, v in r.last_eval_success(last_evals).items()} for r in runs]
  for task in tasks:
    lines.append(f"| {task} | " + " | ".join(_fmt(p.get(task)) for p in per_run) + " |")
  means = [_fmt(_mean(list(p.values()))) if p else "no evaluation yet" for p in per_run]
  lines.append("| **mean** | " + " | ".join(means) + " |")
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
