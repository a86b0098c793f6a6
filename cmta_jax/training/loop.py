"""The training driver: a host-side Meta-World rollout loop around the jitted learner.

Per vector step: one jitted action selection for all tasks (which also
advances the LSTM carries), one jitted update dispatched asynchronously, one
environment step on the host while the update runs, one replay insert.
Randomness is derived from (seed, step) with `fold_in`, so a resumed run
draws exactly what the uninterrupted run would have.
"""

import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cmta_jax import analysis, figures
from cmta_jax import config as config_lib
from cmta_jax.agents import carry as carry_lib
from cmta_jax.agents import registry, sac
from cmta_jax.envs.source import METAWORLD, EnvSource
from cmta_jax.replay import ReplayBuffer, check_fits_in_memory, format_bytes
from cmta_jax.training import keys, metrics_log
from cmta_jax.training import run_dir as run_dir_lib
from cmta_jax.training import videos as videos_lib
from cmta_jax.training.checkpointing import Checkpointer
from cmta_jax.training.evaluation import evaluate
from cmta_jax.training.metrics_log import MetricsLog
from cmta_jax.training.preemption import Preempted, StopSignals
from cmta_jax.types import BurnIn

SUMMARY_FILE = "summary.json"
CURVES_FILE = "curves.png"  # redrawn at every evaluation
DIVERGENCE_THRESHOLD = 1e8
# Replay transitions per task for the attention diagnostics at each log step (docs/carry_modes.md).
DIAGNOSTIC_SAMPLES_PER_TASK = 8
ConfigMismatch = run_dir_lib.ConfigMismatch


class TrainingDiverged(RuntimeError):
  pass


class Interrupted(Exception):
  """A second Ctrl-C stopped the run at once; it resumes from its last checkpoint."""


class _EpisodeStats:
  """Host-side per-task success/return of training episodes finished since the last log."""

  def __init__(self, num_tasks: int):
    self.num_tasks = num_tasks
    self.running_success = np.zeros(num_tasks, np.float32)
    self.running_return = np.zeros(num_tasks, np.float64)
    self.finished_success: list[list[float]] = []
    self.finished_return: list[list[float]] = []

  def add_step(self, success, raw_reward, episode_end: bool) -> None:
    self.running_success = np.maximum(self.running_success, success)
    self.running_return += raw_reward
    if episode_end:
      self.finished_success.append(self.running_success.tolist())
      self.finished_return.append(self.running_return.tolist())
      self.running_success = np.zeros(self.num_tasks, np.float32)
      self.running_return = np.zeros(self.num_tasks, np.float64)

  def pop(self) -> dict | None:
    if not self.finished_success:
      return None
    out = {
      "success": np.mean(self.finished_success, axis=0),
      "return": np.mean(self.finished_return, axis=0),
      "episodes": len(self.finished_success),
    }
    self.finished_success, self.finished_return = [], []
    return out

  def state(self) -> dict:
    # Checkpoints are at episode starts, so the running sums are zero then.
    return {"finished_success": self.finished_success, "finished_return": self.finished_return}

  def load(self, state: dict) -> None:
    self.finished_success = state["finished_success"]
    self.finished_return = state["finished_return"]


def _per_task(names, values) -> dict:
  return {name: float(v) for name, v in zip(names, np.asarray(values))}


def success_table(names, success, returns) -> str:
  width = max(len(n) for n in names)
  lines = [f"{'task':<{width}}  success  return"]
  for name, s, r in zip(names, success, returns):
    lines.append(f"{name:<{width}}  {s:7.2f}  {r:8.1f}")
  lines.append(f"{'mean':<{width}}  {np.mean(success):7.2f}  {np.mean(returns):8.1f}")
  return "\n".join(lines)


def make_train_step(networks, sac_config):
  """update + metric accumulation + divergence flag, as one jitted call; state donated."""
  update = sac.make_update_fn(networks, sac_config)

  def train_step(state, totals, batch, base_key, step):
    state, metrics = update(state, batch, keys.step_key(base_key, keys.Stream.UPDATE, step))
    critic_loss = metrics["critic_loss"]
    bad = jnp.any(~jnp.isfinite(critic_loss)) | jnp.any(critic_loss > DIVERGENCE_THRESHOLD)
    for value in metrics.values():
      bad = bad | jnp.any(~jnp.isfinite(value))
    totals = {
      "sums": jax.tree.map(jnp.add, totals["sums"], metrics),
      "count": totals["count"] + 1,
      "diverged": totals["diverged"] | bad,
    }
    return state, totals

  return jax.jit(train_step, donate_argnums=(0, 1))


