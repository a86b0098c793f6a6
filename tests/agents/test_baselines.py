"""The paper's baselines and ablations (docs/algorithm.md §6) on the one SAC update.

Every agent acts and updates at MT1/MT10/MT50 sizes; each baseline's defining
structure is checked through gradients (MTMH-SAC heads, Single-SAC slices),
the pretrained task vectors (CARE);
the ablation flags change exactly what they name; the registry refuses
configurations that make no sense for an agent.

Compiling an update takes seconds on 2 CPU cores, so setups and compiled
functions are cached and shared between tests, and compiled for compile speed
(`_FAST_COMPILE`).
"""

import dataclasses
import functools
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmta_jax import config as config_lib
from cmta_jax import testing
from cmta_jax.agents import registry, sac, task_metadata
from cmta_jax.agents.networks import AgentNetworks
from cmta_jax.config import RunConfig, SACConfig
from cmta_jax.envs import metaworld_env
from cmta_jax.types import LSTMCarry, Transition

OBS_DIM = 39  # Meta-World's observation and action sizes.
ACTION_DIM = 4
BATCH_PER_TASK = 4
NUM_TASKS = (1, 10, 50)
PAPER_BETA = SACConfig().auxiliary_weight
# Narrow networks with the paper's structure (all layers present, fewer units).
SMALL = testing.run_config(
  hidden_width=32,
  hidden_layers=2,
  task_embedding_dim=8,
  task_encoder_hidden=(16,),
  task_feature_dim=8,
  num_experts=3,
  expert_hidden=16,
  expert_dim=8,
  lstm_hidden=8,
  softmodu_width=16,
)
NO_EXPERTS = tuple(
  a
  for a in registry.AGENTS  # agents whose encoder has no auxiliary loss
  if registry.make_encoder(RunConfig(agent=a)).auxiliary_loss is None
)


def _task_names(num_tasks: int) -> tuple[str, ...]:
  # MT10 for T=10 so CARE reads the MT10 vectors; otherwise a prefix of MT50.
  if num_tasks == 10:
    return metaworld_env.task_names("MT10")
  return metaworld_env.task_names("MT50")[:num_tasks]


def _random_batch(seed: int, num_tasks: int, carry_dim: int) -> Transition:
  return testing.random_batch(
    seed, num_tasks, BATCH_PER_TASK, OBS_DIM, ACTION_DIM, carry_dim, termination_rate=0.25
  )


# On networks this small, XLA's backend optimisations and fusion emitters cost
# far more compile time than they save at run time (3x faster compiles).
_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}


def _compile(fn, *example_args):
  """jit(fn) compiled for the shapes of `example_args`, for compile speed."""
  return jax.jit(fn).lower(*example_args).compile(compiler_options=_FAST_COMPILE)


def _sac_config(agent: str, auxiliary_weight: float | None = None) -> SACConfig:
  """The agent's own defaults (beta 0 except CMTA), or an explicit beta."""
  explicit = set() if auxiliary_weight is None else {"sac.auxiliary_weight"}
  run_config = RunConfig(agent=agent)
  if auxiliary_weight is not None:
    run_config = dataclasses.replace(
      run_config, sac=dataclasses.replace(run_config.sac, auxiliary_weight=auxiliary_weight)
    )
  return registry.agent_defaults(run_config, explicit).sac


class Setup(NamedTuple):
  networks: AgentNetworks
  state: sac.TrainingState  # fresh; does not depend on beta
  batch: Transition


@functools.cache
def _setup(agent: str, num_tasks: int) -> Setup:
  networks = registry.make_agent_networks(
    dataclasses.replace(SMALL, agent=agent), _task_names(num_tasks), OBS_DIM, ACTION_DIM
  )
  # Compiled: eagerly, every random op of the (vmapped) init would compile on its own.
  init = _compile(
    lambda key: sac.init_training_state(key, networks, _sac_config(agent)), jax.random.key(0)
  )
  return Setup(
    networks=networks,
    state=init(jax.random.key(0)),
    batch=_random_batch(1, num_tasks, networks.encoder.carry_dim),
  )


