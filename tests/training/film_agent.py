"""An agent defined outside the package, as a user would write one: a FiLM-conditioned encoder
(Perez et al. 2018) with its own hyperparameter section, registered by one call on import.
Commands reach it with `--agent_module=film_agent --agent=film` (its directory on PYTHONPATH).
"""

import dataclasses

import jax
import jax.numpy as jnp

from cmta_jax.agents import registry
from cmta_jax.agents.networks import Encoder, EncoderOutput
from cmta_jax.config import validate_fields
from cmta_jax.nn import layers


def _positive(name, value):
  if not isinstance(value, int) or value < 1:
    raise ValueError(f"{name} must be a positive integer, got {value!r}")


@dataclasses.dataclass(frozen=True)
class FilmConfig:
  """FiLM encoder: state features scaled and shifted per task."""

  film_width: int = dataclasses.field(default=16, metadata={"check": _positive})
  film_init_scale: float = 0.1  # of the per-task (gamma, beta) table at initialisation

  def validate(self) -> None:
    validate_fields(self)


def make_film_encoder(run_config, task_names, obs_dim) -> Encoder:
  """features = relu(W s) * (1 + gamma_task) + beta_task."""
  config: FilmConfig = run_config.film
  width, num_tasks = config.film_width, len(task_names)

  def init(key):
    k_state, k_film = jax.random.split(key)
    return {
      "state": layers.dense_init(k_state, obs_dim, width),
      "film": config.film_init_scale * jax.random.normal(k_film, (num_tasks, 2 * width)),
    }

  def apply(params, obs, task_ids, carry_in):
    hidden = jax.nn.relu(layers.dense_apply(params["state"], obs))  # [G, B, W]
    gamma, beta = jnp.split(params["film"][task_ids][:, None], 2, axis=-1)  # [G, 1, W] each
    return EncoderOutput(
      features=hidden * (1.0 + gamma) + beta, carry=carry_in, experts=None, attention=None
    )

  return Encoder(init=init, apply=apply, feature_dim=width, carry_dim=0)


SPEC = registry.AgentSpec(
  make_film_encoder,
  "shared",
  "FiLM: task-conditioned state features",
  defaults={"sac.auxiliary_weight": 0.0},
  sections={"film": FilmConfig},
)
registry.register("film", SPEC)
