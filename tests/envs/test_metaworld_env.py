"""Tests for the Meta-World multi-task env (MT10 envs are built once per module)."""

import pickle

import gymnasium as gym
import metaworld
import numpy as np
import pytest

from cmta_jax.envs import metaworld_env
from cmta_jax.envs.config import EnvConfig, validate_seed
from cmta_jax.envs.metaworld_env import (
  MultiTaskEnv,
  StepResult,
  episode_variation_indices,
  make_variations,
  task_names,
)

EPISODE_LENGTH = 10  # Short episodes keep the tests fast.
SEED = 0
MT10_ORDER = (
  "reach-v3",
  "push-v3",
  "pick-place-v3",
  "door-open-v3",
  "drawer-open-v3",
  "drawer-close-v3",
  "button-press-topdown-v3",
  "peg-insert-side-v3",
  "window-open-v3",
  "window-close-v3",
)


def _config(**overrides) -> EnvConfig:
  return EnvConfig(**{"episode_length": EPISODE_LENGTH, **overrides})


def _actions(num_steps: int, num_tasks: int, seed: int = 123) -> np.ndarray:
  rng = np.random.default_rng(seed)
  return rng.uniform(-1.0, 1.0, (num_steps, num_tasks, 4)).astype(np.float32)


def _rollout(env: MultiTaskEnv, actions: np.ndarray) -> tuple[np.ndarray, list[StepResult]]:
  """Resets the env, applies `actions`; returns (first obs, step results)."""
  first_obs = env.reset()
  return first_obs, [env.step(a) for a in actions]


def _assert_same_results(a: list[StepResult], b: list[StepResult]) -> None:
  assert len(a) == len(b)
  for step, (x, y) in enumerate(zip(a, b)):
    for field in StepResult._fields:
      np.testing.assert_array_equal(
        getattr(x, field), getattr(y, field), err_msg=f"{field} @ step {step}"
      )


@pytest.fixture(scope="module")
def variations():
  return make_variations("MT10", SEED)


@pytest.fixture(scope="module")
def fixed_train(variations):
  with MultiTaskEnv(_config(), SEED, "train", variations=variations) as env:
    yield env


@pytest.fixture(scope="module")
def fixed_eval(variations):
  with MultiTaskEnv(_config(), SEED, "eval", variations=variations) as env:
    yield env


@pytest.fixture(scope="module")
def mixed_train(variations):
  with MultiTaskEnv(_config(mode="mixed"), SEED, "train", variations=variations) as env:
    yield env


@pytest.fixture(scope="module")
def fixed_train_other_seed():
  # Built without shared variations: exercises the full construction path.
  with MultiTaskEnv(_config(), SEED + 1, "train") as env:
    yield env


def test_task_names_order():
  assert task_names("MT10") == MT10_ORDER
  mt50 = task_names("MT50")
  assert len(mt50) == 50 and len(set(mt50)) == 50
  assert mt50 == tuple(metaworld.env_dict.MT50_V3)  # What metaworld.MT50().train_classes uses.
  assert set(MT10_ORDER) <= set(mt50)


def test_shapes_and_dtypes(fixed_train):
  env = fixed_train
  assert env.num_tasks == 10 and env.task_names == MT10_ORDER
  assert env.task_ids.dtype == np.int32
  np.testing.assert_array_equal(env.task_ids, np.arange(10))
  assert (env.obs_dim, env.action_dim) == (39, 4)
  obs = env.reset()
  assert obs.shape == (10, 39) and obs.dtype == np.float32
  assert env.at_episode_start and env.episode_index == 0
  result = env.step(np.zeros((10, 4), np.float32))
  assert result.obs.shape == result.next_obs.shape == (10, 39)
  assert result.obs.dtype == result.next_obs.dtype == np.float32
  for field in ("reward", "raw_reward", "success"):
    assert getattr(result, field).shape == (10,) and getattr(result, field).dtype == np.float32
  for field in ("terminated", "truncated"):
    assert getattr(result, field).shape == (10,) and getattr(result, field).dtype == np.bool_
  assert result.episode_start is False and not env.at_episode_start
  # The goal is observed (MT benchmarks): last 3 entries are not all zero.
  assert np.any(obs[:, 36:] != 0.0)


