"""Meta-World multi-task environments and the per-task reward normaliser."""

from cmta_jax.envs.metaworld_env import (
  ACTION_DIM,
  BENCHMARKS,
  MODES,
  NUM_VARIATIONS,
  OBS_DIM,
  ROLES,
  VECTOR_STRATEGIES,
  EnvConfig,
  MultiTaskEnv,
  StepResult,
  Variations,
  episode_variation_indices,
  make_variations,
  task_names,
  validate_seed,
)
from cmta_jax.envs.reward_normalizer import RewardNormalizer

__all__ = [
  "ACTION_DIM",
  "BENCHMARKS",
  "MODES",
  "NUM_VARIATIONS",
  "OBS_DIM",
  "ROLES",
  "VECTOR_STRATEGIES",
  "EnvConfig",
  "MultiTaskEnv",
  "RewardNormalizer",
  "StepResult",
  "Variations",
  "episode_variation_indices",
  "make_variations",
  "task_names",
  "validate_seed",
]
