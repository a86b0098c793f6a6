"""Orbax checkpoints of everything a run needs to resume exactly.

A checkpoint holds three items: `state` (the learner's pytree), `replay` (the
buffer's filled arrays and RNG) and `meta` (JSON: step, environment states,
host-side episode statistics). Saves are synchronous: the replay item holds
views of the live buffer. Orbax writes into a temporary directory and renames
it when complete, so a run killed mid-save leaves the previous checkpoint intact.
"""

import os
import shutil
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp


class NoUsableCheckpoint(RuntimeError):
  pass


class Checkpointer:

  def __init__(self, run_dir: str, keep: int):
    self.directory = os.path.join(os.path.abspath(run_dir), "checkpoints")
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=False))

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, replay: dict, meta: dict) -> None:
    replay = {k: np.asarray(v) for k, v in replay.items()}
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), replay=ocp.args.StandardSave(replay),
        meta=ocp.args.JsonSave(meta)), force=True)
    self._manager.wait_until_finished()

  def restore_latest(self, abstract_state: Any, log: Callable[[str], None] = print):
    """(step, state, replay, meta) of the newest readable checkpoint, or None if there is none.

    An unreadable checkpoint is reported by path and moved aside to
    `checkpoints_unreadable/` (kept for inspection), then the previous one is tried.
    """
    steps = self.steps()
    for i, step in enumerate(reversed(steps)):
      path = os.path.join(self.directory, str(step))
      try:
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), replay=ocp.args.StandardRestore(),
            meta=ocp.args.JsonRestore()))
        _check_finite(restored["state"])
        return step, restored["state"], dict(restored["replay"]), restored["meta"]
      except Exception as error:  # Any failure to read means: not usable.
        older = steps[-2 - i] if i + 1 < len(steps) else None
        reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:300]
        aside = self._move_aside(path)
        if older is None:
          raise NoUsableCheckpoint(
              f"checkpoint {path} is unreadable ({reason}); no older checkpoint to fall back to "
              f"(moved to {aside})") from error
        log(f"WARNING: checkpoint {path} is unreadable ({reason}); moved to {aside}; "
            f"falling back to step {older}")
    return None

  def _move_aside(self, path: str) -> str:
    aside_dir = os.path.join(os.path.dirname(self.directory), "checkpoints_unreadable")
    os.makedirs(aside_dir, exist_ok=True)
    target = os.path.join(aside_dir, os.path.basename(path))
    suffix = 0
    while os.path.exists(target):
      suffix += 1
      target = os.path.join(aside_dir, f"{os.path.basename(path)}.{suffix}")
    shutil.move(path, target)
    self._manager.reload()
    return target

  def close(self) -> None:
    self._manager.close()


def _check_finite(tree: Any) -> None:
  for leaf in jax.tree.leaves(tree):
    array = np.asarray(leaf)
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
      raise ValueError("restored state holds non-finite values")
