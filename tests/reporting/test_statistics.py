"""cmta_jax/statistics.py against hand computation: the paper's smoothing and the rliable-based
aggregates (IQM, stratified bootstrap interval, probability of improvement)."""

import itertools

import numpy as np
import pytest

from cmta_jax import success_curve
from cmta_jax.reporting import statistics


def test_smoothing_and_curve_summary_follow_the_paper_appendix_c():
  curve = [0.0, 1.0, 0.5]
  # s0 = 0; s1 = 0.8 * 0 + 0.2 * 1 = 0.2; s2 = 0.8 * 0.2 + 0.2 * 0.5 = 0.26
  np.testing.assert_allclose(success_curve.smooth(curve), [0.0, 0.2, 0.26])
  assert success_curve.summarize_curve(curve) == pytest.approx(
    {"max_smoothed": 0.26, "max": 1.0, "final": 0.5}
  )


def test_iqm_is_the_mean_of_the_middle_half_of_all_run_task_scores():
  scores = np.array([[0.0, 0.9, 0.2, 0.4], [1.0, 0.3, 0.6, 0.5]])  # 8 entries
  middle = np.sort(scores.ravel())[2:6]  # a quarter (2 entries) trimmed at each end
  assert statistics.iqm(scores) == pytest.approx(middle.mean())
  with pytest.raises(ValueError, match=r"non-empty \[runs, tasks\] matrix, got shape \(3,\)"):
    statistics.iqm(np.ones(3))
  with pytest.raises(ValueError, match="non-finite"):
    statistics.iqm(np.array([[np.nan, 1.0]]))


def _hand_stratified_bootstrap(scores, reps, rng, confidence=0.95):
  """Resample runs with replacement within each task; percentile interval of the IQM."""
  runs, tasks = scores.shape
  stats = []
  for _ in range(reps):
    picks = rng.integers(0, runs, size=(runs, tasks))
    stats.append(statistics.iqm(scores[picks, np.arange(tasks)]))
  tail = 100 * (1 - confidence) / 2
  return np.percentile(stats, [tail, 100 - tail])


def test_iqm_interval_matches_a_hand_written_stratified_bootstrap():
  scores = np.random.default_rng(0).uniform(size=(6, 5))
  point, low, high = statistics.iqm_with_ci(scores, reps=4000, seed=1)
  hand_low, hand_high = _hand_stratified_bootstrap(scores, 4000, np.random.default_rng(2))
  assert point == pytest.approx(statistics.iqm(scores))
  # Two independent Monte-Carlo estimates of the same percentiles.
  assert low == pytest.approx(hand_low, abs=0.015) and high == pytest.approx(hand_high, abs=0.015)
  assert low < point < high


def test_iqm_interval_is_deterministic_leaves_numpy_global_state_and_collapses_without_spread():
  scores = np.random.default_rng(3).uniform(size=(4, 3))
  np.random.seed(123)
  before = np.random.get_state()[1].copy()
  first = statistics.iqm_with_ci(scores, reps=200, seed=7)
  np.testing.assert_array_equal(np.random.get_state()[1], before)
  assert statistics.iqm_with_ci(scores, reps=200, seed=7) == first
  assert statistics.iqm_with_ci(scores, reps=200, seed=8) != first
  # Every run scores the same within each task: every resample is the original matrix.
  same_per_task = np.tile([[0.2, 0.5, 0.9]], (4, 1))
  point, low, high = statistics.iqm_with_ci(same_per_task, reps=200)
  assert low == pytest.approx(point) and high == pytest.approx(point)


def test_probability_of_improvement_counts_pairs_of_runs_per_task():
  x = np.array([[1.0, 0.0], [0.5, 0.5]])
  y = np.array([[0.5, 0.5], [0.0, 0.5], [0.2, 1.0]])
  by_task = []
  for task in range(2):
    pairs = list(itertools.product(x[:, task], y[:, task]))
    by_task.append(np.mean([1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs]))
  assert statistics.probability_of_improvement(x, y) == pytest.approx(np.mean(by_task))
  with pytest.raises(ValueError, match="task counts differ: 2 != 3"):
    statistics.probability_of_improvement(x, np.ones((2, 3)))


def test_performance_profile_is_the_fraction_of_run_task_scores_above_each_threshold():
  scores = np.array([[0.0, 0.5, 1.0], [0.2, 0.5, 0.9]])
  thresholds = np.array([0.0, 0.3, 0.5, 0.95])
  profile, low, high = statistics.performance_profile(scores, thresholds, reps=200)
  hand = [np.mean(scores > tau) for tau in thresholds]  # 5/6, 4/6, 2/6, 1/6
  np.testing.assert_allclose(profile, hand)
  assert np.all(low <= profile + 1e-12) and np.all(profile <= high + 1e-12)
  same_per_task = np.tile([[0.2, 0.5, 0.9]], (3, 1))
  profile, low, high = statistics.performance_profile(same_per_task, thresholds, reps=100)
  np.testing.assert_allclose(low, profile)
  np.testing.assert_allclose(high, profile)


def test_a_curve_without_evaluations_has_no_summary():
  with pytest.raises(ValueError, match="without evaluations has no max or final"):
    success_curve.summarize_curve([])
