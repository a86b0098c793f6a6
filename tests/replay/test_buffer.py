"""Tests for the task-balanced replay buffer."""

import jax
import numpy as np
import pytest

from cmta_jax.replay.buffer import ReplayBuffer, sample_seeds
from cmta_jax.replay.memory import check_fits_in_memory, format_bytes
from cmta_jax.types import LSTMCarry

OBS_DIM, ACTION_DIM, CARRY_DIM = 5, 3, 4
EPISODE_LENGTH = 6  # of the steps `fill` adds: step id s is step s % 6 of its episode


def make_step(
  num_tasks: int, step: int, carry_dim: int = CARRY_DIM, episode_length: int = EPISODE_LENGTH
) -> dict:
  """Distinct, recognisable values for one vector step: obs[t, 0] = task, obs[t, 1] = step id."""
  tasks = np.arange(num_tasks, dtype=np.float32)
  ident = tasks * 1000.0 + step  # unique per (task, step)
  obs = np.stack(
    [tasks, np.full(num_tasks, step, np.float32)] + [ident + 0.1 * k for k in range(OBS_DIM - 2)],
    axis=1,
  )

  def carry(ident, offset):
    return (ident[:, None] + offset + 0.01 * np.arange(carry_dim)).astype(np.float32)

  # Only carry_out is stored: carry_in is the previous step's carry_out, zero at step 0.
  carry_out = LSTMCarry(carry(ident, 0.3), carry(ident, 0.4))
  if step % episode_length == 0:
    carry_in = LSTMCarry(np.zeros_like(carry_out.h), np.zeros_like(carry_out.c))
  else:
    carry_in = LSTMCarry(carry(ident - 1, 0.3), carry(ident - 1, 0.4))
  return dict(
    obs=obs,
    action=np.stack([-ident - 0.5 * k for k in range(ACTION_DIM)], axis=1),
    reward=ident + 0.25,
    next_obs=obs + 0.5,
    terminated=(np.arange(num_tasks) + step) % 2 == 0,  # bools must be stored as 0/1
    carry_in=carry_in,
    carry_out=carry_out,
    episode_step=np.full(num_tasks, step % episode_length),
  )


def flat_fields(step: dict) -> dict:
  return dict(
    obs=step["obs"],
    action=step["action"],
    reward=step["reward"],
    next_obs=step["next_obs"],
    terminated=step["terminated"].astype(np.float32),
    h_in=step["carry_in"].h,
    c_in=step["carry_in"].c,
    h_out=step["carry_out"].h,
    c_out=step["carry_out"].c,
    episode_step=step["episode_step"],
  )


def sample_fields(batch) -> dict:
  return dict(
    obs=batch.obs,
    action=batch.action,
    reward=batch.reward,
    next_obs=batch.next_obs,
    terminated=batch.terminated,
    h_in=batch.carry_in.h,
    c_in=batch.carry_in.c,
    h_out=batch.carry_out.h,
    c_out=batch.carry_out.c,
  )


def assert_same_contents(a: ReplayBuffer, b: ReplayBuffer) -> None:
  """Whole storage, unwritten tail included, plus size, write position and RNG state."""
  for name, array in a._storage.items():
    np.testing.assert_array_equal(b._storage[name], array, err_msg=name)
  np.testing.assert_array_equal(b._oldest_in, a._oldest_in, err_msg="oldest carry_in")
  state_a, state_b = a.state_dict(), b.state_dict()
  assert (state_a["size"], state_a["pos"]) == (state_b["size"], state_b["pos"])
  np.testing.assert_array_equal(state_a["rng_state"], state_b["rng_state"])


def fill(
  buffer: ReplayBuffer, steps, carry_dim: int = CARRY_DIM, episode_length: int = EPISODE_LENGTH
) -> dict:
  """Adds the given steps; returns {step id: per-task field values} for lookup."""
  added = {}
  for step in steps:
    values = make_step(buffer.num_tasks, step, carry_dim, episode_length)
    buffer.add(**values)
    added[step] = flat_fields(values)
  return added


