"""The numerical building blocks against slow, obviously-correct NumPy versions:
the LSTM cell, the tanh-Gaussian log-probability, the log_std rescale, the
stacked experts and CMTA's InfoNCE term."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmta_jax.agents import cmta
from cmta_jax.nn import distributions, layers
from cmta_jax.types import LSTMCarry


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _numpy_lstm_step(w_in, w_hidden, b, x, h, c):
  """Textbook LSTM, gates packed (i, f, g, o) along the last axis."""
  hidden = h.shape[-1]
  gates = x @ w_in + h @ w_hidden + b
  i = _sigmoid(gates[:, 0 * hidden : 1 * hidden])
  f = _sigmoid(gates[:, 1 * hidden : 2 * hidden])
  g = np.tanh(gates[:, 2 * hidden : 3 * hidden])
  o = _sigmoid(gates[:, 3 * hidden : 4 * hidden])
  c_new = f * c + i * g
  h_new = o * np.tanh(c_new)
  return h_new, c_new


def test_lstm_step_matches_textbook_equations():
  rng = np.random.default_rng(0)
  batch, in_dim, hidden = 5, 7, 6
  # Random biases and large weights, so each gate's slice matters and a swapped gate order fails.
  params = {
    "w_in": rng.normal(size=(in_dim, 4 * hidden)),
    "w_hidden": rng.normal(size=(hidden, 4 * hidden)),
    "b": rng.normal(size=(4 * hidden,)),
  }
  x = rng.normal(size=(batch, in_dim))
  h, c = rng.normal(size=(batch, hidden)), rng.normal(size=(batch, hidden))
  as_f32 = lambda tree: jax.tree.map(lambda v: np.asarray(v, np.float32), tree)

  out = jax.jit(layers.lstm_apply)(as_f32(params), as_f32(x), as_f32(LSTMCarry(h=h, c=c)))

  expected_h, expected_c = _numpy_lstm_step(
    params["w_in"], params["w_hidden"], params["b"], x, h, c
  )
  np.testing.assert_allclose(out.h, expected_h, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out.c, expected_c, rtol=1e-5, atol=1e-5)


def test_lstm_init_shapes_and_zero_bias():
  params = jax.jit(layers.lstm_init, static_argnums=(1, 2))(jax.random.key(0), 7, 6)
  assert params["w_in"].shape == (7, 24)
  assert params["w_hidden"].shape == (6, 24)
  np.testing.assert_array_equal(params["b"], np.zeros(24))
  carry = layers.zero_carry((3,), 6)
  np.testing.assert_array_equal(carry.h, np.zeros((3, 6)))
  np.testing.assert_array_equal(carry.c, np.zeros((3, 6)))


def test_dense_init_is_glorot_uniform_with_zero_bias():
  params = jax.jit(layers.dense_init, static_argnums=(1, 2))(jax.random.key(0), 40, 60)
  limit = np.sqrt(6.0 / (40 + 60))
  assert np.all(np.abs(params["w"]) <= limit)
  assert np.abs(params["w"]).max() > 0.9 * limit  # uses the whole range, not a narrower one
  np.testing.assert_array_equal(params["b"], np.zeros(60))


def test_stacked_mlp_equals_each_member_on_its_own():
  members, sizes = 4, (5, 8, 3)
  shapes = jax.eval_shape(
    lambda key: layers.stacked_mlp_init(key, members, sizes), jax.random.key(0)
  )
  assert [layer["w"].shape for layer in shapes] == [(members, 5, 8), (members, 8, 3)]
  # NumPy weights and biases: running the real init eagerly compiles every threefry draw.
  rng = np.random.default_rng(0)
  stacked = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)
  x = jnp.asarray(np.random.default_rng(1).normal(size=(6, 5)), jnp.float32)
  out = np.asarray(jax.jit(layers.stacked_mlp_apply)(stacked, x))
  assert out.shape == (members, 6, 3)
  for member in range(members):
    member_params = jax.tree.map(lambda p: p[member], stacked)
    np.testing.assert_allclose(
      out[member], jax.jit(layers.mlp_apply)(member_params, x), rtol=1e-5, atol=1e-6
    )
  # Members are independent networks, not copies of one.
  assert not np.allclose(out[0], out[1])


@pytest.mark.parametrize("scale", [0.5, 3.0])
def test_tanh_gaussian_log_prob_is_change_of_variables(helpers, scale):
  rng = np.random.default_rng(1)
  batch, action_dim = 16, 4
  # scale 3 pushes many pre-tanh values past |u| = 5, where tanh saturates in float32.
  mean = rng.normal(size=(batch, action_dim)) * scale
  log_std = rng.uniform(-3.0, 1.0, size=(batch, action_dim))
  noise = rng.normal(size=(batch, action_dim))

  action, log_prob = jax.jit(distributions.sample_tanh_gaussian)(
    *(jnp.asarray(x, jnp.float32) for x in (mean, log_std, noise))
  )

  assert action.shape == (batch, action_dim) and log_prob.shape == (batch,)
  np.testing.assert_allclose(action, np.tanh(mean + np.exp(log_std) * noise), rtol=1e-5, atol=1e-6)
  expected = helpers.numpy_tanh_gaussian_log_prob(mean, log_std, noise)
  np.testing.assert_allclose(log_prob, expected, rtol=1e-4, atol=1e-3)


def test_deterministic_action_is_tanh_of_mean():
  mean = jnp.array([[-3.0, 0.0, 0.5]])
  np.testing.assert_allclose(distributions.deterministic_action(mean), np.tanh(mean), rtol=1e-6)


def test_log_std_rescale_stays_in_range_and_is_monotone():
  log_std_min, log_std_max = -20.0, 2.0
  raw = jnp.array([-1e30, -1e4, -10.0, -1.0, 0.0, 1.0, 10.0, 1e4, 1e30], jnp.float32)
  log_std = distributions.rescale_log_std(raw, log_std_min, log_std_max)
  assert np.all(log_std >= log_std_min) and np.all(log_std <= log_std_max)
  assert np.all(np.diff(log_std) >= 0)
  np.testing.assert_allclose(log_std[0], log_std_min)
  np.testing.assert_allclose(log_std[-1], log_std_max)
  np.testing.assert_allclose(log_std[4], 0.5 * (log_std_min + log_std_max))  # raw 0 -> midpoint


def _numpy_info_nce(queries, positives, temperature):
  """Eq. 3 as loops: for expert i and sample b, logits = [q_i.k+_i, q_i.q_j for j != i] / temp,
  cross-entropy with the positive as label; SUM over experts of the MEAN over samples."""
  num_experts, batch, _ = queries.shape

  def normalize(v):
    return v / np.linalg.norm(v)

  total = 0.0
  for i in range(num_experts):
    per_sample = []
    for b in range(batch):
      query = normalize(queries[i, b])
      logits = [query @ normalize(positives[i, b])]
      logits += [query @ normalize(queries[j, b]) for j in range(num_experts) if j != i]
      logits = np.array(logits) / temperature
      log_softmax = logits - np.log(np.sum(np.exp(logits - logits.max()))) - logits.max()
      per_sample.append(-log_softmax[0])
    total += np.mean(per_sample)
  return total


@pytest.mark.parametrize("num_experts,batch,dim", [(2, 3, 4), (6, 9, 5)])
def test_info_nce_matches_numpy_loops(num_experts, batch, dim):
  rng = np.random.default_rng(2)
  # Un-normalised inputs of different norms: the L2 normalisation must happen inside.
  norms = rng.uniform(0.1, 5.0, (num_experts, batch, 1))
  queries = rng.normal(size=(num_experts, batch, dim)) * norms
  positives = rng.normal(size=(num_experts, batch, dim)) * 3.0
  loss = jax.jit(cmta.info_nce, static_argnums=2)(
    jnp.asarray(queries, jnp.float32), jnp.asarray(positives, jnp.float32), 0.1
  )
  np.testing.assert_allclose(loss, _numpy_info_nce(queries, positives, 0.1), rtol=1e-5, atol=1e-5)


def test_info_nce_per_sample_over_task_groups_matches_each_groups_loss():
  """The update takes experts [k, G, B, d] of all tasks at once; each group's mean of the
  per-sample values must be that group's own InfoNCE (the NumPy loop)."""
  rng = np.random.default_rng(4)
  queries = rng.normal(size=(4, 3, 5, 6)) * rng.uniform(0.1, 5.0, (4, 3, 5, 1))
  positives = rng.normal(size=(4, 3, 5, 6))
  per_sample = jax.jit(cmta.info_nce_per_sample, static_argnums=2)(
    jnp.asarray(queries, jnp.float32), jnp.asarray(positives, jnp.float32), 0.1
  )
  assert per_sample.shape == (3, 5)
  for group in range(3):
    np.testing.assert_allclose(
      per_sample[group].mean(),
      _numpy_info_nce(queries[:, group], positives[:, group], 0.1),
      rtol=1e-5,
      atol=1e-5,
    )


