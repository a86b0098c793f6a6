"""The per-step training loop: a host-side Meta-World rollout around the jitted learner.

Per vector step of a batch of S seeds (S = 1 for one run): one jitted action selection for all
seeds and tasks (which also advances the LSTM carries), one jitted update dispatched
asynchronously, one environment step of every seed on the host while the update runs, one
replay insert per seed; then logging, evaluation and checkpoints on schedule. Randomness is
derived from (seed, step) with `fold_in`, exactly as a solo run of the seed derives it, so a
resumed run draws what the uninterrupted run would have (docs/seeds.md).
"""

import dataclasses
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cmta_jax.agents import sac
from cmta_jax.replay import device as device_replay
from cmta_jax.training import diagnostics, records, run_state, steps
from cmta_jax.training.evaluation import evaluate
from cmta_jax.training.preemption import Preempted, StopSignals


class Interrupted(Exception):
  """A second Ctrl-C stopped the run at once; it resumes from its last checkpoint."""


def run_to_completion(
  run: run_state.Run, state: run_state.LoopState, stop: StopSignals
) -> run_state.LoopState:
  """Steps until total_steps, logging, evaluating and checkpointing on schedule. A stop
  signal (SIGTERM, first Ctrl-C; `stop`, active since the run directory was locked)
  checkpoints at the next episode end and raises Preempted; one that came during start-up or
  the first evaluation stops before training; a second Ctrl-C raises Interrupted at once."""
  total_steps = run.config.train.total_steps
  try:
    _stop_before_training(run, state, stop)
    if state.step == 0:
      state = evaluate_now(run, state)
      _stop_before_training(run, state, stop)
    while state.step < total_steps:
      state = collect_and_update(run, state)
      state = after_step(run, state)
      if stop.requested and state.episode_step == 0 and state.step < total_steps:
        _stop_at_episode_end(run, state, stop.requested)
  except KeyboardInterrupt:
    raise Interrupted(
      f"interrupted at step {state.step} of {total_steps}; last checkpoint: "
      f"{_last_checkpoint(run, state)} in {_checkpoint_dirs(run)}; run the same command to "
      "resume"
    ) from None
  return state


def _stop_before_training(run: run_state.Run, state: run_state.LoopState, stop) -> None:
  """Raises Preempted if a stop signal came before training began (while the run was
  building, restoring or evaluating at step 0): nothing new to save."""
  if not stop.requested:
    return
  if state.step == 0:
    raise Preempted(
      f"stopped by {stop.requested} before training began: there is no checkpoint to resume "
      "from yet; the same command starts the run again"
    )
  raise Preempted(
    f"stopped by {stop.requested} before training resumed; its checkpoint at step {state.step} "
    f"in {_checkpoint_dirs(run)} is unchanged; run the same command to resume"
  )


def collect_and_update(run: run_state.Run, state: run_state.LoopState) -> run_state.LoopState:
  """One vector step of every seed: act in every task, dispatch the update call (it draws its
  batches from the replay itself, and runs asynchronously while the environments step),
  step the environments, write the transitions into the replay (one more call). The host
  gathers nothing: only this step's transitions cross to where the replay lives."""
  cfg_train = run.config.train
  mode = "random" if state.step < cfg_train.warmup_steps else "explore"
  actions, carry_out = run.act(
    sac.policy_params(state.learner),
    run.placement.put(state.obs),
    run.task_ids,
    state.carry,
    run.base_keys,
    state.step,
    mode=mode,
  )
  actions = np.asarray(actions)
  if not np.all(np.isfinite(actions[np.array(state.active)])):
    state = run_state.check_divergence(run, state, actions)
  if not all(state.active):  # a stopped seed's lanes still compute; its actions are ignored
    actions = np.where(np.isfinite(actions), actions, 0.0)
  learner, totals = state.learner, state.totals
  if state.step >= cfg_train.warmup_steps and state.step > 0:  # (warm-up 0: from the 2nd step)
    source = state.replay
    if run.sample is not None:  # replay in host memory: draw there, send the batches over
      batches = run.sample(state.replay, run.replay_keys, state.step)
      source = run.replay_place.to_learner(batches, batch_axis=3)  # [S, K, T, B, ...]
    learner, totals = run.train_step(learner, totals, source, run.base_keys, state.step)
    if state.update_clock is None:
      state = dataclasses.replace(state, update_clock=(state.step + 1, time.perf_counter()))
  result = run.env.step(actions)
  put = run.replay_place.put
  replay = run.insert(
    state.replay,
    put(state.obs),
    put(actions),
    put(result.reward),
    put(result.next_obs),
    put(result.terminated),
    put(state.carry),
    put(carry_out),
    state.episode_step,
  )
  for index, seed_run in enumerate(run.seeds):
    seed_run.episode_stats.add_step(
      result.success[index], result.raw_reward[index], result.episode_start
    )
  if result.episode_start:
    carry = run.placement.put(sac.initial_carry(run.networks, (run.num_seeds, run.num_tasks)))
    episode_step = 0
  else:
    carry, episode_step = carry_out, state.episode_step + 1
  return dataclasses.replace(
    state,
    step=state.step + 1,
    episode_step=episode_step,
    learner=learner,
    totals=totals,
    obs=result.obs,
    carry=carry,
    replay=replay,
  )


