"""Named random streams of a run (docs/algorithm.md §5).

Every random draw of a run is a pure function of (seed, stream, step): the JAX key of a
stream at a step is `fold_in(fold_in(PRNGKey(seed), stream), step)`, so a resumed run
draws exactly what the uninterrupted run would have. The stream numbers are part of the
run's identity: changing one changes every run's numbers.
"""

import enum

import jax


class Stream(enum.IntEnum):
  ACT = 0  # action selection: exploration noise, warm-up actions, evaluation
  UPDATE = 1  # the learner's update (policy samples)
  INIT = 2  # parameter initialisation (step-free)
  DIAGNOSTICS = 3  # the replay draws of the attention diagnostics
  REPLAY = 4  # the update's replay draws


def run_key(seed: int) -> jax.Array:
  """The base key of a run; a (2,) uint32 array."""
  return jax.random.PRNGKey(seed)


def stream_key(base_key: jax.Array, stream: Stream) -> jax.Array:
  return jax.random.fold_in(base_key, int(stream))


def step_key(base_key: jax.Array, stream: Stream, step) -> jax.Array:
  """The key of `stream` at vector step `step` (an int or a traced scalar)."""
  return jax.random.fold_in(stream_key(base_key, stream), step)
