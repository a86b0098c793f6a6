"""Carry modes of CMTA's LSTM (docs/carry_modes.md): what each mode stores, what the update
recomputes, and the attention-staleness diagnostic that tells them apart.

A replay buffer is filled the way the training loop fills it: the jitted action selection
advances the carry through whole episodes of random observations, and each transition stores
the carry before and after its step. Slow, obviously correct versions replay episodes with a
Python loop over `layers.lstm_apply`.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmta_jax.agents import carry as carry_lib
from cmta_jax.agents import sac
from cmta_jax.config import SACConfig
from cmta_jax.nn import layers
from cmta_jax.replay import device as device_replay
from cmta_jax.replay.buffer import ReplayBuffer
from cmta_jax.training import keys, steps
from cmta_jax.types import LSTMCarry

NUM_TASKS, EPISODE_LENGTH, EPISODES, BATCH = 3, 12, 3, 8
# A large learning rate, so a handful of updates moves the LSTM a lot.
FAST_SAC = SACConfig(adam_b1=0.0, critic_lr=3e-2)


@functools.cache
def _setup(helpers, mode: str, sac_config: SACConfig = FAST_SAC):
  return helpers.learner_setup(
    num_tasks=NUM_TASKS,
    batch_per_task=BATCH,
    sac_config=sac_config,
    network_config=helpers.small_network_config(carry_mode=mode),
  )


def _observations(seed: int = 0) -> np.ndarray:
  """[EPISODES, EPISODE_LENGTH, T, obs_dim]: a smooth random walk, as states are."""
  rng = np.random.default_rng(seed)
  steps = rng.normal(scale=0.3, size=(EPISODES, EPISODE_LENGTH, NUM_TASKS, 7))
  return np.cumsum(steps, axis=1).astype(np.float32)


def _act_and_store(helpers, setup, state, observations) -> ReplayBuffer:
  """Acts through every episode with `state`'s policy and stores what the loop stores."""
  networks = setup.networks
  select_action = helpers.select_action_fn(networks)
  buffer = ReplayBuffer(
    NUM_TASKS,
    NUM_TASKS * 1000,
    networks.obs_dim,
    networks.action_dim,
    networks.encoder.carry_dim,
    seed=0,
  )
  task_ids = np.arange(NUM_TASKS, dtype=np.int32)
  for episode in observations:
    carry = sac.initial_carry(networks, NUM_TASKS)
    for step in range(EPISODE_LENGTH):
      actions, carry_out = select_action(
        sac.policy_params(state),
        episode[step],
        task_ids,
        carry,
        jax.random.key(step),
        deterministic=False,
      )
      next_obs = episode[min(step + 1, EPISODE_LENGTH - 1)]
      buffer.add(
        episode[step],
        np.asarray(actions),
        np.zeros(NUM_TASKS),
        next_obs,
        np.zeros(NUM_TASKS),
        jax.device_get(carry),
        jax.device_get(carry_out),
        episode_step=np.full(NUM_TASKS, step),
      )
      carry = carry_out
  return buffer


@functools.cache
def _update(helpers, setup, window: int):
  """The setup's update compiled for batches with a burn-in window of `window` (0: none)."""
  del window  # part of the cache key: one executable per batch shape
  return helpers.fast_jit(sac.make_update_fn(setup.networks, setup.sac_config))


def _every_slot(buffer: ReplayBuffer) -> np.ndarray:
  return np.tile(np.arange(buffer.size_per_task), (NUM_TASKS, 1))


def _slow_replay(lstm_params, observations, start: LSTMCarry) -> LSTMCarry:
  """Python loop over steps: observations [n, T, obs_dim] from `start` [T, H]."""
  carry = start
  for obs in observations:
    carry = layers.lstm_apply(lstm_params, jnp.asarray(obs), carry)
  return carry


