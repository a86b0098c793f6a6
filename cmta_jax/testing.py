"""Helpers for tests of a learner, a new encoder or the training loop: random batches without
Meta-World, and a Meta-World environment source that builds its task variations once."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from cmta_jax import config as config_lib
from cmta_jax.agents import registry, sac
from cmta_jax.envs import metaworld_env
from cmta_jax.envs.config import EnvConfig
from cmta_jax.envs.metaworld_env import StepResult
from cmta_jax.envs.source import EnvSource, metaworld
from cmta_jax.training import steps
from cmta_jax.types import BurnIn, LSTMCarry, Transition


def run_config(agent: str = "cmta", **fields) -> config_lib.RunConfig:
  """The RunConfig `agent` trains with by default (its registry defaults, as train.py applies
  them), with fields set by leaf name (hidden_width=32, total_steps=60, ...); a field given
  here wins over the agent's default. Raises ValueError for an unknown field or agent."""
  paths = config_lib.field_paths()
  explicit = {paths[name] for name in fields if name in paths}
  defaults = registry.agent_defaults(config_lib.RunConfig(agent=agent), explicit=explicit)
  return config_lib.replace_fields(defaults, **fields)


def write_synthetic_run(
  run_dir: str,
  curve: list,
  agent: str = "cmta",
  seed: int = 0,
  tasks: tuple[str, ...] = ("task-a", "task-b"),
  eval_every: int = 1000,
  first_eval: int = 0,
  **fields,
) -> str:
  """A run directory as the driver leaves it (config.json, metrics.jsonl with eval and
  train records), for report and table tests. `curve` holds one entry per evaluation, at
  steps first_eval, first_eval + eval_every, ...: a success value for every task, or a list
  with one value per task. An empty curve leaves an empty metrics.jsonl (a run that has
  started but logged nothing yet)."""
  os.makedirs(run_dir)
  from cmta_jax.training import run_dir as run_dir_lib  # the driver's modules load lazily

  run_dir_lib.write_config(run_dir, run_config(agent, seed=seed, **fields))
  with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
    for i, entry in enumerate(curve):
      per_task = list(entry) if isinstance(entry, (list, tuple)) else [entry] * len(tasks)
      success = dict(zip(tasks, per_task, strict=True))
      step = first_eval + eval_every * i
      record = {"step": step, "kind": "eval", "mean_success": float(np.mean(per_task))}
      f.write(json.dumps({**record, "success": success}) + "\n")
      f.write(json.dumps({"step": step, "kind": "train", "updates": 10}) + "\n")
  return run_dir


def png_size(path: str) -> tuple[int, int]:
  """(width, height) in pixels from a PNG file's header; AssertionError if it is no PNG."""
  with open(path, "rb") as f:
    header = f.read(24)
  assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
  return int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")


def write_synthetic_tree(root: str) -> str:
  """Runs for table and figure tests. MT10-Fixed: CMTA (seeds 0 and 1; seed 1 has one
  evaluation more), CMTA with 2 experts, MT-SAC; MT10-Mixed: CMTA. Tasks task-a, task-b."""
  fixed = os.path.join(root, "fixed")
  write_synthetic_run(os.path.join(fixed, "cmta_s0"), [0.0, [0.5, 1.0], [1.0, 0.5]], seed=0)
  write_synthetic_run(os.path.join(fixed, "cmta_s1"), [0.0, [0.0, 0.5], [0.5, 0.5], 1.0], seed=1)
  write_synthetic_run(os.path.join(fixed, "cmta_e2_s0"), [0.0, 0.5, 0.0], seed=0, num_experts=2)
  write_synthetic_run(os.path.join(fixed, "mtsac_s0"), [0.0, 0.0, 0.5], agent="mtsac", seed=0)
  write_synthetic_run(os.path.join(root, "mixed", "cmta_s0"), [0.0, 1.0, 1.0], seed=0, mode="mixed")
  return root


@functools.cache
def cached_variations(benchmark: str, seed: int) -> metaworld_env.Variations:
  """make_variations, once per (benchmark, seed) and process: most of MT10's construction
  time, and a frozen pure function of its arguments."""
  return metaworld_env.make_variations(benchmark, seed)


# Meta-World as `launch.train` builds it, minus the repeated variation generation.
CACHED_METAWORLD: EnvSource = metaworld(cached_variations)


