"""A new agent is one module outside the package (tests/training/film_agent.py: a FiLM encoder
with its own hyperparameter section) plus the one `register` call it makes on import: it trains
through the unchanged SAC update and training loop, checkpoint and exact resume included; the
command line reaches it with --agent_module, its section's fields are flags with their checks.
Malformed agents fail in one line."""

import dataclasses
import importlib
import json
import os
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from cmta_jax import config as config_lib
from cmta_jax import testing
from cmta_jax.agents import registry
from cmta_jax.envs.metaworld_env import ACTION_DIM, OBS_DIM, task_names
from cmta_jax.training import launch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
TRAIN = os.path.join(REPO, "experiments", "train.py")


@pytest.fixture
def film():
  """The film_agent module, imported (so registered) for this test only."""
  sys.modules.pop("film_agent", None)
  module = importlib.import_module("film_agent")
  yield module
  registry.unregister("film")
  sys.modules.pop("film_agent", None)


def _config(total_steps: int, **fields) -> config_lib.RunConfig:
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
    **fields,
  )


def _state(run_dir: str, step: int):
  manager = ocp.CheckpointManager(os.path.join(run_dir, "checkpoints"))
  try:
    return jax.device_get(
      manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    )
  finally:
    manager.close()


def test_the_agents_section_is_part_of_every_run_config_while_it_is_registered(film):
  config = config_lib.RunConfig()
  assert config.film == film.FilmConfig()
  assert config_lib.flatten(config)["film.film_width"] == 16
  changed = config_lib.replace_fields(config, film_width=8)
  assert changed.film.film_width == 8 and config.film.film_width == 16
  assert config_lib.from_flat(config_lib.flatten(changed)) == changed
  with pytest.raises(ValueError, match="film_width must be a positive integer, got 0"):
    config_lib.replace_fields(changed, film_width=0).validate()
  registry.check_explicit_fields(dataclasses.replace(config, agent="film"), {"film.film_width"})
  with pytest.raises(ValueError, match="--film_width sets the film section, which agent 'cmta'"):
    registry.check_explicit_fields(config, {"film.film_width"})


def test_unregistering_removes_the_section():
  sys.modules.pop("film_agent", None)
  importlib.import_module("film_agent")
  registry.unregister("film")
  sys.modules.pop("film_agent", None)
  assert "film" not in config_lib.RunConfig().sections()
  assert not any(path.startswith("film.") for path in config_lib.flatten(config_lib.RunConfig()))


@pytest.mark.slow
def test_the_film_agent_trains_with_its_own_width_checkpoints_and_resumes_exactly(film, tmp_path):
  full, half = str(tmp_path / "full"), str(tmp_path / "half")

  def train(total_steps, run_dir):
    return launch.train(
      _config(total_steps, film_width=8), run_dir, log=lambda line: None,
      envs=testing.CACHED_METAWORLD,
    )  # fmt: skip

  summary = train(60, full)
  train(40, half)
  assert train(60, half) == summary
  resumed, uninterrupted = _state(half, 60), _state(full, 60)
  for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(uninterrupted)):
    np.testing.assert_array_equal(a, b)
  encoder = resumed["train_state"]["params"]["encoder"]
  assert encoder["film"].shape == (10, 2 * 8)  # the section's film_width, not the default
  with open(os.path.join(full, "config.json")) as f:
    assert json.load(f)["film.film_width"] == 8
  initial = film.make_film_encoder(_config(60, film_width=8), task_names("MT10"), OBS_DIM).init(
    jax.random.PRNGKey(0)
  )
  assert not np.allclose(encoder["film"], initial["film"])  # the critic loss trained it


def _cli(*args, agent_module=True):
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")]))
  module = ["--agent_module=film_agent"] if agent_module else []
  return subprocess.run(
    [sys.executable, TRAIN, *module, *args], capture_output=True, text=True, env=env, timeout=600
  )


@pytest.mark.slow
def test_the_command_line_reaches_an_agent_outside_the_package(tmp_path):
  run_dir = str(tmp_path / "film")
  short = [
    "--agent=film",
    f"--run_dir={run_dir}",
    "--episode_length=20",
    "--total_steps=40",
    "--warmup_steps=20",
    "--batch_per_task=8",
    "--hidden_width=32",
    "--replay_capacity=10000",
    "--eval_every=40",
    "--log_every=20",
    "--checkpoint_every=20",
  ]
  helpfull = _cli("--helpfull")
  assert "--film_width" in helpfull.stdout and "FiLM encoder" in helpfull.stdout
  assert "film: FiLM: task-conditioned state features" in helpfull.stdout

  refused = _cli(*short, "--film_width=0")
  assert refused.returncode == 1 and not os.path.exists(run_dir)
  assert refused.stderr.strip() == "error: film_width must be a positive integer, got 0"

  without = _cli(*short, agent_module=False)
  assert without.returncode == 1 and len(without.stderr.strip().splitlines()) == 1
  assert "--agent" in without.stderr

  missing = _cli("--agent_module=no_such_agent_module", *short)
  assert missing.returncode == 1 and len(missing.stderr.strip().splitlines()) == 1
  assert "--agent_module=no_such_agent_module: cannot import it" in missing.stderr

  done = _cli(*short, "--film_width=4")
  assert done.returncode == 0, done.stderr[-2000:]
  with open(os.path.join(run_dir, "config.json")) as f:
    assert json.load(f)["film.film_width"] == 4


def test_malformed_agents_fail_at_registration_in_one_line(film):
  good = film.SPEC._replace(sections={})
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
    ("film_x", good._replace(reads=("mixtures",)), "reads unknown config sections mixtures"),
    ("film_x", good._replace(sections={"film": film.FilmConfig}), "section 'film' exists"),
    ("film_x", good._replace(sections={"film_x": dict}), "give a frozen dataclass"),
    (
      "film_x",
      good._replace(sections={"film_x": config_lib.HeadConfig}),
      r"field names already used \(each field is a flag\): hidden_width \(head.hidden_width\)",
    ),
  ]
  for name, spec, message in cases:
    with pytest.raises(ValueError, match=message) as error:
      registry.register(name, spec)
    assert "\n" not in str(error.value)
    assert name == "cmta" or name not in registry.AGENT_SPECS
  assert set(config_lib.RunConfig().sections()) >= {"film"} and "film_x" not in (
    config_lib.RunConfig().sections()
  )


def test_an_encoder_whose_outputs_break_its_declaration_fails_when_built(film):
  def wrong_width(config, names, obs_dim):
    encoder = film.make_film_encoder(config, names, obs_dim)
    return encoder._replace(feature_dim=encoder.feature_dim + 1)

  registry.register("film_wrong", film.SPEC._replace(make_encoder=wrong_width, sections={}))
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
    registry.unregister("film_wrong")