@functools.cache
def _update_fn(agent: str, num_tasks: int):
  """The agent's compiled update(state, batch, key), with its default SAC config."""
  setup = _setup(agent, num_tasks)
  return _compile(
    sac.make_update_fn(setup.networks, _sac_config(agent)),
    setup.state,
    setup.batch,
    jax.random.key(0),
  )


def _task_loss_terms(agent: str, num_tasks: int, auxiliary_weight: float | None = None):
  """params -> (objective, metrics) of task_id's loss alone on the setup's batch:
  the other tasks' terms are simply not part of it."""
  setup = _setup(agent, num_tasks)
  task_loss = testing.make_task_loss(setup.networks, _sac_config(agent, auxiliary_weight))
  noise_next, noise_now = jnp.asarray(
    np.random.default_rng(3).normal(size=(2, BATCH_PER_TASK, setup.networks.action_dim)),
    jnp.float32,
  )

  def loss_terms(params, task_id):
    task_batch = jax.tree.map(lambda x: x[task_id], setup.batch)
    return task_loss(params, setup.state.target_params, task_batch, task_id, noise_next, noise_now)

  return loss_terms


@functools.cache
def _task_grad_fn(agent: str, num_tasks: int, auxiliary_weight: float | None = None):
  """Compiled (params, task_id) -> (grads, metrics) of one task's loss alone."""
  loss_terms = _task_loss_terms(agent, num_tasks, auxiliary_weight)
  return _compile(
    jax.grad(loss_terms, has_aux=True), _setup(agent, num_tasks).state.params, jnp.int32(0)
  )


def _task_grads(agent: str, num_tasks: int, task_id: int, auxiliary_weight=None):
  grads, metrics = _task_grad_fn(agent, num_tasks, auxiliary_weight)(
    _setup(agent, num_tasks).state.params, jnp.int32(task_id)
  )
  return jax.tree.map(np.asarray, grads), jax.tree.map(np.asarray, metrics)


def _compiled_encoder_apply(encoder, params, batch: int):
  """Compiled (obs [batch, obs_dim], task_id) -> EncoderOutput of that one task's rows
  (run as a group of one, returned without the group axis), zero carry_in."""
  carry = LSTMCarry(*[jnp.zeros((1, batch, encoder.carry_dim))] * 2)

  def one_task(obs, task_id):
    out = encoder.apply(params, obs[None], task_id[None], carry)
    return out._replace(
      features=out.features[0],
      carry=jax.tree.map(lambda x: x[0], out.carry),
      attention=None if out.attention is None else out.attention[0],
    )

  apply = _compile(one_task, jnp.zeros((batch, OBS_DIM)), jnp.int32(0))
  return lambda obs, task_id: apply(jnp.asarray(obs, jnp.float32), jnp.int32(task_id))


def _leaves(tree) -> dict[str, np.ndarray]:
  """{"[0]['w']": array, ...}: leaves named by their path, for readable failures."""
  return {
    jax.tree_util.keystr(path): np.asarray(leaf)
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
  }


def _assert_only_task_slice(tree, task_id: int, task_axis: int, what: str) -> None:
  """Every leaf: exactly zero off `task_id` along `task_axis`, non-zero on it."""
  for name, leaf in _leaves(tree).items():
    own = np.take(leaf, task_id, axis=task_axis)
    others = np.delete(leaf, task_id, axis=task_axis)
    assert np.all(others == 0), f"{what}{name}: another task's slice has a gradient"
    assert np.any(own != 0), f"{what}{name}: task {task_id}'s own slice has no gradient"


# ---------------------------------------------------------------------------
# Every agent: init, act, update.


