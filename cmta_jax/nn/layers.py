"""Network building blocks as pure init/apply pairs over explicit parameter pytrees.

Every `*_init(key, ...)` returns a dict of arrays; every `*_apply(params, ...)`
is a pure function of those arrays. Weights are Glorot-uniform and biases
zero, as in the reference implementation.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from cmta_jax.types import LSTMCarry, Params


def glorot_uniform(key: jax.Array, fan_in: int, fan_out: int, shape=None) -> jax.Array:
  limit = jnp.sqrt(6.0 / (fan_in + fan_out))
  shape = (fan_in, fan_out) if shape is None else shape
  return jax.random.uniform(key, shape, jnp.float32, -limit, limit)


def dense_init(key: jax.Array, in_dim: int, out_dim: int) -> Params:
  return {"w": glorot_uniform(key, in_dim, out_dim), "b": jnp.zeros((out_dim,), jnp.float32)}


def dense_apply(params: Params, x: jax.Array) -> jax.Array:
  return x @ params["w"] + params["b"]


def mlp_init(key: jax.Array, sizes: Sequence[int]) -> list[Params]:
  """sizes = (in, hidden..., out): one dense layer per consecutive pair."""
  keys = jax.random.split(key, len(sizes) - 1)
  return [dense_init(k, i, o) for k, i, o in zip(keys, sizes[:-1], sizes[1:])]


def mlp_apply(params: list[Params], x: jax.Array, activate_final: bool = False) -> jax.Array:
  """ReLU between layers; none after the last unless `activate_final`."""
  for i, layer in enumerate(params):
    x = dense_apply(layer, x)
    if i < len(params) - 1 or activate_final:
      x = jax.nn.relu(x)
  return x


def stacked_mlp_init(key: jax.Array, num_members: int, sizes: Sequence[int]) -> list[Params]:
  """`num_members` independent MLPs whose weights are stacked on a leading axis."""
  return jax.vmap(lambda k: mlp_init(k, sizes))(jax.random.split(key, num_members))


def stacked_mlp_apply(params: list[Params], x: jax.Array) -> jax.Array:
  """All members on the same input in one batched op: x [..., in] -> [members, ..., out].

  Leading axes are flattened into one row axis first, so each layer is a
  single [members, rows, in] x [members, in, out] matmul.
  """
  rows = x.reshape(-1, x.shape[-1])
  out = jax.vmap(mlp_apply, in_axes=(0, None))(params, rows)
  return out.reshape(out.shape[0], *x.shape[:-1], out.shape[-1])


def lstm_init(key: jax.Array, in_dim: int, hidden: int) -> Params:
  """One LSTM cell; the four gates (i, f, g, o) are packed along the output axis."""
  k_in, k_hidden = jax.random.split(key)
  return {
    "w_in": glorot_uniform(k_in, in_dim, 4 * hidden),
    "w_hidden": glorot_uniform(k_hidden, hidden, 4 * hidden),
    "b": jnp.zeros((4 * hidden,), jnp.float32),
  }


def lstm_apply(params: Params, x: jax.Array, carry_in: LSTMCarry) -> LSTMCarry:
  """One step: returns carry_out = (h_t, c_t) from x_t and carry_in = (h_{t-1}, c_{t-1})."""
  gates = x @ params["w_in"] + carry_in.h @ params["w_hidden"] + params["b"]
  i, f, g, o = jnp.split(gates, 4, axis=-1)
  c = jax.nn.sigmoid(f) * carry_in.c + jax.nn.sigmoid(i) * jnp.tanh(g)
  h = jax.nn.sigmoid(o) * jnp.tanh(c)
  return LSTMCarry(h=h, c=c)


def zero_carry(batch_shape: Sequence[int], hidden: int) -> LSTMCarry:
  zeros = jnp.zeros((*batch_shape, hidden), jnp.float32)
  return LSTMCarry(h=zeros, c=zeros)