def random_batch(
  seed: int,
  num_tasks: int,
  batch_per_task: int,
  obs_dim: int,
  action_dim: int,
  carry_dim: int,
  termination_rate: float = 0.2,
) -> Transition:
  """A [T, B, ...] float32 batch of random transitions.

  Carries are non-zero (so an LSTM's recurrent weights get gradients), actions lie
  in (-1, 1), and about `termination_rate` of the transitions are terminal. Drawn
  in NumPy: eager jnp ops would compile once per new shape.
  """
  rng = np.random.default_rng(seed)

  def normal(*shape):
    return rng.normal(size=(num_tasks, batch_per_task) + shape)

  def carry():
    return LSTMCarry(h=np.tanh(normal(carry_dim)), c=normal(carry_dim))

  batch = Transition(
    obs=normal(obs_dim),
    action=np.tanh(normal(action_dim)),
    reward=normal(),
    next_obs=normal(obs_dim),
    terminated=rng.random((num_tasks, batch_per_task)) < termination_rate,
    carry_in=carry(),
    carry_out=carry(),
  )
  return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), batch)


def with_burn_in(batch: Transition, window: int, seed: int) -> Transition:
  """`batch` with a random, fully replayed burn-in window of `window` steps (none for 0),
  starting from its carry_in, as `ReplayBuffer.gather` lays one out."""
  if not window:
    return batch
  rng = np.random.default_rng(seed)
  num_tasks, batch_per_task, obs_dim = batch.obs.shape
  burn_in = BurnIn(
    obs=jnp.asarray(rng.normal(size=(num_tasks, batch_per_task, window, obs_dim)), jnp.float32),
    mask=jnp.ones((num_tasks, batch_per_task, window), jnp.float32),
    carry=batch.carry_in,
  )
  return batch._replace(burn_in=burn_in)


# ---------------------------------------------------------------- two 1-D point-reaching tasks
# A point at x in [-1, 1] moves by STEP_SIZE * a per step (a in [-1, 1]) and is rewarded
# -|x - goal|; task 0's goal is +0.5, task 1's -0.5. Without the goal in the observation
# only the task index tells the tasks apart. Used by the learning-sanity test and the
# loop's unit tests: an injected environment that needs no simulator.

GOALS = np.array([0.5, -0.5], np.float32)
STEP_SIZE = 0.2
EPISODE_LENGTH = 15
OBS_DIM = 4  # [x, goal (or 0), zero padding]
ACTION_DIM = 1
SUCCESS_DISTANCE = 0.1
# Evaluation episode k starts at EVAL_STARTS[k % 7] in every task; an evaluation of 7
# episodes covers each start once, the same for every policy, so returns are comparable.
EVAL_STARTS = np.linspace(-0.9, 0.9, 7, dtype=np.float32)


def update_batch(
  run_config: config_lib.RunConfig, networks, batch_per_task: int, seed: int = 0
) -> Transition:
  """A random batch laid out as train.py samples one for `run_config` and `networks`: one
  seed's [T, B] rows, no terminations, and in carry mode `burn_in` (recurrent encoders only)
  each row's replayed window of L steps."""
  num_tasks = networks.num_tasks
  batch = random_batch(
    seed,
    num_tasks,
    batch_per_task,
    networks.obs_dim,
    networks.action_dim,
    networks.encoder.carry_dim,
    termination_rate=0.0,
  )
  return with_burn_in(batch, steps.burn_in_steps(run_config, networks), seed)


def observe_points(position: np.ndarray, goal_in_obs: bool) -> np.ndarray:
  obs = np.zeros((len(GOALS), OBS_DIM), np.float32)
  obs[:, 0] = position
  if goal_in_obs:
    obs[:, 1] = GOALS
  return obs


def move_points(position: np.ndarray, action: np.ndarray):
  """One environment step of both points: (new position, reward)."""
  new_position = np.clip(position + STEP_SIZE * action, -1.0, 1.0).astype(np.float32)
  return new_position, -np.abs(new_position - GOALS)


