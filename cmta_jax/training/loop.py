"""The training driver: a host-side Meta-World rollout loop around the jitted learner.

The loop trains a batch of S seeds (S = 1 for one run) as independent runs: the learner
state has a leading seed axis and THE update is vmapped over it. Per vector step: one jitted
action selection for all seeds and tasks (which also advances the LSTM carries), one jitted
update dispatched asynchronously, one environment step of every seed on the host while the
update runs, one replay insert per seed. Randomness is derived from (seed, step) with
`fold_in`, exactly as a solo run of the seed derives it, so a resumed run draws what the
uninterrupted run would have (docs/seeds.md).
"""

import contextlib
import dataclasses
import functools
import glob
import json
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from cmta_jax import analysis, figures
from cmta_jax import config as config_lib
from cmta_jax.agents import carry as carry_lib
from cmta_jax.agents import registry, sac
from cmta_jax.envs.metaworld_env import validate_seed
from cmta_jax.envs.seed_envs import EnvPool, SeedEnvs
from cmta_jax.envs.source import METAWORLD, EnvSource
from cmta_jax.replay.buffer import ReplayBuffer, sample_seeds, stack_transitions
from cmta_jax.replay.memory import check_fits_in_memory, format_bytes
from cmta_jax.training import devices as devices_lib
from cmta_jax.training import keys, metrics_log
from cmta_jax.training import run_dir as run_dir_lib
from cmta_jax.training import videos as videos_lib
from cmta_jax.training.checkpointing import Checkpointer, checkpoint_steps
from cmta_jax.training.evaluation import evaluate
from cmta_jax.training.metrics_log import MetricsLog
from cmta_jax.training.preemption import Preempted, StopSignals
from cmta_jax.types import BurnIn

SUMMARY_FILE = "summary.json"
DIVERGED_FILE = "diverged.txt"  # in a batch, a seed that diverged says so here and stops
SINGLE_DEVICE = devices_lib.Placement(None)
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


def make_train_step(networks, sac_config, placement: devices_lib.Placement = SINGLE_DEVICE):
  """THE update vmapped over the seed axis, with metric accumulation and a divergence flag
  per seed, as one jitted call; state and sums donated. Data parallel: under `shard_map`,
  each device updates on its slice of the batch and the gradients are averaged."""
  axis_name = devices_lib.DATA_AXIS if placement.data_parallel else None
  update = sac.make_update_fn(networks, sac_config, axis_name=axis_name)

  def one_seed(state, totals, batch, base_key, step):
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

  train_step = jax.vmap(one_seed, in_axes=(0, 0, 0, 0, None))
  if placement.data_parallel:
    replicated, split = P(), P(None, None, devices_lib.DATA_AXIS)
    train_step = jax.shard_map(
      train_step,
      mesh=placement.mesh,
      in_specs=(replicated, replicated, split, replicated, replicated),
      out_specs=replicated,
      check_vma=False,  # the gradients and metrics are pmean-ed, so the outputs agree
    )
  return jax.jit(train_step, donate_argnums=(0, 1))


def empty_totals(networks, sac_config, state, batch_shape_example):
  """Zero metric sums, update count and divergence flag for ONE seed's state and batch."""
  metrics_shape = jax.eval_shape(
    sac.make_update_fn(networks, sac_config), state, batch_shape_example, jax.random.PRNGKey(0)
  )[1]
  return {
    "sums": jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), metrics_shape),
    "count": jnp.zeros((), jnp.int32),
    "diverged": jnp.zeros((), bool),
  }


def make_act(networks):
  """Action selection for the rollout, vmapped over seeds: params, obs [S, T, obs_dim], carry
  and base keys [S, 2] have a seed axis. Warm-up actions are uniform, but carries still
  advance."""
  select_action = sac.make_select_action_fn(networks)

  def act(params, obs, task_ids, carry, base_key, step, mode: str):
    key = keys.step_key(base_key, keys.Stream.ACT, step)
    actions, carry_out = select_action(
      params, obs, task_ids, carry, key, deterministic=(mode == "eval")
    )
    if mode == "random":
      actions = jax.random.uniform(key, actions.shape, minval=-1.0, maxval=1.0)
    return actions, carry_out

  def act_seeds(params, obs, task_ids, carry, base_keys, step, mode: str):
    one_seed = functools.partial(act, mode=mode)
    return jax.vmap(one_seed, in_axes=(0, 0, None, 0, 0, None))(
      params, obs, task_ids, carry, base_keys, step
    )

  return jax.jit(act_seeds, static_argnames=("mode",))


def stack_seeds(trees: Sequence[Any]) -> Any:
  """One tree with a leading seed axis from one tree per seed."""
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def seed_slice(tree: Any, index: int) -> Any:
  return jax.tree.map(lambda leaf: leaf[index], tree)


# ---------------------------------------------------------------- the run and its loop state


