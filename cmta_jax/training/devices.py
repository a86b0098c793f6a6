"""Where the learner's arrays live (docs/seeds.md, "Devices").

Every array the loop feeds the learner has a leading seed axis S (S = 1 for one run):

  - one device: plain arrays, nothing to place;
  - several devices, seeds: the seed axis is sharded over a 1-D mesh "seed" (`NamedSharding`);
    the vmapped update has no cross-seed terms, so `jit` runs each device's seeds there with
    no communication;
  - several devices, data parallel (one run, `--data_parallel`): the parameters are
    replicated and every batch is split over a mesh "data" along its per-task batch axis B;
    the update, under `jax.shard_map`, averages its gradients over that axis (the update's
    `axis_name` path, the same one `jax.pmap` runs).

`jax.pmap` is in maintenance mode since JAX 0.8; these paths use `jit` with shardings and
`shard_map`. The update itself stays valid under `pmap` (tests/agents/test_pmap.py).
"""

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

SEED_AXIS = "seed"
DATA_AXIS = "data"


@dataclasses.dataclass(frozen=True)
class Placement:
  """How seed-stacked trees and [S, T, B, ...] batches are laid out over devices."""

  mesh: Mesh | None  # None: one device
  data_parallel: bool = False

  @property
  def num_devices(self) -> int:
    return 1 if self.mesh is None else self.mesh.size

  def put(self, tree):
    """A tree with a leading seed axis (learner state, observations, carries, keys)."""
    if self.mesh is None:
      return tree
    spec = P() if self.data_parallel else P(SEED_AXIS)
    return jax.device_put(tree, NamedSharding(self.mesh, spec))

  def put_batch(self, batch, batch_axis: int = 2):
    """Update batches [S, ..., B, ...] (B at `batch_axis`): split over seeds, or over B when
    data parallel; on the first device without a mesh."""
    if self.mesh is None:
      return jax.device_put(batch, jax.local_devices()[0])
    spec = P(*(None,) * batch_axis, DATA_AXIS) if self.data_parallel else P(SEED_AXIS)
    return jax.device_put(batch, NamedSharding(self.mesh, spec))

  def sharding(self):
    """How seed-stacked trees are laid out (`put`); None: the default device."""
    if self.mesh is None:
      return None
    return NamedSharding(self.mesh, P() if self.data_parallel else P(SEED_AXIS))


SINGLE_DEVICE = Placement(None)


@dataclasses.dataclass(frozen=True)
class ReplayPlace:
  """Where a batch of seeds' replay lives (`train.replay_placement`): laid out over the
  learner's devices as its state is (`on_host` False), or in host memory, on JAX's CPU
  backend (`on_host` True), from where each update's batches are sent to the learner."""

  placement: Placement
  on_host: bool = False

  def sharding(self):
    if self.on_host:
      return jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    return self.placement.sharding()

  def put(self, tree):
    """Host arrays (or the learner's) where the replay lives."""
    if self.on_host:
      return jax.device_put(tree, jax.devices("cpu")[0])
    return self.placement.put(tree)

  def to_learner(self, batch, batch_axis: int = 2):
    """A batch drawn where the replay lives, on the learner's devices."""
    if not self.on_host:
      return batch
    return self.placement.put_batch(batch, batch_axis)

  def memory_device(self) -> jax.Device:
    """A device whose memory holds (part of) the replay."""
    if self.on_host:
      return jax.devices("cpu")[0]
    return (
      jax.local_devices()[0] if self.placement.mesh is None else self.placement.mesh.devices.flat[0]
    )

  def replays_per_device(self, num_seeds: int) -> int:
    """How many seeds' replays one device holds: all on the host or one device; the seeds'
    share when they are spread over devices; a whole copy on each device when data parallel."""
    if self.on_host or self.placement.mesh is None or self.placement.data_parallel:
      return num_seeds
    return num_seeds // self.placement.num_devices


def choose(
  num_seeds: int,
  batch_per_task: int,
  data_parallel: bool = False,
  devices: Sequence[jax.Device] | None = None,
) -> Placement:
  """The placement for `num_seeds` seeds on `devices` (default: every local device).

  Raises ValueError (one line) if the seeds (or, data parallel, the per-task batch) do not
  split evenly over the devices, or if data parallelism is asked for several seeds.
  """
  devices = list(jax.local_devices() if devices is None else devices)
  count = len(devices)
  if data_parallel:
    if num_seeds != 1:
      raise ValueError(
        f"--data_parallel splits one run's batch over the devices; got {num_seeds} seeds "
        "(several seeds are already spread over the devices without it)"
      )
    if batch_per_task % count:
      raise ValueError(
        f"--data_parallel: batch_per_task ({batch_per_task}) must be a multiple of the "
        f"{count} devices"
      )
    if count == 1:
      return SINGLE_DEVICE
    return Placement(Mesh(np.array(devices), (DATA_AXIS,)), data_parallel=True)
  if count == 1 or num_seeds == 1:  # one seed: the first device (--data_parallel uses all)
    return SINGLE_DEVICE
  if num_seeds % count:
    raise ValueError(
      f"{num_seeds} seed(s) cannot be split evenly over {count} devices; give a multiple of "
      f"{count} seeds, or fewer devices (e.g. CUDA_VISIBLE_DEVICES)"
    )
  return Placement(Mesh(np.array(devices), (SEED_AXIS,)))
