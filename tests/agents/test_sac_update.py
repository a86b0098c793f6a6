"""The one SAC update (docs/algorithm.md §3): shapes, each loss recomputed from the network
pieces, exact gradient routing, Polyak targets, the per-task temperature, the
task vmap against a Python loop, carries and determinism.

Most tests share `helpers.learner_setup()` (T = 10 tasks, 8 transitions each,
narrow networks, adam_b1 = 0) so the update compiles once. With b1 = 0 the
gradient an update applied can be read back from Adam's first moment
(`helpers.applied_gradients`).
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmta_jax import testing
from cmta_jax.agents import cmta, sac
from cmta_jax.config import HeadConfig, MixtureConfig, SACConfig

LOSS_NAMES = ("critic_loss", "contrastive_loss", "actor_loss", "alpha_loss")
PARAM_GROUPS = {"encoder", "critic", "actor", "log_alpha"}


def _noise(helpers, setup):
  """The update's (noise_next, noise_now), as NumPy arrays."""
  t, b = setup.batch.reward.shape
  noise = helpers.update_noise(setup.key, (t, b, setup.networks.action_dim))
  return tuple(np.asarray(n) for n in noise)


def _with_distinct_targets(state, seed=0, scale=0.1):
  """Targets that differ from the online parameters, so mixing them up is visible."""
  rng = np.random.default_rng(seed)
  return state.replace(
    target_params=jax.tree.map(
      lambda x: jnp.asarray(np.asarray(x) + scale * rng.normal(size=x.shape), x.dtype),
      state.target_params,
    )
  )


def _with_log_alpha(state, log_alpha):
  return state.replace(params={**state.params, "log_alpha": jnp.asarray(log_alpha, jnp.float32)})


def _distinct_log_alphas(setup):
  """A different temperature per task (0.5 ... 2), so a mixed-up task index shows."""
  return np.log(np.linspace(0.5, 2.0, setup.networks.num_tasks))


def _task_slice(tree, index):
  # In NumPy: eager JAX indexing would compile one program per (shape, index).
  return jax.tree.map(lambda x: np.asarray(x)[index], tree)


def test_config_defaults_are_the_papers():
  config = SACConfig()
  assert config.discount == 0.99
  assert (config.actor_lr, config.critic_lr, config.alpha_lr) == (3e-4, 3e-4, 3e-4)
  assert (config.adam_b1, config.adam_b2, config.init_alpha) == (0.9, 0.999, 1.0)
  assert (config.encoder_tau, config.critic_tau) == (0.05, 0.005)
  assert (config.auxiliary_weight, MixtureConfig().contrastive_temperature) == (2500.0, 0.1)
  assert config.target_entropy is None
  head = HeadConfig()
  assert (head.hidden_width, head.hidden_layers, MixtureConfig().num_experts) == (512, 3, 6)
  assert (head.log_std_min, head.log_std_max) == (-20.0, 2.0)


def test_test_states_have_the_real_init_layout(helpers):
  """`helpers.random_training_state` stands in for `sac.init_training_state` in these tests."""
  setup = helpers.learner_setup()
  real = jax.eval_shape(
    lambda key: sac.init_training_state(key, setup.networks, setup.sac_config), jax.random.key(0)
  )
  assert jax.tree.structure(real) == jax.tree.structure(setup.state)
  for real_leaf, test_leaf in zip(jax.tree.leaves(real), jax.tree.leaves(setup.state)):
    assert (real_leaf.shape, real_leaf.dtype) == (test_leaf.shape, test_leaf.dtype)


@pytest.mark.parametrize("num_tasks", [1, 10, 50])
def test_update_shapes_and_finiteness(helpers, num_tasks):
  """Jitted only: run eagerly, the update compiles every primitive on its own
  (~50 s here), and the update is only ever run under jit/pmap."""
  setup = helpers.learner_setup(num_tasks=num_tasks)
  new_state, metrics = setup.update(setup.state, setup.batch, setup.key)

  chex.assert_trees_all_equal_shapes_and_dtypes(new_state, setup.state)
  chex.assert_tree_all_finite(new_state)
  assert int(new_state.step) == 1
  chex.assert_shape(new_state.params["log_alpha"], (num_tasks,))
  assert set(metrics) == set(LOSS_NAMES) | {
    "alpha",
    "entropy",
    "q_mean",
    "td_target_mean",
    "attention_entropy",
  }
  for name, value in metrics.items():
    chex.assert_shape(value, (num_tasks,), custom_message=name)  # per-task metrics
  chex.assert_tree_all_finite(metrics)
  # The attention's entropy lies in [0, log k].
  assert np.all(metrics["attention_entropy"] >= 0)
  assert np.all(metrics["attention_entropy"] <= np.log(3) + 1e-5)