def test_truncates_every_episode_length_and_never_terminates(fixed_train):
  env = fixed_train
  _, results = _rollout(env, _actions(3 * EPISODE_LENGTH, 10))
  for step, result in enumerate(results, start=1):
    ends = step % EPISODE_LENGTH == 0
    assert result.episode_start == ends
    assert np.all(result.truncated == ends)
    assert not np.any(result.terminated)
    if not ends:
      np.testing.assert_array_equal(result.obs, result.next_obs)
  assert env.episode_index == 3 and env.at_episode_start


def test_matches_plain_metaworld_env_including_true_final_obs(fixed_train, variations):
  """Each sub-env replays exactly like a bare metaworld env given the same variation."""
  env = fixed_train
  actions = _actions(EPISODE_LENGTH, 10)
  first_obs, results = _rollout(env, actions)
  variation = env.variation_indices()
  final = results[-1]
  assert final.episode_start
  for task in range(env.num_tasks):
    bare = variations.env_classes[task](reward_function_version="v2")
    bare.set_task(variations.tasks[task][variation[task]])
    obs, _ = bare.reset()
    np.testing.assert_array_equal(first_obs[task], obs.astype(np.float32))
    for step in range(EPISODE_LENGTH):
      obs, reward, _, _, info = bare.step(actions[step, task])
      np.testing.assert_array_equal(results[step].next_obs[task], obs.astype(np.float32))
      assert results[step].raw_reward[task] == np.float32(reward)
      assert results[step].success[task] == np.float32(info["success"])
    # On the truncating step: next_obs is the true s_T, obs is the next episode's s_0.
    reset_obs, _ = bare.reset()
    np.testing.assert_array_equal(final.obs[task], reset_obs.astype(np.float32))
    assert not np.array_equal(final.next_obs[task], final.obs[task])
    bare.close()


def test_fixed_mode_keeps_one_variation(fixed_train):
  env = fixed_train
  env.reset()
  expected = episode_variation_indices(SEED, "fixed", "train", 10, 0)
  seen = []
  for action in _actions(3 * EPISODE_LENGTH, 10):
    if env.at_episode_start:
      seen.append(env.variation_indices())
    env.step(action)
  assert len(seen) == 3
  for indices in seen:
    np.testing.assert_array_equal(indices, expected)


def test_train_and_eval_share_fixed_variations(fixed_train, fixed_eval):
  actions = _actions(EPISODE_LENGTH + 2, 10)
  train_first, train_results = _rollout(fixed_train, actions)
  eval_first, eval_results = _rollout(fixed_eval, actions)
  np.testing.assert_array_equal(fixed_train.variation_indices(), fixed_eval.variation_indices())
  np.testing.assert_array_equal(train_first, eval_first)
  for train, evaluation in zip(train_results, eval_results):
    np.testing.assert_array_equal(train.next_obs, evaluation.next_obs)
    np.testing.assert_array_equal(train.raw_reward, evaluation.raw_reward)


def test_eval_reports_raw_rewards_train_normalises(fixed_train, fixed_eval):
  actions = _actions(5, 10)
  _, train_results = _rollout(fixed_train, actions)
  _, eval_results = _rollout(fixed_eval, actions)
  for result in eval_results:
    np.testing.assert_array_equal(result.reward, result.raw_reward)
  train_rewards = np.stack([r.reward for r in train_results])
  train_raw = np.stack([r.raw_reward for r in train_results])
  assert not np.array_equal(train_rewards, train_raw)
  np.testing.assert_allclose(train_rewards, train_raw, rtol=0.05)  # Scale starts near 1.


def test_fixed_variations_differ_across_seeds(fixed_train, fixed_train_other_seed):
  by_seed = [tuple(episode_variation_indices(s, "fixed", "train", 10, 0)) for s in range(5)]
  assert len(set(by_seed)) == 5
  other = fixed_train_other_seed.variation_indices()
  assert not np.array_equal(fixed_train.variation_indices(), other)


