"""A run directory's guards: one process at a time, and a resume only with a config it fits.

Everything here decides before anything in the directory is changed, so a
refused launch leaves the run exactly as it was: its checkpoints in place and
its `config.json` untouched (the driver writes `config.json` only once the run
has really started or resumed).
"""

import datetime
import fcntl
import json
import os
import socket

import jax

from cmta_jax import config as config_lib

CONFIG_FILE = "config.json"
LOCK_FILE = ".lock"
# Fields that may change when a run is resumed without --allow_config_change: extending a
# run is normal.
RESUMABLE_CHANGES = ("train.total_steps",)
# Fields that say what a run is: they can never change on resume, whatever the shapes.
IDENTITY_FIELDS = (
  "agent",
  "env.benchmark",
  "env.mode",
  "recurrence.carry_mode",
  "train.seed",
  "train.eval_protocol",  # a curve is evaluated by one protocol throughout
)


class ConfigMismatch(ValueError):
  pass


class RunDirInUse(RuntimeError):
  pass


class RunDirLock:
  """An exclusive `flock` on RUN_DIR/.lock for the life of a run (a context manager).

  The kernel drops the lock when its process dies, however it dies, so a lock left
  by a dead process is simply taken over. A second launch on a locked directory
  raises RunDirInUse naming the holder (pid, host, start time), at once.
  Creates `run_dir` if needed; OSError if it cannot (a file, no permission).
  """

  def __init__(self, run_dir: str):
    self.run_dir = run_dir
    self.path = os.path.join(run_dir, LOCK_FILE)
    self._fd = None

  def __enter__(self) -> "RunDirLock":
    os.makedirs(self.run_dir, exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.read(fd, 4096).decode(errors="replace").strip() or "another process"
      os.close(fd)
      raise RunDirInUse(
        f"{self.run_dir} is in use by {holder}; wait for it to finish or stop "
        "it, or use another --run_dir"
      ) from None
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    os.ftruncate(fd, 0)
    os.write(fd, f"process {os.getpid()} on {socket.gethostname()} (started {started})".encode())
    self._fd = fd
    return self

  def __exit__(self, *exc_info) -> None:
    # Unlocked by closing; the file stays (removing it would race with a waiting launch).
    os.close(self._fd)
    self._fd = None


def read_saved_config(run_dir: str) -> dict | None:
  """The flat config saved in RUN_DIR/config.json (with today's field paths, whichever
  version wrote it: `config_lib.upgrade_flat`), or None if there is none.

  Raises ValueError naming the file if it is not a JSON object.
  """
  path = os.path.join(run_dir, CONFIG_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    text = f.read()
  try:
    saved = json.loads(text)
  except json.JSONDecodeError as error:
    raise ValueError(
      f"{path} is not valid JSON ({error}); restore it, or delete it to resume "
      "with the current flags unchecked"
    ) from None
  if not isinstance(saved, dict):
    raise ValueError(
      f"{path} does not hold a config (a JSON object); restore it, or delete it "
      "to resume with the current flags unchecked"
    )
  return config_lib.upgrade_flat(saved)


def write_config(run_dir: str, run_config: config_lib.RunConfig) -> None:
  """Atomically (a crash leaves the old file or the new one)."""
  path = os.path.join(run_dir, CONFIG_FILE)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(config_lib.flatten(run_config), f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def changed_fields(saved: dict, current: dict) -> list[tuple[str, object, object]]:
  """(field, saved value, value now) for every field of two flat configs that differs."""
  return [
    (key, saved.get(key, "<missing>"), current.get(key, "<missing>"))
    for key in sorted(set(saved) | set(current))
    if saved.get(key, "<missing>") != current.get(key, "<missing>")
  ]


def config_diff(saved: dict, current: dict) -> list[str]:
  """'field: saved X != now Y' for every field that differs, except RESUMABLE_CHANGES."""
  return [
    f"{key}: saved {before!r} != now {now!r}"
    for key, before, now in changed_fields(saved, current)
    if key not in RESUMABLE_CHANGES
  ]


def check_resume_config(
  run_dir: str,
  saved: dict | None,
  run_config: config_lib.RunConfig,
  allow_config_change: bool,
  shapes,
) -> list[tuple[str, object, object]]:
  """Refuses (one-line ConfigMismatch) a resume whose config differs from the saved one;
  returns the changes it accepts: (field, saved value, value now), RESUMABLE_CHANGES
  included, [] for a new run.

  The saved config is read as a whole config, so a field it predates has its default.
  `shapes(run_config)` -> a comparable summary of every array shape a checkpoint holds.
  A field that changes those shapes can never change (the checkpoints could not be
  restored), and the refusal says so; with `allow_config_change`, other fields may.
  """
  if saved is None:
    return []
  try:
    saved_config = config_lib.from_flat(saved)
  except (TypeError, ValueError) as error:
    raise ConfigMismatch(
      f"{os.path.join(run_dir, CONFIG_FILE)} cannot be read as a config "
      f"({error}); use another --run_dir"
    ) from None
  saved_flat, current_flat = config_lib.flatten(saved_config), config_lib.flatten(run_config)
  changes = changed_fields(saved_flat, current_flat)
  diffs = config_diff(saved_flat, current_flat)
  if not diffs:
    return changes
  check_identity(run_dir, saved_flat, current_flat)
  saved_shapes = shapes(saved_config)
  if shapes(run_config) == saved_shapes:
    if allow_config_change:
      return changes
    raise ConfigMismatch(
      f"{run_dir} holds a run with a different config ({'; '.join(diffs)}); "
      "use another --run_dir or pass --allow_config_change"
    )
  # Name the fields that change shapes: each one applied alone to the saved config.
  reshaping = []
  for key in diffs:
    path = key.split(":")[0]
    try:
      one_change = config_lib.replace_path(
        saved_config, path, config_lib.getattr_path(run_config, path)
      )
      if shapes(one_change) != saved_shapes:
        reshaping.append(key)
    except (AttributeError, TypeError, ValueError):
      reshaping.append(key)
  raise ConfigMismatch(
    f"{run_dir} holds checkpoints of other array shapes ({'; '.join(reshaping or diffs)}): {_NEVER}"
  )


def check_identity(run_dir: str, saved: dict, current: dict) -> None:
  """Refuses (one-line ConfigMismatch) a resume that changes a field of IDENTITY_FIELDS
  (`saved`, `current`: flat configs); the CLI asks this before it validates the new config,
  so the refusal is about the run, not about the new agent's options."""
  changed = [
    f"{key}: saved {before!r} != now {now!r}"
    for key, before, now in changed_fields(saved, current)
    if key in IDENTITY_FIELDS
  ]
  if changed:
    raise ConfigMismatch(
      f"{run_dir} holds a run of another agent, task set, carry mode, seed or evaluation protocol "
      f"({'; '.join(changed)}): {_NEVER}"
    )


_NEVER = (
  "these fields can never change on resume, even with --allow_config_change; use another --run_dir"
)


def abstract_shapes(tree) -> dict:
  """{path: (shape, dtype)} of a pytree of arrays or ShapeDtypeStructs."""
  return {
    jax.tree_util.keystr(path): (tuple(leaf.shape), str(leaf.dtype))
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
  }
