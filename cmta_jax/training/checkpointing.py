"""Orbax checkpoints of everything a run needs to resume exactly.

A checkpoint holds three items: `state` (the learner's pytree), `replay` (the
buffer's filled arrays and RNG) and `meta` (JSON: step, environment states,
host-side episode statistics). Saves are synchronous: the replay item holds
views of the live buffer. Orbax writes into a temporary directory and renames
it when complete, so a run killed mid-save leaves the previous checkpoint intact.
"""

import contextlib
import errno
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

_SAVE_HEADROOM_BYTES = 16 * 2**20  # metadata, and what the run writes meanwhile


class NoUsableCheckpoint(RuntimeError):
  pass


class CheckpointMismatch(ValueError):
  """A readable checkpoint whose arrays do not fit the current config: not corrupt, kept."""


class CheckpointWriteFailed(OSError):
  pass


def checkpoint_steps(directory: str) -> list[int]:
  """Steps of the finished checkpoints in `directory` (orbax writes into
  '<step>.orbax-checkpoint-tmp*' and renames when complete, so only finished saves have a
  plain step number); [] if there is no such directory."""
  if not os.path.isdir(directory):
    return []
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


class Checkpointer:
  def __init__(self, run_dir: str, keep: int):
    self.directory = os.path.join(os.path.abspath(run_dir), "checkpoints")
    self._manager = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=False
      ),
      item_handlers={
        "state": ocp.StandardCheckpointHandler(),
        "replay": ocp.StandardCheckpointHandler(),
        "meta": ocp.JsonCheckpointHandler(),
      },
    )
    self._closed = False
    _silence_orbax_background_errors()

  def steps(self) -> list[int]:
    return checkpoint_steps(self.directory)

  def save(self, step: int, state: Any, replay: dict, meta: dict) -> None:
    """Writes the checkpoint of `step`; older ones are deleted only once it is complete.

    Raises CheckpointWriteFailed (an OSError, one line) if it cannot be written, e.g. on a
    full disk; the partial write is removed and every earlier checkpoint is kept.
    """
    replay = {k: np.asarray(v) for k, v in replay.items()}
    self._check_free_space(step, state, replay)
    with _stderr_held_back() as held_back:
      try:
        self._manager.save(
          step,
          args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            replay=ocp.args.StandardSave(replay),
            meta=ocp.args.JsonSave(meta),
          ),
          force=True,
        )
        self._manager.wait_until_finished()
        failure = None
      except Exception as error:  # orbax wraps OS errors in several types
        failure = error
        # Let orbax's remaining writer threads fail while their output is still held back.
        self.close()
        held_back.discard = True
    if failure is not None:
      self._remove_partial_writes(step)
      code, reason = _os_error_of(failure)
      kept = [s for s in self.steps() if s != step]
      raise CheckpointWriteFailed(
        code,
        f"cannot write the checkpoint of step {step} in {self.directory} ({reason}); "
        f"earlier checkpoints kept (steps {kept}); fix the cause, then run the same command to "
        "resume",
      ) from None

  def _check_free_space(self, step: int, state: Any, replay: dict) -> None:
    """Refuses a save that cannot fit, before writing anything (orbax fails noisily mid-way)."""
    needed = sum(np.asarray(a).nbytes for a in replay.values()) + sum(
      np.asarray(leaf).nbytes for leaf in jax.tree.leaves(state)
    )
    needed = int(needed * 1.05) + _SAVE_HEADROOM_BYTES
    free = shutil.disk_usage(self.directory).free
    if needed > free:
      raise CheckpointWriteFailed(
        errno.ENOSPC,
        f"not enough free disk space for the checkpoint of step {step} in {self.directory} "
        f"(needs ~{needed / 2**20:.0f} MiB, {free / 2**20:.0f} MiB free); earlier checkpoints "
        f"kept (steps {self.steps()}); free some space, then run the same command to resume",
      )

  def _remove_partial_writes(self, step: int) -> None:
    """Removes what a failed save of `step` left. orbax's writer threads may still be
    finishing (and re-creating files) for a moment, so it retries for up to ~5 s."""
    for _ in range(50):
      partial = [
        name
        for name in (os.listdir(self.directory) if os.path.isdir(self.directory) else [])
        if name.startswith(f"{step}.")
        and "tmp" in name
        or name == str(step)
        and not self._complete(step)
      ]
      if not partial:
        return
      for name in partial:
        shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
      time.sleep(0.1)

  def _complete(self, step: int) -> bool:
    return os.path.exists(os.path.join(self.directory, str(step), "_CHECKPOINT_METADATA"))

  def fits(self, step: int, abstract_state: Any) -> bool | None:
    """Whether checkpoint `step`'s state arrays have the shapes of `abstract_state`;
    None if its metadata cannot be read (then it is unreadable, not mismatched)."""
    try:
      metadata = self._manager.item_metadata(step)["state"]
      saved = sorted((tuple(m.shape), str(m.dtype)) for m in jax.tree.leaves(metadata))
    except Exception:  # pylint: disable=broad-except
      return None
    wanted = sorted((tuple(a.shape), str(a.dtype)) for a in jax.tree.leaves(abstract_state))
    return saved == wanted

  def restore_latest(
    self, abstract_state: Any, log: Callable[[str], None] = print, max_step: int | None = None
  ):
    """(step, state, replay, meta) of the newest readable checkpoint (at most `max_step`),
    or None if there is none.

    An unreadable checkpoint is reported by path and moved aside to
    `checkpoints_unreadable/` (kept for inspection), then the previous one is tried.
    """
    steps = [s for s in self.steps() if max_step is None or s <= max_step]
    for i, step in enumerate(reversed(steps)):
      path = os.path.join(self.directory, str(step))
      try:
        restored = self._manager.restore(
          step,
          args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            replay=ocp.args.StandardRestore(),
            meta=ocp.args.JsonRestore(),
          ),
        )
        _check_finite(restored["state"])
        return step, restored["state"], dict(restored["replay"]), restored["meta"]
      except Exception as error:  # Any failure to read means: not usable.
        if self.fits(step, abstract_state) is False:
          raise CheckpointMismatch(
            f"checkpoint {path} holds arrays of other shapes than this config's networks "
            "(its config.json was replaced, or an earlier version of the agent's networks "
            "wrote it); it is kept; use the run's original flags, or another --run_dir"
          ) from None
        older = steps[-2 - i] if i + 1 < len(steps) else None
        reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:300]
        aside = self._move_aside(path)
        if older is None:
          raise NoUsableCheckpoint(
            f"checkpoint {path} is unreadable ({reason}); no older checkpoint to fall back to "
            f"(moved to {aside})"
          ) from error
        log(
          f"WARNING: checkpoint {path} is unreadable ({reason}); moved to {aside}; "
          f"falling back to step {older}"
        )
    return None

  def restore_state(self, step: int, abstract_state: Any) -> Any:
    """The state item of checkpoint `step` alone (no replay), changing nothing on disk.

    Raises ValueError (one line, naming the checkpoint) if it cannot be read or holds
    arrays of other shapes.
    """
    path = os.path.join(self.directory, str(step))
    try:
      restored = self._manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
      )
      _check_finite(restored["state"])
    except Exception as error:  # orbax raises many types; any of them means unreadable
      if self.fits(step, abstract_state) is False:
        raise ValueError(
          f"checkpoint {path} holds arrays of other shapes than its run's config builds (an "
          "earlier version of the agent's networks wrote it?)"
        ) from None
      reason = str(error).splitlines()[0] if str(error) else type(error).__name__
      raise ValueError(f"checkpoint {path} is unreadable ({reason[:300]})") from None
    return restored["state"]

  def delete_after(self, step: int) -> list[int]:
    """Deletes the checkpoints of steps after `step` (a batch resuming at the last step all
    its seeds completed re-creates them exactly); returns their steps."""
    newer = [s for s in self.steps() if s > step]
    for newer_step in newer:
      self._manager.delete(newer_step)
    return newer

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
    """Idempotent; after a failed save the checkpointer is closed already."""
    if not self._closed:
      self._closed = True
      self._manager.close()


