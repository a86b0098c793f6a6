"""The task encoder g(task) -> z_task shared by CMTA, CARE and MT-SAC+TE (docs/algorithm.md).

g = Embedding(T, 64) -> ReLU -> MLP (128, 64, 64) -> Dense 64, no activation at
the end. The embedding table is initialised N(0, 1), as PyTorch's nn.Embedding
in the authors' code: a Glorot table makes z_task about 6x smaller at
initialisation, and CMTA's attention then reads mostly the LSTM half of its
input. CARE replaces the learned table by a frozen pretrained vector per task.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from cmta_jax.config import TaskEncoderConfig
from cmta_jax.nn import layers


def make_task_encoder(
  config: TaskEncoderConfig, num_tasks: int, pretrained_embeddings: np.ndarray | None = None
) -> tuple[Callable, Callable]:
  """Returns (init(key) -> params, apply(params, task_ids [G] int32) -> z_task [G, F_task]).

  params = {"task_embedding": [T, E] (absent with `pretrained_embeddings`),
  "task_encoder": MLP}. Raises ValueError if `pretrained_embeddings` is not [T, dim].
  """
  if pretrained_embeddings is not None:
    pretrained = jnp.asarray(pretrained_embeddings, jnp.float32)
    if pretrained.ndim != 2 or pretrained.shape[0] != num_tasks:
      raise ValueError(
        f"pretrained task embeddings must be [{num_tasks}, dim], got {pretrained.shape}"
      )
    input_dim = pretrained.shape[1]
  else:
    pretrained = None
    input_dim = config.task_embedding_dim
  sizes = (input_dim, *config.task_encoder_hidden, config.task_feature_dim)

  def init(key):
    k_table, k_mlp = jax.random.split(key)
    params = {"task_encoder": layers.mlp_init(k_mlp, sizes)}
    if pretrained is None:
      params["task_embedding"] = jax.random.normal(k_table, (num_tasks, input_dim), jnp.float32)
    return params

  def apply(params, task_ids):
    table = pretrained if pretrained is not None else params["task_embedding"]
    return layers.mlp_apply(params["task_encoder"], jax.nn.relu(table[task_ids]))

  return init, apply