def empty_totals(networks, sac_config, state, batch_shape_example):
  metrics_shape = jax.eval_shape(
    sac.make_update_fn(networks, sac_config), state, batch_shape_example, jax.random.PRNGKey(0)
  )[1]
  return {
    "sums": jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), metrics_shape),
    "count": jnp.zeros((), jnp.int32),
    "diverged": jnp.zeros((), bool),
  }


def make_act(networks):
  """Action selection for the rollout: warm-up actions are uniform, but carries still advance."""
  select_action = sac.make_select_action_fn(networks)

  def act(params, obs, task_ids, carry, base_key, step, mode: str):
    key = keys.step_key(base_key, keys.Stream.ACT, step)
    actions, carry_out = select_action(
      params, obs, task_ids, carry, key, deterministic=(mode == "eval")
    )
    if mode == "random":
      actions = jax.random.uniform(key, actions.shape, minval=-1.0, maxval=1.0)
    return actions, carry_out

  return jax.jit(act, static_argnames=("mode",))


# ---------------------------------------------------------------- the run and its loop state


@dataclasses.dataclass(frozen=True)
class Run:
  """What stays fixed while a run trains: its config, networks, compiled functions, and the
  host-side objects the loop writes to (environments, replay, episode statistics, files)."""

  config: config_lib.RunConfig
  run_dir: str
  task_names: tuple[str, ...]
  networks: Any
  env: Any
  eval_env: Any
  buffer: ReplayBuffer
  episode_stats: "_EpisodeStats"
  checkpointer: Checkpointer
  metrics_file: MetricsLog
  act: Callable
  train_step: Callable
  diagnostics: Callable | None  # jitted attention diagnostics; None without temporal input
  base_key: jax.Array
  burn_in_steps: int
  log: Callable[[str], None]
  task_ids: jax.Array  # [T] int32 on the device, built once: it is an input of every step
  videos: videos_lib.VideoRecorder | None = None  # with --video_every

  @property
  def num_tasks(self) -> int:
    return len(self.task_names)

  def close(self) -> None:
    self.metrics_file.close()
    self.checkpointer.close()
    self.env.close()
    self.eval_env.close()
    if self.videos is not None:
      self.videos.close()


@dataclasses.dataclass(frozen=True)
class LoopState:
  """What changes from one vector step to the next (checkpoints are at episode starts, where
  `carry` is the zero carry and `episode_step` is 0)."""

  step: int
  episode_step: int
  learner: sac.TrainingState
  totals: dict  # update metrics summed since the last log, update count, divergence flag
  obs: np.ndarray  # [T, obs_dim], what the policy acts on next
  eval_obs: np.ndarray  # [T, obs_dim], the evaluation env's next episode start
  carry: sac.LSTMCarry  # on the device, fed to the next action selection
  carry_host: sac.LSTMCarry  # the same carry on the host, stored with the next transition
  eval_history: tuple[dict, ...]  # every evaluation record of the run so far
  start_step: int  # the step this process started (or resumed) at, for the step rate
  start_time: float  # time.perf_counter() then

  @property
  def last_success(self) -> float:
    return self.eval_history[-1]["mean_success"] if self.eval_history else float("nan")


def train(
  run_config: config_lib.RunConfig,
  run_dir: str,
  allow_config_change: bool = False,
  log: Callable[[str], None] = print,
  envs: EnvSource = METAWORLD,
) -> dict:
  """Trains (or resumes) the run in `run_dir`; returns the summary it also writes to
  summary.json. `envs` builds the environments (Meta-World unless a test injects others)."""
  registry.validate(run_config)
  _check_schedule(run_config, log)
  networks = build_networks(run_config, envs)
  cfg_train = run_config.train
  needed = check_fits_in_memory(
    len(envs.task_names(run_config.env)),
    cfg_train.replay_capacity,
    networks.obs_dim,
    networks.action_dim,
    networks.encoder.carry_dim,
  )
  log(f"replay buffer: {cfg_train.replay_capacity} transitions need {format_bytes(needed)}")
  # Everything below happens under the run directory's lock, and nothing in it is written
  # before the config is known to fit its checkpoints.
  with run_dir_lib.RunDirLock(run_dir):
    saved = run_dir_lib.read_saved_config(run_dir)
    run_dir_lib.check_resume_config(
      run_dir,
      saved,
      run_config,
      allow_config_change,
      functools.partial(checkpoint_shapes, envs=envs),
    )
    run, state = start_run(run_config, run_dir, networks, envs, log)
    try:
      state = run_to_completion(run, state)
    finally:
      run.close()
    return write_summary(run, state)


