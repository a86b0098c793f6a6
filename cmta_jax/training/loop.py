"""The training driver: a host-side Meta-World rollout loop around the jitted learner.

Per vector step: one jitted action selection for all tasks (which also
advances the LSTM carries), one jitted update dispatched asynchronously, one
environment step on the host while the update runs, one replay insert.
Randomness is derived from (seed, step) with `fold_in`, so a resumed run
draws exactly what the uninterrupted run would have.
"""

import dataclasses
import json
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from cmta_jax import analysis, config as config_lib
from cmta_jax.agents import carry as carry_lib
from cmta_jax.agents import registry, sac
from cmta_jax.envs import MultiTaskEnv, make_variations, task_names
from cmta_jax.replay import ReplayBuffer, check_fits_in_memory, format_bytes
from cmta_jax.training import run_dir as run_dir_lib
from cmta_jax.training.checkpointing import Checkpointer
from cmta_jax.training.evaluation import evaluate
from cmta_jax.training.metrics_log import MetricsLog
from cmta_jax.training.preemption import Preempted, StopSignals
from cmta_jax.types import BurnIn

SUMMARY_FILE = "summary.json"
DIVERGENCE_THRESHOLD = 1e8
# Replay transitions per task for the attention diagnostics at each log step (docs/carry_modes.md).
DIAGNOSTIC_SAMPLES_PER_TASK = 8
_DIAGNOSTIC_STREAM = 3  # numpy seed stream of the diagnostic samples; never the replay's own RNG
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
    out = {"success": np.mean(self.finished_success, axis=0),
           "return": np.mean(self.finished_return, axis=0), "episodes": len(self.finished_success)}
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
    key = jax.random.fold_in(jax.random.fold_in(base_key, 1), step)
    state, metrics = update(state, batch, key)
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
      sac.make_update_fn(networks, sac_config), state, batch_shape_example, jax.random.PRNGKey(0))[1]
  return {"sums": jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), metrics_shape),
          "count": jnp.zeros((), jnp.int32), "diverged": jnp.zeros((), bool)}


def make_act(networks):
  """Action selection for the rollout: warm-up actions are uniform, but carries still advance."""
  select_action = sac.make_select_action_fn(networks)

  def act(params, obs, task_ids, carry, base_key, step, mode: str):
    key = jax.random.fold_in(jax.random.fold_in(base_key, 0), step)
    actions, carry_out = select_action(params, obs, task_ids, carry, key, deterministic=(mode == "eval"))
    if mode == "random":
      actions = jax.random.uniform(key, actions.shape, minval=-1.0, maxval=1.0)
    return actions, carry_out

  return jax.jit(act, static_argnames=("mode",))


def train(run_config: config_lib.RunConfig, run_dir: str, allow_config_change: bool = False,
          log: Callable[[str], None] = print) -> dict:
  """Trains (or resumes) the run in `run_dir`; returns the summary it also writes to summary.json."""
  run_config.validate()
  cfg_env, cfg_train = run_config.env, run_config.train
  if cfg_train.total_steps % cfg_env.episode_length:
    raise ValueError(f"total_steps ({cfg_train.total_steps}) must be a multiple of the episode length "
                     f"({cfg_env.episode_length}): runs end, checkpoint and resume at episode starts")
  if cfg_train.eval_every > cfg_train.total_steps:
    log(f"note: eval_every ({cfg_train.eval_every}) > total_steps ({cfg_train.total_steps}): "
        "evaluation runs only at the start and the end")
  names = task_names(cfg_env.benchmark)
  networks = registry.make_agent_networks(run_config.agent, run_config.network, names,
                                         MultiTaskEnv.obs_dim, MultiTaskEnv.action_dim)
  num_tasks, carry_dim = len(names), networks.encoder.carry_dim
  needed = check_fits_in_memory(num_tasks, cfg_train.replay_capacity, networks.obs_dim,
                                networks.action_dim, carry_dim)
  log(f"replay buffer: {cfg_train.replay_capacity} transitions need {format_bytes(needed)}")
  # Everything below happens under the run directory's lock, and nothing in it is written
  # before the config is known to fit its checkpoints.
  with run_dir_lib.RunDirLock(run_dir):
    saved = run_dir_lib.read_saved_config(run_dir)
    run_dir_lib.check_resume_config(run_dir, saved, run_config, allow_config_change,
                                    checkpoint_shapes)
    return _train_locked(run_config, run_dir, networks, log)


