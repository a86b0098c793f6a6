"""Tests for the device replay, against the host `ReplayBuffer` as the reference."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmta_jax.replay import device
from cmta_jax.replay.buffer import ReplayBuffer
from cmta_jax.types import LSTMCarry

OBS_DIM, ACTION_DIM = 5, 3

insert = jax.jit(device.insert, donate_argnums=0)
gather = jax.jit(device.gather, static_argnums=2)
sample = jax.jit(device.sample, static_argnums=(2, 3))


def vector_steps(
  rng, num_tasks, num_steps, carry_dim, max_episode, min_episode=1, synchronous=True
):
  """Vector steps with episodes of random lengths in min_episode..max_episode (the same for
  every task when `synchronous`, as the loop's vector environment), carry_in zero at a start
  and the previous carry_out after. obs[t, 0] is the task, obs[t, 1] the step's index."""

  def lengths(n):
    return rng.integers(min_episode, max_episode + 1, n)

  episode_step = np.zeros(num_tasks, np.int32)
  length = np.broadcast_to(lengths(1 if synchronous else num_tasks), (num_tasks,)).copy()
  carry_out = None
  for index in range(num_steps):
    obs = rng.normal(size=(num_tasks, OBS_DIM)).astype(np.float32)
    obs[:, 0], obs[:, 1] = np.arange(num_tasks), index
    start = (episode_step == 0)[:, None]
    new_out = LSTMCarry(*rng.normal(size=(2, num_tasks, carry_dim)).astype(np.float32))
    if carry_out is None:
      carry_in = LSTMCarry(np.zeros_like(new_out.h), np.zeros_like(new_out.c))
    else:
      carry_in = LSTMCarry(*(np.where(start, 0.0, x).astype(np.float32) for x in carry_out))
    yield dict(
      obs=obs,
      action=rng.normal(size=(num_tasks, ACTION_DIM)).astype(np.float32),
      reward=rng.normal(size=num_tasks).astype(np.float32),
      next_obs=rng.normal(size=(num_tasks, OBS_DIM)).astype(np.float32),
      terminated=rng.random(num_tasks) < 0.3,  # bools, stored as 0/1
      carry_in=carry_in,
      carry_out=new_out,
      episode_step=episode_step.copy(),
    )
    carry_out = new_out
    episode_step += 1
    ended = episode_step >= length
    if synchronous and ended[0]:
      length[:] = lengths(1)
    elif not synchronous:
      length = np.where(ended, lengths(num_tasks), length)
    episode_step[ended] = 0


def assert_same_replay(buffer: ReplayBuffer, replay: device.DeviceReplay) -> None:
  assert set(replay.storage) == set(buffer._storage)
  for name, array in buffer._storage.items():
    assert replay.storage[name].dtype == array.dtype, name
    np.testing.assert_array_equal(replay.storage[name], array, err_msg=name)
  np.testing.assert_array_equal(replay.oldest_in, buffer._oldest_in, err_msg="oldest carry_in")
  state = buffer.state_dict()
  oldest = (state["pos"] - state["size"]) % buffer.capacity_per_task
  oldest_out = np.stack([buffer._storage[name][:, oldest] for name in ("h_out", "c_out")])
  np.testing.assert_array_equal(replay.oldest_out, oldest_out * (state["size"] > 0))
  assert int(replay.size) == buffer.size_per_task
  assert int(replay.pos) == buffer.state_dict()["pos"]
  assert replay.size.dtype == replay.pos.dtype == jnp.int32


def assert_same_batch(expected, actual) -> None:
  """Same tree (burn_in None in both or in neither), dtypes and values, leaf by leaf."""
  chex.assert_trees_all_equal_structs(expected, actual)
  for (path, leaf), other in zip(
    jax.tree_util.tree_leaves_with_path(expected), jax.tree.leaves(actual)
  ):
    name = jax.tree_util.keystr(path)
    assert other.dtype == leaf.dtype, name
    np.testing.assert_array_equal(other, leaf, err_msg=name)


def every_slot(num_tasks: int, capacity: int, size: int, rng) -> np.ndarray:
  """[T, capacity + 7] slots: each filled slot at least once (oldest, newest and the ring
  edge included), then random ones; a fixed shape so the jitted gather compiles once."""
  covering = np.tile(np.arange(capacity) % size, (num_tasks, 1))
  extra = rng.integers(0, size, (num_tasks, 7))
  return np.concatenate([covering, extra], axis=1).astype(np.int32)


def make_pair(num_tasks, per_task, carry_dim):
  args = (num_tasks, num_tasks * per_task, OBS_DIM, ACTION_DIM, carry_dim)
  return ReplayBuffer(*args, seed=0), device.init(*args)


def fill_both(buffer, replay, steps):
  for step in steps:
    buffer.add(**step)
    replay = insert(replay, **step)
  return replay


@pytest.mark.parametrize(
  "num_tasks, per_task, carry_dim, num_steps, max_episode, synchronous",
  [
    (3, 1, 4, 6, 3, True),  # capacity 1: only the newest step, its own carry_in
    (2, 2, 4, 11, 4, True),
    (3, 2, 0, 9, 3, True),  # no recurrence: [T, N, 0] carries
    (2, 7, 3, 40, 9, True),  # wraps five times; episodes longer and shorter than the ring
    (3, 5, 0, 23, 6, True),
    (3, 6, 2, 30, 8, False),  # each task's episodes end at different steps
  ],
)
def test_insert_and_gather_match_the_host_buffer(
  num_tasks, per_task, carry_dim, num_steps, max_episode, synchronous
):
  rng = np.random.default_rng(num_tasks * 100 + per_task * 10 + carry_dim)
  buffer, replay = make_pair(num_tasks, per_task, carry_dim)
  if not synchronous:
    # The host buffer's chain check wants every task's episode to start together; its
    # storage and gather do not.
    buffer._check_carry_in = lambda carry_in, episode_step: None
  assert_same_replay(buffer, replay)
  starts, mixed = 0, 0
  steps = vector_steps(rng, num_tasks, num_steps, carry_dim, max_episode, synchronous=synchronous)
  for step in steps:
    starts += int(np.sum(step["episode_step"] == 0))
    mixed += len(np.unique(step["episode_step"] == 0)) > 1
    replay = fill_both(buffer, replay, [step])
    assert_same_replay(buffer, replay)
    slots = every_slot(num_tasks, per_task, buffer.size_per_task, rng)
    for burn_in_steps in (0, 1, 3, max_episode):
      assert_same_batch(buffer.gather(slots, burn_in_steps), gather(replay, slots, burn_in_steps))
  assert starts > num_tasks  # several episodes, not one long one
  assert (mixed > 0) == (not synchronous)


def test_windows_stop_at_the_oldest_slot_and_at_episode_starts():
  # 5 slots, 14 steps in episodes of 4: the ring holds steps 9..13, and the oldest (9) is
  # step 1 of the episode 8..11, whose start was overwritten.
  rng = np.random.default_rng(3)
  buffer, replay = make_pair(2, 5, 3)
  steps = list(vector_steps(rng, 2, 14, 3, max_episode=4, min_episode=4))
  replay = fill_both(buffer, replay, steps)
  assert_same_replay(buffer, replay)
  np.testing.assert_array_equal(replay.oldest_in[0], steps[8]["carry_out"].h)
  slots = np.asarray([[4, 0, 1, 2, 3]] * 2, np.int32)  # steps 9, 10, 11, 12, 13 in order
  batch = gather(replay, slots, 3)
  assert_same_batch(buffer.gather(slots, 3), batch)
  np.testing.assert_array_equal(batch.obs[:, :, 1], [[9, 10, 11, 12, 13]] * 2)
  # Replayed steps: none before the oldest (9); 10 and 11 back to 9 only; 12 and 13 from
  # their own episode's start (12).
  np.testing.assert_array_equal(batch.burn_in.mask.sum(-1), [[0, 1, 2, 0, 1]] * 2)
  np.testing.assert_array_equal(batch.burn_in.obs[:, 2, 1:, 1], [[9, 10]] * 2)
  np.testing.assert_array_equal(batch.burn_in.obs[:, 2, 0], 0.0)
  # A window that starts at the oldest slot starts from the kept-aside carry_in.
  for b in (0, 1, 2):
    np.testing.assert_array_equal(batch.burn_in.carry.c[:, b], steps[8]["carry_out"].c)
  np.testing.assert_array_equal(batch.burn_in.carry.h[:, 3:], 0.0)  # episode start


def test_sample_draws_filled_slots_of_each_task_row():
  rng = np.random.default_rng(5)
  buffer, replay = make_pair(3, 50, 4)
  replay = fill_both(buffer, replay, vector_steps(rng, 3, 12, 4, max_episode=5))
  key = jax.random.PRNGKey(0)
  batch = sample(replay, key, 64, 3)
  chex.assert_shape(batch.obs, (3, 64, OBS_DIM))
  chex.assert_shape(batch.burn_in.obs, (3, 64, 3, OBS_DIM))
  chex.assert_shape(batch.carry_in.h, (3, 64, 4))
  for task in range(3):
    np.testing.assert_array_equal(batch.obs[task, :, 0], task)  # row t holds only task t
  steps = np.asarray(batch.obs[:, :, 1])
  assert steps.min() >= 0 and steps.max() <= 11  # never an unwritten slot
  assert len(np.unique(steps)) > 6
  # The drawn slots, gathered by the host buffer, give the same batch.
  slots = jax.jit(device.draw_slots, static_argnums=2)(replay, key, 64)
  chex.assert_shape(slots, (3, 64))
  assert slots.dtype == jnp.int32
  assert_same_batch(buffer.gather(np.asarray(slots), 3), batch)
  # Deterministic for a key; another key draws other slots.
  assert_same_batch(batch, sample(replay, key, 64, 3))
  assert not np.array_equal(batch.obs, sample(replay, jax.random.PRNGKey(1), 64, 3).obs)
  assert sample(replay, key, 64, 0).burn_in is None


def test_sample_of_an_empty_replay_is_all_zeros():
  replay = device.init(2, 20, OBS_DIM, ACTION_DIM, 3)
  batch = sample(replay, jax.random.PRNGKey(0), 4, 2)
  for leaf in jax.tree.leaves(batch):
    np.testing.assert_array_equal(leaf, 0.0)


def test_jitted_insert_is_in_place_and_sample_compiles_once():
  rng = np.random.default_rng(6)
  replay = device.init(2, 2 * 5, OBS_DIM, ACTION_DIM, 3)
  traces = {"insert": 0, "sample": 0}  # a function body runs once per trace, not per call

  def counted_insert(*args, **kwargs):
    traces["insert"] += 1
    return device.insert(*args, **kwargs)

  def counted_sample(replay, key, batch_per_task, burn_in_steps):
    traces["sample"] += 1
    return device.sample(replay, key, batch_per_task, burn_in_steps)

  jit_insert = jax.jit(counted_insert, donate_argnums=0)
  jit_sample = jax.jit(counted_sample, static_argnums=(2, 3))
  for index, step in enumerate(vector_steps(rng, 2, 12, 3, max_episode=4)):
    before = replay
    replay = jit_insert(replay, **step)
    assert all(leaf.is_deleted() for leaf in jax.tree.leaves(before))  # donated, reused
    batch = jit_sample(replay, jax.random.PRNGKey(index), 8, 3)
    assert batch.obs[0, :, 1].max() <= index
  assert traces == {"insert": 1, "sample": 1}
  assert jit_insert._cache_size() == jit_sample._cache_size() == 1


def test_insert_copies_no_stored_field():
  # In place means no temporary as large as a stored field: an XLA computation that reads a
  # buffer and then writes it in place gets a whole copy of it instead.
  replay = device.init(2, 2 * 2000, OBS_DIM, ACTION_DIM, 3)
  smallest = min(array.nbytes for array in replay.storage.values())
  step = next(vector_steps(np.random.default_rng(0), 2, 1, 3, max_episode=2))
  seeds = jax.tree.map(lambda x: np.stack([x, x]), (replay, step))

  def insert_then_sample(replay, step, key):
    replay = device.insert(replay, **step)
    return replay, device.sample(replay, key, 16, 4)

  for name, fn, args in [
    ("insert", lambda replay, step: device.insert(replay, **step), (replay, step)),
    ("vmapped", lambda replay, step: jax.vmap(device.insert)(replay, **step), seeds),
    ("insert, then sample", insert_then_sample, (replay, step, jax.random.PRNGKey(0))),
  ]:
    compiled = jax.jit(fn, donate_argnums=0).lower(*args).compile()
    assert compiled.memory_analysis().temp_size_in_bytes < smallest, name


def test_vmap_over_seeds_matches_each_seed_alone():
  num_seeds, num_tasks, carry_dim = 2, 3, 4
  streams = [
    list(vector_steps(np.random.default_rng(seed), num_tasks, 9, carry_dim, max_episode=4))
    for seed in range(num_seeds)
  ]
  alone = [
    device.init(num_tasks, num_tasks * 5, OBS_DIM, ACTION_DIM, carry_dim) for _ in range(num_seeds)
  ]
  stacked = jax.tree.map(lambda *x: jnp.asarray(np.stack(x)), *alone)
  vmapped_insert = jax.jit(jax.vmap(device.insert), donate_argnums=0)
  vmapped_sample = jax.jit(jax.vmap(lambda replay, key: device.sample(replay, key, 16, 3)))
  for steps in zip(*streams):
    alone = [insert(replay, **step) for replay, step in zip(alone, steps)]
    stacked = vmapped_insert(stacked, **jax.tree.map(lambda *x: np.stack(x), *steps))
    for seed in range(num_seeds):
      for mine, theirs in zip(jax.tree.leaves(alone[seed]), jax.tree.leaves(stacked)):
        np.testing.assert_array_equal(np.asarray(theirs)[seed], mine)
  seed_keys = jax.random.split(jax.random.PRNGKey(7), num_seeds)
  batch = vmapped_sample(stacked, seed_keys)
  chex.assert_shape(batch.burn_in.obs, (num_seeds, num_tasks, 16, 3, OBS_DIM))
  for seed in range(num_seeds):
    own = sample(alone[seed], seed_keys[seed], 16, 3)
    assert_same_batch(own, jax.tree.map(lambda x: np.asarray(x)[seed], batch))
  assert not np.array_equal(batch.obs[0], batch.obs[1])


@pytest.mark.parametrize("carry_dim", [4, 0])
@pytest.mark.parametrize("num_steps", [0, 6, 27])  # empty, partly filled, wrapped
def test_host_state_loads_into_the_device_replay_and_back(carry_dim, num_steps):
  rng = np.random.default_rng(num_steps)
  buffer, replay = make_pair(3, 10, carry_dim)
  for step in vector_steps(rng, 3, num_steps, carry_dim, max_episode=7):
    buffer.add(**step)
  state = buffer.state_dict()
  restored = device.from_state_dict(state, 3, 30, OBS_DIM, ACTION_DIM, carry_dim)
  assert_same_replay(buffer, restored)
  if num_steps:
    slots = every_slot(3, 10, buffer.size_per_task, rng)
    for burn_in_steps in (0, 2, 7):
      assert_same_batch(buffer.gather(slots, burn_in_steps), gather(restored, slots, burn_in_steps))
  back = device.to_state_dict(restored)
  assert set(back) == set(state) - {"rng_state"}  # the device replay has no sampler state
  for name, value in back.items():
    np.testing.assert_array_equal(value, state[name], err_msg=name)
    assert np.asarray(value).dtype == np.asarray(state[name]).dtype, name
  assert isinstance(back["size"], int) and isinstance(back["pos"], int)
  # The restored arrays are the replay's own: the next insert writes in place.
  step = next(vector_steps(rng, 3, 1, carry_dim, max_episode=7))
  buffer.add(**step)
  assert_same_replay(buffer, insert(restored, **step))
  assert restored.storage["obs"].is_deleted()


@pytest.mark.parametrize("carry_dim", [4, 0])
def test_seeds_load_one_at_a_time_into_a_batch_and_save_one_at_a_time(carry_dim):
  # A resume of a batch: each seed's checkpointed state (the host format, its sampler state
  # included) into its slot of an empty [S, ...] replay; a save: one seed's state back.
  rng = np.random.default_rng(5)
  buffers = []
  for num_steps in (27, 6):  # one seed wrapped, one partly filled
    buffer, _ = make_pair(3, 10, carry_dim)
    for step in vector_steps(rng, 3, num_steps, carry_dim, max_episode=7):
      buffer.add(**step)
    buffers.append(buffer)
  replay = device.init_seeds(2, 3, 30, OBS_DIM, ACTION_DIM, carry_dim)
  for index, buffer in enumerate(buffers):
    replay = device.load_seed(replay, index, buffer.state_dict())
  for index, buffer in enumerate(buffers):
    one = jax.tree.map(lambda leaf: leaf[index], replay)
    assert_same_replay(buffer, one)
    slots = every_slot(3, 10, buffer.size_per_task, rng)
    assert_same_batch(buffer.gather(slots, 3), gather(one, slots, 3))
    saved, expected = device.to_state_dict(replay, index), buffer.state_dict()
    assert set(saved) == set(expected) - {"rng_state"}
    for name, value in saved.items():
      np.testing.assert_array_equal(value, expected[name], err_msg=name)


@pytest.mark.parametrize("carry_dim", [4, 0])
def test_device_state_loads_into_a_host_buffer(carry_dim):
  rng = np.random.default_rng(8)
  reference, replay = make_pair(3, 10, carry_dim)
  replay = fill_both(reference, replay, vector_steps(rng, 3, 24, carry_dim, max_episode=7))
  state = device.to_state_dict(replay)
  if not carry_dim:
    assert not {"h_out", "c_out", "oldest_h_in", "oldest_c_in"} & set(state)
  assert all(np.asarray(value).size for value in state.values())  # orbax rejects empty arrays
  loaded = ReplayBuffer(3, 30, OBS_DIM, ACTION_DIM, carry_dim, seed=5)
  loaded.load_state_dict(state)  # keeps its own generator: no rng_state in the state
  fresh = ReplayBuffer(3, 30, OBS_DIM, ACTION_DIM, carry_dim, seed=5)
  np.testing.assert_array_equal(loaded.state_dict()["rng_state"], fresh.state_dict()["rng_state"])
  assert_same_replay(loaded, replay)
  slots = every_slot(3, 10, 10, rng)
  assert_same_batch(loaded.gather(slots, 5), gather(replay, slots, 5))
  # Both continue identically; the state holds copies, so the next insert still writes in
  # place and leaves the state as it was.
  saved = {name: np.copy(value) for name, value in state.items()}
  step = next(vector_steps(rng, 3, 1, carry_dim, max_episode=7))
  loaded.add(**step)
  after = insert(replay, **step)
  assert replay.storage["obs"].is_deleted()
  assert_same_replay(loaded, after)
  for name, value in saved.items():
    np.testing.assert_array_equal(state[name], value, err_msg=name)


def test_a_state_of_the_format_with_carry_in_per_slot_loads():
  rng = np.random.default_rng(9)
  buffer, _ = make_pair(2, 6, 3)
  for step in vector_steps(rng, 2, 17, 3, max_episode=9):
    buffer.add(**step)
  old = {k: v for k, v in buffer.state_dict().items() if not k.startswith("oldest_")}
  carry_in = buffer.gather(np.tile(np.arange(6), (2, 1))).carry_in
  old["h_in"], old["c_in"] = carry_in.h, carry_in.c
  assert_same_replay(buffer, device.from_state_dict(old, 2, 12, OBS_DIM, ACTION_DIM, 3))


def test_from_state_dict_rejects_a_mismatched_state():
  rng = np.random.default_rng(10)
  buffer, _ = make_pair(3, 10, 4)
  for step in vector_steps(rng, 3, 5, 4, max_episode=3):
    buffer.add(**step)
  state = buffer.state_dict()
  with pytest.raises(ValueError, match="from_state_dict: capacity_per_task is 10 in the state"):
    device.from_state_dict(state, 3, 60, OBS_DIM, ACTION_DIM, 4)
  with pytest.raises(ValueError, match="from_state_dict: carry_dim is 4 in the state but 0"):
    device.from_state_dict(state, 3, 30, OBS_DIM, ACTION_DIM, 0)
  with pytest.raises(ValueError, match="from_state_dict: reward has shape"):
    device.from_state_dict({**state, "reward": state["reward"][:, :4]}, 3, 30, 5, 3, 4)
  with pytest.raises(ValueError, match="from_state_dict: the state has no field 'oldest_h_in'"):
    device.from_state_dict({k: v for k, v in state.items() if k != "oldest_h_in"}, 3, 30, 5, 3, 4)
  with pytest.raises(ValueError, match="from_state_dict: size 11 / pos 5 out of range"):
    device.from_state_dict({**state, "size": 11}, 3, 30, OBS_DIM, ACTION_DIM, 4)


def test_bad_arguments():
  for make in (device.init, lambda *a: ReplayBuffer(*a, seed=0)):
    with pytest.raises(ValueError, match="capacity 4 gives 0 slots per task"):
      make(5, 4, OBS_DIM, ACTION_DIM, 3)
    with pytest.raises(ValueError, match="need obs_dim >= 1"):
      make(2, 10, 0, ACTION_DIM, 3)
  replay = device.init(2, 20, OBS_DIM, ACTION_DIM, 3)
  for bad in (0, -3, 2.5):
    with pytest.raises(ValueError, match="batch_per_task"):
      device.sample(replay, jax.random.PRNGKey(0), bad)
  with pytest.raises(ValueError, match="burn_in_steps"):
    device.sample(replay, jax.random.PRNGKey(0), 4, -1)
  with pytest.raises(AssertionError):
    device.gather(replay, jnp.zeros((3, 4), jnp.int32))  # three rows for two tasks
  step = next(vector_steps(np.random.default_rng(0), 2, 1, 3, max_episode=2))
  with pytest.raises(AssertionError, match="insert: action"):
    insert(replay, **{**step, "action": step["action"][:, :2]})
  with pytest.raises(AssertionError, match="insert: h_in"):
    insert(replay, **{**step, "carry_in": LSTMCarry(step["carry_in"].h[:, :2], step["carry_in"].c)})
