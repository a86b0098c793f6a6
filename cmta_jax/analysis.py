"""Success-curve statistics as the paper reports them (docs/algorithm.md §5), plus robust aggregates."""

from collections.abc import Sequence

import numpy as np


def smooth(points: Sequence[float], factor: float = 0.8) -> np.ndarray:
  """Paper App. C: s[0] = p[0]; s[i] = s[i-1] * factor + p[i] * (1 - factor)."""
  points = np.asarray(points, dtype=np.float64)
  out = np.empty_like(points)
  for i, p in enumerate(points):
    out[i] = p if i == 0 else out[i - 1] * factor + p * (1.0 - factor)
  return out


def summarize_curve(success: Sequence[float]) -> dict:
  """max smoothed, max and final of one (possibly seed-averaged) success curve."""
  success = np.asarray(success, dtype=np.float64)
  if success.size == 0:
    return {"max_smoothed": float("nan"), "max": float("nan"), "final": float("nan")}
  return {
    "max_smoothed": float(smooth(success).max()),
    "max": float(success.max()),
    "final": float(success[-1]),
  }


def interquartile_mean(values: Sequence[float]) -> float:
  """Mean of the middle 50% (sorted, trimming a quarter from each end, fractional at the edges)."""
  values = np.sort(np.asarray(values, dtype=np.float64))
  n = values.size
  lo, hi = n / 4.0, 3.0 * n / 4.0
  weights = np.clip(np.minimum(np.arange(1, n + 1), hi) - np.maximum(np.arange(n), lo), 0.0, 1.0)
  return float(np.sum(weights * values) / np.sum(weights))


def bootstrap_ci(
  values: Sequence[float],
  statistic=interquartile_mean,
  num_resamples: int = 2000,
  confidence: float = 0.95,
  seed: int = 0,
) -> tuple[float, float]:
  """Percentile bootstrap confidence interval of `statistic` across seeds."""
  values = np.asarray(values, dtype=np.float64)
  rng = np.random.default_rng(seed)
  stats = [
    statistic(rng.choice(values, size=values.size, replace=True)) for _ in range(num_resamples)
  ]
  alpha = (1.0 - confidence) / 2.0
  return float(np.quantile(stats, alpha)), float(np.quantile(stats, 1.0 - alpha))
