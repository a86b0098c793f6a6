"""What a training run holds: `Run` (fixed while it trains), `SeedRun` (one seed's host side),
`LoopState` (what changes from one vector step to the next), and the divergence checks that
stop a seed."""

import contextlib
import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from cmta_jax import config as config_lib
from cmta_jax.agents import sac
from cmta_jax.envs.seed_envs import EnvPool, SeedEnvs
from cmta_jax.replay.device import DeviceReplay
from cmta_jax.training import devices as devices_lib
from cmta_jax.training import steps
from cmta_jax.training import videos as videos_lib
from cmta_jax.training.checkpointing import Checkpointer
from cmta_jax.training.metrics_log import MetricsLog

DIVERGED_FILE = "diverged.txt"  # in a batch, a seed that diverged says so here and stops


class TrainingDiverged(RuntimeError):
  pass


class EpisodeStats:
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


@dataclasses.dataclass(frozen=True)
class SeedRun:
  """One seed's host side: its config (`train.seed` is the seed), its run directory and what
  the loop writes there, and its training-episode statistics."""

  config: config_lib.RunConfig
  run_dir: str
  episode_stats: "EpisodeStats"
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
  train_step: Callable  # steps.make_train_step: samples inside unless `sample` is given
  insert: Callable  # steps.make_insert: one vector step of every seed into the replay
  sample: Callable | None  # steps.make_sample, for a replay in host memory; else None
  diagnostics: Callable | None  # jitted, vmapped attention diagnostics; None without temporal input
  diagnostic_batches: Callable | None  # steps.make_diagnostic_batches, with `diagnostics`
  base_keys: jax.Array  # [S, 2]: each seed's run key, as its solo run derives it
  replay_keys: jax.Array  # the same keys where the replay lives
  placement: devices_lib.Placement
  replay_place: devices_lib.ReplayPlace
  burn_in_steps: int
  log: Callable[[str], None]
  task_ids: jax.Array  # [T] int32 on the device, built once: it is an input of every step
  is_batch: bool = False  # seeds in RUN_DIR/seed<K>: one that diverges stops alone
  # (evaluation records so far, title, path) -> path: redraws a seed's curves.png; None: not
  draw_curves: Callable[[Sequence[dict], str, str], str] | None = None

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
  replay: DeviceReplay  # [S, ...] where `Run.replay_place` says; replaced (donated) each step
  eval_history: tuple[tuple[dict, ...], ...]  # per seed: every evaluation record so far
  active: tuple[bool, ...]  # per seed: False once it diverged (it is stopped, not removed)
  start_step: int  # the step this process started (or resumed) at, for the step rate
  start_time: float  # time.perf_counter() then
  # (step, time.perf_counter()) just after this process's first update call returned (its
  # compilation done): the ETA's rate is measured from there, not from warm-up's faster steps.
  update_clock: tuple[int, float] | None = None

  def last_success(self, index: int) -> float | None:
    """Seed `index`'s mean success at its last evaluation (None before the first)."""
    history = self.eval_history[index]
    return history[-1]["mean_success"] if history else None


def active_seeds(run: Run, state: LoopState):
  return [(i, s) for i, s in enumerate(run.seeds) if state.active[i]]


def check_divergence(run: Run, state: LoopState, actions: np.ndarray | None = None) -> LoopState:
  """Stops each seed whose update flagged a non-finite or exploding loss, or whose parameters
  or `actions` [S, T, A] are not finite; the other seeds go on. Raises TrainingDiverged when
  no seed is left (always, for one seed). The loss flag alone misses an update whose loss was
  finite but whose step was not: its NaN parameters would surface as an env error."""
  flagged = np.asarray(state.totals["diverged"])
  finite = np.asarray(steps.all_finite(state.learner))
  active = list(state.active)
  for index, seed_run in active_seeds(run, state):
    reasons = [
      reason
      for reason, bad in (
        (f"a loss non-finite or critic loss above {steps.DIVERGENCE_THRESHOLD:g}", flagged[index]),
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
    sums = jax.device_get(steps.seed_slice(state.totals, index))
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
