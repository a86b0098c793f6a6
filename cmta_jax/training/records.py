"""What a run writes about itself: train and evaluation records, the console's progress line,
the final summary.json and success table. Drawing pictures is left to the caller
(`Run.draw_curves`), so training never imports a plotting library."""

import json
import os
import time
from collections.abc import Callable, Sequence

import numpy as np

from cmta_jax import success_curve
from cmta_jax.training import run_state

SUMMARY_FILE = "summary.json"
# (evaluation records so far, title, path) -> the path written; e.g. reporting.figures.run_curves
DrawCurves = Callable[[Sequence[dict], str, str], str]
CURVES_FILE = "curves.png"  # redrawn at every evaluation by a run given `draw_curves`


def per_task(names, values) -> dict:
  return {name: float(v) for name, v in zip(names, np.asarray(values))}


def success_table(names, success, returns) -> str:
  width = max(len(n) for n in names)
  lines = [f"{'task':<{width}}  success  return"]
  for name, s, r in zip(names, success, returns):
    lines.append(f"{name:<{width}}  {s:7.2f}  {r:8.1f}")
  lines.append(f"{'mean':<{width}}  {np.mean(success):7.2f}  {np.mean(returns):8.1f}")
  return "\n".join(lines)


def eval_record(names, step: int, success, returns, episodes: int) -> dict:
  """One seed's evaluation record: per-task success and return ([T] each) and their means."""
  return {
    "step": step,
    "kind": "eval",
    "mean_success": float(np.mean(success)),
    "mean_return": float(np.mean(returns)),
    "success": per_task(names, success),
    "return": per_task(names, returns),
    "episodes": episodes,
  }


def curves_path(seed_run: run_state.SeedRun) -> str:
  return os.path.join(seed_run.run_dir, CURVES_FILE)


def curves_title(seed_run: run_state.SeedRun) -> str:
  return (
    f"{os.path.basename(os.path.normpath(seed_run.run_dir))}: {seed_run.config.agent}, "
    f"{seed_run.config.setting_name()}, "
    f"seed {seed_run.seed}"
  )


def train_record(
  run: run_state.Run, state: run_state.LoopState, seed_run: run_state.SeedRun, sums, count: int
) -> dict:
  names = run.task_names
  record = {"step": state.step, "kind": "train", "updates": count}
  if count:
    for name, value in sorted(sums.items()):  # every metric the update returns
      mean = np.asarray(value) / count
      record[name] = per_task(names, mean) if name == "alpha" else float(np.mean(mean))
  episodes = seed_run.episode_stats.pop()
  if episodes is not None:
    record["train_success"] = float(np.mean(episodes["success"]))
    record["train_return"] = float(np.mean(episodes["return"]))
    record["train_success_per_task"] = per_task(names, episodes["success"])
  elapsed = time.perf_counter() - state.start_time
  record["time/steps_per_sec"] = (state.step - state.start_step) / max(elapsed, 1e-9)
  record["time/elapsed_sec"] = elapsed
  return record


def progress_line(
  run: run_state.Run, state: run_state.LoopState, records: list[tuple[int, dict]]
) -> str:
  total_steps = run.config.train.total_steps
  rate = records[0][1]["time/steps_per_sec"]
  eta = eta_seconds(total_steps, state.step, state.update_clock, time.perf_counter())

  def mean(name):
    return float(np.mean([r[name] for _, r in records]))

  if records[0][1]["updates"]:
    losses = f"critic {mean('critic_loss'):.3g}"
    auxiliary = run.networks.encoder.auxiliary_loss
    if auxiliary is not None:
      losses += f" | {auxiliary.name.removesuffix('_loss')} {mean(auxiliary.name):.3g}"
  else:
    losses = "warm-up (no updates yet)"
  if "attention_staleness" in records[0][1]:
    losses += f" | attention staleness {mean('attention_staleness'):.3f}"
  train_success = [r["train_success"] for _, r in records if "train_success" in r]
  train = (
    f"train success {np.mean(train_success):.2f}" if train_success else "no train episode ended"
  )
  evaluated = [s for s in (state.last_success(i) for i, _ in records) if s is not None]
  last_eval = f"last eval success {np.mean(evaluated):.2f}" if evaluated else "no eval yet"
  line = (
    f"step {state.step}/{total_steps} | {rate:.1f} steps/s | "
    f"ETA {hms(eta) if np.isfinite(eta) else '? (timed once updates run)'} | {losses} | "
    f"{train} | {last_eval}"
  )
  if run.num_seeds > 1:
    line += f" (mean of {len(records)} seeds)"
  return line


def eta_seconds(
  total_steps: int, step: int, update_clock: tuple[int, float] | None, now: float
) -> float:
  """Seconds until `total_steps` at the rate measured since the first update of this process
  (`LoopState.update_clock`), evaluations and checkpoints included; NaN before that rate is
  known (warm-up's random steps run several times faster than steps with updates)."""
  if step >= total_steps:
    return 0.0
  if update_clock is None or step <= update_clock[0] or now <= update_clock[1]:
    return float("nan")
  rate = (step - update_clock[0]) / (now - update_clock[1])
  return (total_steps - step) / rate


def summarize(run: run_state.Run, state: run_state.LoopState, index: int = 0) -> dict:
  """Seed `index`'s summary: the run's curve and its paper metrics (docs/algorithm.md §5)."""
  seed_run = run.seeds[index]
  cfg_env = seed_run.config.env
  history = state.eval_history[index]
  final = history[-1]
  curve = [r["mean_success"] for r in history]
  return {
    "agent": seed_run.config.agent,
    "benchmark": cfg_env.benchmark,
    "mode": cfg_env.mode,
    "eval_protocol": seed_run.config.train.eval_protocol,
    "episode_length": cfg_env.episode_length,
    "setting": seed_run.config.setting_name(),
    "seed": seed_run.seed,
    "steps": state.step,
    "eval_steps": [r["step"] for r in history],
    "mean_success_curve": curve,
    **success_curve.summarize_curve(curve),
    "final_success_per_task": final["success"],
    "final_return_per_task": final["return"],
  }


def write_summary(run: run_state.Run, summary: dict, index: int = 0) -> dict:
  """Writes seed `index`'s summary.json (`summarize`'s) and prints the final evaluation's
  table; returns the summary."""
  seed_run = run.seeds[index]
  with open(os.path.join(seed_run.run_dir, SUMMARY_FILE), "w") as f:
    json.dump(summary, f, indent=2)
  of_seed = f" of seed {seed_run.seed}" if run.num_seeds > 1 else ""
  run.log(
    f"final evaluation{of_seed} (deterministic policy, "
    f"{seed_run.config.train.eval_episodes} episode(s) per task) at step "
    f"{summary['eval_steps'][-1]}:\n"
    + success_table(
      run.task_names,
      list(summary["final_success_per_task"].values()),
      list(summary["final_return_per_task"].values()),
    )
  )
  run.log(
    f"mean success: final {summary['final']:.3f} | max {summary['max']:.3f} | "
    f"max smoothed {summary['max_smoothed']:.3f} | run dir {seed_run.run_dir}"
  )
  if run.draw_curves is not None:
    run.log(f"success curves: {curves_path(seed_run)}")
  return summary


def hms(seconds: float) -> str:
  if not np.isfinite(seconds):
    return "?"
  seconds = int(seconds)
  return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