def _check_schedule(run_config: config_lib.RunConfig, log: Callable[[str], None]) -> None:
  cfg_env, cfg_train = run_config.env, run_config.train
  if cfg_train.total_steps % cfg_env.episode_length:
    raise ValueError(
      f"total_steps ({cfg_train.total_steps}) must be a multiple of the episode length "
      f"({cfg_env.episode_length}): runs end, checkpoint and resume at episode starts"
    )
  if cfg_train.eval_every > cfg_train.total_steps:
    log(
      f"note: eval_every ({cfg_train.eval_every}) > total_steps ({cfg_train.total_steps}): "
      "evaluation runs only at the start and the end"
    )


def build_networks(run_config: config_lib.RunConfig, envs: EnvSource = METAWORLD):
  """The run's AgentNetworks, sized by the environments' observation and action sizes."""
  return registry.make_agent_networks(
    run_config, envs.task_names(run_config.env), envs.obs_dim, envs.action_dim
  )


def checkpoint_shapes(run_config: config_lib.RunConfig, envs: EnvSource = METAWORLD) -> tuple:
  """What a config fixes of its checkpoints' arrays: the learner state's leaves (path ->
  shape, dtype) and the replay buffer's shape. Tracing only, nothing is computed."""
  registry.validate(run_config)
  networks = build_networks(run_config, envs)
  state = jax.eval_shape(
    lambda key: sac.init_training_state(key, networks, run_config.sac), jax.random.PRNGKey(0)
  )
  num_tasks = len(envs.task_names(run_config.env))
  replay = (
    num_tasks,
    run_config.train.replay_capacity // num_tasks,
    networks.obs_dim,
    networks.action_dim,
    networks.encoder.carry_dim,
  )
  return run_dir_lib.abstract_shapes(state), replay


def start_run(
  run_config: config_lib.RunConfig,
  run_dir: str,
  networks,
  envs: EnvSource,
  log: Callable[[str], None],
) -> tuple[Run, LoopState]:
  """Builds the run, then restores its latest checkpoint or starts it at step 0. Writes
  config.json only once the run really starts or resumes; on an error closes what it built."""
  cfg_train = run_config.train
  base_key = keys.run_key(cfg_train.seed)
  learner = sac.init_training_state(
    keys.stream_key(base_key, keys.Stream.INIT), networks, run_config.sac
  )
  names = tuple(envs.task_names(run_config.env))
  window = burn_in_steps(run_config, networks)
  totals = empty_totals(
    networks,
    run_config.sac,
    learner,
    batch_spec(len(names), cfg_train.batch_per_task, networks, window),
  )
  # Before anything is written: a machine that cannot render fails here, in one line.
  videos = videos_lib.make_recorder(run_config, envs, networks, run_dir)
  checkpointer = Checkpointer(run_dir, cfg_train.keep_checkpoints)
  try:
    restored = _restore_latest(checkpointer, run_dir, cfg_train.total_steps, learner, totals, log)
    run_dir_lib.write_config(run_dir, run_config)
    log("config:\n" + json.dumps(config_lib.flatten(run_config), indent=1, sort_keys=True))
    env, eval_env = envs.make_envs(run_config.env, cfg_train.seed)
  except BaseException:
    checkpointer.close()
    if videos is not None:
      videos.close()
    raise
  run = Run(
    config=run_config,
    run_dir=run_dir,
    task_names=names,
    task_ids=jnp.arange(len(names), dtype=jnp.int32),
    networks=networks,
    env=env,
    eval_env=eval_env,
    buffer=_new_replay(cfg_train, networks, len(names)),
    episode_stats=_EpisodeStats(len(names)),
    checkpointer=checkpointer,
    metrics_file=MetricsLog(run_dir, resume_step=None if restored is None else restored[0]),
    act=make_act(networks),
    train_step=make_train_step(networks, run_config.sac),
    diagnostics=_attention_diagnostics(networks),
    base_key=base_key,
    burn_in_steps=window,
    log=log,
    videos=videos,
  )
  try:
    return run, _initial_loop_state(run, learner, totals, restored)
  except BaseException:
    run.close()
    raise


