"""Task-balanced multi-task replay buffer (host-side numpy).

Every environment step adds one transition per task (a vector step), so all
tasks always hold the same number of transitions and share one write position.
Sampling draws `batch_per_task` transitions from each task and lays them out
[T, B, ...] so row t is task t (see `cmta_jax.types.Transition`).

Each slot stores ONE LSTM carry, the carry after its step (carry_out). Inside an episode
a transition's carry_in is the previous transition's carry_out, and at an episode's first
step it is the zero carry, so storing both would hold the same numbers twice
(docs/seeds.md, "Replay memory"). The one carry_in that no slot holds, that of the oldest
surviving transition once the ring has overwritten its predecessor, is kept aside.

The field shapes and the state-dict check are module functions: the device replay
(`cmta_jax.replay.device`) keeps the same layout and checkpoint format.
"""

from typing import Any

import jax
import numpy as np

from cmta_jax.types import BurnIn, LSTMCarry, Transition

FLOAT_BYTES = np.dtype(np.float32).itemsize


def floats_per_transition(obs_dim: int, action_dim: int, carry_dim: int) -> int:
  # obs + next_obs + action + reward + terminated + (h, c) of carry_out
  # + the step within the episode (int32, the same size as a float32).
  return 2 * obs_dim + action_dim + 3 + 2 * carry_dim


def _capacity_per_task(num_tasks: int, capacity: int) -> int:
  if num_tasks < 1:
    raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
  per_task = capacity // num_tasks
  if per_task < 1:
    raise ValueError(
      f"capacity {capacity} gives {per_task} slots per task for {num_tasks} tasks; "
      f"need capacity >= num_tasks"
    )
  return per_task


def check_shape(
  num_tasks: int, capacity: int, obs_dim: int, action_dim: int, carry_dim: int
) -> int:
  """capacity_per_task of a replay of this shape; ValueError for a shape no replay can have."""
  per_task = _capacity_per_task(num_tasks, capacity)
  if min(obs_dim, action_dim) < 1 or carry_dim < 0:
    raise ValueError(
      f"need obs_dim >= 1, action_dim >= 1, carry_dim >= 0; "
      f"got {obs_dim}, {action_dim}, {carry_dim}"
    )
  return per_task


def field_shapes(obs_dim: int, action_dim: int, carry_dim: int) -> dict[str, tuple[int, ...]]:
  """The stored fields and the shape of one entry (after the [T, capacity_per_task] axes)."""
  return {
    "obs": (obs_dim,),
    "action": (action_dim,),
    "reward": (),
    "next_obs": (obs_dim,),
    "terminated": (),
    "h_out": (carry_dim,),
    "c_out": (carry_dim,),
    "episode_step": (),
  }


def field_dtype(name: str) -> type:
  return np.int32 if name == "episode_step" else np.float32


def saved_fields(shapes: dict[str, tuple[int, ...]]) -> list[str]:
  # Agents without an LSTM have [T, N, 0] carries: nothing to save, and orbax rejects them.
  return [name for name, shape in shapes.items() if 0 not in shape]


# The fields a sampled Transition holds, in its order.
TRANSITION_FIELDS = ("obs", "action", "reward", "next_obs", "terminated", "h_out", "c_out")