@dataclasses.dataclass(frozen=True)
class SeedRun:
  """One seed's host side: its config (`train.seed` is the seed), its run directory and what
  the loop writes there, its replay and its training-episode statistics."""

  config: config_lib.RunConfig
  run_dir: str
  buffer: ReplayBuffer
  episode_stats: "_EpisodeStats"
  checkpointer: Checkpointer
  metrics_file: MetricsLog
  videos: videos_lib.VideoRecorder | None = None  # with --video_every

  @property
  def seed(self) -> int:
    return self.config.train.seed

  def close(self) -> None:
    """Closes everything, even past a close that fails (the failure is raised at the end)."""
    with contextlib.ExitStack() as closing:
      if self.videos is not None:
        closing.callback(self.videos.close)
      closing.callback(self.checkpointer.close)
      closing.callback(self.metrics_file.close)


@dataclasses.dataclass(frozen=True)
class Run:
  """What stays fixed while a batch of S seeds trains (S = 1 for one run): the config they
  share, the networks and compiled functions, the environments, and one `SeedRun` per seed."""

  config: config_lib.RunConfig  # the first seed's; the seeds differ only in train.seed
  seeds: tuple[SeedRun, ...]
  task_names: tuple[str, ...]
  networks: Any
  envs: EnvPool
  act: Callable
  train_step: Callable
  diagnostics: Callable | None  # jitted, vmapped attention diagnostics; None without temporal input
  base_keys: jax.Array  # [S, 2]: each seed's run key, as its solo run derives it
  placement: devices_lib.Placement
  burn_in_steps: int
  log: Callable[[str], None]
  task_ids: jax.Array  # [T] int32 on the device, built once: it is an input of every step
  is_batch: bool = False  # seeds in RUN_DIR/seed<K>: one that diverges stops alone

  @property
  def num_tasks(self) -> int:
    return len(self.task_names)

  @property
  def num_seeds(self) -> int:
    return len(self.seeds)

  @property
  def env(self) -> SeedEnvs:
    return self.envs.train

  @property
  def eval_env(self) -> SeedEnvs:
    return self.envs.eval

  def close(self) -> None:
    """Closes everything, even past a close that fails (the failure is raised at the end)."""
    with contextlib.ExitStack() as closing:
      closing.callback(self.envs.close)
      for seed_run in reversed(self.seeds):
        closing.callback(seed_run.close)


@dataclasses.dataclass(frozen=True)
class LoopState:
  """What changes from one vector step to the next; arrays have a leading seed axis S
  (checkpoints are at episode starts, where `carry` is the zero carry and `episode_step` 0)."""

  step: int
  episode_step: int
  learner: sac.TrainingState  # [S, ...] leaves
  totals: dict  # per seed: update metrics summed since the last log, update count, divergence
  obs: np.ndarray  # [S, T, obs_dim], what the policy acts on next
  eval_obs: np.ndarray  # [S, T, obs_dim], the evaluation envs' next episode start
  carry: sac.LSTMCarry  # [S, T, H] on the device, fed to the next action selection
  carry_host: sac.LSTMCarry  # the same carry on the host, stored with the next transition
  eval_history: tuple[tuple[dict, ...], ...]  # per seed: every evaluation record so far
  active: tuple[bool, ...]  # per seed: False once it diverged (it is stopped, not removed)
  start_step: int  # the step this process started (or resumed) at, for the step rate
  start_time: float  # time.perf_counter() then

  def last_success(self, index: int) -> float:
    history = self.eval_history[index]
    return history[-1]["mean_success"] if history else float("nan")


def train(
  run_config: config_lib.RunConfig,
  run_dir: str,
  allow_config_change: bool = False,
  log: Callable[[str], None] = print,
  envs: EnvSource = METAWORLD,
  data_parallel: bool = False,
  devices: Sequence[jax.Device] | None = None,
) -> dict:
  """Trains (or resumes) the run in `run_dir`; returns the summary it also writes to
  summary.json. `envs` builds the environments (Meta-World unless a test injects others);
  `data_parallel` splits every batch over `devices` (default: all local devices;
  docs/seeds.md, "Devices")."""
  seed = run_config.train.seed
  if run_dir_lib.read_saved_config(run_dir) is None and glob.glob(
    os.path.join(run_dir, "seed*", run_dir_lib.CONFIG_FILE)
  ):
    raise ValueError(
      f"{run_dir} holds a batch of seeds (seed<K>/); resume it with --seeds, train one of its "
      "seeds alone with --run_dir=RUN_DIR/seed<K>, or give another --run_dir"
    )
  summaries = _train_batch(
    run_config, {seed: run_dir}, allow_config_change, log, envs, 0, data_parallel, devices
  )
  return summaries[seed]


