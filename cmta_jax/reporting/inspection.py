"""Looking inside a trained policy: load it from a run directory's checkpoint and trace
evaluation episodes step by step (attention weights, expert encodings, reward, success).

Also renders evaluation episodes frame by frame for videos (`render_episodes`).

Read-only: nothing in the run directory is written or moved, so it is safe on a run that
is still training. The episodes are those of the run's own evaluation (its seed's
variations, the deterministic policy, a zero carry at each episode start; docs/algorithm.md
§5). Used by experiments/attention_episode.py and experiments/tsne.py (docs/results.md).
"""

import os
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from cmta_jax import config as config_lib
from cmta_jax.agents import registry, sac
from cmta_jax.envs.metaworld_env import RenderSpec
from cmta_jax.envs.source import METAWORLD, EnvSource
from cmta_jax.training import checkpointing, evaluation, steps
from cmta_jax.training import run_dir as run_dir_lib
from cmta_jax.training.checkpointing import Checkpointer


class Policy(NamedTuple):
  run_dir: str
  run_config: config_lib.RunConfig
  task_names: tuple[str, ...]
  networks: Any  # sac.AgentNetworks
  params: sac.PolicyParams
  step: int  # of the checkpoint it was read from


class EpisodeTrace(NamedTuple):
  """One evaluation episode of one task, L steps."""

  task: str
  reward: np.ndarray  # [L] raw reward
  success: np.ndarray  # [L] info["success"] of each step
  attention: np.ndarray | None  # [L, ...] the encoder's mixing weights (None: no experts)
  experts: np.ndarray | None  # [L, k, expert_dim] expert encodings z^j (None: no experts)


def saved_run_config(run_dir: str) -> config_lib.RunConfig:
  """The config a run directory was trained with; ValueError (one line) if it has none or
  it is not a valid config."""
  flat = run_dir_lib.read_saved_config(run_dir)
  if flat is None:
    raise ValueError(f"{run_dir} has no {run_dir_lib.CONFIG_FILE} (is it a run directory?)")
  run_config = config_lib.from_flat(flat)
  registry.validate(run_config)
  return run_config


def chosen_tasks(run_config: config_lib.RunConfig, tasks: Sequence[str] | None, envs=METAWORLD):
  """`tasks` (default: all of the run's benchmark), checked before anything is loaded;
  ValueError (one line) naming tasks that are not in the benchmark."""
  names = list(envs.task_names(run_config.env))
  unknown = [t for t in tasks or () if t not in names]
  if unknown:
    raise ValueError(
      f"--tasks: {', '.join(unknown)} not in {run_config.env.benchmark} ({', '.join(names)})"
    )
  return list(tasks) if tasks else names


def load_policy(run_dir: str, step: int | None = None, envs: EnvSource = METAWORLD) -> Policy:
  """The policy (encoder and actor parameters) of checkpoint `step`, or of the newest one.

  Raises ValueError (one line) if `run_dir` has no config.json or no checkpoint, `step`
  has no checkpoint (the message lists those there are), or the checkpoint is unreadable.
  """
  run_config = saved_run_config(run_dir)
  saved_steps = checkpointing.checkpoint_steps(os.path.join(run_dir, "checkpoints"))
  if not saved_steps:
    raise ValueError(f"{run_dir} has no checkpoint yet")
  if step is None:
    step = saved_steps[-1]
  elif step not in saved_steps:
    raise ValueError(f"{run_dir} has no checkpoint of step {step} (it has steps {saved_steps})")
  networks = steps.build_networks(run_config, envs)
  learner = jax.eval_shape(
    lambda key: sac.init_training_state(key, networks, run_config.sac), jax.random.PRNGKey(0)
  )
  names = tuple(envs.task_names(run_config.env))
  spec = steps.batch_spec(
    len(names),
    run_config.train.batch_per_task,
    networks,
    steps.burn_in_steps(run_config, networks),
  )
  totals = jax.eval_shape(lambda: steps.empty_totals(networks, run_config.sac, learner, spec))
  checkpointer = Checkpointer(run_dir, keep=len(saved_steps))
  try:
    state = checkpointer.restore_state(step, {"train_state": learner, "totals": totals})
  finally:
    checkpointer.close()
  params = sac.policy_params(state["train_state"])
  return Policy(run_dir, run_config, names, networks, params, step)


def trace_episodes(policy: Policy, episodes: int, envs: EnvSource = METAWORLD) -> list[list]:
  """`episodes` evaluation episodes of every task: [episode][task] -> EpisodeTrace."""
  if episodes < 1:
    raise ValueError(f"episodes must be positive, got {episodes}")
  train_env, eval_env = envs.make_envs(policy.run_config.env, policy.run_config.train.seed)
  train_env.close()  # only the evaluation env's episodes are wanted
  trace = jax.jit(sac.make_trace_fn(policy.networks))
  task_ids = np.arange(len(policy.task_names), dtype=np.int32)
  traced = []
  try:
    obs = eval_env.reset()
    for _ in range(episodes):
      steps, obs = _one_episode(policy, eval_env, obs, trace, task_ids)
      traced.append(_per_task(policy.task_names, steps))
  finally:
    eval_env.close()
  return traced


def _one_episode(policy: Policy, eval_env, obs, trace, task_ids) -> tuple[list, np.ndarray]:
  carry = sac.initial_carry(policy.networks, len(task_ids))
  steps = []
  while True:
    actions, carry, attention, experts = trace(policy.params, obs, task_ids, carry)
    result = eval_env.step(np.asarray(actions))
    steps.append((result.raw_reward, result.success, attention, experts))
    obs = result.obs
    if result.episode_start:
      return steps, obs


def _per_task(names: tuple[str, ...], steps: list) -> list[EpisodeTrace]:
  reward, success, attention, experts = (
    None if parts[0] is None else np.stack([np.asarray(p) for p in parts], axis=1)
    for parts in zip(*steps)
  )  # each [T, L, ...]
  return [
    EpisodeTrace(
      task=name,
      reward=reward[t],
      success=success[t],
      attention=None if attention is None else attention[t],
      experts=None if experts is None else experts[t],
    )
    for t, name in enumerate(names)
  ]


# (episode index, task name, frame [H, W, 3] uint8, attention weights [...] or None)
FrameSink = Callable[[int, str, np.ndarray, np.ndarray | None], None]


def render_episodes(
  policy: Policy,
  episodes: int,
  tasks: Sequence[str],
  render: RenderSpec,
  on_frame: FrameSink,
  envs: EnvSource = METAWORLD,
) -> None:
  """Plays `episodes` evaluation episodes and hands each step's frame of every task in
  `tasks` (and the attention weights it acted with) to `on_frame`: episode_length frames
  per episode, the observation each action was chosen on.

  Raises ValueError for an unknown task or environments that cannot render, and
  gl_backend.RenderingUnavailable if MuJoCo cannot render offscreen.
  """
  chosen_tasks(policy.run_config, tasks, envs)
  if envs.make_render_env is None:
    raise ValueError("these environments cannot render")
  trace = jax.jit(sac.make_trace_fn(policy.networks))
  env = envs.make_render_env(policy.run_config.env, policy.run_config.train.seed, render)
  try:
    obs = env.reset()
    for episode in range(episodes):
      obs = evaluation.play_rendered_episode(
        env, obs, policy.networks, policy.params, trace, tasks, lambda *f: on_frame(episode, *f)
      )
  finally:
    env.close()
