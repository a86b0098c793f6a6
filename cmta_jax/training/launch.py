"""Starting and resuming runs: `train` (one seed) and `train_seeds` (a batch of seeds, each in
RUN_DIR/seed<K>) check the config, lock the run directories, build the networks, compiled
steps, environments and replay, restore the newest checkpoint every seed completed, run the
loop and write the summaries."""

import contextlib
import dataclasses
import functools
import glob
import json
import os
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from cmta_jax import config as config_lib
from cmta_jax.agents import registry, sac
from cmta_jax.envs.config import validate_seed
from cmta_jax.envs.seed_envs import EnvPool
from cmta_jax.envs.source import METAWORLD, EnvSource
from cmta_jax.replay import device as device_replay
from cmta_jax.replay import memory
from cmta_jax.training import change_log, keys, loop, metrics_log, records, run_state, steps
from cmta_jax.training import devices as devices_lib
from cmta_jax.training import diagnostics as diagnostics_lib
from cmta_jax.training import run_dir as run_dir_lib
from cmta_jax.training import videos as videos_lib
from cmta_jax.training.checkpointing import Checkpointer
from cmta_jax.training.metrics_log import MetricsLog
from cmta_jax.training.preemption import StopSignals


def train(
  run_config: config_lib.RunConfig,
  run_dir: str,
  allow_config_change: bool = False,
  log: Callable[[str], None] = print,
  envs: EnvSource = METAWORLD,
  data_parallel: bool = False,
  devices: Sequence[jax.Device] | None = None,
  draw_curves: records.DrawCurves | None = None,
  accept_history_loss: bool = False,
  open_tracker: metrics_log.OpenTracker | None = None,
) -> dict:
  """Trains (or resumes) the run in `run_dir`; returns the summary it also writes to
  summary.json. `envs` builds the environments (Meta-World unless a test injects others);
  `data_parallel` splits every batch over `devices` (default: all local devices;
  docs/seeds.md, "Devices"); `draw_curves` redraws RUN_DIR/curves.png at every evaluation;
  `accept_history_loss` resumes although metrics.jsonl lacks records (README, "Resume");
  `open_tracker` opens an experiment tracker the records also go to (W&B: wandb_log.py)."""
  seed = run_config.train.seed
  if run_dir_lib.read_saved_config(run_dir) is None and glob.glob(
    os.path.join(run_dir, "seed*", run_dir_lib.CONFIG_FILE)
  ):
    raise ValueError(
      f"{run_dir} holds a batch of seeds (seed<K>/); resume it with --seeds, train one of its "
      "seeds alone with --run_dir=RUN_DIR/seed<K>, or give another --run_dir"
    )
  summaries = _train_batch(
    run_config,
    {seed: run_dir},
    allow_config_change=allow_config_change,
    log=log,
    envs=envs,
    env_workers=0,
    data_parallel=data_parallel,
    devices=devices,
    is_batch=False,
    draw_curves=draw_curves,
    accept_history_loss=accept_history_loss,
    open_tracker=open_tracker,
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
  draw_curves: records.DrawCurves | None = None,
  accept_history_loss: bool = False,
  open_tracker: metrics_log.OpenTracker | None = None,
) -> dict[int, dict | None]:
  """Trains (or resumes) `seeds` as one batch, each seed in `run_dir/seed<K>` as a normal run
  directory: the update vmapped over a seed axis, the seeds' environments stepped by
  `env_workers` processes (0: this process), the seeds spread over `devices` (default: all
  local devices; docs/seeds.md). Returns {seed: summary, or None for a seed that diverged and was
  stopped}; raises run_state.TrainingDiverged if every seed diverged."""
  seeds = check_seeds(seeds)
  if run_dir_lib.read_saved_config(run_dir) is not None:
    raise ValueError(
      f"{run_dir} holds a single-seed run; give the batch another --run_dir (each of its "
      "seeds trains in RUN_DIR/seed<K>)"
    )
  seed_dirs = {seed: seed_run_dir(run_dir, seed) for seed in seeds}
  return _train_batch(
    run_config,
    seed_dirs,
    allow_config_change=allow_config_change,
    log=log,
    envs=envs,
    env_workers=env_workers,
    data_parallel=False,
    devices=devices,
    is_batch=True,
    draw_curves=draw_curves,
    accept_history_loss=accept_history_loss,
    open_tracker=open_tracker,
  )