def test_balanced_sampling_from_filled_slots_only():
  buffer = ReplayBuffer(
    num_tasks=3,
    capacity=3 * 50,
    obs_dim=OBS_DIM,
    action_dim=ACTION_DIM,
    carry_dim=CARRY_DIM,
    seed=0,
  )
  fill(buffer, range(7))  # partially filled: 7 of 50 slots per task
  assert buffer.size_per_task == 7 and len(buffer) == 21 and buffer.capacity_per_task == 50
  batch = buffer.sample(64)
  assert batch.obs.shape == (3, 64, OBS_DIM) and batch.reward.shape == (3, 64)
  assert batch.carry_in.h.shape == (3, 64, CARRY_DIM)
  for task in range(3):
    np.testing.assert_array_equal(batch.obs[task, :, 0], task)  # row t holds only task t
  steps = batch.obs[:, :, 1]
  assert steps.min() >= 0 and steps.max() <= 6  # never the zero-filled, unwritten slots
  assert len(np.unique(steps)) > 1


def test_wrap_around_overwrites_oldest():
  buffer = ReplayBuffer(2, 2 * 10, OBS_DIM, ACTION_DIM, CARRY_DIM, seed=1)
  fill(buffer, range(10 + 4))
  assert buffer.size_per_task == 10 and len(buffer) == 20
  stored = buffer.state_dict()
  for task in range(2):
    assert sorted(stored["obs"][task, :, 1].tolist()) == list(range(4, 14))  # steps 0..3 gone
  seen = np.unique(buffer.sample(2000).obs[:, :, 1])
  np.testing.assert_array_equal(seen, np.arange(4, 14))


@pytest.mark.parametrize("carry_dim", [CARRY_DIM, 0])
def test_every_field_round_trips_exactly(carry_dim):
  buffer = ReplayBuffer(3, 3 * 20, OBS_DIM, ACTION_DIM, carry_dim, seed=2)
  added = fill(buffer, range(12), carry_dim)
  batch = sample_fields(buffer.sample(40))
  assert batch["h_out"].shape == (3, 40, carry_dim)
  for name, value in batch.items():
    assert value.dtype == np.float32, name
  for task in range(3):
    for b in range(40):
      step = int(batch["obs"][task, b, 1])
      for name, value in batch.items():
        np.testing.assert_array_equal(value[task, b], added[step][name][task], err_msg=name)


def test_same_seed_same_samples():
  buffers = [ReplayBuffer(3, 60, OBS_DIM, ACTION_DIM, CARRY_DIM, seed=7) for _ in range(2)]
  for buffer in buffers:
    fill(buffer, range(15))
  for _ in range(3):
    a, b = (sample_fields(buffer.sample(16)) for buffer in buffers)
    for name in a:
      np.testing.assert_array_equal(a[name], b[name])
  other = ReplayBuffer(3, 60, OBS_DIM, ACTION_DIM, CARRY_DIM, seed=8)
  fill(other, range(15))
  assert not np.array_equal(other.sample(16).obs, buffers[0].sample(16).obs)


@pytest.mark.parametrize("num_steps", [9, 25])  # partially filled and wrapped
def test_state_dict_round_trip(num_steps):
  original = ReplayBuffer(3, 60, OBS_DIM, ACTION_DIM, CARRY_DIM, seed=3)
  fill(original, range(num_steps))
  original.sample(8)  # advance the RNG so its state is not the seed's
  state = original.state_dict()
  assert state["obs"].shape == (3, min(num_steps, 20), OBS_DIM)  # filled prefix only
  restored = ReplayBuffer(3, 60, OBS_DIM, ACTION_DIM, CARRY_DIM, seed=99)
  restored.load_state_dict(state)
  assert len(restored) == len(original) and restored.size_per_task == original.size_per_task
  assert_same_contents(original, restored)
  for _ in range(3):
    a, b = sample_fields(original.sample(16)), sample_fields(restored.sample(16))
    for name in a:
      np.testing.assert_array_equal(a[name], b[name])
  # Subsequent adds land in the same slot (write position restored).
  fill(original, [num_steps])
  fill(restored, [num_steps])
  assert_same_contents(original, restored)


