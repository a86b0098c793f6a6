"""The actor's tanh-squashed Gaussian, with explicit noise so that sampling is
reproducible across data-parallel splits of a batch."""

import distrax
import jax
import jax.numpy as jnp

_TANH = distrax.Block(distrax.Tanh(), ndims=1)


def rescale_log_std(raw: jax.Array, log_std_min: float, log_std_max: float) -> jax.Array:
  """Map an unbounded output into [log_std_min, log_std_max] with a tanh (reference code)."""
  return log_std_min + 0.5 * (log_std_max - log_std_min) * (jnp.tanh(raw) + 1.0)


def base_distribution(mean: jax.Array, log_std: jax.Array) -> distrax.MultivariateNormalDiag:
  return distrax.MultivariateNormalDiag(mean, jnp.exp(log_std))


def squashed_distribution(mean: jax.Array, log_std: jax.Array) -> distrax.Transformed:
  return distrax.Transformed(base_distribution(mean, log_std), _TANH)


def sample_tanh_gaussian(
    mean: jax.Array, log_std: jax.Array, noise: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """Reparameterised sample a = tanh(mean + std * noise) and its log-probability.

  The log-probability is computed from the pre-tanh value (no atanh of a
  saturated action): log N(u) - log|det d tanh(u)/du|.
  """
  pre_tanh = mean + jnp.exp(log_std) * noise
  log_prob = base_distribution(mean, log_std).log_prob(pre_tanh) - _TANH.forward_log_det_jacobian(
      pre_tanh
  )
  return jnp.tanh(pre_tanh), log_prob


def deterministic_action(mean: jax.Array) -> jax.Array:
  return jnp.tanh(mean)