def test_info_nce_is_low_when_positive_matches_and_experts_differ():
  # Orthogonal experts whose positives equal themselves: the positive logit is 10, negatives 0.
  queries = jnp.eye(3)[:, None, :]  # [k=3, B=1, d=3]
  loss = jax.jit(cmta.info_nce, static_argnums=2)(queries, queries, 0.1)
  # float32 logsumexp around 10 resolves ~1e-6: absolute tolerance.
  np.testing.assert_allclose(loss, 3 * np.log(1 + 2 * np.exp(-10.0)), atol=1e-5)


def test_info_nce_does_not_differentiate_the_positives():
  rng = np.random.default_rng(3)
  queries, positives = (jnp.asarray(rng.normal(size=(3, 4, 5)), jnp.float32) for _ in range(2))
  grad_queries, grad_positives = jax.jit(jax.grad(cmta.info_nce, argnums=(0, 1)), static_argnums=2)(
    queries, positives, 0.1
  )
  np.testing.assert_array_equal(grad_positives, np.zeros_like(grad_positives))
  assert np.any(grad_queries != 0)


@pytest.mark.parametrize("log_std", [-9.0, -14.0, -20.0])  # init value, mid-range, log_std_min
def test_tanh_gaussian_log_prob_is_accurate_at_small_std(helpers, log_std):
  """The paper's log_std range reaches -20 and starts near -9 (tanh rescale of ~0).

  Recomputing the Gaussian term from (u - mean) / std cancels catastrophically
  when std * noise is below float32 resolution of the mean; the noise itself
  is the exact standardised value (the reference code's `gaussian_logprob`).
  """
  rng = np.random.default_rng(4)
  mean = rng.uniform(-1.0, 1.0, (64, 4))
  noise = rng.normal(size=(64, 4))
  log_std = np.full((64, 4), log_std)
  as_f32 = lambda x: jnp.asarray(x, jnp.float32)

  def log_prob_fn(mean, log_std):
    return distributions.sample_tanh_gaussian(mean, log_std, as_f32(noise))[1]

  log_prob = jax.jit(log_prob_fn)(as_f32(mean), as_f32(log_std))
  np.testing.assert_allclose(
    log_prob, helpers.numpy_tanh_gaussian_log_prob(mean, log_std, noise), rtol=1e-5, atol=1e-3
  )
  # d log pi / d log_std = -1 + d(-log(1 - tanh(u)^2))/du * du/dlog_std = -1 + 2 tanh(u) std noise.
  grad_log_std = jax.jit(jax.grad(lambda m, s: log_prob_fn(m, s).sum(), argnums=1))(
    as_f32(mean), as_f32(log_std)
  )
  pre_tanh = mean + np.exp(log_std) * noise
  np.testing.assert_allclose(
    grad_log_std, -1.0 + 2.0 * np.tanh(pre_tanh) * np.exp(log_std) * noise, rtol=1e-5, atol=1e-4
  )