def _train(helpers, setup, state, buffer: ReplayBuffer, updates: int, window: int = 0):
  update = _update(helpers, setup, window)
  for i in range(updates):
    state, _ = update(
      state, jax.tree.map(jnp.asarray, buffer.sample(BATCH, window)), jax.random.key(i)
    )
  return state


def _diagnostics(helpers, setup, state, buffer: ReplayBuffer, window: int) -> dict:
  # The loop's own diagnostic draw, on this buffer's transitions as a batch of one seed.
  diagnostics = jax.jit(carry_lib.make_attention_diagnostics(setup.networks.encoder))
  batches = steps.make_diagnostic_batches(64, window, EPISODE_LENGTH)
  replay = device_replay.from_state_dict(buffer.state_dict(), *_replay_shape(buffer, setup))
  seed_axis = lambda tree: jax.tree.map(lambda leaf: leaf[None], tree)
  used, exact = batches(seed_axis(replay), keys.run_key(0)[None], 0)
  one_seed = lambda tree: jax.tree.map(lambda leaf: leaf[0], tree)
  values = diagnostics(state.params["encoder"], one_seed(used), one_seed(exact))
  return {name: float(value) for name, value in values.items()}


def _replay_shape(buffer: ReplayBuffer, setup) -> tuple[int, ...]:
  networks = setup.networks
  return (
    buffer.num_tasks,
    buffer.num_tasks * buffer.capacity_per_task,
    networks.obs_dim,
    networks.action_dim,
    networks.encoder.carry_dim,
  )


def _encoder_gradients(helpers, state, part: str) -> dict:
  """{name: gradient} the last update applied to `params["encoder"][part]`."""
  grads = helpers.flatten_with_names(helpers.applied_gradients(state.opt_state))
  return {name: g for name, g in grads.items() if name.startswith(f"encoder/{part}/")}


# ---------------------------------------------------------------- frozen_memory


def test_frozen_memory_lstm_gets_exactly_zero_gradient(helpers):
  setup = _setup(helpers, "frozen_memory")
  state, _ = setup.update(setup.state, setup.batch, setup.key)
  memory = _encoder_gradients(helpers, state, "memory_lstm")
  trained = _encoder_gradients(helpers, state, "lstm")
  assert len(memory) == 3 and len(trained) == 3
  for name, grad in memory.items():
    np.testing.assert_array_equal(grad, np.zeros_like(grad), err_msg=name)
  for name, grad in trained.items():
    assert np.any(grad != 0), name  # the step that feeds the attention does learn
  helpers.assert_trees_equal(
    state.params["encoder"]["memory_lstm"], setup.state.params["encoder"]["memory_lstm"]
  )
  # Polyak averaging of two equal values rounds to within an ulp of them.
  helpers.assert_trees_allclose(
    state.target_params["encoder"]["memory_lstm"],
    setup.state.params["encoder"]["memory_lstm"],
    rtol=1e-6,
    atol=0,
  )