@pytest.mark.parametrize("num_tasks", NUM_TASKS)
@pytest.mark.parametrize("agent", registry.AGENTS)
def test_agent_acts_and_updates(agent, num_tasks):
  setup = _setup(agent, num_tasks)
  networks, state = setup.networks, setup.state
  carry_dim = networks.encoder.carry_dim
  chex.assert_tree_all_finite(state.params)

  rng = np.random.default_rng(2)
  obs = jnp.asarray(rng.normal(size=(num_tasks, OBS_DIM)), jnp.float32)
  carry = LSTMCarry(*jnp.asarray(rng.normal(size=(2, num_tasks, carry_dim)), jnp.float32))
  args = (
    sac.policy_params(state),
    obs,
    jnp.arange(num_tasks, dtype=jnp.int32),
    carry,
    jax.random.key(4),
  )
  actions, carry_out = _compile(sac.make_select_action_fn(networks), *args)(*args)
  chex.assert_shape(actions, (num_tasks, ACTION_DIM))
  chex.assert_shape([carry_out.h, carry_out.c], (num_tasks, carry_dim))
  chex.assert_tree_all_finite((actions, carry_out))
  assert np.all(np.abs(np.asarray(actions)) <= 1.0)

  new_state, metrics = _update_fn(agent, num_tasks)(state, setup.batch, jax.random.key(5))
  for name, value in metrics.items():
    chex.assert_shape(value, (num_tasks,), custom_message=name)
  chex.assert_tree_all_finite((new_state.params, new_state.target_params, metrics))
  chex.assert_trees_all_equal_shapes(new_state.params, state.params)
  assert int(new_state.step) == 1
  # beta = 0 (every agent's default but CMTA's) means no contrastive term at all; agents
  # whose encoder has no auxiliary loss report none.
  if agent in NO_EXPERTS:
    assert "contrastive_loss" not in metrics
  else:
    contrastive = np.asarray(metrics["contrastive_loss"])
    assert np.all(contrastive > 0) if agent == "cmta" else np.all(contrastive == 0)
  # The update did something: the temperature of every task moved.
  assert np.all(np.asarray(new_state.params["log_alpha"]) != np.asarray(state.params["log_alpha"]))


# ---------------------------------------------------------------------------
# MT-SAC, MTMH-SAC, Single-SAC see the state alone; MT-SAC+TE adds z_task.


def test_state_and_task_state_encoders():
  obs = np.random.default_rng(8).normal(size=(3, OBS_DIM)).astype(np.float32)
  no_carry = LSTMCarry(jnp.zeros((1, 3, 0)), jnp.zeros((1, 3, 0)))
  for agent in ("mtsac", "mtmhsac", "single_sac"):
    setup = _setup(agent, 10)
    assert setup.state.params["encoder"] == {}, agent
    out = setup.networks.encoder.apply({}, obs[None], jnp.array([4], jnp.int32), no_carry)
    np.testing.assert_array_equal(out.features[0], obs)  # the task index is not an input

  setup = _setup("mtsac_te", 10)
  apply = _compiled_encoder_apply(setup.networks.encoder, setup.state.params["encoder"], batch=3)
  features = [np.asarray(apply(obs, task_id).features) for task_id in (0, 1)]
  for task_features in features:
    np.testing.assert_array_equal(task_features[:, SMALL.task_encoder.task_feature_dim :], obs)
  assert (
    np.abs(
      features[0][:, : SMALL.task_encoder.task_feature_dim]
      - features[1][:, : SMALL.task_encoder.task_feature_dim]
    ).max()
    > 1e-6
  )


# ---------------------------------------------------------------------------
# MTMH-SAC: shared trunk, one head per task.


@pytest.mark.parametrize("task_id", [0, 7])
def test_mtmhsac_task_loss_moves_only_its_own_head(task_id):
  grads, _ = _task_grads("mtmhsac", 10, task_id)
  # Actor heads are stacked [T, ...]; critic heads [num_q, T, ...] (one per Q).
  _assert_only_task_slice(grads["actor"]["heads"], task_id, 0, "actor heads")
  for q in range(2):
    _assert_only_task_slice(
      jax.tree.map(lambda leaf: leaf[q], grads["critic"]["heads"]), task_id, 0, f"critic Q{q} heads"
    )
  for name, leaf in _leaves(
    {"actor": grads["actor"]["trunk"], "critic": grads["critic"]["trunk"]}
  ).items():
    assert np.any(leaf != 0), f"shared trunk {name} gets no gradient"
  _assert_only_task_slice(grads["log_alpha"], task_id, 0, "log_alpha")


