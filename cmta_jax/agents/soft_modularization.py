"""Soft Modularization (Yang et al. 2020): the actor and each critic are soft-modular networks.

Not an encoder under MLP heads: as in its paper, its authors' code and mtrl, the policy and
each Q-function are whole networks of routed modules, each with its own routing network,
trained by its own loss (the actor's loss trains the actor's routing). One network, for an
input x (the state for the actor, [state; action] for a critic) and a task z:

  base      f(x) = Dense(W) . ReLU . Dense(W)(x)             (no activation at the end)
  task      h(z) = the task encoder (Embedding 64 -> MLP -> W, trained from scratch; paper
            Table 5)
  routing   e = f(x) * h(z)
            p^1 = W_d^1 ReLU(e);  p^(l+1) = W_d^(l+1) ReLU(W_u^l p^l * e)   (logits)
            routing weights softmax(p^l) between module layers l and l+1, one distribution
            over layer l's modules for each module of layer l+1; the last p gives one
            distribution over the last layer's modules.
  modules   L layers of M modules Dense(W -> W); layer 1 reads ReLU(f(x)); module j of layer
            l+1 reads ReLU(sum_i w^l[j, i] out^l_i)
  output    Dense(ReLU(sum_i w_last[i] out^L_i))

This is the structure of the authors' code (`ModularGatedCascadeCondNet`: base MLP, the
product conditioning, module outputs mixed before the activation, a last routing over the
final modules, an output layer) with the paper's routing recursion (each routing from the
previous one's logits, as in the paper's equations and mtrl, where the authors' code feeds
all earlier softmax weights) and the CMTA paper's sizes (4 layers x 4 modules of width 64).
No loss balancing across tasks, the CMTA paper's fairness choice. docs/algorithm.md §6 lists
what differs from each reference.
"""

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from cmta_jax.agents.networks import Actor, Critic
from cmta_jax.agents.task_encoder import make_task_encoder
from cmta_jax.config import SoftModuConfig, TaskEncoderConfig
from cmta_jax.nn import distributions, layers


class SoftModularNet(NamedTuple):
  init: Callable
  # (params, x [G, B, in], task_ids [G]) -> (out [G, B, out], routing [G, B, N, M]): the N =
  # (L - 1) * M + 1 routing distributions over M modules, between layers then the last one.
  apply: Callable


