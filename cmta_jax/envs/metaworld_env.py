"""Meta-World MT10/MT50 as one vector env with one sub-env per task.

Why we build the vector env ourselves instead of `metaworld.make_mt_envs`:
  * metaworld seeds every sub-env with the same seed and picks variations with
    each sub-env's own RNG, so the episode stream depends on hidden RNG state;
  * we want the stream to be a pure function of (run seed, role, task, episode),
    so resuming only needs the episode counter and the reward normaliser state.

Each sub-env is `env_cls(reward_function_version="v2")` under a `TimeLimit`
(as metaworld's `_init_each_env`, without terminate-on-success) and a small
wrapper of ours that calls `set_task` with the variation the caller chose right
before every reset. Meta-World resets are deterministic given the task's
`rand_vec` (checked for all 50 tasks; the env's `np_random` is not used once a
task is set), so the env's internal RNG never matters.

Meta-World never terminates and all tasks share the episode length, so all
sub-envs truncate on the same step. Autoreset is disabled: on that step we keep
the true final observation (`next_obs`) and reset all sub-envs ourselves.
"""

import dataclasses
import functools
import multiprocessing
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from cmta_jax.envs import gl_backend

# Before Meta-World imports MuJoCo: a MUJOCO_GL naming a backend this machine lacks must not
# break simulation (rendering commands check the backend themselves).
gl_backend.import_mujoco()

import gymnasium as gym  # noqa: E402
import metaworld  # noqa: E402
import metaworld.env_dict  # noqa: E402

from cmta_jax.envs.config import (  # noqa: E402
  MODES,
  ROLES,
  EnvConfig,
  choices,
  is_int,
  validate_benchmark,
  validate_seed,
)
from cmta_jax.envs.reward_normalizer import RewardNormalizer  # noqa: E402

OBS_DIM = 39
ACTION_DIM = 4
NUM_VARIATIONS = 50  # metaworld's default num_goals per task.
# Sub-processes of the async vector env are started from a clean server
# process, not forked from the (multithreaded, JAX-using) trainer. Like
# "spawn", this re-imports the main module: scripts need a __main__ guard.
ASYNC_START_METHOD = "forkserver"

_ROLE_IDS = {"train": 0, "eval": 1}
# Separate the random streams derived from the run seed.
_FIXED_STREAM = 0
_MIXED_STREAM = 1
_SUBENV_SEED_STREAM = 2
_STATE_FORMAT = 1


def _validate_role(role: str) -> None:
  if role not in ROLES:
    raise ValueError(f"unknown role {role!r}; choose one of {choices(ROLES)}")


def task_names(benchmark: str) -> tuple[str, ...]:
  """Task names of a benchmark in its canonical order (no env construction)."""
  validate_benchmark(benchmark)
  env_dict = metaworld.env_dict.MT10_V3 if benchmark == "MT10" else metaworld.env_dict.MT50_V3
  return tuple(env_dict)


def episode_variation_indices(
  seed: int, mode: str, role: str, num_tasks: int, episode_index: int
) -> np.ndarray:
  """Variation index of every task for one episode: a pure function of its arguments.

  fixed: depends on (seed, task) only, so the train and eval envs of a run
  share it. mixed: depends on (seed, role, task, episode).
  Returns int32 [num_tasks] in 0..NUM_VARIATIONS-1.
  """
  seed = validate_seed(seed)
  _validate_role(role)
  if mode == "fixed":
    keys = [[seed, _FIXED_STREAM, task] for task in range(num_tasks)]
  elif mode == "mixed":
    keys = [
      [seed, _MIXED_STREAM, _ROLE_IDS[role], task, episode_index] for task in range(num_tasks)
    ]
  else:
    raise ValueError(f"unknown mode {mode!r}; choose one of {choices(MODES)}")
  return np.array(
    [np.random.default_rng(key).integers(NUM_VARIATIONS) for key in keys], dtype=np.int32
  )


@dataclasses.dataclass(frozen=True)
class Variations:
  """The NUM_VARIATIONS variations of every task, as metaworld generates them from a seed.

  Generating them is most of the construction time (MT10 ~6 s, MT50 ~35 s), so
  the train and eval env of one run can share one instance.
  """

  benchmark: str
  seed: int
  env_classes: tuple[type, ...]  # [task]
  tasks: tuple[tuple[metaworld.Task, ...], ...]  # [task][variation]