# ---------------------------------------------------------------------------
# Single-SAC: independent networks, stacked on a task axis.


@pytest.mark.parametrize("task_id", [0, 7])
def test_single_sac_task_loss_moves_only_its_own_slice(task_id):
  grads, _ = _task_grads("single_sac", 10, task_id)
  assert grads["encoder"] == {}  # features = the state itself
  _assert_only_task_slice(grads["actor"], task_id, 0, "actor")
  _assert_only_task_slice(grads["critic"], task_id, 1, "critic")  # [num_q, T, ...]
  _assert_only_task_slice(grads["log_alpha"], task_id, 0, "log_alpha")


def test_single_sac_adam_step_on_one_task_leaves_other_slices_unchanged():
  setup = _setup("single_sac", 10)
  task_id = 3
  grads, _ = _task_grads("single_sac", 10, task_id)
  optimizer = sac.make_optimizer(_sac_config("single_sac"))

  def adam_step(grads, opt_state, params):
    updates, _ = optimizer.update(grads, opt_state, params)
    return jax.tree.map(lambda p, u: p + u, params, updates)

  args = (grads, setup.state.opt_state, setup.state.params)
  new_params = _compile(adam_step, *args)(*args)
  for group, task_axis in (("actor", 0), ("critic", 1), ("log_alpha", 0)):
    old, new = _leaves(setup.state.params[group]), _leaves(new_params[group])
    for name in old:
      moved = np.take(new[name], task_id, task_axis) != np.take(old[name], task_id, task_axis)
      assert np.any(moved), f"{group}{name}: task {task_id}'s slice did not move"
      np.testing.assert_array_equal(
        np.delete(new[name], task_id, task_axis),
        np.delete(old[name], task_id, task_axis),
        err_msg=f"{group}{name}: another task's slice moved",
      )


def test_single_sac_full_update_of_one_task_is_independent_of_other_tasks_data(helpers):
  """Replacing task j's data in the batch changes task j's slice and nothing else."""
  setup = _setup("single_sac", 10)
  changed_task = 4
  other_batch = _random_batch(99, 10, 0)

  def replace_changed_task(x, y):
    x = np.array(x)
    x[changed_task] = y[changed_task]
    return jnp.asarray(x)

  batch = jax.tree.map(replace_changed_task, setup.batch, other_batch)
  key = jax.random.key(5)
  update = _update_fn("single_sac", 10)
  reference, _ = update(setup.state, setup.batch, key)
  perturbed, _ = update(setup.state, batch, key)
  # Adam's first step is about lr * sign(g), so task j's own change shows in
  # the first moment (0.1 g) rather than in the parameters.
  ref_moments = helpers.applied_gradients(reference.opt_state)
  per_moments = helpers.applied_gradients(perturbed.opt_state)
  for group, task_axis in (("actor", 0), ("critic", 1), ("log_alpha", 0)):
    ref = _leaves((reference.params[group], reference.target_params.get(group), ref_moments[group]))
    per = _leaves((perturbed.params[group], perturbed.target_params.get(group), per_moments[group]))
    for name in ref:
      np.testing.assert_array_equal(
        np.delete(per[name], changed_task, task_axis),
        np.delete(ref[name], changed_task, task_axis),
        err_msg=f"{group}{name}: task {changed_task}'s data changed another task's parameters",
      )
    for name, moment in _leaves(per_moments[group]).items():
      assert np.any(
        np.take(moment, changed_task, task_axis)
        != np.take(_leaves(ref_moments[group])[name], changed_task, task_axis)
      ), f"{group}{name}"


# ---------------------------------------------------------------------------
# CARE: pretrained task-description vectors, no temporal input.


