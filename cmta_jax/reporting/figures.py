"""The project's figures, drawn with matplotlib: success curves (paper Fig. 3, 4, 6; a run's
own curves.png), performance profiles, attention over an episode and t-SNE panels (Fig. 5,
7). docs/results.md shows one of each.

Every public function writes one image (each curve figure also has a `*_figure` that
builds it without writing); the format follows the file's extension (.png, .svg, .pdf).
Files are written whole or not at all (a temporary file, then a rename), so an
interrupted write never replaces a good figure with a broken one. Figures use
matplotlib's object API (`Figure`, no pyplot), so nothing here touches global state.

Young runs are drawn as what they are: a curve of one evaluation is a marker on an axis
around its step, a variant without an evaluation yet is named so in the legend, and a
figure with nothing to draw is not written (`NothingToDraw`). Steps read as `step_label`.
"""

import os
from collections.abc import Sequence

import numpy as np
from matplotlib import ticker
from matplotlib.figure import Figure

from cmta_jax import cli, success_curve
from cmta_jax.reporting import run_sets, statistics
from cmta_jax.reporting.tables import Cell
from cmta_jax.step_labels import step_label

DPI = 100
PANEL_INCHES = (4.8, 3.6)  # width, height of one panel


class NothingToDraw(ValueError):
  """None of the runs given to a figure has an evaluation to draw; no file was written."""


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


def _success_axes(ax, title: str, steps: Sequence[int]) -> None:
  """Success rate over environment steps (`steps`: every step drawn in the panel)."""
  ax.set_title(title, fontsize=10)
  ax.set_ylabel("success rate")
  ax.set_ylim(-0.02, 1.02)
  ax.grid(alpha=0.3)
  ax.set_xlabel("environment steps per task")
  ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
  ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda x, _: step_label(x)))
  distinct = sorted(set(steps))
  if not distinct:
    ax.set_xticks([])
    ax.text(0.5, 0.5, "nothing to draw yet", transform=ax.transAxes, ha="center", va="center")
  elif len(distinct) == 1:  # matplotlib would span a fraction of a step around it
    step = distinct[0]
    ax.set_xticks(sorted({0, step}))
    ax.set_xlim(step - max(step, 1), step + max(step, 1))


def _curve(ax, steps: Sequence[int], values, marker: str = "o", **style) -> None:
  """A line through (steps, values); a single point as `marker`, which a line would not show."""
  if len(steps) == 1:
    style = {"marker": marker, "markersize": 6, **style}
  ax.plot(steps, values, **style)


def _band(ax, steps: Sequence[int], low, high, colour: str) -> None:
  """A shaded band between `low` and `high`; at a single step, a bar."""
  if len(steps) == 1:
    ax.vlines(steps, low, high, color=colour, alpha=0.35, lw=6)
  else:
    ax.fill_between(steps, low, high, color=colour, alpha=0.2, lw=0)


def _so_far(count: int) -> str:
  return ", one evaluation so far" if count == 1 else ""


def _legend_only(ax, label: str, colour: str) -> None:
  """A legend entry for a variant that has nothing to draw yet."""
  ax.plot([], [], color=colour, lw=1.5, label=label)


def run_curves(evals: Sequence[dict], title: str, path: str) -> str:
  """Writes `run_curves_figure` to `path`; returns the path."""
  return save(run_curves_figure(evals, title), path)


def run_curves_figure(evals: Sequence[dict], title: str) -> Figure:
  """One run: mean success over tasks by evaluation step, smoothed as the paper's App. C,
  and each task's success as a thin line. `evals` are the run's "eval" records; without
  any, NothingToDraw."""
  if not evals:
    raise NothingToDraw(f"{title}: no evaluation yet")
  steps = [r["step"] for r in evals]
  mean = [r["mean_success"] for r in evals]
  figure, (ax,) = _grid(1, 1)
  for task in evals[-1].get("success", {}):
    per_task = [r["success"].get(task, np.nan) for r in evals]
    _curve(ax, steps, per_task, marker=".", lw=0.8, alpha=0.35)
  label = f"mean over tasks{_so_far(len(steps))}"
  _curve(ax, steps, mean, color="black", lw=1.0, alpha=0.6, label=label)
  if len(steps) > 1:  # one point smooths to itself
    ax.plot(steps, success_curve.smooth(mean), color="black", lw=2.0, label="smoothed (0.8)")
  _success_axes(ax, title, steps)
  ax.legend(loc="upper left", fontsize=8)
  return figure