def test_metrics_match_losses_recomputed_from_the_network_pieces(helpers):
  """Every loss of docs/algorithm.md §3, rebuilt per task from encoder/actor/critic calls and a
  NumPy tanh-Gaussian log-probability, against the update's per-task metrics."""
  setup = helpers.learner_setup()
  networks, config, batch = setup.networks, setup.sac_config, setup.batch
  state = _with_log_alpha(_with_distinct_targets(setup.state), _distinct_log_alphas(setup))
  _, metrics = setup.update(state, batch, setup.key)
  noise_next, noise_now = _noise(helpers, setup)
  params, target = state.params, state.target_params
  encoder, actor, critic = helpers.task_slice_networks(networks)
  info_nce = jax.jit(cmta.info_nce, static_argnums=2)
  target_entropy = -networks.action_dim  # docs/algorithm.md §3: -|A|

  for t in range(networks.num_tasks):
    obs, action, reward, next_obs, terminated, carry_in, carry_out, _ = _task_slice(batch, t)
    alpha = float(np.exp(np.asarray(params["log_alpha"])[t]))
    online_now = encoder(params["encoder"], obs, t, carry_in)
    online_next = encoder(params["encoder"], next_obs, t, carry_out)
    target_next = encoder(target["encoder"], next_obs, t, carry_out)

    # Critic target: a' from the actor on the ONLINE encoding of s', Q from the TARGET encoder
    # and heads.
    next_mean, next_log_std = actor(params["actor"], online_next.features, t)
    next_pre_tanh = np.asarray(next_mean) + np.exp(next_log_std) * np.asarray(noise_next[t])
    next_log_prob = helpers.numpy_tanh_gaussian_log_prob(next_mean, next_log_std, noise_next[t])
    next_q = critic(target["critic"], target_next.features, np.tanh(next_pre_tanh), t)
    next_value = np.min(next_q, axis=0) - alpha * next_log_prob
    td_target = reward + config.discount * (1 - terminated) * next_value
    q = critic(params["critic"], online_now.features, action, t)
    critic_loss = np.sum(np.mean((np.asarray(q) - td_target) ** 2, axis=-1))  # MSE(Q1) + MSE(Q2)

    mean, log_std = actor(params["actor"], online_now.features, t)
    pre_tanh = np.asarray(mean) + np.exp(log_std) * np.asarray(noise_now[t])
    log_prob = helpers.numpy_tanh_gaussian_log_prob(mean, log_std, noise_now[t])
    q_pi = np.min(critic(params["critic"], online_now.features, np.tanh(pre_tanh), t), axis=0)
    actor_loss = np.mean(alpha * log_prob - q_pi)
    alpha_loss = alpha * np.mean(-log_prob - target_entropy)
    # InfoNCE (checked against NumPy loops in test_layers): online z_t vs target z_{t+1}.
    contrastive = info_nce(
      online_now.experts,
      target_next.experts,
      helpers.small_network_config().mixture.contrastive_temperature,
    )

    expected = {
      "td_target_mean": td_target.mean(),
      "q_mean": np.mean(q),
      "critic_loss": critic_loss,
      "actor_loss": actor_loss,
      "alpha_loss": alpha_loss,
      "alpha": alpha,
      "entropy": -log_prob.mean(),
      "contrastive_loss": contrastive,
    }
    for name, value in expected.items():
      np.testing.assert_allclose(
        metrics[name][t], value, rtol=2e-4, atol=1e-4, err_msg=f"{name}, task {t}"
      )