def _new_replay(cfg_train: config_lib.TrainConfig, networks, num_tasks: int) -> ReplayBuffer:
  return ReplayBuffer(
    num_tasks,
    cfg_train.replay_capacity,
    networks.obs_dim,
    networks.action_dim,
    networks.encoder.carry_dim,
    seed=cfg_train.seed,
  )


def _attention_diagnostics(networks) -> Callable | None:
  """The jitted attention diagnostics (docs/carry_modes.md), for encoders with a recurrence."""
  if networks.encoder.advance_carry is None:
    return None
  return jax.jit(carry_lib.make_attention_diagnostics(networks.encoder))


def _restore_latest(
  checkpointer: Checkpointer,
  run_dir: str,
  total_steps: int,
  learner,
  totals,
  log: Callable[[str], None],
):
  """(step, state, replay, meta) of the newest usable checkpoint, or None for a new run."""
  saved_steps = checkpointer.steps()
  if saved_steps and saved_steps[-1] > total_steps:
    raise ValueError(
      f"{run_dir} is already at step {saved_steps[-1]}, past --total_steps="
      f"{total_steps}; nothing changed (give --total_steps >= "
      f"{saved_steps[-1]} to resume or extend it)"
    )
  return checkpointer.restore_latest({"train_state": learner, "totals": totals}, log)


def _initial_loop_state(run: Run, learner, totals, restored) -> LoopState:
  if restored is None:
    step, obs, eval_obs = 0, run.env.reset(), run.eval_env.reset()
  else:
    step, saved_state, replay_state, meta = restored
    learner, totals = saved_state["train_state"], saved_state["totals"]
    run.buffer.load_state_dict(replay_state)
    obs, eval_obs = run.env.restore(meta["env"]), run.eval_env.restore(meta["eval_env"])
    run.episode_stats.load(meta["episode_stats"])
    run.log(f"resumed {run.run_dir} from the checkpoint at step {step}")
  carry = sac.initial_carry(run.networks, run.num_tasks)  # checkpoints are at episode starts
  eval_history = tuple(r for r in metrics_log.read_records(run.run_dir) if r["kind"] == "eval")
  return LoopState(
    step=step,
    episode_step=0,
    learner=learner,
    totals=totals,
    obs=obs,
    eval_obs=eval_obs,
    carry=carry,
    carry_host=jax.device_get(carry),
    eval_history=eval_history,
    start_step=step,
    start_time=time.perf_counter(),
  )


# ---------------------------------------------------------------- the loop's units


def run_to_completion(run: Run, state: LoopState) -> LoopState:
  """Steps until total_steps, logging, evaluating and checkpointing on schedule. A stop
  signal (SIGTERM, first Ctrl-C) checkpoints at the next episode end and raises Preempted;
  a second Ctrl-C raises Interrupted at once."""
  total_steps = run.config.train.total_steps
  try:
    with StopSignals(run.log) as stop:
      if state.step == 0:
        state = evaluate_now(run, state)
      while state.step < total_steps:
        state = collect_and_update(run, state)
        state = after_step(run, state)
        if stop.requested and state.episode_step == 0 and state.step < total_steps:
          _stop_at_episode_end(run, state, stop.requested)
  except KeyboardInterrupt:
    raise Interrupted(
      f"interrupted at step {state.step} of {total_steps}; last checkpoint: "
      f"{_last_checkpoint(run)} in {run.checkpointer.directory}; run the same "
      "command to resume"
    ) from None
  return state


