"""Success-curve statistics as the paper reports them, and robust aggregates across runs.

One curve's metrics (smoothing, max smoothed) are in `cmta_jax.success_curve`. Across runs: the interquartile mean (IQM) with a stratified bootstrap confidence
interval, the probability of improvement and performance profiles, from `rliable`
(Agarwal et al., 2021), wrapped here only to fix their random numbers and shapes.
"""

import contextlib
import warnings
from collections.abc import Iterator

import numpy as np

DEFAULT_BOOTSTRAP_REPS = 2000


def _rliable():
  # Imported on first use: rliable brings arch, statsmodels and pandas (seconds), which
  # tables and figures without intervals do not need.
  from rliable import library, metrics

  return library, metrics


@contextlib.contextmanager
def _seeded_global_numpy(seed: int) -> Iterator[None]:
  # rliable's StratifiedBootstrap draws its resampling indices from numpy's global RNG
  # (np.random.choice), whatever random_state it is given: seed it for the call, then put
  # the caller's state back.
  saved = np.random.get_state()
  np.random.seed(seed)
  try:
    with warnings.catch_warnings():
      # arch (under rliable) deprecates the random_state argument rliable passes.
      warnings.filterwarnings(
        "ignore", message="random_state is deprecated", category=FutureWarning
      )
      yield
  finally:
    np.random.set_state(saved)


def _check_scores(scores: np.ndarray, name: str = "scores") -> np.ndarray:
  scores = np.asarray(scores, dtype=np.float64)
  if scores.ndim != 2 or 0 in scores.shape:
    raise ValueError(f"{name} must be a non-empty [runs, tasks] matrix, got shape {scores.shape}")
  if not np.all(np.isfinite(scores)):
    raise ValueError(f"{name} holds non-finite values")
  return scores


def iqm(scores: np.ndarray) -> float:
  """Interquartile mean of a [runs, tasks] score matrix (the middle 50% of all its entries).

  Raises ValueError for an empty or non-2-D matrix or non-finite scores.
  """
  _, metrics = _rliable()
  return float(metrics.aggregate_iqm(_check_scores(scores)))


def iqm_with_ci(
  scores: np.ndarray,
  reps: int = DEFAULT_BOOTSTRAP_REPS,
  confidence: float = 0.95,
  seed: int = 0,
) -> tuple[float, float, float]:
  """(IQM, lower, upper) of a [runs, tasks] matrix: a percentile confidence interval from
  the stratified bootstrap (runs resampled with replacement within each task).

  Deterministic for a given seed. Raises ValueError as `iqm`.
  """
  scores = _check_scores(scores)
  library, metrics = _rliable()
  func = lambda x: np.array([metrics.aggregate_iqm(x)])
  with _seeded_global_numpy(seed):
    point, interval = library.get_interval_estimates(
      {"scores": scores},
      func,
      reps=reps,
      confidence_interval_size=confidence,
      random_state=np.random.RandomState(seed),
    )
  return float(point["scores"][0]), float(interval["scores"][0, 0]), float(interval["scores"][1, 0])


def probability_of_improvement(scores_x: np.ndarray, scores_y: np.ndarray) -> float:
  """P(X > Y): the chance that a run of X beats a run of Y on a random task, ties counting
  half (Mann-Whitney U statistic averaged over tasks). Both are [runs, tasks] with the same
  tasks; the run counts may differ."""
  scores_x, scores_y = _check_scores(scores_x, "scores_x"), _check_scores(scores_y, "scores_y")
  if scores_x.shape[1] != scores_y.shape[1]:
    raise ValueError(f"task counts differ: {scores_x.shape[1]} != {scores_y.shape[1]}")
  _, metrics = _rliable()
  return float(metrics.probability_of_improvement(scores_x, scores_y))


def performance_profile(
  scores: np.ndarray,
  thresholds: np.ndarray,
  reps: int = DEFAULT_BOOTSTRAP_REPS,
  confidence: float = 0.95,
  seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The score distribution of a [runs, tasks] matrix: for each threshold tau, the fraction
  of (run, task) scores above tau ([len(thresholds)]), with the lower and upper bounds of
  its stratified-bootstrap interval. Deterministic for a given seed."""
  scores = _check_scores(scores)
  library, _ = _rliable()
  with _seeded_global_numpy(seed):
    profiles, intervals = library.create_performance_profile(
      {"scores": scores},
      np.asarray(thresholds, np.float64),
      reps=reps,
      confidence_interval_size=confidence,
    )
  return profiles["scores"], intervals["scores"][0], intervals["scores"][1]
