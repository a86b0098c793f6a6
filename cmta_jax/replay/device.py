"""Task-balanced replay held in device memory, written and sampled inside jitted steps.

The same ring as the host `ReplayBuffer` (`cmta_jax.replay.buffer`), as pure functions of a
`DeviceReplay` pytree: one carry per slot (carry_out), the kept-aside carry_in of the oldest
surviving slot, the step within the episode, and the burn-in windows of
docs/carry_modes.md. `size` and `pos` are traced int32 scalars, so one compiled `insert` and
one compiled `sample` serve every step; under `jax.jit(insert, donate_argnums=0)` the write
is in place. `insert`, `gather` and `sample` also run under `jax.vmap` over a leading seed
axis ([S, T, capacity_per_task, ...]). Checkpoints use the host buffer's state-dict format, so
either replay restores the other's.
"""

import functools
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from cmta_jax.replay import buffer as host
from cmta_jax.types import BurnIn, LSTMCarry, Transition


class DeviceReplay(NamedTuple):
  """The ring's arrays; shapes below are one seed's (a batch of seeds adds a leading S)."""

  storage: dict  # field -> [T, capacity_per_task, ...] (see `buffer.field_shapes`)
  oldest_in: jax.Array  # [2, T, H] float32: (h, c) carry_in of the oldest surviving slot
  # [2, T, H] float32: (h, c) carry_out of the oldest slot (zero while empty), read after each
  # write, so the write that overwrites that slot need not read it first: XLA copies a whole
  # buffer that one computation reads and then writes in place.
  oldest_out: jax.Array
  size: jax.Array  # int32 scalar: filled slots per task
  pos: jax.Array  # int32 scalar: next slot to write


def init(
  num_tasks: int, capacity: int, obs_dim: int, action_dim: int, carry_dim: int
) -> DeviceReplay:
  """An empty replay; `capacity` counts transitions over ALL tasks (capacity // num_tasks
  slots per task, as the host buffer)."""
  per_task = host.check_shape(num_tasks, capacity, obs_dim, action_dim, carry_dim)
  return _zeros(num_tasks, per_task, obs_dim, action_dim, carry_dim)


def init_seeds(
  num_seeds: int,
  num_tasks: int,
  capacity: int,
  obs_dim: int,
  action_dim: int,
  carry_dim: int,
  sharding=None,
) -> DeviceReplay:
  """Empty replays of `num_seeds` seeds, [S, ...] leaves, made in place by one compiled call:
  with `sharding` (a `jax.sharding.Sharding` of the [S, ...] arrays) directly where they
  live, never first on another device."""
  per_task = host.check_shape(num_tasks, capacity, obs_dim, action_dim, carry_dim)
  one = jax.eval_shape(lambda: _zeros(num_tasks, per_task, obs_dim, action_dim, carry_dim))
  make = lambda: jax.tree.map(lambda x: jnp.zeros((num_seeds, *x.shape), x.dtype), one)
  return jax.jit(make, out_shardings=sharding)()


def load_seed(replay: DeviceReplay, index: int, state: dict) -> DeviceReplay:
  """`replay` ([S, ...], empty at seed `index`) with that seed's slot holding a state dict
  of `to_state_dict` or `ReplayBuffer.state_dict` format; written in place (the replay is
  donated), so restoring S seeds holds one restored state on the host at a time."""
  storage = replay.storage
  shape = {
    "num_tasks": storage["obs"].shape[1],
    "capacity_per_task": storage["obs"].shape[2],
    "obs_dim": storage["obs"].shape[3],
    "action_dim": storage["action"].shape[3],
    "carry_dim": storage["h_out"].shape[3],
  }
  state, size, pos = host.checked_state(state, shape, "load_seed")
  prefix = {name: np.asarray(state[name]) for name in storage if name in state}
  oldest_in, oldest_out = _oldest_carries(state, shape, size, pos)
  return _write_seed(replay, index, prefix, oldest_in, oldest_out, size, pos)


@functools.partial(jax.jit, donate_argnums=0)
def _write_seed(replay, index, prefix, oldest_in, oldest_out, size, pos) -> DeviceReplay:
  def put(stacked, one):  # one seed's value at `index` (a prefix of the slots for storage)
    return lax.dynamic_update_slice(
      stacked, one[None].astype(stacked.dtype), (index,) + (0,) * one.ndim
    )

  return DeviceReplay(
    storage={
      name: put(array, prefix[name]) if name in prefix else array
      for name, array in replay.storage.items()
    },
    oldest_in=put(replay.oldest_in, oldest_in),
    oldest_out=put(replay.oldest_out, oldest_out),
    size=replay.size.at[index].set(size),
    pos=replay.pos.at[index].set(pos),
  )


