"""Random inputs for testing a learner or a new encoder without Meta-World."""

import jax
import jax.numpy as jnp
import numpy as np

from cmta_jax.types import LSTMCarry, Transition


def random_batch(seed: int, num_tasks: int, batch_per_task: int, obs_dim: int, action_dim: int,
                 carry_dim: int, termination_rate: float = 0.2) -> Transition:
  """A [T, B, ...] float32 batch of random transitions.

  Carries are non-zero (so an LSTM's recurrent weights get gradients), actions lie
  in (-1, 1), and about `termination_rate` of the transitions are terminal. Drawn
  in NumPy: eager jnp ops would compile once per new shape.
  """
  rng = np.random.default_rng(seed)

  def normal(*shape):
    return rng.normal(size=(num_tasks, batch_per_task) + shape)

  def carry():
    return LSTMCarry(h=np.tanh(normal(carry_dim)), c=normal(carry_dim))

  batch = Transition(
      obs=normal(obs_dim), action=np.tanh(normal(action_dim)), reward=normal(),
      next_obs=normal(obs_dim),
      terminated=rng.random((num_tasks, batch_per_task)) < termination_rate,
      carry_in=carry(), carry_out=carry())
  return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), batch)