def test_frozen_memory_carries_stay_exact_and_acting_matches_the_update(helpers):
  setup = _setup(helpers, "frozen_memory")
  observations = _observations()
  buffer = _act_and_store(helpers, setup, setup.state, observations)
  trained = _train(helpers, setup, setup.state, buffer, updates=5)
  encoder_params = trained.params["encoder"]
  assert not np.allclose(
    encoder_params["lstm"]["w_in"], setup.state.params["encoder"]["lstm"]["w_in"]
  )

  # A stored carry still equals the carry recomputed from the episode start, now.
  batch = buffer.gather(_every_slot(buffer), burn_in_steps=EPISODE_LENGTH)
  recomputed = carry_lib.replay_carry(
    setup.networks.encoder.advance_carry, encoder_params, jax.tree.map(jnp.asarray, batch.burn_in)
  )
  np.testing.assert_allclose(recomputed.h, batch.carry_in.h, atol=1e-6)
  np.testing.assert_allclose(recomputed.c, batch.carry_in.c, atol=1e-6)

  # Acting with the trained encoder holds those same carries, so it computes the attention
  # the update computes from the stored transition.
  rebuffer = _act_and_store(helpers, setup, trained, observations)
  again = rebuffer.gather(_every_slot(rebuffer))
  np.testing.assert_allclose(again.carry_in.h, batch.carry_in.h, atol=1e-6)
  apply = jax.jit(setup.networks.encoder.apply)
  task_ids = jnp.arange(NUM_TASKS, dtype=jnp.int32)
  for slot in (0, 5, EPISODE_LENGTH + 7):
    acting = apply(
      encoder_params,
      again.obs[:, slot : slot + 1],
      task_ids,
      jax.tree.map(lambda x: x[:, slot : slot + 1], again.carry_in),
    ).attention
    update = apply(encoder_params, batch.obs, task_ids, batch.carry_in).attention[
      :, slot : slot + 1
    ]
    np.testing.assert_allclose(acting, update, atol=1e-6)
  assert _diagnostics(helpers, setup, trained, buffer, window=0)["attention_staleness"] < 1e-5


# ---------------------------------------------------------------- frozen_lstm


def test_frozen_lstm_gets_exactly_zero_gradient_and_its_carries_stay_exact(helpers):
  setup = _setup(helpers, "frozen_lstm")
  state, _ = setup.update(setup.state, setup.batch, setup.key)
  lstm = _encoder_gradients(helpers, state, "lstm")
  attention = _encoder_gradients(helpers, state, "attention")
  assert len(lstm) == 3 and not _encoder_gradients(helpers, state, "memory_lstm")
  for name, grad in lstm.items():
    np.testing.assert_array_equal(grad, np.zeros_like(grad), err_msg=name)
  assert all(np.any(g != 0) for g in attention.values())  # the attention still learns

  observations = _observations()
  buffer = _act_and_store(helpers, setup, setup.state, observations)
  trained = _train(helpers, setup, setup.state, buffer, updates=5)
  helpers.assert_trees_equal(
    trained.params["encoder"]["lstm"], setup.state.params["encoder"]["lstm"]
  )
  batch = buffer.gather(_every_slot(buffer), burn_in_steps=EPISODE_LENGTH)
  recomputed = carry_lib.replay_carry(
    setup.networks.encoder.advance_carry,
    trained.params["encoder"],
    jax.tree.map(jnp.asarray, batch.burn_in),
  )
  np.testing.assert_allclose(recomputed.h, batch.carry_in.h, atol=1e-6)


# ---------------------------------------------------------------- burn_in


@pytest.mark.parametrize("length", [4, EPISODE_LENGTH])
def test_burn_in_recomputes_the_carry_of_a_slow_episode_replay(helpers, length):
  setup = _setup(helpers, "burn_in")
  buffer = _act_and_store(helpers, setup, setup.state, _observations())
  # New LSTM parameters, so the stored carries are stale and only a replay is right.
  rng = np.random.default_rng(1)
  new_params = jax.tree.map(
    lambda p: p + rng.normal(scale=0.3, size=p.shape).astype(p.dtype), setup.state.params["encoder"]
  )
  slots = _every_slot(buffer)
  batch = buffer.gather(slots, burn_in_steps=length)
  recomputed = jax.jit(carry_lib.replay_carry, static_argnums=0)(
    setup.networks.encoder.advance_carry, new_params, jax.tree.map(jnp.asarray, batch.burn_in)
  )
  stored = buffer.gather(slots)
  for slot in range(buffer.size_per_task):
    episode, step = divmod(slot, EPISODE_LENGTH)
    replayed = min(length, step)
    first = episode * EPISODE_LENGTH + step - replayed
    start = jax.tree.map(lambda x: jnp.asarray(x[:, first]), stored.carry_in)
    if replayed == step:
      np.testing.assert_array_equal(start.h, 0.0)  # the episode start's carry is zero
    window = stored.obs[:, first:slot].swapaxes(0, 1)  # [replayed, T, obs_dim]
    expected = _slow_replay(new_params["lstm"], window, start)
    np.testing.assert_allclose(recomputed.h[:, slot], expected.h, atol=2e-6, err_msg=str(slot))
    np.testing.assert_allclose(recomputed.c[:, slot], expected.c, atol=2e-6, err_msg=str(slot))
  if length >= EPISODE_LENGTH:
    assert not np.allclose(recomputed.h, stored.carry_in.h, atol=1e-3)  # stale vs fresh


