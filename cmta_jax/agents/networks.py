"""The pieces every agent is made of, and how the SAC update sees them.

An agent is an `Encoder` (state, task index, carry) -> features, plus an actor
head and a twin-Q critic head on those features. The SAC update in `sac.py` is
written once against these interfaces; CMTA and every baseline only differ in
which encoder and which head layout (`shared`, `multihead`, `independent`)
they plug in.

All apply functions see a task-grouped batch: obs [G, B, obs_dim] and
task_ids [G] (int32), every row of group g belonging to task task_ids[g]. The
update passes the whole [T, B_task] batch with task_ids = arange(T); acting
passes [T, 1]. Shared weights treat the G * B rows as one matrix (one matmul
per layer); per-task weights are gathered by task_ids and applied as one
batched op over G. Only the per-task loss terms are vmapped over the task axis
(`sac.py`): vmapping the networks themselves made XLA transpose every stacked
activation (BUILD_NOTES, "Update efficiency").
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from cmta_jax.nn import distributions, layers
from cmta_jax.types import LSTMCarry, Params

HEAD_LAYOUTS = ("shared", "multihead", "independent")


class EncoderOutput(NamedTuple):
  features: jax.Array  # [G, B, feature_dim]: what actor and critic consume
  carry: LSTMCarry  # carry_out, [G, B, carry_dim] each (carry_dim 0 without recurrence)
  experts: jax.Array | None  # [k, G, B, expert_dim] per-expert outputs (None without experts)
  attention: jax.Array | None  # [G, B, ...] mixing/routing weights (None without experts)


class AuxiliaryLoss(NamedTuple):
  """An encoder's own loss term, added to the critic's objective with `sac.auxiliary_weight`."""

  name: str  # its metric name, e.g. "contrastive_loss"
  # (online output on s_t, target output on s_{t+1}) -> [G, B]: each sample's loss; the
  # update averages it per task.
  per_sample: Callable[[EncoderOutput, EncoderOutput], jax.Array]


class Encoder(NamedTuple):
  init: Callable[[jax.Array], Params]
  # (params, obs [G, B, obs_dim], task_ids [G] int32, carry_in [G, B, carry_dim]) -> EncoderOutput
  apply: Callable[[Params, jax.Array, jax.Array, LSTMCarry], EncoderOutput]
  feature_dim: int
  carry_dim: int
  # (params, obs [G, B, obs_dim], carry [G, B, carry_dim]) -> the next carry: the recurrence
  # alone, for recomputing carries over a burn-in window. None without recurrence.
  advance_carry: Callable[[Params, jax.Array, LSTMCarry], LSTMCarry] | None = None
  auxiliary_loss: AuxiliaryLoss | None = None
  # (online output on s_t) -> {metric name: [G, B]}, averaged per task and logged.
  diagnostics: Callable[[EncoderOutput], dict[str, jax.Array]] | None = None


class Actor(NamedTuple):
  init: Callable[[jax.Array], Params]
  # (params, features [G, B, F], task_ids [G]) -> (mean, log_std), each [G, B, A]; log_std in range
  apply: Callable[[Params, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]
  # An actor with its own routing (Soft Modularization): (params, features, task_ids) ->
  # [G, B, N, M], N distributions over M modules. Logged as `routing_entropy` and shown by
  # the inspection commands. None for MLP heads.
  routing: Callable[[Params, jax.Array, jax.Array], jax.Array] | None = None


class Critic(NamedTuple):
  init: Callable[[jax.Array], Params]
  # (params, features [G, B, F], action [G, B, A], task_ids [G]) -> Q [num_q, G, B]
  apply: Callable[[Params, jax.Array, jax.Array, jax.Array], jax.Array]


class AgentNetworks(NamedTuple):
  encoder: Encoder
  actor: Actor
  critic: Critic
  num_tasks: int
  obs_dim: int
  action_dim: int


def _task_mlp(in_dim: int, out_dim: int, width: int, depth: int, num_tasks: int, layout: str):
  """An MLP whose task dependence is set by `layout`.

  shared: one MLP for all tasks. multihead: a shared trunk and one output
  layer per task, selected by gathering the task's weights (no branching).
  independent: one whole MLP per task, stacked on a leading task axis.
  """
  if layout not in HEAD_LAYOUTS:
    raise ValueError(f"unknown head layout {layout!r}; choose one of {', '.join(HEAD_LAYOUTS)}")
  sizes = (in_dim,) + (width,) * depth + (out_dim,)

  if layout == "shared":

    def apply_shared(params, x, task_ids):
      rows = layers.mlp_apply(params, x.reshape(-1, x.shape[-1]))
      return rows.reshape(*x.shape[:-1], out_dim)

    return lambda key: layers.mlp_init(key, sizes), apply_shared

  if layout == "independent":

    def init_independent(key):
      return jax.vmap(lambda k: layers.mlp_init(k, sizes))(jax.random.split(key, num_tasks))

    def apply_independent(params, x, task_ids):
      group_params = jax.tree.map(lambda p: p[task_ids], params)  # [G, ...]
      return jax.vmap(layers.mlp_apply)(group_params, x)

    return init_independent, apply_independent

  def init_multihead(key):
    k_trunk, k_heads = jax.random.split(key)
    return {
      "trunk": layers.mlp_init(k_trunk, sizes[:-1]),
      "heads": jax.vmap(lambda k: layers.dense_init(k, width, out_dim))(
        jax.random.split(k_heads, num_tasks)
      ),
    }

  def apply_multihead(params, x, task_ids):
    trunk = layers.mlp_apply(params["trunk"], x.reshape(-1, x.shape[-1]), activate_final=True)
    trunk = trunk.reshape(*x.shape[:-1], width)
    head = jax.tree.map(lambda p: p[task_ids], params["heads"])  # w [G, width, out], b [G, out]
    return jnp.einsum("gbw,gwo->gbo", trunk, head["w"]) + head["b"][:, None, :]

  return init_multihead, apply_multihead


def make_actor(
  feature_dim: int,
  action_dim: int,
  width: int,
  depth: int,
  num_tasks: int,
  layout: str,
  log_std_min: float,
  log_std_max: float,
) -> Actor:
  init_fn, apply_fn = _task_mlp(feature_dim, 2 * action_dim, width, depth, num_tasks, layout)

  def apply(params, features, task_ids):
    mean, raw_log_std = jnp.split(apply_fn(params, features, task_ids), 2, axis=-1)
    return mean, distributions.rescale_log_std(raw_log_std, log_std_min, log_std_max)

  return Actor(init=init_fn, apply=apply)


def make_critic(
  feature_dim: int,
  action_dim: int,
  width: int,
  depth: int,
  num_tasks: int,
  layout: str,
  num_q: int = 2,
) -> Critic:
  """`num_q` Q heads as one stacked ensemble (one batched op per layer)."""
  init_fn, apply_fn = _task_mlp(feature_dim + action_dim, 1, width, depth, num_tasks, layout)

  def init(key):
    return jax.vmap(init_fn)(jax.random.split(key, num_q))

  def apply(params, features, action, task_ids):
    x = jnp.concatenate([features, action], axis=-1)
    q = jax.vmap(apply_fn, in_axes=(0, None, None))(params, x, task_ids)
    return q[..., 0]

  return Critic(init=init, apply=apply)