def make_variations(benchmark: str, seed: int) -> Variations:
  """Runs metaworld's MT10/MT50(seed=seed) task generation."""
  validate_benchmark(benchmark)
  seed = validate_seed(seed)
  names = task_names(benchmark)
  suite = metaworld.MT10(seed=seed) if benchmark == "MT10" else metaworld.MT50(seed=seed)
  if tuple(suite.train_classes) != names:
    raise RuntimeError(f"metaworld's {benchmark} task order changed: {tuple(suite.train_classes)}")
  tasks = tuple(tuple(t for t in suite.train_tasks if t.env_name == name) for name in names)
  for name, per_task in zip(names, tasks):
    if len(per_task) != NUM_VARIATIONS:
      raise RuntimeError(
        f"metaworld made {len(per_task)} variations of {name}, expected {NUM_VARIATIONS} "
        "(was its process-wide num_goals changed?)"
      )
  env_classes = tuple(suite.train_classes[name] for name in names)
  return Variations(benchmark=benchmark, seed=seed, env_classes=env_classes, tasks=tasks)


class _SetVariationOnReset(gym.Wrapper):
  """Sets the variation chosen by the caller before each reset; float32 observations.

  `reset` needs options={"variation_indices": int array [num_tasks]}; this
  sub-env reads its own entry. The declared observation bounds of Meta-World
  are not meaningful, so we declare an unbounded space.
  """

  def __init__(self, env: gym.Env, task_index: int, tasks: Sequence[metaworld.Task]) -> None:
    super().__init__(env)
    self._task_index = task_index
    self._tasks = tuple(tasks)
    self.observation_space = gym.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32)

  def reset(
    self, *, seed: int | None = None, options: dict[str, Any] | None = None
  ) -> tuple[np.ndarray, dict[str, Any]]:
    del seed  # Meta-World ignores reset seeds; the variation fully defines the reset.
    if not options or "variation_indices" not in options:
      raise ValueError("reset needs options={'variation_indices': ...}")
    variation = int(options["variation_indices"][self._task_index])
    self.env.unwrapped.set_task(self._tasks[variation])
    obs, info = self.env.reset()
    return obs.astype(np.float32), info

  def step(self, action: np.ndarray) -> tuple[np.ndarray, Any, bool, bool, dict[str, Any]]:
    obs, reward, terminated, truncated, info = self.env.step(action)
    return obs.astype(np.float32), reward, terminated, truncated, info


class RenderSpec(NamedTuple):
  """Offscreen rendering of evaluation episodes (videos): frame size in pixels and the
  Meta-World camera ("corner", "corner2", "corner3", "topview", "behindGripper", ...)."""

  width: int = 480
  height: int = 480
  camera: str = "corner"


def _make_task_env(
  env_cls: type,
  tasks: Sequence[metaworld.Task],
  task_index: int,
  episode_length: int,
  env_seed: int,
  render: RenderSpec | None = None,
) -> gym.Env:
  """One sub-env (module-level so async workers can unpickle it)."""
  if render is None:
    env = env_cls(reward_function_version="v2")
  else:
    env = env_cls(
      reward_function_version="v2",
      render_mode="rgb_array",
      camera_name=render.camera,
      width=render.width,
      height=render.height,
    )
  env.seed(env_seed)  # Hygiene only: resets do not use the env RNG once a task is set.
  env = gym.wrappers.TimeLimit(env, episode_length)
  return _SetVariationOnReset(env, task_index, tasks)


class StepResult(NamedTuple):
  obs: np.ndarray  # [T, 39] f32, obs to act on next (first obs of the new episode after truncation)
  next_obs: np.ndarray  # [T, 39] f32, the true s_{t+1}
  reward: np.ndarray  # [T] f32 (normalised if enabled)
  raw_reward: np.ndarray  # [T] f32
  terminated: np.ndarray  # [T] bool (always False for Meta-World, but passed through)
  truncated: np.ndarray  # [T] bool
  success: np.ndarray  # [T] f32, info["success"] of this step
  episode_start: bool  # True if `obs` is the first obs of a new episode (this step ended one)


