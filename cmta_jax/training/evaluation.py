"""Evaluation (docs/algorithm.md §5): deterministic policy, carry reset per episode, E episodes per task."""

import numpy as np

from cmta_jax.agents import sac
from cmta_jax.envs import MultiTaskEnv


def evaluate(
  eval_env: MultiTaskEnv,
  obs: np.ndarray,
  act,
  params,
  task_ids,
  networks,
  episodes: int,
  base_key,
  step: int,
) -> tuple[dict, np.ndarray]:
  """Runs `episodes` full episodes of every task from `obs` (an episode start).

  Returns ({"success": [T], "return": [T]} averaged over episodes, the obs of
  the next episode start). Success of an episode: success at any of its steps.
  """
  if not eval_env.at_episode_start:
    raise RuntimeError("evaluation must start at an episode start")
  num_tasks = eval_env.num_tasks
  success = np.zeros((episodes, num_tasks), np.float32)
  returns = np.zeros((episodes, num_tasks), np.float64)
  for episode in range(episodes):
    carry = sac.initial_carry(networks, num_tasks)
    while True:
      actions, carry = act(params, obs, task_ids, carry, base_key, step, mode="eval")
      result = eval_env.step(np.asarray(actions))
      success[episode] = np.maximum(success[episode], result.success)
      returns[episode] += result.raw_reward
      obs = result.obs
      if result.episode_start:
        break
  return {"success": success.mean(axis=0), "return": returns.mean(axis=0)}, obs