def test_burn_in_update_equals_stored_update_on_exact_carries(helpers):
  """With L = the episode length, the update in burn_in mode computes exactly what the stored
  mode computes when handed the freshly replayed carries (target = online at a fresh state)."""
  burn_in, stored = _setup(helpers, "burn_in"), _setup(helpers, "stored")
  rng = np.random.default_rng(2)
  params = jax.tree.map(
    lambda p: p + rng.normal(scale=0.3, size=p.shape).astype(p.dtype),
    burn_in.state.params["encoder"],
  )
  state = dataclasses.replace(
    burn_in.state,
    params={**burn_in.state.params, "encoder": params},
    target_params={**burn_in.state.target_params, "encoder": params},
  )
  buffer = _act_and_store(helpers, burn_in, burn_in.state, _observations())
  batch = jax.tree.map(jnp.asarray, buffer.sample(BATCH, EPISODE_LENGTH))
  carry_in = carry_lib.replay_carry(burn_in.networks.encoder.advance_carry, params, batch.burn_in)
  carry_out = layers.lstm_apply(params["lstm"], batch.obs, carry_in)
  fresh = batch._replace(carry_in=carry_in, carry_out=carry_out, burn_in=None)
  new_burn_in, metrics_burn_in = _update(helpers, burn_in, EPISODE_LENGTH)(
    state, batch, burn_in.key
  )
  new_stored, metrics_stored = _update(helpers, stored, 0)(state, fresh, burn_in.key)
  helpers.assert_trees_allclose(metrics_burn_in, metrics_stored, rtol=1e-5, atol=1e-5)
  helpers.assert_trees_allclose(new_burn_in.params, new_stored.params, rtol=1e-5, atol=1e-6)
  # And it is not what the stale stored carries give.
  _, metrics_stale = _update(helpers, stored, 0)(state, batch._replace(burn_in=None), burn_in.key)
  assert not np.allclose(metrics_stale["critic_loss"], metrics_burn_in["critic_loss"], rtol=1e-4)


# ---------------------------------------------------------------- the staleness diagnostic


@pytest.mark.parametrize(
  "mode,window,stale_after_training",
  [
    ("stored", 0, True),
    ("frozen_memory", 0, False),
    ("frozen_lstm", 0, False),
    ("burn_in", EPISODE_LENGTH, False),  # a window of a whole episode: exact
    ("burn_in", 3, True),  # shorter than the episode: fresher than stored, not exact
  ],
)
def test_attention_staleness_tells_fresh_from_stale_carries(
  helpers, mode, window, stale_after_training
):
  setup = _setup(helpers, mode)
  buffer = _act_and_store(helpers, setup, setup.state, _observations())
  before = _diagnostics(helpers, setup, setup.state, buffer, window)
  assert before["attention_staleness"] < 1e-5  # the LSTM has not changed since acting
  assert 0.0 < before["attention_entropy_fresh"] <= np.log(3) + 1e-6  # 3 experts
  trained = _train(helpers, setup, setup.state, buffer, updates=10, window=window)
  after = _diagnostics(helpers, setup, trained, buffer, window)
  if stale_after_training:
    assert after["attention_staleness"] > 2e-3, after  # (fresh: below 1e-5)
  else:
    assert after["attention_staleness"] < 1e-5, after
