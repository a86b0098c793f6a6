"""Every command under experiments/ fails in one line on stderr (cmta_jax/cli.py)."""

import errno
import os
import subprocess
import sys

import pytest

from cmta_jax import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize(
  "error,expected",
  [
    (
      PermissionError(errno.EACCES, "Permission denied", "/runs/a"),
      "Permission denied: /runs/a (no permission: make it writable or choose another path)",
    ),
    (
      OSError(errno.EROFS, "Read-only file system", "/mnt/ro/run"),
      "Read-only file system: /mnt/ro/run (read-only file system: choose another path)",
    ),
    (
      OSError(errno.ENOSPC, "No space left on device", "/runs/a/metrics.jsonl"),
      "No space left on device: /runs/a/metrics.jsonl (the disk is full: free some space, then "
      "run the same command again)",
    ),
    (
      FileNotFoundError(errno.ENOENT, "No such file or directory", "/nowhere"),
      "No such file or directory: /nowhere",
    ),
    (ValueError("bad value\n  with a second line"), "bad value with a second line"),
  ],
)
def test_describe_is_one_line_naming_the_path_and_what_to_do(error, expected):
  assert cli.describe(error) == expected


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, os.path.join(REPO, "experiments", script), *args],
    capture_output=True,
    text=True,
    timeout=120,
  )


@pytest.mark.parametrize(
  "script,args,message",
  [
    ("aggregate.py", ["/nonexistent/run"], "/nonexistent/run does not exist"),
    ("aggregate.py", [], "usage: aggregate.py RUN_DIR"),
    ("run_report.py", ["/nonexistent/run"], "/nonexistent/run is not a directory"),
    (
      "run_report.py",
      ["--last_evals=0", "/tmp"],
      "--last_evals and --train_window must be positive",
    ),
    ("run_report.py", ["--last_evalz=3", "/tmp"], "Unknown command line flag 'last_evalz'"),
    ("benchmark.py", ["--agents=nobody"], "unknown agent 'nobody'"),
  ],
)
def test_report_and_benchmark_commands_fail_in_one_line(script, args, message):
  result = _run(script, *args)
  assert result.returncode == cli.EXIT_ERROR
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr


_CTRL_C_DURING_TEARDOWN = """
import atexit, os, signal, sys, time
from absl import app
from cmta_jax import cli

def ctrl_c_then_wait():  # a Ctrl-C while an exit handler (JAX's, orbax's) is still working
  os.kill(os.getpid(), signal.SIGINT)
  time.sleep(5)

atexit.register(ctrl_c_then_wait)

def main(argv):
  if sys.argv[-1] == "fail":
    cli.fail("stopped by SIGINT after writing its checkpoint", cli.EXIT_PREEMPTED)

app.run(cli.one_line_errors(main), flags_parser=cli.parse_flags)
"""


@pytest.mark.parametrize("ending,status", [("fail", cli.EXIT_PREEMPTED), ("succeed", 0)])
def test_a_ctrl_c_after_the_command_has_ended_exits_at_once_without_a_traceback(ending, status):
  # A second Ctrl-C that arrives after the graceful stop has printed its line must not land
  # in JAX's exit handler and print a KeyboardInterrupt traceback.
  result = subprocess.run(
    [sys.executable, "-c", _CTRL_C_DURING_TEARDOWN, ending],
    capture_output=True,
    text=True,
    timeout=60,
    cwd=REPO,
  )
  assert result.returncode == status, result.stderr
  expected = "error: stopped by SIGINT after writing its checkpoint" if status else ""
  assert result.stderr.strip() == expected
