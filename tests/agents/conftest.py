"""Shared builders for the learner tests: small networks, random batches, and
ways to see inside one update.

Compiling an update takes seconds on a 2-core CPU, so setups are cached per
argument tuple: tests that use the same `learner_setup(...)` share one
compiled update. Tests reach these helpers through the `helpers` fixture
(conftest modules are not meant to be imported by name); the pmap subprocess
loads this file by path.
"""

import dataclasses
import functools
import sys
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cmta_jax import testing
from cmta_jax.agents import registry, sac
from cmta_jax.agents.networks import AgentNetworks, EncoderOutput
from cmta_jax.config import RunConfig, SACConfig
from cmta_jax.types import Transition

OBS_DIM = 7
ACTION_DIM = 2
# b1 = 0 makes Adam's first moment after one step equal the gradient itself,
# so `applied_gradients` can read back exactly what an update differentiated.
TEST_SAC = SACConfig(adam_b1=0.0)


# XLA's backend optimisation level 0 halves compile time here (~8 s -> ~4 s per update)
# and changes no semantics; the tests run each program only a few times.
_FAST_COMPILE_OPTIONS = {"xla_backend_optimization_level": 0}


class fast_jit:  # pylint: disable=invalid-name  (used like jax.jit)
  """jax.jit compiled ahead of time at the first call, with `_FAST_COMPILE_OPTIONS`.

  Keyword arguments are static (one executable per distinct value). Positional
  arguments must keep the first call's shapes and dtypes (the executable checks
  them), which is how these tests use it.
  """

  def __init__(self, fn: Callable, static_argnames: tuple[str, ...] = ()):
    self._jitted = jax.jit(fn, static_argnames=static_argnames)
    self._static_argnames = set(static_argnames)
    self._compiled = {}

  def __call__(self, *args, **static_kwargs):
    assert set(static_kwargs) <= self._static_argnames, static_kwargs
    key = tuple(sorted(static_kwargs.items()))
    if key not in self._compiled:
      lowered = self._jitted.lower(*args, **static_kwargs)
      self._compiled[key] = lowered.compile(_FAST_COMPILE_OPTIONS)
    return self._compiled[key](*args)


def small_network_config(**overrides) -> RunConfig:
  """CMTA with narrow networks (fast to compile and run) and the paper's structure."""
  small = dict(
    hidden_width=32,
    hidden_layers=2,
    task_embedding_dim=8,
    task_encoder_hidden=(16, 16),
    task_feature_dim=8,
    num_experts=3,
    expert_hidden=16,
    expert_dim=8,
    lstm_hidden=8,
  )
  small.update(overrides)
  return testing.run_config("cmta", **small)


def make_networks(
  num_tasks: int,
  network_config: RunConfig | None = None,
  obs_dim: int = OBS_DIM,
  action_dim: int = ACTION_DIM,
) -> AgentNetworks:
  """CMTA networks; the same arguments return the same object (so jit caches hit)."""
  return _make_networks(num_tasks, network_config or small_network_config(), obs_dim, action_dim)


@functools.cache
def _make_networks(num_tasks, network_config, obs_dim, action_dim):
  return registry.make_agent_networks(
    network_config, [f"task{t}" for t in range(num_tasks)], obs_dim=obs_dim, action_dim=action_dim
  )


random_batch = testing.random_batch


def random_training_state(
  networks: AgentNetworks, sac_config: SACConfig, seed: int
) -> sac.TrainingState:
  """A fresh `TrainingState` laid out exactly like `sac.init_training_state`'s, with
  Glorot-scaled weights and small non-zero biases drawn by NumPy.

  Compiling the real init costs ~0.2 s per threefry draw on this CPU (~10 s
  per network); tracing its shapes is instant. Structure parity with the real
  init is checked in test_sac_update.py.
  """
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(
    lambda key: {
      "encoder": networks.encoder.init(key),
      "critic": networks.critic.init(key),
      "actor": networks.actor.init(key),
    },
    jax.random.key(0),
  )

  def draw(path, leaf):
    if getattr(path[-1], "key", None) == "b":
      return rng.uniform(-0.1, 0.1, leaf.shape).astype(leaf.dtype)
    fan_in, fan_out = leaf.shape[-2:]
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, leaf.shape).astype(leaf.dtype)

  values = jax.tree_util.tree_map_with_path(draw, shapes)
  values["log_alpha"] = np.full((networks.num_tasks,), np.log(sac_config.init_alpha), np.float32)
  # Separate device buffers for online and target parameters, as in the real init.
  params = jax.tree.map(jnp.asarray, values)
  target_params = jax.tree.map(
    jnp.asarray, {"encoder": values["encoder"], "critic": values["critic"]}
  )
  # Adam's initial state is all zeros (counts and moments): built from its shapes, no compile.
  opt_state = jax.tree.map(
    lambda leaf: jnp.asarray(np.zeros(leaf.shape, leaf.dtype)),
    jax.eval_shape(sac.make_optimizer(sac_config).init, params),
  )
  return sac.TrainingState(
    params=params,
    target_params=target_params,
    opt_state=opt_state,
    step=jnp.asarray(np.zeros((), np.int32)),
  )


