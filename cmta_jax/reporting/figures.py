"""The project's figures, drawn with matplotlib: success curves (paper Fig. 3, 4, 6; a run's
own curves.png), performance profiles, attention over an episode and t-SNE panels (Fig. 5,
7). docs/results.md shows one of each.

Every function writes one image; the format follows the file's extension (.png, .svg,
.pdf). Files are written whole or not at all (a temporary file, then a rename), so an
interrupted write never replaces a good figure with a broken one. Figures use
matplotlib's object API (`Figure`, no pyplot), so nothing here touches global state.
"""

import os
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from cmta_jax import cli, success_curve
from cmta_jax.reporting import run_sets, statistics
from cmta_jax.reporting.tables import Cell

DPI = 100
PANEL_INCHES = (4.8, 3.6)  # width, height of one panel


def save(figure: Figure, path: str) -> str:
  """Writes `figure` to `path` atomically; returns the path."""
  cli.check_output_file(path, cli.FIGURE_FORMATS)
  extension = os.path.splitext(path)[1].lstrip(".").lower()
  temporary = f"{path}.partial"
  try:
    figure.savefig(temporary, format=extension, dpi=DPI)
    os.replace(temporary, path)
  finally:
    if os.path.exists(temporary):
      os.remove(temporary)
  return path


def _grid(panels: int, columns: int) -> tuple[Figure, list]:
  rows = -(-panels // columns)
  columns = min(columns, panels)
  figure = Figure(
    figsize=(PANEL_INCHES[0] * columns, PANEL_INCHES[1] * rows), dpi=DPI, layout="constrained"
  )
  axes = figure.subplots(rows, columns, squeeze=False).ravel()
  for unused in axes[panels:]:
    unused.set_visible(False)
  return figure, list(axes[:panels])


def _success_axes(ax, title: str) -> None:
  ax.set_title(title, fontsize=10)
  ax.set_xlabel("environment steps per task")
  ax.set_ylabel("success rate")
  ax.set_ylim(-0.02, 1.02)
  ax.grid(alpha=0.3)


def run_curves(evals: Sequence[dict], title: str, path: str) -> str:
  """One run: mean success over tasks by evaluation step, smoothed as the paper's App. C,
  and each task's success as a thin line. `evals` are the run's "eval" records."""
  steps = [r["step"] for r in evals]
  mean = [r["mean_success"] for r in evals]
  figure, (ax,) = _grid(1, 1)
  for task in evals[-1].get("success", {}):
    per_task = [r["success"].get(task, np.nan) for r in evals]
    ax.plot(steps, per_task, lw=0.8, alpha=0.35)
  ax.plot(steps, mean, color="black", lw=1.0, alpha=0.6, label="mean over tasks")
  ax.plot(steps, success_curve.smooth(mean), color="black", lw=2.0, label="smoothed (0.8)")
  _success_axes(ax, title)
  ax.legend(loc="upper left", fontsize=8)
  return save(figure, path)


def _seed_curves(cell: Cell, task: str | None = None) -> tuple[list[int], np.ndarray]:
  """Steps every seed reached and success per seed there: [seeds, steps] (mean over tasks,
  or the one task's)."""
  steps = run_sets.common_eval_steps(cell.runs)
  if task is None:
    values = [[run.curve[s] for s in steps] for run in cell.runs]
  else:
    values = [[run.task_success(s)[task] for s in steps] for run in cell.runs]
  return steps, np.asarray(values, dtype=np.float64)


def _iqm_curve(cell: Cell, steps: list[int]) -> np.ndarray:
  return np.array([statistics.iqm(run_sets.score_matrix(cell.runs, s)) for s in steps])


def setting_curves(cells: Sequence[Cell], path: str) -> str:
  """Paper Fig. 3/4: a panel per setting (benchmark and mode), a line per variant: the
  seed-mean success with a band of one standard deviation across seeds, and the IQM over
  seeds and tasks (dashed)."""
  columns = sorted({c.column for c in cells}, key=lambda c: c.split("-"))
  figure, axes = _grid(len(columns), columns=2)
  colours = _colours(cells)
  for ax, column in zip(axes, columns):
    for cell in (c for c in cells if c.column == column):
      steps, per_seed = _seed_curves(cell)
      mean, std = per_seed.mean(axis=0), per_seed.std(axis=0)
      colour = colours[cell.label]
      seeds = f"{len(cell.runs)} seed{'s' if len(cell.runs) > 1 else ''}"
      ax.plot(steps, mean, color=colour, lw=1.8, label=f"{cell.label} ({seeds})")
      ax.fill_between(steps, mean - std, mean + std, color=colour, alpha=0.2, lw=0)
      ax.plot(steps, _iqm_curve(cell, steps), color=colour, lw=1.0, ls="--")
    _success_axes(ax, f"{column}: mean ± std (solid), IQM (dashed)")
    ax.legend(loc="upper left", fontsize=7)
  return save(figure, path)


def performance_profiles(cells: Sequence[Cell], path: str, bootstrap_reps: int) -> str:
  """A panel per setting, a line per variant: the fraction of (seed, task) success rates at
  the last common evaluation above each threshold, with its 95% stratified-bootstrap band
  (Agarwal et al., 2021)."""
  columns = sorted({c.column for c in cells}, key=lambda c: c.split("-"))
  figure, axes = _grid(len(columns), columns=2)
  colours = _colours(cells)
  thresholds = np.linspace(0.0, 1.0, 101)
  for ax, column in zip(axes, columns):
    for cell in (c for c in cells if c.column == column):
      steps = run_sets.common_eval_steps(cell.runs)
      scores = run_sets.score_matrix(cell.runs, steps[-1])
      profile, low, high = statistics.performance_profile(scores, thresholds, bootstrap_reps)
      colour = colours[cell.label]
      ax.plot(thresholds, profile, color=colour, lw=1.8, label=f"{cell.label} @ {steps[-1]:,}")
      ax.fill_between(thresholds, low, high, color=colour, alpha=0.2, lw=0)
    ax.set_title(f"{column}: performance profile", fontsize=10)
    ax.set_xlabel("success rate threshold tau")
    ax.set_ylabel("fraction of (seed, task) above tau")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=7)
  return save(figure, path)


