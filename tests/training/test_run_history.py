"""A run directory keeps its history: nothing a run wrote is lost or rewritten without a record
in changes.jsonl and a console line, a run that starts can resume, and a stop at any moment
after launch ends with the scheduler's "requeue me" status."""

import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
from driver_support import (
  CLI_TIMEOUT,
  REPO,
  TOTAL_STEPS,
  LogCapture,
  assert_one_line_error,
  checkpoint_steps,
  cli_args,
  copy_run,
  make_config,
  read_records,
  run_dir_contents,
  subprocess_env,
  train,
)

from cmta_jax import cli, testing
from cmta_jax.replay import memory
from cmta_jax.replay.buffer import ReplayBuffer
from cmta_jax.training import change_log, launch, metrics_log, records, steps
from cmta_jax.training import run_dir as run_dir_lib

pytestmark = pytest.mark.usefixtures("compilation_cache_dir")

HALF = TOTAL_STEPS // 2


@pytest.fixture(scope="module")
def half_run(tmp_path_factory, compilation_cache_dir):
  """A run stopped at step HALF (checkpoints at 40 and 80; records: eval 0, train 40, train
  80, eval 80). Tests work on copies."""
  del compilation_cache_dir
  run_dir = str(tmp_path_factory.mktemp("half") / "run")
  train(make_config(total_steps=HALF), run_dir, log=LogCapture())
  assert len(read_records(run_dir)) == 4
  return run_dir


def _launch(run_dir: str, cache_dir: str, *extra: str, **overrides) -> subprocess.Popen:
  return subprocess.Popen(
    [*cli_args(run_dir, **overrides), *extra],
    env=subprocess_env(cache_dir),
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )


def _finish(run_dir: str, process: subprocess.Popen) -> tuple:
  stdout, stderr = process.communicate(timeout=CLI_TIMEOUT)
  return run_dir, process.returncode, stdout, stderr


# ------------------------------------------------------------------ metrics.jsonl is history


@pytest.mark.slow
def test_a_resume_that_would_lose_metrics_records_is_refused_naming_the_backup(
  half_run, tmp_path, compilation_cache_dir
):
  missing = copy_run(half_run, tmp_path / "missing")
  os.remove(os.path.join(missing, "metrics.jsonl"))
  cut = copy_run(half_run, tmp_path / "cut")
  path = os.path.join(cut, "metrics.jsonl")
  shutil.copy(path, path + ".bak")
  with open(path) as f:
    first = f.readline()
  with open(path, "w") as f:
    f.write(first)
  before = {d: run_dir_contents(d) for d in (missing, cut)}
  launched = {d: _launch(d, compilation_cache_dir) for d in (missing, cut)}
  results = {d: _finish(d, p) for d, p in launched.items()}

  line = assert_one_line_error(
    results[missing],
    rf"metrics.jsonl is missing, but the checkpoint at step {HALF} follows 4 records: resuming "
    rf"would lose the run's history up to step {HALF}; restore it from a backup, or pass "
    r"--accept_history_loss",
  )
  assert results[missing][1] == cli.EXIT_ERROR, line
  assert_one_line_error(
    results[cut],
    rf"metrics.jsonl holds 1 of them, but the checkpoint at step {HALF} follows 4 records: .*"
    rf"restore it from {re.escape(path)}.bak \(cp {re.escape(path)}.bak {re.escape(path)}\)",
  )
  for directory, contents in before.items():  # refused before anything changed
    assert run_dir_contents(directory) == contents


@pytest.mark.slow
def test_accepting_the_loss_resumes_and_records_it(half_run, tmp_path):
  run_dir = copy_run(half_run, tmp_path)
  os.remove(os.path.join(run_dir, "metrics.jsonl"))
  with pytest.raises(metrics_log.HistoryLost):
    train(make_config(), run_dir, log=LogCapture())
  log = LogCapture()
  summary = train(make_config(), run_dir, log=log, accept_history_loss=True)
  assert summary["steps"] == TOTAL_STEPS
  loss = {"kind": "history_loss", "step": HALF, "records_kept": 0, "records_expected": 4}
  assert [e for e in change_log.read(run_dir) if e["kind"] == "history_loss"] == [loss]
  assert f"step {HALF}: resumed with 0 of the 4 metrics records up to this step" in log.text
  assert min(r["step"] for r in read_records(run_dir)) > HALF


