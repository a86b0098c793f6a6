"""The compiled steps of training, shared by the loop, the benchmarks and the inspection tools.

Each is jitted once per run and vmapped over a leading seed axis S (S = 1 for one run): the
update step (THE SAC update with metric sums and a divergence flag), action selection for the
rollout and evaluation, and the attention diagnostics; plus the shapes they are traced with.
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from cmta_jax import config as config_lib
from cmta_jax.agents import carry as carry_lib
from cmta_jax.agents import registry, sac
from cmta_jax.envs.source import METAWORLD, EnvSource
from cmta_jax.replay import device as device_replay
from cmta_jax.training import devices as devices_lib
from cmta_jax.training import keys
from cmta_jax.types import BurnIn

DIVERGENCE_THRESHOLD = 1e8


class ReplayDraw(NamedTuple):
  """What each update reads from replay (static): `updates_per_step` batches of
  `batch_per_task` transitions per task, with burn-in windows of `burn_in_steps` (0: none)."""

  batch_per_task: int
  burn_in_steps: int = 0
  updates_per_step: int = 1


def replay_draw(run_config: config_lib.RunConfig, networks) -> ReplayDraw:
  cfg_train = run_config.train
  return ReplayDraw(
    cfg_train.batch_per_task, burn_in_steps(run_config, networks), cfg_train.updates_per_step
  )


def _replay_keys(base_key: jax.Array, step, count: int) -> jax.Array:
  """[count] keys of the replay draws at `step`: a pure function of (seed, step), so nothing
  of the sampler is checkpointed and a resumed run draws what the uninterrupted one would."""
  key = keys.step_key(base_key, keys.Stream.REPLAY, step)
  return jax.vmap(lambda k: jax.random.fold_in(key, k))(jnp.arange(count))


def make_train_step(
  networks,
  sac_config,
  draw: ReplayDraw,
  placement: devices_lib.Placement = devices_lib.SINGLE_DEVICE,
  sample_inside: bool = True,
):
  """`draw.updates_per_step` applications of THE update (a `lax.scan`), vmapped over the
  seed axis, with metric sums and a divergence flag per seed, as one jitted call; learner
  state and sums donated:

    (learner [S], totals [S], source, base_keys [S, 2], step) -> (learner, totals)

  `sample_inside`: `source` is the replay ([S, ...] `DeviceReplay`, on the learner's
  devices) and each update's batch is drawn from it inside the call. Otherwise `source` is
  the batches `make_sample` drew ([S, K, T, B, ...]). Data parallel: under `shard_map` each
  device updates on its slice of every batch (the full batch is drawn on each, from the
  replicated replay with the same keys, then sliced) and the gradients are averaged."""
  axis_name = devices_lib.DATA_AXIS if placement.data_parallel else None
  update = sac.make_update_fn(networks, sac_config, axis_name=axis_name)
  count = draw.updates_per_step

  def this_shard(batch):
    if axis_name is None:
      return batch
    local = draw.batch_per_task // placement.num_devices
    start = jax.lax.axis_index(axis_name) * local
    return jax.tree.map(lambda x: jax.lax.dynamic_slice_in_dim(x, start, local, axis=1), batch)

  def one_update(state, totals, batch, key):
    state, metrics = update(state, batch, key)
    critic_loss = metrics["critic_loss"]
    bad = jnp.any(~jnp.isfinite(critic_loss)) | jnp.any(critic_loss > DIVERGENCE_THRESHOLD)
    for value in metrics.values():
      bad = bad | jnp.any(~jnp.isfinite(value))
    totals = {
      "sums": jax.tree.map(jnp.add, totals["sums"], metrics),
      "count": totals["count"] + 1,
      "diverged": totals["diverged"] | bad,
    }
    return state, totals

  def one_seed(state, totals, source, base_key, step):
    update_key = keys.step_key(base_key, keys.Stream.UPDATE, step)
    update_keys = jax.vmap(lambda k: jax.random.fold_in(update_key, k))(jnp.arange(count))

    def body(carry, inputs):
      k, update_key, replay_key = inputs
      if sample_inside:
        batch = device_replay.sample(source, replay_key, draw.batch_per_task, draw.burn_in_steps)
      else:
        batch = jax.tree.map(lambda x: x[k], source)
      return one_update(*carry, this_shard(batch), update_key), None

    inputs = (jnp.arange(count), update_keys, _replay_keys(base_key, step, count))
    (state, totals), _ = jax.lax.scan(body, (state, totals), inputs)
    return state, totals

  train_step = jax.vmap(one_seed, in_axes=(0, 0, 0, 0, None))
  if placement.data_parallel:
    replicated = P()
    source = replicated if sample_inside else P(None, None, None, devices_lib.DATA_AXIS)
    train_step = jax.shard_map(
      train_step,
      mesh=placement.mesh,
      in_specs=(replicated, replicated, source, replicated, replicated),
      out_specs=replicated,
      check_vma=False,  # the gradients and metrics are pmean-ed, so the outputs agree
    )
  return jax.jit(train_step, donate_argnums=(0, 1))


def make_sample(draw: ReplayDraw):
  """Replay kept in host memory: (replay [S, ...], base_keys [S, 2], step) -> the batches
  [S, K, T, B, ...] the train step reads, drawn where the replay lives, with the keys that
  `make_train_step(sample_inside=True)` draws with."""

  def one_seed(replay, base_key, step):
    return jax.vmap(
      lambda key: device_replay.sample(replay, key, draw.batch_per_task, draw.burn_in_steps)
    )(_replay_keys(base_key, step, draw.updates_per_step))

  return jax.jit(jax.vmap(one_seed, in_axes=(0, 0, None)))


def make_insert():
  """(replay [S, ...], obs [S, T, obs_dim], action, reward [S, T], next_obs, terminated,
  carry_in, carry_out [S, T, H], episode_step) -> replay with every seed's vector step
  written; one jitted call, the replay donated (written in place)."""

  def insert(replay, obs, action, reward, next_obs, terminated, carry_in, carry_out, episode):
    episode_step = jnp.full(reward.shape, episode, jnp.int32)
    return jax.vmap(device_replay.insert)(
      replay, obs, action, reward, next_obs, terminated, carry_in, carry_out, episode_step
    )

  return jax.jit(insert, donate_argnums=0)


def make_diagnostic_batches(samples_per_task: int, window: int, episode_length: int):
  """(replay [S, ...], base_keys, step) -> (used, exact): each seed's replay transitions for
  the attention diagnostics (docs/carry_modes.md), drawn from its DIAGNOSTICS stream at
  `step`, gathered as the update sees them (the run's burn-in `window`, 0 = stored carries)
  and exactly (a window of a whole episode)."""

  def one_seed(replay, base_key, step):
    key = keys.step_key(base_key, keys.Stream.DIAGNOSTICS, step)
    slots = device_replay.draw_slots(replay, key, samples_per_task)
    used = device_replay.gather(replay, slots, window)
    return used, device_replay.gather(replay, slots, episode_length)

  return jax.jit(jax.vmap(one_seed, in_axes=(0, 0, None)))


def empty_totals(networks, sac_config, state, batch_shape_example):
  """Zero metric sums, update count and divergence flag for ONE seed's state and batch."""
  metrics_shape = jax.eval_shape(
    sac.make_update_fn(networks, sac_config), state, batch_shape_example, jax.random.PRNGKey(0)
  )[1]
  return {
    "sums": jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), metrics_shape),
    "count": jnp.zeros((), jnp.int32),
    "diverged": jnp.zeros((), bool),
  }


