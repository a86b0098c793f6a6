"""The Meta-World+ protocol: its presets, its evaluation (against metaworld's own
`metaworld.evaluation`), a short run from the command line, and tables that keep it apart
from the CMTA paper's protocol."""

import json
import os
import subprocess
import sys

import gymnasium as gym
import metaworld
import metaworld.evaluation
import metaworld.policies
import numpy as np
import pytest

from cmta_jax import config as config_lib
from cmta_jax import testing
from cmta_jax.envs import metaworld_env
from cmta_jax.envs.config import EnvConfig
from cmta_jax.envs.seed_envs import EnvPool
from cmta_jax.envs.source import METAWORLD
from cmta_jax.training.evaluation import evaluate
from tests.training import driver_support as support

SEED = 3
EPISODE_LENGTH = 80  # the scripted experts solve 7 of the 10 tasks within it
EPISODES = 2
TABLES_SCRIPT = os.path.join(support.REPO, "experiments", "tables.py")


class _ScriptedPolicies:
  """metaworld's scripted expert of every task: deterministic, and it solves some tasks
  within a short episode, so success rates are neither all 0 nor all 1."""

  def __init__(self, tasks):
    self.policies = [metaworld.policies.ENV_POLICY_MAP[task]() for task in tasks]

  def actions(self, obs: np.ndarray) -> np.ndarray:
    # Both sides act on float32 observations (what our environments return).
    obs = np.asarray(obs, np.float32).astype(np.float64)
    return np.stack([p.get_action(o) for p, o in zip(self.policies, obs)]).astype(np.float32)


class _NoCarry:
  """What `evaluate` reads of the networks: a carry size (none here)."""

  class encoder:  # noqa: N801 (an attribute, as on AgentNetworks)
    carry_dim = 0


def _ours(tasks):
  config = EnvConfig(benchmark="MT10", mode="fixed", episode_length=EPISODE_LENGTH)
  pool = EnvPool(METAWORLD.make_envs, config, [SEED], env_workers=0)
  try:
    scripted = _ScriptedPolicies(tasks)

    def act(params, obs, task_ids, carry, base_keys, step, mode):
      return scripted.actions(obs[0])[None], carry

    obs = pool.eval.reset()
    result, _ = evaluate(
      pool.eval,
      obs,
      act,
      None,
      np.arange(len(tasks)),
      _NoCarry,
      EPISODES,
      None,
      0,
      stop_at_success=True,
    )
  finally:
    pool.close()
  return result["success"][0], result["return"][0]


def _official(tasks):
  """metaworld's evaluation on metaworld's own MT10 vector env, each task held at the Fixed
  variation our environments use (so both see the same episodes)."""
  envs = gym.make_vec(
    "Meta-World/MT10",
    vector_strategy="sync",
    seed=SEED,
    max_episode_steps=EPISODE_LENGTH,
    reward_function_version="v2",
  )
  variations = metaworld_env.make_variations("MT10", SEED)
  fixed = metaworld_env.episode_variation_indices(SEED, "fixed", "eval", len(tasks), 0)
  for index, env in enumerate(envs.envs):
    env.set_wrapper_attr("tasks", [variations.tasks[index][fixed[index]]])
  scripted = _ScriptedPolicies(tasks)

  class Agent:
    def eval_action(self, obs):
      return scripted.actions(obs)

    def reset(self, env_mask):
      pass  # the scripted policies keep no state

  try:
    _, _, success, returns = metaworld.evaluation.evaluation(Agent(), envs, EPISODES)
  finally:
    envs.close()
  return (
    np.array([success[task] for task in tasks]),
    np.array([np.mean(returns[task]) for task in tasks]),
  )


def test_evaluation_matches_metaworlds_official_evaluation():
  tasks = metaworld_env.task_names("MT10")
  success, returns = _ours(tasks)
  official_success, official_returns = _official(tasks)
  assert 0 < success.mean() < 1, success  # some tasks solved within the episode, some not
  np.testing.assert_array_equal(success, official_success)
  np.testing.assert_allclose(returns, official_returns, rtol=1e-4)