def make_soft_modular_net(
  config: SoftModuConfig,
  task_config: TaskEncoderConfig,
  num_tasks: int,
  in_dim: int,
  out_dim: int,
) -> SoftModularNet:
  depth, modules, width = config.softmodu_layers, config.softmodu_modules, config.softmodu_width
  routes = modules * modules
  # h(z) multiplies f(x), so the task encoder ends at the module width (not task_feature_dim).
  task_init, task_apply = make_task_encoder(
    dataclasses.replace(task_config, task_feature_dim=width), num_tasks
  )

  def init(key):
    keys = jax.random.split(key, 8)
    stacked = lambda k, n, i, o: jax.vmap(lambda k2: layers.dense_init(k2, i, o))(
      jax.random.split(k, n)
    )
    params = {
      "base": layers.mlp_init(keys[0], (in_dim, width, width)),
      "task": task_init(keys[1]),
      # [layer, module]: Dense(width, width)
      "modules": jax.vmap(lambda k: stacked(k, modules, width, width))(
        jax.random.split(keys[2], depth)
      ),
      "route_first": layers.dense_init(keys[3], width, routes),
      # W_u reads the previous routing logits; W_d gives the next ones (between layers).
      "route_up": stacked(keys[4], depth - 1, routes, width),
      "route_last": layers.dense_init(keys[6], width, modules),
      "output": layers.dense_init(keys[7], width, out_dim),
    }
    if depth > 2:  # no zero-size arrays: checkpoints cannot hold them
      params["route_down"] = stacked(keys[5], depth - 2, width, routes)
    return params

  def routing(params, embedding, mix):
    """(softmax weights between layers [N, L - 1, M, M], last weights [N, M])."""
    take = lambda name, i: jax.tree.map(lambda p: p[i], params[name])
    logits = [layers.dense_apply(params["route_first"], jax.nn.relu(mix))]
    for layer in range(depth - 1):
      conditioned = jax.nn.relu(layers.dense_apply(take("route_up", layer), logits[-1]) * mix)
      down = take("route_down", layer) if layer < depth - 2 else params["route_last"]
      logits.append(layers.dense_apply(down, conditioned))
    between = jnp.stack(logits[:-1], 1).reshape(embedding.shape[0], depth - 1, modules, modules)
    return jax.nn.softmax(between, axis=-1), jax.nn.softmax(logits[-1], axis=-1)

  def module_layer(params, layer, inputs):
    """All modules of one layer at once: [M, N, width] -> [M, N, width], no activation."""
    w, b = params["modules"]["w"][layer], params["modules"]["b"][layer]
    return jnp.einsum("mnd,mde->mne", inputs, w) + b[:, None, :]

  def apply(params, x, task_ids):
    groups, batch = x.shape[:2]
    rows = x.reshape(groups * batch, x.shape[-1])
    embedding = layers.mlp_apply(params["base"], rows)  # f(x), [N, W]
    task = task_apply(params["task"], task_ids)  # h(z), [G, W]
    mix = (embedding.reshape(groups, batch, width) * task[:, None]).reshape(-1, width)
    between, last = routing(params, embedding, mix)
    hidden = module_layer(
      params, 0, jnp.broadcast_to(jax.nn.relu(embedding), (modules, *embedding.shape))
    )
    for layer in range(1, depth):
      mixed = jnp.einsum("nji,ind->jnd", between[:, layer - 1], hidden)
      hidden = module_layer(params, layer, jax.nn.relu(mixed))
    out = layers.dense_apply(params["output"], jax.nn.relu(jnp.einsum("ni,ind->nd", last, hidden)))
    weights = jnp.concatenate(
      [between.reshape(groups * batch, (depth - 1) * modules, modules), last[:, None]], axis=1
    )
    return (
      out.reshape(groups, batch, out_dim),
      weights.reshape(groups, batch, *weights.shape[1:]),
    )

  return SoftModularNet(init=init, apply=apply)


def make_soft_modular_actor(
  config: SoftModuConfig,
  task_config: TaskEncoderConfig,
  num_tasks: int,
  obs_dim: int,
  action_dim: int,
  log_std_min: float,
  log_std_max: float,
) -> Actor:
  """The policy as one soft-modular network on the state, routing included."""
  net = make_soft_modular_net(config, task_config, num_tasks, obs_dim, 2 * action_dim)

  def apply(params, features, task_ids):
    mean, raw_log_std = jnp.split(net.apply(params, features, task_ids)[0], 2, axis=-1)
    return mean, distributions.rescale_log_std(raw_log_std, log_std_min, log_std_max)

  def routing(params, features, task_ids):
    return net.apply(params, features, task_ids)[1]

  return Actor(init=net.init, apply=apply, routing=routing)


def make_soft_modular_critic(
  config: SoftModuConfig,
  task_config: TaskEncoderConfig,
  num_tasks: int,
  obs_dim: int,
  action_dim: int,
  num_q: int = 2,
) -> Critic:
  """`num_q` Q-functions, each a whole soft-modular network on [state; action] with its own
  routing, stacked on a leading axis (one batched op per layer)."""
  net = make_soft_modular_net(config, task_config, num_tasks, obs_dim + action_dim, 1)

  def init(key):
    return jax.vmap(net.init)(jax.random.split(key, num_q))

  def apply(params, features, action, task_ids):
    x = jnp.concatenate([features, action], axis=-1)
    q, _ = jax.vmap(net.apply, in_axes=(0, None, None))(params, x, task_ids)
    return q[..., 0]

  return Critic(init=init, apply=apply)