def train_seeds(
  run_config: config_lib.RunConfig,
  run_dir: str,
  seeds: Sequence[int],
  allow_config_change: bool = False,
  log: Callable[[str], None] = print,
  envs: EnvSource = METAWORLD,
  env_workers: int = 0,
  devices: Sequence[jax.Device] | None = None,
) -> dict[int, dict | None]:
  """Trains (or resumes) `seeds` as one batch, each seed in `run_dir/seed<K>` as a normal run
  directory: the update vmapped over a seed axis, the seeds' environments stepped by
  `env_workers` processes (0: this process), the seeds spread over `devices` (default: all
  local devices; docs/seeds.md). Returns {seed: summary, or None for a seed that diverged and was
  stopped}; raises TrainingDiverged if every seed diverged."""
  seeds = check_seeds(seeds)
  if run_dir_lib.read_saved_config(run_dir) is not None:
    raise ValueError(
      f"{run_dir} holds a single-seed run; give the batch another --run_dir (each of its "
      "seeds trains in RUN_DIR/seed<K>)"
    )
  seed_dirs = {seed: seed_run_dir(run_dir, seed) for seed in seeds}
  return _train_batch(
    run_config, seed_dirs, allow_config_change, log, envs, env_workers, False, devices, True
  )


def _train_batch(
  run_config: config_lib.RunConfig,
  seed_dirs: dict[int, str],
  allow_config_change: bool,
  log: Callable[[str], None],
  envs: EnvSource,
  env_workers: int,
  data_parallel: bool,
  devices: Sequence[jax.Device] | None,
  is_batch: bool = False,
) -> dict[int, dict | None]:
  """The seeds of `seed_dirs` as one batch (docs/seeds.md); `is_batch`: a batch of seeds
  (one that diverges stops alone), not a single run."""
  registry.validate(run_config)
  _check_schedule(run_config, log)
  bpt = run_config.train.batch_per_task
  devices_lib.choose(len(seed_dirs), bpt, data_parallel, devices)  # before anything is written
  networks = build_networks(run_config, envs)
  _log_replay_memory(run_config, networks, envs, list(seed_dirs.values()), log)
  # Everything below happens under the run directories' locks, and nothing in them is
  # written before each config is known to fit its checkpoints.
  with contextlib.ExitStack() as locks:
    for directory in seed_dirs.values():
      locks.enter_context(run_dir_lib.RunDirLock(directory))
    configs = []
    for seed, directory in seed_dirs.items():
      config = config_lib.replace_fields(run_config, seed=seed)
      run_dir_lib.check_resume_config(
        directory,
        run_dir_lib.read_saved_config(directory),
        config,
        allow_config_change,
        functools.partial(checkpoint_shapes, envs=envs),
      )
      configs.append(config)
    configs = _without_diverged(configs, seed_dirs, log)
    run, state = start_run(
      configs,
      [seed_dirs[c.train.seed] for c in configs],
      networks,
      envs,
      log,
      env_workers=env_workers,
      placement=devices_lib.choose(len(configs), bpt, data_parallel, devices),
      is_batch=is_batch,
    )
    try:
      state = run_to_completion(run, state)
    finally:
      run.close()
    summaries = {seed: None for seed in seed_dirs}
    for index, seed_run in enumerate(run.seeds):
      if state.active[index]:
        summaries[seed_run.seed] = write_summary(run, state, index)
    return summaries


def check_seeds(seeds: Sequence[int]) -> tuple[int, ...]:
  """The seeds as a tuple; ValueError (one line) if none, repeated or out of range."""
  seeds = tuple(seeds)
  if not seeds:
    raise ValueError("no seeds given")
  for seed in seeds:
    validate_seed(seed)
  if len(set(seeds)) != len(seeds):
    raise ValueError(f"seeds repeat: {list(seeds)}")
  return seeds


def seed_run_dir(run_dir: str, seed: int) -> str:
  """Where a seed of a batch trains: `run_dir/seed<K>`."""
  return os.path.join(run_dir, f"seed{seed}")


def _log_replay_memory(run_config, networks, envs: EnvSource, run_dirs: list[str], log) -> None:
  """Checks that the seeds' replay buffers fit in memory, and says what they take. A resume
  also holds one seed's restored replay at a time besides the buffers."""
  cfg_train = run_config.train
  resuming = any(checkpoint_steps(os.path.join(d, "checkpoints")) for d in run_dirs)
  needed = check_fits_in_memory(
    len(envs.task_names(run_config.env)),
    cfg_train.replay_capacity,
    networks.obs_dim,
    networks.action_dim,
    replay_carry_dim(networks),
    num_seeds=len(run_dirs),
    resuming=resuming,
  )
  per_seed = f" ({len(run_dirs)} seeds)" if len(run_dirs) > 1 else ""
  restoring = ", one more while resuming" if resuming else ""
  log(
    f"replay buffer: {cfg_train.replay_capacity} transitions{per_seed}{restoring} need "
    f"{format_bytes(needed)}"
  )


