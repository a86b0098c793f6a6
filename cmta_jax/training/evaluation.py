"""Evaluation (docs/algorithm.md §5): deterministic policy, carry reset per episode, E episodes
per task; and evaluation episodes played in a rendering env, frame by frame, for videos."""

from collections.abc import Sequence

import numpy as np

from cmta_jax.agents import sac


def evaluate(
  eval_env,
  obs: np.ndarray,
  act,
  params,
  task_ids,
  networks,
  episodes: int,
  base_keys,
  step: int,
  put=lambda tree: tree,
  stop_at_success: bool = False,
  active: Sequence[bool] | None = None,
) -> tuple[dict, np.ndarray]:
  """Runs `episodes` episodes of every seed's tasks from `obs` [S, T, obs_dim] (an
  episode start) in `eval_env` (a `SeedEnvs`), acting with `act` (`loop.make_act`, vmapped
  over seeds); `put` places the observations and carries on the learner's devices.

  Returns ({"success": [S, T], "return": [S, T]} averaged over episodes, the obs of the next
  episode start). Success of an episode: success at any of its steps. With `stop_at_success`
  (Meta-World+'s rule, `metaworld.evaluation`) an episode ends at its first success: its
  return counts the rewards up to that step. The tasks step in lockstep, so a task that has
  succeeded steps on until every task has succeeded (or its seed has stopped), but nothing
  after its success counts; then the episode ends early (`end_episode`, the same next
  episode as at its last step), which changes no figure.
  """
  if not eval_env.at_episode_start:
    raise RuntimeError("evaluation must start at an episode start")
  envs_shape = obs.shape[:-1]  # (S, T)
  stopped = np.zeros(envs_shape, bool)
  if active is not None:
    stopped[~np.asarray(active, bool)] = True
  success = np.zeros((episodes, *envs_shape), np.float32)
  returns = np.zeros((episodes, *envs_shape), np.float64)
  for episode in range(episodes):
    carry = put(sac.initial_carry(networks, envs_shape))
    while True:
      actions, carry = act(params, put(obs), task_ids, carry, base_keys, step, mode="eval")
      actions = np.asarray(actions)
      result = eval_env.step(np.where(np.isfinite(actions), actions, 0.0))  # stopped seeds
      running = success[episode] == 0 if stop_at_success else True
      returns[episode] += np.where(running, result.raw_reward, 0.0)
      success[episode] = np.maximum(success[episode], result.success)
      obs = result.obs
      if result.episode_start:
        break
      if stop_at_success and np.all((success[episode] > 0) | stopped):
        obs = eval_env.end_episode()
        break
  return {"success": success.mean(axis=0), "return": returns.mean(axis=0)}, obs


def play_rendered_episode(env, obs, networks, params, trace, tasks: Sequence[str], on_frame):
  """One evaluation episode in a rendering env from `obs` (an episode start); each step's
  frame of every task in `tasks` goes to on_frame(task, frame, attention or None). `trace`
  is the jitted `sac.make_trace_fn`. Returns the obs of the next episode start."""
  indices = [env.task_names.index(t) for t in tasks]
  task_ids = np.arange(env.num_tasks, dtype=np.int32)
  carry = sac.initial_carry(networks, env.num_tasks)
  while True:
    frames = env.render_frames(indices)
    actions, carry, attention, _ = trace(params, obs, task_ids, carry)
    for frame, t in zip(frames, indices):
      on_frame(env.task_names[t], frame, None if attention is None else np.asarray(attention[t]))
    result = env.step(np.asarray(actions))
    if result.episode_start:
      return result.obs
    obs = result.obs