class ReplayBuffer:
  """Ring buffer of [T, capacity_per_task, ...] float32 arrays, one per field."""

  def __init__(
    self, num_tasks: int, capacity: int, obs_dim: int, action_dim: int, carry_dim: int, seed: int
  ):
    """`capacity` counts transitions over ALL tasks; each task gets capacity // num_tasks slots."""
    self._capacity_per_task = check_shape(num_tasks, capacity, obs_dim, action_dim, carry_dim)
    self._num_tasks = num_tasks
    self._obs_dim = obs_dim
    self._action_dim = action_dim
    self._carry_dim = carry_dim
    self._trailing = field_shapes(obs_dim, action_dim, carry_dim)
    # np.zeros maps zero pages lazily: memory is committed as slots are first written,
    # so use replay.memory.check_fits_in_memory up front rather than relying on this to fail.
    self._storage = {
      name: np.zeros((num_tasks, self._capacity_per_task) + shape, field_dtype(name))
      for name, shape in self._trailing.items()
    }
    # carry_in (h, c) of the oldest surviving slot, which no other slot holds once the ring
    # has overwritten the slot before it.
    self._oldest_in = np.zeros((2, num_tasks, carry_dim), np.float32)
    self._size = 0  # filled slots per task (same for every task: adds are vector steps)
    self._pos = 0  # next slot to write
    # PCG64 explicitly, so state_dict can encode its state as fixed-size uint64s.
    self._rng = np.random.Generator(np.random.PCG64(seed))

  @staticmethod
  def bytes_needed(
    num_tasks: int, capacity: int, obs_dim: int, action_dim: int, carry_dim: int
  ) -> int:
    """Exact total nbytes of the storage arrays for this shape."""
    per_task = _capacity_per_task(num_tasks, capacity)
    floats = floats_per_transition(obs_dim, action_dim, carry_dim)
    return (num_tasks * per_task * floats + 2 * num_tasks * carry_dim) * FLOAT_BYTES

  @property
  def num_tasks(self) -> int:
    return self._num_tasks

  @property
  def capacity_per_task(self) -> int:
    return self._capacity_per_task

  @property
  def size_per_task(self) -> int:
    return self._size

  def __len__(self) -> int:
    return self._num_tasks * self._size

  @property
  def nbytes(self) -> int:
    return sum(a.nbytes for a in self._storage.values()) + self._oldest_in.nbytes

  def add(
    self,
    obs,
    action,
    reward,
    next_obs,
    terminated,
    carry_in: LSTMCarry,
    carry_out: LSTMCarry,
    episode_step,
  ) -> None:
    """Adds one transition per task; every array argument has leading axis T.

    `next_obs` must be the true s_{t+1} (the final observation on truncation), and
    `terminated` 1 only on true termination, never on truncation. `episode_step` is
    t's index within its episode ([T] ints, 0 at the first step); the burn-in
    window of `sample` never reaches back past step 0 of an episode. `carry_in` must be
    the zero carry at step 0 and the previous transition's `carry_out` after it (only
    carry_out is stored); ValueError otherwise, with the buffer untouched.
    """
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
    # Validate every shape before writing anything, so a bad call leaves the buffer untouched.
    for name, value in {**values, "h_in": carry_in.h, "c_in": carry_in.c}.items():
      expected = (self._num_tasks,) + self._trailing[name.replace("_in", "_out")]
      if np.shape(value) != expected:
        raise ValueError(f"add: {name} has shape {np.shape(value)}, expected {expected}")
    if np.any(np.asarray(episode_step) < 0) or not np.all(np.mod(episode_step, 1) == 0):
      raise ValueError(f"add: episode_step must be non-negative integers, got {episode_step}")
    carry_in = np.stack([np.asarray(carry_in.h), np.asarray(carry_in.c)]).astype(np.float32)
    self._check_carry_in(carry_in, np.asarray(episode_step))
    if self._size == self._capacity_per_task and self._capacity_per_task > 1:
      # The slot after the one overwritten now is the oldest; its carry_in is the
      # overwritten slot's carry_out.
      self._oldest_in = np.stack(
        [self._storage["h_out"][:, self._pos], self._storage["c_out"][:, self._pos]]
      )
    elif self._size == 0 or self._capacity_per_task == 1:
      self._oldest_in = carry_in
    for name, value in values.items():
      self._storage[name][:, self._pos] = value  # casts to float32 (bools -> 0/1)
    self._pos = (self._pos + 1) % self._capacity_per_task
    self._size = min(self._size + 1, self._capacity_per_task)

  def _check_carry_in(self, carry_in: np.ndarray, episode_step: np.ndarray) -> None:
    """carry_in [2, T, H] must be zero at episode starts and the previous carry_out after."""
    starts = episode_step == 0
    if np.any(carry_in[:, starts]):
      raise ValueError("add: carry_in must be the zero carry at an episode's first step")
    if self._size == 0 or np.all(starts):
      return
    previous = (self._pos - 1) % self._capacity_per_task
    if np.any(self._storage["episode_step"][:, previous] != episode_step - 1):
      raise ValueError(
        "add: episode_step must follow the previous transition's (or be 0 at an episode start)"
      )
    carry_out = np.stack([self._storage["h_out"][:, previous], self._storage["c_out"][:, previous]])
    if not np.array_equal(carry_in, carry_out, equal_nan=True):
      raise ValueError("add: carry_in must be the previous transition's carry_out")

  def _carry_in(self, tasks: np.ndarray, slots: np.ndarray) -> LSTMCarry:
    """carry_in of the transitions at `slots` [T, B]: zero at episode starts, the previous
    slot's carry_out inside an episode, the kept-aside one for the oldest slot."""
    cap = self._capacity_per_task
    previous = (slots - 1) % cap
    oldest = (self._pos - self._size) % cap
    start = (self._storage["episode_step"][tasks, slots] == 0)[..., None]
    is_oldest = (slots == oldest)[..., None]

    def one(name: str, kept: np.ndarray) -> np.ndarray:
      inside = np.where(is_oldest, kept[:, None], self._storage[name][tasks, previous])
      return np.where(start, 0.0, inside).astype(np.float32)

    return LSTMCarry(one("h_out", self._oldest_in[0]), one("c_out", self._oldest_in[1]))

  def sample(self, batch_per_task: int, burn_in_steps: int = 0) -> Transition:
    """Task-balanced sample [T, B, ...] (see `draw_slots` and `gather`)."""
    return self.gather(self.draw_slots(batch_per_task), burn_in_steps)

  def draw_slots(self, batch_per_task: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """[T, B] slot indices: row t drawn uniformly with replacement over task t's filled slots.

    With `rng=None` the buffer's own (checkpointed) generator draws them; pass another
    generator to sample without moving the training stream (e.g. for diagnostics).
    """
    if not isinstance(batch_per_task, (int, np.integer)) or batch_per_task <= 0:
      raise ValueError(f"batch_per_task must be a positive int, got {batch_per_task!r}")
    if self._size == 0:
      raise ValueError("cannot sample from an empty replay buffer; add transitions first")
    rng = self._rng if rng is None else rng
    return rng.integers(0, self._size, size=(self._num_tasks, batch_per_task))

  def gather(self, slots: np.ndarray, burn_in_steps: int = 0) -> Transition:
    """The transitions at `slots` [T, B] (row t = task t), laid out [T, B, ...].

    With `burn_in_steps` L > 0 the result also holds each transition's burn-in window
    (`BurnIn`): the observations of the up to L steps before it in its own episode,
    never reaching past the episode's first step or into slots already overwritten by
    the ring (the oldest surviving step), plus the stored carry_in of the window's
    first step. L >= the transition's step within its episode replays the episode from
    its start (exact carry); see docs/carry_modes.md.
    """
    slots = np.asarray(slots)
    if slots.shape[0] != self._num_tasks or slots.ndim != 2:
      raise ValueError(f"gather: slots must be [{self._num_tasks}, B], got {slots.shape}")
    if slots.size and (slots.min() < 0 or slots.max() >= self._size):
      raise ValueError(
        f"gather: slots must lie in [0, {self._size}), got {slots.min()}..{slots.max()}"
      )
    if not isinstance(burn_in_steps, (int, np.integer)) or burn_in_steps < 0:
      raise ValueError(f"burn_in_steps must be a non-negative int, got {burn_in_steps!r}")
    tasks = np.arange(self._num_tasks)[:, None]  # broadcasts against slots -> [T, B]
    out = {name: self._storage[name][tasks, slots] for name in TRANSITION_FIELDS}
    burn_in = None
    if burn_in_steps:
      episode_step = self._storage["episode_step"][tasks, slots]
      burn_in = self._burn_in_window(tasks, slots, episode_step, burn_in_steps)
    return Transition(
      obs=out["obs"],
      action=out["action"],
      reward=out["reward"],
      next_obs=out["next_obs"],
      terminated=out["terminated"],
      carry_in=self._carry_in(tasks, slots),
      carry_out=LSTMCarry(out["h_out"], out["c_out"]),
      burn_in=burn_in,
    )

  def _burn_in_window(self, tasks, slots, episode_step, length: int) -> BurnIn:
    cap = self._capacity_per_task
    age = (self._pos - 1 - slots) % cap  # 0 = the newest slot
    older_in_buffer = self._size - 1 - age  # steps before this one that the ring still holds
    replayed = np.minimum(np.minimum(length, episode_step), older_in_buffer)  # [T, B]
    offsets = np.arange(-length, 0)  # window position j holds step t - L + j
    window = (slots[..., None] + offsets) % cap  # [T, B, L]
    mask = offsets >= -replayed[..., None]
    obs = np.where(mask[..., None], self._storage["obs"][tasks[..., None], window], 0.0)
    carry = self._carry_in(tasks, (slots - replayed) % cap)
    return BurnIn(obs=obs.astype(np.float32), mask=mask.astype(np.float32), carry=carry)

  def _shape_info(self) -> dict:
    return {
      "num_tasks": self._num_tasks,
      "capacity_per_task": self._capacity_per_task,
      "obs_dim": self._obs_dim,
      "action_dim": self._action_dim,
      "carry_dim": self._carry_dim,
    }

  def state_dict(self) -> dict:
    """Shape ints, write position, the filled prefix of every field and the RNG state.

    Field arrays are VIEWS into live storage (copying a full 5M buffer would double
    its memory): serialise the dict before the next `add`.
    """
    rng_state = self._rng.bit_generator.state
    mask64 = (1 << 64) - 1
    # PCG64's state and increment are 128-bit Python ints; split them into uint64 halves
    # so the whole dict is numpy arrays + small ints (npz/orbax friendly).
    rng_words = np.array(
      [
        rng_state["state"]["state"] >> 64,
        rng_state["state"]["state"] & mask64,
        rng_state["state"]["inc"] >> 64,
        rng_state["state"]["inc"] & mask64,
        rng_state["has_uint32"],
        rng_state["uinteger"],
      ],
      dtype=np.uint64,
    )
    state = self._shape_info()
    state.update(size=self._size, pos=self._pos, rng_state=rng_words)
    for name in saved_fields(self._trailing):
      state[name] = self._storage[name][:, : self._size]
    if self._carry_dim:
      state["oldest_h_in"], state["oldest_c_in"] = self._oldest_in
    return state

  def load_state_dict(self, state: dict) -> None:
    """Exact restore of `state_dict()` output into a buffer of the same shape (also of the
    format before one carry per slot, which stored carry_in and carry_out). A state without
    `rng_state` (written by the device replay, which has no sampler of its own) leaves this
    buffer's generator where it is."""
    state, size, pos = checked_state(state, self._shape_info(), "load_state_dict")
    words = None
    if "rng_state" in state:  # read before writing anything, so a bad one changes nothing
      words = [int(w) for w in np.asarray(state["rng_state"], dtype=np.uint64)]
    for name in saved_fields(self._trailing):
      array = self._storage[name]
      array[:, :size] = state[name]
      # Slots at or past _size were never written (writes fill 0, 1, ... in order), so only
      # [size, old size) needs clearing; touching the whole tail would commit its lazy pages.
      array[:, size : self._size] = 0.0
    self._size, self._pos = size, pos
    if self._carry_dim:
      self._oldest_in = np.stack([state["oldest_h_in"], state["oldest_c_in"]]).astype(np.float32)
    if words is not None:
      self._rng.bit_generator.state = {
        "bit_generator": "PCG64",
        "state": {"state": (words[0] << 64) | words[1], "inc": (words[2] << 64) | words[3]},
        "has_uint32": words[4],
        "uinteger": words[5],
      }


def sample_seeds(
  buffers: "list[ReplayBuffer]", batch_per_task: int, burn_in_steps: int = 0
) -> Transition:
  """One batch [S, T, B, ...] from the buffers of a batch's S seeds, each drawn by its own
  buffer's sampler (as its solo run draws it), stacked on the host for one transfer."""
  samples = [buffer.sample(batch_per_task, burn_in_steps) for buffer in buffers]
  return stack_transitions(samples)


def stack_transitions(trees: list) -> Any:
  """Transitions (any trees of arrays) stacked leaf by leaf on a new leading axis, in numpy:
  [S, ...] from S trees of [...]."""
  return jax.tree.map(lambda *leaves: np.stack(leaves), *trees)


def checked_state(state: dict, shape: dict[str, int], caller: str) -> tuple[dict, int, int]:
  """(state, size, pos) of a replay state dict checked against `shape` (the shape ints of
  `state_dict`), in today's format; one-line ValueErrors that start with `caller`."""
  state = _with_oldest_carry_in(state)
  for key, value in shape.items():
    if int(state[key]) != value:
      raise ValueError(
        f"{caller}: {key} is {int(state[key])} in the state but {value} in this buffer"
      )
  num_tasks, per_task = shape["num_tasks"], shape["capacity_per_task"]
  carry_dim = shape["carry_dim"]
  size, pos = int(state["size"]), int(state["pos"])
  if not (0 <= size <= per_task and 0 <= pos < per_task):
    raise ValueError(
      f"{caller}: size {size} / pos {pos} out of range for capacity_per_task {per_task}"
    )
  shapes = field_shapes(shape["obs_dim"], shape["action_dim"], carry_dim)
  expected_fields = {name: (num_tasks, size) + shapes[name] for name in saved_fields(shapes)}
  if carry_dim:
    expected_fields.update(
      oldest_h_in=(num_tasks, carry_dim),
      oldest_c_in=(num_tasks, carry_dim),
    )
  for name, expected in expected_fields.items():
    if name not in state:
      raise ValueError(f"{caller}: the state has no field {name!r}")
    if np.shape(state[name]) != expected:
      raise ValueError(f"{caller}: {name} has shape {np.shape(state[name])}, expected {expected}")
  return state, size, pos


def _with_oldest_carry_in(state: dict) -> dict:
  """A replay state of the earlier format (carry_in stored per slot) in today's: the oldest
  slot's carry_in kept aside, the per-slot carry_in dropped."""
  if "h_in" not in state:
    return state
  state = dict(state)
  size, pos = int(state["size"]), int(state["pos"])
  oldest = 0 if size < int(state["capacity_per_task"]) else pos
  h_in, c_in = np.asarray(state.pop("h_in")), np.asarray(state.pop("c_in"))
  if size == 0:
    h_in, c_in = (np.zeros((a.shape[0], 1, a.shape[2]), a.dtype) for a in (h_in, c_in))
  state["oldest_h_in"], state["oldest_c_in"] = h_in[:, oldest], c_in[:, oldest]
  return state
