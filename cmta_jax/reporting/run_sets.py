"""Sets of finished or running run directories, grouped into settings by their saved config.

A setting is everything a run's `config.json` says except its seed and the fields that
only change bookkeeping (how often it logs or checkpoints, how its environments are
stepped). A run whose config changed on resume (changes.jsonl) is a setting of its own,
labelled by its changes. Seeds of one setting are averaged by the report commands; runs of
different settings never are. Every problem is a one-line ValueError naming the run directory; a run
that has not been evaluated yet is no problem: it loads with no evaluations, and its
setting says so (`not_evaluated`).
"""

import dataclasses
import os
from collections.abc import Iterable, Sequence

import numpy as np

from cmta_jax import config as config_lib
from cmta_jax import success_curve
from cmta_jax.reporting import statistics
from cmta_jax.training import change_log, metrics_log
from cmta_jax.training import run_dir as run_dir_lib

SEED_FIELD = "train.seed"
# Fields that do not change what a run learns or how it is evaluated.
BOOKKEEPING_FIELDS = frozenset(
  {
    "train.log_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.video_every",
    "env.vector_strategy",
    "train.replay_placement",  # where the replay lives; the same draws
  }
)


@dataclasses.dataclass(frozen=True)
class LoadedRun:
  run_dir: str
  config: dict  # flat, with today's field paths
  evals: tuple[dict, ...]  # the "eval" records of metrics.jsonl, in step order (maybe none)
  last_step: int = 0  # of its newest record
  # Config changes a resume accepted (changes.jsonl) that change what the run learns:
  # (step, field, old value, new value); `config` holds the values after the last one.
  changes: tuple[tuple, ...] = ()

  @property
  def seed(self) -> int:
    return self.config[SEED_FIELD]

  @property
  def curve(self) -> dict[int, float]:
    """Mean success over tasks by evaluation step."""
    return {r["step"]: r["mean_success"] for r in self.evals}

  def task_success(self, step: int) -> dict[str, float]:
    """Success per task at evaluation step `step` (KeyError if it has no evaluation there)."""
    record = next((r for r in self.evals if r["step"] == step), None)
    if record is None:
      raise KeyError(f"{self.run_dir} has no evaluation at step {step}")
    if "success" not in record:
      raise ValueError(f"{self.run_dir}: the evaluation of step {step} has no per-task success")
    return record["success"]


def load_run(run_dir: str) -> LoadedRun:
  """Reads a run directory's config.json and evaluation records.

  Raises ValueError (one line, naming the directory) if it is not a run directory or its
  config or metrics cannot be read. A run not evaluated yet has no `evals`.
  """
  if not os.path.isdir(run_dir):
    raise ValueError(f"{run_dir} is not a directory (give run directories or a root to search)")
  config = run_dir_lib.read_saved_config(run_dir)
  if config is None:
    raise ValueError(f"{run_dir} has no {run_dir_lib.CONFIG_FILE} (is it a run directory?)")
  if SEED_FIELD not in config or "agent" not in config:
    raise ValueError(f"{run_dir}: {run_dir_lib.CONFIG_FILE} names no agent or seed")
  if not os.path.exists(os.path.join(run_dir, metrics_log.METRICS_FILE)):
    raise ValueError(f"{run_dir} has no {metrics_log.METRICS_FILE} (did the run start?)")
  records = metrics_log.read_records(run_dir)
  evals = tuple(r for r in records if r["kind"] == "eval")
  # Fields the config predates take their defaults, as on resume, so that runs of different
  # versions group by what they ran, not by which fields their files list.
  defaults = config_lib.flatten(config_lib.RunConfig())
  last_step = max((r["step"] for r in records), default=0)
  return LoadedRun(run_dir, {**defaults, **config}, evals, last_step, _learning_changes(run_dir))


def _learning_changes(run_dir: str) -> tuple[tuple, ...]:
  """The run's recorded config changes of setting fields (not bookkeeping, not the budget:
  extending a run is normal)."""
  try:
    entries = change_log.config_changes(run_dir)
  except ValueError as error:
    raise ValueError(f"{run_dir}: {error}") from None
  return tuple(
    (e["step"], e["field"], _hashable(e["old"]), _hashable(e["new"]))
    for e in entries
    if e["field"] not in BOOKKEEPING_FIELDS and e["field"] not in ("train.total_steps", SEED_FIELD)
  )


def describe_changes(changes: Sequence[tuple]) -> str:
  """'from step 80: sac.critic_lr 0.0003 -> 0.001; ...' for a run's `changes`."""
  return "; ".join(f"from step {step}: {field} {old} -> {new}" for step, field, old, new in changes)


