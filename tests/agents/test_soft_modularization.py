"""Soft Modularization: the actor and each critic are routed modular networks.

The network against a per-sample NumPy version of its equations; the routing weights;
which parameters each loss moves (the actor's loss trains the actor's routing, the critic's
loss each Q-function's own); what the update logs and the inspection commands see; the
flags that cannot act on it.
"""

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmta_jax import config as config_lib
from cmta_jax import testing
from cmta_jax.agents import registry, sac, soft_modularization
from cmta_jax.config import SoftModuConfig, TaskEncoderConfig

OBS_DIM, ACTION_DIM = 39, 4
CONFIG = SoftModuConfig(softmodu_layers=3, softmodu_modules=3, softmodu_width=8)
TASK_CONFIG = TaskEncoderConfig(task_embedding_dim=6, task_encoder_hidden=(10,), task_feature_dim=5)
# The agent with narrow networks: every part present, few units.
SMALL = testing.run_config(
  "softmodu",
  softmodu_layers=3,
  softmodu_modules=3,
  softmodu_width=8,
  task_embedding_dim=6,
  task_encoder_hidden=(10,),
)
LOSS_NAMES = ("critic_loss", "actor_loss", "alpha_loss")


def _np(tree):
  return jax.tree.map(np.asarray, tree)


def _relu(x):
  return np.maximum(x, 0.0)


def _softmax(x):
  e = np.exp(x - x.max())
  return e / e.sum()


def _dense(layer, x):
  return x @ layer["w"] + layer["b"]


def _reference(params, x, task_id, config: SoftModuConfig):
  """One sample, step by step as the equations read: (output, [routing distributions])."""
  depth, modules = config.softmodu_layers, config.softmodu_modules
  embedding = _dense(params["base"][1], _relu(_dense(params["base"][0], x)))
  task = _relu(params["task"]["task_embedding"][task_id])
  for i, layer in enumerate(params["task"]["task_encoder"]):
    task = _dense(layer, task)
    if i < len(params["task"]["task_encoder"]) - 1:
      task = _relu(task)
  mix = embedding * task
  logits = [_dense(params["route_first"], _relu(mix))]
  for layer in range(depth - 1):
    up = jax.tree.map(lambda p, layer=layer: p[layer], params["route_up"])
    down = (
      jax.tree.map(lambda p, layer=layer: p[layer], params["route_down"])
      if layer < depth - 2
      else params["route_last"]
    )
    logits.append(_dense(down, _relu(_dense(up, logits[-1]) * mix)))
  between = [np.stack([_softmax(row) for row in p.reshape(modules, modules)]) for p in logits[:-1]]
  last = _softmax(logits[-1])
  w, b = params["modules"]["w"], params["modules"]["b"]
  hidden = [_relu(embedding) @ w[0, m] + b[0, m] for m in range(modules)]
  for layer in range(1, depth):
    hidden = [
      _relu(sum(between[layer - 1][j, i] * hidden[i] for i in range(modules))) @ w[layer, j]
      + b[layer, j]
      for j in range(modules)
    ]
  out = _dense(params["output"], _relu(sum(last[i] * hidden[i] for i in range(modules))))
  return out, [*[row for matrix in between for row in matrix], last]


@functools.cache
def _net_and_params():
  net = soft_modularization.make_soft_modular_net(CONFIG, TASK_CONFIG, 4, OBS_DIM, 3)
  return net, net.init(jax.random.key(1))


def test_network_matches_its_equations_sample_by_sample():
  net, params = _net_and_params()
  x = np.random.default_rng(0).normal(size=(2, 3, OBS_DIM)).astype(np.float32)
  task_ids = np.array([3, 1], np.int32)
  out, routing = jax.jit(net.apply)(params, x, task_ids)
  chex.assert_shape(out, (2, 3, 3))
  routes = (CONFIG.softmodu_layers - 1) * CONFIG.softmodu_modules + 1
  chex.assert_shape(routing, (2, 3, routes, CONFIG.softmodu_modules))
  numpy_params = _np(params)
  for g in range(2):
    for b in range(3):
      expected_out, expected_routing = _reference(numpy_params, x[g, b], task_ids[g], CONFIG)
      np.testing.assert_allclose(out[g, b], expected_out, rtol=1e-4, atol=1e-5)
      np.testing.assert_allclose(routing[g, b], np.stack(expected_routing), rtol=1e-4, atol=1e-6)