class MultiTaskEnv:
  """All tasks of a benchmark stepped in lockstep; the episode stream is a pure
  function of (config, seed, role, episode index)."""

  obs_dim = OBS_DIM
  action_dim = ACTION_DIM

  def __init__(
    self,
    config: EnvConfig,
    seed: int,
    role: str = "train",
    *,
    variations: Variations | None = None,
    render: RenderSpec | None = None,
  ) -> None:
    """Validates everything, then builds the sub-envs.

    `variations`: optional `make_variations(config.benchmark, seed)` output to
    share between envs of one run (saves regenerating them). `render`: build the
    sub-envs for offscreen rendering (`render_frames`); stepped in this process. Raises
    gl_backend.RenderingUnavailable (one line) if MuJoCo cannot render here.
    """
    if not isinstance(config, EnvConfig):
      raise ValueError(f"config must be an EnvConfig, got {type(config).__name__}")
    config.validate()
    seed = validate_seed(seed)
    _validate_role(role)
    if variations is not None and (variations.benchmark, variations.seed) != (
      config.benchmark,
      seed,
    ):
      raise ValueError(
        f"variations are for ({variations.benchmark}, seed {variations.seed}), "
        f"env is ({config.benchmark}, seed {seed})"
      )
    self.config = config
    self.seed = seed
    self.role = role
    self.task_names = task_names(config.benchmark)
    self.num_tasks = len(self.task_names)
    self.task_ids = np.arange(self.num_tasks, dtype=np.int32)
    self._normalizer = (
      RewardNormalizer(self.num_tasks, config.reward_norm_rate)
      if config.reward_normalization and role == "train"
      else None
    )
    self._fixed_variations = (
      episode_variation_indices(seed, "fixed", role, self.num_tasks, 0)
      if config.mode == "fixed"
      else None
    )
    self._episode_index = 0
    self._steps_in_episode = 0
    self._started = False
    self._variation_indices = np.zeros(self.num_tasks, dtype=np.int32)

    if render is not None:
      gl_backend.check_offscreen_rendering()  # before a renderer exists to fail noisily
    if variations is None:
      variations = make_variations(config.benchmark, seed)
    thunks = [
      functools.partial(
        _make_task_env,
        env_cls=variations.env_classes[task],
        tasks=variations.tasks[task],
        task_index=task,
        episode_length=config.episode_length,
        env_seed=self._subenv_seed(task),
        render=render,
      )
      for task in range(self.num_tasks)
    ]
    autoreset = gym.vector.AutoresetMode.DISABLED
    self._renders = render is not None
    if config.vector_strategy == "sync" or self._renders:
      self._vector_env = gym.vector.SyncVectorEnv(thunks, autoreset_mode=autoreset)
    else:
      # Workers fork from the server; preloading this module (metaworld, mujoco)
      # there saves importing it in every worker. No effect once the server runs.
      context = multiprocessing.get_context(ASYNC_START_METHOD)
      if ASYNC_START_METHOD == "forkserver":
        context.set_forkserver_preload([__name__])
      self._vector_env = gym.vector.AsyncVectorEnv(
        thunks, context=ASYNC_START_METHOD, autoreset_mode=autoreset
      )

  def _subenv_seed(self, task: int) -> int:
    key = [self.seed, _SUBENV_SEED_STREAM, _ROLE_IDS[self.role], task]
    return int(np.random.SeedSequence(key).generate_state(1)[0])

  @property
  def episode_index(self) -> int:
    """Index of the current episode in the stream (0 after `reset`)."""
    return self._episode_index

  @property
  def at_episode_start(self) -> bool:
    return self._started and self._steps_in_episode == 0

  def variation_indices(self) -> np.ndarray:
    """[T] int32 variation index of each task in the current episode."""
    return self._variation_indices.copy()

  def reset(self) -> np.ndarray:
    """Starts the stream from episode 0 (and a fresh reward normaliser). [T, 39] f32."""
    if self._normalizer is not None:
      self._normalizer.reset()
    self._episode_index = 0
    return self._start_episode()

  def _start_episode(self) -> np.ndarray:
    if self._fixed_variations is not None:
      self._variation_indices = self._fixed_variations.copy()
    else:
      self._variation_indices = episode_variation_indices(
        self.seed, self.config.mode, self.role, self.num_tasks, self._episode_index
      )
    obs, _ = self._vector_env.reset(options={"variation_indices": self._variation_indices})
    self._steps_in_episode = 0
    self._started = True
    return np.array(obs, dtype=np.float32)

  def end_episode(self) -> np.ndarray:
    """Ends the current episode of every task before its last step and starts the next
    episode of the stream, the one a truncation would have started; returns its obs.
    (Evaluation under Meta-World+'s rule stops once every task has succeeded.)"""
    if not self._started:
      raise RuntimeError("call reset() or restore() before end_episode()")
    self._episode_index += 1
    return self._start_episode()

  def step(self, actions: np.ndarray) -> StepResult:
    """Steps all tasks; after the truncating step all tasks are reset."""
    if not self._started:
      raise RuntimeError("call reset() or restore() before step()")
    actions = np.asarray(actions, dtype=np.float32)
    if actions.shape != (self.num_tasks, ACTION_DIM):
      expected = (self.num_tasks, ACTION_DIM)
      raise ValueError(f"actions must have shape {expected}, got {actions.shape}")
    if not np.all(np.isfinite(actions)):
      raise ValueError("actions must be finite")
    next_obs, reward, terminated, truncated, info = self._vector_env.step(actions)
    self._steps_in_episode += 1
    next_obs = np.array(next_obs, dtype=np.float32)
    terminated = np.asarray(terminated, dtype=bool)
    truncated = np.asarray(truncated, dtype=bool)
    raw_reward = np.asarray(reward, dtype=np.float64)
    if self._normalizer is not None:
      scaled_reward = self._normalizer.normalize(raw_reward).astype(np.float32)
    else:
      scaled_reward = raw_reward.astype(np.float32)
    success = np.asarray(info["success"], dtype=np.float32)

    done = terminated | truncated
    episode_start = bool(done.any())
    if episode_start:
      if not done.all():
        # Lockstep is what makes one shared reset (and cheap resume) valid.
        raise RuntimeError(f"sub-envs ended at different steps: done={done.tolist()}")
      self._episode_index += 1
      obs = self._start_episode()
    else:
      obs = next_obs.copy()
    return StepResult(
      obs=obs,
      next_obs=next_obs,
      reward=scaled_reward,
      raw_reward=raw_reward.astype(np.float32),
      terminated=terminated,
      truncated=truncated,
      success=success,
      episode_start=episode_start,
    )

  def get_state(self) -> dict[str, Any]:
    """Small picklable resume state; only valid at an episode start."""
    if not self.at_episode_start:
      raise RuntimeError(
        "get_state() is only valid at an episode start "
        f"(now {self._steps_in_episode} steps into episode {self._episode_index})"
      )
    return {
      "format": _STATE_FORMAT,
      "benchmark": self.config.benchmark,
      "mode": self.config.mode,
      "episode_length": self.config.episode_length,
      "seed": self.seed,
      "role": self.role,
      "episode_index": self._episode_index,
      "variation_indices": self._variation_indices.tolist(),  # Consistency check on restore.
      "reward_normalizer": None if self._normalizer is None else self._normalizer.state_dict(),
    }

  def restore(self, state: dict[str, Any]) -> np.ndarray:
    """Resumes the stream at the episode saved by `get_state`; returns the obs to act on."""
    if state.get("format") != _STATE_FORMAT:
      raise ValueError(
        f"unknown env state format {state.get('format')!r}, expected {_STATE_FORMAT}"
      )
    expected = {
      "benchmark": self.config.benchmark,
      "mode": self.config.mode,
      "episode_length": self.config.episode_length,
      "seed": self.seed,
      "role": self.role,
    }
    for key, value in expected.items():
      if state[key] != value:
        raise ValueError(f"env state has {key}={state[key]!r}, this env has {value!r}")
    episode_index = state["episode_index"]
    if not is_int(episode_index) or episode_index < 0:
      raise ValueError(f"env state has a bad episode_index {episode_index!r}")
    normalizer_state = state["reward_normalizer"]
    if (normalizer_state is None) != (self._normalizer is None):
      raise ValueError("env state and this env disagree on reward normalisation")
    if self._normalizer is not None:
      self._normalizer.load_state_dict(normalizer_state)
    self._episode_index = int(episode_index)
    obs = self._start_episode()
    if self._variation_indices.tolist() != list(state["variation_indices"]):
      raise ValueError(
        "variation choice differs from the saved one (was the variation rule changed?)"
      )
    return obs

  def render_frames(self, tasks: Sequence[int]) -> list[np.ndarray]:
    """The current frame of each task in `tasks`: [height, width, 3] uint8 each."""
    if not self._renders:
      raise RuntimeError("this environment was not built for rendering (pass render=)")
    # Meta-World v3's cameras render upside down (the table above the robot): flip rows.
    return [np.ascontiguousarray(self._vector_env.envs[t].render()[::-1]) for t in tasks]

  def close(self) -> None:
    self._vector_env.close()

  def __enter__(self) -> "MultiTaskEnv":
    return self

  def __exit__(self, *exc_info: Any) -> None:
    self.close()
