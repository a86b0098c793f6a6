"""A new agent is one module with an encoder factory plus one registry entry (README, "Adding
an agent"): a FiLM-conditioned encoder, registered here, trains through the unchanged SAC update
and training loop, checkpoint and exact resume included. Malformed agents fail in one line."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from cmta_jax import config as config_lib
from cmta_jax import testing
from cmta_jax.agents import registry
from cmta_jax.agents.networks import Encoder, EncoderOutput
from cmta_jax.envs.metaworld_env import ACTION_DIM, OBS_DIM, task_names
from cmta_jax.nn import layers
from cmta_jax.training import launch

FILM_WIDTH = 16


# ---- the whole new agent: an encoder factory ...


def make_film_encoder(config, names, obs_dim) -> Encoder:
  """FiLM (Perez et al. 2018): features = relu(W s) * (1 + gamma_task) + beta_task."""
  del config  # (a real agent would read its widths here)
  num_tasks = len(names)

  def init(key):
    k_state, k_film = jax.random.split(key)
    return {
      "state": layers.dense_init(k_state, obs_dim, FILM_WIDTH),
      "film": 0.1 * jax.random.normal(k_film, (num_tasks, 2 * FILM_WIDTH)),
    }

  def apply(params, obs, task_ids, carry_in):
    hidden = jax.nn.relu(layers.dense_apply(params["state"], obs))  # [G, B, W]
    gamma, beta = jnp.split(params["film"][task_ids][:, None], 2, axis=-1)  # [G, 1, W] each
    return EncoderOutput(
      features=hidden * (1.0 + gamma) + beta, carry=carry_in, experts=None, attention=None
    )

  return Encoder(init=init, apply=apply, feature_dim=FILM_WIDTH, carry_dim=0)


# ---- ... and one registry entry.
FILM_SPEC = registry.AgentSpec(
  make_film_encoder,
  "shared",
  "FiLM: task-conditioned state features",
  {"sac.auxiliary_weight": 0.0},
)


@pytest.fixture
def film_agent():
  registry.register("film", FILM_SPEC)
  yield "film"
  registry.AGENT_SPECS.pop("film")


def _config(total_steps: int) -> config_lib.RunConfig:
  return testing.run_config(
    "film",
    hidden_width=32,
    episode_length=20,
    total_steps=total_steps,
    warmup_steps=20,
    batch_per_task=8,
    replay_capacity=10_000,
    eval_every=40,
    log_every=20,
    checkpoint_every=20,
  )


def _state(run_dir: str, step: int):
  manager = ocp.CheckpointManager(os.path.join(run_dir, "checkpoints"))
  try:
    return jax.device_get(
      manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    )
  finally:
    manager.close()


@pytest.mark.slow
def test_a_registered_film_agent_trains_checkpoints_and_resumes_exactly(film_agent, tmp_path):
  full, half = str(tmp_path / "full"), str(tmp_path / "half")

  def train(total_steps, run_dir):
    return launch.train(
      _config(total_steps), run_dir, log=lambda line: None, envs=testing.CACHED_METAWORLD
    )

  summary = train(60, full)
  train(40, half)
  assert train(60, half) == summary
  resumed, uninterrupted = _state(half, 60), _state(full, 60)
  for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(uninterrupted)):
    np.testing.assert_array_equal(a, b)
  encoder = resumed["train_state"]["params"]["encoder"]
  assert encoder["film"].shape == (10, 2 * FILM_WIDTH)
  initial = make_film_encoder(None, task_names("MT10"), OBS_DIM).init(jax.random.PRNGKey(0))
  assert not np.allclose(encoder["film"], initial["film"])  # the critic loss trained it


def test_malformed_agents_fail_at_registration_in_one_line():
  good = FILM_SPEC
  cases = [
    ("Film", good, "lower_snake_case"),
    ("cmta", good, "already registered"),
    ("film_x", good._replace(head_layout="per_task"), "unknown head layout 'per_task'"),
    ("film_x", good._replace(make_encoder=None), "make_encoder is callable"),
    ("film_x", good._replace(help=" "), "help text"),
    (
      "film_x",
      good._replace(defaults={"sac.beta": 1.0}),
      "unknown config fields in defaults: sac.beta",
    ),
  ]
  for name, spec, message in cases:
    with pytest.raises(ValueError, match=message) as error:
      registry.register(name, spec)
    assert "\n" not in str(error.value)
    assert name == "cmta" or name not in registry.AGENT_SPECS


def test_an_encoder_whose_outputs_break_its_declaration_fails_when_built():
  def wrong_width(config, names, obs_dim):
    encoder = make_film_encoder(config, names, obs_dim)
    return encoder._replace(feature_dim=FILM_WIDTH + 1)

  registry.register("film_wrong", FILM_SPEC._replace(make_encoder=wrong_width))
  try:
    with pytest.raises(
      ValueError,
      match=r"agent 'film_wrong': its encoder returns features "
      r"\(2, 3, 16\) \(expected \(2, 3, 17\)\)",
    ):
      registry.make_agent_networks(
        config_lib.RunConfig(agent="film_wrong"), task_names("MT10"), OBS_DIM, ACTION_DIM
      )
  finally:
    registry.AGENT_SPECS.pop("film_wrong")