def _nothing_to_draw(cells: Sequence[Cell]) -> NothingToDraw:
  runs = [run for cell in cells for run in cell.runs]
  if not any(run.evals for run in runs):
    return NothingToDraw(f"no run has an evaluation yet ({', '.join(r.run_dir for r in runs)})")
  return NothingToDraw("no setting has an evaluation step that all its seeds reached")


def _seed_curves(cell: Cell, task: str | None = None) -> tuple[list[int], np.ndarray]:
  """Steps every seed reached and success per seed there: [seeds, steps] (mean over tasks,
  or the one task's); no steps while a seed has no evaluation."""
  steps = run_sets.common_eval_steps(cell.runs)
  if task is None:
    values = [[run.curve[s] for s in steps] for run in cell.runs]
  else:
    values = [[run.task_success(s)[task] for s in steps] for run in cell.runs]
  return steps, np.asarray(values, dtype=np.float64)


def _iqm_curve(cell: Cell, steps: list[int]) -> np.ndarray:
  return np.array([statistics.iqm(run_sets.score_matrix(cell.runs, s)) for s in steps])


def setting_curves(cells: Sequence[Cell], path: str) -> str:
  """Writes `setting_curves_figure` to `path`; returns the path."""
  return save(setting_curves_figure(cells), path)


def setting_curves_figure(cells: Sequence[Cell]) -> Figure:
  """Paper Fig. 3/4: a panel per setting (benchmark and mode), a line per variant: the
  seed-mean success with a band of one standard deviation across seeds, and the IQM over
  seeds and tasks (dashed). NothingToDraw if no variant has an evaluation every seed reached."""
  if not any(run_sets.common_eval_steps(c.runs) for c in cells):
    raise _nothing_to_draw(cells)
  columns = sorted({c.column for c in cells}, key=lambda c: c.split("-"))
  figure, axes = _grid(len(columns), columns=2)
  colours = _colours(cells)
  for ax, column in zip(axes, columns):
    drawn = []
    for cell in (c for c in cells if c.column == column):
      steps, per_seed = _seed_curves(cell)
      colour = colours[cell.label]
      seeds = f"{len(cell.runs)} seed{'s' if len(cell.runs) > 1 else ''}"
      if not steps:
        _legend_only(ax, f"{cell.label} ({seeds}): {run_sets.not_evaluated(cell.runs)}", colour)
        continue
      mean, std = per_seed.mean(axis=0), per_seed.std(axis=0)
      label = f"{cell.label} ({seeds}{_so_far(len(steps))})"
      _curve(ax, steps, mean, color=colour, lw=1.8, label=label)
      _band(ax, steps, mean - std, mean + std, colour)
      _curve(ax, steps, _iqm_curve(cell, steps), marker="x", color=colour, lw=1.0, ls="--")
      drawn += steps
    _success_axes(ax, f"{column}: mean ± std (solid), IQM (dashed)", drawn)
    ax.legend(loc="upper left", fontsize=7)
  return figure


def performance_profiles(cells: Sequence[Cell], path: str, bootstrap_reps: int) -> str:
  """Writes `performance_profiles_figure` to `path`; returns the path."""
  return save(performance_profiles_figure(cells, bootstrap_reps), path)