def _oldest_carries(state: dict, shape: dict, size: int, pos: int) -> tuple[np.ndarray, ...]:
  """(oldest_in, oldest_out), each [2, T, H], of a checked state dict."""
  num_tasks, carry_dim = shape["num_tasks"], shape["carry_dim"]
  oldest_in = np.zeros((2, num_tasks, carry_dim), np.float32)
  oldest_out = np.zeros((2, num_tasks, carry_dim), np.float32)
  if carry_dim:
    oldest_in[:] = [state["oldest_h_in"], state["oldest_c_in"]]
  if carry_dim and size:
    # The filled prefix is slots 0..size-1, and the oldest is pos when full, else 0.
    oldest = pos if size == shape["capacity_per_task"] else 0
    oldest_out[:] = [state["h_out"][:, oldest], state["c_out"][:, oldest]]
  return oldest_in, oldest_out


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _zeros(
  num_tasks: int, per_task: int, obs_dim: int, action_dim: int, carry_dim: int
) -> DeviceReplay:
  # Jitted: the zeros are made where the replay lives, in one compiled call.
  shapes = host.field_shapes(obs_dim, action_dim, carry_dim)
  return DeviceReplay(
    storage={
      name: jnp.zeros((num_tasks, per_task) + shape, host.field_dtype(name))
      for name, shape in shapes.items()
    },
    oldest_in=jnp.zeros((2, num_tasks, carry_dim), jnp.float32),
    oldest_out=jnp.zeros((2, num_tasks, carry_dim), jnp.float32),
    size=jnp.zeros((), jnp.int32),
    pos=jnp.zeros((), jnp.int32),
  )


def _num_tasks(replay: DeviceReplay) -> int:
  return replay.storage["obs"].shape[0]


def _capacity(replay: DeviceReplay) -> int:
  return replay.storage["obs"].shape[1]


def insert(
  replay: DeviceReplay,
  obs,
  action,
  reward,
  next_obs,
  terminated,
  carry_in: LSTMCarry,
  carry_out: LSTMCarry,
  episode_step,
) -> DeviceReplay:
  """The replay with one transition per task written at `pos`; every argument has leading
  axis T, with the meanings of `ReplayBuffer.add`.

  Unlike `ReplayBuffer.add`, nothing is checked beyond shapes (at trace time): the carry
  chain (carry_in zero at episode_step 0, the previous carry_out after it) cannot be checked
  inside jit. The training loop builds it by construction, feeding back the carry_out it
  stored and zeroing it at episode starts; only carry_in of the oldest slot is kept.

  Jitted with `donate_argnums=0` the write is in place. A jitted step that also samples should
  sample the replay this returns, not the one it was given: XLA copies a whole buffer that one
  computation reads before writing it.
  """
  num_tasks, cap = _num_tasks(replay), _capacity(replay)
  values = {
    "obs": obs,
    "action": action,
    "reward": reward,
    "next_obs": next_obs,
    "terminated": terminated,
    "h_out": carry_out.h,
    "c_out": carry_out.c,
    "episode_step": episode_step,
  }
  for name, value in {**values, "h_in": carry_in.h, "c_in": carry_in.c}.items():
    trailing = replay.storage[name.replace("_in", "_out")].shape[2:]
    chex.assert_shape(value, (num_tasks,) + trailing, custom_message=f"insert: {name}")
  new_in = jnp.stack([carry_in.h, carry_in.c]).astype(jnp.float32)
  if cap == 1:
    oldest_in = new_in  # the slot written now is the only one, and its carry_in is new_in
  else:
    # Once the ring is full, the slot after the one overwritten now becomes the oldest; its
    # carry_in is the overwritten slot's carry_out.
    oldest_in = jnp.where(
      replay.size == cap,
      replay.oldest_out,
      jnp.where(replay.size == 0, new_in, replay.oldest_in),
    )
  storage = {
    name: lax.dynamic_update_index_in_dim(
      replay.storage[name], jnp.asarray(values[name]).astype(array.dtype), replay.pos, axis=1
    )
    for name, array in replay.storage.items()
  }
  size, pos = jnp.minimum(replay.size + 1, cap), (replay.pos + 1) % cap
  oldest = (pos - size) % cap
  oldest_out = jnp.stack(
    [
      lax.dynamic_index_in_dim(storage[name], oldest, axis=1, keepdims=False)
      for name in ("h_out", "c_out")
    ]
  )
  return DeviceReplay(storage, oldest_in, oldest_out, size, pos)