def after_step(run: run_state.Run, state: run_state.LoopState) -> run_state.LoopState:
  """Logs, evaluates and checkpoints where the schedule says (and always at the last step)."""
  cfg_train, step = run.config.train, state.step
  last = step == cfg_train.total_steps
  if step % cfg_train.log_every == 0 or last:
    state = write_train_log(run, state)
  if step % cfg_train.eval_every == 0 or last:
    state = evaluate_now(run, state)
  if cfg_train.video_every and step % cfg_train.video_every == 0:
    params = jax.device_get(sac.policy_params(state.learner))
    for index, seed_run in run_state.active_seeds(run, state):
      pattern = seed_run.videos.record(steps.seed_slice(params, index), step, seed_run.metrics_file)
      run.log(f"videos: {pattern}")
  if step % cfg_train.checkpoint_every == 0 or last:
    state = save_checkpoint(run, state)
  return state


def evaluate_now(run: run_state.Run, state: run_state.LoopState) -> run_state.LoopState:
  """Evaluates every seed's deterministic policy (docs/algorithm.md §5) and records it."""
  state = run_state.check_divergence(run, state)
  episodes = run.config.train.eval_episodes
  result, eval_obs = evaluate(
    run.eval_env,
    state.eval_obs,
    run.act,
    sac.policy_params(state.learner),
    run.task_ids,
    run.networks,
    episodes,
    run.base_keys,
    state.step,
    put=run.placement.put,
    stop_at_success=run.config.train.eval_protocol == "metaworld_plus",
    active=state.active,
  )
  names = run.task_names
  history = list(state.eval_history)
  for index, seed_run in run_state.active_seeds(run, state):
    record = records.eval_record(
      names, state.step, result["success"][index], result["return"][index], episodes
    )
    seed_run.metrics_file.write(record)
    history[index] = history[index] + (record,)
    if run.draw_curves is not None:
      run.draw_curves(history[index], records.curves_title(seed_run), records.curves_path(seed_run))
  return dataclasses.replace(state, eval_obs=eval_obs, eval_history=tuple(history))


def write_train_log(run: run_state.Run, state: run_state.LoopState) -> run_state.LoopState:
  """Writes each seed's means of every update metric since the last log, its attention
  diagnostics and training episodes' success; prints one progress line (the mean over the
  seeds); resets the sums."""
  state = run_state.check_divergence(run, state)
  sums, counts = jax.device_get((state.totals["sums"], state.totals["count"]))
  attention = diagnostics.attention_records(run, state)
  seed_records = []
  for index, seed_run in run_state.active_seeds(run, state):
    record = records.train_record(
      run, state, seed_run, steps.seed_slice(sums, index), int(counts[index])
    )
    if attention is not None:
      record.update(attention[index])
    seed_run.metrics_file.write(record)
    seed_records.append((index, record))
  run.log(records.progress_line(run, state, seed_records))
  return dataclasses.replace(state, totals=jax.tree.map(jnp.zeros_like, state.totals))


def save_checkpoint(run: run_state.Run, state: run_state.LoopState) -> run_state.LoopState:
  """Checkpoints every active seed (that has no checkpoint of this step yet) in its own run
  directory: the learner, the replay, the environments' episode streams and the episode
  statistics (at an episode start, so carries need no saving). A seed's checkpoint is that
  of a solo run of the seed. Returns the state with any seed found diverged stopped."""
  state = run_state.check_divergence(run, state)
  learner, totals = jax.device_get((state.learner, state.totals))
  env_states, eval_states = run.env.get_state(), run.eval_env.get_state()
  for index, seed_run in run_state.active_seeds(run, state):
    if state.step in seed_run.checkpointer.steps():
      continue
    meta = {
      "step": state.step,
      "env": env_states[index],
      "eval_env": eval_states[index],
      "episode_stats": seed_run.episode_stats.state(),
      "metrics_records": seed_run.metrics_file.records,  # what a resume must find there
    }
    seed_run.checkpointer.save(
      state.step,
      {"train_state": steps.seed_slice(learner, index), "totals": steps.seed_slice(totals, index)},
      device_replay.to_state_dict(state.replay, index),
      json.loads(json.dumps(meta, default=_json_default)),
    )
  return state


def _stop_at_episode_end(run: run_state.Run, state: run_state.LoopState, signal_name: str) -> None:
  state = save_checkpoint(run, state)  # (seeds that saved this step already are skipped)
  raise Preempted(
    f"stopped by {signal_name} at step {state.step} of "
    f"{run.config.train.total_steps} after writing its checkpoint in "
    f"{_checkpoint_dirs(run)}; run the same command to resume"
  )


def _checkpoint_dirs(run: run_state.Run) -> str:
  if run.num_seeds == 1:
    return run.seeds[0].checkpointer.directory
  return os.path.join(os.path.dirname(run.seeds[0].run_dir), "seed<K>", "checkpoints")


def _last_checkpoint(run: run_state.Run, state: run_state.LoopState) -> str:
  """The last step every active seed has a checkpoint of."""
  active = [s for _, s in run_state.active_seeds(run, state)] or list(run.seeds)
  saved = set.intersection(*(set(s.checkpointer.steps()) for s in active))
  return f"step {max(saved)}" if saved else "none yet"


def _json_default(value: Any):
  if isinstance(value, np.ndarray):
    return value.tolist()
  if isinstance(value, np.generic):
    return value.item()
  raise TypeError(f"cannot serialise {type(value).__name__}")