@pytest.mark.slow
def test_a_restart_from_scratch_keeps_the_old_records_aside_and_says_so(half_run, tmp_path):
  run_dir = copy_run(half_run, tmp_path)
  with open(os.path.join(run_dir, "metrics.jsonl"), "rb") as f:
    old = f.read()
  shutil.rmtree(os.path.join(run_dir, "checkpoints"))
  log = LogCapture()
  train(make_config(total_steps=40), run_dir, log=log)
  aside = os.path.join(run_dir, "metrics.jsonl.replaced")
  with open(aside, "rb") as f:
    assert f.read() == old
  assert f"the file as it was is kept as {aside}" in log.text
  assert change_log.read(run_dir) == [
    {"kind": "moved_aside", "step": 0, "from": "metrics.jsonl", "to": "metrics.jsonl.replaced"}
  ]


# ------------------------------------------------------------------ config changes


@pytest.mark.slow
def test_an_accepted_config_change_is_recorded_reported_and_labelled(half_run, tmp_path):
  run_dir = copy_run(half_run, tmp_path / "changed")
  log = LogCapture()
  train(make_config(log_every=80, critic_lr=1e-3), run_dir, log=log, allow_config_change=True)
  changes = change_log.config_changes(run_dir)
  assert changes == [
    {"kind": "config", "step": HALF, "field": "sac.critic_lr", "old": 3e-4, "new": 1e-3},
    {"kind": "config", "step": HALF, "field": "train.log_every", "old": 40, "new": 80},
    {"kind": "config", "step": HALF, "field": "train.total_steps", "old": HALF, "new": 160},
  ]
  assert f"step {HALF}: sac.critic_lr 0.0003 -> 0.001 (recorded in changes.jsonl)" in log.text
  # A second resume with nothing changed records nothing more.
  train(make_config(log_every=80, critic_lr=1e-3), run_dir, log=LogCapture())
  assert change_log.config_changes(run_dir) == changes

  report = _command("run_report.py", run_dir)
  assert f"Recorded changes (changes.jsonl): step {HALF}: sac.critic_lr 0.0003 -> 0.001; " in report
  # In a table, the run is not averaged with runs that had critic_lr 0.001 all along, and its
  # label says what changed (bookkeeping and the budget aside).
  table = _command("tables.py", run_dir)
  assert f"| CMTA [from step {HALF}: sac.critic_lr 0.0003 -> 0.001] |" in table, table


def _command(script: str, *args: str) -> str:
  result = subprocess.run(
    [sys.executable, os.path.join(REPO, "experiments", script), *args],
    capture_output=True,
    text=True,
    timeout=CLI_TIMEOUT,
  )
  assert result.returncode == 0, result.stderr
  return result.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
  "overrides,field",
  [
    (dict(seed=1), r"train.seed: saved 0 != now 1"),
    (dict(carry_mode="stored"), r"recurrence.carry_mode: saved 'burn_in' != now 'stored'"),
    (dict(agent="mtsac"), r"agent: saved 'cmta' != now 'mtsac'"),
  ],
)
def test_fields_that_say_what_the_run_is_can_never_change(
  half_run, tmp_path, compilation_cache_dir, overrides, field
):
  run_dir = copy_run(half_run, tmp_path)
  before = run_dir_contents(run_dir)
  result = _finish(
    run_dir, _launch(run_dir, compilation_cache_dir, "--allow_config_change", **overrides)
  )
  line = assert_one_line_error(
    result,
    r"holds a run of another agent, task set, carry mode, seed or evaluation protocol .*"
    + field
    + r".*: these fields can never change on resume, even with --allow_config_change; use "
    r"another --run_dir",
  )
  assert "or pass --allow_config_change" not in line
  assert run_dir_contents(run_dir) == before


# ------------------------------------------------------------------ stops during start-up


def _wait_for_lock(run_dir: str, process: subprocess.Popen) -> None:
  path = os.path.join(run_dir, run_dir_lib.LOCK_FILE)
  deadline = time.monotonic() + CLI_TIMEOUT
  while time.monotonic() < deadline:
    assert process.poll() is None, process.communicate()
    if os.path.exists(path):
      with open(path) as f:
        if f"process {process.pid} " in f.read():
          return
    time.sleep(0.01)
  raise AssertionError("the run never took its lock")


