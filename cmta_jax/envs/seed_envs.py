"""The environments of several seeds, stepped as one vector environment of seeds x tasks.

Each seed keeps exactly the environments its solo run would build (`EnvSource.make_envs`
with that seed: its own Fixed variations, episode stream and reward normaliser), so a seed
sees the same episodes in a batch as alone. `env_workers` worker processes each own the
environments of a contiguous group of seeds and step them when told (all groups at once,
then the results are gathered), so S seeds x T tasks sub-environments need `env_workers`
processes, not S x T. With `env_workers=0` every seed is stepped in this process, as a solo
run always is (docs/seeds.md).

A `SeedEnvs` (the training or the evaluation role of an `EnvPool`) offers the vector
environment interface of `EnvSource` with a leading seed axis: `reset() -> obs [S, T,
obs_dim]`, `step(actions [S, T, action_dim]) -> StepResult` of [S, T, ...] arrays (all
seeds share the episode length, so `episode_start` is one bool), `end_episode() -> obs`,
`get_state() -> [per-seed dict]`, `restore([per-seed dict]) -> obs` and `at_episode_start`.
"""

import multiprocessing
import signal
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import cloudpickle
import numpy as np

from cmta_jax.envs.config import EnvConfig
from cmta_jax.envs.metaworld_env import ASYNC_START_METHOD, StepResult


class EnvWorkerFailed(RuntimeError):
  """A worker process raised or died; the message names the seeds it held and the cause."""


class _SeedGroup:
  """The (training, evaluation) environments of some seeds, called method by method."""

  def __init__(self, make_envs: Callable, config: EnvConfig, seeds: Sequence[int]):
    self.envs = {"train": [], "eval": []}
    try:
      for seed in seeds:
        train_env, eval_env = make_envs(config, seed)
        self.envs["train"].append(train_env)
        self.envs["eval"].append(eval_env)
    except BaseException:
      self.close()
      raise

  def call(self, role: str, method: str, per_seed_args: Sequence[tuple] | None) -> list:
    envs = self.envs[role]
    if method == "at_episode_start":
      return [env.at_episode_start for env in envs]
    args = per_seed_args if per_seed_args is not None else [()] * len(envs)
    return [getattr(env, method)(*a) for env, a in zip(envs, args)]

  def close(self) -> None:
    for env in self.envs["train"] + self.envs["eval"]:
      env.close()


def _worker(connection, make_envs_pickled: bytes, config: EnvConfig, seeds: list[int]) -> None:
  # A Ctrl-C in the terminal, or a scheduler's SIGTERM to the whole job, reaches the workers
  # too; the trainer stops gracefully (a checkpoint at the episode end) and ends them itself.
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  signal.signal(signal.SIGTERM, signal.SIG_IGN)
  try:
    group = _SeedGroup(cloudpickle.loads(make_envs_pickled), config, seeds)
  except BaseException as error:  # reported to the trainer, which raises it in one line
    connection.send(("error", _one_line(error)))
    return
  connection.send(("ok", None))
  try:
    while True:
      command = connection.recv()
      if command is None:
        break
      try:
        connection.send(("ok", group.call(*command)))
      except Exception as error:
        connection.send(("error", _one_line(error)))
  except (EOFError, KeyboardInterrupt):  # the trainer is gone or stopping: close quietly
    pass
  finally:
    group.close()


def _one_line(error: BaseException) -> str:
  where = traceback.extract_tb(error.__traceback__)[-1:] if error.__traceback__ else []
  place = f" (at {where[0].filename}:{where[0].lineno})" if where else ""
  text = str(error).splitlines()[0] if str(error) else ""
  return f"{type(error).__name__}: {text}{place}"