def _carry_in(replay: DeviceReplay, tasks: jax.Array, slots: jax.Array) -> LSTMCarry:
  """carry_in of the transitions at `slots` [T, B]: zero at episode starts, the previous
  slot's carry_out inside an episode, the kept-aside one for the oldest slot."""
  cap = _capacity(replay)
  previous = (slots - 1) % cap
  oldest = (replay.pos - replay.size) % cap
  start = (replay.storage["episode_step"][tasks, slots] == 0)[..., None]
  is_oldest = (slots == oldest)[..., None]

  def one(name: str, kept: jax.Array) -> jax.Array:
    inside = jnp.where(is_oldest, kept[:, None], replay.storage[name][tasks, previous])
    return jnp.where(start, 0.0, inside).astype(jnp.float32)

  return LSTMCarry(one("h_out", replay.oldest_in[0]), one("c_out", replay.oldest_in[1]))


def _burn_in_window(
  replay: DeviceReplay, tasks: jax.Array, slots: jax.Array, length: int
) -> BurnIn:
  """The window of `ReplayBuffer.gather`: up to `length` steps before each slot, stopping at
  the episode's first step and at the oldest slot the ring still holds."""
  cap = _capacity(replay)
  episode_step = replay.storage["episode_step"][tasks, slots]
  age = (replay.pos - 1 - slots) % cap  # 0 = the newest slot
  older_in_buffer = replay.size - 1 - age  # steps before this one that the ring still holds
  replayed = jnp.minimum(jnp.minimum(length, episode_step), older_in_buffer)  # [T, B]
  offsets = jnp.arange(-length, 0)  # window position j holds step t - L + j
  window = (slots[..., None] + offsets) % cap  # [T, B, L]
  mask = offsets >= -replayed[..., None]
  obs = jnp.where(mask[..., None], replay.storage["obs"][tasks[..., None], window], 0.0)
  carry = _carry_in(replay, tasks, (slots - replayed) % cap)
  return BurnIn(obs=obs.astype(jnp.float32), mask=mask.astype(jnp.float32), carry=carry)


def _check_burn_in_steps(burn_in_steps) -> None:
  if not isinstance(burn_in_steps, (int, np.integer)) or burn_in_steps < 0:
    raise ValueError(f"burn_in_steps must be a non-negative int, got {burn_in_steps!r}")


def gather(replay: DeviceReplay, slots: jax.Array, burn_in_steps: int = 0) -> Transition:
  """The transitions at `slots` [T, B] int32 (row t = task t), laid out [T, B, ...], with
  burn-in windows of `burn_in_steps` (static) steps when it is > 0: `ReplayBuffer.gather`.

  Slots must lie in [0, size): inside jit that cannot be checked, and a slot outside it
  gives meaningless values rather than an error.
  """
  _check_burn_in_steps(burn_in_steps)
  num_tasks = _num_tasks(replay)
  chex.assert_rank(slots, 2)
  chex.assert_axis_dimension(slots, 0, num_tasks)
  chex.assert_type(slots, int)
  tasks = jnp.arange(num_tasks)[:, None]  # broadcasts against slots -> [T, B]
  out = {name: replay.storage[name][tasks, slots] for name in host.TRANSITION_FIELDS}
  burn_in = _burn_in_window(replay, tasks, slots, burn_in_steps) if burn_in_steps else None
  return Transition(
    obs=out["obs"],
    action=out["action"],
    reward=out["reward"],
    next_obs=out["next_obs"],
    terminated=out["terminated"],
    carry_in=_carry_in(replay, tasks, slots),
    carry_out=LSTMCarry(out["h_out"], out["c_out"]),
    burn_in=burn_in,
  )


