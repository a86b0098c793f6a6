"""What a multi-task Meta-World environment is built from (`EnvConfig`) and its checks: plain
data, so the run config reads it without loading a simulator."""

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

BENCHMARKS = ("MT10", "MT50")
MODES = ("fixed", "mixed")
VECTOR_STRATEGIES = ("sync", "async")
ROLES = ("train", "eval")
MAX_EPISODE_LENGTH = 500  # SawyerXYZEnv.max_path_length: it refuses to step further.
MAX_SEED = 2**32 - 1  # metaworld seeds numpy's legacy global RNG with the run seed.


def choices(values: Sequence[str]) -> str:
  return ", ".join(values)


@dataclasses.dataclass(frozen=True)
class EnvConfig:
  """What to build; the seed and role are given separately."""

  benchmark: str = "MT10"
  mode: str = "fixed"  # fixed: one frozen variation per task; mixed: a new one every episode.
  episode_length: int = 150
  vector_strategy: str = "sync"
  reward_normalization: bool = True  # Train role only; eval reports raw rewards.
  reward_norm_rate: float = 0.001

  def validate(self) -> None:
    """Raises ValueError (one line) on the first bad field."""
    validate_benchmark(self.benchmark)
    if self.mode not in MODES:
      raise ValueError(f"unknown mode {self.mode!r}; choose one of {choices(MODES)}")
    if self.vector_strategy not in VECTOR_STRATEGIES:
      raise ValueError(
        f"unknown vector strategy {self.vector_strategy!r}; "
        f"choose one of {choices(VECTOR_STRATEGIES)}"
      )
    length = self.episode_length
    if not is_int(length) or not 1 <= length <= MAX_EPISODE_LENGTH:
      raise ValueError(f"episode_length must be an int in 1..{MAX_EPISODE_LENGTH}, got {length!r}")
    if not isinstance(self.reward_normalization, (bool, np.bool_)):
      raise ValueError(f"reward_normalization must be a bool, got {self.reward_normalization!r}")
    rate = self.reward_norm_rate
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 < rate <= 1.0:
      raise ValueError(f"reward_norm_rate must be in (0, 1], got {rate!r}")


def is_int(value: Any) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def validate_seed(seed: Any) -> int:
  """Returns the seed as an int; ValueError unless an integer in 0..2**32-1."""
  if not is_int(seed):
    raise ValueError(f"seed must be a non-negative integer, got {seed!r} ({type(seed).__name__})")
  if not 0 <= seed <= MAX_SEED:
    raise ValueError(f"seed must be in 0..{MAX_SEED}, got {seed}")
  return int(seed)


def validate_benchmark(benchmark: str) -> None:
  if benchmark not in BENCHMARKS:
    raise ValueError(f"unknown benchmark {benchmark!r}; choose one of {choices(BENCHMARKS)}")