def test_task_encoding_has_the_module_width_whatever_task_feature_dim_says():
  _, params = _net_and_params()
  assert params["task"]["task_encoder"][-1]["w"].shape[-1] == CONFIG.softmodu_width


def test_routing_weights_are_distributions_that_depend_on_task_and_state():
  net, params = _net_and_params()
  apply = jax.jit(net.apply)
  obs_a, obs_b = np.random.default_rng(6).normal(size=(2, 1, 5, OBS_DIM)).astype(np.float32)
  routing = lambda obs, task: np.asarray(apply(params, obs, np.array([task], np.int32))[1])
  weights = routing(obs_a, 0)
  assert np.all(weights >= 0)
  np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)
  assert np.abs(routing(obs_a, 1) - weights).max() > 1e-6  # same state, other task
  assert np.abs(routing(obs_b, 0) - weights).max() > 1e-6  # same task, other state


@functools.cache
def _setup():
  networks = registry.make_agent_networks(
    SMALL, [f"task{t}" for t in range(4)], OBS_DIM, ACTION_DIM
  )
  state = sac.init_training_state(jax.random.key(0), networks, SMALL.sac)
  batch = testing.random_batch(1, 4, 5, OBS_DIM, ACTION_DIM, 0)
  return networks, state, batch


@functools.cache
def _loss_gradients():
  """d(batch mean of each loss term)/d(params), through the update's own loss."""
  networks, state, batch = _setup()
  loss = sac.make_loss(networks, SMALL.sac)
  noise_next, noise_now = jax.random.normal(jax.random.key(3), (2, 4, 5, ACTION_DIM))
  task_ids = jnp.arange(4, dtype=jnp.int32)

  def components(params):
    _, metrics = loss(params, state.target_params, batch, task_ids, noise_next, noise_now)
    return {name: metrics[name].mean() for name in LOSS_NAMES}

  return _np(jax.jit(jax.jacrev(components))(state.params))


def _nonzero(tree) -> dict[str, bool]:
  return {
    jax.tree_util.keystr(path): bool(np.any(leaf != 0))
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
  }


def test_there_is_no_encoder_the_networks_are_the_actor_and_critics():
  networks, state, _ = _setup()
  assert state.params["encoder"] == {}
  assert networks.actor.routing is not None
  for group in ("actor", "critic"):
    assert {"base", "task", "modules", "route_first", "route_up", "route_last", "output"} <= set(
      state.params[group]
    )


def test_actor_loss_trains_every_part_of_the_actor_and_nothing_else():
  grads = _loss_gradients()["actor_loss"]
  moved = _nonzero(grads["actor"])
  assert all(moved.values()), [name for name, m in moved.items() if not m]
  assert not any(_nonzero(grads["critic"]).values())
  assert not np.any(grads["log_alpha"])


def test_critic_loss_trains_each_q_function_with_its_own_routing_and_not_the_actor():
  grads = _loss_gradients()["critic_loss"]
  for q in range(2):
    moved = _nonzero(jax.tree.map(lambda leaf, q=q: leaf[q], grads["critic"]))
    assert all(moved.values()), (q, [name for name, m in moved.items() if not m])
  assert not any(_nonzero(grads["actor"]).values())
  # The two Q-functions are separate networks: their routings differ.
  _, state, _ = _setup()
  route = np.asarray(state.params["critic"]["route_first"]["w"])
  assert np.abs(route[0] - route[1]).max() > 0


def test_alpha_loss_trains_only_the_temperatures():
  grads = _loss_gradients()["alpha_loss"]
  assert not any(_nonzero((grads["actor"], grads["critic"])).values())
  assert np.all(grads["log_alpha"] != 0)


def test_update_logs_the_actors_routing_entropy():
  networks, state, batch = _setup()
  _, metrics = jax.jit(sac.make_update_fn(networks, SMALL.sac))(state, batch, jax.random.key(5))
  entropy = np.asarray(metrics["routing_entropy"])
  chex.assert_shape(entropy, (4,))
  assert np.all(entropy > 0) and np.all(entropy <= np.log(CONFIG.softmodu_modules) + 1e-5)


