"""Sweeps run end to end: on this machine, and on a real single-node SLURM cluster
(scripts/slurm_local.sh) through submitit, where a preempted job is requeued and resumes."""

import json
import os
import subprocess
import sys
import time

import pytest

from cmta_jax.sweeps import plan, records, status

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SWEEP = os.path.join(REPO, "experiments", "sweep.py")
TIMEOUT = 600  # seconds; the machine may be shared

# Two jobs of one tiny config under two names (the second sets a default explicitly): the
# same run twice, so that an interrupted one can be compared with one that was not.
SWEEP_FILE = """
settings = ["paper_mt10_fixed"]
seeds = "0"

[[variant]]
agent = "mtsac"

[[variant]]
agent = "mtsac"
flags = { critic_tau = 0.005 }

[flags]
episode_length = 20
hidden_width = 32
batch_per_task = 8
replay_capacity = 10000
warmup_steps = 40
total_steps = 80
log_every = 20
eval_every = 40
checkpoint_every = 20
"""
NAMES = ("paper_mt10_fixed/mtsac", "paper_mt10_fixed/mtsac__critic_tau=0.005")


@pytest.fixture(scope="module")
def sweep_env(tmp_path_factory):
  """The environment the sweep and its jobs run with: a shared compilation cache, CPU."""
  return {
    **os.environ,
    "JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("jax_cache")),
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_PLATFORMS": "cpu",
  }


def _sweep(root, sweep_env, *args) -> subprocess.CompletedProcess:
  sweep_file = os.path.join(os.path.dirname(root), "sweep.toml")
  with open(sweep_file, "w") as f:
    f.write(SWEEP_FILE)
  return _run_sweep(sweep_env, f"--sweep_file={sweep_file}", f"--root={root}", *args)


def _jobs() -> list[plan.Job]:
  jobs, _ = plan.file_jobs_from_text(SWEEP_FILE)
  return jobs


def _summary(root: str, name: str) -> dict:
  with open(os.path.join(root, name, "seed0", "summary.json")) as f:
    return json.load(f)


def _assert_both_done_and_equal(root: str, sweep_env) -> None:
  states = {j.name: status.job_status(j, root, status.slurm_states()) for j in _jobs()}
  assert {n: s.state for n, s in states.items()} == dict.fromkeys(NAMES, "done")
  assert {s.reached for s in states.values()} == {80}
  assert _summary(root, NAMES[0]) == _summary(root, NAMES[1])
  # --status says so, and running the sweep again runs nothing.
  report = _sweep(root, sweep_env, "--status")
  assert report.returncode == 0, report.stderr
  lines = report.stdout.splitlines()
  assert sum(line.endswith("  done") for line in lines) == 2 and "2 jobs: 2 done" in lines
  assert lines[-1] == f"table of what has finished: python experiments/tables.py {root}"
  again = _sweep(root, sweep_env)
  assert again.returncode == 0, again.stderr
  assert again.stdout.count("done, skipped") == 2 and "nothing to run" in again.stdout


@pytest.mark.slow
def test_a_sweep_on_this_machine_runs_its_jobs_pinned_side_by_side(tmp_path, sweep_env):
  root = str(tmp_path / "root")
  result = _sweep(root, sweep_env, "--parallel=2")
  assert result.returncode == 0, result.stderr
  assert "started on cores 0" in result.stdout and "started on cores 1" in result.stdout
  _assert_both_done_and_equal(root, sweep_env)


# ----------------------------------------------------------------------------- SLURM


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
  """A single-node SLURM on this machine (started if not running); SLURM_CONF for its users."""
  state = os.environ.get("CMTA_SLURM_DIR", "/tmp/cmta-slurm")
  started = subprocess.run(
    ["bash", os.path.join(REPO, "scripts", "slurm_local.sh"), "start"],
    capture_output=True,
    text=True,
    timeout=600,
    env={**os.environ, "CMTA_SLURM_DIR": state},
    check=False,
  )
  assert started.returncode == 0, f"SLURM did not start: {started.stderr}"
  conf = started.stdout.strip().splitlines()[-1].removeprefix("SLURM_CONF=")
  previous = os.environ.get("SLURM_CONF")
  os.environ["SLURM_CONF"] = conf
  yield conf
  if previous is None:
    os.environ.pop("SLURM_CONF")
  else:
    os.environ["SLURM_CONF"] = previous


