"""Encoders of the paper's baselines (docs/algorithm.md §6). Each one plugs into the same SAC update.

MT-SAC, MTMH-SAC and Single-SAC feed the state itself to the heads (their
difference is the head layout, see `networks.py`); MT-SAC+TE adds a learned
task encoding. Soft Modularization feeds the state to its own routed actor and
critics (`soft_modularization.py`). CARE is the mixture encoder of `cmta.py`
with a pretrained task embedding and no temporal input.
"""

import jax.numpy as jnp

from cmta_jax.agents.networks import Encoder, EncoderOutput
from cmta_jax.agents.task_encoder import make_task_encoder
from cmta_jax.config import TaskEncoderConfig
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