def test_state_dict_without_carries_leaves_out_the_empty_carry_fields():
  # Agents without an LSTM store [T, N, 0] carries; checkpoint writers reject empty arrays.
  original = ReplayBuffer(3, 60, OBS_DIM, ACTION_DIM, 0, seed=3)
  fill(original, range(7), carry_dim=0)
  state = original.state_dict()
  assert not {"h_out", "c_out", "oldest_h_in", "oldest_c_in"} & set(state)
  assert all(np.asarray(value).size for value in state.values())
  restored = ReplayBuffer(3, 60, OBS_DIM, ACTION_DIM, 0, seed=99)
  restored.load_state_dict(state)
  assert_same_contents(original, restored)
  with pytest.raises(ValueError, match="carry_dim is 0 in the state but 4"):
    ReplayBuffer(3, 60, OBS_DIM, ACTION_DIM, CARRY_DIM, seed=0).load_state_dict(state)
  del state["reward"]
  with pytest.raises(ValueError, match="no field 'reward'"):
    restored.load_state_dict(state)


def test_load_into_used_buffer_clears_stale_slots():
  small = ReplayBuffer(2, 40, OBS_DIM, ACTION_DIM, CARRY_DIM, seed=0)
  fill(small, range(3))
  used = ReplayBuffer(2, 40, OBS_DIM, ACTION_DIM, CARRY_DIM, seed=0)
  fill(used, range(500, 512))
  used.load_state_dict(small.state_dict())
  assert_same_contents(small, used)


@pytest.mark.parametrize(
  "shape",
  [
    dict(num_tasks=4, capacity=60, obs_dim=OBS_DIM, action_dim=ACTION_DIM, carry_dim=CARRY_DIM),
    dict(num_tasks=3, capacity=90, obs_dim=OBS_DIM, action_dim=ACTION_DIM, carry_dim=CARRY_DIM),
    dict(num_tasks=3, capacity=60, obs_dim=OBS_DIM + 1, action_dim=ACTION_DIM, carry_dim=CARRY_DIM),
    dict(num_tasks=3, capacity=60, obs_dim=OBS_DIM, action_dim=ACTION_DIM, carry_dim=0),
  ],
)
def test_load_state_dict_rejects_mismatched_shape(shape):
  source = ReplayBuffer(3, 60, OBS_DIM, ACTION_DIM, CARRY_DIM, seed=0)
  fill(source, range(5))
  with pytest.raises(ValueError, match="load_state_dict"):
    ReplayBuffer(seed=0, **shape).load_state_dict(source.state_dict())


def test_load_state_dict_rejects_corrupt_array():
  source = ReplayBuffer(3, 60, OBS_DIM, ACTION_DIM, CARRY_DIM, seed=0)
  fill(source, range(5))
  state = dict(source.state_dict())
  state["reward"] = state["reward"][:, :4]
  with pytest.raises(ValueError, match="reward"):
    ReplayBuffer(3, 60, OBS_DIM, ACTION_DIM, CARRY_DIM, seed=0).load_state_dict(state)


@pytest.mark.parametrize("carry_dim", [CARRY_DIM, 0])
def test_bytes_needed_matches_allocation(carry_dim):
  buffer = ReplayBuffer(3, 100, OBS_DIM, ACTION_DIM, carry_dim, seed=0)  # 33 per task
  assert ReplayBuffer.bytes_needed(3, 100, OBS_DIM, ACTION_DIM, carry_dim) == buffer.nbytes
  assert buffer.nbytes == sum(a.nbytes for a in buffer._storage.values()) + 2 * 3 * carry_dim * 4
  assert (
    buffer.nbytes == (3 * 33 * (2 * OBS_DIM + ACTION_DIM + 3 + 2 * carry_dim) + 6 * carry_dim) * 4
  )