def checkpoint_shapes(run_config: config_lib.RunConfig) -> tuple:
  """What a config fixes of its checkpoints' arrays: the learner state's leaves (path ->
  shape, dtype) and the replay buffer's shape. Tracing only, nothing is computed."""
  run_config.validate()
  names = task_names(run_config.env.benchmark)
  networks = registry.make_agent_networks(run_config.agent, run_config.network, names,
                                         MultiTaskEnv.obs_dim, MultiTaskEnv.action_dim)
  state = jax.eval_shape(lambda key: sac.init_training_state(key, networks, run_config.sac),
                         jax.random.PRNGKey(0))
  num_tasks = len(names)
  replay = (num_tasks, run_config.train.replay_capacity // num_tasks, networks.obs_dim,
            networks.action_dim, networks.encoder.carry_dim)
  return run_dir_lib.abstract_shapes(state), replay


def _train_locked(run_config: config_lib.RunConfig, run_dir: str, networks,
                  log: Callable[[str], None]) -> dict:
  cfg_env, cfg_train = run_config.env, run_config.train
  names = task_names(cfg_env.benchmark)
  num_tasks, carry_dim = len(names), networks.encoder.carry_dim
  base_key = jax.random.PRNGKey(cfg_train.seed)
  state = sac.init_training_state(jax.random.fold_in(base_key, 2), networks, run_config.sac)
  buffer = ReplayBuffer(num_tasks, cfg_train.replay_capacity, networks.obs_dim, networks.action_dim,
                        carry_dim, seed=cfg_train.seed)
  window = burn_in_steps(run_config, networks)
  example_batch = batch_spec(num_tasks, cfg_train.batch_per_task, networks, window)
  totals = empty_totals(networks, run_config.sac, state, example_batch)
  checkpointer = Checkpointer(run_dir, cfg_train.keep_checkpoints)
  saved_steps = checkpointer.steps()
  if saved_steps and saved_steps[-1] > cfg_train.total_steps:
    checkpointer.close()
    raise ValueError(f"{run_dir} is already at step {saved_steps[-1]}, past --total_steps="
                     f"{cfg_train.total_steps}; nothing changed (give --total_steps >= "
                     f"{saved_steps[-1]} to resume or extend it)")
  try:
    restored = checkpointer.restore_latest({"train_state": state, "totals": totals}, log)
  except BaseException:
    checkpointer.close()
    raise
  # Only now is the run really starting or resuming: record its config.
  run_dir_lib.write_config(run_dir, run_config)
  log("config:\n" + json.dumps(config_lib.flatten(run_config), indent=1, sort_keys=True))

  variations = make_variations(cfg_env.benchmark, cfg_train.seed)
  env = MultiTaskEnv(cfg_env, cfg_train.seed, "train", variations=variations)
  eval_env = MultiTaskEnv(dataclasses.replace(cfg_env, reward_normalization=False), cfg_train.seed,
                          "eval", variations=variations)
  stats = _EpisodeStats(num_tasks)
  if restored is None:
    step = 0
    obs, eval_obs = env.reset(), eval_env.reset()
    log_file = MetricsLog(run_dir, resume_step=None)
  else:
    step, saved_state, replay_state, meta = restored
    state, totals = saved_state["train_state"], saved_state["totals"]
    buffer.load_state_dict(replay_state)
    obs, eval_obs = env.restore(meta["env"]), eval_env.restore(meta["eval_env"])
    stats.load(meta["episode_stats"])
    log_file = MetricsLog(run_dir, resume_step=step)
    log(f"resumed {run_dir} from the checkpoint at step {step}")

  task_ids = jnp.arange(num_tasks, dtype=jnp.int32)
  carry = sac.initial_carry(networks, num_tasks)  # checkpoints are at episode starts
  carry_host = jax.device_get(carry)  # the same carry on the host, for the replay buffer
  act = make_act(networks)
  train_step = make_train_step(networks, run_config.sac)
  diagnostics = None
  if networks.encoder.advance_carry is not None:
    diagnostics = jax.jit(carry_lib.make_attention_diagnostics(networks.encoder))
  episode_step = 0  # checkpoints are at episode starts
  eval_history = [r for r in _read_eval_history(run_dir)]
  start_step, start_time = step, time.perf_counter()
  last_success = eval_history[-1]["mean_success"] if eval_history else float("nan")

  def run_eval():
    nonlocal eval_obs, last_success
    check_divergence()
    result, eval_obs = evaluate(eval_env, eval_obs, act, sac.policy_params(state), task_ids,
                                networks, cfg_train.eval_episodes, base_key, step)
    record = {"step": step, "kind": "eval", "mean_success": float(np.mean(result["success"])),
              "mean_return": float(np.mean(result["return"])),
              "success": _per_task(names, result["success"]),
              "return": _per_task(names, result["return"]), "episodes": cfg_train.eval_episodes}
    log_file.write(record)
    eval_history.append(record)
    last_success = record["mean_success"]
    return result

  def check_divergence(actions=None):
    # The loss flag alone misses an update whose loss was finite but whose step was not:
    # its NaN (or overflowing) parameters would surface as a ValueError from the env.
    params_finite = bool(_all_finite(state))
    actions_finite = actions is None or bool(np.all(np.isfinite(actions)))
    reasons = [reason for reason, bad in (
        (f"a loss non-finite or critic loss above {DIVERGENCE_THRESHOLD:g}", bool(totals["diverged"])),
        ("non-finite parameters", not params_finite), ("non-finite actions", not actions_finite)) if bad]
    if reasons:
      sums, count = jax.device_get(totals["sums"]), max(int(totals["count"]), 1)
      raise TrainingDiverged(
          f"training diverged before step {step} ({', '.join(reasons)}; mean critic loss since the "
          f"last log {np.mean(sums['critic_loss']) / count:.3g}); stopped, last good checkpoint "
          f"kept in {checkpointer.directory} (steps {checkpointer.steps()})")

  def write_train_log():
    nonlocal totals
    check_divergence()
    sums, count = jax.device_get((totals["sums"], totals["count"]))
    record = {"step": step, "kind": "train", "updates": int(count)}
    if count:
      means = {k: np.asarray(v) / count for k, v in sums.items()}
      for name, value in sorted(means.items()):  # every metric the update returns
        record[name] = _per_task(names, value) if name == "alpha" else float(np.mean(value))
    if diagnostics is not None and len(buffer):
      record.update(attention_diagnostics())
    episodes = stats.pop()
    if episodes is not None:
      record["train_success"] = float(np.mean(episodes["success"]))
      record["train_return"] = float(np.mean(episodes["return"]))
      record["train_success_per_task"] = _per_task(names, episodes["success"])
    elapsed = time.perf_counter() - start_time
    rate = (step - start_step) / max(elapsed, 1e-9)
    record["time/steps_per_sec"] = rate
    record["time/elapsed_sec"] = elapsed
    log_file.write(record)
    totals = jax.tree.map(jnp.zeros_like, totals)
    eta = (cfg_train.total_steps - step) / rate if rate > 0 else float("nan")
    if count:
      losses = f"critic {record['critic_loss']:.3g}"
      if networks.encoder.auxiliary_loss is not None:
        name = networks.encoder.auxiliary_loss.name
        losses += f" | {name.removesuffix('_loss')} {record[name]:.3g}"
    else:
      losses = "warm-up (no updates yet)"
    if "attention_staleness" in record:
      losses += f" | attention staleness {record['attention_staleness']:.3f}"
    log(f"step {step}/{cfg_train.total_steps} | {rate:.1f} steps/s | ETA {_hms(eta)} | "
        f"{losses} | train success {record.get('train_success', float('nan')):.2f} | "
        f"last eval success {last_success:.2f}")

  def attention_diagnostics():
    # Its own seeded draw, so logging never moves the replay sampler's stream.
    rng = np.random.default_rng([cfg_train.seed, _DIAGNOSTIC_STREAM, step])
    return measure_attention(diagnostics, state.params["encoder"], buffer, window,
                             cfg_env.episode_length, rng)

  def save_checkpoint():
    check_divergence()
    meta = {"step": step, "env": env.get_state(), "eval_env": eval_env.get_state(),
            "episode_stats": stats.state()}
    checkpointer.save(step, {"train_state": state, "totals": totals}, buffer.state_dict(),
                      json.loads(json.dumps(meta, default=_json_default)))

  def last_checkpoint() -> str:
    steps = checkpointer.steps()
    return f"step {steps[-1]}" if steps else "none yet"

  stop = StopSignals(log)
  try:
    stop.__enter__()
    if step == 0:
      run_eval()
    while step < cfg_train.total_steps:
      mode = "random" if step < cfg_train.warmup_steps else "explore"
      actions, carry_out = act(sac.policy_params(state), obs, task_ids, carry, base_key, step, mode=mode)
      actions = np.asarray(actions)
      if not np.all(np.isfinite(actions)):
        check_divergence(actions)
      if step >= cfg_train.warmup_steps and len(buffer):  # (warm-up 0: from the 2nd step)
        # Dispatched asynchronously: the environment steps while the update runs.
        state, totals = train_step(state, totals, buffer.sample(cfg_train.batch_per_task, window),
                                   base_key, step)
      result = env.step(actions)
      carry_out_host = jax.device_get(carry_out)
      buffer.add(obs, actions, result.reward, result.next_obs, result.terminated,
                 carry_host, carry_out_host, episode_step=np.full(num_tasks, episode_step))
      stats.add_step(result.success, result.raw_reward, result.episode_start)
      if result.episode_start:
        carry = sac.initial_carry(networks, num_tasks)
        carry_host = jax.device_get(carry)
        episode_step = 0
      else:
        carry, carry_host = carry_out, carry_out_host
        episode_step += 1
      obs = result.obs
      step += 1
      if step % cfg_train.log_every == 0 or step == cfg_train.total_steps:
        write_train_log()
      if step % cfg_train.eval_every == 0 or step == cfg_train.total_steps:
        run_eval()
      if step % cfg_train.checkpoint_every == 0 or step == cfg_train.total_steps:
        save_checkpoint()
      if stop.requested and result.episode_start and step < cfg_train.total_steps:
        if step not in checkpointer.steps():
          save_checkpoint()
        raise Preempted(f"stopped by {stop.requested} at step {step} of {cfg_train.total_steps} "
                        f"after writing its checkpoint in {checkpointer.directory}; run the same "
                        "command to resume")
  except KeyboardInterrupt:
    raise Interrupted(f"interrupted at step {step} of {cfg_train.total_steps}; last checkpoint: "
                      f"{last_checkpoint()} in {checkpointer.directory}; run the same command to "
                      "resume") from None
  finally:
    stop.__exit__(None, None, None)
    log_file.close()
    checkpointer.close()
    env.close()
    eval_env.close()

  final = eval_history[-1]
  curve = [r["mean_success"] for r in eval_history]
  summary = {"agent": run_config.agent, "benchmark": cfg_env.benchmark, "mode": cfg_env.mode,
             "seed": cfg_train.seed, "steps": step, "eval_steps": [r["step"] for r in eval_history],
             "mean_success_curve": curve, **analysis.summarize_curve(curve),
             "final_success_per_task": final["success"], "final_return_per_task": final["return"]}
  with open(os.path.join(run_dir, SUMMARY_FILE), "w") as f:
    json.dump(summary, f, indent=2)
  log("final evaluation (deterministic policy, "
      f"{cfg_train.eval_episodes} episode(s) per task) at step {final['step']}:\n" +
      success_table(names, list(final["success"].values()), list(final["return"].values())))
  log(f"mean success: final {summary['final']:.3f} | max {summary['max']:.3f} | "
      f"max smoothed {summary['max_smoothed']:.3f} | run dir {run_dir}")
  return summary