class PointTasks:
  """Both point tasks stepped in lockstep, with the vector-env interface of `MultiTaskEnv`.

  Episode k's start is a pure function of (seed, role, k), so `get_state` is the episode
  index alone. Training episodes start uniformly in [-1, 1]; evaluation ones at EVAL_STARTS.
  """

  num_tasks = len(GOALS)

  def __init__(self, seed: int, role: str, goal_in_obs: bool, episode_length: int):
    self._seed, self._role, self._goal_in_obs = seed, role, goal_in_obs
    self._episode_length = episode_length
    self._episode, self._step, self._position = -1, 0, None

  @property
  def at_episode_start(self) -> bool:
    return self._step == 0

  def _start_episode(self) -> np.ndarray:
    self._episode, self._step = self._episode + 1, 0
    if self._role == "eval":
      self._position = np.full(self.num_tasks, EVAL_STARTS[self._episode % len(EVAL_STARTS)])
    else:
      rng = np.random.default_rng([self._seed, self._episode])
      self._position = rng.uniform(-1.0, 1.0, self.num_tasks).astype(np.float32)
    return observe_points(self._position, self._goal_in_obs)

  def reset(self) -> np.ndarray:
    self._episode = -1
    return self._start_episode()

  def step(self, actions: np.ndarray) -> StepResult:
    self._position, reward = move_points(self._position, np.asarray(actions)[:, 0])
    next_obs = observe_points(self._position, self._goal_in_obs)
    self._step += 1
    episode_end = self._step == self._episode_length
    success = (np.abs(self._position - GOALS) < SUCCESS_DISTANCE).astype(np.float32)
    zeros = np.zeros(self.num_tasks, bool)  # episodes end by truncation only
    return StepResult(
      obs=self._start_episode() if episode_end else next_obs,
      next_obs=next_obs,
      reward=reward,
      raw_reward=reward,
      terminated=zeros,
      truncated=np.full(self.num_tasks, episode_end),
      success=success,
      episode_start=episode_end,
    )

  def end_episode(self) -> np.ndarray:
    return self._start_episode()

  def get_state(self) -> dict:
    return {"episode": self._episode}

  def restore(self, state: dict) -> np.ndarray:
    self._episode = state["episode"] - 1
    return self._start_episode()

  def close(self) -> None:
    pass


def tiny_point_cmta(**fields) -> config_lib.RunConfig:
  """CMTA small enough to train the point tasks in seconds (the loop, seeds and devices
  tests): 60 steps of 15-step episodes, two warm-up episodes, widths 8-16, burn-in L = 4;
  `fields` (leaf names) override."""
  small = dict(
    hidden_width=16,
    hidden_layers=1,
    num_experts=2,
    expert_hidden=8,
    expert_dim=8,
    lstm_hidden=8,
    task_encoder_hidden=(8,),
    carry_mode="burn_in",
    burn_in_steps=4,
    episode_length=EPISODE_LENGTH,
    reward_normalization=False,
    total_steps=60,
    warmup_steps=2 * EPISODE_LENGTH,
    batch_per_task=4,
    replay_capacity=200,
    eval_every=30,
    log_every=30,
    checkpoint_every=30,
  )
  return run_config("cmta", **{**small, **fields})


def point_tasks(goal_in_obs: bool) -> EnvSource:
  def make_envs(config: EnvConfig, seed: int):
    return tuple(
      PointTasks(seed, role, goal_in_obs, config.episode_length) for role in ("train", "eval")
    )

  return EnvSource(
    task_names=lambda config: tuple(f"goal{g:+.1f}" for g in GOALS),
    obs_dim=OBS_DIM,
    action_dim=ACTION_DIM,
    make_envs=make_envs,
  )


def make_task_loss(networks, config):
  """ONE task's loss on its own slice: (params, target_params, batch [B, ...], task_id [],
  noise_next [B, A], noise_now [B, A]) -> (objective, metrics), scalars. `make_loss` on a
  group of one; for analysis and tests (the update uses `make_loss` on all tasks at once)."""
  loss = sac.make_loss(networks, config)

  def task_loss(params, target_params, batch, task_id, noise_next, noise_now):
    group = lambda x: jnp.asarray(x)[None]
    objective, metrics = loss(
      params,
      target_params,
      jax.tree.map(group, batch),
      group(jnp.asarray(task_id, jnp.int32)),
      group(noise_next),
      group(noise_now),
    )
    return objective[0], jax.tree.map(lambda m: m[0], metrics)

  return task_loss