def _check_finite(tree: Any) -> None:
  for leaf in jax.tree.leaves(tree):
    array = np.asarray(leaf)
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
      raise ValueError("restored state holds non-finite values")


def _os_error_of(error: BaseException) -> tuple[int | None, str]:
  """(errno, one-line reason) of a failed write: the first OSError among the causes, else
  the OS error code that orbax's storage layer puts in its message, else the message."""
  seen, current = set(), error
  while current is not None and id(current) not in seen:
    seen.add(id(current))
    if isinstance(current, OSError) and current.strerror:
      where = f": {current.filename}" if current.filename else ""
      return current.errno, f"{current.strerror}{where}"
    current = current.__cause__ or current.__context__
  match = re.search(r"os_error_code='?(\d+)", str(error))
  if match:
    code = int(match.group(1))
    return code, os.strerror(code)
  text = str(error).strip().splitlines()
  return None, f"{type(error).__name__}: {text[0] if text else ''}"[:300]


class _HeldBack:
  discard = False


@contextlib.contextmanager
def _stderr_held_back():
  """Holds back everything written to file descriptor 2 (C++ and Python alike) while a save
  runs; passes it on afterwards unless `.discard` was set (the failure is reported anyway)."""
  held_back = _HeldBack()
  sys.stderr.flush()
  original = os.dup(2)
  with tempfile.TemporaryFile() as buffer:
    os.dup2(buffer.fileno(), 2)
    try:
      yield held_back
    finally:
      sys.stderr.flush()
      os.dup2(original, 2)
      os.close(original)
      if not held_back.discard:
        buffer.seek(0)
        output = buffer.read()
        if output:
          os.write(2, output)


