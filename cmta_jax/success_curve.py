"""The paper's metrics of one success curve (docs/algorithm.md §5): the curve smoothed with
factor 0.8 (paper App. C), its maximum ("max smoothed"), the raw maximum and the final value.
"""

from collections.abc import Sequence

import numpy as np

SMOOTHING_FACTOR = 0.8


def smooth(points: Sequence[float], factor: float = SMOOTHING_FACTOR) -> np.ndarray:
  """Paper App. C: s[0] = p[0]; s[i] = s[i-1] * factor + p[i] * (1 - factor)."""
  points = np.asarray(points, dtype=np.float64)
  out = np.empty_like(points)
  for i, p in enumerate(points):
    out[i] = p if i == 0 else out[i - 1] * factor + p * (1.0 - factor)
  return out


def summarize_curve(success: Sequence[float]) -> dict:
  """max smoothed, max and final of one (possibly seed-averaged) success curve; ValueError
  for a curve without points (a run not evaluated yet has none of these)."""
  success = np.asarray(success, dtype=np.float64)
  if success.size == 0:
    raise ValueError("a success curve without evaluations has no max or final")
  return {
    "max_smoothed": float(smooth(success).max()),
    "max": float(success.max()),
    "final": float(success[-1]),
  }