@pytest.mark.parametrize("benchmark", ["MT10", "MT50"])
def test_care_embedding_file_has_one_finite_vector_per_task(benchmark):
  assert task_metadata.embeddings_path().is_file()
  names = metaworld_env.task_names(benchmark)
  embeddings = task_metadata.load_task_embeddings(names)
  assert embeddings.shape == (len(names), task_metadata.load_task_metadata()["dim"])
  assert np.all(np.isfinite(embeddings))
  assert len({row.tobytes() for row in embeddings}) == len(names)  # one vector per task


def test_care_encoder_reads_pretrained_vectors_and_has_no_lstm():
  # SMALL has temporal_attention=True: CARE must drop the LSTM regardless.
  setup = _setup("care", 10)
  encoder, params = setup.networks.encoder, setup.state.params["encoder"]
  assert "task_embedding" not in params
  assert "lstm" not in params
  assert encoder.carry_dim == 0
  # z_task (the first features) is the task MLP, in NumPy here, on the task's shipped vector.
  vectors = task_metadata.load_task_embeddings(_task_names(10))
  task_encoder = [jax.tree.map(np.asarray, layer) for layer in params["task_encoder"]]
  apply = _compiled_encoder_apply(encoder, params, batch=2)
  for task_id in (0, 9):
    expected = np.maximum(vectors[task_id], 0.0)
    for index, layer in enumerate(task_encoder):
      expected = expected @ layer["w"] + layer["b"]
      if index < len(task_encoder) - 1:
        expected = np.maximum(expected, 0.0)
    z_task = np.asarray(apply(np.ones((2, OBS_DIM)), task_id).features)[
      :, : SMALL.task_encoder.task_feature_dim
    ]
    np.testing.assert_allclose(
      z_task, np.broadcast_to(expected, z_task.shape), rtol=1e-5, atol=1e-6
    )


def test_care_attention_is_mtrls_mlp_on_the_detached_task_encoding():
  # CARE's own defaults (agent_defaults), on SMALL's narrow networks.
  care = registry.agent_defaults(dataclasses.replace(SMALL, agent="care"), explicit=set())
  assert care.mixture.attention_hidden == (50, 50)
  encoder = registry.make_encoder(care)
  params = _compile(encoder.init, jax.random.key(2))(jax.random.key(2))
  attention = [jax.tree.map(np.asarray, layer) for layer in params["attention"]]
  widths = [layer["w"].shape for layer in attention]
  assert widths == [
    (care.task_encoder.task_feature_dim, 50),
    (50, 50),
    (50, care.mixture.num_experts),
  ]
  obs = np.random.default_rng(3).normal(size=(2, OBS_DIM))
  out = _compiled_encoder_apply(encoder, params, batch=2)(obs, 4)
  z_task = np.asarray(out.features)[:, : care.task_encoder.task_feature_dim]
  logits = z_task
  for index, layer in enumerate(attention):
    logits = logits @ layer["w"] + layer["b"]
    if index < len(attention) - 1:
      logits = np.maximum(logits, 0.0)
  expected = np.exp(logits - logits.max(-1, keepdims=True))
  expected /= expected.sum(-1, keepdims=True)
  np.testing.assert_allclose(out.attention, expected, rtol=1e-5, atol=1e-6)


def test_care_without_embedding_file_fails_clearly(monkeypatch, tmp_path):
  monkeypatch.setattr(task_metadata, "embeddings_path", lambda: tmp_path / "task_embeddings.json")
  with pytest.raises(FileNotFoundError, match="make_task_embeddings") as error:
    registry.make_agent_networks(
      dataclasses.replace(SMALL, agent="care"), _task_names(10), OBS_DIM, ACTION_DIM
    )
  assert "\n" not in str(error.value)


# ---------------------------------------------------------------------------
# Ablations: each flag changes exactly what it names.


def _encoder(network_config: RunConfig, agent: str = "cmta", shapes_only: bool = False):
  """(encoder, params); with `shapes_only`, params are ShapeDtypeStructs (nothing compiles)."""
  encoder = registry.make_agent_networks(
    dataclasses.replace(network_config, agent=agent), _task_names(2), OBS_DIM, ACTION_DIM
  ).encoder
  key = jax.random.key(0)
  if shapes_only:
    return encoder, jax.eval_shape(encoder.init, key)
  return encoder, _compile(encoder.init, key)(key)