def collect_and_update(run: Run, state: LoopState) -> LoopState:
  """One vector step: act in every task, dispatch one update (asynchronously, so the
  environments step while it runs), step the environments, store the transitions."""
  cfg_train = run.config.train
  mode = "random" if state.step < cfg_train.warmup_steps else "explore"
  actions, carry_out = run.act(
    sac.policy_params(state.learner),
    state.obs,
    run.task_ids,
    state.carry,
    run.base_key,
    state.step,
    mode=mode,
  )
  actions = np.asarray(actions)
  if not np.all(np.isfinite(actions)):
    check_divergence(run, state, actions)
  learner, totals = state.learner, state.totals
  if state.step >= cfg_train.warmup_steps and len(run.buffer):  # (warm-up 0: from the 2nd step)
    learner, totals = run.train_step(
      learner,
      totals,
      run.buffer.sample(cfg_train.batch_per_task, run.burn_in_steps),
      run.base_key,
      state.step,
    )
  result = run.env.step(actions)
  carry_out_host = jax.device_get(carry_out)
  run.buffer.add(
    state.obs,
    actions,
    result.reward,
    result.next_obs,
    result.terminated,
    state.carry_host,
    carry_out_host,
    episode_step=np.full(run.num_tasks, state.episode_step),
  )
  run.episode_stats.add_step(result.success, result.raw_reward, result.episode_start)
  if result.episode_start:
    carry = sac.initial_carry(run.networks, run.num_tasks)
    carry, carry_host, episode_step = carry, jax.device_get(carry), 0
  else:
    carry, carry_host, episode_step = carry_out, carry_out_host, state.episode_step + 1
  return dataclasses.replace(
    state,
    step=state.step + 1,
    episode_step=episode_step,
    learner=learner,
    totals=totals,
    obs=result.obs,
    carry=carry,
    carry_host=carry_host,
  )


def after_step(run: Run, state: LoopState) -> LoopState:
  """Logs, evaluates and checkpoints where the schedule says (and always at the last step)."""
  cfg_train, step = run.config.train, state.step
  last = step == cfg_train.total_steps
  if step % cfg_train.log_every == 0 or last:
    state = write_train_log(run, state)
  if step % cfg_train.eval_every == 0 or last:
    state = evaluate_now(run, state)
  if run.videos is not None and step % cfg_train.video_every == 0:
    run.log(
      f"videos: {run.videos.record(sac.policy_params(state.learner), step, run.metrics_file)}"
    )
  if step % cfg_train.checkpoint_every == 0 or last:
    save_checkpoint(run, state)
  return state


def evaluate_now(run: Run, state: LoopState) -> LoopState:
  """Evaluates the deterministic policy (docs/algorithm.md §5) and records it."""
  check_divergence(run, state)
  episodes = run.config.train.eval_episodes
  result, eval_obs = evaluate(
    run.eval_env,
    state.eval_obs,
    run.act,
    sac.policy_params(state.learner),
    run.task_ids,
    run.networks,
    episodes,
    run.base_key,
    state.step,
  )
  names = run.task_names
  record = {
    "step": state.step,
    "kind": "eval",
    "mean_success": float(np.mean(result["success"])),
    "mean_return": float(np.mean(result["return"])),
    "success": _per_task(names, result["success"]),
    "return": _per_task(names, result["return"]),
    "episodes": episodes,
  }
  run.metrics_file.write(record)
  history = state.eval_history + (record,)
  figures.run_curves(history, _curves_title(run), os.path.join(run.run_dir, CURVES_FILE))
  return dataclasses.replace(state, eval_obs=eval_obs, eval_history=history)


def _curves_title(run: Run) -> str:
  env = run.config.env
  return (
    f"{os.path.basename(os.path.normpath(run.run_dir))}: {run.config.agent}, "
    f"{env.benchmark}-{env.mode.capitalize()}, seed {run.config.train.seed}"
  )


def write_train_log(run: Run, state: LoopState) -> LoopState:
  """Writes the means of every update metric since the last log, the attention diagnostics
  and the training episodes' success; prints one progress line; resets the sums."""
  check_divergence(run, state)
  record = _train_record(run, state)
  run.metrics_file.write(record)
  run.log(_progress_line(run, state, record))
  return dataclasses.replace(state, totals=jax.tree.map(jnp.zeros_like, state.totals))