def _train_batch(
  run_config: config_lib.RunConfig,
  seed_dirs: dict[int, str],
  *,
  allow_config_change: bool,
  log: Callable[[str], None],
  envs: EnvSource,
  env_workers: int,
  data_parallel: bool,
  devices: Sequence[jax.Device] | None,
  is_batch: bool,
  draw_curves: records.DrawCurves | None,
  accept_history_loss: bool,
  open_tracker: metrics_log.OpenTracker | None,
) -> dict[int, dict | None]:
  """The seeds of `seed_dirs` as one batch (docs/seeds.md); `is_batch`: a batch of seeds
  (one that diverges stops alone), not a single run. From the moment the run directories
  are locked, SIGTERM or Ctrl-C stops the run with Preempted (a checkpoint first, where
  training has begun)."""
  registry.validate(run_config)
  _check_schedule(run_config, log)
  bpt = run_config.train.batch_per_task
  # Before anything is written: the devices, then the replays' memory.
  placement = devices_lib.choose(len(seed_dirs), bpt, data_parallel, devices)
  networks = steps.build_networks(run_config, envs)
  _check_replay_memory(run_config, networks, envs, len(seed_dirs), placement, log)
  # Everything below happens under the run directories' locks, and nothing in them is
  # written before each config is known to fit its checkpoints.
  with contextlib.ExitStack() as locks:
    stop = locks.enter_context(StopSignals(log))  # (before the lock: no moment without it)
    for directory in seed_dirs.values():
      locks.enter_context(run_dir_lib.RunDirLock(directory))
    configs, config_changes = [], {}
    for seed, directory in seed_dirs.items():
      config = config_lib.replace_fields(run_config, seed=seed)
      config_changes[seed] = run_dir_lib.check_resume_config(
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
      draw_curves=draw_curves,
      resume=ResumeTerms(config_changes, accept_history_loss),
      open_tracker=open_tracker,
    )
    summaries = {seed: None for seed in seed_dirs}
    try:
      state = loop.run_to_completion(run, state, stop)
      for index, seed_run in enumerate(run.seeds):
        if state.active[index]:
          summaries[seed_run.seed] = records.summarize(run, state, index)
          # The tracker's last word, before its log closes with the run.
          seed_run.metrics_file.finish(
            summaries[seed_run.seed], records.curves_path(seed_run) if draw_curves else None
          )
    finally:
      run.close()
    # summary.json only once the final checkpoint is written (run.close waits for it).
    for index, seed_run in enumerate(run.seeds):
      if summaries[seed_run.seed] is not None:
        records.write_summary(run, summaries[seed_run.seed], index)
    return summaries


@dataclasses.dataclass(frozen=True)
class ResumeTerms:
  """What a launch accepted about the runs it resumes: each seed's config changes (field,
  saved value, value now; run_dir.check_resume_config) and whether a resume may go on
  although metrics.jsonl lacks records its checkpoint says it had."""

  config_changes: dict = dataclasses.field(default_factory=dict)
  accept_history_loss: bool = False


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


def _check_replay_memory(
  run_config, networks, envs: EnvSource, num_seeds: int, placement, log
) -> None:
  """Checks, before anything is built or written, that the seeds' replays fit where
  `train.replay_placement` puts them, and says what they take. Host memory also holds one
  seed's replay while a checkpoint is saved or restored, at the start of a run as on resume,
  so a run that starts can always resume on the same machine."""
  cfg_train = run_config.train
  place = devices_lib.ReplayPlace(placement, cfg_train.replay_placement == "host")
  shape = (
    len(envs.task_names(run_config.env)),
    cfg_train.replay_capacity,
    networks.obs_dim,
    networks.action_dim,
    steps.replay_carry_dim(networks),
  )
  device = place.memory_device()
  available = memory.device_memory_available(device)
  seeds = f" ({num_seeds} seeds)" if num_seeds > 1 else ""
  if available is None:  # host memory (the CPU backend): the replays and the one transient
    needed = memory.check_fits_in_memory(*shape, num_seeds=num_seeds, extra=1)
    log(
      f"replay: {cfg_train.replay_capacity} transitions{seeds} in host memory need "
      f"{memory.format_bytes(needed)} (one seed's more while checkpointing)"
    )
    return
  on_device = place.replays_per_device(num_seeds)
  fits_on_host = True
  try:
    memory.check_fits_in_memory(*shape, num_seeds=num_seeds, extra=1)
  except MemoryError:
    fits_on_host = False
  needed = memory.check_fits_in_memory(
    *shape,
    available_bytes=available,
    num_seeds=on_device,
    where=f"the memory of {device.device_kind} {device.id}",
    otherwise="; or --replay_placement=host (host memory holds it)" if fits_on_host else "",
  )
  memory.check_fits_in_memory(*shape, num_seeds=0, extra=1)  # a checkpoint's copy on the host
  log(
    f"replay: {cfg_train.replay_capacity} transitions{seeds} on {device.device_kind} need "
    f"{memory.format_bytes(needed)} per device"
  )


