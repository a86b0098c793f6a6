"""CMTA's encoder, actor, critic and action selection at their boundaries:
shapes, finiteness and ranges for T = 1, 10, 50, the paper's default sizes,
what the attention may train, and that the LSTM carry really flows."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from cmta_jax.agents import sac
from cmta_jax.config import RunConfig, SACConfig
from cmta_jax.nn import layers


def check_encoder_output(out, groups: int, batch: int, feature_dim: int, carry_dim: int) -> None:
  """chex boundary check (static shapes, so free under jit)."""
  chex.assert_shape(out.features, (groups, batch, feature_dim))
  chex.assert_shape([out.carry.h, out.carry.c], (groups, batch, carry_dim))


def _task_inputs(setup, task_id: int):
  """Task `task_id`'s obs [1, B, obs_dim] and (non-zero) carry_in from the setup's batch, as
  a group of one task (the networks' input layout), in NumPy."""
  obs = np.asarray(setup.batch.obs)[task_id][None]
  carry = jax.tree.map(lambda x: np.asarray(x)[task_id][None], setup.batch.carry_in)
  return obs, carry


def _ids(*task_ids):
  return jnp.asarray(task_ids, jnp.int32)


def _first_step_of_each_task(setup):
  """obs [T, obs_dim] and carry [T, H]: one environment per task, as when acting."""
  obs = np.asarray(setup.batch.obs)[:, 0]
  carry = jax.tree.map(lambda x: np.asarray(x)[:, 0], setup.batch.carry_in)
  return obs, carry


class ModuleBoundariesTest(chex.TestCase):
  @pytest.fixture(autouse=True)
  def _inject_helpers(self, helpers):
    self.helpers = helpers

  def _check_boundaries(self, networks, network_config, params, obs, carry_in, task_ids):
    """Runs encoder -> actor -> critic under self.variant on the task-grouped batch
    obs [G, B, obs_dim] (group g is task task_ids[g]) and checks every boundary."""
    encoder_apply = self.variant(networks.encoder.apply)
    actor_apply = self.variant(networks.actor.apply)
    critic_apply = self.variant(networks.critic.apply)
    k, (groups, batch) = network_config.mixture.num_experts, obs.shape[:2]
    feature_dim = network_config.task_encoder.task_feature_dim + network_config.mixture.expert_dim
    carry_dim = network_config.mixture.lstm_hidden
    self.assertEqual(networks.encoder.feature_dim, feature_dim)
    self.assertEqual(networks.encoder.carry_dim, carry_dim)
    task_ids = jnp.asarray(task_ids, jnp.int32)  # traced under jit, as in the update
    encoder_out = encoder_apply(params["encoder"], obs, task_ids, carry_in)
    check_encoder_output(encoder_out, groups, batch, feature_dim, carry_dim)
    chex.assert_shape(encoder_out.experts, (k, groups, batch, network_config.mixture.expert_dim))
    chex.assert_shape(encoder_out.attention, (groups, batch, k))
    chex.assert_tree_all_finite(encoder_out)
    np.testing.assert_allclose(encoder_out.attention.sum(-1), np.ones((groups, batch)), rtol=1e-5)
    self.assertTrue(np.all(encoder_out.attention >= 0))
    # z_enc = sum_j alpha_j z^j, and z_task comes first.
    np.testing.assert_allclose(
      encoder_out.features[..., network_config.task_encoder.task_feature_dim :],
      np.einsum("gbk,kgbd->gbd", encoder_out.attention, encoder_out.experts),
      rtol=1e-4,
      atol=1e-5,
    )

    mean, log_std = actor_apply(params["actor"], encoder_out.features, task_ids)
    chex.assert_shape([mean, log_std], (groups, batch, networks.action_dim))
    chex.assert_tree_all_finite((mean, log_std))
    self.assertTrue(np.all(log_std >= network_config.head.log_std_min))
    self.assertTrue(np.all(log_std <= network_config.head.log_std_max))

    q = critic_apply(params["critic"], encoder_out.features, np.tanh(mean), task_ids)
    chex.assert_shape(q, (2, groups, batch))
    chex.assert_tree_all_finite(q)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(1, 10, 50)
  def test_boundaries_small_networks(self, num_tasks):
    setup = self.helpers.learner_setup(num_tasks=num_tasks)
    # The whole [T, B] batch at once, as the update sees it.
    self._check_boundaries(
      setup.networks,
      self.helpers.small_network_config(),
      setup.state.params,
      setup.batch.obs,
      setup.batch.carry_in,
      task_ids=np.arange(num_tasks),
    )

  @chex.variants(with_jit=True, without_jit=True)
  def test_boundaries_paper_sizes(self):
    network_config = RunConfig()
    networks = self.helpers.make_networks(10, network_config, obs_dim=39, action_dim=4)
    params = self.helpers.random_training_state(networks, SACConfig(), seed=0).params
    # docs/algorithm.md §2: [z_task (64); z_enc (64)], LSTM 64, 6 experts of 64, actor/critic 3 x 512.
    encoder = params["encoder"]
    self.assertEqual(
      [layer["w"].shape for layer in encoder["task_encoder"]],
      [(64, 128), (128, 64), (64, 64), (64, 64)],
    )
    self.assertEqual(encoder["task_embedding"].shape, (10, 64))
    self.assertEqual([layer["w"].shape for layer in encoder["experts"]], [(6, 39, 64), (6, 64, 64)])
    self.assertEqual(encoder["lstm"]["w_in"].shape, (39, 256))
    self.assertEqual(encoder["attention"]["w"].shape, (128, 6))
    self.assertEqual(
      [layer["w"].shape for layer in params["actor"]],
      [(128, 512), (512, 512), (512, 512), (512, 8)],
    )
    self.assertEqual(
      [layer["w"].shape for layer in params["critic"]],
      [(2, 132, 512), (2, 512, 512), (2, 512, 512), (2, 512, 1)],
    )
    batch = self.helpers.random_batch(0, 2, 8, 39, 4, 64)
    self._check_boundaries(
      networks, network_config, params, batch.obs, batch.carry_in, task_ids=[9, 3]
    )


@pytest.mark.parametrize("num_tasks", [1, 10, 50])
def test_select_action_boundaries(helpers, num_tasks):
  """Jitted only: its parts run eagerly above, and an eager vmap costs ~4 s per T here."""
  setup = helpers.learner_setup(num_tasks=num_tasks)
  networks = setup.networks
  obs, carry = _first_step_of_each_task(setup)
  for deterministic in (False, True):
    actions, carry_out = helpers.select_action_fn(networks)(
      sac.policy_params(setup.state),
      obs,
      np.arange(num_tasks),
      carry,
      jax.random.key(3),
      deterministic=deterministic,
    )
    chex.assert_shape(actions, (num_tasks, networks.action_dim))
    chex.assert_shape([carry_out.h, carry_out.c], (num_tasks, networks.encoder.carry_dim))
    chex.assert_tree_all_finite((actions, carry_out))
    assert np.all(np.abs(actions) <= 1.0)


def test_task_features_ignore_obs_and_differ_between_tasks(helpers):
  setup = helpers.learner_setup()
  obs, carry = _task_inputs(setup, 1)
  apply = jax.jit(setup.networks.encoder.apply)
  task_dim = helpers.small_network_config().task_encoder.task_feature_dim
  z_task_0 = apply(setup.state.params["encoder"], obs, _ids(0), carry).features[0, :, :task_dim]
  z_task_1 = apply(setup.state.params["encoder"], obs, _ids(1), carry).features[0, :, :task_dim]
  # One z_task per task, broadcast over the batch.
  np.testing.assert_array_equal(z_task_0, np.broadcast_to(z_task_0[:1], z_task_0.shape))
  assert not np.allclose(z_task_0, z_task_1)


def test_attention_is_trained_by_lstm_and_attention_layer_only(helpers):
  """The attention sees stop_grad(z_task): its gradient must not reach the task encoder."""
  setup = helpers.learner_setup()
  obs, carry = _task_inputs(setup, 1)
  weights = np.random.default_rng(0).normal(size=(*obs.shape[:2], 3)).astype(np.float32)

  def attention_objective(encoder_params):
    return jnp.sum(
      weights * setup.networks.encoder.apply(encoder_params, obs, _ids(1), carry).attention
    )

  grads = jax.jit(jax.grad(attention_objective))(setup.state.params["encoder"])
  for name, grad in helpers.flatten_with_names(grads).items():
    # memory_lstm (carry mode frozen_memory) only advances the carry, and is never trained.
    if name.startswith(("task_encoder", "task_embedding", "experts", "memory_lstm")):
      np.testing.assert_array_equal(grad, np.zeros_like(grad), err_msg=name)
    else:  # lstm/*, attention/*
      assert np.any(grad != 0), name


def test_carry_in_changes_the_critic_output(helpers):
  setup = helpers.learner_setup()
  networks, params = setup.networks, setup.state.params
  obs, carry = _task_inputs(setup, 1)
  action = np.zeros((*obs.shape[:2], networks.action_dim), np.float32)

  @jax.jit
  def q_values(carry_in):
    features = networks.encoder.apply(params["encoder"], obs, _ids(1), carry_in).features
    return networks.critic.apply(params["critic"], features, action, _ids(1))

  other_carry = jax.tree.map(lambda x: -x, carry)
  assert np.all(q_values(carry) != q_values(other_carry))


@pytest.mark.parametrize("mode,lstm", [("stored", "lstm"), ("frozen_memory", "memory_lstm")])
def test_select_action_carry_is_one_lstm_step(helpers, mode, lstm):
  """The carry acting stores: one step of the trained LSTM, or of the frozen memory LSTM."""
  setup = helpers.learner_setup(network_config=helpers.small_network_config(carry_mode=mode))
  num_tasks, params = setup.networks.num_tasks, setup.state.params
  obs, carry = _first_step_of_each_task(setup)
  expected = jax.jit(layers.lstm_apply)(params["encoder"][lstm], obs, carry)
  for deterministic in (False, True):
    _, carry_out = helpers.select_action_fn(setup.networks)(
      sac.policy_params(setup.state),
      obs,
      np.arange(num_tasks),
      carry,
      jax.random.key(0),
      deterministic=deterministic,
    )
    np.testing.assert_allclose(carry_out.h, expected.h, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(carry_out.c, expected.c, rtol=1e-5, atol=1e-6)


def test_deterministic_action_is_tanh_of_the_actor_mean(helpers):
  setup = helpers.learner_setup()
  networks, params = setup.networks, setup.state.params
  num_tasks = networks.num_tasks
  obs, carry = _first_step_of_each_task(setup)
  actions, _ = helpers.select_action_fn(networks)(
    sac.policy_params(setup.state),
    obs,
    np.arange(num_tasks),
    carry,
    jax.random.key(0),
    deterministic=True,
  )

  @jax.jit
  def expected_actions():
    # Each task through encoder and actor on its own, as a group of one row.
    per_task = []
    for task_id in range(num_tasks):
      one_carry = jax.tree.map(lambda x: x[task_id][None, None], carry)
      features = networks.encoder.apply(
        params["encoder"], obs[task_id][None, None], _ids(task_id), one_carry
      ).features
      per_task.append(
        jnp.tanh(networks.actor.apply(params["actor"], features, _ids(task_id))[0][0, 0])
      )
    return jnp.stack(per_task)

  np.testing.assert_allclose(actions, expected_actions(), rtol=1e-5, atol=1e-6)


def test_without_temporal_input_there_is_no_carry(helpers):
  """CMTA w/o TI: attention from z_task only, carry_dim 0, no LSTM parameters."""
  network_config = helpers.small_network_config(temporal_attention=False)
  networks = helpers.make_networks(2, network_config)
  params = helpers.random_training_state(networks, helpers.TEST_SAC, seed=0).params["encoder"]
  assert networks.encoder.carry_dim == 0 and "lstm" not in params
  batch = helpers.random_batch(0, 1, 5, networks.obs_dim, networks.action_dim, 0)
  out = jax.jit(networks.encoder.apply)(params, batch.obs, _ids(1), batch.carry_in)
  check_encoder_output(out, 1, 5, networks.encoder.feature_dim, 0)
  # Attention from z_task alone: the same weights for every sample of a task.
  np.testing.assert_allclose(
    out.attention, np.broadcast_to(out.attention[:, :1], out.attention.shape), rtol=1e-6
  )


def test_task_embedding_table_is_standard_normal(helpers):
  """N(0, 1) as nn.Embedding in the authors' code (docs/algorithm.md): a Glorot table made
  z_task ~6x smaller at initialisation."""
  networks = helpers.make_networks(50, helpers.small_network_config(task_embedding_dim=64))
  table = np.asarray(jax.jit(networks.encoder.init)(jax.random.key(0))["task_embedding"])
  assert table.shape == (50, 64)
  assert abs(table.mean()) < 0.05 and abs(table.std() - 1.0) < 0.05
