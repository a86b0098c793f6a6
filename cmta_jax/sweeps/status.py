"""Where each job of a sweep stands, from its run directories, the sweep's records and SLURM's
queue: done, running, queued, failed, diverged, stopped (resumes when the sweep runs again)
or not started, with the steps its seeds reached."""

import dataclasses
import glob
import json
import os
import socket
import subprocess

from cmta_jax import cli
from cmta_jax.sweeps import records
from cmta_jax.sweeps.plan import Job

DIVERGED_FILE = "diverged.txt"  # (training.run_state.DIVERGED_FILE, without loading jax)
_QUEUED = ("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "SUSPENDED")
_RUNNING = ("RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING", "RESIZING")


@dataclasses.dataclass(frozen=True)
class JobStatus:
  job: Job
  state: str  # done, running, queued, failed, diverged, stopped, not started
  reached: int | None  # the step every seed has reached (its last record), None: none yet
  total: int | None  # total_steps of its config, None: no config yet
  detail: str = ""  # a failure's one-line error, the diverged seeds, the SLURM job id

  @property
  def line(self) -> str:
    steps = "-" if self.reached is None else f"{self.reached}/{self.total or '?'}"
    detail = f" ({self.detail})" if self.detail else ""
    return (
      f"{self.job.setting:<18} {self.job.variant:<44} seeds {self.job.seeds:<6} "
      f"{steps:>17}  {self.state}{detail}"
    )


def slurm_states() -> dict[str, str]:
  """{job id: SLURM state} of every job in the queue (array tasks as 123_4); {} without
  SLURM."""
  try:
    result = subprocess.run(
      ["squeue", "-h", "-r", "-o", "%i %T"], capture_output=True, text=True, timeout=60
    )
  except (OSError, subprocess.TimeoutExpired):
    return {}
  if result.returncode != 0:
    return {}
  return dict(line.split(maxsplit=1) for line in result.stdout.splitlines() if " " in line)


def job_status(job: Job, root: str, queue: dict[str, str]) -> JobStatus:
  run_dir = job.run_dir(root)
  seed_dirs = [os.path.join(run_dir, f"seed{seed}") for seed in cli.parse_seeds(job.seeds)]
  reached, total = _progress(seed_dirs)
  submitted = records.read_submitted(root, job.name) or {}
  result = records.read_result(root, job.name)
  job_id = submitted.get("job_id")
  slurm_state = queue.get(str(job_id)) if job_id is not None else None

  def status(state: str, detail: str = "") -> JobStatus:
    return JobStatus(job, state, reached, total, detail)

  if slurm_state in _QUEUED:
    return status("queued", f"SLURM job {job_id}")
  if slurm_state in _RUNNING:
    return status("running", f"SLURM job {job_id}")
  if any(_held_here(d) for d in seed_dirs):
    return status("running")
  if not os.path.isdir(run_dir):
    if result is not None and result["status"] not in (0, cli.EXIT_PREEMPTED):
      return status("failed", result.get("error") or f"exit {result['status']}")
    return status("not started")
  diverged = [d for d in seed_dirs if os.path.exists(os.path.join(d, DIVERGED_FILE))]
  finished = [d for d in seed_dirs if _finished(d)]
  if diverged and len(diverged) == len(seed_dirs):
    return status("diverged", "every seed")
  if len(finished) + len(diverged) == len(seed_dirs):
    names = ", ".join(os.path.basename(d) for d in diverged)
    return status("done", f"{names} diverged" if diverged else "")
  if result is not None and result["status"] not in (0, cli.EXIT_PREEMPTED):
    return status("failed", result.get("error") or f"exit {result['status']}")
  return status("stopped", "resumes when the sweep runs again")


def _progress(seed_dirs: list[str]) -> tuple[int | None, int | None]:
  """(the last recorded step every seed has reached, the run's total_steps)."""
  reached, total = [], None
  for seed_dir in seed_dirs:
    last = _last_step(os.path.join(seed_dir, "metrics.jsonl"))
    reached.append(last)
    try:
      with open(os.path.join(seed_dir, "config.json")) as f:
        total = json.load(f).get("train.total_steps", total)
    except (OSError, ValueError):
      pass
  known = [r for r in reached if r is not None]
  return (min(known) if len(known) == len(reached) else None), total


def _last_step(path: str) -> int | None:
  try:
    with open(path) as f:
      lines = [line for line in f if line.strip()]
  except OSError:
    return None
  for line in reversed(lines):
    try:
      return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
      continue
  return None


def _finished(seed_dir: str) -> bool:
  """summary.json is written when a run reaches its total_steps."""
  try:
    with open(os.path.join(seed_dir, "summary.json")) as f:
      steps = json.load(f)["steps"]
    with open(os.path.join(seed_dir, "config.json")) as f:
      return steps >= json.load(f)["train.total_steps"]
  except (OSError, ValueError, KeyError):
    return False


def _held_here(seed_dir: str) -> bool:
  """Whether the run's lock names a live process on this host (the lock itself is not
  touched: taking it, even for a moment, could refuse a launch)."""
  try:
    with open(os.path.join(seed_dir, ".lock")) as f:
      holder = f.read().split()
  except OSError:
    return False
  # "process <pid> on <host> (started ...)"
  if len(holder) < 4 or holder[0] != "process" or holder[3] != socket.gethostname():
    return False
  try:
    with open(f"/proc/{int(holder[1])}/cmdline", "rb") as f:
      return b"train.py" in f.read()
  except (OSError, ValueError):
    return False


def sweep_jobs_on_disk(root: str) -> list[str]:
  """Names (<setting>/<variant>) of the jobs a sweep under `root` recorded."""
  pattern = os.path.join(root, records.SWEEP_DIR, "*", "*", "job.json")
  return sorted(
    os.path.relpath(os.path.dirname(path), os.path.join(root, records.SWEEP_DIR))
    for path in glob.glob(pattern)
  )