@functools.cache
def _loss_gradients(helpers):
  """Through the same loss as the update: d(batch mean of each loss term)/d(params),
  keyed by term (and "objective"), plus d(objective)/d(target params). One compile."""
  setup = helpers.learner_setup()
  loss = sac.make_loss(setup.networks, setup.sac_config)
  noise_next, noise_now = _noise(helpers, setup)
  task_ids = jnp.arange(setup.networks.num_tasks, dtype=jnp.int32)

  def components(params, target_params):
    objective, metrics = loss(params, target_params, setup.batch, task_ids, noise_next, noise_now)
    parts = {name: metrics[name].mean() for name in LOSS_NAMES}
    parts["objective"] = objective.mean()
    return parts

  @helpers.fast_jit
  def gradients(params, target_params):
    by_term = jax.jacrev(components)(params, target_params)
    to_targets = jax.grad(lambda t: components(params, t)["objective"])(target_params)
    return by_term, to_targets

  return gradients(setup.state.params, setup.state.target_params)


def _loss_component_gradients(helpers):
  return _loss_gradients(helpers)[0]


def _assert_routing(helpers, grads, reaches: tuple[str, ...]):
  """Leaves whose name starts with one of `reaches` get a non-zero gradient (some entry != 0);
  every other leaf gets exactly zero."""
  for name, grad in helpers.flatten_with_names(grads).items():
    if name.startswith(reaches):
      assert np.any(grad != 0), f"{name} gets no gradient"
    else:
      np.testing.assert_array_equal(grad, np.zeros_like(grad), err_msg=f"{name} must get none")


def test_actor_loss_trains_only_the_actor(helpers):
  _assert_routing(helpers, _loss_component_gradients(helpers)["actor_loss"], ("actor/",))


def test_contrastive_loss_trains_only_the_experts(helpers):
  _assert_routing(
    helpers, _loss_component_gradients(helpers)["contrastive_loss"], ("encoder/experts/",)
  )


def test_critic_loss_trains_the_whole_encoder_and_the_q_heads(helpers):
  grads = _loss_component_gradients(helpers)["critic_loss"]
  _assert_routing(
    helpers,
    grads,
    (
      "encoder/task_encoder/",
      "encoder/task_embedding",
      "encoder/experts/",
      "encoder/lstm/",
      "encoder/attention/",
      "critic/",
    ),
  )
  # Each task's own embedding row is trained (the task axis reaches the table).
  assert np.all(np.any(grads["encoder"]["task_embedding"] != 0, axis=-1))


def test_alpha_loss_trains_only_the_temperatures(helpers):
  grads = _loss_component_gradients(helpers)["alpha_loss"]
  _assert_routing(helpers, grads, ("log_alpha",))
  assert np.all(grads["log_alpha"] != 0)


def test_objective_is_critic_plus_beta_contrastive_plus_actor_plus_alpha(helpers):
  grads = _loss_component_gradients(helpers)
  beta = helpers.TEST_SAC.auxiliary_weight
  expected = jax.tree.map(
    lambda c, k, a, t: np.asarray(c) + beta * np.asarray(k) + np.asarray(a) + np.asarray(t),
    grads["critic_loss"],
    grads["contrastive_loss"],
    grads["actor_loss"],
    grads["alpha_loss"],
  )
  helpers.assert_trees_allclose(
    grads["objective"], expected, rtol=1e-4, atol=1e-5, leaf_scale_atol=1e-5
  )


def test_update_applies_the_objective_gradient_and_none_to_targets(helpers):
  setup = helpers.learner_setup()
  new_state, _ = setup.update(setup.state, setup.batch, setup.key)
  applied = helpers.applied_gradients(new_state.opt_state)
  # Only online groups are optimised: no target parameters in the gradient pytree.
  assert set(applied) == PARAM_GROUPS == set(setup.state.params)
  helpers.assert_trees_allclose(
    applied,
    _loss_component_gradients(helpers)["objective"],
    rtol=1e-4,
    atol=1e-5,
    leaf_scale_atol=1e-5,
  )


def test_objective_does_not_depend_on_target_parameters_through_gradients(helpers):
  """TD target and InfoNCE positives are stop-gradient: d objective / d targets == 0 exactly."""
  grads = _loss_gradients(helpers)[1]
  for name, grad in helpers.flatten_with_names(grads).items():
    np.testing.assert_array_equal(grad, np.zeros_like(grad), err_msg=name)