def _train_record(run: Run, state: LoopState) -> dict:
  names = run.task_names
  sums, count = jax.device_get((state.totals["sums"], state.totals["count"]))
  record = {"step": state.step, "kind": "train", "updates": int(count)}
  if count:
    for name, value in sorted(sums.items()):  # every metric the update returns
      mean = np.asarray(value) / count
      record[name] = _per_task(names, mean) if name == "alpha" else float(np.mean(mean))
  if run.diagnostics is not None and len(run.buffer):
    # Its own seeded draw, so logging never moves the replay sampler's stream.
    rng = np.random.default_rng([run.config.train.seed, int(keys.Stream.DIAGNOSTICS), state.step])
    record.update(
      measure_attention(
        run.diagnostics,
        state.learner.params["encoder"],
        run.buffer,
        run.burn_in_steps,
        run.config.env.episode_length,
        rng,
      )
    )
  episodes = run.episode_stats.pop()
  if episodes is not None:
    record["train_success"] = float(np.mean(episodes["success"]))
    record["train_return"] = float(np.mean(episodes["return"]))
    record["train_success_per_task"] = _per_task(names, episodes["success"])
  elapsed = time.perf_counter() - state.start_time
  record["time/steps_per_sec"] = (state.step - state.start_step) / max(elapsed, 1e-9)
  record["time/elapsed_sec"] = elapsed
  return record


def _progress_line(run: Run, state: LoopState, record: dict) -> str:
  total_steps = run.config.train.total_steps
  rate = record["time/steps_per_sec"]
  eta = (total_steps - state.step) / rate if rate > 0 else float("nan")
  if record["updates"]:
    losses = f"critic {record['critic_loss']:.3g}"
    auxiliary = run.networks.encoder.auxiliary_loss
    if auxiliary is not None:
      losses += f" | {auxiliary.name.removesuffix('_loss')} {record[auxiliary.name]:.3g}"
  else:
    losses = "warm-up (no updates yet)"
  if "attention_staleness" in record:
    losses += f" | attention staleness {record['attention_staleness']:.3f}"
  return (
    f"step {state.step}/{total_steps} | {rate:.1f} steps/s | ETA {_hms(eta)} | {losses} | "
    f"train success {record.get('train_success', float('nan')):.2f} | "
    f"last eval success {state.last_success:.2f}"
  )


def save_checkpoint(run: Run, state: LoopState) -> None:
  """Checkpoints the learner, the replay, the environments' episode streams and the episode
  statistics (at an episode start, so carries need no saving)."""
  check_divergence(run, state)
  meta = {
    "step": state.step,
    "env": run.env.get_state(),
    "eval_env": run.eval_env.get_state(),
    "episode_stats": run.episode_stats.state(),
  }
  run.checkpointer.save(
    state.step,
    {"train_state": state.learner, "totals": state.totals},
    run.buffer.state_dict(),
    json.loads(json.dumps(meta, default=_json_default)),
  )


def check_divergence(run: Run, state: LoopState, actions: np.ndarray | None = None) -> None:
  """Raises TrainingDiverged if an update flagged a non-finite or exploding loss, or the
  parameters or `actions` are not finite. The loss flag alone misses an update whose loss
  was finite but whose step was not: its NaN parameters would surface as an env error."""
  reasons = [
    reason
    for reason, bad in (
      (
        f"a loss non-finite or critic loss above {DIVERGENCE_THRESHOLD:g}",
        bool(state.totals["diverged"]),
      ),
      ("non-finite parameters", not bool(_all_finite(state.learner))),
      ("non-finite actions", actions is not None and not bool(np.all(np.isfinite(actions)))),
    )
    if bad
  ]
  if reasons:
    sums, count = jax.device_get(state.totals["sums"]), max(int(state.totals["count"]), 1)
    raise TrainingDiverged(
      f"training diverged before step {state.step} ({', '.join(reasons)}; mean critic loss "
      f"since the last log {np.mean(sums['critic_loss']) / count:.3g}); stopped, last good "
      f"checkpoint kept in {run.checkpointer.directory} (steps {run.checkpointer.steps()})"
    )


def _stop_at_episode_end(run: Run, state: LoopState, signal_name: str) -> None:
  if state.step not in run.checkpointer.steps():
    save_checkpoint(run, state)
  raise Preempted(
    f"stopped by {signal_name} at step {state.step} of "
    f"{run.config.train.total_steps} after writing its checkpoint in "
    f"{run.checkpointer.directory}; run the same command to resume"
  )


def _last_checkpoint(run: Run) -> str:
  steps = run.checkpointer.steps()
  return f"step {steps[-1]}" if steps else "none yet"