def test_returns_stop_at_the_first_success_and_success_counts_alike():
  tasks = metaworld_env.task_names("MT10")
  config = EnvConfig(benchmark="MT10", mode="fixed", episode_length=EPISODE_LENGTH)
  results = {}
  for stop in (False, True):
    pool = EnvPool(METAWORLD.make_envs, config, [SEED], env_workers=0)
    scripted = _ScriptedPolicies(tasks)
    try:
      results[stop], _ = evaluate(
        pool.eval,
        pool.eval.reset(),
        lambda params, obs, ids, carry, keys, step, mode: (scripted.actions(obs[0])[None], carry),
        None,
        np.arange(len(tasks)),
        _NoCarry,
        1,
        None,
        0,
        stop_at_success=stop,
      )
    finally:
      pool.close()
  np.testing.assert_array_equal(results[True]["success"], results[False]["success"])
  solved = results[True]["success"][0] > 0
  # Rewards after a success no longer count (Meta-World's reward is positive each step).
  assert np.all(results[True]["return"][0][solved] < results[False]["return"][0][solved])
  np.testing.assert_array_equal(
    results[True]["return"][0][~solved], results[False]["return"][0][~solved]
  )


class _CountingEnv:
  """A `SeedEnvs` that counts the steps taken in it."""

  def __init__(self, env):
    self.env, self.steps = env, 0

  @property
  def at_episode_start(self):
    return self.env.at_episode_start

  def step(self, actions):
    self.steps += 1
    return self.env.step(actions)

  def end_episode(self):
    return self.env.end_episode()


def _to_the_goal(moving_seeds):
  """Point-task policy: straight to each task's goal in seeds `moving_seeds`; the others stay."""

  def act(params, obs, task_ids, carry, base_keys, step, mode):
    action = np.clip((testing.GOALS - obs[..., 0]) / testing.STEP_SIZE, -1.0, 1.0)
    moving = np.isin(np.arange(len(obs)), moving_seeds)[:, None]
    return np.where(moving, action, 0.0)[..., None].astype(np.float32), carry

  return act


def _slow_metaworld_plus_evaluation(seeds, act, episodes):
  """Full episodes, one seed at a time: success anywhere, the return up to the first success,
  and each episode's step of each task's first success [S, T] (inf: none)."""
  success = np.zeros((episodes, len(seeds), len(testing.GOALS)))
  returns = np.zeros_like(success)
  first_success = np.full_like(success, np.inf)
  for index, seed in enumerate(seeds):
    env = testing.PointTasks(seed, "eval", False, testing.EPISODE_LENGTH)
    obs = env.reset()
    for episode in range(episodes):
      for t in range(testing.EPISODE_LENGTH):
        stacked = np.zeros((len(seeds), *obs.shape), np.float32)
        stacked[index] = obs
        actions, _ = act(None, stacked, None, None, None, 0, "eval")
        result = env.step(actions[index])
        for task in range(len(testing.GOALS)):
          if success[episode, index, task] == 0:
            returns[episode, index, task] += result.raw_reward[task]
            if result.success[task]:
              success[episode, index, task], first_success[episode, index, task] = 1, t + 1
        obs = result.obs
  return success.mean(0), returns.mean(0), first_success


@pytest.mark.parametrize(
  ("moving_seeds", "active", "ends_early"),
  [
    ((0, 1), None, True),  # every task of every seed succeeds: the episode ends there
    ((0,), None, False),  # seed 1 never succeeds: episodes run to their end
    ((0,), (True, False), True),  # ... unless seed 1 has stopped training
  ],
)
def test_an_evaluation_ends_its_episode_once_every_task_of_every_running_seed_has_succeeded(
  moving_seeds, active, ends_early
):
  seeds, episodes = [0, 1], 3
  act = _to_the_goal(moving_seeds)
  config = EnvConfig(episode_length=testing.EPISODE_LENGTH)
  results, next_obs, steps = {}, {}, {}
  for stop in (True, False):
    pool = EnvPool(testing.point_tasks(False).make_envs, config, seeds, env_workers=0)
    env = _CountingEnv(pool.eval)
    results[stop], next_obs[stop] = evaluate(
      env,
      env.env.reset(),
      act,
      None,
      None,
      _NoCarry,
      episodes,
      None,
      0,
      stop_at_success=stop,
      active=active,
    )
    steps[stop] = env.steps
    pool.close()

  success, returns, first_success = _slow_metaworld_plus_evaluation(seeds, act, episodes)
  running = np.ones(len(seeds), bool) if active is None else np.array(active)
  np.testing.assert_array_equal(results[True]["success"], success)
  # A stopped seed's figures are never recorded; the running seeds' are unchanged.
  np.testing.assert_allclose(results[True]["return"][running], returns[running], rtol=1e-6)
  np.testing.assert_array_equal(results[False]["success"], results[True]["success"])
  expected_steps = sum(
    int(first[running].max()) if np.isfinite(first[running]).all() else testing.EPISODE_LENGTH
    for first in first_success
  )
  assert steps[True] == expected_steps
  assert steps[False] == episodes * testing.EPISODE_LENGTH
  assert (steps[True] < steps[False]) == ends_early
  # The episode stream goes on where full episodes would have left it.
  np.testing.assert_array_equal(next_obs[True], next_obs[False])


