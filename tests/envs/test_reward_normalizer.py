"""Tests for the per-task exponential reward normaliser."""

import pickle
import types

import numpy as np
import pytest
from metaworld.wrappers import NormalizeRewardsExponential

from cmta_jax.envs.reward_normalizer import RewardNormalizer

NUM_TASKS = 4
RATE = 0.001


def _reward_stream(num_steps: int, seed: int = 0) -> np.ndarray:
  """[num_steps, NUM_TASKS] rewards on different scales per task (like Meta-World's 0..10)."""
  rng = np.random.default_rng(seed)
  scales = np.array([0.1, 1.0, 5.0, 10.0])
  return rng.uniform(0.0, 1.0, (num_steps, NUM_TASKS)) * scales


def _scalar_reference(rewards: np.ndarray, rate: float) -> np.ndarray:
  """One metaworld estimate per task, one update per reward, then reward / (std + 1e-8)."""
  out = np.zeros_like(rewards)
  for task in range(rewards.shape[1]):
    # metaworld's own update rule, run on a stand-in for the wrapper.
    stub = types.SimpleNamespace(_reward_alpha=rate, _reward_mean=0.0, _reward_var=1.0)
    for step in range(rewards.shape[0]):
      reward = float(rewards[step, task])
      NormalizeRewardsExponential._update_reward_estimate(stub, reward)
      out[step, task] = reward / (np.sqrt(stub._reward_var) + 1e-8)
  return out


@pytest.mark.parametrize("rate", [RATE, 0.05])
def test_matches_scalar_metaworld_loop(rate):
  rewards = _reward_stream(300)
  normalizer = RewardNormalizer(NUM_TASKS, rate)
  vectorised = np.stack([normalizer.normalize(r) for r in rewards])
  np.testing.assert_array_equal(vectorised, _scalar_reference(rewards, rate))


def test_no_mean_shift_and_scale_shrinks_for_large_rewards():
  normalizer = RewardNormalizer(NUM_TASKS, rate=0.05)
  rewards = np.full(NUM_TASKS, 10.0)
  for _ in range(200):
    scaled = normalizer.normalize(rewards)
  assert np.all(scaled > 0.0)  # A mean shift would drive a constant reward to ~0.
  assert np.all(normalizer.mean > 9.0)
  np.testing.assert_allclose(scaled, rewards / (np.sqrt(normalizer.var) + 1e-8))


def test_initial_state_leaves_rewards_nearly_unchanged():
  normalizer = RewardNormalizer(NUM_TASKS)
  rewards = np.array([0.5, 1.0, 2.0, 3.0])
  np.testing.assert_allclose(normalizer.normalize(rewards), rewards, rtol=1e-2)


def test_tasks_are_independent():
  rewards = _reward_stream(100)
  other = rewards.copy()
  other[:, 2] *= 50.0  # Only task 2 changes.
  a, b = RewardNormalizer(NUM_TASKS), RewardNormalizer(NUM_TASKS)
  out_a = np.stack([a.normalize(r) for r in rewards])
  out_b = np.stack([b.normalize(r) for r in other])
  keep = [0, 1, 3]
  np.testing.assert_array_equal(out_a[:, keep], out_b[:, keep])
  assert not np.allclose(out_a[:, 2], out_b[:, 2])


def test_state_round_trip_resumes_exactly():
  rewards = _reward_stream(200)
  uninterrupted = RewardNormalizer(NUM_TASKS, rate=0.01)
  first = RewardNormalizer(NUM_TASKS, rate=0.01)
  expected = np.stack([uninterrupted.normalize(r) for r in rewards])
  for r in rewards[:120]:
    first.normalize(r)
  state = pickle.loads(pickle.dumps(first.state_dict()))
  resumed = RewardNormalizer(NUM_TASKS, rate=0.01)
  resumed.load_state_dict(state)
  rest = np.stack([resumed.normalize(r) for r in rewards[120:]])
  np.testing.assert_array_equal(rest, expected[120:])
  # The saved state is a copy, not a view of the live arrays.
  first.normalize(rewards[0])
  assert not np.array_equal(state["mean"], first.mean)


def test_reset_restores_initial_estimate():
  normalizer = RewardNormalizer(NUM_TASKS)
  normalizer.normalize(np.ones(NUM_TASKS))
  normalizer.reset()
  np.testing.assert_array_equal(normalizer.mean, np.zeros(NUM_TASKS))
  np.testing.assert_array_equal(normalizer.var, np.ones(NUM_TASKS))


@pytest.mark.parametrize(
  "make",
  [
    lambda: RewardNormalizer(0),
    lambda: RewardNormalizer(NUM_TASKS, rate=0.0),
    lambda: RewardNormalizer(NUM_TASKS, rate=1.5),
    lambda: RewardNormalizer(NUM_TASKS).normalize(np.ones(NUM_TASKS + 1)),
    lambda: RewardNormalizer(NUM_TASKS).load_state_dict(RewardNormalizer(3).state_dict()),
    lambda: RewardNormalizer(NUM_TASKS).load_state_dict(
      RewardNormalizer(NUM_TASKS, rate=0.5).state_dict()
    ),
  ],
  ids=["no-tasks", "zero-rate", "rate-above-one", "bad-shape", "task-count", "rate-mismatch"],
)
def test_bad_input_raises_one_line_value_error(make):
  with pytest.raises(ValueError) as error:
    make()
  assert "\n" not in str(error.value)
