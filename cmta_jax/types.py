"""Pytree types shared by the replay buffer, the learner and the training loop."""

from typing import Any, NamedTuple

import jax

# Parameters of a network: a pytree of arrays (dicts and lists of them).
Params = Any


class LSTMCarry(NamedTuple):
  """Recurrent state (h, c), each [..., hidden]. Encoders without recurrence use hidden=0."""

  h: jax.Array
  c: jax.Array


class BurnIn(NamedTuple):
  """The steps before each sampled transition, for recomputing its carry (docs/carry_modes.md).

  Position j of the window holds s_{t-L+j}; only the last n positions (n = min(L, the
  transition's step within its episode, the steps still in the buffer)) belong to the
  transition's own episode and are marked in `mask`; the others are zero.
  """

  obs: jax.Array  # [T, B, L, obs_dim] float32
  mask: jax.Array  # [T, B, L] float32, 1.0 where the step is replayed
  carry: LSTMCarry  # the stored carry_in of the first replayed step (zero at an episode start)


class Transition(NamedTuple):
  """A batch of transitions laid out [T, B_task, ...] (task-major).

  The task index of row t is t: sampling is task-balanced, so the layout itself
  carries it (see `task_ids` in the learner).
  """

  obs: jax.Array  # [T, B, obs_dim] float32, s_t
  action: jax.Array  # [T, B, action_dim] float32, a_t
  reward: jax.Array  # [T, B] float32 (normalised if the run normalises rewards)
  next_obs: jax.Array  # [T, B, obs_dim] float32, the TRUE s_{t+1} (final obs on truncation)
  terminated: jax.Array  # [T, B] float32, 1.0 only on true termination (never on truncation)
  carry_in: LSTMCarry  # (h_{t-1}, c_{t-1}), each [T, B, hidden]
  carry_out: LSTMCarry  # (h_t, c_t), each [T, B, hidden]
  burn_in: BurnIn | None = None  # only in carry mode `burn_in`