def test_mixed_mode_changes_variation_and_is_reproducible(mixed_train):
  env = mixed_train
  actions = _actions(4 * EPISODE_LENGTH, 10)
  runs = []
  for _ in range(2):
    env.reset()
    seen = []
    for action in actions:
      if env.at_episode_start:
        seen.append(env.variation_indices())
      env.step(action)
    runs.append(np.stack(seen))
  np.testing.assert_array_equal(runs[0], runs[1])
  for episode, indices in enumerate(runs[0]):
    expected = episode_variation_indices(SEED, "mixed", "train", 10, episode)
    np.testing.assert_array_equal(indices, expected)
  # Every task sees more than one variation over 4 episodes (50 choices each).
  assert all(len(set(runs[0][:, task])) > 1 for task in range(10))
  # The eval stream of the same seed is a different sequence.
  eval_stream = np.stack(
    [episode_variation_indices(SEED, "mixed", "eval", 10, episode) for episode in range(4)]
  )
  assert not np.array_equal(eval_stream, runs[0])


def test_an_episode_ended_early_starts_the_next_episode_of_the_stream(mixed_train):
  env = mixed_train
  actions = _actions(EPISODE_LENGTH, 10)
  _, full = _rollout(env, actions)  # episode 0 to its end
  after_full = env.variation_indices()
  env.reset()
  for action in actions[:3]:
    env.step(action)
  obs = env.end_episode()
  assert env.at_episode_start and env.episode_index == 1
  np.testing.assert_array_equal(env.variation_indices(), after_full)
  np.testing.assert_array_equal(obs, full[-1].obs)  # the first obs of episode 1
  # The stream then goes on as it would have.
  resumed = [env.step(action) for action in actions]
  assert env.episode_index == 2
  np.testing.assert_array_equal(
    env.variation_indices(), episode_variation_indices(SEED, "mixed", "train", 10, 2)
  )
  assert resumed[-1].episode_start


def test_same_seed_same_stream_different_seed_different(fixed_train, fixed_train_other_seed):
  actions = _actions(EPISODE_LENGTH + 3, 10)
  first_a, results_a = _rollout(fixed_train, actions)
  first_b, results_b = _rollout(fixed_train, actions)
  np.testing.assert_array_equal(first_a, first_b)
  _assert_same_results(results_a, results_b)
  first_c, results_c = _rollout(fixed_train_other_seed, actions)
  assert not np.array_equal(first_a, first_c)
  assert not np.array_equal(
    np.stack([r.raw_reward for r in results_a]), np.stack([r.raw_reward for r in results_c])
  )


@pytest.mark.parametrize("mode", ["fixed", "mixed"])
def test_exact_resume_from_fresh_env(mode, variations, fixed_train, mixed_train):
  env = fixed_train if mode == "fixed" else mixed_train
  actions = _actions(3 * EPISODE_LENGTH, 10, seed=7)
  env.reset()
  state = None
  results = []
  for step, action in enumerate(actions):
    if step == 2 * EPISODE_LENGTH:
      state = pickle.loads(pickle.dumps(env.get_state()))
      obs_at_boundary = results[-1].obs
    results.append(env.step(action))
  assert state["episode_index"] == 2 and state["reward_normalizer"] is not None

  with MultiTaskEnv(_config(mode=mode), SEED, "train", variations=variations) as fresh:
    obs = fresh.restore(state)
    np.testing.assert_array_equal(obs, obs_at_boundary)
    resumed = [fresh.step(action) for action in actions[2 * EPISODE_LENGTH :]]
    assert fresh.episode_index == 3
  _assert_same_results(resumed, results[2 * EPISODE_LENGTH :])
  # Normalisation was active, so the resumed normaliser state mattered.
  assert not np.array_equal(resumed[0].reward, resumed[0].raw_reward)


def test_get_state_only_at_episode_start(fixed_train):
  env = fixed_train
  env.reset()
  env.get_state()
  env.step(np.zeros((10, 4)))
  with pytest.raises(RuntimeError):
    env.get_state()