@pytest.mark.parametrize(
  ("preset", "benchmark"), [("metaworld_plus_mt10", "MT10"), ("metaworld_plus_mt50", "MT50")]
)
def test_presets_are_the_metaworld_plus_protocol(preset, benchmark):
  config = config_lib.PRESETS[preset]
  config.validate()
  assert (config.env.benchmark, config.env.mode, config.env.episode_length) == (
    benchmark,
    "mixed",
    500,
  )
  assert not config.env.reward_normalization
  train = config.train
  assert (train.eval_protocol, train.eval_episodes, train.eval_every) == (
    "metaworld_plus",
    50,
    20_000,
  )
  assert (train.total_steps, train.warmup_steps, train.batch_per_task) == (2_000_000, 4_000, 128)


def test_metaworld_plus_protocol_needs_random_variations():
  config = testing.run_config(mode="fixed", eval_protocol="metaworld_plus")
  with pytest.raises(ValueError, match="needs --mode=mixed"):
    config.validate()


@pytest.mark.slow
def test_a_short_metaworld_plus_run_from_the_cli_and_its_own_table_column(
  tmp_path, compilation_cache_dir
):
  env = support.subprocess_env(compilation_cache_dir)
  short = dict(
    support.SMALL,
    benchmark=None,  # from the preset
    mode=None,
    total_steps=80,
    eval_every=40,
    checkpoint_every=40,
  )
  plus, paper = tmp_path / "plus", tmp_path / "paper"
  args = support.cli_args(str(plus), **short, eval_episodes=2)
  args.insert(2, "--preset=metaworld_plus_mt10")
  done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=support.CLI_TIMEOUT)
  assert done.returncode == 0, done.stderr[-2000:]
  with open(plus / "config.json") as f:
    saved = json.load(f)
  assert saved["train.eval_protocol"] == "metaworld_plus"
  assert (saved["env.mode"], saved["env.episode_length"]) == ("mixed", support.EPISODE_LENGTH)
  evals = [r for r in support.read_records(str(plus)) if r["kind"] == "eval"]
  assert [r["step"] for r in evals] == [0, 40, 80]
  # Shorter episodes than Meta-World+'s 500 steps: not its published protocol, and named so.
  column = f"MT10-Mixed (Meta-World+ rules, {support.EPISODE_LENGTH}-step episodes)"
  with open(plus / "summary.json") as f:
    summary = json.load(f)
  assert (summary["eval_protocol"], summary["setting"]) == ("metaworld_plus", column)

  # A run of the same agent and setting evaluated by the CMTA paper's protocol.
  testing.write_synthetic_run(str(paper), [0.2, 0.4], mode="mixed", episode_length=20)
  table = subprocess.run(
    [sys.executable, TABLES_SCRIPT, str(tmp_path)],
    env=env,
    capture_output=True,
    text=True,
    timeout=support.CLI_TIMEOUT,
  )
  assert table.returncode == 0, table.stderr[-2000:]
  # Two columns, never one cell: the paper protocol's and Meta-World+'s.
  assert table.stdout.count("| MT10-Mixed max smoothed |") == 1, table.stdout
  assert table.stdout.count(f"| {column} max smoothed |") == 1, table.stdout


@pytest.mark.parametrize(
  ("protocol", "episode_length", "name"),
  [
    ("cmta", 150, "MT10-Mixed"),
    ("cmta", 500, "MT10-Mixed"),
    ("metaworld_plus", 500, "MT10-Mixed (Meta-World+)"),
    ("metaworld_plus", 150, "MT10-Mixed (Meta-World+ rules, 150-step episodes)"),
  ],
)
def test_a_setting_is_named_metaworld_plus_only_with_its_500_step_episodes(
  protocol, episode_length, name
):
  config = testing.run_config(mode="mixed", eval_protocol=protocol, episode_length=episode_length)
  assert config.setting_name() == name


def test_a_resume_cannot_change_the_evaluation_protocol(tmp_path):
  from cmta_jax.training import run_dir as run_dir_lib

  saved = config_lib.flatten(config_lib.PRESETS["metaworld_plus_mt10"])
  now = dict(saved, **{"train.eval_protocol": "cmta"})
  with pytest.raises(run_dir_lib.ConfigMismatch, match="evaluation protocol .*can never change"):
    run_dir_lib.check_identity(str(tmp_path), saved, now)
