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
