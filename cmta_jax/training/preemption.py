"""Stopping a run without losing it: SIGTERM and Ctrl-C.

Cluster schedulers preempt a job with SIGTERM (then SIGKILL after a grace
period); SLURM jobs submitted by submitit are also warned with SIGUSR2 before
their time limit. While `StopSignals` is active, SIGTERM, SIGUSR2 or a first
Ctrl-C only records the request; the training loop finishes the current episode, writes a
checkpoint there (checkpoints are at episode starts) and raises `Preempted`,
which the CLI turns into one line and exit status `cli.EXIT_PREEMPTED`. A second
Ctrl-C raises KeyboardInterrupt at once.
"""

import signal
import threading
from collections.abc import Callable


class Preempted(Exception):
  """The run stopped on request after writing a checkpoint; the same command resumes it."""


class StopSignals:
  """Context manager: SIGTERM / SIGUSR2 / SIGINT handlers that set `requested` (the signal's
  name).

  Outside the main thread (where Python cannot install handlers) it does nothing.
  """

  def __init__(self, log: Callable[[str], None] = print):
    self.requested: str | None = None
    self._log = log
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    name = signal.Signals(signum).name
    if self.requested is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt  # the second Ctrl-C: stop now
    if self.requested is None:
      self.requested = name
      self._log(
        f"{name}: stopping at the end of this episode, after a checkpoint "
        "(Ctrl-C again stops at once)"
      )

  def __enter__(self) -> "StopSignals":
    if threading.current_thread() is threading.main_thread():
      for signum in (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT):
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc_info) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}