def test_targets_move_by_polyak_averaging_only(helpers):
  setup = helpers.learner_setup()
  state = _with_distinct_targets(setup.state, scale=1.0)
  new_state, _ = setup.update(state, setup.batch, setup.key)
  # The paper's rates: 0.05 for the encoder, 0.005 for the Q heads.
  for group, tau in (("encoder", 0.05), ("critic", 0.005)):
    expected = jax.tree.map(
      lambda old, new: (1 - tau) * np.asarray(old) + tau * np.asarray(new),
      state.target_params[group],
      new_state.params[group],
    )
    helpers.assert_trees_allclose(new_state.target_params[group], expected, rtol=1e-6, atol=1e-7)
  assert set(new_state.target_params) == {"encoder", "critic"}
  # The online parameters did move, so the check above is not vacuous.
  assert not np.allclose(new_state.params["critic"][0]["w"], state.params["critic"][0]["w"])


def _entropies(helpers, setup, state, batch):
  """-mean log pi(a|s) per task, from the network pieces and the NumPy log-probability."""
  _, noise_now = _noise(helpers, setup)
  encoder, actor, _ = helpers.task_slice_networks(setup.networks)
  entropies = []
  for t in range(setup.networks.num_tasks):
    features = encoder(
      state.params["encoder"], np.asarray(batch.obs)[t], t, _task_slice(batch.carry_in, t)
    ).features
    mean, log_std = actor(state.params["actor"], features, t)
    entropies.append(-helpers.numpy_tanh_gaussian_log_prob(mean, log_std, noise_now[t]).mean())
  return np.array(entropies)


def test_each_task_temperature_follows_its_own_entropy(helpers):
  # A narrower log_std range puts the unsaturated tasks' entropy above the target -|A|.
  setup = helpers.learner_setup(network_config=helpers.small_network_config(log_std_min=-5.0))
  num_tasks = setup.networks.num_tasks
  # Even tasks see 10x larger states, so their actions saturate and their entropy falls below
  # the target -|A|; the odd tasks' stays above it. Their alphas must move in opposite directions.
  saturated = np.arange(num_tasks) % 2 == 0
  obs_scale = np.where(saturated, 10.0, 1.0).astype(np.float32)[:, None, None]
  batch = setup.batch._replace(obs=np.asarray(setup.batch.obs) * obs_scale)
  log_alpha = _distinct_log_alphas(setup)
  state = _with_log_alpha(setup.state, log_alpha)
  entropies = _entropies(helpers, setup, state, batch)
  target_entropy = -setup.networks.action_dim
  assert np.all(entropies[saturated] < target_entropy - 0.1), entropies
  assert np.all(entropies[~saturated] > target_entropy + 0.1), entropies

  new_state, _ = setup.update(state, batch, setup.key)

  # d/d log_alpha_t of (1/T) sum_t alpha_t * mean(-log pi - target) = alpha_t (H_t - target) / T.
  expected_grad = np.exp(log_alpha) * (entropies - target_entropy) / num_tasks
  applied = helpers.applied_gradients(new_state.opt_state)["log_alpha"]
  np.testing.assert_allclose(applied, expected_grad, rtol=1e-4, atol=1e-6)
  moved = np.asarray(new_state.params["log_alpha"]) - log_alpha
  np.testing.assert_array_equal(np.sign(moved), np.where(saturated, 1.0, -1.0))

  # Another task's data cannot change a task's temperature gradient.
  def perturb_task_1(x):
    x = np.array(x)
    x[1] = x[1] * -2.0 + 0.5
    return x

  perturbed_batch = jax.tree.map(perturb_task_1, batch)
  perturbed_state, _ = setup.update(state, perturbed_batch, setup.key)
  perturbed = helpers.applied_gradients(perturbed_state.opt_state)["log_alpha"]
  others = np.arange(num_tasks) != 1
  np.testing.assert_allclose(perturbed[others], applied[others], rtol=1e-6, atol=0)
  assert perturbed[1] != applied[1]


