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

  def put_batch(self, batch):
    """An update batch [S, T, B, ...]: split over seeds, or over B when data parallel."""
    if self.mesh is None:
      return batch
    spec = P(None, None, DATA_AXIS) if self.data_parallel else P(SEED_AXIS)
    return jax.device_put(batch, NamedSharding(self.mesh, spec))


SINGLE_DEVICE = Placement(None)


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