def find_run_dirs(paths: Sequence[str]) -> list[str]:
  """The run directories among `paths`: each path is one, or a root searched for them
  (directories holding a config.json). Raises ValueError for a path that does not exist,
  a root without runs, and a directory given twice (also through different spellings)."""
  found, seen = [], {}
  for path in paths:
    if not os.path.exists(path):
      raise ValueError(f"{path} does not exist")
    if os.path.isfile(os.path.join(path, run_dir_lib.CONFIG_FILE)):
      candidates = [path]
    else:
      candidates = sorted(
        root for root, _, files in os.walk(path) if run_dir_lib.CONFIG_FILE in files
      )
      if not candidates:
        raise ValueError(f"{path} holds no run directories (none has a config.json)")
    for run_dir in candidates:
      real = os.path.realpath(run_dir)
      if real in seen:
        raise ValueError(f"{run_dir} is given twice (also as {seen[real]}); each run counts once")
      seen[real] = run_dir
      found.append(run_dir)
  return found


def _setting(config: dict) -> dict:
  """The fields that define a run's setting: all but the seed and bookkeeping."""
  return {k: v for k, v in config.items() if k not in BOOKKEEPING_FIELDS and k != SEED_FIELD}


def setting_of(config: dict) -> tuple:
  """A hashable key of the run's setting."""
  return tuple(sorted((k, _hashable(v)) for k, v in _setting(config).items()))


def group_by_setting(runs: Iterable[LoadedRun]) -> list[list[LoadedRun]]:
  """Runs grouped by setting, in order of first appearance. Raises ValueError naming both
  runs if a setting holds one seed twice."""
  groups: dict[tuple, list[LoadedRun]] = {}
  for run in runs:
    # A run whose config changed on the way is its own setting, whatever it ended with.
    group = groups.setdefault((setting_of(run.config), run.changes), [])
    twin = next((other for other in group if other.seed == run.seed), None)
    if twin is not None:
      raise ValueError(
        f"{run.run_dir} and {twin.run_dir} are the same setting with the same seed "
        f"({run.seed}); keep one of them"
      )
    group.append(run)
  return list(groups.values())


def differing_fields(a: dict, b: dict) -> list[str]:
  """The setting fields (paths) in which two configs differ, sorted."""
  a, b = _setting(a), _setting(b)
  return [path for path in sorted(set(a) | set(b)) if a.get(path) != b.get(path)]


def setting_differences(a: dict, b: dict) -> list[str]:
  """'path: A != B' for every setting field in which two configs differ."""
  return [f"{path}: {a.get(path)!r} != {b.get(path)!r}" for path in differing_fields(a, b)]


def _hashable(value):
  return tuple(value) if isinstance(value, list) else value


def common_eval_steps(runs: Sequence[LoadedRun]) -> list[int]:
  """The evaluation steps every run reached (none while one of them has no evaluation)."""
  return sorted(set.intersection(*(set(run.curve) for run in runs)))


def not_evaluated(runs: Sequence[LoadedRun]) -> str:
  """Why seeds of one setting share no evaluation step, in a few words: "no evaluation yet",
  or "no common evaluation yet (seed 1 has none)"; for runs without `common_eval_steps`."""
  waiting = [run for run in runs if not run.evals]
  if len(waiting) == len(runs):
    return "no evaluation yet"
  if not waiting:
    return "no evaluation step every seed reached"
  if len(waiting) == 1:
    return f"no common evaluation yet (seed {waiting[0].seed} has none)"
  return f"no common evaluation yet (seeds {', '.join(str(r.seed) for r in waiting)} have none)"


def score_matrix(runs: Sequence[LoadedRun], step: int) -> np.ndarray:
  """Success per run and task at `step`: [runs, tasks], tasks in the first run's order.
  ValueError if the runs were evaluated on different tasks."""
  first = runs[0].task_success(step)
  rows = []
  for run in runs:
    success = run.task_success(step)
    if set(success) != set(first):
      raise ValueError(f"{run.run_dir} was evaluated on other tasks than {runs[0].run_dir}")
    rows.append([success[task] for task in first])
  return np.array(rows, dtype=np.float64)


def summarize_setting(
  runs: Sequence[LoadedRun], bootstrap_reps: int = statistics.DEFAULT_BOOTSTRAP_REPS
) -> dict:
  """The seeds of one setting, up to the last evaluation step they all reached.

  Paper metrics of the seed-mean success curve (max smoothed, max, final; docs/algorithm.md
  §5) and, across runs and tasks at that step, the IQM with its 95% stratified bootstrap
  interval (`statistics.iqm_with_ci`). Keys: seeds, steps, evaluations, max_smoothed, max,
  final, final_iqm, final_iqm_ci95; while the seeds share no evaluation step, only seeds,
  evaluations (0) and not_evaluated (`not_evaluated`'s words).
  """
  steps = common_eval_steps(runs)
  if not steps:
    return {"seeds": len(runs), "evaluations": 0, "not_evaluated": not_evaluated(runs)}
  mean_curve = np.mean([[run.curve[s] for s in steps] for run in runs], axis=0)
  point, low, high = statistics.iqm_with_ci(score_matrix(runs, steps[-1]), reps=bootstrap_reps)
  return {
    "seeds": len(runs),
    "steps": steps[-1],
    "evaluations": len(steps),
    **success_curve.summarize_curve(mean_curve),
    "final_iqm": point,
    "final_iqm_ci95": [low, high],
  }