def test_memory_check_names_a_capacity_that_fits():
  args = (10, 5_000_000, 39, 4, 64)
  needed = ReplayBuffer.bytes_needed(*args)
  # The paper-default buffer: 213 floats per transition (one carry of 2 x 64), 4.26 GB.
  assert needed == (10 * 500_000 * 213 + 2 * 10 * 64) * 4
  assert check_fits_in_memory(*args, available_bytes=2 * needed) == needed
  with pytest.raises(MemoryError) as info:
    check_fits_in_memory(*args, available_bytes=needed)  # fits, but not with the 20% headroom
  message = str(info.value)
  assert "\n" not in message and str(needed) in message and str(needed) + " B" in message
  largest = int(message.split("largest capacity that fits: ")[1].split()[0])
  assert 0 < largest < 5_000_000 and largest % 10 == 0
  assert check_fits_in_memory(10, largest, 39, 4, 64, available_bytes=needed) <= 0.8 * needed
  with pytest.raises(MemoryError):
    check_fits_in_memory(10, largest + 10, 39, 4, 64, available_bytes=needed)
  # A batch of seeds needs one buffer per seed, and the largest capacity is per seed.
  assert check_fits_in_memory(*args, available_bytes=20 * needed, num_seeds=8) == 8 * needed
  with pytest.raises(MemoryError, match="replay buffers of 8 seeds need") as info:
    check_fits_in_memory(*args, available_bytes=8 * needed, num_seeds=8)
  largest = int(str(info.value).split("largest capacity that fits: ")[1].split()[0])
  assert 8 * ReplayBuffer.bytes_needed(10, largest, 39, 4, 64) <= 0.8 * 8 * needed
  # A checkpoint save or restore holds one seed's replay besides the buffers.
  assert check_fits_in_memory(*args, available_bytes=20 * needed, extra=1) == 2 * needed
  with pytest.raises(MemoryError, match=r"and 1 more while a checkpoint is saved or restored"):
    check_fits_in_memory(*args, available_bytes=2 * needed, extra=1)


def test_memory_check_reads_the_os():
  assert check_fits_in_memory(2, 10, OBS_DIM, ACTION_DIM, CARRY_DIM) == ReplayBuffer.bytes_needed(
    2, 10, OBS_DIM, ACTION_DIM, CARRY_DIM
  )


def test_format_bytes():
  assert format_bytes(512) == "512 B"
  assert format_bytes(1.23 * 1024**3) == "1.23 GiB"
  assert format_bytes(6_800_000_000) == "6.33 GiB"


def test_bad_arguments():
  with pytest.raises(ValueError, match="capacity"):
    ReplayBuffer(5, 4, OBS_DIM, ACTION_DIM, CARRY_DIM, seed=0)
  buffer = ReplayBuffer(2, 20, OBS_DIM, ACTION_DIM, CARRY_DIM, seed=0)
  with pytest.raises(ValueError, match="empty"):
    buffer.sample(4)
  fill(buffer, range(2))
  for bad in (0, -3, 2.5):
    with pytest.raises(ValueError, match="batch_per_task"):
      buffer.sample(bad)
  step = make_step(2, 9)
  step["action"] = step["action"][:, :2]
  with pytest.raises(ValueError, match="action"):
    buffer.add(**step)
  step = make_step(3, 9)  # wrong number of tasks
  with pytest.raises(ValueError, match="obs"):
    buffer.add(**step)
  step = make_step(2, 9)
  step["episode_step"] = np.full(2, -1)
  with pytest.raises(ValueError, match="episode_step"):
    buffer.add(**step)
  with pytest.raises(ValueError, match="burn_in_steps"):
    buffer.sample(4, burn_in_steps=-1)
  with pytest.raises(ValueError, match="slots"):
    buffer.gather(np.full((2, 3), 2))  # slot 2 was never written
  assert buffer.size_per_task == 2  # failed adds leave the buffer untouched


