"""What the training loop needs from a family of environments, so that it can be injected.

The loop never builds environments itself: it asks an `EnvSource` for the task names, the
observation and action sizes (known before any environment is built, so that a run's
networks and memory can be checked first) and a (training, evaluation) pair of vector
environments. A vector environment steps all tasks in lockstep and offers `num_tasks`,
`at_episode_start`, `reset() -> obs [T, obs_dim]`, `step(actions [T, action_dim]) ->
StepResult`, `get_state() -> dict` (JSON-serialisable, taken at episode starts),
`restore(state) -> obs` and `close()`, as `MultiTaskEnv` does.
"""

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from cmta_jax.envs.config import EnvConfig
from cmta_jax.envs.metaworld_env import (
  ACTION_DIM,
  OBS_DIM,
  MultiTaskEnv,
  RenderSpec,
  Variations,
  make_variations,
  task_names,
)


class EnvSource(NamedTuple):
  task_names: Callable[[EnvConfig], Sequence[str]]
  obs_dim: int
  action_dim: int
  # (env config, seed) -> (training env, evaluation env); the evaluation env reports raw
  # rewards and draws its own episodes (docs/algorithm.md §5).
  make_envs: Callable[[EnvConfig, int], tuple[Any, Any]]
  # (env config, seed, RenderSpec) -> the evaluation env, built to render its frames
  # (`render_frames(tasks)`) for videos; None where the environments cannot render.
  make_render_env: Callable[[EnvConfig, int, RenderSpec], Any] | None = None


def metaworld(variations: Callable[[str, int], Variations] = make_variations) -> EnvSource:
  """Meta-World v3 MT10/MT50. `variations(benchmark, seed)` builds the Fixed-mode task
  variations both environments share (tests pass a cached one)."""

  def make_envs(config: EnvConfig, seed: int) -> tuple[MultiTaskEnv, MultiTaskEnv]:
    shared = variations(config.benchmark, seed)
    train_env = MultiTaskEnv(config, seed, "train", variations=shared)
    try:
      eval_env = MultiTaskEnv(
        dataclasses.replace(config, reward_normalization=False), seed, "eval", variations=shared
      )
    except BaseException:
      train_env.close()
      raise
    return train_env, eval_env

  def make_render_env(config: EnvConfig, seed: int, render: RenderSpec) -> MultiTaskEnv:
    # The evaluation env of `make_envs`, whose episodes rendering does not change.
    eval_config = dataclasses.replace(config, reward_normalization=False)
    shared = variations(config.benchmark, seed)
    return MultiTaskEnv(eval_config, seed, "eval", variations=shared, render=render)

  return EnvSource(
    task_names=lambda config: task_names(config.benchmark),
    obs_dim=OBS_DIM,
    action_dim=ACTION_DIM,
    make_envs=make_envs,
    make_render_env=make_render_env,
  )


METAWORLD = metaworld()