def test_cmta_without_temporal_attention_has_no_lstm_and_ignores_the_state():
  encoder, params = _encoder(config_lib.replace_fields(SMALL, temporal_attention=False))
  assert "lstm" not in params
  assert encoder.carry_dim == 0
  assert params["attention"]["w"].shape == (
    SMALL.task_encoder.task_feature_dim,
    SMALL.mixture.num_experts,
  )
  # Attention from z_task only: different states of one task get the same weights.
  obs = np.random.default_rng(7).normal(size=(3, OBS_DIM))
  attention = np.asarray(_compiled_encoder_apply(encoder, params, batch=3)(obs, 1).attention)
  np.testing.assert_array_equal(attention, np.broadcast_to(attention[:1], attention.shape))

  encoder, params = _encoder(SMALL, shapes_only=True)  # the full CMTA, for contrast
  assert "lstm" in params
  assert encoder.carry_dim == SMALL.mixture.lstm_hidden
  assert params["attention"]["w"].shape == (
    SMALL.task_encoder.task_feature_dim + SMALL.mixture.lstm_hidden,
    SMALL.mixture.num_experts,
  )


@pytest.mark.parametrize("agent", ["cmta", "care"])
@pytest.mark.parametrize("num_experts", [2, 4, 12])
def test_num_experts_sets_the_stacked_expert_axis(agent, num_experts):
  encoder, params = _encoder(
    config_lib.replace_fields(SMALL, num_experts=num_experts), agent, shapes_only=True
  )
  for name, leaf in jax.tree_util.tree_leaves_with_path(params["experts"]):
    assert leaf.shape[0] == num_experts, jax.tree_util.keystr(name)
  assert params["attention"]["w"].shape[-1] == num_experts
  carry = LSTMCarry(*[jax.ShapeDtypeStruct((2, 3, encoder.carry_dim), jnp.float32)] * 2)
  out = jax.eval_shape(
    encoder.apply,
    params,
    jax.ShapeDtypeStruct((2, 3, OBS_DIM), jnp.float32),
    jax.ShapeDtypeStruct((2,), jnp.int32),
    carry,
  )
  chex.assert_shape(out.experts, (num_experts, 2, 3, SMALL.mixture.expert_dim))
  chex.assert_shape(out.attention, (2, 3, num_experts))


def test_cmta_without_contrastive_term_is_the_critic_objective_alone():
  task_id = 2
  grads_without, metrics_without = _task_grads("cmta", 10, task_id, auxiliary_weight=0.0)
  assert metrics_without["contrastive_loss"] == 0.0

  # Reference: the full CMTA loss (paper beta), with the contrastive term left out by hand.
  assert _sac_config("cmta").auxiliary_weight == PAPER_BETA
  loss_terms = _task_loss_terms("cmta", 10)

  def objective_without_contrastive(params):
    metrics = loss_terms(params, task_id)[1]
    return metrics["critic_loss"] + metrics["actor_loss"] + metrics["alpha_loss"]

  def both_grads(params):  # One compile for both.
    return (
      jax.grad(objective_without_contrastive)(params),
      jax.grad(loss_terms, has_aux=True)(params, task_id),
    )

  params = _setup("cmta", 10).state.params
  reference, (grads_with, metrics_with) = _compile(both_grads, params)(params)
  reference = _leaves(reference)
  for name, grad in _leaves(grads_without).items():
    # Same terms, summed in another order: float32 rounding only.
    np.testing.assert_allclose(
      grad, reference[name], rtol=1e-5, atol=1e-6 * np.abs(reference[name]).max(), err_msg=name
    )

  # Beta > 0 does change the experts' gradient: the comparison above is not vacuous.
  assert metrics_with["contrastive_loss"] > 0
  experts_with = _leaves(grads_with["encoder"]["experts"])
  assert any(
    np.abs(np.asarray(g) - reference["['encoder']['experts']" + name]).max() > 1e-6
    for name, g in experts_with.items()
  )