@jax.jit
def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)
            if jnp.issubdtype(leaf.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def measure_attention(diagnostics, encoder_params, buffer: ReplayBuffer, window: int,
                      episode_length: int, rng: np.random.Generator,
                      samples_per_task: int = DIAGNOSTIC_SAMPLES_PER_TASK) -> dict[str, float]:
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
  return run_config.network.burn_in_steps if (
      recurrent and run_config.network.carry_mode == "burn_in") else 0


def batch_spec(num_tasks: int, batch_per_task: int, networks, burn_in_steps: int = 0):
  """Shapes and dtypes of the update's batch (a `Transition` of ShapeDtypeStructs)."""
  def spec(*shape):
    return jax.ShapeDtypeStruct((num_tasks, batch_per_task, *shape), jnp.float32)
  carry = sac.LSTMCarry(spec(networks.encoder.carry_dim), spec(networks.encoder.carry_dim))
  burn_in = None
  if burn_in_steps:
    burn_in = BurnIn(obs=spec(burn_in_steps, networks.obs_dim), mask=spec(burn_in_steps),
                     carry=carry)
  return sac.Transition(obs=spec(networks.obs_dim), action=spec(networks.action_dim), reward=spec(),
                        next_obs=spec(networks.obs_dim), terminated=spec(), carry_in=carry,
                        carry_out=carry, burn_in=burn_in)


def _read_eval_history(run_dir):
  from cmta_jax.training.metrics_log import read_records
  return [r for r in read_records(run_dir) if r["kind"] == "eval"]


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
