"""What the driver's end-to-end tests share: tiny MT10 configs, the CLI command line, readers
of a run directory. (Their compilation cache is the fixture `compilation_cache_dir`, in
conftest.py.)"""

import json
import os
import re
import shutil
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

from cmta_jax import config as config_lib
from cmta_jax import testing
from cmta_jax.envs.metaworld_env import task_names
from cmta_jax.training import launch, metrics_log
from cmta_jax.training import run_dir as run_dir_lib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN_SCRIPT = os.path.join(REPO, "experiments", "train.py")

# Every number small: 20-step episodes, narrow nets, tiny batches. The intervals
# divide TOTAL_STEPS / 2 so that a half run ends on a log, eval and checkpoint step
# (a run's last step always logs, evaluates and checkpoints).
EPISODE_LENGTH = 20
TOTAL_STEPS = 160
SMALL = {
  "benchmark": "MT10",
  "mode": "fixed",
  "episode_length": EPISODE_LENGTH,
  "hidden_width": 32,
  "batch_per_task": 8,
  "replay_capacity": 10_000,
  "warmup_steps": 40,
  "total_steps": TOTAL_STEPS,
  "log_every": 40,
  "eval_every": 80,
  "checkpoint_every": 40,
  "keep_checkpoints": 10,
  "seed": 0,
}
MT10 = task_names("MT10")
CLI_TIMEOUT = 240  # seconds; generous because the machine may be shared


def make_config(**overrides) -> config_lib.RunConfig:
  """RunConfig from the defaults plus SMALL plus `overrides`, keyed by leaf field name."""
  return config_lib.replace_fields(config_lib.RunConfig(), **{**SMALL, **overrides})


def cli_args(run_dir: str, **overrides) -> list[str]:
  """The train.py command line of make_config(**overrides)."""
  args = [sys.executable, TRAIN_SCRIPT, f"--run_dir={run_dir}"]
  for name, value in {**SMALL, **overrides}.items():
    if value is not None:  # None: leave the flag out
      args.append(f"--{name}={value}")
  return args


def subprocess_env(cache_dir: str) -> dict:
  env = dict(os.environ)
  # Subprocesses share the session's compilation cache (compiling is most of a short run).
  env.update(
    JAX_COMPILATION_CACHE_DIR=cache_dir,
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    JAX_PLATFORMS="cpu",
  )
  return env


def read_records(run_dir: str) -> list[dict]:
  with open(os.path.join(run_dir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]


def checkpoint_steps(run_dir: str) -> list[int]:
  directory = os.path.join(run_dir, "checkpoints")
  if not os.path.isdir(directory):
    return []
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def restore_checkpoint(run_dir: str, step: int) -> dict:
  """Every item of a checkpoint as numpy trees (no abstract target needed)."""
  manager = ocp.CheckpointManager(os.path.join(os.path.abspath(run_dir), "checkpoints"))
  try:
    restored = manager.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore(),
        replay=ocp.args.StandardRestore(),
        meta=ocp.args.JsonRestore(),
      ),
    )
    return {
      "state": jax.device_get(restored["state"]),
      "replay": dict(restored["replay"]),
      "meta": restored["meta"],
    }
  finally:
    manager.close()


def assert_trees_equal(left, right) -> None:
  left_leaves, left_def = jax.tree.flatten(left)
  right_leaves, right_def = jax.tree.flatten(right)
  assert left_def == right_def
  for index, (a, b) in enumerate(zip(left_leaves, right_leaves)):
    assert np.array_equal(np.asarray(a), np.asarray(b)), f"leaf {index} differs"


def without_time(records: list[dict]) -> list[dict]:
  return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in records]


class LogCapture:
  def __init__(self):
    self.lines: list[str] = []

  def __call__(self, message: str) -> None:
    self.lines.append(message)

  @property
  def text(self) -> str:
    return "\n".join(self.lines)


def train(run_config: config_lib.RunConfig, run_dir: str, **kwargs) -> dict:
  """launch.train on Meta-World whose variations are generated once per process."""
  return launch.train(run_config, run_dir, envs=testing.CACHED_METAWORLD, **kwargs)


def copy_run(run_dir: str, tmp_path) -> str:
  copy = str(tmp_path / "run")
  shutil.copytree(run_dir, copy)
  return copy


def run_dir_contents(run_dir: str) -> dict[str, bytes]:
  """Every file of the run directory (checkpoints included) by relative path, with its bytes."""
  contents = {}
  for root, _, files in os.walk(run_dir):
    for name in files:
      if name == run_dir_lib.LOCK_FILE:  # rewritten by every launch that takes the lock
        continue
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        contents[os.path.relpath(path, run_dir)] = f.read()
  return contents


def start_cli(run_dir: str, cache_dir: str, preexec_fn=None, **overrides) -> subprocess.Popen:
  return subprocess.Popen(
    cli_args(run_dir, **overrides),
    env=subprocess_env(cache_dir),
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    preexec_fn=preexec_fn,
  )


def wait_for_train_record(run_dir: str, process: subprocess.Popen, step: int) -> None:
  """Until the run has logged step `step` (its loop is running, its lock held)."""
  deadline = time.monotonic() + CLI_TIMEOUT
  while time.monotonic() < deadline:
    assert process.poll() is None, process.communicate()
    path = os.path.join(run_dir, "metrics.jsonl")
    if os.path.exists(path) and any(
      r["kind"] == "train" and r["step"] >= step for r in metrics_log.read_records(run_dir)
    ):
      return
    time.sleep(0.2)
  raise AssertionError(f"no train record at step {step} within {CLI_TIMEOUT} s")


def assert_one_line_error(result, pattern: str, before_config: bool = True) -> str:
  run_dir, returncode, stdout, stderr = result
  assert returncode != 0
  lines = stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), stderr
  assert re.search(pattern, lines[0]), lines[0]
  if before_config:
    # Nothing gets as far as the environments: those are built after "config:" is printed.
    assert "config:" not in stdout
  return lines[0]