def test_trace_shows_the_actors_routing():
  networks, state, _ = _setup()
  obs = np.random.default_rng(1).normal(size=(4, OBS_DIM)).astype(np.float32)
  carry = sac.initial_carry(networks, 4)
  trace = jax.jit(sac.make_trace_fn(networks))
  _, _, attention, experts = trace(sac.policy_params(state), obs, jnp.arange(4), carry)
  assert experts is None
  routing = networks.actor.routing(state.params["actor"], obs[:, None], jnp.arange(4))
  np.testing.assert_allclose(attention, routing[:, 0], rtol=1e-6)


@pytest.mark.parametrize(
  ("field", "message"),
  [
    ("head.hidden_width", "--hidden_width does not act on agent 'softmodu'"),
    ("head.hidden_layers", "--hidden_layers does not act on agent 'softmodu'"),
    ("task_encoder.task_feature_dim", "--task_feature_dim does not act on agent 'softmodu'"),
  ],
)
def test_flags_that_cannot_act_on_it_are_refused(field, message):
  with pytest.raises(ValueError, match=message):
    registry.check_explicit_fields(SMALL, {field})


def test_flags_it_reads_are_accepted():
  registry.check_explicit_fields(
    SMALL, {"softmodu.softmodu_width", "task_encoder.task_embedding_dim", "head.log_std_min"}
  )


def test_an_agent_with_its_own_heads_gives_no_head_layout():
  spec = registry.AGENT_SPECS["softmodu"]
  with pytest.raises(ValueError, match="with make_heads .* give head_layout=None"):
    registry.register("softmodu_twin", spec._replace(head_layout="shared"))
  assert "softmodu_twin" not in registry.AGENT_SPECS


@pytest.mark.parametrize("layers", [2, 4])
def test_every_depth_matches_its_equations_and_has_no_empty_arrays(layers):
  # Empty arrays cannot be checkpointed (orbax refuses them).
  config = SoftModuConfig(softmodu_layers=layers, softmodu_modules=2, softmodu_width=8)
  net = soft_modularization.make_soft_modular_net(config, TASK_CONFIG, 3, OBS_DIM, 2)
  params = net.init(jax.random.key(4))
  assert all(leaf.size > 0 for leaf in jax.tree.leaves(params))
  x = np.random.default_rng(1).normal(size=(1, 2, OBS_DIM)).astype(np.float32)
  out, routing = jax.jit(net.apply)(params, x, np.array([2], np.int32))
  for b in range(2):
    expected_out, expected_routing = _reference(_np(params), x[0, b], 2, config)
    np.testing.assert_allclose(out[0, b], expected_out, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(routing[0, b], np.stack(expected_routing), rtol=1e-4, atol=1e-6)


def test_one_layer_is_refused_by_the_config():
  with pytest.raises(ValueError, match="softmodu_layers must be >= 2"):
    SoftModuConfig(softmodu_layers=1).validate()


def test_configs_of_the_earlier_network_read_as_it_and_are_refused():
  saved = config_lib.flatten(config_lib.RunConfig(agent="softmodu"))
  del saved["softmodu.softmodu_network_revision"]  # as the earlier version wrote it
  upgraded = config_lib.upgrade_flat(saved)
  assert upgraded["softmodu.softmodu_network_revision"] == 1
  with pytest.raises(ValueError, match="only revision 2 is built .* start a new --run_dir"):
    config_lib.from_flat(upgraded).validate()
  # Other agents' configs are not touched: their runs of before and after group together.
  cmta = config_lib.flatten(config_lib.RunConfig(agent="cmta"))
  del cmta["softmodu.softmodu_network_revision"]
  assert "softmodu.softmodu_network_revision" not in config_lib.upgrade_flat(cmta)


def test_own_heads_of_the_wrong_shape_fail_when_the_agent_is_built():
  spec = registry.AGENT_SPECS["softmodu"]

  def wrong_heads(run_config, task_names, feature_dim, action_dim):
    actor, _ = spec.make_heads(run_config, task_names, feature_dim, action_dim + 1)
    return actor, spec.make_heads(run_config, task_names, feature_dim, action_dim)[1]

  registry.register("softmodu_wrong", spec._replace(make_heads=wrong_heads))
  try:
    with pytest.raises(ValueError, match="agent 'softmodu_wrong': its actor returns"):
      registry.make_agent_networks(
        dataclasses.replace(SMALL, agent="softmodu_wrong"),
        [f"task{t}" for t in range(4)],
        OBS_DIM,
        ACTION_DIM,
      )
  finally:
    registry.unregister("softmodu_wrong")