def _without_diverged(configs, seed_dirs: dict, log) -> list:
  """The configs of the seeds that have not diverged in an earlier attempt of the batch."""
  kept = []
  for config in configs:
    marker = os.path.join(seed_dirs[config.train.seed], DIVERGED_FILE)
    if os.path.exists(marker):
      log(f"seed {config.train.seed} diverged earlier ({marker}); left out of this batch")
    else:
      kept.append(config)
  if not kept:
    raise TrainingDiverged(
      f"every seed diverged earlier (see their {DIVERGED_FILE}); nothing to run"
    )
  return kept


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


def replay_carry_dim(networks) -> int:
  """The carry size replay stores (0 without a recurrence)."""
  return networks.encoder.carry_dim


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
    replay_carry_dim(networks),
  )
  return run_dir_lib.abstract_shapes(state), replay


def start_run(
  configs: Sequence[config_lib.RunConfig],
  run_dirs: Sequence[str],
  networks,
  envs: EnvSource,
  log: Callable[[str], None],
  env_workers: int = 0,
  placement: devices_lib.Placement = SINGLE_DEVICE,
  is_batch: bool = False,
) -> tuple[Run, LoopState]:
  """Builds the batch of `configs` (one per seed, differing only in the seed), then restores
  the latest checkpoint every seed completed, or starts at step 0. Writes each config.json
  only once the run really starts or resumes; on an error closes what it built."""
  base_keys = jnp.stack([keys.run_key(c.train.seed) for c in configs])
  learners = [
    sac.init_training_state(keys.stream_key(key, keys.Stream.INIT), networks, configs[0].sac)
    for key in base_keys
  ]
  names = tuple(envs.task_names(configs[0].env))
  window = burn_in_steps(configs[0], networks)
  totals = empty_totals(
    networks,
    configs[0].sac,
    learners[0],
    batch_spec(len(names), configs[0].train.batch_per_task, networks, window),
  )
  with contextlib.ExitStack() as on_error:
    seeds, restored = _open_seeds(
      configs, run_dirs, networks, envs, learners, totals, log, on_error
    )
    pool = EnvPool(envs.make_envs, configs[0].env, [c.train.seed for c in configs], env_workers)
    on_error.callback(pool.close)
    run = Run(
      config=configs[0],
      seeds=seeds,
      task_names=names,
      task_ids=jnp.arange(len(names), dtype=jnp.int32),
      networks=networks,
      envs=pool,
      act=make_act(networks),
      train_step=make_train_step(networks, configs[0].sac, placement),
      diagnostics=_attention_diagnostics(networks),
      base_keys=placement.put(base_keys),
      placement=placement,
      burn_in_steps=window,
      log=log,
      is_batch=is_batch,
    )
    state = _initial_loop_state(run, learners, totals, restored)
    on_error.pop_all()
  return run, state


def _open_seeds(configs, run_dirs, networks, envs, learners, totals, log, on_error):
  """(one SeedRun per seed, the restored checkpoints or None): video recorders and
  checkpointers first (a machine that cannot render fails before anything is written), then
  the restore (each seed's replay straight into its buffer), then config.json and the
  metrics logs. Registers every close in `on_error`."""
  opened = []
  num_tasks = len(envs.task_names(configs[0].env))
  for config, directory in zip(configs, run_dirs):
    videos = videos_lib.make_recorder(config, envs, networks, directory)
    if videos is not None:
      on_error.callback(videos.close)
    # A batch keeps one checkpoint more: see _restore_batch.
    checkpointer = Checkpointer(directory, config.train.keep_checkpoints + (len(configs) > 1))
    on_error.callback(checkpointer.close)
    buffer = _new_replay(config.train, networks, num_tasks)
    opened.append((config, directory, checkpointer, videos, buffer))
  restored = _restore_batch(
    [o[2] for o in opened],
    [o[4] for o in opened],
    run_dirs,
    configs[0].train.total_steps,
    learners,
    totals,
    log,
  )
  for config, directory in zip(configs, run_dirs):
    run_dir_lib.write_config(directory, config)
  log("config:\n" + json.dumps(config_lib.flatten(configs[0]), indent=1, sort_keys=True))
  if len(configs) > 1:
    log(f"seeds: {[c.train.seed for c in configs]} in {os.path.dirname(run_dirs[0])}/seed<K>")
  seeds = []
  for config, directory, checkpointer, videos, buffer in opened:
    metrics_file = MetricsLog(directory, resume_step=None if restored is None else restored[0][0])
    on_error.callback(metrics_file.close)
    seeds.append(
      SeedRun(
        config=config,
        run_dir=directory,
        buffer=buffer,
        episode_stats=_EpisodeStats(num_tasks),
        checkpointer=checkpointer,
        metrics_file=metrics_file,
        videos=videos,
      )
    )
  return tuple(seeds), restored