def performance_profiles_figure(cells: Sequence[Cell], bootstrap_reps: int) -> Figure:
  """A panel per setting, a line per variant: the fraction of (seed, task) success rates at
  the last common evaluation above each threshold, with its 95% stratified-bootstrap band
  (Agarwal et al., 2021). NothingToDraw if no variant has an evaluation every seed reached."""
  if not any(run_sets.common_eval_steps(c.runs) for c in cells):
    raise _nothing_to_draw(cells)
  columns = sorted({c.column for c in cells}, key=lambda c: c.split("-"))
  figure, axes = _grid(len(columns), columns=2)
  colours = _colours(cells)
  thresholds = np.linspace(0.0, 1.0, 101)
  for ax, column in zip(axes, columns):
    drawn = False
    for cell in (c for c in cells if c.column == column):
      steps = run_sets.common_eval_steps(cell.runs)
      colour = colours[cell.label]
      if not steps:
        _legend_only(ax, f"{cell.label}: {run_sets.not_evaluated(cell.runs)}", colour)
        continue
      scores = run_sets.score_matrix(cell.runs, steps[-1])
      profile, low, high = statistics.performance_profile(scores, thresholds, bootstrap_reps)
      label = f"{cell.label} @ {step_label(steps[-1])}"
      ax.plot(thresholds, profile, color=colour, lw=1.8, label=label)
      ax.fill_between(thresholds, low, high, color=colour, alpha=0.2, lw=0)
      drawn = True
    if not drawn:
      ax.text(0.5, 0.5, "nothing to draw yet", transform=ax.transAxes, ha="center", va="center")
    ax.set_title(f"{column}: performance profile", fontsize=10)
    ax.set_xlabel("success rate threshold tau")
    ax.set_ylabel("fraction of (seed, task) above tau")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=7)
  return figure


def per_task_curves(cells: Sequence[Cell], column: str, path: str) -> str:
  """Writes `per_task_curves_figure` to `path`; returns the path."""
  return save(per_task_curves_figure(cells, column), path)


def per_task_curves_figure(cells: Sequence[Cell], column: str) -> Figure:
  """Paper Fig. 6: for one setting, a panel per task, a line per variant (seed mean of that
  task's success, band of one standard deviation). ValueError if no cell is of `column`,
  NothingToDraw if none of its variants has an evaluation every seed reached."""
  chosen = [c for c in cells if c.column == column]
  if not chosen:
    raise ValueError(f"no runs of {column}")
  if not any(run_sets.common_eval_steps(c.runs) for c in chosen):
    raise _nothing_to_draw(chosen)
  evaluated = next(run for c in chosen for run in c.runs if run.evals)
  tasks = list(evaluated.evals[-1]["success"])
  figure, axes = _grid(len(tasks), columns=5)
  colours = _colours(chosen)
  for ax, task in zip(axes, tasks):
    drawn = []
    for cell in chosen:
      steps, per_seed = _seed_curves(cell, task)
      colour = colours[cell.label]
      if not steps:
        _legend_only(ax, f"{cell.label}: {run_sets.not_evaluated(cell.runs)}", colour)
        continue
      mean, std = per_seed.mean(axis=0), per_seed.std(axis=0)
      _curve(ax, steps, mean, color=colour, lw=1.5, label=f"{cell.label}{_so_far(len(steps))}")
      _band(ax, steps, mean - std, mean + std, colour)
      drawn += steps
    _success_axes(ax, task, drawn)
  axes[0].legend(loc="upper left", fontsize=7)
  figure.suptitle(f"{column}: success per task (seed mean ± std)")
  return figure


def _colours(cells: Sequence[Cell]) -> dict[str, str]:
  """One colour per variant, the same in every panel."""
  labels = list(dict.fromkeys(c.label for c in cells))
  return {label: f"C{i % 10}" for i, label in enumerate(labels)}


def attention_over_episode(
  traces: Sequence, title: str, path: str, weights_label: str = "expert"
) -> str:
  """For each task, the encoder's attention weights (or an actor's routing weights,
  flattened) over one evaluation episode as a heat map (weights x time), above the per-step
  reward and success. `traces` are `inspection.EpisodeTrace`s with attention [L, ...]."""
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
    top.set_ylabel(weights_label)
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