class _NotOrbax(logging.Filter):
  def filter(self, record):
    return "orbax" not in record.pathname


def _raised_in_orbax(traceback) -> bool:
  while traceback is not None:
    if "orbax" in traceback.tb_frame.f_code.co_filename:
      return True
    traceback = traceback.tb_next
  return False


def _silence_orbax_background_errors() -> None:
  """orbax logs every failure of its worker threads with a traceback (hundreds of lines for
  one full disk) and lets some threads go on failing while the process winds down. Every
  failure reaches the caller as an exception reported in one line, so mute those logs.
  Idempotent."""
  for logger in (logging.getLogger("absl"), logging.getLogger()):
    for target in (logger, *logger.handlers):
      if not any(isinstance(f, _NotOrbax) for f in target.filters):
        target.addFilter(_NotOrbax())
  _drop_reports(threading, "excepthook", lambda args: _raised_in_orbax(args.exc_traceback))
  _drop_reports(sys, "excepthook", lambda kind, value, tb: _is_closed_loop_callback(value))
  _drop_reports(sys, "unraisablehook", lambda report: _is_closed_loop_callback(report.exc_value))
  warnings.filterwarnings("ignore", category=RuntimeWarning, message="coroutine .* never awaited")


def _drop_reports(owner: Any, name: str, drop: Callable[..., bool]) -> None:
  """Wraps the exception hook `owner.name` so that the reports `drop` selects are not
  printed; every other report reaches the previous hook. Idempotent."""
  previous = getattr(owner, name)
  if getattr(previous, "mutes_orbax", False):
    return

  def hook(*args):
    if not drop(*args):
      previous(*args)

  hook.mutes_orbax = True
  setattr(owner, name, hook)


def _is_closed_loop_callback(error: BaseException | None) -> bool:
  """tensorstore completing a write for an orbax event loop that a failed save has already
  closed. tensorstore's threads report it through sys.excepthook or, more often, as an
  unraisable exception (PyErr_WriteUnraisable), at any moment of the shutdown."""
  return isinstance(error, RuntimeError) and str(error) == "Event loop is closed"