def _new_replay(cfg_train: config_lib.TrainConfig, networks, num_tasks: int) -> ReplayBuffer:
  return ReplayBuffer(
    num_tasks,
    cfg_train.replay_capacity,
    networks.obs_dim,
    networks.action_dim,
    replay_carry_dim(networks),
    seed=cfg_train.seed,
  )


def _attention_diagnostics(networks) -> Callable | None:
  """The attention diagnostics (docs/carry_modes.md) vmapped over seeds and jitted, for
  encoders with a recurrence."""
  if networks.encoder.advance_carry is None:
    return None
  return jax.jit(jax.vmap(carry_lib.make_attention_diagnostics(networks.encoder)))


def _restore_batch(checkpointers, buffers, run_dirs, total_steps: int, learners, totals, log):
  """[(step, state, meta)] per seed at the newest step every seed completed, each seed's
  replay loaded into its buffer at once (one restored replay in memory at a time); or None
  for a new batch. A batch killed between its seeds' saves resumes at the step before, or
  from the start if it was the first round of saves; the newer checkpoints are removed
  (the batch writes them again, identically)."""
  latest = [c.steps()[-1] if c.steps() else None for c in checkpointers]
  for directory, step in zip(run_dirs, latest):
    if step is not None and step > total_steps:
      raise ValueError(
        f"{directory} is already at step {step}, past --total_steps={total_steps}; nothing "
        f"changed (give --total_steps >= {step} to resume or extend it)"
      )
  with_saves = [c.steps() for c in checkpointers if c.steps()]
  first_round_cut = len({tuple(steps) for steps in with_saves}) == 1 and len(with_saves[0]) == 1
  if None in latest and with_saves and not first_round_cut:
    missing = [d for d, s in zip(run_dirs, latest) if s is None]
    raise ValueError(
      f"{', '.join(missing)} hold(s) no checkpoint while the batch's other seeds are at step "
      f"{max(s for s in latest if s is not None)}; a batch's seeds train together: give new "
      "seeds their own --run_dir"
    )
  # Seeds without a checkpoint beside ones with the first round's only: that round was cut
  # short, and the batch starts again.
  common = None if None in latest else min(latest)
  while common is not None:
    restored = []
    for checkpointer, buffer, learner in zip(checkpointers, buffers, learners):
      one = checkpointer.restore_latest(
        {"train_state": learner, "totals": totals}, log, max_step=common
      )
      if one is None:
        break
      step, state, replay, meta = one
      buffer.load_state_dict(replay)
      del replay
      restored.append((step, state, meta))
    steps = {r[0] for r in restored}
    if len(restored) == len(checkpointers) and steps == {common}:
      break
    # A seed fell back past an unreadable checkpoint (or had none left): all follow it.
    common = min(steps) if len(restored) == len(checkpointers) else None
  for directory, checkpointer in zip(run_dirs, checkpointers):
    newer = checkpointer.delete_after(-1 if common is None else common)
    if newer:
      log(
        f"{directory}: checkpoint(s) {newer} are past the last step every seed of the batch "
        f"completed ({common or 'none: the batch starts again'}), so removed; the batch "
        "writes them again, identically"
      )
  return None if common is None else restored


def _initial_loop_state(run: Run, learners, totals, restored) -> LoopState:
  num_seeds = run.num_seeds
  if restored is None:
    step, obs, eval_obs = 0, run.env.reset(), run.eval_env.reset()
    totals = [totals] * num_seeds
  else:
    step = restored[0][0]
    learners = [r[1]["train_state"] for r in restored]
    totals = [r[1]["totals"] for r in restored]
    for seed_run, (_, _, meta) in zip(run.seeds, restored):
      seed_run.episode_stats.load(meta["episode_stats"])
    obs = run.env.restore([r[2]["env"] for r in restored])
    eval_obs = run.eval_env.restore([r[2]["eval_env"] for r in restored])
    where = run.seeds[0].run_dir if num_seeds == 1 else os.path.dirname(run.seeds[0].run_dir)
    run.log(f"resumed {where} from the checkpoint at step {step}")
  carry = sac.initial_carry(run.networks, (num_seeds, run.num_tasks))  # episode starts
  eval_history = tuple(
    tuple(r for r in metrics_log.read_records(s.run_dir) if r["kind"] == "eval") for s in run.seeds
  )
  return LoopState(
    step=step,
    episode_step=0,
    learner=run.placement.put(stack_seeds(learners)),
    totals=run.placement.put(stack_seeds(totals)),
    obs=obs,
    eval_obs=eval_obs,
    carry=run.placement.put(carry),
    carry_host=jax.device_get(carry),
    eval_history=eval_history,
    active=(True,) * num_seeds,
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
      f"{_last_checkpoint(run, state)} in {_checkpoint_dirs(run)}; run the same command to "
      "resume"
    ) from None
  return state


