"""The test helpers' batches have the layout train.py's sampler gives the update."""

import chex
import jax
import numpy as np
import pytest

from cmta_jax import testing
from cmta_jax.agents import registry
from cmta_jax.training import steps

TASKS = ("task-a", "task-b", "task-c")


def _networks(run_config):
  return registry.make_agent_networks(run_config, TASKS, obs_dim=39, action_dim=4)


@pytest.mark.parametrize(
  "agent, fields, window",
  [
    ("cmta", {}, 20),  # CMTA's default carry mode, burn_in, L = 20
    ("cmta", {"carry_mode": "stored"}, 0),
    ("mtsac", {}, 0),
  ],
)
def test_update_batch_is_laid_out_as_the_sampler_lays_out_this_config(agent, fields, window):
  run_config = testing.run_config(agent, hidden_width=16, **fields)
  networks = _networks(run_config)
  assert steps.burn_in_steps(run_config, networks) == window
  batch = testing.update_batch(run_config, networks, batch_per_task=5, seed=3)
  spec = steps.batch_spec(len(TASKS), 5, networks, window)
  chex.assert_trees_all_equal_structs(batch, spec)
  jax.tree.map(lambda x, s: chex.assert_shape(x, s.shape), batch, spec)
  if window:
    np.testing.assert_array_equal(batch.burn_in.mask, 1.0)
    chex.assert_trees_all_equal(batch.burn_in.carry, batch.carry_in)
  assert not np.asarray(batch.terminated).any()
