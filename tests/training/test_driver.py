"""End-to-end tests of the training driver (launch.train and experiments/train.py) on tiny MT10 runs.

The uninterrupted baseline run (fixture `baseline_run`) is shared: resumed, corrupted and
reconfigured runs are compared against it or start from a copy of it. Everything fits in a
few minutes on 2 CPU cores.
"""

import dataclasses
import errno
import glob
import json
import os
import re
import resource
import shutil
import signal
import struct
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from driver_support import (
  CLI_TIMEOUT,
  EPISODE_LENGTH,
  MT10,
  REPO,
  SMALL,
  TOTAL_STEPS,
  TRAIN_SCRIPT,
  LogCapture,
  assert_one_line_error,
  assert_trees_equal,
  checkpoint_steps,
  cli_args,
  copy_run,
  make_config,
  read_records,
  restore_checkpoint,
  run_dir_contents,
  start_cli,
  subprocess_env,
  train,
  wait_for_train_record,
  without_time,
)
from tensorboardX.proto import event_pb2

from cmta_jax import cli, testing
from cmta_jax import config as config_lib
from cmta_jax.agents import registry
from cmta_jax.reporting import figures
from cmta_jax.training import launch, metrics_log, run_state
from cmta_jax.training import run_dir as run_dir_lib
from cmta_jax.training.checkpointing import Checkpointer, CheckpointWriteFailed

# Every run shares the persistent compilation cache (compiling is most of a short run).
pytestmark = pytest.mark.usefixtures("compilation_cache_dir")


@pytest.fixture(scope="module")
def baseline_run(tmp_path_factory, compilation_cache_dir):
  """An uninterrupted TOTAL_STEPS run: (run_dir, config, log, summary). Do not modify it."""
  run_dir = str(tmp_path_factory.mktemp("baseline") / "run")
  run_config = make_config()
  log = LogCapture()
  summary = train(run_config, run_dir, log=log, draw_curves=figures.run_curves)
  return run_dir, run_config, log, summary


def _garble(checkpoint_dir: str) -> None:
  """Overwrites every file of the checkpoint's `state` item with junk of half its size."""
  files = [
    p
    for p in glob.glob(os.path.join(checkpoint_dir, "state", "**"), recursive=True)
    if os.path.isfile(p)
  ]
  assert files
  for path in files:
    size = os.path.getsize(path)
    with open(path, "wb") as f:
      f.write(b"\x5a" * max(size // 2, 1))


def _tensorboard_values(run_dir: str) -> list[tuple[int, object]]:
  """(step, Summary.Value) of every summary in the run's event files (TFRecord framing, no
  TensorBoard)."""
  values = []
  paths = glob.glob(os.path.join(run_dir, "tensorboard", "events.out.tfevents.*"))
  assert paths
  for path in paths:
    with open(path, "rb") as f:
      data = f.read()
    offset = 0
    while offset < len(data):
      (length,) = struct.unpack("<Q", data[offset : offset + 8])
      event = event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])
      offset += 12 + length + 4  # length, its CRC, the record, its CRC
      values.extend((event.step, value) for value in event.summary.value)
  return values


def _tensorboard_scalars(run_dir: str) -> dict[str, list[int]]:
  """{tag: [steps]} of every summary in the run's event files."""
  scalars = {}
  for step, value in _tensorboard_values(run_dir):
    scalars.setdefault(value.tag, []).append(step)
  return scalars


def _assert_unique_records(records: list[dict], expected: set) -> None:
  keys = [(r["step"], r["kind"]) for r in records]
  assert len(keys) == len(set(keys)), f"duplicate records: {keys}"
  assert set(keys) == expected


def _expected_keys(total_steps: int, log_every: int, eval_every: int) -> set:
  train = {(s, "train") for s in range(log_every, total_steps + 1, log_every)} | {
    (total_steps, "train")
  }
  evals = {(s, "eval") for s in range(0, total_steps + 1, eval_every)} | {(total_steps, "eval")}
  return train | evals


# ---------------------------------------------------------------- end to end


@pytest.mark.slow
def test_end_to_end_run_writes_metrics_tensorboard_summary_and_checkpoints(baseline_run):
  run_dir, run_config, log, summary = baseline_run
  records = read_records(run_dir)
  _assert_unique_records(
    records, _expected_keys(TOTAL_STEPS, SMALL["log_every"], SMALL["eval_every"])
  )

  evals = [r for r in records if r["kind"] == "eval"]
  assert [r["step"] for r in evals] == [0, 80, 160]
  for record in evals:
    assert list(record["success"]) == list(MT10)
    assert all(v in (0.0, 1.0) for v in record["success"].values())  # 1 episode per task
    assert record["mean_success"] == pytest.approx(np.mean(list(record["success"].values())))
    assert list(record["return"]) == list(MT10)

  trains = [r for r in records if r["kind"] == "train"]
  assert trains[0]["updates"] == 0  # step 40 = end of the warm-up: no update yet
  for record in trains[1:]:
    assert record["updates"] == SMALL["log_every"]
    for key in (
      "critic_loss",
      "actor_loss",
      "alpha_loss",
      "contrastive_loss",
      "attention_entropy",
      "td_target_mean",
      "q_mean",
      "entropy",
    ):
      assert np.isfinite(record[key]), key
    assert list(record["alpha"]) == list(MT10)
    assert all(v > 0 for v in record["alpha"].values())
    assert "time/steps_per_sec" in record
  # The carry diagnostics at every log step, warm-up included (burn_in with a window of
  # the whole 20-step episode: exact carries).
  for record in trains:
    assert 0.0 <= record["attention_staleness"] < 1e-4, record["step"]
    assert 0.0 < record["attention_entropy_fresh"] <= np.log(6) + 1e-6
  # Two 20-step episodes finish in every 40-step log window.
  assert all(list(r["train_success_per_task"]) == list(MT10) for r in trains)

  scalars = _tensorboard_scalars(run_dir)
  assert sorted(scalars["eval/mean_success"]) == [0, 80, 160]
  assert sorted(scalars["train/critic_loss"]) == [80, 120, 160]
  assert sorted(scalars["train/alpha/reach-v3"]) == [80, 120, 160]
  assert sorted(scalars["train/attention_staleness"]) == [40, 80, 120, 160]

  assert os.path.exists(os.path.join(run_dir, "summary.json"))
  assert summary["steps"] == TOTAL_STEPS
  assert summary["eval_steps"] == [0, 80, 160]
  assert list(summary["final_success_per_task"]) == list(MT10)
  assert "mean success: final" in log.text

  # Its own success curves, redrawn at each evaluation and named in the console summary.
  curves = os.path.join(run_dir, "curves.png")
  assert f"success curves: {curves}" in log.text
  assert testing.png_size(curves) == (480, 360)  # one panel of figures.PANEL_INCHES at figures.DPI
  assert not glob.glob(os.path.join(run_dir, "*.partial"))

  assert checkpoint_steps(run_dir) == [40, 80, 120, 160]
  last = restore_checkpoint(run_dir, 160)
  assert last["meta"]["step"] == 160
  assert int(last["replay"]["size"]) == TOTAL_STEPS