def _without_diverged(configs, seed_dirs: dict, log) -> list:
  """The configs of the seeds that have not diverged in an earlier attempt of the batch."""
  kept = []
  for config in configs:
    marker = os.path.join(seed_dirs[config.train.seed], run_state.DIVERGED_FILE)
    if os.path.exists(marker):
      log(f"seed {config.train.seed} diverged earlier ({marker}); left out of this batch")
    else:
      kept.append(config)
  if not kept:
    raise run_state.TrainingDiverged(
      f"every seed diverged earlier (see their {run_state.DIVERGED_FILE}); nothing to run"
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


def checkpoint_shapes(run_config: config_lib.RunConfig, envs: EnvSource = METAWORLD) -> tuple:
  """What a config fixes of its checkpoints' arrays: the learner state's leaves (path ->
  shape, dtype) and the replay buffer's shape. Tracing only, nothing is computed."""
  registry.validate(run_config)
  networks = steps.build_networks(run_config, envs)
  state = jax.eval_shape(
    lambda key: sac.init_training_state(key, networks, run_config.sac), jax.random.PRNGKey(0)
  )
  num_tasks = len(envs.task_names(run_config.env))
  replay = (
    num_tasks,
    run_config.train.replay_capacity // num_tasks,
    networks.obs_dim,
    networks.action_dim,
    steps.replay_carry_dim(networks),
  )
  return run_dir_lib.abstract_shapes(state), replay


def start_run(
  configs: Sequence[config_lib.RunConfig],
  run_dirs: Sequence[str],
  networks,
  envs: EnvSource,
  log: Callable[[str], None],
  env_workers: int = 0,
  placement: devices_lib.Placement = devices_lib.SINGLE_DEVICE,
  is_batch: bool = False,
  draw_curves: records.DrawCurves | None = None,
  resume: ResumeTerms = ResumeTerms(),
  open_tracker: metrics_log.OpenTracker | None = None,
) -> tuple[run_state.Run, run_state.LoopState]:
  """Builds the batch of `configs` (one per seed, differing only in the seed), then restores
  the latest checkpoint every seed completed, or starts at step 0. Writes each config.json
  only once the run really starts or resumes, and records what the resume accepted
  (`resume`) in each changes.jsonl; on an error closes what it built."""
  base_keys = jnp.stack([keys.run_key(c.train.seed) for c in configs])
  learners = [
    sac.init_training_state(keys.stream_key(key, keys.Stream.INIT), networks, configs[0].sac)
    for key in base_keys
  ]
  names = tuple(envs.task_names(configs[0].env))
  cfg_train = configs[0].train
  draw = steps.replay_draw(configs[0], networks)
  totals = steps.empty_totals(
    networks,
    configs[0].sac,
    learners[0],
    steps.batch_spec(len(names), draw.batch_per_task, networks, draw.burn_in_steps),
  )
  replay_place = devices_lib.ReplayPlace(placement, cfg_train.replay_placement == "host")

  def empty_replay():
    return device_replay.init_seeds(
      len(configs),
      len(names),
      cfg_train.replay_capacity,
      networks.obs_dim,
      networks.action_dim,
      steps.replay_carry_dim(networks),
      sharding=replay_place.sharding(),
    )

  with contextlib.ExitStack() as on_error:
    seeds, restored, replay = _open_seeds(
      configs,
      run_dirs,
      networks,
      envs,
      learners,
      totals,
      empty_replay,
      log,
      on_error,
      resume,
      open_tracker,
    )
    diagnostics = steps.make_diagnostics(networks)
    pool = EnvPool(envs.make_envs, configs[0].env, [c.train.seed for c in configs], env_workers)
    on_error.callback(pool.close)
    run = run_state.Run(
      config=configs[0],
      seeds=seeds,
      task_names=names,
      task_ids=jnp.arange(len(names), dtype=jnp.int32),
      networks=networks,
      envs=pool,
      act=steps.make_act(networks),
      train_step=steps.make_train_step(
        networks, configs[0].sac, draw, placement, sample_inside=not replay_place.on_host
      ),
      insert=steps.make_insert(),
      sample=steps.make_sample(draw) if replay_place.on_host else None,
      diagnostics=diagnostics,
      diagnostic_batches=None
      if diagnostics is None
      else steps.make_diagnostic_batches(
        diagnostics_lib.DIAGNOSTIC_SAMPLES_PER_TASK,
        draw.burn_in_steps,
        configs[0].env.episode_length,
      ),
      base_keys=placement.put(base_keys),
      replay_keys=replay_place.put(base_keys),
      placement=placement,
      replay_place=replay_place,
      burn_in_steps=draw.burn_in_steps,
      log=log,
      is_batch=is_batch,
      draw_curves=draw_curves,
    )
    state = _initial_loop_state(run, learners, totals, restored, replay)
    on_error.pop_all()
  return run, state


def _open_seeds(
  configs,
  run_dirs,
  networks,
  envs,
  learners,
  totals,
  empty_replay,
  log,
  on_error,
  resume,
  open_tracker,
):
  """(one run_state.SeedRun per seed, the restored checkpoints or None, the seeds' replay):
  video recorders and checkpointers first (a machine that cannot render fails before anything
  is written), then the restore (each seed's replay straight into its slot of the batch's
  replay; refused if a seed's metrics.jsonl lacks records), then config.json, what the resume
  accepted (changes.jsonl) and the metrics logs (with their trackers, given `open_tracker`).
  Registers every close in `on_error`."""
  opened = []
  num_tasks = len(envs.task_names(configs[0].env))
  for config, directory in zip(configs, run_dirs):
    videos = videos_lib.make_recorder(config, envs, networks, directory)
    if videos is not None:
      on_error.callback(videos.close)
    # A batch keeps one checkpoint more: see _restore_batch.
    checkpointer = Checkpointer(directory, config.train.keep_checkpoints + (len(configs) > 1))
    on_error.callback(checkpointer.close)
    opened.append((config, directory, checkpointer, videos))
  restored, replay, losses = _restore_batch(
    [o[2] for o in opened],
    empty_replay,
    run_dirs,
    configs[0].train.total_steps,
    learners,
    totals,
    log,
    resume.accept_history_loss,
  )
  step = None if restored is None else restored[0][0]
  for config, directory, loss in zip(configs, run_dirs, losses):
    run_dir_lib.write_config(directory, config)
    _record_resume_terms(
      directory, step, resume.config_changes.get(config.train.seed, []), loss, log
    )
  log("config:\n" + json.dumps(config_lib.flatten(configs[0]), indent=1, sort_keys=True))
  if len(configs) > 1:
    log(f"seeds: {[c.train.seed for c in configs]} in {os.path.dirname(run_dirs[0])}/seed<K>")
  seeds = []
  for config, directory, checkpointer, videos in opened:
    tracker = None if open_tracker is None else open_tracker(config, directory, step)
    try:
      metrics_file = MetricsLog(directory, resume_step=step, tracker=tracker)
    except BaseException:
      if tracker is not None:
        tracker.close()
      raise
    on_error.callback(metrics_file.close)
    if metrics_file.moved_aside is not None:
      change_log.append(
        directory,
        [
          {
            "kind": "moved_aside",
            "step": step or 0,
            "from": metrics_log.METRICS_FILE,
            "to": os.path.basename(metrics_file.moved_aside),
          }
        ],
      )
      log(
        f"{metrics_file.path} held records past step {step or 0}, where the run goes on: "
        f"the file as it was is kept as {metrics_file.moved_aside} (recorded in "
        f"{change_log.CHANGES_FILE})"
      )
    seeds.append(
      run_state.SeedRun(
        config=config,
        run_dir=directory,
        episode_stats=run_state.EpisodeStats(num_tasks),
        checkpointer=checkpointer,
        metrics_file=metrics_file,
        videos=videos,
      )
    )
  return tuple(seeds), restored, replay


def _record_resume_terms(directory: str, step: int | None, changes, loss, log) -> None:
  """Appends to RUN_DIR/changes.jsonl, and says on the console, the config changes and the
  lost history a resume at `step` accepted. Without a checkpoint the run starts again at
  step 0 under the new config, which is then simply its config."""
  if step is None:
    if changes:
      fields = ", ".join(field for field, _, _ in changes)
      log(f"{directory}: config changed ({fields}) with no checkpoint: the run starts at step 0")
    return
  entries = [
    {"kind": "config", "step": step, "field": field, "old": old, "new": new}
    for field, old, new in changes
  ]
  if loss is not None:
    kept, expected = loss
    entries.append(
      {"kind": "history_loss", "step": step, "records_kept": kept, "records_expected": expected}
    )
  change_log.append(directory, entries)
  for entry in entries:
    log(f"{directory}: {change_log.describe(entry)} (recorded in {change_log.CHANGES_FILE})")


def _restore_batch(
  checkpointers,
  empty_replay,
  run_dirs,
  total_steps: int,
  learners,
  totals,
  log,
  accept_history_loss: bool,
):
  """([(step, state, meta)] per seed at the newest step every seed completed, or None for a
  new batch; the seeds' replay, `empty_replay()` with each seed's restored replay loaded
  into its slot at once, so one restored replay is on the host at a time; per seed, None or
  the (records kept, records expected) of a metrics.jsonl that lacks records, where
  `accept_history_loss`, else metrics_log.HistoryLost before anything changes). A batch killed
  between its seeds' saves resumes at the step before, or from the start if it was the
  first round of saves; the newer checkpoints are removed (the batch writes them again,
  identically)."""
  latest = [c.steps()[-1] if c.steps() else None for c in checkpointers]
  for directory, step in zip(run_dirs, latest):
    if step is not None and step > total_steps:
      raise ValueError(
        f"{directory} is already at step {step}, past --total_steps={total_steps}; nothing "
        f"changed (give --total_steps >= {step} to resume or extend it)"
      )
  with_saves = [c.steps() for c in checkpointers if c.steps()]
  first_round_cut = len({tuple(saves) for saves in with_saves}) == 1 and len(with_saves[0]) == 1
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
  replay = empty_replay()
  while common is not None:
    restored = []
    for index, (checkpointer, learner) in enumerate(zip(checkpointers, learners)):
      one = checkpointer.restore_latest(
        {"train_state": learner, "totals": totals}, log, max_step=common
      )
      if one is None:
        break
      step, state, seed_replay, meta = one
      replay = device_replay.load_seed(replay, index, seed_replay)
      del seed_replay
      restored.append((step, state, meta))
    restored_steps = {r[0] for r in restored}
    if len(restored) == len(checkpointers) and restored_steps == {common}:
      break
    # A seed fell back past an unreadable checkpoint (or had none left): all follow it.
    common = min(restored_steps) if len(restored) == len(checkpointers) else None
    replay = None  # (dropped before the next one is made)
    replay = empty_replay()
  losses = [None] * len(run_dirs)
  if common is not None:
    losses = [
      metrics_log.check_history(directory, common, meta.get("metrics_records"), accept_history_loss)
      for directory, (_, _, meta) in zip(run_dirs, restored)
    ]
  for directory, checkpointer in zip(run_dirs, checkpointers):
    newer = checkpointer.delete_after(-1 if common is None else common)
    if newer:
      log(
        f"{directory}: checkpoint(s) {newer} are past the last step every seed of the batch "
        f"completed ({common or 'none: the batch starts again'}), so removed; the batch "
        "writes them again, identically"
      )
  return (None if common is None else restored), replay, losses


def _initial_loop_state(
  run: run_state.Run, learners, totals, restored, replay
) -> run_state.LoopState:
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
  return run_state.LoopState(
    step=step,
    episode_step=0,
    learner=run.placement.put(steps.stack_seeds(learners)),
    totals=run.placement.put(steps.stack_seeds(totals)),
    obs=obs,
    eval_obs=eval_obs,
    carry=run.placement.put(carry),
    replay=replay,
    eval_history=eval_history,
    active=(True,) * num_seeds,
    start_step=step,
    start_time=time.perf_counter(),
  )