def draw_slots(replay: DeviceReplay, key: jax.Array, batch_per_task: int) -> jax.Array:
  """[T, B] int32 slots: row t uniform with replacement over task t's filled slots.

  An empty replay (size 0) cannot raise inside jit: every slot drawn is 0, and `gather` then
  returns an all-zero batch. Sampling only after warm-up is the caller's responsibility
  (the loop checks its step count on the host).
  """
  if not isinstance(batch_per_task, (int, np.integer)) or batch_per_task <= 0:
    raise ValueError(f"batch_per_task must be a positive int, got {batch_per_task!r}")
  shape = (_num_tasks(replay), batch_per_task)
  return jax.random.randint(key, shape, 0, replay.size, dtype=jnp.int32)


def sample(
  replay: DeviceReplay, key: jax.Array, batch_per_task: int, burn_in_steps: int = 0
) -> Transition:
  """Task-balanced sample [T, B, ...]: `draw_slots`, then `gather`. `batch_per_task` and
  `burn_in_steps` are static (jit with static_argnums=(2, 3)); the key comes from the run's
  REPLAY stream at the step (`training.keys`), so there is no sampler state to save."""
  _check_burn_in_steps(burn_in_steps)
  return gather(replay, draw_slots(replay, key, batch_per_task), burn_in_steps)


def _shape_info(replay: DeviceReplay) -> dict[str, int]:
  storage = replay.storage
  return {
    "num_tasks": _num_tasks(replay),
    "capacity_per_task": _capacity(replay),
    "obs_dim": storage["obs"].shape[2],
    "action_dim": storage["action"].shape[2],
    "carry_dim": storage["h_out"].shape[2],
  }


def to_state_dict(replay: DeviceReplay, index: int | None = None) -> dict:
  """The host buffer's `state_dict()` format, as numpy arrays, of one seed's replay (seed
  `index` of a batch [S, ...], or a replay without a seed axis): shape ints, size, pos, the
  filled prefix of every field of nonzero size, and oldest_h_in / oldest_c_in when
  carry_dim > 0.

  It has no `rng_state`: draws come from keyed streams, not from a sampler with state. A host
  buffer loading it keeps its own generator. The prefix is cut on the device, so the host
  holds one seed's filled slots, never the whole batch.
  """
  seed = () if index is None else (index,)
  size, pos = int(replay.size[seed]), int(replay.pos[seed])
  state = _shape_info(jax.eval_shape(lambda: jax.tree.map(lambda leaf: leaf[seed], replay)))
  state.update(size=size, pos=pos)
  shapes = {name: array.shape[len(seed) + 2 :] for name, array in replay.storage.items()}
  for name in host.saved_fields(shapes):
    # One indexing op (seed and prefix at once), then a host copy (np.array), never a view
    # that would keep a device buffer alive.
    state[name] = np.array(replay.storage[name][(*seed, slice(None), slice(0, size))])
  if state["carry_dim"]:
    state["oldest_h_in"], state["oldest_c_in"] = np.array(replay.oldest_in[seed])
  return state


def from_state_dict(
  state: dict, num_tasks: int, capacity: int, obs_dim: int, action_dim: int, carry_dim: int
) -> DeviceReplay:
  """A replay of this shape holding a `to_state_dict` or `ReplayBuffer.state_dict` state
  (also of the format with carry_in per slot); one-line ValueErrors on a shape mismatch.
  A host state's `rng_state` is ignored."""
  shape = {
    "num_tasks": num_tasks,
    "capacity_per_task": host.check_shape(num_tasks, capacity, obs_dim, action_dim, carry_dim),
    "obs_dim": obs_dim,
    "action_dim": action_dim,
    "carry_dim": carry_dim,
  }
  state, size, pos = host.checked_state(state, shape, "from_state_dict")
  storage = {}
  for name, trailing in host.field_shapes(obs_dim, action_dim, carry_dim).items():
    # np.zeros commits pages only where the prefix is written; one field at a time on host.
    array = np.zeros((num_tasks, shape["capacity_per_task"]) + trailing, host.field_dtype(name))
    if array.size:
      array[:, :size] = state[name]
    storage[name] = jnp.asarray(array)
  oldest_in, oldest_out = _oldest_carries(state, shape, size, pos)
  return DeviceReplay(
    storage=storage,
    oldest_in=jnp.asarray(oldest_in),
    oldest_out=jnp.asarray(oldest_out),
    size=jnp.asarray(size, jnp.int32),
    pos=jnp.asarray(pos, jnp.int32),
  )