def collect_and_update(run: Run, state: LoopState) -> LoopState:
  """One vector step of every seed: act in every task, dispatch one update (asynchronously,
  so the environments step while it runs), step the environments, store the transitions."""
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
    state = check_divergence(run, state, actions)
  if not all(state.active):  # a stopped seed's lanes still compute; its actions are ignored
    actions = np.where(np.isfinite(actions), actions, 0.0)
  learner, totals = state.learner, state.totals
  if state.step >= cfg_train.warmup_steps and state.step > 0:  # (warm-up 0: from the 2nd step)
    batch = sample_seeds([s.buffer for s in run.seeds], cfg_train.batch_per_task, run.burn_in_steps)
    learner, totals = run.train_step(
      learner, totals, run.placement.put_batch(batch), run.base_keys, state.step
    )
  result = run.env.step(actions)
  carry_out_host = jax.device_get(carry_out)
  for index, seed_run in enumerate(run.seeds):
    seed_run.buffer.add(
      state.obs[index],
      actions[index],
      result.reward[index],
      result.next_obs[index],
      result.terminated[index],
      seed_slice(state.carry_host, index),
      seed_slice(carry_out_host, index),
      episode_step=np.full(run.num_tasks, state.episode_step),
    )
    seed_run.episode_stats.add_step(
      result.success[index], result.raw_reward[index], result.episode_start
    )
  if result.episode_start:
    carry = sac.initial_carry(run.networks, (run.num_seeds, run.num_tasks))
    carry, carry_host, episode_step = run.placement.put(carry), jax.device_get(carry), 0
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
  if cfg_train.video_every and step % cfg_train.video_every == 0:
    params = jax.device_get(sac.policy_params(state.learner))
    for index, seed_run in _active_seeds(run, state):
      pattern = seed_run.videos.record(seed_slice(params, index), step, seed_run.metrics_file)
      run.log(f"videos: {pattern}")
  if step % cfg_train.checkpoint_every == 0 or last:
    state = save_checkpoint(run, state)
  return state


def _active_seeds(run: Run, state: LoopState):
  return [(i, s) for i, s in enumerate(run.seeds) if state.active[i]]


def evaluate_now(run: Run, state: LoopState) -> LoopState:
  """Evaluates every seed's deterministic policy (docs/algorithm.md §5) and records it."""
  state = check_divergence(run, state)
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
  )
  names = run.task_names
  history = list(state.eval_history)
  for index, seed_run in _active_seeds(run, state):
    record = {
      "step": state.step,
      "kind": "eval",
      "mean_success": float(np.mean(result["success"][index])),
      "mean_return": float(np.mean(result["return"][index])),
      "success": _per_task(names, result["success"][index]),
      "return": _per_task(names, result["return"][index]),
      "episodes": episodes,
    }
    seed_run.metrics_file.write(record)
    history[index] = history[index] + (record,)
    figures.run_curves(
      history[index], _curves_title(seed_run), os.path.join(seed_run.run_dir, CURVES_FILE)
    )
  return dataclasses.replace(state, eval_obs=eval_obs, eval_history=tuple(history))


def _curves_title(seed_run: SeedRun) -> str:
  env = seed_run.config.env
  return (
    f"{os.path.basename(os.path.normpath(seed_run.run_dir))}: {seed_run.config.agent}, "
    f"{env.benchmark}-{env.mode.capitalize()}, seed {seed_run.seed}"
  )


def write_train_log(run: Run, state: LoopState) -> LoopState:
  """Writes each seed's means of every update metric since the last log, its attention
  diagnostics and training episodes' success; prints one progress line (the mean over the
  seeds); resets the sums."""
  state = check_divergence(run, state)
  sums, counts = jax.device_get((state.totals["sums"], state.totals["count"]))
  attention = _attention_records(run, state)
  records = []
  for index, seed_run in _active_seeds(run, state):
    record = _train_record(run, state, seed_run, seed_slice(sums, index), int(counts[index]))
    if attention is not None:
      record.update(attention[index])
    seed_run.metrics_file.write(record)
    records.append((index, record))
  run.log(_progress_line(run, state, records))
  return dataclasses.replace(state, totals=jax.tree.map(jnp.zeros_like, state.totals))


def _train_record(run: Run, state: LoopState, seed_run: SeedRun, sums, count: int) -> dict:
  names = run.task_names
  record = {"step": state.step, "kind": "train", "updates": count}
  if count:
    for name, value in sorted(sums.items()):  # every metric the update returns
      mean = np.asarray(value) / count
      record[name] = _per_task(names, mean) if name == "alpha" else float(np.mean(mean))
  episodes = seed_run.episode_stats.pop()
  if episodes is not None:
    record["train_success"] = float(np.mean(episodes["success"]))
    record["train_return"] = float(np.mean(episodes["return"]))
    record["train_success_per_task"] = _per_task(names, episodes["success"])
  elapsed = time.perf_counter() - state.start_time
  record["time/steps_per_sec"] = (state.step - state.start_step) / max(elapsed, 1e-9)
  record["time/elapsed_sec"] = elapsed
  return record