def per_task_curves(cells: Sequence[Cell], column: str, path: str) -> str:
  """Paper Fig. 6: for one setting, a panel per task, a line per variant (seed mean of that
  task's success, band of one standard deviation)."""
  chosen = [c for c in cells if c.column == column]
  if not chosen:
    raise ValueError(f"no runs of {column}")
  tasks = list(chosen[0].runs[0].evals[-1]["success"])
  figure, axes = _grid(len(tasks), columns=5)
  colours = _colours(chosen)
  for ax, task in zip(axes, tasks):
    for cell in chosen:
      steps, per_seed = _seed_curves(cell, task)
      mean, std = per_seed.mean(axis=0), per_seed.std(axis=0)
      ax.plot(steps, mean, color=colours[cell.label], lw=1.5, label=cell.label)
      ax.fill_between(steps, mean - std, mean + std, color=colours[cell.label], alpha=0.2, lw=0)
    _success_axes(ax, task)
  axes[0].legend(loc="upper left", fontsize=7)
  figure.suptitle(f"{column}: success per task (seed mean ± std)")
  return save(figure, path)


def _colours(cells: Sequence[Cell]) -> dict[str, str]:
  """One colour per variant, the same in every panel."""
  labels = list(dict.fromkeys(c.label for c in cells))
  return {label: f"C{i % 10}" for i, label in enumerate(labels)}


def attention_over_episode(traces: Sequence, title: str, path: str) -> str:
  """For each task, the encoder's attention weights over one evaluation episode as a heat
  map (experts x time), above the per-step reward and success. `traces` are
  `inspection.EpisodeTrace`s with attention [L, k]."""
  columns = min(2, len(traces))
  rows = -(-len(traces) // columns)
  figure = Figure(
    figsize=(PANEL_INCHES[0] * 1.4 * columns, PANEL_INCHES[1] * rows), dpi=DPI, layout="constrained"
  )
  panels = figure.subfigures(rows, columns, squeeze=False).ravel()
  for panel in panels[len(traces) :]:
    panel.set_visible(False)
  for panel, trace in zip(panels, traces):
    weights = trace.attention.reshape(len(trace.attention), -1)
    top, bottom = panel.subplots(2, 1, sharex=True, height_ratios=(2, 1))
    image = top.imshow(
      weights.T,
      aspect="auto",
      origin="lower",
      cmap="viridis",
      vmin=0.0,
      vmax=1.0,
      interpolation="nearest",
    )
    panel.colorbar(image, ax=top, label="weight", pad=0.01)
    top.set_ylabel("expert")
    top.set_title(
      f"{trace.task} (success {'yes' if trace.success.max() > 0 else 'no'})", fontsize=9
    )
    steps = np.arange(len(trace.reward))
    bottom.plot(steps, trace.reward, color="C0", lw=1.0)
    bottom.set_ylabel("reward", color="C0")
    bottom.set_xlabel("episode step")
    success_axis = bottom.twinx()
    success_axis.fill_between(steps, trace.success, step="mid", color="C2", alpha=0.3, lw=0)
    success_axis.set_ylim(0, 1.05)
    success_axis.set_yticks([0, 1])
    success_axis.set_ylabel("success", color="C2")
  figure.suptitle(title)
  return save(figure, path)


def tsne_panels(
  panels: Sequence[tuple[str, np.ndarray, np.ndarray, Sequence[str]]], path: str
) -> str:
  """Scatter plots of 2-D embeddings, one panel each: (title, points [N, 2], colour index
  [N] int, names of the colour indices)."""
  figure, axes = _grid(len(panels), columns=2)
  for ax, (title, points, colour, names) in zip(axes, panels):
    for i, name in enumerate(names):
      chosen = colour == i
      ax.scatter(points[chosen, 0], points[chosen, 1], s=3, color=f"C{i % 10}", label=name)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=6, markerscale=3, loc="best", ncol=1 + len(names) // 12)
  return save(figure, path)