class EnvPool:
  """The training and evaluation environments of `seeds`, in `env_workers` processes (0:
  in this process). Raises EnvWorkerFailed if a worker cannot build its environments."""

  def __init__(
    self, make_envs: Callable, config: EnvConfig, seeds: Sequence[int], env_workers: int
  ):
    if env_workers < 0:
      raise ValueError(f"env_workers must be >= 0, got {env_workers}")
    self.seeds = tuple(seeds)
    self._groups: list[tuple[int, int]] = []  # (first seed index, number of seeds) per group
    self._local: _SeedGroup | None = None
    self._workers: list = []
    self._closed = False
    if env_workers == 0:
      self._local = _SeedGroup(make_envs, config, self.seeds)
      self._groups = [(0, len(self.seeds))]
    else:
      self._start_workers(make_envs, config, min(env_workers, len(self.seeds)))
    self.train = SeedEnvs(self, "train")
    self.eval = SeedEnvs(self, "eval")

  def _start_workers(self, make_envs: Callable, config: EnvConfig, workers: int) -> None:
    context = multiprocessing.get_context(ASYNC_START_METHOD)
    pickled = cloudpickle.dumps(make_envs)
    bounds = np.linspace(0, len(self.seeds), workers + 1).round().astype(int)
    try:
      for first, end in zip(bounds[:-1], bounds[1:]):
        parent, child = context.Pipe()
        process = context.Process(
          target=_worker,
          args=(child, pickled, config, list(self.seeds[first:end])),
          daemon=True,
        )
        process.start()
        child.close()
        self._workers.append((parent, process))
        self._groups.append((int(first), int(end - first)))
      for index in range(len(self._workers)):
        self._receive(index)
    except BaseException:
      self.close()
      raise

  def _receive(self, index: int) -> Any:
    connection, _ = self._workers[index]
    try:
      status, value = connection.recv()
    except (EOFError, OSError):
      status, value = "error", "the worker process died"
    if status != "ok":
      raise self._failure(index, value)
    return value

  def _failure(self, index: int, reason: str) -> EnvWorkerFailed:
    first, count = self._groups[index]
    return EnvWorkerFailed(
      f"environment worker of seeds {list(self.seeds[first : first + count])}: {reason}"
    )

  def call(self, role: str, method: str, per_seed_args: Sequence[tuple] | None = None) -> list:
    """`method` of every seed's `role` environment, in seed order (all groups at once).
    Raises EnvWorkerFailed (naming the seeds) after every worker has answered."""
    if self._local is not None:
      return self._local.call(role, method, per_seed_args)
    sent = []
    for index, ((connection, _), (first, count)) in enumerate(zip(self._workers, self._groups)):
      args = None if per_seed_args is None else list(per_seed_args[first : first + count])
      try:
        connection.send((role, method, args))
        sent.append(index)
      except OSError:  # a broken pipe: the worker is gone
        pass
    results, failure = [], None
    for index in range(len(self._workers)):
      try:
        if index not in sent:
          raise self._failure(index, "the worker process died")
        results.extend(self._receive(index))
      except EnvWorkerFailed as error:
        failure = failure or error
    if failure is not None:
      raise failure
    return results

  def close(self) -> None:
    """Idempotent; closes every environment and ends the workers."""
    if self._closed:
      return
    self._closed = True
    if self._local is not None:
      self._local.close()
    for connection, _ in self._workers:
      try:
        connection.send(None)
      except (BrokenPipeError, OSError):
        pass
    for connection, process in self._workers:
      process.join(timeout=10)
      if process.is_alive():
        process.kill()
      connection.close()


class SeedEnvs:
  """One role of an `EnvPool` as a vector environment with a leading seed axis."""

  def __init__(self, pool: EnvPool, role: str):
    self._pool = pool
    self.role = role

  @property
  def num_seeds(self) -> int:
    return len(self._pool.seeds)

  @property
  def at_episode_start(self) -> bool:
    return all(self._pool.call(self.role, "at_episode_start"))

  def reset(self) -> np.ndarray:
    return np.stack(self._pool.call(self.role, "reset"))

  def end_episode(self) -> np.ndarray:
    """Ends every seed's current episode early (`MultiTaskEnv.end_episode`): [S, T, obs]."""
    return np.stack(self._pool.call(self.role, "end_episode"))

  def step(self, actions: np.ndarray) -> StepResult:
    """Steps every seed's tasks with `actions` [S, T, action_dim]."""
    if len(actions) != self.num_seeds:
      raise ValueError(f"actions for {len(actions)} seeds, expected {self.num_seeds}")
    results = self._pool.call(self.role, "step", [(a,) for a in np.asarray(actions)])
    starts = {r.episode_start for r in results}
    if len(starts) != 1:
      raise RuntimeError("the seeds' episodes ended on different steps (episode lengths differ?)")
    return StepResult(
      *(np.stack([getattr(r, name) for r in results]) for name in StepResult._fields[:-1]),
      episode_start=starts.pop(),
    )

  def get_state(self) -> list[dict]:
    return self._pool.call(self.role, "get_state")

  def restore(self, states: Sequence[dict]) -> np.ndarray:
    return np.stack(self._pool.call(self.role, "restore", [(s,) for s in states]))
