"""How every command under experiments/ fails: one line on stderr, a non-zero exit status.

  error: <what went wrong, naming the path, file or flag> (<what to do>)

Errors a user can cause (bad flags, paths, files, disk, memory) are reported
this way; anything else is a bug and keeps its traceback.
"""

import errno
import functools
import importlib
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import NoReturn

from absl import flags

EXIT_ERROR = 1
# sysexits.h EX_TEMPFAIL: stopped on request (SIGTERM, first Ctrl-C) after writing a
# checkpoint; running the same command resumes. Job schedulers can requeue on it.
EXIT_PREEMPTED = 75
EXIT_INTERRUPTED = 130  # 128 + SIGINT: stopped at once by a second Ctrl-C
USER_ERRORS = (ValueError, OSError, MemoryError)

_OS_HINTS = {
  errno.ENOSPC: "the disk is full: free some space, then run the same command again",
  errno.EDQUOT: "the disk quota is exhausted: free some space, then run the same command again",
  errno.EACCES: "no permission: make it writable or choose another path",
  errno.EPERM: "no permission: make it writable or choose another path",
  errno.EROFS: "read-only file system: choose another path",
  errno.ENOTDIR: "a part of the path is a file, not a directory: choose another path",
  errno.EEXIST: "it exists and is not a directory: choose another path",
  errno.EISDIR: "it is a directory, not a file",
  errno.EFBIG: "a file would exceed the size limit (ulimit -f) or the disk is full",
}


def describe(error: BaseException) -> str:
  """One line: OSErrors as '<reason>: <path> (<what to do>)', others as their message."""
  if isinstance(error, OSError) and error.strerror:
    path = error.filename if error.filename2 is None else f"{error.filename} -> {error.filename2}"
    text = error.strerror if path is None else f"{error.strerror}: {path}"
    hint = _OS_HINTS.get(error.errno)
    return f"{text} ({hint})" if hint else text
  text = str(error).strip() or type(error).__name__
  return " ".join(text.split())


def fail(error: BaseException | str, status: int = EXIT_ERROR) -> NoReturn:
  message = error if isinstance(error, str) else describe(error)
  print(f"error: {message}", file=sys.stderr)
  leave_at_once_on_ctrl_c(status)
  sys.exit(status)


def leave_at_once_on_ctrl_c(status: int) -> None:
  """From now on a Ctrl-C exits at once with `status`, printing nothing.

  For the interpreter's teardown (JAX's and orbax's exit handlers take a moment): the command
  has already said how it ended, and a Ctrl-C there would otherwise print a traceback from
  inside an exit handler. Outside the main thread (no handlers there) it does nothing.
  """
  if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGINT, lambda signum, frame: os._exit(status))


def one_line_errors(main: Callable, expected: tuple[type[BaseException], ...] = ()) -> Callable:
  """Wraps an absl `main(argv)`: user errors (and `expected`) become one line and exit 1."""

  @functools.wraps(main)
  def wrapped(argv):
    try:
      result = main(argv)
      leave_at_once_on_ctrl_c(0)
      return result
    except KeyboardInterrupt:
      fail("interrupted", EXIT_INTERRUPTED)
    except (*USER_ERRORS, *expected) as error:
      fail(error)

  return wrapped


FIGURE_FORMATS = ("png", "svg", "pdf")  # what figures.save writes, by file extension


def check_output_file(path: str, extensions: tuple[str, ...] = ()) -> None:
  """ValueError (one line) unless `path`'s directory exists and, if `extensions` are given,
  the name ends in one of them (without the dot, lower case)."""
  extension = os.path.splitext(path)[1].lstrip(".").lower()
  if extensions and extension not in extensions:
    raise ValueError(f"{path}: give a file name ending in {', '.join('.' + e for e in extensions)}")
  directory = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(directory):
    raise ValueError(f"{directory} is not a directory (for {path})")


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing (use as `app.run(main, flags_parser=parse_flags)`), with an unknown
  or mistyped flag reported as one line instead of absl's FATAL and usage text."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as error:
    fail(f"{error} (see --helpfull)")


AGENT_MODULE_FLAG = "agent_module"


def agent_modules_in(argv: list[str]) -> list[str]:
  """The modules named by `--agent_module=pkg.mod[,pkg2.mod2]` (given once or more) in
  `argv`, read before absl parses it: train.py defines flags from what they register."""
  modules = []
  for index, arg in enumerate(argv[1:], start=1):
    value = None
    if arg.startswith(f"--{AGENT_MODULE_FLAG}="):
      value = arg.split("=", 1)[1]
    elif arg == f"--{AGENT_MODULE_FLAG}" and index + 1 < len(argv):
      value = argv[index + 1]
    if value is not None:
      modules += [name.strip() for name in value.split(",") if name.strip()]
  return modules


def import_agent_modules(modules: list[str]) -> None:
  """Imports `modules`, so the agents they register reach `--agent` and the run configs
  that name them can be read; a module that fails to import ends the command with a
  one-line error."""
  for name in modules:
    try:
      importlib.import_module(name)
    except Exception as error:  # pylint: disable=broad-except
      fail(
        f"--{AGENT_MODULE_FLAG}={name}: cannot import it ({type(error).__name__}: "
        f"{describe(error)}); is its directory on PYTHONPATH?"
      )


def define_agent_module_flag() -> None:
  """Defines `--agent_module` (read earlier, by `import_agent_modules`) for --help and
  parsing."""
  flags.DEFINE_list(
    AGENT_MODULE_FLAG,
    [],
    "Python modules to import first (e.g. my_lab.film_agent): agents they register with "
    "cmta_jax.agents.registry become --agent choices, their config sections flags.",
  )


def parse_seeds(text: str) -> tuple[int, ...]:
  """'0-7' -> (0, ..., 7); '0,3,5' and '0-3,8' likewise. ValueError (one line) otherwise."""
  seeds = []
  for part in text.split(","):
    bounds = part.strip().split("-")
    try:
      if len(bounds) == 1:
        seeds.append(int(bounds[0]))
        continue
      if len(bounds) != 2:
        raise ValueError
      first, last = int(bounds[0]), int(bounds[1])
    except ValueError:
      raise ValueError(
        f"--seeds must be ranges and integers like 0-7 or 0,3,5, got {text!r}"
      ) from None
    if last < first:
      raise ValueError(f"--seeds: the range {part.strip()} is empty (write first-last)")
    seeds.extend(range(first, last + 1))
  if len(set(seeds)) != len(seeds):
    raise ValueError(f"--seeds repeats a seed: {text!r}")
  return tuple(seeds)