@dataclasses.dataclass(frozen=True, eq=False)
class LearnerSetup:
  networks: AgentNetworks
  sac_config: SACConfig
  state: sac.TrainingState  # fresh (Adam moments zero), from `random_training_state`
  batch: Transition
  key: jax.Array
  update: Callable  # compiled update(state, batch, key) -> (state, metrics), see `fast_jit`


def learner_setup(
  num_tasks: int = 10,
  batch_per_task: int = 8,
  network_config: RunConfig | None = None,
  sac_config: SACConfig = TEST_SAC,
  obs_dim: int = OBS_DIM,
  action_dim: int = ACTION_DIM,
  seed: int = 0,
) -> LearnerSetup:
  """Networks, a fresh state, a random batch and a jitted update. Equal arguments,
  however passed, return the same setup, hence the same compiled update."""
  return _learner_setup(
    num_tasks,
    batch_per_task,
    network_config or small_network_config(),
    sac_config,
    obs_dim,
    action_dim,
    seed,
  )


@functools.cache
def _learner_setup(
  num_tasks, batch_per_task, network_config, sac_config, obs_dim, action_dim, seed
):
  networks = make_networks(num_tasks, network_config, obs_dim, action_dim)
  state = random_training_state(networks, sac_config, seed)
  batch = random_batch(
    seed + 1, num_tasks, batch_per_task, obs_dim, action_dim, networks.encoder.carry_dim
  )
  return LearnerSetup(
    networks=networks,
    sac_config=sac_config,
    state=state,
    batch=batch,
    key=jax.random.key(seed + 2),
    update=fast_jit(sac.make_update_fn(networks, sac_config)),
  )


@functools.cache
def select_action_fn(networks: AgentNetworks) -> Callable:
  """One compiled `sac.make_select_action_fn` per networks, shared by every test; pass
  `deterministic=` by keyword."""
  return fast_jit(sac.make_select_action_fn(networks), static_argnames=("deterministic",))


class TaskSliceNetworks(NamedTuple):
  """Jitted encoder/actor/critic applies on ONE task's slice [B, ...] and a task id,
  run as a group of one (the networks' [G, B, ...] layout) and returned ungrouped."""

  encoder: Callable  # (params, obs [B, O], task_id, carry [B, H]) -> EncoderOutput of [B, ...]
  actor: Callable  # (params, features [B, F], task_id) -> (mean, log_std) [B, A]
  critic: Callable  # (params, features [B, F], action [B, A], task_id) -> Q [num_q, B]


@functools.cache
def task_slice_networks(networks: AgentNetworks) -> TaskSliceNetworks:
  group = lambda tree: jax.tree.map(lambda x: jnp.asarray(x)[None], tree)
  ids = lambda task_id: jnp.reshape(jnp.asarray(task_id, jnp.int32), (1,))

  @jax.jit
  def encoder(params, obs, task_id, carry):
    out = networks.encoder.apply(params, group(obs), ids(task_id), group(carry))
    return EncoderOutput(
      features=out.features[0],
      carry=jax.tree.map(lambda x: x[0], out.carry),
      experts=None if out.experts is None else out.experts[:, 0],
      attention=None if out.attention is None else out.attention[0],
    )

  @jax.jit
  def actor(params, features, task_id):
    mean, log_std = networks.actor.apply(params, group(features), ids(task_id))
    return mean[0], log_std[0]

  @jax.jit
  def critic(params, features, action, task_id):
    return networks.critic.apply(params, group(features), group(action), ids(task_id))[:, 0]

  return TaskSliceNetworks(encoder=encoder, actor=actor, critic=critic)