def make_act(networks):
  """Action selection for the rollout, vmapped over seeds: params, obs [S, T, obs_dim], carry
  and base keys [S, 2] have a seed axis. Warm-up actions are uniform, but carries still
  advance."""
  select_action = sac.make_select_action_fn(networks)

  def act(params, obs, task_ids, carry, base_key, step, mode: str):
    key = keys.step_key(base_key, keys.Stream.ACT, step)
    actions, carry_out = select_action(
      params, obs, task_ids, carry, key, deterministic=(mode == "eval")
    )
    if mode == "random":
      actions = jax.random.uniform(key, actions.shape, minval=-1.0, maxval=1.0)
    return actions, carry_out

  def act_seeds(params, obs, task_ids, carry, base_keys, step, mode: str):
    one_seed = functools.partial(act, mode=mode)
    return jax.vmap(one_seed, in_axes=(0, 0, None, 0, 0, None))(
      params, obs, task_ids, carry, base_keys, step
    )

  return jax.jit(act_seeds, static_argnames=("mode",))


def stack_seeds(trees: Sequence[Any]) -> Any:
  """One tree with a leading seed axis from one tree per seed."""
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def seed_slice(tree: Any, index: int) -> Any:
  return jax.tree.map(lambda leaf: leaf[index], tree)


def build_networks(run_config: config_lib.RunConfig, envs: EnvSource = METAWORLD):
  """The run's AgentNetworks, sized by the environments' observation and action sizes."""
  return registry.make_agent_networks(
    run_config, envs.task_names(run_config.env), envs.obs_dim, envs.action_dim
  )


def replay_carry_dim(networks) -> int:
  """The carry size replay stores (0 without a recurrence)."""
  return networks.encoder.carry_dim


def burn_in_steps(run_config: config_lib.RunConfig, networks) -> int:
  """The burn-in window the update's batches carry: L in carry mode `burn_in`, else 0."""
  recurrent = networks.encoder.advance_carry is not None
  return (
    run_config.recurrence.burn_in_steps
    if (recurrent and run_config.recurrence.carry_mode == "burn_in")
    else 0
  )


def batch_spec(num_tasks: int, batch_per_task: int, networks, burn_in_steps: int = 0):
  """Shapes and dtypes of ONE seed's update batch (a `Transition` of ShapeDtypeStructs)."""

  def spec(*shape):
    return jax.ShapeDtypeStruct((num_tasks, batch_per_task, *shape), jnp.float32)

  carry = sac.LSTMCarry(spec(networks.encoder.carry_dim), spec(networks.encoder.carry_dim))
  burn_in = None
  if burn_in_steps:
    burn_in = BurnIn(
      obs=spec(burn_in_steps, networks.obs_dim), mask=spec(burn_in_steps), carry=carry
    )
  return sac.Transition(
    obs=spec(networks.obs_dim),
    action=spec(networks.action_dim),
    reward=spec(),
    next_obs=spec(networks.obs_dim),
    terminated=spec(),
    carry_in=carry,
    carry_out=carry,
    burn_in=burn_in,
  )


def make_diagnostics(networks) -> Callable | None:
  """The attention diagnostics (docs/carry_modes.md) vmapped over seeds and jitted, for
  encoders with a recurrence."""
  if networks.encoder.advance_carry is None:
    return None
  return jax.jit(jax.vmap(carry_lib.make_attention_diagnostics(networks.encoder)))


@jax.jit
def all_finite(tree) -> jax.Array:
  """[S] bools: whether every inexact leaf of each seed's slice is finite."""
  leaves = [
    jnp.all(jnp.isfinite(leaf.reshape(leaf.shape[0], -1)), axis=1)
    for leaf in jax.tree.leaves(tree)
    if jnp.issubdtype(leaf.dtype, jnp.inexact)
  ]
  return jnp.all(jnp.stack(leaves), axis=0)