def write_summary(run: Run, state: LoopState) -> dict:
  """Writes summary.json (the run's curve and its paper metrics, docs/algorithm.md §5),
  prints the final evaluation's table, and returns the summary."""
  cfg_env, names = run.config.env, run.task_names
  final = state.eval_history[-1]
  curve = [r["mean_success"] for r in state.eval_history]
  summary = {
    "agent": run.config.agent,
    "benchmark": cfg_env.benchmark,
    "mode": cfg_env.mode,
    "seed": run.config.train.seed,
    "steps": state.step,
    "eval_steps": [r["step"] for r in state.eval_history],
    "mean_success_curve": curve,
    **analysis.summarize_curve(curve),
    "final_success_per_task": final["success"],
    "final_return_per_task": final["return"],
  }
  with open(os.path.join(run.run_dir, SUMMARY_FILE), "w") as f:
    json.dump(summary, f, indent=2)
  run.log(
    "final evaluation (deterministic policy, "
    f"{run.config.train.eval_episodes} episode(s) per task) at step {final['step']}:\n"
    + success_table(names, list(final["success"].values()), list(final["return"].values()))
  )
  run.log(
    f"mean success: final {summary['final']:.3f} | max {summary['max']:.3f} | "
    f"max smoothed {summary['max_smoothed']:.3f} | run dir {run.run_dir}"
  )
  run.log(f"success curves: {os.path.join(run.run_dir, CURVES_FILE)}")
  return summary


@jax.jit
def _all_finite(tree) -> jax.Array:
  leaves = [
    jnp.all(jnp.isfinite(leaf))
    for leaf in jax.tree.leaves(tree)
    if jnp.issubdtype(leaf.dtype, jnp.inexact)
  ]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def measure_attention(
  diagnostics,
  encoder_params,
  buffer: ReplayBuffer,
  window: int,
  episode_length: int,
  rng: np.random.Generator,
  samples_per_task: int = DIAGNOSTIC_SAMPLES_PER_TASK,
) -> dict[str, float]:
  """attention_staleness and attention_entropy_fresh (`carry.make_attention_diagnostics`,
  jitted as `diagnostics`) on `samples_per_task` replay transitions per task drawn with `rng`:
  the update's view uses the run's burn-in `window` (0 = stored carries), the exact one a
  window of a whole episode."""
  slots = buffer.draw_slots(samples_per_task, rng)
  used, exact = buffer.gather(slots, window), buffer.gather(slots, episode_length)
  values = jax.device_get(diagnostics(encoder_params, used, exact))
  return {name: float(value) for name, value in values.items()}


def burn_in_steps(run_config: config_lib.RunConfig, networks) -> int:
  """The burn-in window the update's batches carry: L in carry mode `burn_in`, else 0."""
  recurrent = networks.encoder.advance_carry is not None
  return (
    run_config.mixture.burn_in_steps
    if (recurrent and run_config.mixture.carry_mode == "burn_in")
    else 0
  )


def batch_spec(num_tasks: int, batch_per_task: int, networks, burn_in_steps: int = 0):
  """Shapes and dtypes of the update's batch (a `Transition` of ShapeDtypeStructs)."""

  def spec(*shape):
    return jax.ShapeDtypeStruct((num_tasks, batch_per_task, *shape), jnp.float32)

  carry = sac.LSTMCarry(spec(networks.encoder.carry_dim), spec(networks.encoder.carry_dim))
  burn_in = None
  if burn_in_steps:
    burn_in = BurnIn(
      obs=spec(burn_in_steps, networks.obs_dim), mask=spec(burn_in_steps), carry=carry
    )
  return sac.Transition(
    obs=spec(networks.obs_dim),
    action=spec(networks.action_dim),
    reward=spec(),
    next_obs=spec(networks.obs_dim),
    terminated=spec(),
    carry_in=carry,
    carry_out=carry,
    burn_in=burn_in,
  )


def _json_default(value: Any):
  if isinstance(value, np.ndarray):
    return value.tolist()
  if isinstance(value, np.generic):
    return value.item()
  raise TypeError(f"cannot serialise {type(value).__name__}")


def _hms(seconds: float) -> str:
  if not np.isfinite(seconds):
    return "?"
  seconds = int(seconds)
  return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