@pytest.mark.slow
def test_sigterm_during_start_up_exits_for_requeue_in_one_line(
  half_run, tmp_path, compilation_cache_dir
):
  fresh = str(tmp_path / "fresh")
  resumed = copy_run(half_run, tmp_path / "resumed")
  processes = {
    fresh: _launch(fresh, compilation_cache_dir, total_steps=40),
    resumed: _launch(resumed, compilation_cache_dir),
  }
  for run_dir, process in processes.items():
    _wait_for_lock(run_dir, process)
    process.send_signal(signal.SIGTERM)
  results = {d: _finish(d, p) for d, p in processes.items()}
  for result in results.values():
    assert result[1] == cli.EXIT_PREEMPTED, result[3]
  assert_one_line_error(
    results[fresh],
    r"stopped by SIGTERM before training began: there is no checkpoint to resume from yet; "
    r"the same command starts the run again",
    before_config=False,
  )
  assert_one_line_error(
    results[resumed],
    rf"stopped by SIGTERM before training resumed; its checkpoint at step {HALF} in "
    rf"{re.escape(resumed)}/checkpoints is unchanged; run the same command to resume",
    before_config=False,
  )
  assert checkpoint_steps(fresh) == [] and checkpoint_steps(resumed) == [40, HALF]
  # The same command then starts cleanly.
  again = _finish(fresh, _launch(fresh, compilation_cache_dir, total_steps=40))
  assert again[1] == 0, again[3]
  assert checkpoint_steps(fresh) == [40]


# ------------------------------------------------------------------ memory


@pytest.mark.slow
def test_the_capacity_a_memory_refusal_names_starts_and_resumes(tmp_path, monkeypatch):
  envs = testing.point_tasks(goal_in_obs=False)
  run_config = testing.tiny_point_cmta(total_steps=30, eval_every=30)
  networks = steps.build_networks(run_config, envs)
  num_tasks = len(testing.GOALS)
  shape = (num_tasks, networks.obs_dim, networks.action_dim, steps.replay_carry_dim(networks))

  def replay_bytes(capacity):
    return ReplayBuffer.bytes_needed(shape[0], capacity, *shape[1:])

  # Memory for two replays of 10,000 transitions, not three: two seeds could start but could
  # not restore (a restore holds one seed's replay on the host besides the batch's).
  available = int(2.2 * replay_bytes(10_000) / 0.8)
  monkeypatch.setattr(memory, "_available_memory_bytes", lambda: available)
  run_dir = str(tmp_path / "batch")

  def launch_batch(capacity, total_steps=30):
    config = testing.tiny_point_cmta(replay_capacity=capacity, total_steps=total_steps)
    return launch.train_seeds(config, run_dir, (0, 1), envs=envs, log=LogCapture())

  with pytest.raises(MemoryError, match="and 1 more while a checkpoint is saved or restored") as no:
    launch_batch(10_000)
  named = int(re.search(r"largest capacity that fits: (\d+)", str(no.value)).group(1))
  assert not os.path.exists(run_dir)  # refused before anything was written
  assert 3 * replay_bytes(named) <= 0.8 * available and named % num_tasks == 0
  launch_batch(named)
  summaries = launch_batch(named, total_steps=60)  # the resume is checked the same way
  assert {s["steps"] for s in summaries.values()} == {60}


# ------------------------------------------------------------------ the progress line's ETA


def test_the_eta_comes_from_steps_with_updates_not_from_warm_up():
  # Warm-up ran 1,000 steps in 10 s; the first update returned at step 1,001 (t = 12 s);
  # 1,000 steps with updates then took 40 s.
  clock = (1_001, 12.0)
  assert records.eta_seconds(10_000, 2_001, clock, 52.0) == pytest.approx(7_999 * 0.04)
  assert math.isnan(records.eta_seconds(10_000, 500, None, 5.0))  # warm-up: no rate yet
  assert math.isnan(records.eta_seconds(10_000, 1_001, clock, 12.0))
  assert records.eta_seconds(10_000, 10_000, clock, 99.0) == 0.0


@pytest.mark.slow
def test_progress_lines_give_no_eta_before_updates_are_timed(tmp_path):
  log = LogCapture()
  launch.train(
    testing.tiny_point_cmta(log_every=15, total_steps=60),
    str(tmp_path),
    envs=testing.point_tasks(goal_in_obs=False),
    log=log,
  )
  lines = [line for line in log.lines if line.startswith("step ")]
  warm_up = [line for line in lines if "warm-up (no updates yet)" in line]
  assert warm_up and all("ETA ? (timed once updates run)" in line for line in warm_up)
  assert re.search(r"ETA 0:00:\d\d \|", lines[-2]), lines
