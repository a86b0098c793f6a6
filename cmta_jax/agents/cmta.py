"""CMTA's encoder (contrastive modules with temporal attention) and its InfoNCE term.

The same mixture-of-experts encoder also serves CARE: there the task vector
comes from a frozen pretrained description embedding instead of a learned
table, and there is no temporal input (SPEC §6).
"""

import jax
import jax.numpy as jnp
import numpy as np

from cmta_jax.agents.networks import Encoder, EncoderOutput
from cmta_jax.config import NetworkConfig
from cmta_jax.nn import layers
from cmta_jax.types import LSTMCarry


def make_mixture_encoder(config: NetworkConfig, num_tasks: int, obs_dim: int,
                         pretrained_task_embeddings: np.ndarray | None = None) -> Encoder:
  """(s_t, task, carry_in) -> ([z_task; z_enc], carry_out, experts, attention).

  z_task = g(task): learned Embedding(T, 64) or a fixed pretrained vector,
  then ReLU and an MLP. Experts f^j(s_t) are one stacked, batched MLP. The
  attention is softmax(W [stop_grad(z_task); h_t] / temperature), with h_t
  from one LSTM step on s_t when `config.temporal_attention`.
  """
  temporal = config.temporal_attention
  carry_dim = config.lstm_hidden if temporal else 0
  if pretrained_task_embeddings is not None:
    pretrained = jnp.asarray(pretrained_task_embeddings, jnp.float32)
    if pretrained.ndim != 2 or pretrained.shape[0] != num_tasks:
      raise ValueError(f"pretrained task embeddings must be [{num_tasks}, dim], got {pretrained.shape}")
    task_input_dim = pretrained.shape[1]
  else:
    pretrained = None
    task_input_dim = config.task_embedding_dim
  task_encoder_sizes = (task_input_dim, *config.task_encoder_hidden, config.task_feature_dim)
  attention_in = config.task_feature_dim + carry_dim

  def init(key):
    k_table, k_task, k_experts, k_lstm, k_attention = jax.random.split(key, 5)
    params = {
        "task_encoder": layers.mlp_init(k_task, task_encoder_sizes),
        "experts": layers.stacked_mlp_init(
            k_experts, config.num_experts, (obs_dim, config.expert_hidden, config.expert_dim)),
        "attention": layers.dense_init(k_attention, attention_in, config.num_experts),
    }
    if pretrained is None:
      params["task_embedding"] = layers.glorot_uniform(k_table, num_tasks, config.task_embedding_dim)
    if temporal:
      params["lstm"] = layers.lstm_init(k_lstm, obs_dim, config.lstm_hidden)
    return params

  def apply(params, obs, task_ids, carry_in: LSTMCarry) -> EncoderOutput:
    groups, batch = obs.shape[:2]
    table = pretrained if pretrained is not None else params["task_embedding"]
    # z_task is computed once per group and broadcast over its rows.
    z_task = layers.mlp_apply(params["task_encoder"], jax.nn.relu(table[task_ids]))  # [G, F_task]
    z_task = jnp.broadcast_to(z_task[:, None], (groups, batch, z_task.shape[-1]))
    experts = layers.stacked_mlp_apply(params["experts"], obs)  # [k, G, B, d]
    # The attention must not train the task encoder (reference code detaches it).
    attention_input = jax.lax.stop_gradient(z_task)
    if temporal:
      carry_out = layers.lstm_apply(params["lstm"], obs, carry_in)
      attention_input = jnp.concatenate([attention_input, carry_out.h], axis=-1)
    else:
      carry_out = carry_in
    logits = layers.dense_apply(params["attention"], attention_input)
    attention = jax.nn.softmax(logits / config.attention_temperature, axis=-1)  # [G, B, k]
    z_enc = jnp.einsum("gbk,kgbd->gbd", attention, experts)
    features = jnp.concatenate([z_task, z_enc], axis=-1)
    return EncoderOutput(features=features, carry=carry_out, experts=experts, attention=attention)

  return Encoder(init=init, apply=apply, feature_dim=config.task_feature_dim + config.expert_dim,
                 carry_dim=carry_dim)


def _l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def info_nce_per_sample(queries: jax.Array, positives: jax.Array, temperature: float) -> jax.Array:
  """Eq. 3 per sample: experts must differ from each other and stay consistent over time.

  queries [k, ..., d]: z^i_t from the online encoder; positives [k, ..., d]:
  z^i_{t+1} from the target encoder (gradient stopped here). For expert i and
  a sample the logits are [q_i.k+_i, q_i.q_j (j != i)] / temperature with the
  positive as label. Returns [...]: each sample's cross-entropy SUMMED over
  the k experts (the loss is its mean over the batch, see `info_nce`).
  """
  q = _l2_normalize(queries)
  k_pos = jax.lax.stop_gradient(_l2_normalize(positives))
  num_experts = q.shape[0]
  positive_logits = jnp.einsum("i...d,i...d->...i", q, k_pos) / temperature  # [..., k]
  pair_logits = jnp.einsum("i...d,j...d->...ij", q, q) / temperature  # [..., k, k]
  # Row i: the diagonal (q_i.q_i) is replaced by the positive; the rest are the negatives.
  is_self = jnp.eye(num_experts, dtype=bool)
  logits = jnp.where(is_self, positive_logits[..., :, None], pair_logits)
  per_expert = jax.nn.logsumexp(logits, axis=-1) - positive_logits  # [..., k]
  return per_expert.sum(axis=-1)


def info_nce(queries: jax.Array, positives: jax.Array, temperature: float) -> jax.Array:
  """Eq. 3 for one batch [k, B, d]: mean over the batch, SUM over the k experts."""
  return info_nce_per_sample(queries, positives, temperature).mean()