def _attention_records(run: Run, state: LoopState) -> list[dict] | None:
  """Each seed's attention diagnostics on its own seeded replay draw (so logging never moves
  the replay sampler's stream), in one vmapped call; None without temporal input."""
  if run.diagnostics is None or state.step == 0:
    return None
  rngs = [
    np.random.default_rng([s.seed, int(keys.Stream.DIAGNOSTICS), state.step]) for s in run.seeds
  ]
  used, exact = attention_batches(
    [s.buffer for s in run.seeds], rngs, run.burn_in_steps, run.config.env.episode_length
  )
  values = jax.device_get(
    run.diagnostics(
      state.learner.params["encoder"], run.placement.put(used), run.placement.put(exact)
    )
  )
  return [
    {name: float(value[index]) for name, value in values.items()} for index in range(run.num_seeds)
  ]


def _progress_line(run: Run, state: LoopState, records: list[tuple[int, dict]]) -> str:
  total_steps = run.config.train.total_steps
  rate = records[0][1]["time/steps_per_sec"]
  eta = (total_steps - state.step) / rate if rate > 0 else float("nan")

  def mean(name):
    return float(np.mean([r[name] for _, r in records]))

  if records[0][1]["updates"]:
    losses = f"critic {mean('critic_loss'):.3g}"
    auxiliary = run.networks.encoder.auxiliary_loss
    if auxiliary is not None:
      losses += f" | {auxiliary.name.removesuffix('_loss')} {mean(auxiliary.name):.3g}"
  else:
    losses = "warm-up (no updates yet)"
  if "attention_staleness" in records[0][1]:
    losses += f" | attention staleness {mean('attention_staleness'):.3f}"
  train_success = [r["train_success"] for _, r in records if "train_success" in r]
  line = (
    f"step {state.step}/{total_steps} | {rate:.1f} steps/s | ETA {_hms(eta)} | {losses} | "
    f"train success {np.mean(train_success) if train_success else float('nan'):.2f} | "
    f"last eval success {np.mean([state.last_success(i) for i, _ in records]):.2f}"
  )
  if run.num_seeds > 1:
    line += f" (mean of {len(records)} seeds)"
  return line


def save_checkpoint(run: Run, state: LoopState) -> LoopState:
  """Checkpoints every active seed (that has no checkpoint of this step yet) in its own run
  directory: the learner, the replay, the environments' episode streams and the episode
  statistics (at an episode start, so carries need no saving). A seed's checkpoint is that
  of a solo run of the seed. Returns the state with any seed found diverged stopped."""
  state = check_divergence(run, state)
  learner, totals = jax.device_get((state.learner, state.totals))
  env_states, eval_states = run.env.get_state(), run.eval_env.get_state()
  for index, seed_run in _active_seeds(run, state):
    if state.step in seed_run.checkpointer.steps():
      continue
    meta = {
      "step": state.step,
      "env": env_states[index],
      "eval_env": eval_states[index],
      "episode_stats": seed_run.episode_stats.state(),
    }
    seed_run.checkpointer.save(
      state.step,
      {"train_state": seed_slice(learner, index), "totals": seed_slice(totals, index)},
      seed_run.buffer.state_dict(),
      json.loads(json.dumps(meta, default=_json_default)),
    )
  return state


def check_divergence(run: Run, state: LoopState, actions: np.ndarray | None = None) -> LoopState:
  """Stops each seed whose update flagged a non-finite or exploding loss, or whose parameters
  or `actions` [S, T, A] are not finite; the other seeds go on. Raises TrainingDiverged when
  no seed is left (always, for one seed). The loss flag alone misses an update whose loss was
  finite but whose step was not: its NaN parameters would surface as an env error."""
  flagged = np.asarray(state.totals["diverged"])
  finite = np.asarray(_all_finite(state.learner))
  active = list(state.active)
  for index, seed_run in _active_seeds(run, state):
    reasons = [
      reason
      for reason, bad in (
        (f"a loss non-finite or critic loss above {DIVERGENCE_THRESHOLD:g}", flagged[index]),
        ("non-finite parameters", not finite[index]),
        (
          "non-finite actions",
          actions is not None and not np.all(np.isfinite(actions[index])),
        ),
      )
      if bad
    ]
    if not reasons:
      continue
    sums = jax.device_get(seed_slice(state.totals, index))
    count = max(int(sums["count"]), 1)
    message = (
      f"training diverged before step {state.step} ({', '.join(reasons)}; mean critic loss "
      f"since the last log {np.mean(sums['sums']['critic_loss']) / count:.3g}); stopped, last "
      f"good checkpoint kept in {seed_run.checkpointer.directory} (steps "
      f"{seed_run.checkpointer.steps()})"
    )
    active[index] = False
    if not run.is_batch:
      raise TrainingDiverged(message)
    with open(os.path.join(seed_run.run_dir, DIVERGED_FILE), "w") as f:
      f.write(message + "\n")
    left = sum(active)
    run.log(f"seed {seed_run.seed}: {message}; {left} other seed(s) go on")
    if not left:
      raise TrainingDiverged(f"every seed of the batch diverged; the last: {message}")
  return dataclasses.replace(state, active=tuple(active))