def _check_burn_in_windows(
  buffer: ReplayBuffer, steps_added: int, length: int, episode_length: int
) -> int:
  """Gathers EVERY filled slot with a window of `length`; checks each window against the
  step ids in obs[..., 1]; returns how many windows were cut short by the ring."""
  slots = np.tile(np.arange(buffer.size_per_task), (buffer.num_tasks, 1))
  batch = buffer.gather(slots, burn_in_steps=length)
  window = batch.burn_in
  assert window.obs.shape == (buffer.num_tasks, buffer.size_per_task, length, OBS_DIM)
  assert window.mask.shape == (buffer.num_tasks, buffer.size_per_task, length)
  oldest = steps_added - buffer.size_per_task  # step id of the oldest surviving transition
  cut_by_ring = 0
  for task in range(buffer.num_tasks):
    for b in range(buffer.size_per_task):
      step = int(batch.obs[task, b, 1])
      within_episode = step % episode_length
      replayed = min(length, within_episode, step - oldest)
      cut_by_ring += replayed < min(length, within_episode)
      expected_mask = np.arange(length) >= length - replayed
      np.testing.assert_array_equal(window.mask[task, b], expected_mask.astype(np.float32))
      # The replayed steps are this task's, in order, directly before `step`, same episode.
      np.testing.assert_array_equal(window.obs[task, b, expected_mask, 0], task)
      np.testing.assert_array_equal(
        window.obs[task, b, expected_mask, 1], np.arange(step - replayed, step)
      )
      np.testing.assert_array_equal(window.obs[task, b, ~expected_mask], 0.0)
      # The window starts from the carry stored with its first replayed step.
      first = make_step(buffer.num_tasks, step - replayed, CARRY_DIM, episode_length)
      np.testing.assert_array_equal(window.carry.h[task, b], first["carry_in"].h[task])
      np.testing.assert_array_equal(window.carry.c[task, b], first["carry_in"].c[task])
  return cut_by_ring


@pytest.mark.parametrize("length", [1, 3, 8])
def test_burn_in_window_never_leaves_the_episode(length):
  buffer = ReplayBuffer(3, 3 * 40, OBS_DIM, ACTION_DIM, CARRY_DIM, seed=0)
  fill(buffer, range(20), episode_length=7)  # episodes of 7 steps; the last one unfinished
  assert _check_burn_in_windows(buffer, 20, length, episode_length=7) == 0


@pytest.mark.parametrize("length", [2, 5, 9])
def test_burn_in_window_never_crosses_the_ring_write_position(length):
  # 10 slots per task, 23 steps of episodes of 8: the ring wrapped twice and the oldest
  # surviving step (13) is in the middle of an episode whose start was overwritten.
  buffer = ReplayBuffer(2, 2 * 10, OBS_DIM, ACTION_DIM, CARRY_DIM, seed=0)
  fill(buffer, range(23), episode_length=8)
  cut = _check_burn_in_windows(buffer, 23, length, episode_length=8)
  assert cut > 0  # some windows did meet the write position, and stopped there


def test_sample_with_burn_in_draws_the_same_transitions():
  buffers = [ReplayBuffer(2, 40, OBS_DIM, ACTION_DIM, CARRY_DIM, seed=5) for _ in range(2)]
  for buffer in buffers:
    fill(buffer, range(15))
  plain, windowed = buffers[0].sample(16), buffers[1].sample(16, burn_in_steps=4)
  assert plain.burn_in is None and windowed.burn_in is not None
  np.testing.assert_array_equal(plain.obs, windowed.obs)  # the window does not move the RNG