def test_care_with_contrastive_term_has_a_contrastive_loss():
  grads, metrics = _task_grads("care", 10, 0, auxiliary_weight=PAPER_BETA)
  assert np.isfinite(metrics["contrastive_loss"]) and metrics["contrastive_loss"] > 0
  assert all(np.any(g != 0) for g in _leaves(grads["encoder"]["experts"]).values())


# ---------------------------------------------------------------------------
# Registry and per-agent configuration.


@pytest.mark.parametrize("agent", registry.AGENTS)
def test_agent_defaults_turn_off_contrastive_term_except_for_cmta(agent):
  defaults = registry.agent_defaults(RunConfig(agent=agent), explicit=set())
  assert defaults.sac.auxiliary_weight == (PAPER_BETA if agent == "cmta" else 0.0)
  # An explicit value is kept, whatever the agent.
  explicit = _sac_config(agent, auxiliary_weight=123.0)
  assert explicit.auxiliary_weight == 123.0


@pytest.mark.parametrize("agent", registry.AGENTS)
def test_default_config_of_every_agent_passes_its_checks(agent):
  registry.check_agent_config(registry.agent_defaults(RunConfig(agent=agent), explicit=set()))


def _one_line_value_error(run_config, match: str) -> None:
  with pytest.raises(ValueError, match=match) as error:
    registry.check_agent_config(run_config)
  assert "\n" not in str(error.value)


@pytest.mark.parametrize("agent", NO_EXPERTS)
def test_contrastive_term_is_refused_without_experts(agent):
  _one_line_value_error(
    RunConfig(agent=agent, sac=SACConfig(auxiliary_weight=1.0)),
    "no auxiliary \\(contrastive\\) loss, so --contrastive_weight must be 0",
  )


@pytest.mark.parametrize("agent", ["cmta", "care"])
def test_contrastive_term_is_accepted_with_experts(agent):
  # As launched: `--agent=care --contrastive_weight=2500` is the CARE + CL ablation.
  run_config = RunConfig(agent=agent, sac=SACConfig(auxiliary_weight=PAPER_BETA))
  registry.check_agent_config(registry.agent_defaults(run_config, {"sac.auxiliary_weight"}))


@pytest.mark.parametrize("agent", [a for a in registry.AGENTS if a != "cmta"])
def test_temporal_attention_flag_is_refused_for_agents_other_than_cmta(agent):
  run_config = registry.agent_defaults(RunConfig(agent=agent), explicit=set())
  run_config = config_lib.replace_path(run_config, "mixture.temporal_attention", True)
  message = (
    "agent 'care' fixes mixture.temporal_attention to False"
    if agent == "care"
    else f"--temporal_attention sets the mixture section, which agent '{agent}' does not read "
    r"\(agents that do: cmta, care\)"
  )
  with pytest.raises(ValueError, match=message):
    registry.check_explicit_fields(run_config, {"mixture.temporal_attention"})


@pytest.mark.parametrize("agent", ["mtsac", "care"])
def test_flags_of_another_encoders_section_are_refused(agent):
  run_config = registry.agent_defaults(RunConfig(agent=agent), explicit=set())
  with pytest.raises(ValueError, match="--softmodu_width sets the softmodu section"):
    registry.check_explicit_fields(run_config, {"softmodu.softmodu_width"})
  registry.check_explicit_fields(run_config, {"head.hidden_width", "train.seed"})


def test_unknown_agent_is_refused_with_the_choices():
  for call in (
    lambda: registry.check_agent("mt_sac"),
    lambda: registry.check_agent_config(RunConfig(agent="mt_sac")),
    lambda: registry.agent_defaults(RunConfig(agent="mt_sac"), explicit=set()),
    lambda: registry.make_agent_networks(
      dataclasses.replace(SMALL, agent="mt_sac"), _task_names(2), OBS_DIM, ACTION_DIM
    ),
  ):
    with pytest.raises(ValueError, match="unknown agent 'mt_sac'") as error:
      call()
    assert all(agent in str(error.value) for agent in registry.AGENTS)
    assert "\n" not in str(error.value)
