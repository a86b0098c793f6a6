"""Encoders of the paper's baselines (docs/algorithm.md §6). Each one plugs into the same SAC update.

MT-SAC, MTMH-SAC and Single-SAC feed the state itself to the heads (their
difference is the head layout, see `networks.py`); MT-SAC+TE adds a learned
task encoding; Soft Modularization routes the state through a modular
network with task-and-state dependent soft weights. CARE is the mixture
encoder of `cmta.py` with a pretrained task embedding and no temporal input.
"""

import jax
import jax.numpy as jnp

from cmta_jax.agents.networks import Encoder, EncoderOutput
from cmta_jax.agents.task_encoder import make_task_encoder
from cmta_jax.config import SoftModuConfig, TaskEncoderConfig
from cmta_jax.nn import distributions, layers
from cmta_jax.types import LSTMCarry


def make_state_encoder(obs_dim: int) -> Encoder:
  """features = s_t (no parameters, no recurrence)."""

  def apply(params, obs, task_ids, carry_in: LSTMCarry) -> EncoderOutput:
    return EncoderOutput(features=obs, carry=carry_in, experts=None, attention=None)

  return Encoder(init=lambda key: {}, apply=apply, feature_dim=obs_dim, carry_dim=0)


def make_task_state_encoder(config: TaskEncoderConfig, num_tasks: int, obs_dim: int) -> Encoder:
  """MT-SAC+TE: features = [z_task; s_t]."""
  task_init, task_apply = make_task_encoder(config, num_tasks)

  def apply(params, obs, task_ids, carry_in: LSTMCarry) -> EncoderOutput:
    z_task = task_apply(params, task_ids)[:, None]  # [G, 1, F_task]
    z_task = jnp.broadcast_to(z_task, (*obs.shape[:2], config.task_feature_dim))
    return EncoderOutput(
      features=jnp.concatenate([z_task, obs], axis=-1), carry=carry_in, experts=None, attention=None
    )

  return Encoder(
    init=task_init, apply=apply, feature_dim=config.task_feature_dim + obs_dim, carry_dim=0
  )


def make_soft_modular_encoder(config: SoftModuConfig, num_tasks: int, obs_dim: int) -> Encoder:
  """Soft Modularization (Yang et al. 2020), as an encoder.

  Base network: `softmodu_layers` layers of `softmodu_modules` modules (Dense
  width -> width, ReLU). Module j of layer l+1 reads sum_i w^l[j, i] * out^l_i.
  Routing: e = relu(state embedding) * task embedding; the first weights are
  W_d relu(e); later ones W_d relu(W_u p^{l-1} * e); each row is a softmax over
  the previous layer's modules. Features: the mean of the last layer's modules.
  No loss balancing (the paper's fairness choice).
  """
  depth, modules, width = config.softmodu_layers, config.softmodu_modules, config.softmodu_width
  routes = modules * modules

  def init(key):
    keys = jax.random.split(key, 6)
    params = {
      "state_embedding": layers.dense_init(keys[0], obs_dim, width),
      "task_embedding": layers.glorot_uniform(keys[1], num_tasks, width),
      # [layer, module] stacked Dense(width, width)
      "modules": jax.vmap(
        lambda k: jax.vmap(lambda k2: layers.dense_init(k2, width, width))(
          jax.random.split(k, modules)
        )
      )(jax.random.split(keys[2], depth)),
      "route_first": layers.dense_init(keys[3], width, routes),
    }
    if depth > 2:
      params["route_up"] = jax.vmap(lambda k: layers.dense_init(k, routes, width))(
        jax.random.split(keys[4], depth - 2)
      )
      params["route_down"] = jax.vmap(lambda k: layers.dense_init(k, width, routes))(
        jax.random.split(keys[5], depth - 2)
      )
    return params

  def routing_weights(params, state_embedding, row_task_ids):
    """[N, depth - 1, modules, modules]; each [.., j, :] is a distribution over input modules."""
    mix = state_embedding * params["task_embedding"][row_task_ids]
    batch = state_embedding.shape[0]
    logits = [layers.dense_apply(params["route_first"], jax.nn.relu(mix))]
    for layer in range(depth - 2):
      up, down = (
        jax.tree.map(lambda p, layer=layer: p[layer], params[name])
        for name in ("route_up", "route_down")
      )
      previous = jax.nn.softmax(logits[-1].reshape(batch, modules, modules), -1).reshape(
        batch, routes
      )
      logits.append(layers.dense_apply(down, jax.nn.relu(layers.dense_apply(up, previous) * mix)))
    return jax.nn.softmax(jnp.stack(logits, 1).reshape(batch, depth - 1, modules, modules), axis=-1)

  def module_layer(params, layer, inputs):
    """All modules of one layer at once: inputs [modules, B, width] -> [modules, B, width]."""
    w, b = params["modules"]["w"][layer], params["modules"]["b"][layer]
    return jax.nn.relu(jnp.einsum("mbd,mde->mbe", inputs, w) + b[:, None, :])

  def apply(params, obs, task_ids, carry_in: LSTMCarry) -> EncoderOutput:
    groups, batch = obs.shape[:2]
    rows = obs.reshape(groups * batch, obs.shape[-1])
    row_task_ids = jnp.repeat(task_ids, batch, total_repeat_length=groups * batch)
    state_embedding = jax.nn.relu(layers.dense_apply(params["state_embedding"], rows))
    weights = routing_weights(params, state_embedding, row_task_ids)
    hidden = module_layer(
      params, 0, jnp.broadcast_to(state_embedding, (modules, *state_embedding.shape))
    )
    for layer in range(1, depth):
      hidden = module_layer(
        params, layer, jnp.einsum("bji,ibd->jbd", weights[:, layer - 1], hidden)
      )
    return EncoderOutput(
      features=hidden.mean(axis=0).reshape(groups, batch, width),
      carry=carry_in,
      experts=None,
      attention=weights.reshape(groups, batch, *weights.shape[1:]),
    )

  def routing_diagnostics(out: EncoderOutput) -> dict[str, jax.Array]:
    """{"attention_entropy": [G, B]}: the mean entropy of a sample's routing distributions."""
    return {
      "attention_entropy": distributions.categorical_entropy(out.attention).mean(axis=(-2, -1))
    }

  return Encoder(
    init=init, apply=apply, feature_dim=width, carry_dim=0, diagnostics=routing_diagnostics
  )