def _scontrol(*args: str) -> None:
  subprocess.run(["scontrol", *args], check=True, capture_output=True, timeout=60)


def _wait(condition, what: str, timeout: float = TIMEOUT) -> None:
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if condition():
      return
    time.sleep(0.5)
  raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_a_slurm_sweep_resumes_a_preempted_job_by_itself(tmp_path, sweep_env, slurm):
  root = str(tmp_path / "root")
  env = {**sweep_env, "SLURM_CONF": slurm}
  result = _sweep(root, env, "--executor=slurm", "--cpus_per_job=1", "--time_min=20")
  assert result.returncode == 0, result.stderr
  job_ids = {name: records.read_submitted(root, name)["job_id"] for name in NAMES}
  assert all(f"submitted as SLURM job {job_ids[n]}" in result.stdout for n in NAMES)
  # Preempt the first job once it has checkpointed (SLURM's requeue: SIGTERM, then the job
  # waits in the queue), then let it start again at once instead of after its begin time.
  preempted = job_ids[NAMES[0]]
  metrics = os.path.join(root, NAMES[0], "seed0", "metrics.jsonl")

  def trained_past_first_checkpoint():
    if not os.path.exists(metrics):
      return False
    with open(metrics) as f:
      return any(json.loads(line)["step"] >= 20 for line in f if '"train"' in line)

  _wait(trained_past_first_checkpoint, "the first job's first checkpoint")
  _scontrol("requeue", preempted)
  _wait(lambda: status.slurm_states().get(preempted) == "PENDING", "the requeued job to wait")
  _scontrol("update", f"JobId={preempted}", "StartTime=now")
  _wait(
    lambda: all(status.job_status(j, root, status.slurm_states()).state == "done" for j in _jobs()),
    "both jobs to finish",
  )
  with open(os.path.join(records.job_dir(root, NAMES[0]), "train.log")) as f:
    log = f.read()
  assert "stopped by SIGTERM at step" in log and "from the checkpoint at step" in log
  _assert_both_done_and_equal(root, env)


@pytest.mark.slow
def test_table_1_goes_to_slurm_as_26_array_tasks(tmp_path, slurm):
  root = str(tmp_path / "table1")
  env = {**os.environ, "SLURM_CONF": slurm}
  result = _run_sweep(
    env,
    "--table=1",
    f"--root={root}",
    "--executor=slurm",
    "--override=total_steps=300",
    "--sbatch=begin=now+1hour",  # held in the queue: submitted, never run here
  )
  assert result.returncode == 0, result.stderr
  jobs = plan.table_jobs("1", "0-7")
  submitted = {job.name: records.read_submitted(root, job.name) for job in jobs}
  try:
    queue = status.slurm_states()
    assert all(queue.get(entry["job_id"]) == "PENDING" for entry in submitted.values())
    assert len({entry["job_id"].split("_")[0] for entry in submitted.values()}) == 1  # one array
    for job in jobs:
      assert submitted[job.name]["command"] == job.command(root, [("total_steps", 300)])
    report = _sweep_status(root, env)
    assert "26 jobs: 26 queued" in report
  finally:
    for entry in submitted.values():
      if entry is not None:
        subprocess.run(["scancel", entry["job_id"]], check=False, timeout=60)


def _sweep_status(root: str, env: dict) -> str:
  result = _run_sweep(env, "--status", f"--root={root}")
  assert result.returncode == 0, result.stderr
  return result.stdout


def _run_sweep(env: dict, *args: str) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, SWEEP, *args],
    capture_output=True,
    text=True,
    timeout=TIMEOUT,
    env=env,
    check=False,
  )