@pytest.mark.parametrize(
  "change",
  [
    {"seed": SEED + 1},
    {"role": "eval"},
    {"mode": "mixed"},
    {"episode_length": 11},
    {"format": 99},
  ],
  ids=lambda c: next(iter(c)),
)
def test_restore_rejects_other_runs_state(fixed_train, change):
  fixed_train.reset()
  state = {**fixed_train.get_state(), **change}
  with pytest.raises(ValueError) as error:
    fixed_train.restore(state)
  assert "\n" not in str(error.value)


def test_bad_actions_raise(fixed_train):
  fixed_train.reset()
  for actions in (np.zeros((10, 3)), np.zeros((9, 4)), np.full((10, 4), np.nan)):
    with pytest.raises(ValueError) as error:
      fixed_train.step(actions)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
  "kwargs",
  [
    {"config": EnvConfig(benchmark="MT20")},
    {"config": EnvConfig(mode="random")},
    {"config": EnvConfig(vector_strategy="threads")},
    {"config": EnvConfig(episode_length=0)},
    {"config": EnvConfig(episode_length=501)},
    {"config": EnvConfig(episode_length=10.0)},
    {"config": EnvConfig(episode_length=True)},
    {"config": EnvConfig(reward_norm_rate=0.0)},
    {"seed": -1},
    {"seed": 1.0},
    {"seed": True},
    {"seed": "3"},
    {"seed": None},
    {"seed": 2**32},
    {"role": "test"},
  ],
  ids=lambda kw: f"{next(iter(kw))}={next(iter(kw.values()))!r}",
)
def test_bad_input_raises_before_building(kwargs, monkeypatch):
  def must_not_build(*args, **kw):
    raise AssertionError("an env was built before validation")

  monkeypatch.setattr(metaworld_env, "make_variations", must_not_build)
  monkeypatch.setattr(gym.vector, "SyncVectorEnv", must_not_build)
  monkeypatch.setattr(gym.vector, "AsyncVectorEnv", must_not_build)
  arguments = {"config": EnvConfig(), "seed": SEED, "role": "train", **kwargs}
  with pytest.raises(ValueError) as error:
    MultiTaskEnv(arguments["config"], arguments["seed"], arguments["role"])
  assert "\n" not in str(error.value)


def test_validate_seed_and_task_names_errors():
  assert validate_seed(np.int64(5)) == 5 and isinstance(validate_seed(np.int64(5)), int)
  with pytest.raises(ValueError, match="MT20"):
    task_names("MT20")
  message = "unknown benchmark 'MT20'; choose one of MT10, MT50"
  with pytest.raises(ValueError, match=message):
    EnvConfig(benchmark="MT20").validate()


def test_variations_of_another_seed_are_rejected(variations):
  with pytest.raises(ValueError):
    MultiTaskEnv(_config(), SEED + 1, variations=variations)


@pytest.mark.slow
def test_async_matches_sync(variations, fixed_train):
  actions = _actions(EPISODE_LENGTH + 2, 10)
  sync_first, sync_results = _rollout(fixed_train, actions)
  with MultiTaskEnv(_config(vector_strategy="async"), SEED, variations=variations) as env:
    async_first, async_results = _rollout(env, actions)
  np.testing.assert_array_equal(sync_first, async_first)
  _assert_same_results(sync_results, async_results)


@pytest.mark.slow
def test_mt50_builds_and_steps():
  with MultiTaskEnv(EnvConfig(benchmark="MT50", episode_length=3), SEED) as env:
    # make_variations also checks this order against metaworld.MT50(seed).train_classes.
    assert env.num_tasks == 50 and env.task_names == tuple(metaworld.env_dict.MT50_V3)
    obs = env.reset()
    assert obs.shape == (50, 39) and obs.dtype == np.float32
    results = [env.step(a) for a in _actions(3, 50)]
    assert [r.episode_start for r in results] == [False, False, True]
    assert np.all(results[-1].truncated) and not np.any(results[-1].terminated)
    assert env.get_state()["episode_index"] == 1
