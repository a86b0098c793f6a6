"""Which LSTM carry the update feeds the encoder, per carry mode (docs/carry_modes.md).

A transition in replay stores the carry the acting encoder held before and
after it (carry_in, carry_out). In carry modes `stored`, `frozen_memory` and
`frozen_lstm` the update uses those. In `burn_in` (R2D2, Kapturowski et al. 2019) the batch
also holds each transition's burn-in window (`types.BurnIn`) and the update
recomputes the carry with the CURRENT online recurrence, without gradient. Everything here is jit- and
pmap-compatible and runs inside the one update.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from cmta_jax.nn import distributions
from cmta_jax.types import BurnIn, LSTMCarry, Transition

sg = jax.lax.stop_gradient
AdvanceCarry = Callable[[Any, jax.Array, LSTMCarry], LSTMCarry]


def replay_carry(advance_carry: AdvanceCarry, params, burn_in: BurnIn) -> LSTMCarry:
  """The carry after replaying the window: [T, B, H] each, no gradient.

  A `lax.scan` over the window's L positions; where `burn_in.mask` is 0 the carry
  passes through unchanged, so the result is advance_carry applied to the last
  n = sum(mask) observations, starting from `burn_in.carry`.
  """
  params = sg(params)
  obs = jnp.moveaxis(burn_in.obs, 2, 0)  # [L, T, B, obs_dim]
  replay = jnp.moveaxis(burn_in.mask, 2, 0) > 0  # [L, T, B]

  def step(carry, inputs):
    x, active = inputs
    advanced = advance_carry(params, x, carry)
    return jax.tree.map(
      lambda new, old: jnp.where(active[..., None], new, old), advanced, carry
    ), None

  carry, _ = jax.lax.scan(step, burn_in.carry, (obs, replay))
  return sg(carry)


def carries_for_update(
  advance_carry: AdvanceCarry | None, encoder_params, batch: Transition
) -> tuple[LSTMCarry, LSTMCarry | None]:
  """(carry for s_t, carry for s_{t+1}), the second None when the caller must use the online
  pass's own fresh carry_out instead.

  Without a burn-in window: the stored carry_in and carry_out. With one: carry_in
  recomputed over the window by the online recurrence, and None. The target encoder's pass
  on s_{t+1} takes the same carry as the online one (in `stored` mode too, that carry was
  computed by the online encoder, at acting time): one burn-in scan per update, not two.
  """
  if batch.burn_in is None:
    return batch.carry_in, batch.carry_out
  if advance_carry is None:
    raise ValueError("the batch has a burn-in window but the encoder has no recurrence")
  return replay_carry(advance_carry, encoder_params, batch.burn_in), None


def make_attention_diagnostics(encoder):
  """Returns diagnostics(encoder_params, used, exact) -> {name: scalar}, to jit.

  `used` and `exact` are `gather`s of the same replay slots: `used` as the update
  samples them in this run's carry mode, `exact` with a burn-in window as long as an
  episode (the carry recomputed from the episode's start with the current encoder).
    attention_staleness: mean over samples of the L1 distance between the attention
      from the update's carry and from the exact carry (0 = fresh; at most 2).
    attention_entropy_fresh: mean entropy (nats) of the attention from the exact carry.
  """
  if encoder.advance_carry is None:
    raise ValueError("attention diagnostics need an encoder with a recurrent carry")

  def diagnostics(encoder_params, used: Transition, exact: Transition):
    task_ids = jnp.arange(used.obs.shape[0], dtype=jnp.int32)
    used_carry, _ = carries_for_update(encoder.advance_carry, encoder_params, used)
    exact_carry = replay_carry(encoder.advance_carry, encoder_params, exact.burn_in)
    attention_used = encoder.apply(encoder_params, used.obs, task_ids, used_carry).attention
    attention_fresh = encoder.apply(encoder_params, exact.obs, task_ids, exact_carry).attention
    return {
      "attention_staleness": jnp.abs(attention_used - attention_fresh).sum(-1).mean(),
      "attention_entropy_fresh": distributions.categorical_entropy(attention_fresh).mean(),
    }

  return diagnostics