@functools.partial(jax.jit, static_argnums=1)
def update_noise(key: jax.Array, shape: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
  """(noise_next, noise_now) exactly as a single-device `sac.make_update_fn` draws them."""
  key_next, key_now = jax.random.split(key)
  return jax.random.normal(key_next, shape), jax.random.normal(key_now, shape)


def applied_gradients(opt_state) -> dict:
  """The gradient the FIRST update of a fresh state applied, read from Adam's first moment.

  Only valid with adam_b1 == 0 (then mu = g exactly). Keyed like the params
  ({"encoder", "critic", "actor", "log_alpha"}): one entry per optimised group.
  """
  grads = {}
  for group_state in opt_state.inner_states.values():
    adam_state = group_state.inner_state[0]
    for name, moment in adam_state.mu.items():
      if not isinstance(moment, optax.MaskedNode):
        assert name not in grads, f"{name} is optimised by two groups"
        grads[name] = moment
  return grads


def numpy_tanh_gaussian_log_prob(mean, log_std, noise):
  """Change of variables, written out: u = mean + std * noise, a = tanh(u),
  log pi(a) = sum_d log N(u_d; mean_d, std_d) - sum_d log(1 - tanh(u_d)^2)."""
  mean, log_std, noise = (np.asarray(x, np.float64) for x in (mean, log_std, noise))
  std = np.exp(log_std)
  pre_tanh = mean + std * noise
  log_normal = -0.5 * ((pre_tanh - mean) / std) ** 2 - np.log(std) - 0.5 * np.log(2 * np.pi)
  return log_normal.sum(-1) - np.log(1.0 - np.tanh(pre_tanh) ** 2).sum(-1)


def flatten_with_names(tree) -> dict[str, np.ndarray]:
  """{"encoder/experts/0/w": array, ...} for readable assertion messages."""
  flat = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    names = (getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))) for k in path)
    flat["/".join(str(name) for name in names)] = np.asarray(leaf)
  return flat


def assert_trees_allclose(
  actual, expected, rtol: float, atol: float, leaf_scale_atol: float = 0.0
) -> None:
  """Same structure, and every leaf allclose (the failing leaf is named).

  `leaf_scale_atol` adds leaf_scale_atol * max|leaf| to atol: gradients summed
  from terms of very different sizes (beta = 2500) carry rounding relative to
  the leaf's largest entry, not to each entry.
  """
  actual_flat, expected_flat = flatten_with_names(actual), flatten_with_names(expected)
  assert actual_flat.keys() == expected_flat.keys(), (actual_flat.keys(), expected_flat.keys())
  for name, value in actual_flat.items():
    expected_value = expected_flat[name]
    scale = np.abs(expected_value).max() if expected_value.size else 0.0
    leaf_atol = atol + leaf_scale_atol * scale
    np.testing.assert_allclose(value, expected_value, rtol=rtol, atol=leaf_atol, err_msg=name)


def assert_trees_equal(actual, expected) -> None:
  """Same structure and bit-identical leaves."""
  actual_flat, expected_flat = flatten_with_names(actual), flatten_with_names(expected)
  assert actual_flat.keys() == expected_flat.keys(), (actual_flat.keys(), expected_flat.keys())
  for name, value in actual_flat.items():
    np.testing.assert_array_equal(value, expected_flat[name], err_msg=name)


# Captured at import: pytest may later drop "conftest" from sys.modules to load another one.
_THIS_MODULE = sys.modules[__name__]


@pytest.fixture(scope="session")
def helpers():
  """This module, so tests can call the builders above."""
  return _THIS_MODULE


@pytest.fixture(scope="session", autouse=True)
def _start_subprocess_tests_early(request):
  """Selected test modules that define `start_in_background()` (test_pmap) launch their
  subprocess now, so it runs beside the other tests instead of after them."""
  modules = {getattr(item, "module", None) for item in request.session.items}
  processes = [
    module.start_in_background() for module in modules if hasattr(module, "start_in_background")
  ]
  yield
  for process in processes:
    if process.poll() is None:  # its test was not reached (e.g. -x): do not leave it running
      process.kill()
      process.wait()