def _stop_at_episode_end(run: Run, state: LoopState, signal_name: str) -> None:
  state = save_checkpoint(run, state)  # (seeds that saved this step already are skipped)
  raise Preempted(
    f"stopped by {signal_name} at step {state.step} of "
    f"{run.config.train.total_steps} after writing its checkpoint in "
    f"{_checkpoint_dirs(run)}; run the same command to resume"
  )


def _checkpoint_dirs(run: Run) -> str:
  if run.num_seeds == 1:
    return run.seeds[0].checkpointer.directory
  return os.path.join(os.path.dirname(run.seeds[0].run_dir), "seed<K>", "checkpoints")


def _last_checkpoint(run: Run, state: LoopState) -> str:
  """The last step every active seed has a checkpoint of."""
  active = [s for _, s in _active_seeds(run, state)] or list(run.seeds)
  steps = set.intersection(*(set(s.checkpointer.steps()) for s in active))
  return f"step {max(steps)}" if steps else "none yet"


def write_summary(run: Run, state: LoopState, index: int = 0) -> dict:
  """Writes seed `index`'s summary.json (the run's curve and its paper metrics,
  docs/algorithm.md §5), prints the final evaluation's table, and returns the summary."""
  seed_run = run.seeds[index]
  cfg_env, names = seed_run.config.env, run.task_names
  history = state.eval_history[index]
  final = history[-1]
  curve = [r["mean_success"] for r in history]
  summary = {
    "agent": seed_run.config.agent,
    "benchmark": cfg_env.benchmark,
    "mode": cfg_env.mode,
    "seed": seed_run.seed,
    "steps": state.step,
    "eval_steps": [r["step"] for r in history],
    "mean_success_curve": curve,
    **analysis.summarize_curve(curve),
    "final_success_per_task": final["success"],
    "final_return_per_task": final["return"],
  }
  with open(os.path.join(seed_run.run_dir, SUMMARY_FILE), "w") as f:
    json.dump(summary, f, indent=2)
  of_seed = f" of seed {seed_run.seed}" if run.num_seeds > 1 else ""
  run.log(
    f"final evaluation{of_seed} (deterministic policy, "
    f"{seed_run.config.train.eval_episodes} episode(s) per task) at step {final['step']}:\n"
    + success_table(names, list(final["success"].values()), list(final["return"].values()))
  )
  run.log(
    f"mean success: final {summary['final']:.3f} | max {summary['max']:.3f} | "
    f"max smoothed {summary['max_smoothed']:.3f} | run dir {seed_run.run_dir}"
  )
  run.log(f"success curves: {os.path.join(seed_run.run_dir, CURVES_FILE)}")
  return summary


@jax.jit
def _all_finite(tree) -> jax.Array:
  """[S] bools: whether every inexact leaf of each seed's slice is finite."""
  leaves = [
    jnp.all(jnp.isfinite(leaf.reshape(leaf.shape[0], -1)), axis=1)
    for leaf in jax.tree.leaves(tree)
    if jnp.issubdtype(leaf.dtype, jnp.inexact)
  ]
  return jnp.all(jnp.stack(leaves), axis=0)


def attention_batches(
  buffers: Sequence[ReplayBuffer],
  rngs: Sequence[np.random.Generator],
  window: int,
  episode_length: int,
  samples_per_task: int = DIAGNOSTIC_SAMPLES_PER_TASK,
) -> tuple[Any, Any]:
  """(used, exact), each a [S, T, samples_per_task, ...] `Transition` stacked over buffers:
  replay transitions drawn with each buffer's `rng`, gathered as the update sees them (the
  run's burn-in `window`, 0 = stored carries) and exactly (a window of a whole episode)."""
  used, exact = [], []
  for buffer, rng in zip(buffers, rngs):
    slots = buffer.draw_slots(samples_per_task, rng)
    used.append(buffer.gather(slots, window))
    exact.append(buffer.gather(slots, episode_length))
  return stack_transitions(used), stack_transitions(exact)


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
  jitted as `diagnostics`, one seed) on `samples_per_task` replay transitions per task drawn
  with `rng` (see `attention_batches`)."""
  used, exact = attention_batches([buffer], [rng], window, episode_length, samples_per_task)
  values = jax.device_get(diagnostics(encoder_params, seed_slice(used, 0), seed_slice(exact, 0)))
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
  """Shapes and dtypes of ONE seed's update batch (a `Transition` of ShapeDtypeStructs)."""

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