def test_draw_slots_with_another_rng_leaves_the_sampler_stream_alone():
  buffers = [ReplayBuffer(2, 40, OBS_DIM, ACTION_DIM, CARRY_DIM, seed=5) for _ in range(2)]
  for buffer in buffers:
    fill(buffer, range(15))
  buffers[0].draw_slots(8, np.random.default_rng(1))
  np.testing.assert_array_equal(buffers[0].sample(16).obs, buffers[1].sample(16).obs)


def test_only_carry_out_is_stored_and_carry_in_must_chain():
  buffer = ReplayBuffer(2, 2 * 10, OBS_DIM, ACTION_DIM, CARRY_DIM, seed=0)
  fill(buffer, range(3))
  assert not {"h_in", "c_in"} & set(buffer._storage)
  before = {name: array.copy() for name, array in buffer._storage.items()}
  step = make_step(2, 3)
  wrong = step["carry_in"]._replace(h=step["carry_in"].h + 1.0)
  with pytest.raises(ValueError, match="carry_in must be the previous transition's carry_out"):
    buffer.add(**{**step, "carry_in": wrong})
  step0 = make_step(2, 6)  # an episode start
  with pytest.raises(ValueError, match="zero carry at an episode's first step"):
    buffer.add(**{**step0, "carry_in": step["carry_in"]})
  with pytest.raises(ValueError, match="episode_step must follow"):
    buffer.add(**make_step(2, 5))
  for name, array in buffer._storage.items():
    np.testing.assert_array_equal(array, before[name])  # untouched


def test_a_replay_state_of_the_format_with_carry_in_per_slot_loads_exactly():
  # Checkpoints written before one carry per slot hold h_in and c_in for every slot.
  original = ReplayBuffer(2, 2 * 10, OBS_DIM, ACTION_DIM, CARRY_DIM, seed=0)
  fill(original, range(23), episode_length=8)  # wrapped; the oldest slot is mid-episode
  old = {k: v for k, v in original.state_dict().items() if not k.startswith("oldest_")}
  carry_in = original.gather(np.tile(np.arange(10), (2, 1))).carry_in
  old["h_in"], old["c_in"] = carry_in.h, carry_in.c
  restored = ReplayBuffer(2, 2 * 10, OBS_DIM, ACTION_DIM, CARRY_DIM, seed=9)
  restored.load_state_dict(old)
  assert_same_contents(original, restored)


def test_sample_seeds_stacks_each_seeds_own_draw():
  def filled(seed):
    buffer = ReplayBuffer(2, 40, OBS_DIM, ACTION_DIM, CARRY_DIM, seed=seed)
    fill(buffer, range(15))
    return buffer

  batch = sample_seeds([filled(0), filled(1)], 8, burn_in_steps=3)
  for index, seed in enumerate((0, 1)):
    alone = filled(seed).sample(8, burn_in_steps=3)  # what its solo run would draw
    for stacked, own in zip(jax.tree.leaves(batch), jax.tree.leaves(alone)):
      np.testing.assert_array_equal(stacked[index], own)
  assert batch.obs.shape == (2, 2, 8, OBS_DIM) and isinstance(batch.obs, np.ndarray)


def test_a_state_without_sampler_state_keeps_the_buffers_own_generator():
  # The device replay has no sampler of its own and writes no rng_state.
  source = ReplayBuffer(2, 40, OBS_DIM, ACTION_DIM, CARRY_DIM, seed=3)
  fill(source, range(15))
  source.sample(8)
  state = {k: v for k, v in source.state_dict().items() if k != "rng_state"}
  restored = ReplayBuffer(2, 40, OBS_DIM, ACTION_DIM, CARRY_DIM, seed=5)
  restored.load_state_dict(state)
  same_seed = ReplayBuffer(2, 40, OBS_DIM, ACTION_DIM, CARRY_DIM, seed=5)
  fill(same_seed, range(15))
  assert_same_contents(same_seed, restored)
  assert not np.array_equal(source.sample(16).obs, restored.sample(16).obs)