def test_task_vmap_equals_a_python_loop_over_tasks(helpers):
  """The vmapped update equals T separate per-task losses averaged with weight 1/T."""
  setup = helpers.learner_setup()
  task_loss = testing.make_task_loss(setup.networks, setup.sac_config)
  value_and_grad = helpers.fast_jit(jax.value_and_grad(task_loss, has_aux=True))
  noise_next, noise_now = _noise(helpers, setup)
  num_tasks = setup.networks.num_tasks

  objectives, per_task_metrics, per_task_grads = [], [], []
  for t in range(num_tasks):
    (objective, metrics), grads = value_and_grad(
      setup.state.params,
      setup.state.target_params,
      _task_slice(setup.batch, t),
      t,
      noise_next[t],
      noise_now[t],
    )
    objectives.append(objective)
    per_task_metrics.append(metrics)
    per_task_grads.append(grads)
    # One task's loss only touches its own embedding row and its own temperature.
    rows_touched = np.any(grads["encoder"]["task_embedding"] != 0, axis=-1)
    np.testing.assert_array_equal(rows_touched, np.arange(num_tasks) == t)
    np.testing.assert_array_equal(grads["log_alpha"] != 0, np.arange(num_tasks) == t)

  new_state, metrics = setup.update(setup.state, setup.batch, setup.key)
  for name in metrics:
    np.testing.assert_allclose(
      metrics[name], [m[name] for m in per_task_metrics], rtol=1e-5, atol=1e-5, err_msg=name
    )
  # Objective = mean of per-task terms; its gradient = mean of per-task gradients.
  beta = setup.sac_config.auxiliary_weight
  total_from_metrics = np.mean(
    metrics["critic_loss"]
    + beta * metrics["contrastive_loss"]
    + metrics["actor_loss"]
    + metrics["alpha_loss"]
  )
  np.testing.assert_allclose(total_from_metrics, np.mean(objectives), rtol=1e-5)
  mean_grads = jax.tree.map(lambda *g: sum(np.asarray(x) for x in g) / num_tasks, *per_task_grads)
  helpers.assert_trees_allclose(
    helpers.applied_gradients(new_state.opt_state),
    mean_grads,
    rtol=1e-4,
    atol=1e-5,
    leaf_scale_atol=1e-5,
  )


def test_carries_change_the_update(helpers):
  setup = helpers.learner_setup()
  _, metrics = setup.update(setup.state, setup.batch, setup.key)
  flipped = lambda carry: jax.tree.map(lambda x: -np.asarray(x), carry)
  # carry_in feeds the LSTM step on s_t: Q(s_t, a_t) changes.
  _, new_in = setup.update(
    setup.state, setup.batch._replace(carry_in=flipped(setup.batch.carry_in)), setup.key
  )
  assert np.all(new_in["q_mean"] != metrics["q_mean"])
  np.testing.assert_array_equal(new_in["td_target_mean"], metrics["td_target_mean"])
  # carry_out feeds the LSTM step on s_{t+1}: the TD target changes.
  _, new_out = setup.update(
    setup.state, setup.batch._replace(carry_out=flipped(setup.batch.carry_out)), setup.key
  )
  assert np.all(new_out["td_target_mean"] != metrics["td_target_mean"])
  np.testing.assert_array_equal(new_out["q_mean"], metrics["q_mean"])


def test_update_is_deterministic(helpers):
  setup = helpers.learner_setup()
  first = setup.update(setup.state, setup.batch, setup.key)
  second = setup.update(setup.state, setup.batch, setup.key)
  helpers.assert_trees_equal(first, second)
  # A different key draws different noise, hence different metrics.
  _, other_metrics = setup.update(setup.state, setup.batch, jax.random.key(123))
  assert not np.allclose(other_metrics["actor_loss"], first[1]["actor_loss"])


def test_select_action_is_deterministic(helpers):
  setup = helpers.learner_setup()
  networks = setup.networks
  select_action = helpers.select_action_fn(networks)
  num_tasks = networks.num_tasks
  args = (
    sac.policy_params(setup.state),
    _task_slice(setup.batch.obs, (slice(None), 0)),
    np.arange(num_tasks),
    _task_slice(setup.batch.carry_in, (slice(None), 0)),
  )
  for deterministic in (False, True):
    first = select_action(*args, jax.random.key(5), deterministic=deterministic)
    second = select_action(*args, jax.random.key(5), deterministic=deterministic)
    helpers.assert_trees_equal(first, second)
  sampled, _ = select_action(*args, jax.random.key(5), deterministic=False)
  resampled, _ = select_action(*args, jax.random.key(6), deterministic=False)
  assert not np.allclose(sampled, resampled)