# ---------------------------------------------------------------- exact resume


@pytest.mark.slow
def test_resumed_run_is_bit_identical_to_uninterrupted(baseline_run, tmp_path):
  baseline_dir, _, _, baseline_summary = baseline_run
  run_dir = str(tmp_path / "run")
  half = train(make_config(total_steps=TOTAL_STEPS // 2), run_dir, log=LogCapture())
  assert half["steps"] == TOTAL_STEPS // 2
  _assert_refusals_change_nothing(run_dir)
  log = LogCapture()
  # Raising total_steps is the one config change a resume accepts without a flag.
  summary = train(make_config(), run_dir, log=log)
  assert f"from the checkpoint at step {TOTAL_STEPS // 2}" in log.text

  for step in (120, 160):
    resumed, uninterrupted = (
      restore_checkpoint(run_dir, step),
      restore_checkpoint(baseline_dir, step),
    )
    assert_trees_equal(resumed["state"], uninterrupted["state"])
    assert_trees_equal(resumed["replay"], uninterrupted["replay"])
    assert resumed["meta"] == uninterrupted["meta"]
  assert without_time(read_records(run_dir)) == without_time(read_records(baseline_dir))
  assert summary == baseline_summary


def _assert_refusals_change_nothing(run_dir: str) -> None:
  """Launches that must be refused on a run at step TOTAL_STEPS // 2, before touching it."""
  before = run_dir_contents(run_dir)
  refusals = [
    # Array shapes differ: never, even with --allow_config_change.
    (dict(hidden_width=64), True, r"other array shapes \(head.hidden_width: saved 32 != now 64"),
    (dict(replay_capacity=20_000), True, r"other array shapes \(train.replay_capacity"),
    # What the run is: never either.
    (
      dict(carry_mode="frozen_memory"),
      True,
      r"another agent, task set, carry mode, seed or evaluation protocol \(recurrence.carry_mode: saved 'burn_in'",
    ),
    (dict(hidden_width=64), False, r"other array shapes .* can never change on resume"),
    (dict(log_every=80), False, r"different config .*--allow_config_change"),
    # Below the step already reached.
    (
      dict(total_steps=TOTAL_STEPS // 4),
      False,
      rf"already at step {TOTAL_STEPS // 2}, past --total_steps={TOTAL_STEPS // 4}; nothing changed",
    ),
  ]
  for overrides, allow, pattern in refusals:
    log = LogCapture()
    with pytest.raises(ValueError, match=pattern):
      train(
        make_config(**{"total_steps": TOTAL_STEPS, **overrides}),
        run_dir,
        allow_config_change=allow,
        log=log,
      )
    assert "config:" not in log.text
  assert run_dir_contents(run_dir) == before  # checkpoints, config.json, metrics: untouched
  assert not os.path.exists(os.path.join(run_dir, "checkpoints_unreadable"))


@pytest.mark.slow
@pytest.mark.parametrize(
  "carry_mode,burn_in_steps,goes_stale",
  [
    ("stored", 20, True),
    ("burn_in", 8, True),  # a window shorter than the episode (the baseline run has L = 20)
    ("frozen_memory", 20, False),  # frozen_lstm: the arrays of stored, the carries of this
  ],
)
def test_every_carry_mode_resumes_exactly(tmp_path, carry_mode, burn_in_steps, goes_stale):
  config = make_config(
    total_steps=80, eval_every=40, carry_mode=carry_mode, burn_in_steps=burn_in_steps
  )
  resumed_dir = _assert_half_run_resumes_exactly(config, tmp_path)
  staleness = [r["attention_staleness"] for r in read_records(resumed_dir) if r["kind"] == "train"]
  assert staleness[0] < 1e-4
  if goes_stale:  # the LSTM has moved since acting
    assert staleness[-1] > staleness[0]
  else:
    assert max(staleness) < 1e-4


@pytest.mark.slow
def test_agent_without_lstm_checkpoints_and_resumes_exactly(tmp_path):
  # Its replay carries are [T, N, 0] arrays, which orbax refuses to save.
  run_config = registry.agent_defaults(
    dataclasses.replace(make_config(total_steps=80, eval_every=40), agent="mtsac"), explicit=set()
  )
  assert run_config.sac.auxiliary_weight == 0.0
  resumed_dir = _assert_half_run_resumes_exactly(run_config, tmp_path)
  assert "h_in" not in restore_checkpoint(resumed_dir, 80)["replay"]


def _assert_half_run_resumes_exactly(run_config, tmp_path) -> str:
  """Runs `run_config` (80 steps) straight, and as 40 steps then a resume: same checkpoint,
  same records, same summary. Returns the resumed run's directory."""
  uninterrupted_dir, resumed_dir = str(tmp_path / "uninterrupted"), str(tmp_path / "resumed")
  summary = train(run_config, uninterrupted_dir, log=LogCapture())
  half_config = dataclasses.replace(
    run_config, train=dataclasses.replace(run_config.train, total_steps=40)
  )
  train(half_config, resumed_dir, log=LogCapture())
  log = LogCapture()
  assert train(run_config, resumed_dir, log=log) == summary
  assert "from the checkpoint at step 40" in log.text
  resumed, uninterrupted = (
    restore_checkpoint(resumed_dir, 80),
    restore_checkpoint(uninterrupted_dir, 80),
  )
  assert_trees_equal(resumed["state"], uninterrupted["state"])
  assert_trees_equal(resumed["replay"], uninterrupted["replay"])
  assert without_time(read_records(resumed_dir)) == without_time(read_records(uninterrupted_dir))
  return resumed_dir


# ---------------------------------------------------------------- SIGKILL


@pytest.mark.slow
def test_sigkill_mid_run_then_restart_completes(tmp_path, compilation_cache_dir):
  run_dir = str(tmp_path / "run")
  # A checkpoint every episode; eval_every > total_steps: evaluation only at the start and end.
  total_steps = 100
  args = cli_args(
    run_dir, checkpoint_every=EPISODE_LENGTH, eval_every=10_000, total_steps=total_steps
  )
  env = subprocess_env(compilation_cache_dir)
  output_path = tmp_path / "first_output.txt"
  with open(output_path, "w") as output:  # a file, not a pipe nobody drains while polling
    first = subprocess.Popen(args, env=env, stdout=output, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + CLI_TIMEOUT
    while len(checkpoint_steps(run_dir)) < 2:
      assert first.poll() is None, "the run ended before it was killed:\n" + output_path.read_text()
      assert time.monotonic() < deadline, "no second checkpoint in time"
      time.sleep(0.05)
    first.kill()  # SIGKILL
    first.wait()
  first_output = output_path.read_text()
  assert first.returncode == -9
  assert "note: eval_every (10000) > total_steps (100)" in first_output
  killed_at = checkpoint_steps(run_dir)[-1]
  assert killed_at < total_steps

  second = subprocess.run(args, env=env, capture_output=True, text=True, timeout=CLI_TIMEOUT)
  assert second.returncode == 0, second.stderr[-3000:]
  resumed_from = int(re.search(r"from the checkpoint at step (\d+)", second.stdout).group(1))
  assert killed_at <= resumed_from < total_steps  # a save cut short may only lose the newest
  assert checkpoint_steps(run_dir)[-1] == total_steps
  _assert_unique_records(
    read_records(run_dir), _expected_keys(total_steps, SMALL["log_every"], eval_every=total_steps)
  )


# ---------------------------------------------------------------- corrupt checkpoints


@pytest.mark.slow
def test_corrupt_newest_checkpoint_falls_back_to_previous(baseline_run, tmp_path):
  baseline_dir = baseline_run[0]
  run_dir = copy_run(baseline_dir, tmp_path)
  newest = os.path.join(run_dir, "checkpoints", str(TOTAL_STEPS))
  _garble(newest)
  log = LogCapture()
  summary = train(make_config(), run_dir, log=log)
  warning = next(line for line in log.lines if line.startswith("WARNING"))
  assert newest in warning and "unreadable" in warning and "falling back to step 120" in warning
  assert "from the checkpoint at step 120" in log.text
  assert summary["steps"] == TOTAL_STEPS
  # Resumed exactly from step 120, the run ends where the baseline did.
  assert_trees_equal(
    restore_checkpoint(run_dir, TOTAL_STEPS)["state"],
    restore_checkpoint(baseline_dir, TOTAL_STEPS)["state"],
  )
  assert without_time(read_records(run_dir)) == without_time(read_records(baseline_dir))


@pytest.fixture(scope="module")
def cli_failures(baseline_run, tmp_path_factory, compilation_cache_dir):
  """Launches every command that must fail fast at once (2 cores); {name: (run_dir, result)}."""
  root = tmp_path_factory.mktemp("cli_failures")
  cases = {
    "unknown_benchmark": {"benchmark": "MT20"},
    "unknown_mode": {"mode": "hybrid"},
    "zero_total_steps": {"total_steps": 0},
    "negative_total_steps": {"total_steps": -20},
    "zero_batch": {"batch_per_task": 0},
    "zero_experts": {"num_experts": 0},
    "zero_episode_length": {"episode_length": 0},
    "long_episode": {"episode_length": 501},
    "negative_seed": {"seed": -1},
    "misaligned_checkpoints": {"checkpoint_every": EPISODE_LENGTH + 5},
    "mistyped_steps": {"total_steps": "abc"},
    "unknown_flag": {"totl_steps": 5},
    "unknown_carry_mode": {"carry_mode": "fresh"},
    "burn_in_steps_without_burn_in": {"carry_mode": "stored", "burn_in_steps": 10},
    "carry_mode_without_lstm": {"agent": "mtsac", "carry_mode": "burn_in"},
    "zero_burn_in_steps": {"carry_mode": "burn_in", "burn_in_steps": 0},
    "contrastive_without_auxiliary_loss": {"agent": "mtsac", "contrastive_weight": 1.0},
    "absurd_replay": {"replay_capacity": 10**12},
    "config_mismatch": {"seed": 1, "log_every": 80},
    "only_checkpoint_corrupt": {},
    "reshaping_change": {"hidden_width": 64, "allow_config_change": True},
    "past_total_steps": {"total_steps": TOTAL_STEPS // 2},
    "run_dir_is_a_file": {},
    "run_dir_under_a_file": {},
    "empty_config": {},
    "locked": {},
    "seeds_range_backwards": {"seeds": "3-1", "seed": None},
    "seeds_not_numbers": {"seeds": "a-b", "seed": None},
    "seeds_and_seed": {"seeds": "0-1"},
    "env_workers_without_seeds": {"env_workers": 2},
    "data_parallel_with_seeds": {"seeds": "0", "seed": None, "data_parallel": True},
    "seeds_into_a_single_run": {"seeds": "0-1", "seed": None},
  }
  run_dirs = {name: str(root / name) for name in cases}
  run_dirs["run_dir_under_a_file"] = str(root / "run_dir_is_a_file" / "run")
  with open(run_dirs["run_dir_is_a_file"], "w") as f:
    f.write("a file, not a run directory\n")
  for name in ("reshaping_change", "past_total_steps", "seeds_into_a_single_run"):
    shutil.copytree(baseline_run[0], run_dirs[name])
  os.makedirs(run_dirs["empty_config"])
  open(os.path.join(run_dirs["empty_config"], "config.json"), "w").close()
  # A run dir holding another run's config; and one whose only checkpoint is garbled.
  os.makedirs(run_dirs["config_mismatch"])
  shutil.copy(os.path.join(baseline_run[0], "config.json"), run_dirs["config_mismatch"])
  shutil.copytree(baseline_run[0], run_dirs["only_checkpoint_corrupt"])
  for step in checkpoint_steps(run_dirs["only_checkpoint_corrupt"])[:-1]:
    shutil.rmtree(os.path.join(run_dirs["only_checkpoint_corrupt"], "checkpoints", str(step)))
  _garble(os.path.join(run_dirs["only_checkpoint_corrupt"], "checkpoints", str(TOTAL_STEPS)))

  before = {
    name: run_dir_contents(run_dirs[name])
    for name in ("reshaping_change", "past_total_steps", "seeds_into_a_single_run")
  }

  env = subprocess_env(compilation_cache_dir)
  with run_dir_lib.RunDirLock(run_dirs["locked"]):  # as a first launch would hold it
    started = {
      name: (
        time.monotonic(),
        subprocess.Popen(
          cli_args(run_dirs[name], **overrides),
          env=env,
          stdout=subprocess.PIPE,
          stderr=subprocess.PIPE,
          text=True,
        ),
      )
      for name, overrides in cases.items()
    }
    results = {}
    for name, (_, process) in started.items():
      stdout, stderr = process.communicate(timeout=CLI_TIMEOUT)
      results[name] = (run_dirs[name], process.returncode, stdout, stderr)
  for name, contents in before.items():
    assert run_dir_contents(run_dirs[name]) == contents, f"{name}: the run directory changed"
  return results


@pytest.mark.slow
@pytest.mark.parametrize(
  "name,pattern",
  [
    ("unknown_benchmark", r"unknown benchmark 'MT20'"),
    ("unknown_mode", r"unknown mode 'hybrid'"),
    ("zero_total_steps", r"total_steps must be a positive integer, got 0"),
    ("negative_total_steps", r"total_steps must be a positive integer, got -20"),
    ("zero_batch", r"batch_per_task must be a positive integer, got 0"),
    ("zero_experts", r"num_experts must be a positive integer, got 0"),
    ("zero_episode_length", r"episode_length must be an int in 1\.\.500, got 0"),
    ("long_episode", r"episode_length must be an int in 1\.\.500, got 501"),
    ("negative_seed", r"seed must be in 0\.\.\d+, got -1"),
    ("misaligned_checkpoints", r"checkpoint_every \(25\) must be a multiple of the episode length"),
    ("mistyped_steps", r"flag --total_steps=abc: invalid literal for int\(\)"),
    ("unknown_flag", r"Unknown command line flag 'totl_steps'"),
    (
      "unknown_carry_mode",
      r"unknown carry_mode 'fresh'; choose one of stored, frozen_memory, frozen_lstm, burn_in",
    ),
    ("burn_in_steps_without_burn_in", r"--burn_in_steps only applies to --carry_mode=burn_in"),
    (
      "carry_mode_without_lstm",
      r"--carry_mode only applies to an encoder with a recurrence, and agent 'mtsac' has none",
    ),
    ("zero_burn_in_steps", r"burn_in_steps must be a positive integer, got 0"),
    (
      "contrastive_without_auxiliary_loss",
      r"agent 'mtsac' has no auxiliary \(contrastive\) loss, so --contrastive_weight must be 0",
    ),
    ("seeds_range_backwards", r"--seeds: the range 3-1 is empty \(write first-last\)"),
    ("seeds_not_numbers", r"--seeds must be ranges and integers like 0-7 or 0,3,5, got 'a-b'"),
    ("seeds_and_seed", r"give either --seed \(one run\) or --seeds \(a batch\), not both"),
    ("env_workers_without_seeds", r"--env_workers needs --seeds"),
    (
      "data_parallel_with_seeds",
      r"--data_parallel trains one run; drop --seeds or --data_parallel",
    ),
  ],
)
def test_bad_flags_fail_with_one_line_before_building_anything(cli_failures, name, pattern):
  assert_one_line_error(cli_failures[name], pattern)
  assert not os.path.exists(cli_failures[name][0])  # not even the run dir


@pytest.mark.slow
def test_absurd_replay_capacity_names_one_that_fits(cli_failures):
  line = assert_one_line_error(
    cli_failures["absurd_replay"],
    r"replay buffer and 1 more while a checkpoint is saved or restored need .* in host memory",
  )
  fits = int(re.search(r"largest capacity that fits: (\d+)", line).group(1))
  assert 0 < fits < 10**12 and fits % len(MT10) == 0
  assert not os.path.exists(cli_failures["absurd_replay"][0])


@pytest.mark.slow
def test_config_mismatch_is_refused_listing_fields(cli_failures):
  # Another run's config (another seed): the seed says which run it is and can never change.
  line = assert_one_line_error(cli_failures["config_mismatch"], r"can never change on resume")
  assert "train.seed: saved 0 != now 1" in line


@pytest.mark.slow
@pytest.mark.parametrize(
  "name,pattern",
  [
    (
      "reshaping_change",
      r"other array shapes \(head.hidden_width: saved 32 != now 64\): these "
      r"fields can never change on resume, even with --allow_config_change",
    ),
    (
      "past_total_steps",
      rf"is already at step {TOTAL_STEPS}, past --total_steps={TOTAL_STEPS // 2}; "
      r"nothing changed",
    ),
    ("run_dir_is_a_file", r"File exists: .*run_dir_is_a_file \(it exists and is not a directory"),
    (
      "run_dir_under_a_file",
      r"Not a directory: .*run_dir_is_a_file/run \(a part of the path is a "
      r"file",
    ),
    (
      "empty_config",
      r"empty_config/config.json is not valid JSON \(Expecting value: line 1 "
      r"column 1 \(char 0\)\); restore it, or delete it",
    ),
    ("locked", r"locked is in use by process PID on "),  # (PID: pytest-xdist needs stable ids)
    (
      "seeds_into_a_single_run",
      r"seeds_into_a_single_run holds a single-seed run; give the batch another --run_dir",
    ),
  ],
)
def test_run_directory_problems_are_one_line_and_change_nothing(cli_failures, name, pattern):
  assert_one_line_error(
    cli_failures[name], pattern.replace("PID", str(os.getpid()))
  )  # (the fixture checks "nothing changed")
  assert "Traceback" not in cli_failures[name][3]
  if name in ("empty_config", "locked"):
    contents = sorted(os.listdir(cli_failures[name][0]))
    assert contents in ([".lock"], [".lock", "config.json"], ["config.json"])


@pytest.mark.slow
def test_only_checkpoint_corrupt_is_a_one_line_error(cli_failures):
  run_dir = cli_failures["only_checkpoint_corrupt"][0]
  newest = os.path.join(run_dir, "checkpoints", str(TOTAL_STEPS))
  assert_one_line_error(
    cli_failures["only_checkpoint_corrupt"],
    re.escape(newest) + r" is unreadable .*no older checkpoint",
    before_config=False,
  )


@pytest.mark.slow
def test_allow_config_change_forces_resume(baseline_run, tmp_path):
  run_dir = copy_run(baseline_run[0], tmp_path)
  changed = make_config(log_every=80)
  with pytest.raises(run_dir_lib.ConfigMismatch, match=r"train.log_every: saved 40 != now 80"):
    train(changed, run_dir, log=LogCapture())
  log = LogCapture()
  summary = train(changed, run_dir, allow_config_change=True, log=log)
  assert f"from the checkpoint at step {TOTAL_STEPS}" in log.text
  assert summary["steps"] == TOTAL_STEPS
  with open(os.path.join(run_dir, "config.json")) as f:
    assert '"train.log_every": 80' in f.read()


@pytest.mark.slow
def test_a_resume_reads_its_own_config_not_todays_defaults(
  baseline_run, tmp_path, compilation_cache_dir
):
  # As if the run had been started when the carry mode and critic_tau defaulted otherwise:
  # the same command, extended, resumes on the run's own values without a config change.
  run_dir = copy_run(baseline_run[0], tmp_path)
  path = os.path.join(run_dir, "config.json")
  with open(path) as f:
    saved = json.load(f)
  saved.update({"recurrence.carry_mode": "stored", "sac.critic_tau": 0.01})
  with open(path, "w") as f:
    json.dump(saved, f)
  env = subprocess_env(compilation_cache_dir)
  base = [sys.executable, TRAIN_SCRIPT, f"--run_dir={run_dir}"]
  refused = subprocess.run(
    [*base, "--critic_tau=0.02"], env=env, capture_output=True, text=True, timeout=CLI_TIMEOUT
  )
  assert refused.returncode == 1
  assert refused.stderr.strip().splitlines() == [
    f"error: {run_dir} holds a run with a different config (sac.critic_tau: saved 0.01 != now "
    "0.02); use another --run_dir or pass --allow_config_change"
  ]
  extended = subprocess.run(
    [*base, f"--total_steps={TOTAL_STEPS + 2 * EPISODE_LENGTH}"],
    env=env,
    capture_output=True,
    text=True,
    timeout=CLI_TIMEOUT,
  )
  assert extended.returncode == 0, extended.stderr[-2000:]
  assert f"resuming {run_dir}: its config.json is the base; flags given now: --total_steps" in (
    extended.stdout
  )
  with open(path) as f:
    now = json.load(f)
  assert now["recurrence.carry_mode"] == "stored" and now["sac.critic_tau"] == 0.01
  assert now["train.total_steps"] == TOTAL_STEPS + 2 * EPISODE_LENGTH
  assert checkpoint_steps(run_dir)[-1] == TOTAL_STEPS + 2 * EPISODE_LENGTH


# ---------------------------------------------------------------- divergence


class _HugeRewardEnv:
  """Rewards of 1e30: the first update's critic loss overflows to inf."""

  def __init__(self, env):
    self._env = env

  def __getattr__(self, name):
    return getattr(self._env, name)

  def step(self, actions):
    result = self._env.step(actions)
    return result._replace(reward=result.reward * np.float32(1e30))


def _huge_reward_envs(config, seed):
  train_env, eval_env = testing.CACHED_METAWORLD.make_envs(config, seed)
  return _HugeRewardEnv(train_env), eval_env


@pytest.mark.slow
def test_divergence_stops_and_keeps_last_good_checkpoint(tmp_path):
  # Data, not a config number, makes it diverge: the compiled update is the baseline's.
  envs = testing.CACHED_METAWORLD._replace(make_envs=_huge_reward_envs)
  run_dir = str(tmp_path / "run")
  run_config = make_config(
    reward_normalization=False, checkpoint_every=EPISODE_LENGTH, total_steps=100
  )
  with pytest.raises(
    run_state.TrainingDiverged, match=r"training diverged before step (\d+)"
  ) as error:
    launch.train(run_config, run_dir, log=LogCapture(), envs=envs)
  message = str(error.value)
  assert "a loss non-finite" in message and "last good checkpoint kept" in message
  diverged_by = int(re.search(r"before step (\d+)", message).group(1))
  assert SMALL["warmup_steps"] < diverged_by < 100
  # The warm-up's checkpoints are kept; none is written after the first (diverging) update.
  steps = checkpoint_steps(run_dir)
  assert steps == list(range(EPISODE_LENGTH, SMALL["warmup_steps"] + 1, EPISODE_LENGTH))
  for leaf in jax.tree.leaves(restore_checkpoint(run_dir, steps[-1])["state"]):
    leaf = np.asarray(leaf)
    if np.issubdtype(leaf.dtype, np.floating):
      assert np.all(np.isfinite(leaf))


# ---------------------------------------------------------------- metrics file


def test_metrics_log_drops_a_torn_last_line_and_records_after_the_resume_step(tmp_path):
  run_dir = str(tmp_path)
  with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
    for step in (0, 20, 40):
      f.write(json.dumps({"step": step, "kind": "train"}) + "\n")
    f.write('{"step": 60, "kind": "tr')  # a crash mid-write
  assert [r["step"] for r in metrics_log.read_records(run_dir)] == [0, 20, 40]
  log = metrics_log.MetricsLog(run_dir, resume_step=20)
  log.write({"step": 40, "kind": "train", "critic_loss": 1.0})
  log.close()
  assert [(r["step"], r.get("critic_loss")) for r in read_records(run_dir)] == [
    (0, None),
    (20, None),
    (40, 1.0),
  ]


# ---------------------------------------------------------------- runs that must not be lost


@pytest.mark.slow
def test_second_launch_on_a_running_run_is_refused_and_the_first_completes(
  baseline_run, tmp_path, compilation_cache_dir
):
  run_dir = str(tmp_path / "run")
  first = start_cli(run_dir, compilation_cache_dir)
  wait_for_train_record(run_dir, first, SMALL["log_every"])
  second = start_cli(run_dir, compilation_cache_dir)
  stdout, stderr = second.communicate(timeout=CLI_TIMEOUT)
  assert_one_line_error(
    (run_dir, second.returncode, stdout, stderr),
    rf"is in use by process {first.pid} on .* \(started ",
  )
  stdout, stderr = first.communicate(timeout=CLI_TIMEOUT)
  assert first.returncode == 0, stderr
  # The first run is unharmed: it ends exactly as the uninterrupted in-process run.
  assert_trees_equal(
    restore_checkpoint(run_dir, TOTAL_STEPS)["state"],
    restore_checkpoint(baseline_run[0], TOTAL_STEPS)["state"],
  )
  assert without_time(read_records(run_dir)) == without_time(read_records(baseline_run[0]))


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_or_first_ctrl_c_checkpoints_at_the_episode_end_and_resumes_exactly(
  baseline_run, tmp_path, compilation_cache_dir, signum
):
  run_dir = str(tmp_path / "run")
  process = start_cli(run_dir, compilation_cache_dir)
  wait_for_train_record(run_dir, process, SMALL["log_every"])
  process.send_signal(signum)
  stdout, stderr = process.communicate(timeout=CLI_TIMEOUT)
  assert process.returncode == cli.EXIT_PREEMPTED, stderr
  name = signal.Signals(signum).name
  line = assert_one_line_error(
    (run_dir, process.returncode, stdout, stderr),
    rf"stopped by {name} at step (\d+) of {TOTAL_STEPS} after writing "
    r"its checkpoint in .*; run the same command to resume",
    before_config=False,
  )
  stopped_at = int(re.search(r"at step (\d+)", line).group(1))
  assert stopped_at % EPISODE_LENGTH == 0 and stopped_at < TOTAL_STEPS
  assert checkpoint_steps(run_dir)[-1] == stopped_at
  assert f"{name}: stopping at the end of this episode" in stdout
  if signum == signal.SIGTERM:  # the resume equals the uninterrupted run
    summary = train(make_config(), run_dir, log=LogCapture())
    assert summary == baseline_run[3]
    assert_trees_equal(
      restore_checkpoint(run_dir, TOTAL_STEPS)["state"],
      restore_checkpoint(baseline_run[0], TOTAL_STEPS)["state"],
    )


@pytest.mark.slow
def test_second_ctrl_c_stops_at_once_in_one_line(tmp_path, compilation_cache_dir):
  run_dir = str(tmp_path / "run")
  # Long episodes, so that the second Ctrl-C surely comes before the first one's stop at the
  # episode end; its first signal only after the updates have compiled (two signals during one
  # long C call would reach Python as one).
  episode_length = 400
  process = start_cli(
    run_dir,
    compilation_cache_dir,
    total_steps=4 * episode_length,
    episode_length=episode_length,
    checkpoint_every=episode_length,
    eval_every=4 * episode_length,
  )
  wait_for_train_record(run_dir, process, 2 * SMALL["log_every"])
  process.send_signal(signal.SIGINT)
  time.sleep(0.5)
  process.send_signal(signal.SIGINT)
  stdout, stderr = process.communicate(timeout=CLI_TIMEOUT)
  assert process.returncode == cli.EXIT_INTERRUPTED, stderr
  assert_one_line_error(
    (run_dir, process.returncode, stdout, stderr),
    r"interrupted at step \d+ of 1600; last checkpoint: (step \d+|none yet) in .*; run "
    r"the same command to resume",
    before_config=False,
  )


def _limit_file_size(limit_bytes: int):
  def preexec():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

  return preexec


@pytest.mark.slow
def test_a_checkpoint_that_cannot_be_written_is_one_line_and_loses_nothing(
  baseline_run, tmp_path, compilation_cache_dir
):
  # A real OS write error inside orbax (EFBIG from a file-size limit stands in for a full
  # disk, which the free-space check before each save catches first).
  run_dir = str(tmp_path / "run")
  process = start_cli(run_dir, compilation_cache_dir, preexec_fn=_limit_file_size(200_000))
  stdout, stderr = process.communicate(timeout=CLI_TIMEOUT)
  assert process.returncode == cli.EXIT_ERROR
  assert_one_line_error(
    (run_dir, process.returncode, stdout, stderr),
    r"cannot write the checkpoint of step (\d+) in .*checkpoints \(File too "
    r"large\); earlier checkpoints kept \(steps \[.*\]\); fix the cause, then "
    r"run the same command to resume",
    before_config=False,
  )
  failed_at = int(re.search(r"checkpoint of step (\d+)", stderr).group(1))
  assert sorted(os.listdir(os.path.join(run_dir, "checkpoints"))) == [
    str(s) for s in range(SMALL["checkpoint_every"], failed_at, SMALL["checkpoint_every"])
  ]
  # Without the limit the same command completes, as the uninterrupted run.
  assert train(make_config(), run_dir, log=LogCapture()) == baseline_run[3]


@pytest.mark.slow
def test_no_warmup_updates_from_the_second_step_and_a_dead_lock_is_taken_over(tmp_path):
  run_dir = str(tmp_path / "run")
  os.makedirs(run_dir)
  with open(os.path.join(run_dir, run_dir_lib.LOCK_FILE), "w") as f:
    f.write("process 999999 on a-crashed-host (started 2026-01-01 00:00:00 UTC)")  # not locked
  train(make_config(warmup_steps=0, total_steps=40, eval_every=40), run_dir, log=LogCapture())
  first_log = [r for r in read_records(run_dir) if r["kind"] == "train"][0]
  assert first_log["step"] == 40 and first_log["updates"] == 39


def test_unreadable_metrics_line_names_the_file_and_line(tmp_path):
  run_dir = str(tmp_path)
  with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
    f.write(json.dumps({"step": 0, "kind": "eval", "mean_success": 0.0}) + "\n")
    f.write("{garbled\n")
    f.write(json.dumps({"step": 20, "kind": "train"}) + "\n")
  with pytest.raises(ValueError, match=r"metrics.jsonl, line 2: not a JSON record .*fix or delete"):
    metrics_log.read_records(run_dir)
  result = subprocess.run(
    [sys.executable, os.path.join(REPO, "experiments", "run_report.py"), run_dir],
    capture_output=True,
    text=True,
    timeout=CLI_TIMEOUT,
  )
  assert result.returncode == 1
  assert result.stderr.strip().splitlines() == [
    f"error: {os.path.join(run_dir, 'metrics.jsonl')}, line 2: not a JSON record (Expecting "
    "property name enclosed in double quotes); fix or delete that line"
  ]


def test_a_checkpoint_larger_than_the_free_space_is_refused_before_writing(tmp_path, monkeypatch):
  checkpointer = Checkpointer(str(tmp_path), keep=3)
  state, replay, meta = {"w": np.ones((64, 64), np.float32)}, {"obs": np.ones((8, 8))}, {"step": 1}
  checkpointer.save(20, state, replay, meta)
  real_usage = shutil.disk_usage
  monkeypatch.setattr(
    shutil, "disk_usage", lambda path: real_usage(path)._replace(free=1024 * 1024)
  )  # 1 MiB free
  with pytest.raises(
    CheckpointWriteFailed,
    match=r"not enough free disk space for the checkpoint "
    r"of step 40 .*\(needs ~16 MiB, 1 MiB free\); earlier checkpoints kept "
    r"\(steps \[20\]\); free some space",
  ) as error:
    checkpointer.save(40, state, replay, meta)
  assert error.value.errno == errno.ENOSPC
  assert sorted(os.listdir(checkpointer.directory)) == ["20"]  # nothing of step 40 written
  checkpointer.close()


def test_closed_event_loop_reports_from_orbax_threads_are_muted_others_kept(tmp_path):
  # After a failed save, tensorstore's threads report "Event loop is closed" as unraisable
  # exceptions (PyErr_WriteUnraisable) while the process shuts down: one per pending write.
  # A fresh interpreter, since pytest replaces sys.unraisablehook during tests.
  script = f"""
import sys
from cmta_jax.training.checkpointing import Checkpointer
Checkpointer({str(tmp_path)!r}, keep=1).close()  # installs the filters

class RaisesWhenCollected:
  def __init__(self, message):
    self.message = message
  def __del__(self):
    raise RuntimeError(self.message)  # reported through sys.unraisablehook

for message in ("Event loop is closed", "a real problem"):
  RaisesWhenCollected(message)
  try:
    raise RuntimeError(message)
  except RuntimeError as error:
    sys.excepthook(RuntimeError, error, error.__traceback__)
"""
  result = subprocess.run(
    [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=CLI_TIMEOUT
  )
  assert result.returncode == 0, result.stderr
  assert "Event loop is closed" not in result.stderr
  assert result.stderr.count("RuntimeError: a real problem") == 2, result.stderr


def test_a_run_saved_with_the_old_network_section_resumes_without_a_config_change(tmp_path):
  # config.json as written before the config was split per concern (and before the
  # auxiliary weight's rename): the same run must resume with the same flags.
  run_config = make_config()
  old_paths = {"head", "task_encoder", "mixture", "softmodu"}
  old = {}
  for path, value in config_lib.flatten(run_config).items():
    section, _, name = path.partition(".")
    path = f"network.{name}" if section in old_paths else path
    old["sac.contrastive_weight" if path == "sac.auxiliary_weight" else path] = value
  with open(os.path.join(tmp_path, run_dir_lib.CONFIG_FILE), "w") as f:
    json.dump(old, f)
  saved = run_dir_lib.read_saved_config(str(tmp_path))
  run_dir_lib.check_resume_config(str(tmp_path), saved, run_config, False, launch.checkpoint_shapes)
  changed = config_lib.replace_fields(run_config, hidden_width=64)
  with pytest.raises(run_dir_lib.ConfigMismatch, match=r"head.hidden_width: saved 32 != now 64"):
    run_dir_lib.check_resume_config(str(tmp_path), saved, changed, False, launch.checkpoint_shapes)


# ---------------------------------------------------------------- results commands


@pytest.mark.slow
def test_tables_and_curves_commands_read_a_real_run(baseline_run, tmp_path):
  run_dir = baseline_run[0]
  env = subprocess_env(str(tmp_path / "unused_cache"))
  tables = subprocess.run(
    [sys.executable, os.path.join(REPO, "experiments", "tables.py"), run_dir],
    capture_output=True,
    text=True,
    env=env,
    timeout=CLI_TIMEOUT,
  )
  assert tables.returncode == 0, tables.stderr
  header, _, row = tables.stdout.strip().splitlines()
  assert header.startswith("| agent | MT10-Fixed max smoothed |")
  assert row.startswith("| CMTA |") and row.endswith(f"| 1 @ {TOTAL_STEPS} |")
  out = str(tmp_path / "curves.png")
  plot = subprocess.run(
    [sys.executable, os.path.join(REPO, "experiments", "plot_curves.py"), run_dir, f"--out={out}"],
    capture_output=True,
    text=True,
    env=env,
    timeout=CLI_TIMEOUT,
  )
  assert plot.returncode == 0, plot.stderr
  assert testing.png_size(out) == (480, 360)


def _results_command(script: str, *args: str, cache_dir: str) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, os.path.join(REPO, "experiments", script), *args],
    capture_output=True,
    text=True,
    env=subprocess_env(cache_dir),
    timeout=CLI_TIMEOUT,
  )


@pytest.mark.slow
def test_attention_episode_and_tsne_commands_read_a_real_checkpoint(
  baseline_run, tmp_path, compilation_cache_dir
):
  run_dir = baseline_run[0]
  before = sorted(os.listdir(run_dir)), checkpoint_steps(run_dir)
  attention = str(tmp_path / "attention.png")
  result = _results_command(
    "attention_episode.py",
    f"--run_dir={run_dir}",
    "--step=80",
    "--tasks=reach-v3,push-v3",
    f"--out={attention}",
    cache_dir=compilation_cache_dir,
  )
  assert result.returncode == 0, result.stderr
  assert testing.png_size(attention) == (1344, 360)  # two tasks side by side
  tsne = str(tmp_path / "tsne.png")
  result = _results_command(
    "tsne.py",
    f"--run_dirs={run_dir}",
    "--episodes=2",
    "--max_points=300",
    f"--out={tsne}",
    cache_dir=compilation_cache_dir,
  )
  assert result.returncode == 0, result.stderr
  assert testing.png_size(tsne) == (960, 360)  # experts and attention of one run
  assert (sorted(os.listdir(run_dir)), checkpoint_steps(run_dir)) == before  # read-only


@pytest.mark.slow
@pytest.mark.parametrize(
  "script,args,message",
  [
    ("attention_episode.py", ["--step=7"], r"has no checkpoint of step 7 \(it has steps \[40, "),
    ("attention_episode.py", ["--tasks=reach-v3,fly-v3"], "--tasks: fly-v3 not in MT10"),
    ("tsne.py", ["--episodes=0"], "--episodes must be positive, got 0"),
  ],
)
def test_inspection_commands_refuse_bad_input_in_one_line(
  baseline_run, compilation_cache_dir, script, args, message
):
  flag = "--run_dir" if script == "attention_episode.py" else "--run_dirs"
  result = _results_command(
    script, f"{flag}={baseline_run[0]}", *args, cache_dir=compilation_cache_dir
  )
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 1 and len(lines) == 1, result.stderr
  assert re.search(message, lines[0]), lines[0]


@pytest.mark.slow
def test_record_video_writes_playable_videos_with_a_frame_per_step(
  baseline_run, tmp_path, compilation_cache_dir
):
  import imageio.v2 as imageio

  out_dir = str(tmp_path / "videos")
  result = _results_command(
    "record_video.py",
    f"--run_dir={baseline_run[0]}",
    f"--out_dir={out_dir}",
    "--tasks=reach-v3",
    "--episodes=2",
    "--size=64",
    "--with_attention",
    cache_dir=compilation_cache_dir,
  )
  # Rendering needs MuJoCo's offscreen backend: a failure names what to set or install.
  assert result.returncode == 0, result.stderr
  expected = [f"reach-v3_step{TOTAL_STEPS}_ep{k}.mp4" for k in (0, 1)]
  assert sorted(os.listdir(out_dir)) == expected
  for name in expected:
    assert f"wrote {os.path.join(out_dir, name)} ({EPISODE_LENGTH} frames)" in result.stdout
    reader = imageio.get_reader(os.path.join(out_dir, name))
    assert reader.count_frames() == EPISODE_LENGTH
    assert reader.get_meta_data()["size"] == (64 + 6 * 16, 64)  # frame, then 6 attention bars
    assert reader.get_data(0).std() > 0  # a rendered scene, not a blank frame


@pytest.mark.slow
def test_videos_during_training_change_nothing_the_run_learns(baseline_run, tmp_path, monkeypatch):
  import imageio.v2 as imageio

  monkeypatch.setenv("MUJOCO_GL", "egl")
  run_dir = str(tmp_path / "run")
  log = LogCapture()
  summary = train(make_config(video_every=2 * SMALL["eval_every"]), run_dir, log=log)
  # Rendering took its own environment: the run is the uninterrupted baseline, bit for bit.
  assert summary == baseline_run[3]
  assert_trees_equal(
    restore_checkpoint(run_dir, TOTAL_STEPS)["state"],
    restore_checkpoint(baseline_run[0], TOTAL_STEPS)["state"],
  )
  videos = os.path.join(run_dir, "videos")
  assert sorted(os.listdir(videos)) == sorted(f"{task}_step{TOTAL_STEPS}_ep0.mp4" for task in MT10)
  reader = imageio.get_reader(os.path.join(videos, "push-v3_step160_ep0.mp4"))
  assert reader.count_frames() == EPISODE_LENGTH
  assert reader.get_meta_data()["size"] == (256 + 6 * 16, 256)  # frame, 6 attention bars
  assert f"videos: {videos}/*_step{TOTAL_STEPS}_ep0.mp4" in log.text
  clips = [(step, v) for step, v in _tensorboard_values(run_dir) if v.tag == "video/push-v3"]
  assert [step for step, _ in clips] == [TOTAL_STEPS]
  assert all(v.image.encoded_image_string[:6] == b"GIF89a" for _, v in clips)
  assert clips[0][1].image.height == 128


def test_video_every_must_fall_on_evaluations():
  with pytest.raises(
    ValueError, match=r"video_every \(100\) must be 0 or a multiple of eval_every"
  ):
    make_config(video_every=100).train.validate(EPISODE_LENGTH)


@pytest.mark.slow
def test_seeds_from_the_cli_stop_on_sigterm_resume_and_report(tmp_path, compilation_cache_dir):
  # Two seeds of Meta-World in one process, their environments in two worker processes.
  run_dir = str(tmp_path / "batch")
  overrides = dict(seed=None, seeds="0-1", env_workers=2, total_steps=80, eval_every=80)
  process = start_cli(run_dir, compilation_cache_dir, preexec_fn=os.setsid, **overrides)
  wait_for_train_record(os.path.join(run_dir, "seed1"), process, SMALL["log_every"])
  # As a scheduler preempts a job: SIGTERM to every process of it, the workers included.
  os.killpg(process.pid, signal.SIGTERM)
  stdout, stderr = process.communicate(timeout=CLI_TIMEOUT)
  assert process.returncode == cli.EXIT_PREEMPTED, stderr
  assert "seed<K>/checkpoints; run the same command to resume" in stderr
  stopped = [checkpoint_steps(os.path.join(run_dir, f"seed{s}"))[-1] for s in (0, 1)]
  assert stopped[0] == stopped[1] < 80
  process = start_cli(run_dir, compilation_cache_dir, **overrides)
  stdout, stderr = process.communicate(timeout=CLI_TIMEOUT)
  assert process.returncode == 0, stderr
  assert f"from the checkpoint at step {stopped[0]}" in stdout
  summaries = []
  for seed in (0, 1):
    with open(os.path.join(run_dir, f"seed{seed}", "summary.json")) as f:
      summaries.append(json.load(f))
  assert [s["seed"] for s in summaries] == [0, 1] and {s["steps"] for s in summaries} == {80}
  # The seeds differ (their own variations and streams), and the report reads both.
  assert summaries[0]["final_return_per_task"] != summaries[1]["final_return_per_task"]
  report = subprocess.run(
    [
      sys.executable,
      os.path.join(REPO, "experiments", "run_report.py"),
      f"{run_dir}/seed0",
      f"{run_dir}/seed1",
    ],
    env=subprocess_env(compilation_cache_dir),
    capture_output=True,
    text=True,
    timeout=120,
    check=False,
  )
  assert report.returncode == 0 and "seed1" in report.stdout, report.stderr
  table = subprocess.run(
    [sys.executable, os.path.join(REPO, "experiments", "tables.py"), run_dir],
    env=subprocess_env(compilation_cache_dir),
    capture_output=True,
    text=True,
    timeout=120,
    check=False,
  )
  assert table.returncode == 0, table.stderr
  assert "2 @ 80" in table.stdout, table.stdout  # one row: 2 seeds at step 80
