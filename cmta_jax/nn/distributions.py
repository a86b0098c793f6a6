"""The actor's tanh-squashed Gaussian, with explicit noise so that sampling is
reproducible across data-parallel splits of a batch."""

import distrax
import jax
import jax.numpy as jnp

_TANH = distrax.Block(distrax.Tanh(), ndims=1)


def rescale_log_std(raw: jax.Array, log_std_min: float, log_std_max: float) -> jax.Array:
  """Map an unbounded output into [log_std_min, log_std_max] with a tanh (reference code)."""
  return log_std_min + 0.5 * (log_std_max - log_std_min) * (jnp.tanh(raw) + 1.0)


def sample_tanh_gaussian(
  mean: jax.Array, log_std: jax.Array, noise: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """Reparameterised sample a = tanh(mean + std * noise) and its log-probability.

  log N(u) is computed from the noise itself, not from (u - mean) / std: in
  float32 that difference cancels once std * noise is below the precision of
  the mean (log_std near -20 is in range), which made log pi off by several
  nats. The Jacobian term uses the pre-tanh value (no atanh of a saturated
  action): log pi(a) = log N(u) - log|det d tanh(u)/du|.
  """
  pre_tanh = mean + jnp.exp(log_std) * noise
  log_normal = jnp.sum(-0.5 * jnp.square(noise) - log_std - 0.5 * jnp.log(2.0 * jnp.pi), axis=-1)
  return jnp.tanh(pre_tanh), log_normal - _TANH.forward_log_det_jacobian(pre_tanh)


def deterministic_action(mean: jax.Array) -> jax.Array:
  return jnp.tanh(mean)


def categorical_entropy(probabilities: jax.Array) -> jax.Array:
  """Entropy (nats) of distributions over the last axis."""
  return -jnp.sum(probabilities * jnp.log(probabilities + 1e-12), axis=-1)
