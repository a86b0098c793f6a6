"""CMTA's encoder (contrastive modules with temporal attention) and its InfoNCE term.

The same mixture-of-experts encoder also serves CARE: there the task vector
comes from a frozen pretrained description embedding instead of a learned
table, and there is no temporal input (docs/algorithm.md §6).
"""

import jax
import jax.numpy as jnp
import numpy as np

from cmta_jax.agents.networks import AuxiliaryLoss, Encoder, EncoderOutput
from cmta_jax.agents.task_encoder import make_task_encoder
from cmta_jax.config import MixtureConfig, TaskEncoderConfig
from cmta_jax.nn import distributions, layers
from cmta_jax.types import LSTMCarry


def make_mixture_encoder(
  config: MixtureConfig,
  task_config: TaskEncoderConfig,
  num_tasks: int,
  obs_dim: int,
  carry_mode: str = "stored",
  pretrained_task_embeddings: np.ndarray | None = None,
) -> Encoder:
  """(s_t, task, carry_in) -> ([z_task; z_enc], carry_out, experts, attention).

  z_task = g(task) (`task_encoder.py`). Experts f^j(s_t) are one stacked, batched
  MLP. The attention is softmax(W [stop_grad(z_task); h_t] / temperature), with h_t
  from one LSTM step on s_t when `config.temporal_attention`; W is one Dense layer, or an
  MLP with `config.attention_hidden` (CARE). How the carry is
  advanced and stored depends on `carry_mode` (docs/carry_modes.md):
    stored, burn_in: h_t and carry_out = lstm(s_t, carry_in), one trained LSTM.
    frozen_memory: h_t = lstm(s_t, carry_in).h with the trained LSTM, while
      carry_out = memory_lstm(s_t, carry_in) from an LSTM that no loss trains
      (its parameters are used under stop_gradient), so stored carries stay exact.
    frozen_lstm: h_t and carry_out = lstm(s_t, carry_in) with the one LSTM under
      stop_gradient: a random recurrence that never changes (stored carries exact),
      read by a trained attention.
  """
  temporal = config.temporal_attention
  carry_dim = config.lstm_hidden if temporal else 0
  frozen_memory = temporal and carry_mode == "frozen_memory"
  frozen_lstm = temporal and carry_mode == "frozen_lstm"
  task_init, task_apply = make_task_encoder(task_config, num_tasks, pretrained_task_embeddings)
  attention_in = task_config.task_feature_dim + carry_dim
  # One Dense layer (its own parameter layout, which CMTA checkpoints hold) or an MLP.
  attention_mlp = bool(config.attention_hidden)
  attention_sizes = (attention_in, *config.attention_hidden, config.num_experts)

  def init(key):
    k_task, k_experts, k_lstm, k_attention, k_memory = jax.random.split(key, 5)
    params = {
      **task_init(k_task),
      "experts": layers.stacked_mlp_init(
        k_experts, config.num_experts, (obs_dim, config.expert_hidden, config.expert_dim)
      ),
      "attention": layers.mlp_init(k_attention, attention_sizes)
      if attention_mlp
      else layers.dense_init(k_attention, attention_in, config.num_experts),
    }
    if temporal:
      params["lstm"] = layers.lstm_init(k_lstm, obs_dim, config.lstm_hidden)
    if frozen_memory:
      params["memory_lstm"] = layers.lstm_init(k_memory, obs_dim, config.lstm_hidden)
    return params

  def advance_carry(params, obs, carry_in: LSTMCarry) -> LSTMCarry:
    """The carry recurrence: what acting stores as carry_out, and what burn-in replays."""
    if frozen_memory:
      return layers.lstm_apply(jax.lax.stop_gradient(params["memory_lstm"]), obs, carry_in)
    if frozen_lstm:
      return layers.lstm_apply(jax.lax.stop_gradient(params["lstm"]), obs, carry_in)
    return layers.lstm_apply(params["lstm"], obs, carry_in)

  def apply(params, obs, task_ids, carry_in: LSTMCarry) -> EncoderOutput:
    groups, batch = obs.shape[:2]
    # z_task is computed once per group and broadcast over its rows.
    z_task = task_apply(params, task_ids)  # [G, F_task]
    z_task = jnp.broadcast_to(z_task[:, None], (groups, batch, z_task.shape[-1]))
    experts = layers.stacked_mlp_apply(params["experts"], obs)  # [k, G, B, d]
    # The attention must not train the task encoder (reference code detaches it).
    attention_input = jax.lax.stop_gradient(z_task)
    if temporal:
      carry_out = advance_carry(params, obs, carry_in)
      h = layers.lstm_apply(params["lstm"], obs, carry_in).h if frozen_memory else carry_out.h
      attention_input = jnp.concatenate([attention_input, h], axis=-1)
    else:
      carry_out = carry_in
    if attention_mlp:
      logits = layers.mlp_apply(params["attention"], attention_input)
    else:
      logits = layers.dense_apply(params["attention"], attention_input)
    attention = jax.nn.softmax(logits / config.attention_temperature, axis=-1)  # [G, B, k]
    z_enc = jnp.einsum("gbk,kgbd->gbd", attention, experts)
    features = jnp.concatenate([z_task, z_enc], axis=-1)
    return EncoderOutput(features=features, carry=carry_out, experts=experts, attention=attention)

  def contrastive_loss(online_t: EncoderOutput, target_next: EncoderOutput) -> jax.Array:
    return info_nce_per_sample(
      online_t.experts, target_next.experts, config.contrastive_temperature
    )

  return Encoder(
    init=init,
    apply=apply,
    feature_dim=task_config.task_feature_dim + config.expert_dim,
    carry_dim=carry_dim,
    advance_carry=advance_carry if temporal else None,
    auxiliary_loss=AuxiliaryLoss("contrastive_loss", contrastive_loss),
    diagnostics=attention_diagnostics,
  )


def attention_diagnostics(out: EncoderOutput) -> dict[str, jax.Array]:
  """{"attention_entropy": [G, B]}: each sample's mixture entropy in nats (log k = uniform)."""
  return {"attention_entropy": distributions.categorical_entropy(out.attention)}


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
